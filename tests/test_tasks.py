"""Tasks: masked evaluation sums and the global finiteness count, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from treemoe_jax import geometry
from treemoe_jax import metrics
from treemoe_jax import tasks


def _micro_alignment_config():
  config = default.get_config('tree_moe', 'tiny')
  with config.unlocked():
    config.model.image_size, config.model.patch_size = 64, 8
    config.model.num_stages = 1  # eager below: every op runs alone, so keep the model small
    config.model.cnn_features = (4, 4, 4, 4, 4)
    config.model.num_regression_experts, config.model.regression_gate_depth = 4, 2
    config.model.regression_hidden = 8
  return config


def _padded_batch(rng, real: int, padding: int) -> dict:
  """`real` faces, then `padding` all-zero rows (mask False), as eval_dataset pads."""
  base = geometry.MEAN_FACE_3D[:, :2] * 2.5 + 32
  landmarks = base + rng.normal(0, 1.0, (real, 68, 2))
  zeros = np.zeros((padding, 68, 2))
  return {
      'image': np.concatenate([rng.uniform(-1, 1, (real, 64, 64)), np.zeros((padding, 64, 64))]
                              ).astype(np.float32),
      'landmarks': np.concatenate([landmarks, zeros]).astype(np.float32),
      'init_shape': np.concatenate([np.broadcast_to(base, (real, 68, 2)), zeros]
                                   ).astype(np.float32),
      'pose': np.zeros((real + padding, 3), np.float32),
      'mask': np.arange(real + padding) < real,
  }


@pytest.mark.parametrize('jit', [False, True])
def test_alignment_eval_sums_ignore_padding_rows(jit):
  # A padding row's normaliser is 0, so its NME is inf or NaN; inf * 0 is NaN (IEEE), so a
  # masked sum must select, not multiply. Unjitted, every op runs alone: no fusion hides it.
  task = tasks.alignment_task(_micro_alignment_config())
  variables = task.init(jax.random.key(0))
  batch = _padded_batch(np.random.default_rng(0), real=3, padding=2)
  fn = jax.jit(task.eval_sums) if jit else task.eval_sums
  with jax.disable_jit(not jit):
    sums = jax.device_get(fn(variables, batch))
  assert sums['count'] == 3
  assert all(np.isfinite(v) for v in sums.values()), sums
  # Reference: the model's own per-face shapes, NME by the numpy metric on the real rows only.
  out = task.model.apply(variables, batch['image'], batch['init_shape'], train=False)
  for k in range(out['stage_shapes'].shape[0]):
    expected = metrics.nme(np.asarray(out['stage_shapes'][k][:3]), batch['landmarks'][:3],
                           'box').sum()
    np.testing.assert_allclose(sums[f'nme/stage{k}'], expected, rtol=1e-4)
  np.testing.assert_allclose(
      sums['nme/init'], metrics.nme(batch['init_shape'][:3], batch['landmarks'][:3], 'box').sum(),
      rtol=1e-5)


def test_masked_sum_selects_instead_of_multiplying():
  values = jnp.array([1.0, jnp.inf, jnp.nan, 2.0])
  mask = jnp.array([True, False, False, True])
  with jax.disable_jit():
    assert float(tasks.masked_sum(values, mask)) == 3.0
    assert np.isnan(float(jnp.sum(values * mask)))  # what multiplying by the mask gives


def test_nonfinite_inputs_counts_every_nan_and_inf_of_float_keys():
  batch = {'image': jnp.array([[0.0, jnp.nan], [jnp.inf, 1.0]]),
           'landmarks': jnp.zeros((2, 3)), 'mask': jnp.array([True, False])}
  counts = jax.jit(tasks.nonfinite_inputs)(batch)
  assert {k: int(v) for k, v in counts.items()} == {'nonfinite/image': 2,
                                                    'nonfinite/landmarks': 0}
