"""The synthetic face renderer: landmarks sit on the drawn features, poses and occlusion follow the
config, self-occlusion is geometric, output is deterministic and well-formed, bad configs fail."""

import dataclasses

import numpy as np
import pytest

from input_pipeline import synthetic
from treemoe_jax import geometry

FIXED = dict(pitch_range_deg=(0.0, 0.0), roll_range_deg=(0.0, 0.0))


def _config(**kwargs) -> synthetic.RenderConfig:
  return dataclasses.replace(synthetic.RenderConfig(), **kwargs)


def _at(images: np.ndarray, points: np.ndarray, radius: int = 0) -> np.ndarray:
  """Mean grey level [N, K] of the (2 radius + 1)^2 pixels around each point [N, K, 2]."""
  n, size = len(images), images.shape[-1]
  values = []
  for dy in range(-radius, radius + 1):
    for dx in range(-radius, radius + 1):
      x = np.clip(np.rint(points[..., 0]).astype(int) + dx, 0, size - 1)
      y = np.clip(np.rint(points[..., 1]).astype(int) + dy, 0, size - 1)
      values.append(images[np.arange(n)[:, None], y, x].astype(float))
  return np.mean(values, 0)


@pytest.fixture(scope='module')
def frontal():
  """Unoccluded, near-frontal faces with little blur and noise."""
  config = _config(pose_distribution='frontal', yaw_range_deg=(-20.0, 20.0),
                   pitch_range_deg=(-15.0, 15.0), roll_range_deg=(-15.0, 15.0),
                   occlusion_fraction=0.0, blur_sigma_px=(0.0, 0.4), noise_std=(0.0, 0.01))
  return synthetic.render_faces(48, seed=3, config=config)


def test_outputs_are_well_formed(frontal):
  n, size = 48, 256
  expected = {'image': (np.uint8, (n, size, size)), 'landmarks': (np.float32, (n, 68, 2)),
              'visibility': (np.bool_, (n, 68)), 'self_occluded': (np.bool_, (n, 68)),
              'occluded': (np.bool_, (n, 68)), 'has_occluder': (np.bool_, (n,)),
              'pose': (np.float32, (n, 3)), 'box': (np.float32, (n, 4))}
  assert {k: (v.dtype, v.shape) for k, v in frontal.items()} == expected
  points = frontal['landmarks']
  assert points.min() >= 0 and points.max() <= size - 1
  np.testing.assert_array_equal(frontal['box'][:, :2], points.min(1))
  np.testing.assert_array_equal(frontal['box'][:, 2:], points.max(1))
  np.testing.assert_array_equal(frontal['visibility'],
                                ~frontal['self_occluded'] & ~frontal['occluded'])
  width = frontal['box'][:, 2] - frontal['box'][:, 0]
  assert 0.4 * size < np.median(width) < 0.65 * size  # A frontal face spans about half the image.


def test_landmarks_lie_on_the_drawn_features(frontal):
  images, points = frontal['image'], frontal['landmarks']
  visible = frontal['visibility']
  # Reference skin: the middle of each cheek, between the nose wing and the jaw.
  cheek = (_at(images, (points[:, [31]] + points[:, [2]]) / 2, 2)
           + _at(images, (points[:, [35]] + points[:, [14]]) / 2, 2))[:, 0] / 2
  lit = cheek > 50  # Faces exposed well enough for contrast to mean something.
  assert lit.mean() > 0.6
  pupil = _at(images, geometry.pupils(points), 1).max(1)
  upper_lids = _at(images, points[:, [37, 38, 43, 44]]).mean(1)
  lip_line = _at(images, (points[:, [62]] + points[:, [66]]) / 2).mean(1)
  brows = _at(images, points[:, [19, 20, 23, 24]]).mean(1)
  assert visible[:, 36:48].all() and visible[:, 48:68].all()
  for name, value, margin in (('pupil', pupil, 20), ('upper lid', upper_lids, 20),
                              ('lip line', lip_line, 15), ('brow', brows, 10)):
    darker = (cheek - value)[lit]
    assert np.median(darker) > margin, (name, np.median(darker))
    assert np.mean(darker > 0) >= 0.9, (name, np.mean(darker > 0))


def test_render_poses_match_sample_poses():
  config = _config(image_size=64)
  np.testing.assert_array_equal(synthetic.render_faces(5, 11, config)['pose'],
                                synthetic.sample_poses(5, 11, config))


def test_wide_pose_distribution_spreads_yaw_over_the_range():
  poses = np.degrees(synthetic.sample_poses(6000, seed=0, config=_config(pose_distribution='wide')))
  yaw, pitch, roll = poses.T
  assert -90 <= yaw.min() and yaw.max() <= 90
  assert -45 <= pitch.min() and pitch.max() <= 45 and -35 <= roll.min() and roll.max() <= 35
  fractions = np.histogram(yaw, bins=6, range=(-90, 90))[0] / len(yaw)
  np.testing.assert_allclose(fractions, 1 / 6, atol=0.025)  # Uniform in yaw.
  assert abs(pitch.mean()) < 1.5 and abs(roll.mean()) < 1.5
  assert 12 < pitch.std() < 22 and 8 < roll.std() < 17


def test_frontal_pose_distribution_is_mostly_frontal():
  config = _config(pose_distribution='frontal')
  poses = np.degrees(synthetic.sample_poses(6000, seed=1, config=config))
  yaw = poses[:, 0]
  assert 0.85 <= np.mean(np.abs(yaw) < 30) < 0.99
  assert np.mean(np.abs(yaw) > 40) > 0.005 and np.abs(yaw).max() <= 60
  assert abs(yaw.mean()) < 1.5


