"""Head pose from landmarks and 300W-LP `Pose_Para` conversion.

Expected values come from forward models, never from the fit: the renderer's own rotation
(`synthetic._rotation`) and projection for the project's convention, and 3DDFA's forward model
(`RotationMatrix.m`: R = R_x R_y R_z, v = s R X + t, image y = h - 1 - v_y), written out below as
3DDFA writes it, for `Pose_Para`.
"""

import dataclasses

import numpy as np
import pytest

from input_pipeline import synthetic
from treemoe_jax import geometry
from treemoe_jax.geometry import head_pose as pose_fit

DEG = np.pi / 180
MEAN = geometry.MEAN_FACE_3D.astype(np.float64)


def _project(pose, scale=4.0, shift=(120.0, 90.0)) -> np.ndarray:
  """MEAN_FACE_3D seen by the renderer's camera: pixel = t + s * (R model)[:2] [..., 68, 2]."""
  pose = np.asarray(pose, np.float64).reshape(-1, 3)
  rot = synthetic._rotation(pose).astype(np.float64)  # pylint: disable=protected-access
  return scale * np.einsum('bij,pj->bpi', rot[:, :2], MEAN) + np.asarray(shift)


def _angle_error(a, b) -> np.ndarray:
  """|a - b| in degrees, wrapped to [0, 180]."""
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  return np.abs(np.degrees(np.arctan2(np.sin(d), np.cos(d))))


# ---------------------------------------------------------------------------------------------
# The project's convention: exact recovery from the renderer's forward model.

def test_rotation_matrix_is_the_renderers():
  rng = np.random.default_rng(0)
  poses = rng.uniform(-np.pi, np.pi, (50, 3))
  reference = synthetic._rotation(poses)  # pylint: disable=protected-access
  np.testing.assert_allclose(pose_fit.rotation_matrix(poses), reference, atol=1e-6)


SINGLE_ANGLES = {
    'yaw+': (30, 0, 0), 'yaw-': (-30, 0, 0), 'pitch+': (0, 20, 0), 'pitch-': (0, -20, 0),
    'roll+': (0, 0, 15), 'roll-': (0, 0, -15), 'combined': (40, -25, 20),
    'large_yaw': (-82, 12, -8), 'profile': (90, 0, 0),
}


@pytest.mark.parametrize('name', SINGLE_ANGLES)
def test_exact_recovery_under_the_renderers_camera(name):
  pose = np.array(SINGLE_ANGLES[name], np.float64) * DEG
  estimate = geometry.pose_from_landmarks(_project(pose)[0])
  assert estimate.shape == (3,) and estimate.dtype == np.float32
  np.testing.assert_allclose(estimate, pose, atol=2e-5)


def test_sign_of_each_angle_means_what_the_docs_say():
  """The forward model itself: yaw > 0 nose to the image's right, pitch > 0 nose up, roll > 0
  clockwise (the subject's left eye, image right, drops); and the fit reports that sign."""
  frontal = _project([0, 0, 0])[0]
  cases = {0: (30, 0, 0), 1: (0, 20, 0), 2: (0, 0, 15)}
  for axis, degrees in cases.items():
    points = _project(np.array(degrees) * DEG)[0]
    nose, eyes = points[30], points[36:48].mean(0)
    if axis == 0:
      assert nose[0] - eyes[0] > frontal[30, 0] - frontal[36:48].mean(0)[0] + 1
    elif axis == 1:
      assert nose[1] - eyes[1] < frontal[30, 1] - frontal[36:48].mean(0)[1] - 1
    else:
      assert points[42:48, 1].mean() > points[36:42, 1].mean() + 1
    estimate = pose_fit.pose_from_landmarks(points)
    assert estimate[axis] > 0.9 * degrees[axis] * DEG
    others = np.delete(estimate, axis)
    assert np.abs(others).max() < 1e-4


