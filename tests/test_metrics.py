"""Metrics against hand-computed values and a brute-force integration of the CED.

Axis legend: B images, P = 68 landmarks.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from treemoe_jax import metrics

# Eye points in iBUG order around each eye's centre; they sum to zero, so the centroid (pupil) is
# the centre. Index 0 is the right eye's outer corner (36), index 3 the left eye's outer corner
# (45).
_EYE_OFFSETS = np.array([(-5, 0), (-2, -2), (2, -2), (5, 0), (2, 2), (-2, 2)], np.float64)


def _face(right_pupil, left_pupil, fill=(70.0, 60.0)):
  """A `[68, 2]` shape with the given pupil centres and every other point at `fill`."""
  face = np.tile(np.asarray(fill, np.float64), (68, 1))
  face[36:42] = np.asarray(right_pupil) + _EYE_OFFSETS
  face[42:48] = np.asarray(left_pupil) + _EYE_OFFSETS
  return face


def _hand_face():
  """Pupils (40, 50) and (100, 50): inter-pupil 60; corners 36 = (35, 50), 45 = (105, 50):
  inter-ocular 70; box x in [10, 130], y in [20, 110]: sqrt(120 * 90) = sqrt(10800)."""
  face = _face((40.0, 50.0), (100.0, 50.0))
  face[0] = (10, 30)
  face[16] = (130, 30)
  face[8] = (70, 110)
  face[19] = (40, 20)
  return face


# --- NME -------------------------------------------------------------------------------------


def test_shift_by_3_4_over_pupils_50_apart_is_0_1():
  # Tilted face: pupils (20, 30) and (50, 70) are 50 px apart (a 3-4-5 triangle, scaled by 10).
  gt = _face((20.0, 30.0), (50.0, 70.0))[None]
  pred = gt + np.array([3.0, 4.0])  # every point 5 px off
  np.testing.assert_allclose(metrics.nme(pred, gt), [0.1], rtol=1e-12)


def test_three_normalisers_on_a_hand_built_shape():
  gt = _hand_face()[None]
  np.testing.assert_allclose(metrics.normalizer(gt, 'inter_pupil'), [60.0], rtol=1e-12)
  np.testing.assert_allclose(metrics.normalizer(gt, 'inter_ocular'), [70.0], rtol=1e-12)
  np.testing.assert_allclose(metrics.normalizer(gt, 'box'), [np.sqrt(10800.0)], rtol=1e-12)
  pred = gt + np.array([6.0, 8.0])  # 10 px everywhere
  np.testing.assert_allclose(metrics.nme(pred, gt, 'inter_pupil'), [10 / 60], rtol=1e-12)
  np.testing.assert_allclose(metrics.nme(pred, gt, normalizer='inter_ocular'), [10 / 70],
                             rtol=1e-12)
  np.testing.assert_allclose(metrics.nme(pred, gt, 'box'), [10 / np.sqrt(10800)], rtol=1e-12)


def test_per_image_normaliser_and_uneven_errors():
  # Image 0: pupils 50 apart; image 1: the same face twice as large (pupils 100 apart).
  gt0 = _face((20.0, 30.0), (50.0, 70.0))
  gt = np.stack([gt0, 2 * gt0])
  pred = gt.copy()
  pred[:, :34, 0] += 10.0  # half of the points 10 px off, the other half exact: mean 5 px
  np.testing.assert_allclose(metrics.nme(pred, gt), [5 / 50, 5 / 100], rtol=1e-12)


def test_landmark_subset_keeps_the_full_68_point_normaliser():
  gt = _face((20.0, 30.0), (50.0, 70.0))[None]
  pred = gt.copy()
  pred[0, 0:17] += (3.0, 4.0)  # jaw 5 px off, all else exact
  np.testing.assert_allclose(metrics.nme(pred, gt), [17 * 5 / 68 / 50], rtol=1e-12)
  np.testing.assert_allclose(metrics.nme(pred, gt, indices=range(17)), [0.1], rtol=1e-12)
  np.testing.assert_allclose(metrics.nme(pred, gt, indices=[0, 48, 60, 61]), [5 / 4 / 50],
                             rtol=1e-12)
  np.testing.assert_allclose(metrics.nme(pred, gt, indices=np.arange(48, 68)), [0.0], atol=0)


def test_mask_averages_over_visible_points_only():
  gt = np.stack([_face((20.0, 30.0), (50.0, 70.0))] * 2)
  pred = gt.copy()
  pred[:, :34] += (6.0, 8.0)  # points 0-33 10 px off, 34-67 exact
  mask = np.zeros((2, 68), bool)
  mask[0, 34:] = True  # image 0 sees only the exact points
  mask[1, :34] = True  # image 1 only the wrong ones
  np.testing.assert_allclose(metrics.nme(pred, gt, mask=mask), [0.0, 10 / 50], atol=1e-15)
  # Mask and subset together. Image 0 sees 40 and 50 of the subset (exact); image 1 now sees all
  # five: 10, 20, 30 are 10 px off, 40, 50 exact -> mean 6 px.
  mask[1, 40:] = True
  np.testing.assert_allclose(metrics.nme(pred, gt, mask=mask, indices=[10, 20, 30, 40, 50]),
                             [0.0, 6 / 50], rtol=1e-12)


def test_accepts_jax_arrays_and_float32():
  gt = _face((20.0, 30.0), (50.0, 70.0))[None].astype(np.float32)
  pred = gt + np.float32([3.0, 4.0])
  out = metrics.nme(jnp.asarray(pred), jnp.asarray(gt))
  assert isinstance(out, np.ndarray) and out.shape == (1,)
  np.testing.assert_allclose(out, [0.1], rtol=1e-6)


def test_nme_jax_is_traceable_and_matches_hand_values():
  gt = np.stack([_face((20.0, 30.0), (50.0, 70.0))] * 2).astype(np.float32)
  pred = gt.copy()
  pred[:, :17] += (3.0, 4.0)
  mask = np.ones((2, 68), np.float32)
  mask[1, 17:] = 0.0  # image 1 sees the jaw only

  @jax.jit
  def f(p, g, m):
    return metrics.nme_jax(p, g, 'inter_pupil', mask=m), metrics.nme_jax(p, g, indices=range(17))

  masked, subset = f(pred, gt, mask)
  np.testing.assert_allclose(masked, [17 * 5 / 68 / 50, 0.1], rtol=1e-5)
  np.testing.assert_allclose(subset, [0.1, 0.1], rtol=1e-5)
  with pytest.raises(ValueError, match=r'\[B, 68, 2\]'):
    jax.jit(metrics.nme_jax)(pred[:, :5], gt[:, :5])


@pytest.mark.parametrize('kwargs, message', [
    (dict(pred=np.zeros((2, 68, 2)), gt=np.zeros((3, 68, 2))), 'differ in shape'),
    (dict(pred=np.zeros((68, 2)), gt=np.zeros((68, 2))), r'\[B, 68, 2\]'),
    (dict(pred=np.zeros((1, 29, 2)), gt=np.zeros((1, 29, 2))), r'\[B, 68, 2\]'),
    (dict(pred=np.zeros((1, 68, 3)), gt=np.zeros((1, 68, 3))), r'\[B, 68, 2\]'),
    (dict(normalizer='pupil'), 'inter_pupil, inter_ocular, box'),
    (dict(gt=np.ones((1, 68, 2))), 'normaliser is zero'),
    (dict(pred=np.full((1, 68, 2), np.nan)), 'pred has 136 non-finite'),
    (dict(mask=np.ones((1, 67))), r'mask must be \[B, 68\]'),
    (dict(mask=np.zeros((1, 68))), 'no visible landmark'),
    (dict(indices=[0, 68]), r'indices must lie in \[0, 68\)'),
    (dict(indices=[]), 'non-empty'),
])
def test_nme_clear_errors(kwargs, message):
  gt = _hand_face()[None]
  args = dict(pred=gt + 1.0, gt=gt) | kwargs
  with pytest.raises(ValueError, match=message):
    metrics.nme(**args)


def test_nan_in_ground_truth_and_box_normaliser_degenerate():
  gt = _hand_face()[None]
  bad = gt.copy()
  bad[0, 5, 1] = np.nan
  with pytest.raises(ValueError, match='gt has 1 non-finite'):
    metrics.nme(gt, bad)
  flat = gt.copy()
  flat[0, :, 1] = 7.0  # all points on one line: h = 0
  with pytest.raises(ValueError, match='box normaliser is zero'):
    metrics.nme(flat, flat, 'box')
  with pytest.raises(ValueError, match='valid ones are inter_pupil, inter_ocular, box'):
    metrics.normalizer(gt, 'iod')


# --- FR, CED, AUC ----------------------------------------------------------------------------


def _brute_force_ced_area(errors, limit, num=1_000_000, chunk=50_000):
  """Midpoint rule on `num` points of the CED counted as #{e <= t} / B, chunk by chunk."""
  dt = limit / num
  total = 0.0
  for start in range(0, num, chunk):
    t = (np.arange(start, min(start + chunk, num)) + 0.5) * dt
    total += np.sum(errors[None, :] <= t[:, None]) / errors.size
  return total * dt / limit


