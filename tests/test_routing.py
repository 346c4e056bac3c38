"""Routing at inference (routing.py) against independent references: a numpy walk down the tree,
numpy top-k, the dense committee's own outputs picked by index, XLA's FLOP count."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tree_moe, pose_tree_moe
from treemoe_jax.nn import cascade
from treemoe_jax.nn import experts
from treemoe_jax.nn import gates
from treemoe_jax.nn import models
from treemoe_jax.nn import routing


def numpy_greedy_leaf(logits: np.ndarray) -> np.ndarray:
  """Walk each row from the root, left when sigmoid(z) >= 1/2, in a Python loop."""
  depth = int(np.log2(logits.shape[-1] + 1))
  leaves = []
  for row in logits.reshape(-1, logits.shape[-1]):
    node = 0
    for _ in range(depth):
      node = 2 * node + (1 if 1 / (1 + np.exp(-row[node])) >= 0.5 else 2)
    leaves.append(node - (2**depth - 1))
  return np.array(leaves).reshape(logits.shape[:-1])


def greedy_from_leaf_probs(mu: np.ndarray) -> np.ndarray:
  """The same descent read from leaf probabilities: go to the child subtree of larger mass."""
  leaves = []
  for row in mu:
    lo, hi = 0, len(row)
    while hi - lo > 1:
      mid = (lo + hi) // 2
      lo, hi = (lo, mid) if row[lo:mid].sum() >= row[mid:hi].sum() else (mid, hi)
    leaves.append(lo)
  return np.array(leaves)


def test_parse():
  assert routing.parse('dense') == routing.DENSE
  assert routing.parse('greedy') == routing.Routing('greedy', 1)
  assert routing.parse('topk:4') == routing.Routing('topk', 4)
  assert str(routing.parse('topk:4')) == 'topk:4'
  for bad in ('topk:0', 'topk:x', 'top4', 'sparse', 'topk:-1'):
    with pytest.raises(ValueError, match='topk:K'):
      routing.parse(bad)


@pytest.mark.parametrize('depth', [1, 3, 6])
def test_greedy_leaf_equals_a_walk_down_the_tree(depth):
  logits = np.random.default_rng(depth).normal(0, 2, (50, 2**depth - 1)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(gates.greedy_leaf(jnp.asarray(logits))),
                                numpy_greedy_leaf(logits))


def test_greedy_differs_from_most_probable_leaf():
  # Root: 0.6 left. Left child 50/50 -> leaves 0.3, 0.3. Right child certainly left -> 0.4, 0.
  logits = jnp.array([[np.log(0.6 / 0.4), 0.0, 50.0]], jnp.float32)
  mu = np.asarray(gates.tree_leaf_probs(logits))[0]
  np.testing.assert_allclose(mu, [0.3, 0.3, 0.4, 0.0], atol=1e-6)
  assert int(gates.greedy_leaf(logits)[0]) == 0  # greedy commits to the left subtree
  chosen, weights = routing.select(jnp.asarray(mu[None]), routing.parse('topk:1'))
  assert int(chosen[0, 0]) == 2 and float(weights[0, 0]) == 1.0
  chosen, weights = routing.select(jnp.asarray(mu[None]), routing.parse('greedy'), logits)
  assert int(chosen[0, 0]) == 0 and float(weights[0, 0]) == 1.0


def test_topk_selects_the_k_largest_renormalised():
  weights = jax.nn.softmax(jax.random.normal(jax.random.key(0), (6, 16)))
  chosen, kept = routing.select(weights, routing.parse('topk:3'))
  expected = np.argsort(-np.asarray(weights), axis=-1, kind='stable')[:, :3]
  np.testing.assert_array_equal(np.sort(np.asarray(chosen), -1), np.sort(expected, -1))
  picked = np.take_along_axis(np.asarray(weights), expected, -1)
  np.testing.assert_allclose(np.asarray(kept), picked / picked.sum(-1, keepdims=True), rtol=1e-6)
  assert routing.select(weights, routing.parse('topk:16')) is None  # all of them: dense
  assert routing.select(weights, routing.DENSE) is None


@pytest.mark.parametrize('lowering', ['gather', 'rows', 'dense', 'auto'])
def test_gathered_regressors_equal_the_dense_committee_picked_by_index(lowering):
  committee = experts.ExpertMLPs(num_experts=8, hidden=16, outputs=10, routed_lowering=lowering)
  h = jax.random.normal(jax.random.key(1), (5, 12))
  variables = committee.init(jax.random.key(2), h)
  dense = np.asarray(committee.apply(variables, h))  # [B, E, O]
  two = jnp.array([[3, 0], [7, 7], [1, 2], [5, 6], [0, 4]])
  for chosen in (two, two[:, :1]):  # K = 2 (one row twice the same expert) and K = 1
    gathered = np.asarray(committee.apply(variables, h, chosen))  # [B, K, O]
    np.testing.assert_allclose(
        gathered, np.take_along_axis(dense, np.asarray(chosen)[..., None], 1),
        rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('conv_impl,lowering', [('im2col', 'gather'), ('xla', 'gather'),
                                                 ('im2col', 'rows'), ('xla', 'auto')])
def test_gathered_cnns_equal_the_dense_committee_picked_by_index(conv_impl, lowering):
  committee = experts.ExpertCNNs(num_experts=4, features=(4, 6, 5), kernel_sizes=(5, 3, 1),
                                 conv_impl=conv_impl, routed_lowering=lowering)
  crops = jax.random.normal(jax.random.key(3), (3, 2, 8, 8))
  variables = jax.jit(committee.init)(jax.random.key(4), crops)
  apply = jax.jit(committee.apply)
  dense = np.asarray(apply(variables, crops))  # [B, E, P*n]
  two = jnp.array([[2, 1], [0, 0], [3, 2]])  # two per row, one row twice the same expert
  for chosen in (two, two[:, :1]):  # and one per row
    gathered = np.asarray(apply(variables, crops, chosen))
    np.testing.assert_allclose(
        gathered, np.take_along_axis(dense, np.asarray(chosen)[..., None], 1),
        rtol=1e-4, atol=1e-5)


def test_routed_lowering_per_backend_follows_the_measured_rule():
  resolve = experts.resolve_routed_lowering
  # CPU: pair by pair while few pairs, or few experts a row of many; else all experts.
  assert resolve('auto', 32, 1, 64, 'cpu') == 'rows'  # 32 pairs < 128
  assert resolve('auto', 1024, 1, 64, 'cpu') == 'rows'  # top-1 of 64: 1 <= 64 / 16
  assert resolve('auto', 128, 4, 64, 'cpu') == 'rows'  # 4 <= 64 / 16
  assert resolve('auto', 32, 8, 64, 'cpu') == 'dense'  # 256 pairs, 8 > 4
  assert resolve('auto', 8, 8, 64, 'cpu') == 'rows'  # 64 pairs < 128
  assert resolve('auto', 16, 1, 8, 'cpu') == 'dense'  # 16 pairs = 2 E, 1 > 8 / 16
  # Elsewhere, unmeasured with 'rows': gather while fewer pairs than experts.
  assert resolve('auto', 32, 1, 64, 'gpu') == 'gather'
  assert resolve('auto', 64, 1, 64, 'gpu') == 'dense'
  assert resolve('rows', 64, 1, 64, 'gpu') == 'rows'  # an explicit choice is kept
  with pytest.raises(ValueError, match='valid: auto, gather, rows, dense'):
    resolve('scan', 1, 1, 64)
  # A committee without 'dense' (the CNNs): pair by pair on CPU, gathered elsewhere, any size.
  assert resolve('auto', 32, 8, 64, 'cpu', dense=False) == 'rows'
  assert resolve('auto', 64, 1, 64, 'gpu', dense=False) == 'gather'


def test_unknown_routed_lowering_of_cnns_is_refused():
  committee = experts.ExpertCNNs(num_experts=2, features=(3, 2), kernel_sizes=(3, 1),
                                 routed_lowering='dense')
  crops = jnp.zeros((1, 1, 8, 8))
  variables = committee.init(jax.random.key(0), crops)
  with pytest.raises(ValueError, match='valid: auto, gather, rows'):
    committee.apply(variables, crops, jnp.array([[1]]))


@functools.lru_cache(maxsize=None)
def _model_and_inputs(module, batch=8, seed=0, num_stages=1):
  """A tiny model of `module`'s architecture (one init per test session: init compiles slowly)."""
  config = module.get_config('cpu')
  config.model.num_stages = num_stages  # one stage is the unit routing acts on; compiles fast
  config.model.patch_scales = ()
  config.model.gate_pose = 'truth'  # the pose gate reads a given pose: no ResNet to compile
  model = models.create(config)
  variables = models.init(model, jax.random.key(seed), batch)
  # Sharper gates than at init, so that routing choices matter.
  variables = jax.tree.map(
      lambda x: x * 4 if x.ndim == 2 and x.shape[-1] in (3, 7, 15, 63) else x, variables)
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.uniform(-1, 1, (batch, 150, 150)), jnp.float32)
  init_shape = jnp.asarray(rng.uniform(40, 110, (batch, 68, 2)), jnp.float32)
  pose = jnp.asarray(rng.uniform(-1.5, 1.5, (batch, 3)), jnp.float32)
  return config, model, variables, images, init_shape, pose