def test_recovery_over_the_pose_range_batched():
  rng = np.random.default_rng(1)
  poses = np.stack([rng.uniform(-90, 90, 60), rng.uniform(-60, 60, 60),
                    rng.uniform(-120, 120, 60)], -1) * DEG
  landmarks = _project(poses).reshape(3, 20, 68, 2)
  estimate = pose_fit.pose_from_landmarks(landmarks)
  assert estimate.shape == (3, 20, 3)
  assert _angle_error(estimate.reshape(-1, 3), poses).max() < 1e-3


def test_invariant_to_image_translation_and_scale():
  pose = np.array([35, -15, 10]) * DEG
  base = pose_fit.pose_from_landmarks(_project(pose, scale=3.0, shift=(0, 0))[0])
  for scale, shift in ((0.05, (1e4, -3e3)), (50.0, (-7.5, 12.0)), (1.0, (0.0, 0.0))):
    moved = pose_fit.pose_from_landmarks(_project(pose, scale=scale, shift=shift)[0])
    np.testing.assert_allclose(moved, base, atol=2e-5)


def test_horizontal_flip_negates_yaw_and_roll():
  rng = np.random.default_rng(2)
  poses = np.stack([rng.uniform(-80, 80, 10), rng.uniform(-40, 40, 10),
                    rng.uniform(-30, 30, 10)], -1) * DEG
  landmarks = _project(poses)
  flipped = geometry.flip_landmarks(landmarks, width=256)
  np.testing.assert_allclose(pose_fit.pose_from_landmarks(flipped),
                             poses * [-1, 1, -1], atol=1e-4)


def test_pose_from_rotation_inverts_rotation_matrix():
  rng = np.random.default_rng(3)
  poses = np.stack([rng.uniform(-np.pi, np.pi, 40), rng.uniform(-1.5, 1.5, 40),
                    rng.uniform(-np.pi, np.pi, 40)], -1)
  back = pose_fit.pose_from_rotation(pose_fit.rotation_matrix(poses))
  assert _angle_error(back, poses).max() < 1e-9


def test_weights_ignore_points():
  """A point with weight 0 may be anywhere (finite): missing or wrong landmarks do not count."""
  pose = np.array([-50, 10, 5]) * DEG
  points = _project(pose)[0]
  spoiled = points.copy()
  spoiled[30] += 500.0  # The nose tip far off.
  weights = pose_fit.POINT_WEIGHTS.copy()
  weights[30] = 0.0
  np.testing.assert_allclose(pose_fit.pose_from_landmarks(spoiled, weights=weights), pose,
                             atol=2e-5)
  # Without the weight the robust fit still limits the damage.
  assert _angle_error(pose_fit.pose_from_landmarks(spoiled), pose).max() < 3.0


# ---------------------------------------------------------------------------------------------
# Rendered faces (identity, expression, the renderer's landmarks).

@pytest.fixture(scope='module')
def rendered():
  config = dataclasses.replace(synthetic.RenderConfig(), image_size=96, occlusion_fraction=0.0,
                               batch_size=16)
  return synthetic.render_faces(16, seed=7, config=config)


def test_rendered_faces_within_a_few_degrees(rendered):
  for hidden_jaw_weight in (0.0, 1.0):
    estimate = pose_fit.pose_from_landmarks(rendered['landmarks'],
                                            hidden_jaw_weight=hidden_jaw_weight)
    error = _angle_error(estimate, rendered['pose'])
    assert np.median(error, 0).max() < 3.0, error
    assert error.max() < 12.0, error


# ---------------------------------------------------------------------------------------------
# 300W-LP / AFLW2000-3D Pose_Para, against 3DDFA's own forward model.

