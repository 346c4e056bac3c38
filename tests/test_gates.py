"""Gates against independent references: brute-force root-to-leaf products, numpy softmax."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from treemoe_jax.nn import gates


def brute_force_leaves(logits: np.ndarray) -> np.ndarray:
  """mu_l as eq. 10 literally: walk each leaf's root-to-leaf path, one factor per node."""
  num_nodes = logits.shape[-1]
  depth = int(np.log2(num_nodes + 1))
  with np.errstate(over='ignore'):  # exp(1e4) = inf gives the exact limit 0
    d = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))  # P(left) per node
  leaves = []
  for path in itertools.product([0, 1], repeat=depth):  # 0 = left, leaves left to right
    node, prob = 0, np.ones(logits.shape[:-1])
    for turn in path:
      prob = prob * (d[..., node] if turn == 0 else 1 - d[..., node])
      node = 2 * node + 1 + turn
    leaves.append(prob)
  return np.stack(leaves, -1)


@pytest.mark.parametrize('depth', [1, 2, 3, 4, 5, 6])
def test_tree_leaves_equal_brute_force_product(depth):
  logits = np.random.default_rng(depth).normal(0, 3, size=(5, 2, 2**depth - 1)).astype(np.float32)
  leaves = np.asarray(gates.tree_leaf_probs(jnp.asarray(logits)))
  assert leaves.shape == (5, 2, 2**depth)
  np.testing.assert_allclose(leaves, brute_force_leaves(logits), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(leaves.sum(-1), 1.0, rtol=1e-5)


def test_tree_leaf_order_follows_heap_layout():
  # Depth 2, root certainly right, its right child (node 2) certainly left: leaf 2 of 0..3.
  logits = jnp.array([-50.0, 0.0, 50.0])
  np.testing.assert_allclose(gates.tree_leaf_probs(logits), [0, 0, 1, 0], atol=1e-12)


@pytest.mark.parametrize('depth', [1, 3, 6])
def test_tree_leaves_finite_for_saturated_logits(depth):
  rng = np.random.default_rng(0)
  logits = rng.choice([-1e4, 1e4], size=(16, 2**depth - 1)).astype(np.float32)
  leaves = np.asarray(gates.tree_leaf_probs(jnp.asarray(logits)))
  assert np.all(np.isfinite(leaves))
  np.testing.assert_allclose(leaves.sum(-1), 1.0, rtol=1e-6)
  # Hard routing: exactly one leaf, the one the signs point to, gets everything.
  np.testing.assert_array_equal(leaves.max(-1), 1.0)
  np.testing.assert_array_equal(leaves, brute_force_leaves(logits).round())
  grads = jax.grad(lambda z: gates.tree_leaf_log_probs(z)[..., 0].sum())(jnp.asarray(logits))
  assert np.all(np.isfinite(grads))


def test_tree_leaf_probs_rejects_incomplete_tree():
  with pytest.raises(ValueError, match='2\\*\\*D - 1'):
    gates.tree_leaf_probs(jnp.zeros((4, 6)))


def test_tree_gate_is_sigmoid_of_dense_nodes():
  gate = gates.TreeGate(depth=3)
  x = jax.random.normal(jax.random.key(0), (4, 10))
  params = gate.init(jax.random.key(1), x)['params']
  w, b = np.asarray(params['nodes']['kernel']), np.asarray(params['nodes']['bias'])
  assert w.shape == (10, 7)
  expected = brute_force_leaves(np.asarray(x) @ w + b)
  np.testing.assert_allclose(gate.apply({'params': params}, x), expected, rtol=1e-5, atol=1e-7)


def test_softmax_gate_equals_numpy_softmax():
  gate = gates.SoftmaxGate(num_experts=8)
  x = jax.random.normal(jax.random.key(0), (6, 5))
  params = gate.init(jax.random.key(1), x)['params']
  z = np.asarray(x, np.float64) @ np.asarray(params['logits']['kernel']) + np.asarray(
      params['logits']['bias'])
  expected = np.exp(z - z.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(gate.apply({'params': params}, x), expected, rtol=1e-5)


def test_uniform_gate():
  weights = gates.UniformGate(num_experts=4).apply({}, jnp.ones((3, 2, 7)))
  np.testing.assert_array_equal(weights, np.full((3, 2, 4), 0.25))


def test_gradients_reach_every_tree_node():
  gate = gates.TreeGate(depth=4)
  x = jax.random.normal(jax.random.key(0), (32, 6))
  params = gate.init(jax.random.key(1), x)['params']
  target = jax.random.dirichlet(jax.random.key(2), jnp.ones(16), (32,))
  grads = jax.grad(lambda p: jnp.sum((gate.apply({'params': p}, x) - target)**2))(params)
  per_node = np.abs(np.asarray(grads['nodes']['kernel'])).sum(0)  # [N]
  assert per_node.shape == (15,) and np.all(per_node > 0)


def test_make_gate_checks_tree_depth_against_experts():
  with pytest.raises(ValueError, match='depth 3 has 8 leaves.*6 experts'):
    gates.make_gate('tree', num_experts=6, depth=3)
  with pytest.raises(ValueError):
    gates.make_gate('nonsense', num_experts=4)
  assert isinstance(gates.make_gate('tree', 8, 3), gates.TreeGate)


def test_gate_entropy():
  np.testing.assert_allclose(gates.gate_entropy(jnp.full((2, 8), 1 / 8)), np.log(8), rtol=1e-6)
  np.testing.assert_allclose(gates.gate_entropy(jnp.eye(4)), 0.0, atol=1e-7)