# pose_tree_moe has both learned gates (the pose tree over CNNs, the tree over regressors).
@pytest.mark.parametrize('module', [pose_tree_moe])
def test_topk_of_every_expert_equals_dense(module):
  config, model, variables, images, init_shape, pose = _model_and_inputs(module)
  run = jax.jit(lambda r: model.apply(variables, images, init_shape, pose=pose, routing=r)['shape'],
                static_argnums=0)
  k = max(config.model.num_regression_experts, config.model.num_representation_experts)
  np.testing.assert_allclose(np.asarray(run(f'topk:{k}')), np.asarray(run('dense')),
                             rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize('k', [1, 3])
def test_gathered_topk_equals_masked_dense_topk(k):
  # tree_moe: the representation gate is uniform (always dense), so routing only touches the
  # regressors, which regression_top_k masks after computing all of them.
  _, model, variables, images, init_shape, _ = _model_and_inputs(tree_moe, num_stages=2)
  gathered = model.apply(variables, images, init_shape, routing=f'topk:{k}')['shape']
  masked = model.apply(variables, images, init_shape, regression_top_k=k)['shape']
  np.testing.assert_allclose(np.asarray(gathered), np.asarray(masked), rtol=1e-5, atol=1e-3)


def test_greedy_equals_top1_where_the_greedy_leaf_is_the_most_probable():
  config, _, _, images, init_shape, _ = _model_and_inputs(tree_moe, batch=64, seed=1)
  stage = cascade.CascadeStage(models.stage_spec(config.model))
  variables = stage.init(jax.random.key(5), images, init_shape, None)
  variables = jax.tree.map(lambda x: x * 6 if x.ndim == 2 and x.shape[-1] == 7 else x, variables)
  run = lambda r: stage.apply(variables, images, init_shape, None, routing=routing.parse(r))
  greedy, weights = run('greedy')
  top1, _ = run('topk:1')
  mu = np.asarray(weights['regression'])
  same = greedy_from_leaf_probs(mu) == mu.argmax(-1)
  assert same.any() and (~same).any(), 'the seed should give both kinds of faces'
  err = np.abs(np.asarray(greedy) - np.asarray(top1)).max(axis=(1, 2))
  assert err[same].max() < 1e-3
  assert err[~same].min() > 1e-3  # another expert ran


def test_routed_regression_layer_costs_k_experts_not_all():
  # XLA's own FLOP count of the compiled regression committee: top-1 does ~1/64 of dense.
  # 'vmap' for the dense side: XLA counts a scanned committee's loop body once, not 64 times.
  committee = experts.ExpertMLPs(num_experts=64, hidden=128, outputs=136, lowering='vmap')
  h = jnp.ones((32, 2040))  # 32 faces x top-1 < 64 experts: 'auto' gathers
  variables = committee.init(jax.random.key(0), h)
  chosen = jnp.zeros((32, 1), jnp.int32)

  def flops(*args):
    compiled = jax.jit(lambda v, *a: committee.apply(v, *a)).lower(variables, *args).compile()
    analysis = compiled.cost_analysis()
    return (analysis[0] if isinstance(analysis, list) else analysis)['flops']

  assert flops(h) / flops(h, chosen) > 30


def test_routing_benchmark_layer_counts_one_expert_of_64_for_top1():
  """benchmarks/routing.py's layer table on a narrow layer (16 features): every routed row is
  timed with the parameters gathered too, and XLA counts top-1 at under 1/30 of dense's FLOPs
  (one regressor of 64 runs)."""
  from benchmarks import routing as routing_benchmark  # pylint: disable=g-import-not-at-top
  rows = routing_benchmark.layer_speed(gemm=1.0, batches=(2,), features=16, min_seconds=0.01)
  by_name = {r['routing']: r for r in rows}
  assert set(by_name) == set(routing_benchmark.ROUTINGS)
  assert by_name['dense']['speedup'] == 1.0 and by_name['dense']['gathered_ms'] is None
  assert by_name['greedy']['lowering'] == experts.resolve_routed_lowering('auto', 2, 1, 64)
  assert all(r['gathered_ms'] > 0 and r['ms'] > 0 for r in rows if r['routing'] != 'dense')
  assert by_name['topk:1']['mflop_per_img'] < by_name['dense']['mflop_per_img'] / 30
  assert by_name['topk:8']['mflop_per_img'] < by_name['dense']['mflop_per_img'] / 4


def test_expected_distinct_experts_is_what_random_choices_pick():
  """benchmarks/routing.py's memory floor counts the experts that B top-1 choices spread evenly
  over E read: against 20,000 draws of random choices."""
  from benchmarks import routing as routing_benchmark  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for batch, num_experts in ((32, 64), (1, 64), (8, 8), (100, 4)):
    drawn = [len(np.unique(rng.integers(0, num_experts, batch))) for _ in range(20_000)]
    assert routing_benchmark.expected_distinct_experts(batch, num_experts) == pytest.approx(
        np.mean(drawn), abs=0.05)