def _ddfa_rotation(phi, gamma, theta):
  """3DDFA's RotationMatrix.m (angle_x = pitch, angle_y = yaw, angle_z = roll), as written there."""
  c, s = np.cos, np.sin
  r_x = np.array([[1, 0, 0], [0, c(phi), s(phi)], [0, -s(phi), c(phi)]])
  r_y = np.array([[c(gamma), 0, -s(gamma)], [0, 1, 0], [s(gamma), 0, c(gamma)]])
  r_z = np.array([[c(theta), s(theta), 0], [-s(theta), c(theta), 0], [0, 0, 1]])
  return r_x @ r_y @ r_z


def _ddfa_project(pose_para, height=450):
  """300W-LP's landmarks of the mean face for `Pose_Para`: the mean face in the BFM frame
  (micrometres, y up), v = s R X + t (face3d `transform_3ddfa`), orthographic, image y flipped
  (face3d `examples/8_generate_posmap_300WLP.py`: y = h - 1 - y)."""
  pitch, yaw, roll, tx, ty, tz, s = pose_para
  vertex = (MEAN * [1e4, -1e4, 1e4]).T  # [3, 68] BFM frame: x to the subject's left, y up.
  pt3d = s * _ddfa_rotation(pitch, yaw, roll) @ vertex + np.array([[tx], [ty], [tz]])
  return np.stack([pt3d[0], height - 1 - pt3d[1]], -1)


DDFA_CASES = {  # [pitch, yaw, roll] radians, as stored.
    'pitch+': (0.3, 0, 0), 'pitch-': (-0.3, 0, 0), 'yaw+': (0, 0.5, 0), 'yaw-': (0, -0.5, 0),
    'roll+': (0, 0, 0.25), 'roll-': (0, 0, -0.25), 'combined': (0.2, -0.7, 0.3),
    'large_yaw': (-0.15, 1.3, 0.1), 'other': (-0.35, 0.9, -0.4),
}


@pytest.mark.parametrize('name', DDFA_CASES)
def test_pose_para_agrees_with_fitting_3ddfa_projections(name):
  angles = DDFA_CASES[name]
  pose_para = np.array([*angles, 225.0, 230.0, 0.0, 8e-4], np.float32)
  landmarks = _ddfa_project(pose_para.astype(np.float64))
  from_para = pose_fit.pose_from_pose_para(pose_para[None])[0]  # Stored as (1, 7).
  from_points = pose_fit.pose_from_landmarks(landmarks)
  assert _angle_error(from_para, from_points).max() < 0.5  # Exact data: they must agree.
  # Signs: ours = (-yaw, pitch, roll) of 3DDFA's when one angle is non-zero.
  pitch, yaw, roll = angles
  if sum(a != 0 for a in angles) == 1:
    np.testing.assert_allclose(from_para, [-yaw, pitch, roll], atol=1e-6)
  for ours, theirs in zip(from_points, (-yaw, pitch, roll)):
    if abs(theirs) > 0.05:
      assert np.sign(ours) == np.sign(theirs)


def test_pose_para_round_trip():
  rng = np.random.default_rng(4)
  poses = np.stack([rng.uniform(-1.5, 1.5, 100), rng.uniform(-1.0, 1.0, 100),
                    rng.uniform(-1.0, 1.0, 100)], -1)
  pose_para = pose_fit.pose_para_from_pose(poses, translation=(1.0, 2.0, 3.0), scale=5e-4)
  assert pose_para.shape == (100, 7)
  np.testing.assert_allclose(pose_para[:, 3:], np.broadcast_to([1, 2, 3, 5e-4], (100, 4)),
                             rtol=1e-6)
  assert _angle_error(pose_fit.pose_from_pose_para(pose_para), poses).max() < 1e-4
  ddfa = np.stack([rng.uniform(-1.0, 1.0, 100), rng.uniform(-1.4, 1.4, 100),
                   rng.uniform(-1.0, 1.0, 100)], -1)
  back = pose_fit.pose_para_from_pose(pose_fit.pose_from_pose_para(
      np.concatenate([ddfa, np.zeros((100, 4))], -1)))[:, :3]
  assert _angle_error(back, ddfa).max() < 1e-4