@pytest.mark.parametrize('limit', [0.08, 0.10])
def test_auc_and_failure_rate_against_brute_force_ced(limit):
  rng = np.random.default_rng(0)
  errors = np.concatenate([rng.uniform(0, 0.15, 60), rng.exponential(0.04, 40)])
  # The midpoint rule misses at most one grid cell (dt) per step: error <= B * dt / B / limit.
  np.testing.assert_allclose(metrics.auc(errors, limit), _brute_force_ced_area(errors, limit),
                             atol=2e-6)
  expected_fr = sum(1 for e in errors if e > limit) / len(errors)
  assert metrics.failure_rate(errors, limit) == pytest.approx(expected_fr, abs=1e-15)
  _, fraction = metrics.ced(errors, [limit])
  assert metrics.failure_rate(errors, limit) == pytest.approx(1 - fraction[0], abs=1e-15)


def test_auc_hand_cases():
  assert metrics.auc(np.zeros(10), 0.08) == 1.0
  assert metrics.auc(np.full(10, 0.2), 0.08) == 0.0
  assert metrics.auc([0.08], 0.08) == 0.0  # at the limit: counted, but the step has no width
  assert metrics.auc([0.02], 0.08) == pytest.approx(0.75, abs=1e-15)
  limit, n = 0.1, 1000
  grid = (np.arange(n) + 0.5) / n * limit  # evenly spread on [0, limit]: exactly one half
  assert metrics.auc(grid, limit) == pytest.approx(0.5, abs=1e-12)
  uniform = np.random.default_rng(1).uniform(0, limit, 20_000)
  assert metrics.auc(uniform, limit) == pytest.approx(0.5, abs=0.01)


