"""The mixture-of-experts objectives (train/expert_losses.py) and the expert paths they read."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from treemoe_jax.nn import gates
from treemoe_jax.nn import models
from treemoe_jax.train import expert_losses
from treemoe_jax.train import tasks


# --- Each term against a hand-computed case. ---

def test_weighted_expert_loss_by_hand():
  errors = jnp.array([1.0, 3.0, 2.0, 5.0]).reshape(1, 2, 1, 2)  # [K, B, L, M]: two faces
  weights = jnp.array([0.25, 0.75, 1.0, 0.0]).reshape(1, 2, 1, 2)
  # Face 0: 0.25 * 1 + 0.75 * 3 = 2.5; face 1: 2; mean 2.25.
  np.testing.assert_allclose(expert_losses.weighted_expert_loss(errors, weights), [2.25])


def test_competitive_expert_loss_by_hand():
  errors = jnp.array([1.0, 3.0]).reshape(1, 1, 1, 2)
  weights = jnp.array([0.25, 0.75]).reshape(1, 1, 1, 2)
  for scale in (0.5, 1.0, 4.0):
    expected = -scale * math.log(0.25 * math.exp(-1 / scale) + 0.75 * math.exp(-3 / scale))
    np.testing.assert_allclose(expert_losses.competitive_expert_loss(errors, weights, scale),
                               [expected], rtol=1e-6)
  # A path the gate weighs at 0 is ignored, however good; large errors do not underflow.
  zero = jnp.array([0.0, 1.0]).reshape(1, 1, 1, 2)
  np.testing.assert_allclose(expert_losses.competitive_expert_loss(errors, zero, 1.0), [3.0],
                             rtol=1e-6)
  far = jnp.array([1e4, 2e4]).reshape(1, 1, 1, 2)
  np.testing.assert_allclose(expert_losses.competitive_expert_loss(far, weights, 1.0),
                             [1e4 - math.log(0.25)], rtol=1e-6)
  # Its gradient on a zero weight's path is zero, not NaN.
  grad = jax.grad(lambda e: expert_losses.competitive_expert_loss(e, zero, 1.0).sum())(errors)
  np.testing.assert_array_equal(np.asarray(grad).ravel(), [0.0, 1.0])
  with pytest.raises(ValueError, match='positive scale'):
    expert_losses.competitive_expert_loss(errors, weights, 0.0)


def test_competitive_tends_to_weighted_for_large_scale():
  rng = np.random.default_rng(0)
  errors = jnp.asarray(rng.uniform(0, 3, (2, 5, 2, 4)))
  weights = jax.nn.softmax(jnp.asarray(rng.normal(size=(2, 5, 2, 4))).reshape(2, 5, 8)).reshape(
      2, 5, 2, 4)
  np.testing.assert_allclose(expert_losses.competitive_expert_loss(errors, weights, 1e4),
                             expert_losses.weighted_expert_loss(errors, weights), rtol=1e-3)


def test_balance_loss_by_hand():
  one_expert = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])[None]  # [K=1, B=3, L=2]
  even = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])[None]
  # Importance (3, 0): mean 1.5, variance 2.25, CV^2 = 1 = L - 1. Importance (2, 2): 0.
  np.testing.assert_allclose(expert_losses.balance_loss(one_expert), [1.0], rtol=1e-6)
  np.testing.assert_allclose(expert_losses.balance_loss(even), [0.0], atol=1e-7)
  four = jnp.eye(4)[jnp.array([0, 0, 0, 0])][None]  # every face on expert 0 of 4
  np.testing.assert_allclose(expert_losses.balance_loss(four), [3.0], rtol=1e-6)


def test_mean_entropy_by_hand():
  uniform = jnp.full((2, 3, 4), 0.25)
  np.testing.assert_allclose(expert_losses.mean_entropy(uniform), [math.log(4)] * 2, rtol=1e-6)
  np.testing.assert_allclose(expert_losses.mean_entropy(jnp.eye(4)[None]), [0.0], atol=1e-7)


def test_point_errors():
  shapes = jnp.array([[3.0, 4.0], [1.0, 1.0]])
  truth = jnp.zeros((2, 2))
  np.testing.assert_allclose(expert_losses.point_errors(shapes, truth, 'distance'),
                             [5.0, math.sqrt(2)], rtol=1e-6)
  np.testing.assert_allclose(expert_losses.point_errors(shapes, truth, 'l2'), [25.0, 2.0])


def test_settings_refuse_what_trains_nothing():
  config = default.get_config('tree_moe', 'cpu')
  assert expert_losses.settings(config) == expert_losses.PAPER | {
      'expert_loss': 'weighted', 'expert_loss_weight': 1.0, 'mixture_loss_weight': 0.0}
  config.moe.update(expert_losses.PAPER)  # the paper's objective stays one override away
  assert expert_losses.settings(config) == expert_losses.PAPER
  for change, message in [({'expert_loss': 'best'}, 'unknown config.moe.expert_loss'),
                          ({'expert_loss': 'weighted', 'expert_loss_weight': 0.0},
                           'trains nothing'),
                          ({'mixture_loss_weight': 0.0}, 'neither the mixture'),
                          ({'balance_weight': -1.0}, 'must be >= 0'),
                          ({'expert_loss': 'competitive', 'expert_loss_weight': 1.0,
                            'competition_scale': 0.0}, 'competition_scale')]:
    changed = default.get_config('tree_moe', 'cpu')
    changed.moe.update(expert_losses.PAPER | change)
    with pytest.raises(ValueError, match=message):
      expert_losses.settings(changed)


# --- The paths the objectives read, against forwards that run one expert. ---

def _apply(model):
  """model.apply, jitted: a two-stage forward op by op takes seconds on a CPU."""
  return jax.jit(model.apply, static_argnames=('paths', 'routing'))


def _small_config(architecture, **model):
  config = default.get_config(architecture, 'cpu')
  config.model.update(dict(image_size=48, patch_size=8, num_stages=2, patch_scales=(),
                           representation_features=(2, 2, 2, 2, 2), regression_hidden=4,
                           gate_pose='truth', **model))
  return config


def _inputs(config, batch=3):
  rng = np.random.default_rng(1)
  size = config.model.image_size
  images = jnp.asarray(rng.uniform(-1, 1, (batch, size, size)), jnp.float32)
  shape = jnp.asarray(rng.uniform(14, 34, (batch, 68, 2)), jnp.float32)
  pose = jnp.asarray(rng.uniform(-1, 1, (batch, 3)), jnp.float32)
  return images, shape, pose


def test_single_cnn_paths_mix_to_the_stage_shape():
  """One CNN expert: the stage's shape is the regression gate's mixture of its paths' shapes."""
  config = _small_config('tree_moe')
  model = models.create(config)
  images, shape, pose = _inputs(config)
  variables = models.init(model, jax.random.key(0))
  out = _apply(model)(variables, images, shape, paths=True)
  plain = _apply(model)(variables, images, shape)
  np.testing.assert_allclose(out['stage_shapes'], plain['stage_shapes'], rtol=1e-5, atol=1e-4)
  paths = out['paths']
  assert paths['shapes'].shape == (2, 3, 1, 8, 68, 2)
  # Stage k's paths start from s(k): the previous stage's shape (the initial one for stage 0).
  starts = jnp.concatenate([shape[None], out['stage_shapes'][:-1]])  # [K, B, P, 2]
  mixed = starts + jnp.einsum('kblmpc,kblm->kbpc', paths['shapes'] - starts[:, :, None, None],
                              expert_losses.path_weights(paths))
  np.testing.assert_allclose(mixed, out['stage_shapes'], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(paths['regression'][:, :, 0], out['gates']['regression'], atol=1e-6)


def test_pose_cnn_paths_are_each_cnn_expert_alone():
  """Path (l, m) is CNN expert l's features alone read by regressor m: a model whose pose gate
  is forced onto leaf l (its node biases saturated) mixes exactly row l of the paths."""
  config = _small_config('pose_tree_moe', num_representation_experts=4,
                         representation_gate_depth=2)
  model = models.create(config)
  images, shape, pose = _inputs(config)
  variables = models.init(model, jax.random.key(0))
  apply = _apply(model)
  out = apply(variables, images, shape, pose=pose, paths=True)
  one_stage = lambda x: x[:1]
  for leaf in range(4):
    # Depth 2: the root (node 0) sends leaves 0-1 left; node 1 picks between them, node 2
    # between leaves 2-3; a positive logit goes left.
    bias = np.zeros(3, np.float32)
    bias[0] = 50.0 if leaf < 2 else -50.0
    bias[1 if leaf < 2 else 2] = 50.0 if leaf % 2 == 0 else -50.0
    forced = jax.tree.map(lambda x: x, variables)
    gate = forced['params']['cascade']['stage0']['representation_gate']['nodes']
    gate['kernel'] = jnp.zeros_like(gate['kernel'])
    gate['bias'] = jnp.asarray(bias)
    alone = apply(forced, images, shape, pose=pose)
    paths = jax.tree.map(one_stage, out['paths'])
    np.testing.assert_allclose(
        apply(forced, images, shape, pose=pose, paths=True)['paths']['representation'][0],
        jax.nn.one_hot(jnp.full((3,), leaf), 4), atol=1e-6)
    weights = paths['regression'][0, :, leaf]  # [B, M]: g'(H_leaf)
    expected = shape + jnp.einsum('bmpc,bm->bpc', paths['shapes'][0, :, leaf] - shape[:, None],
                                  weights)
    np.testing.assert_allclose(alone['stage_shapes'][0], expected, rtol=1e-5, atol=1e-4)


def test_paths_are_dense_only():
  config = _small_config('tree_moe')
  model = models.create(config)
  images, shape, _ = _inputs(config)
  variables = models.init(model, jax.random.key(0))
  with pytest.raises(ValueError, match='computed densely'):
    model.apply(variables, images, shape, paths=True, routing='greedy')


def test_the_paper_loss_is_unchanged_and_terms_add():
  """expert_loss 'none' is the mixture's loss alone; each term adds its logged value x weight."""
  config = _small_config('pose_tree_moe', num_representation_experts=4,
                         representation_gate_depth=2)
  config.moe.update(expert_losses.PAPER)
  images, shape, pose = _inputs(config)
  batch = {'image': images, 'init_shape': shape, 'pose': pose,
           'landmarks': shape + jnp.asarray(np.random.default_rng(2).normal(0, 2, shape.shape),
                                            jnp.float32)}
  task = tasks.alignment_task(config)
  variables = task.init(jax.random.key(0))
  loss, (_, metrics) = jax.jit(task.loss)(variables['params'], None, batch)
  squared = jnp.sum((_apply(task.model)(variables, images, shape, pose=pose)['stage_shapes']
                     - batch['landmarks'])**2, -1)
  np.testing.assert_allclose(loss, jnp.sqrt(squared + 1e-6).mean(), rtol=1e-5)
  config.moe.update(dict(expert_loss='weighted', expert_loss_weight=0.5, balance_weight=0.1,
                         entropy_weight=0.01))
  task = tasks.alignment_task(config)
  loss2, (_, metrics2) = jax.jit(task.loss)(variables['params'], None, batch)
  np.testing.assert_allclose(metrics2['loss/mixture'], metrics['loss/mixture'], rtol=1e-5)
  np.testing.assert_allclose(
      loss2, metrics2['loss/mixture'] + 0.5 * metrics2['loss/experts']
      + 0.1 * metrics2['loss/balance'] + 0.01 * metrics2['loss/entropy'], rtol=1e-5)
  # Two learned gates (pose tree, regression tree) per stage, both near uniform at init.
  assert 0 < float(metrics2['loss/entropy']) <= math.log(4) + math.log(8) + 1e-5
  assert float(metrics2['loss/top_path']) > 0


# --- A small case where the answer is known: two clusters, two constant experts. ---

class _ToyMixture(nn.Module):
  """Softmax gate on x [B, 1]; expert l predicts a constant c_l, whatever x."""

  @nn.compact
  def __call__(self, x):
    weights = jax.nn.softmax(nn.Dense(2, name='gate')(x))  # [B, 2]
    centres = self.param('centres', nn.initializers.zeros, (2,))
    return weights, centres


def _train_toy(objective: str, steps: int = 300):
  """y = +1 where x > 0 and -1 where x < 0: one expert per side is the only exact mixture."""
  x = jnp.linspace(-1, 1, 64)[:, None]
  y = jnp.sign(x[:, 0])
  model = _ToyMixture()
  params = model.init(jax.random.key(0), x)
  params = jax.tree.map(lambda p: p, params)
  params['params']['centres'] = jnp.array([0.1, -0.1])  # break the experts' symmetry

  def loss_fn(params):
    weights, centres = model.apply(params, x)
    errors = jnp.abs(centres[None] - y[:, None])  # [B, 2]
    paths = lambda a: a[None, :, None, :]  # [K=1, B, L=1, M=2]
    if objective == 'weighted':
      return expert_losses.weighted_expert_loss(paths(errors), paths(weights))[0]
    return expert_losses.competitive_expert_loss(paths(errors), paths(weights), 0.5)[0]

  optimizer = optax.adam(0.05)

  @jax.jit
  def train(params):
    def step(carry, _):
      params, state = carry
      updates, state = optimizer.update(jax.grad(loss_fn)(params), state)
      return (optax.apply_updates(params, updates), state), None
    return jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)[0][0]

  params = train(params)
  weights, centres = model.apply(params, x)
  greedy = centres[weights.argmax(-1)]
  return float(jnp.abs(greedy - y).mean()), float(gates.gate_entropy(weights).mean()), centres