def test_rendered_pose_written_as_pose_para_and_recovered(rendered):
  """The reverse direction: a rendered face's pose as Pose_Para, the mean face projected with
  3DDFA's forward model for it, fitted back; and the rendered landmarks agree with it too."""
  pose_para = pose_fit.pose_para_from_pose(rendered['pose'], translation=(225.0, 225.0, 0.0),
                                           scale=8e-4)
  landmarks = np.stack([_ddfa_project(p.astype(np.float64)) for p in pose_para])
  recovered = pose_fit.pose_from_landmarks(landmarks)
  assert _angle_error(recovered, rendered['pose']).max() < 0.01
  assert _angle_error(pose_fit.pose_from_pose_para(pose_para), rendered['pose']).max() < 1e-3
  from_render = pose_fit.pose_from_landmarks(rendered['landmarks'])
  assert np.median(_angle_error(from_render, pose_fit.pose_from_pose_para(pose_para)), 0).max() < 3


# ---------------------------------------------------------------------------------------------
# Shapes and errors.

def test_shapes():
  points = _project(np.zeros(3))[0]
  assert pose_fit.pose_from_landmarks(np.zeros((0, 68, 2))).shape == (0, 3)
  assert pose_fit.pose_from_landmarks(np.broadcast_to(points, (2, 3, 68, 2))).shape == (2, 3, 3)
  assert pose_fit.pose_from_landmarks(points.astype(np.float32).tolist()).shape == (3,)
  assert pose_fit.pose_from_landmarks(np.rint(points).astype(np.int32)).shape == (3,)
  assert pose_fit.pose_from_pose_para(np.zeros((1, 7))).shape == (1, 3)
  assert pose_fit.pose_para_from_pose(np.zeros(3)).shape == (7,)


@pytest.mark.parametrize('landmarks, match', [
    (np.zeros((68, 3)), r'\[\.\.\., 68, 2\]'),
    (np.zeros((67, 2)), r'\[\.\.\., 68, 2\]'),
    (np.zeros(136), r'\[\.\.\., 68, 2\]'),
    (np.full((68, 2), 'a'), 'real numeric'),
    (np.zeros((68, 2), complex), 'real numeric'),
    (np.zeros((68, 2)), 'degenerate'),
])
def test_bad_landmarks_raise(landmarks, match):
  with pytest.raises(ValueError, match=match):
    pose_fit.pose_from_landmarks(landmarks)


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_landmarks_raise(bad):
  points = np.repeat(_project(np.zeros(3)), 3, 0)
  points[1, 5, 0] = bad
  with pytest.raises(ValueError, match=r'finite.*1 face.*\(1,\)'):
    geometry.pose_from_landmarks(points)


def test_bad_options_raise():
  points = _project(np.zeros(3))[0]
  with pytest.raises(ValueError, match='>= 0'):
    pose_fit.pose_from_landmarks(points, weights=-np.ones(68))
  with pytest.raises(ValueError, match='broadcast'):
    pose_fit.pose_from_landmarks(points, weights=np.ones(5))
  with pytest.raises(ValueError, match='at least 4'):
    pose_fit.pose_from_landmarks(points, weights=np.eye(68)[:3].sum(0))
  with pytest.raises(ValueError, match='hidden_jaw_weight'):
    pose_fit.pose_from_landmarks(points, hidden_jaw_weight=2.0)
  with pytest.raises(ValueError, match='cauchy_scale'):
    pose_fit.pose_from_landmarks(points, cauchy_scale=0.0)
  with pytest.raises(ValueError, match=r'\[\.\.\., 7\]'):
    pose_fit.pose_from_pose_para(np.zeros(6))
  with pytest.raises(ValueError, match='finite'):
    pose_fit.pose_from_pose_para(np.full(7, np.nan))
  with pytest.raises(ValueError, match=r'\[\.\.\., 3\]'):
    pose_fit.pose_para_from_pose(np.zeros(2))