def test_custom_ranges_are_respected():
  config = _config(yaw_range_deg=(10.0, 40.0), pitch_range_deg=(-5.0, 20.0),
                   roll_range_deg=(0.0, 0.0))
  poses = np.degrees(synthetic.sample_poses(2000, seed=2, config=config))
  assert 10 - 1e-4 <= poses[:, 0].min() and poses[:, 0].max() <= 40 + 1e-4
  assert -5 - 1e-4 <= poses[:, 1].min() and poses[:, 1].max() <= 20 + 1e-4
  np.testing.assert_allclose(poses[:, 2], 0, atol=1e-6)


@pytest.mark.parametrize('fraction', [0.0, 0.4, 1.0])
def test_occlusion_fraction_and_flags(fraction):
  faces = synthetic.render_faces(150, seed=4, config=_config(image_size=64,
                                                             occlusion_fraction=fraction))
  has = faces['has_occluder']
  assert abs(has.mean() - fraction) < 0.1
  assert not faces['occluded'][~has].any()  # Only occluders occlude.
  if has.any():
    covered = faces['occluded'][has].sum(1)
    assert np.mean(covered > 0) > 0.7 and np.median(covered) < 50  # Over part of the face.


@pytest.mark.parametrize('yaw', [80.0, -80.0])
def test_far_side_is_self_occluded_at_large_yaw(yaw):
  faces = synthetic.render_faces(8, seed=5, config=_config(yaw_range_deg=(yaw, yaw), **FIXED,
                                                           occlusion_fraction=0.0))
  # Positive yaw turns the nose to the image's right and the subject's left side (x > 0 in the
  # model, jaw points 9-16) away from the camera.
  model_x = geometry.MEAN_FACE_3D[:, 0]
  far, near = (model_x > 3) if yaw > 0 else (model_x < -3), (model_x < -3) if yaw > 0 else (
      model_x > 3)
  far_jaw, near_jaw = far & (np.arange(68) < 17), near & (np.arange(68) < 17)
  assert faces['self_occluded'][:, far_jaw].all()
  assert not faces['self_occluded'][:, near_jaw].any()
  nose_x, jaw_x = faces['landmarks'][:, 30, 0], faces['landmarks'][:, :17, 0].mean(1)
  assert np.all(np.sign(nose_x - jaw_x) == np.sign(yaw))


def test_nothing_on_the_face_is_self_occluded_when_frontal():
  faces = synthetic.render_faces(8, seed=6, config=_config(yaw_range_deg=(0.0, 0.0), **FIXED))
  assert not faces['self_occluded'][:, 17:].any()  # Brows, nose, eyes, mouth.
  assert faces['self_occluded'][:, :17].mean() < 0.1


def test_flip_maps_pose_to_minus_yaw_pitch_minus_roll():
  """A mirrored face (x -> -x, points mirrored) seen from a mirrored camera has the flipped pose."""
  pose = np.radians([[35.0, 20.0, -15.0]])
  rot, rot_flipped = synthetic._rotation(pose), synthetic._rotation(pose * [-1, 1, -1])
  points = geometry.MEAN_FACE_3D @ rot[0].T
  flipped = (geometry.MEAN_FACE_3D @ rot_flipped[0].T)[geometry.MIRROR_68] * [-1, 1, 1]
  np.testing.assert_allclose(points, flipped, atol=1e-5)


def test_deterministic_per_seed_and_prefix():
  config = _config(image_size=96, occlusion_fraction=0.5)
  a, b = synthetic.render_faces(6, 7, config), synthetic.render_faces(6, 7, config)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  prefix = synthetic.render_faces(3, 7, config)
  np.testing.assert_array_equal(prefix['image'], a['image'][:3])
  other = synthetic.render_faces(6, 8, config)
  assert np.mean(other['image'] != a['image']) > 0.5


def test_no_two_faces_share_a_shape():
  """With pose, scale and placement fixed, landmarks differ only through shape."""
  config = _config(image_size=128, yaw_range_deg=(0.0, 0.0), **FIXED, box_fraction=(0.5, 0.5),
                   center_jitter=0.0)
  points = synthetic.render_faces(24, 9, config)['landmarks']
  points = points - points.mean(1, keepdims=True)
  gaps = np.abs(points[:, None] - points[None]).max((2, 3))
  assert gaps[~np.eye(len(points), dtype=bool)].min() > 0.3


@pytest.mark.parametrize('size', [200, 101])
def test_other_image_sizes(size):
  faces = synthetic.render_faces(3, 0, _config(image_size=size, occlusion_fraction=1.0))
  assert faces['image'].shape == (3, size, size)
  assert faces['landmarks'].min() >= 0 and faces['landmarks'].max() <= size - 1


def test_empty_batch():
  faces = synthetic.render_faces(0, 0)
  assert faces['image'].shape == (0, 256, 256) and faces['landmarks'].shape == (0, 68, 2)


@pytest.mark.parametrize('bad, message', [
    ({'image_size': -8}, 'image_size'),
    ({'yaw_range_deg': (-100.0, 90.0)}, 'yaw_range_deg'),
    ({'yaw_range_deg': (30.0, -30.0)}, 'yaw_range_deg'),
    ({'occlusion_fraction': 1.5}, 'occlusion_fraction'),
    ({'pose_distribution': 'profile'}, 'wide, frontal'),
    ({'box_fraction': (0.6, 0.4)}, 'box_fraction'),
])
def test_bad_configs_raise(bad, message):
  with pytest.raises(ValueError, match=message):
    synthetic.render_faces(1, 0, _config(**bad))


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='seed'):
    synthetic.render_faces(1, -1)
