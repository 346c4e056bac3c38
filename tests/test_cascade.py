"""cascade.top_k: exactly k experts per row, ties to the lowest index, against a numpy loop."""

import jax
import jax.numpy as jnp
from jax import test_util as jtu
import numpy as np
import pytest

from treemoe_jax.nn import cascade


def numpy_top_k(weights: np.ndarray, k: int) -> np.ndarray:
  """Reference: per row, the k largest (a stable sort puts ties in index order), renormalised."""
  out = np.zeros_like(weights)
  for row, w in enumerate(weights):
    keep = np.argsort(-w, kind='stable')[:k]
    out[row, keep] = w[keep] / w[keep].sum()
  return out


@pytest.mark.parametrize('k', [1, 2, 3])
def test_uniform_weights_keep_exactly_k_lowest_indices(k):
  weights = jnp.full((2, 4), 0.25)
  kept = np.asarray(cascade.top_k(weights, k))
  assert np.all(np.count_nonzero(kept, axis=-1) == k)
  np.testing.assert_allclose(kept.sum(-1), 1.0, rtol=1e-6)
  expected = np.zeros((2, 4))
  expected[:, :k] = 1.0 / k  # hand-picked: ties go to experts 0..k-1
  np.testing.assert_allclose(kept, expected, rtol=1e-6)


def test_tied_weights_keep_exactly_k():
  weights = jnp.asarray([[0.3, 0.3, 0.3, 0.1], [0.1, 0.3, 0.3, 0.3]])
  kept = np.asarray(cascade.top_k(weights, 2))
  np.testing.assert_allclose(kept, [[0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]], rtol=1e-6)


@pytest.mark.parametrize('k', [1, 3, 7])
def test_random_weights_match_numpy_argsort(k):
  rng = np.random.default_rng(k)
  weights = rng.dirichlet(np.ones(8), size=16).astype(np.float32)  # [B, L] rows summing to 1
  weights[0, :4] = weights[0, 4]  # one row with a five-way tie at the top or middle
  kept = cascade.top_k(jnp.asarray(weights), k)
  np.testing.assert_allclose(kept, numpy_top_k(weights, k), rtol=1e-6, atol=1e-7)
  assert np.all(np.count_nonzero(np.asarray(kept), axis=-1) == k)


@pytest.mark.parametrize('k', [-1, 0, 4, 5])
def test_k_outside_one_to_l_minus_one_keeps_every_expert(k):
  weights = jnp.asarray([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25]])
  np.testing.assert_array_equal(cascade.top_k(weights, k), weights)


def test_leading_axes_and_jit():
  rng = np.random.default_rng(0)
  weights = rng.dirichlet(np.ones(6), size=(3, 5)).astype(np.float32)  # [K, B, L]
  kept = jax.jit(cascade.top_k, static_argnums=1)(jnp.asarray(weights), 2)
  np.testing.assert_allclose(kept, numpy_top_k(weights.reshape(15, 6), 2).reshape(3, 5, 6),
                             rtol=1e-6, atol=1e-7)


def test_gradient_flows_to_kept_experts_only():
  weights = jnp.asarray([[0.05, 0.4, 0.15, 0.3, 0.1]])
  jtu.check_grads(lambda w: cascade.top_k(w, 2), (weights,), order=1, modes=['rev'],
                  atol=1e-2, rtol=1e-2)  # against finite differences
  grad = jax.jit(jax.grad(lambda w: cascade.top_k(w, 2)[0, 1]))(weights)
  # d/dw of w1 / (w1 + w3) at the kept experts 1 and 3, zero elsewhere (by hand).
  expected = np.zeros((1, 5))
  expected[0, 1] = 0.3 / 0.7**2
  expected[0, 3] = -0.4 / 0.7**2
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
