"""Tasks: masked evaluation sums and the global finiteness count, against numpy."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from treemoe_jax import geometry
from treemoe_jax import metrics
from treemoe_jax.train import tasks


class _FixedShifts(nn.Module):
  """Stands in for the cascade: stage k predicts s(0) + k + 1 px, so the NME is known exactly."""
  num_stages: int = 2

  @nn.compact
  def __call__(self, images, init_shape, train=False):
    del images, train
    return {'stage_shapes': jnp.stack([init_shape + k + 1.0 for k in range(self.num_stages)])}


def _padded_batch(rng, real: int, padding: int) -> dict:
  """`real` faces, then `padding` all-zero rows (mask False), as eval_dataset pads."""
  base = geometry.MEAN_FACE_3D[:, :2] * 2.5 + 32
  landmarks = base + rng.normal(0, 1.0, (real, 68, 2))
  zeros = np.zeros((padding, 68, 2))
  return {
      'image': np.zeros((real + padding, 64, 64), np.float32),
      'landmarks': np.concatenate([landmarks, zeros]).astype(np.float32),
      'init_shape': np.concatenate([np.broadcast_to(base, (real, 68, 2)), zeros]
                                   ).astype(np.float32),
      'pose': np.zeros((real + padding, 3), np.float32),
      'mask': np.arange(real + padding) < real,
  }


@pytest.mark.parametrize('jit', [False, True])
def test_alignment_eval_sums_ignore_padding_rows(jit, monkeypatch):
  # A padding row's normaliser is 0, so its NME is inf or NaN; inf * 0 is NaN (IEEE), so a
  # masked sum must select, not multiply. Unjitted, every op runs alone: no fusion hides it.
  monkeypatch.setattr(tasks.models, 'create', lambda config, inference=False: _FixedShifts())
  task = tasks.alignment_task(default.get_config('tree_moe', 'cpu'))
  batch = _padded_batch(np.random.default_rng(0), real=3, padding=2)
  fn = jax.jit(task.eval_sums) if jit else task.eval_sums
  with jax.disable_jit(not jit):
    sums = jax.device_get(fn({}, batch))
  assert sums['count'] == 3
  assert all(np.isfinite(v) for v in sums.values()), sums
  real = slice(0, 3)  # reference: the numpy metric on the real rows only
  for k in range(2):
    expected = metrics.nme(batch['init_shape'][real] + k + 1, batch['landmarks'][real], 'box')
    np.testing.assert_allclose(sums[f'nme/stage{k}'], expected.sum(), rtol=1e-5)
  np.testing.assert_allclose(
      sums['nme/init'], metrics.nme(batch['init_shape'][real], batch['landmarks'][real],
                                    'box').sum(), rtol=1e-5)


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
