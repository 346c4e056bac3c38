"""The annotated picture: pose axes in the renderer's convention, what lands where in the PNG."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from treemoe_jax.inference import drawing as annotate


@dataclasses.dataclass
class Face:
  landmarks: np.ndarray
  box: np.ndarray
  pose: np.ndarray | None = None
  score: float | None = None


def test_pose_axes_turn_as_the_pose_convention_says():
  origin, length, a = np.array([100.0, 50.0]), 10.0, np.radians(30)
  # Facing the camera: x to the image's right, y down, z (out of the face) a point.
  np.testing.assert_allclose(annotate.pose_axes([0, 0, 0], origin, length),
                             [[110, 50], [100, 60], [100, 50]], atol=1e-12)
  # pose_fit: yaw > 0 turns the nose to the image's right, pitch > 0 turns it up, and roll > 0
  # turns the head clockwise in the image (y down): the x axis dips.
  x, _, z = annotate.pose_axes([a, 0, 0], origin, length)
  np.testing.assert_allclose(z, [100 + 10 * np.sin(a), 50], atol=1e-12)
  np.testing.assert_allclose(x, [100 + 10 * np.cos(a), 50], atol=1e-12)
  _, y, z = annotate.pose_axes([0, a, 0], origin, length)
  np.testing.assert_allclose(z, [100, 50 - 10 * np.sin(a)], atol=1e-12)
  np.testing.assert_allclose(y, [100, 50 + 10 * np.cos(a)], atol=1e-12)
  x, y, _ = annotate.pose_axes([0, 0, a], origin, length)
  np.testing.assert_allclose(x, [100 + 10 * np.cos(a), 50 + 10 * np.sin(a)], atol=1e-12)
  np.testing.assert_allclose(y, [100 - 10 * np.sin(a), 50 + 10 * np.cos(a)], atol=1e-12)


@pytest.mark.parametrize('shape, size', [
    ((100, 200, 3), (640, 320)),  # Small images are drawn larger...
    ((1000, 2000), (1600, 800)),  # ...large ones smaller, keeping the aspect.
    ((700, 700, 1), (700, 700)),
])
def test_picture_size_follows_the_image(tmp_path, shape, size):
  annotate.draw(tmp_path / 'p.png', np.zeros(shape, np.uint8), [], note='no face found')
  assert Image.open(tmp_path / 'p.png').size == size


def test_landmarks_and_box_are_drawn_where_they_are(tmp_path):
  landmarks = np.tile([[25.0, 75.0]], (68, 1))
  face = Face(landmarks, np.array([10.0, 10.0, 90.0, 90.0]), score=0.5)
  annotate.draw(tmp_path / 'p.png', np.zeros((100, 100, 3), np.uint8), [face])
  picture = np.asarray(Image.open(tmp_path / 'p.png').convert('RGB')).astype(int)
  zoom = 6.4  # 100 px drawn 640 px wide; pixel centre c lands at (c + 0.5) * zoom.
  at = lambda x, y: picture[int((y + 0.5) * zoom), int((x + 0.5) * zoom)]
  assert at(25, 75)[2] > 200 and at(25, 75)[1] > 200 and at(25, 75)[0] < 80  # Cyan dot.
  left_edge = picture[int(50.5 * zoom), int(9.9 * zoom):int(11.1 * zoom)]
  assert (left_edge[:, 0] > 200).any() and (left_edge[:, 1] > 200).any()  # Yellow box edge.
  assert at(50, 50).max() < 30  # Inside the box, the black image.
