"""The one face crop (`treemoe_jax.crop`, JAX) against the tf.data pipeline's TensorFlow crop, and
its pieces against brute-force references.

Every pixel within 1e-3 on the [-1, 1] scale (a grey level is 2 / 255 = 8e-3), over box sizes
that shrink and enlarge, aspect ratios, boxes reaching past the image, grey and RGB, padded
images with their true size passed along; and the GPU scripts' batch crop on rendered faces.
"""

import jax
import numpy as np
import pytest
import tensorflow as tf

from input_pipeline import pipeline
from input_pipeline import synthetic
from treemoe_jax import crop

SIZE, MARGIN = 150, 0.25


def tf_crop(image, box, size=SIZE, margin=MARGIN):
  window = pipeline.crop_window(tf.constant(box, tf.float32), margin)
  return pipeline.face_image(tf.constant(image), window, size).numpy(), window.numpy()


CASES = [  # (image height, width, channels, box centre as image fraction, box w, h in px)
    (480, 640, 3, (0.5, 0.5), 300, 360),  # shrinks ~3.6x
    (480, 640, 1, (0.4, 0.6), 90, 60),  # side 135 < 150: enlarges (bilinear path)
    (120, 90, 3, (0.5, 0.5), 40, 70),  # small image, tall box, enlarges
    (1200, 1600, 3, (0.55, 0.45), 700, 500),  # a photo: shrinks ~7x (many taps)
    (300, 300, 1, (0.02, 0.97), 200, 200),  # box mostly outside the image: zeros around
    (200, 500, 3, (0.9, 0.1), 99.7, 100.3),  # side ~150: both sides of the switch
    (64, 64, 1, (0.5, 0.5), 3, 3),  # a tiny box: 16x enlargement
]


# Every image is also cropped from a zero-padded canvas of one shape, its true size passed: the
# Aligner's path (shape buckets), and one compiled crop per channel count for all the cases.
CANVAS = (1216, 1616)
_padded_crop = jax.jit(lambda canvas, window, hw: crop.face_image(canvas, window, SIZE, hw))


def padded_crop(image: np.ndarray, window) -> np.ndarray:
  canvas = np.zeros(CANVAS + image.shape[2:], image.dtype)
  canvas[:image.shape[0], :image.shape[1]] = image
  return np.asarray(_padded_crop(canvas, window, np.array(image.shape[:2], np.int32)))


@pytest.mark.parametrize('height, width, channels, centre, box_w, box_h', CASES)
def test_jax_crop_equals_the_pipeline_crop(height, width, channels, centre, box_w, box_h):
  rng = np.random.default_rng(height * width + channels)
  image = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
  cx, cy = centre[0] * width, centre[1] * height
  box = np.array([cx - box_w / 2, cy - box_h / 2, cx + box_w / 2, cy + box_h / 2], np.float32)
  reference, window = tf_crop(image, box)
  jax_window = np.asarray(crop.crop_window(box, MARGIN))
  np.testing.assert_allclose(jax_window, window, rtol=1e-6)
  np.testing.assert_allclose(padded_crop(image, jax_window), reference, atol=1e-3)


def test_the_unpadded_crop_equals_the_padded_one():
  image = np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8)
  for box in ([50, 60, 250, 280], [-30, 200, 80, 320], [150, 100, 190, 150]):  # shrink, edge, grow
    window = crop.crop_window(np.array(box, np.float32), MARGIN)
    reference, _ = tf_crop(image, np.array(box, np.float32))
    direct = np.asarray(crop.face_image(image, window, SIZE))
    np.testing.assert_allclose(direct, reference, atol=1e-3)
    np.testing.assert_allclose(direct, padded_crop(image, window), atol=1e-4)  # sum order


def test_many_random_boxes_equal_the_pipeline_crop():
  rng = np.random.default_rng(7)
  for trial in range(12):
    height, width = rng.integers(40, 500, 2)
    image = rng.integers(0, 256, (height, width, (1, 3)[trial % 2]), dtype=np.uint8)
    centre = rng.uniform(-0.2, 1.2, 2) * (width, height)
    half = rng.uniform(2, 1.2 * max(height, width), 2) / 2
    box = np.concatenate([centre - half, centre + half]).astype(np.float32)
    reference, window = tf_crop(image, box)
    np.testing.assert_allclose(padded_crop(image, window), reference, atol=1e-3,
                               err_msg=f'trial {trial}: box {box}, image {image.shape}')


def test_an_rgb_image_is_its_grey_conversion():
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
  grey = (image.astype(np.float64) @ np.array(crop.RGB_TO_GRAY))[..., None]
  window = np.array([10.0, 5.0, 80.0], np.float32)
  np.testing.assert_allclose(np.asarray(crop.face_image(image, window, 64)),
                             np.asarray(crop.face_image(grey.astype(np.float32), window, 64)),
                             atol=1e-5)


@pytest.mark.parametrize('step', [1.0, 1.3, 2.0, 3.7, 40.25])
def test_the_kernel_normaliser_is_the_brute_force_sum(step):
  centres = np.linspace(-3.3, 7.9, 23).astype(np.float32)
  integers = np.arange(-200, 200)
  expected = np.maximum(0, 1 - np.abs(integers[None] - centres[:, None]) / step).sum(1)
  np.testing.assert_allclose(np.asarray(crop._triangle_sum(centres, np.float32(step))), expected,
                             rtol=1e-5)


def test_points_map_into_the_crop_and_back():
  window = np.array([12.5, -30.0, 410.0], np.float32)
  points = np.random.default_rng(2).uniform(-50, 500, (4, 68, 2)).astype(np.float32)
  # By hand (SPEC): output pixel j covers [left + j side / S, left + (j + 1) side / S].
  by_hand = (points - window[:2]) * SIZE / window[2] - 0.5
  inside = crop.crop_landmarks(points, window, SIZE)
  np.testing.assert_allclose(inside, by_hand, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(crop.uncrop_landmarks(inside, window, SIZE), points, atol=1e-3)


@pytest.mark.parametrize('image_size', [176, 256])  # windows under and over 150 px: both paths
def test_the_batch_crop_equals_the_pipeline_on_rendered_faces(image_size):
  faces = synthetic.render_faces(4, 3, synthetic.RenderConfig(image_size=image_size))
  config = pipeline.CropConfig(size=SIZE, margin=MARGIN)
  reference = [pipeline.crop_face({'image': faces['image'][i][..., None], 'box': faces['box'][i],
                                   'landmarks': faces['landmarks'][i],
                                   'visibility': faces['visibility'][i],
                                   'pose': faces['pose'][i]}, config) for i in range(4)]
  images, points = crop.crop_faces(faces['image'], faces['box'], faces['landmarks'], size=SIZE,
                                   margin=MARGIN)
  sides = (faces['box'][:, 2:] - faces['box'][:, :2]).max(1) * (1 + 2 * MARGIN)
  assert (sides < SIZE).any() == (image_size == 176) and (sides > SIZE).any()
  np.testing.assert_allclose(np.asarray(images), np.stack([r['image'] for r in reference]),
                             atol=1e-4)
  np.testing.assert_allclose(np.asarray(points), np.stack([r['landmarks'] for r in reference]),
                             atol=1e-4)