def test_failure_rate_is_strictly_above_threshold():
  errors = [0.01, 0.08, 0.0801, 0.5]
  assert metrics.failure_rate(errors, 0.08) == 0.5
  assert metrics.failure_rate(errors, 0.10) == 0.25
  assert metrics.failure_rate(np.zeros(3), 0.08) == 0.0


def test_ced_hand_case_and_default_grid():
  t, fraction = metrics.ced([0.01, 0.02, 0.02, 0.05], [0.0, 0.01, 0.015, 0.02, 0.1])
  np.testing.assert_array_equal(t, [0.0, 0.01, 0.015, 0.02, 0.1])
  np.testing.assert_array_equal(fraction, [0.0, 0.25, 0.25, 0.75, 1.0])
  t, fraction = metrics.ced(jnp.asarray([0.03, 0.2]))
  assert t[0] == 0.0 and t[-1] == pytest.approx(0.1) and len(t) == len(fraction) == 1001
  assert fraction[0] == 0.0 and fraction[-1] == 0.5


def test_summary_hand_values():
  row = metrics.summary([0.0, 0.05, 0.09, 0.2])
  assert set(row) == {'num_images', 'nme', 'fr@0.08', 'auc@0.08', 'fr@0.10', 'auc@0.10'}
  assert row['num_images'] == 4
  assert row['nme'] == pytest.approx(0.085)
  assert row['fr@0.08'] == 0.5 and row['fr@0.10'] == 0.25
  assert row['auc@0.08'] == pytest.approx((0.08 + 0.03) / 4 / 0.08)  # 0.34375
  assert row['auc@0.10'] == pytest.approx((0.10 + 0.05 + 0.01) / 4 / 0.10)  # 0.4


@pytest.mark.parametrize('errors, message', [
    ([], 'non-empty'),
    ([[0.1]], 'non-empty'),
    ([0.1, np.nan], 'non-finite'),
    ([0.1, -0.01], 'non-negative'),
])
def test_error_vector_clear_errors(errors, message):
  for fn in (lambda e: metrics.failure_rate(e, 0.08), lambda e: metrics.auc(e, 0.08),
             metrics.ced, metrics.summary):
    with pytest.raises(ValueError, match=message):
      fn(errors)


def test_threshold_and_limit_must_be_positive():
  with pytest.raises(ValueError, match='limit must be a positive'):
    metrics.auc([0.1], 0.0)
  with pytest.raises(ValueError, match='threshold must be a positive'):
    metrics.failure_rate([0.1], -0.1)