@pytest.mark.parametrize('objective', ['weighted', 'competitive'])
def test_expert_objectives_make_experts_that_greedy_can_use(objective):
  greedy_error, entropy, centres = _train_toy(objective)
  assert greedy_error < 0.05, (greedy_error, centres)  # each side's one expert is right alone
  assert entropy < 0.2  # the gate commits
  np.testing.assert_allclose(sorted(np.asarray(centres)), [-1, 1], atol=0.05)


def test_the_objective_table_shows_the_regressors_in_use():
  """experiments/expert_objectives.py's table: per variant the dense NME, its mean, the worst
  greedy ratio, and (where the evaluation measured it) the regressors the faces use."""
  from experiments import expert_objectives
  views = expert_objectives.VIEWS
  record = {'what': 'w', 'nme': {'dense': dict.fromkeys(views, 0.02)},
            'worst_ratio_to_dense': {'greedy': 1.07, 'topk:2': 1.01},
            'concentration': {'regression': {'share_for_90': [0.03125, 0.0625],
                                             'experts_in_use': [5.46, 3.0]}}}
  old = record | {'concentration': {'regression': {'share_for_90': [0.5, 0.5]}}}
  lines = expert_objectives.table({'a': record, 'b': old})
  assert lines[2] == ('| `a` | w | 2.00 / 2.00 / 2.00 / 2.00 / 2.00 / 2.00 | 2.00 | 1.07x | 1.01x | '
                      '3%, 6% | 5.5, 3.0 |')
  assert lines[3].endswith('| 50%, 50% | - |')
  assert expert_objectives.SIZES['reproduction_64'].config == 'configs/tree_moe.py:reproduction_64'


def test_every_objective_variant_pins_the_objective_it_names():
  """A variant must train the same objective whenever it runs, whatever config.moe's defaults
  have since become (the mixture's weight moved from 1 to 0)."""
  from experiments import expert_objectives
  for name, (_, overrides) in expert_objectives.VARIANTS.items():
    pinned = dict(o.removeprefix('--config.moe.').split('=') for o in overrides
                  if o.startswith('--config.moe.'))
    assert {'expert_loss', 'mixture_loss_weight'} <= set(pinned), name
  paper = dict(o.split('=') for o in expert_objectives.VARIANTS['paper'][1])
  assert paper['--config.moe.expert_loss'] == 'none'
  assert paper['--config.moe.mixture_loss_weight'] == '1'
