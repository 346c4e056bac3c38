"""The six architectures: shapes, the paper's parameter counts, gradients, clear errors."""

import functools
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from treemoe_jax.nn import experts
from treemoe_jax.nn import models
from treemoe_jax.nn import patches

ARCHITECTURES = [a.value for a in models.Architecture]


def conv_params(features, kernels, in_channels=1):
  total = 0
  for width, k in zip(features, kernels):
    total += k * k * in_channels * width + width
    in_channels = width
  return total


def closed_form_stage_params(architecture: str) -> int:
  """Per-stage parameters of section 3.5, counted by hand from the layer sizes."""
  features = 68 * 30
  pose_cnns = architecture.startswith('pose_')
  if pose_cnns:
    cnn = 8 * conv_params((7, 14, 28, 56, 30), (5, 5, 3, 3, 1))
    rep_gate = {'pose_tree_moe': 7 * (3 + 1), 'pose_softmax_moe': 8 * (3 + 1)}[architecture]
  else:
    cnn, rep_gate = conv_params((20, 40, 80, 160, 30), (5, 5, 3, 3, 1)), 0
  if architecture == 'baseline':
    return cnn + features * 8192 + 8192 + 8192 * 136 + 136
  regressors = 64 * (features * 128 + 128 + 128 * 136 + 136)
  reg_gate = {'moe': 0, 'softmax_moe': 64 * (features + 1), 'tree_moe': 63 * (features + 1),
              'pose_softmax_moe': 64 * (features + 1), 'pose_tree_moe': 63 * (features + 1)}
  return cnn + rep_gate + regressors + reg_gate[architecture]


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize('architecture', ARCHITECTURES)
def test_full_size_stage_parameters_match_closed_form(architecture):
  model = models.create(default.get_config(architecture))
  variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))
  stages = variables['params']['cascade']
  assert sorted(stages) == ['stage0', 'stage1', 'stage2', 'stage3']
  per_stage = count(stages['stage0'])
  assert per_stage == closed_form_stage_params(architecture)
  assert 17.9e6 < per_stage < 18.2e6  # "roughly 18 million parameters per cascade stage"
  assert ('pose_estimator' in variables['params']) == architecture.startswith('pose_')


@functools.cache
def tiny_variables(architecture: str) -> dict:
  """One init per architecture for all tests (init compiles far slower than apply on CPU).

  An 'rbg' key: these tests need some weights, not the training PRNG (XLA:CPU compiles threefry's
  hash rounds in every initializer, about twice the tiny model's own init time); the tests of
  bitwise resume and device-count equality run on the default generator.
  """
  model = models.create(default.get_config(architecture, 'cpu'))
  return jax.jit(lambda key: models.init(model, key))(jax.random.key(0, impl='rbg'))


@pytest.mark.parametrize('architecture', ARCHITECTURES)
def test_tiny_forward_shapes_and_gates(architecture):
  config = default.get_config(architecture, 'cpu')
  model = models.create(config)
  batch = 2
  images = jax.random.uniform(jax.random.key(0), (batch, 150, 150), minval=-1, maxval=1)
  init_shape = jax.random.uniform(jax.random.key(1), (batch, 68, 2), minval=40, maxval=110)
  out = jax.jit(model.apply)(tiny_variables(architecture), images, init_shape)
  k = config.model.num_stages
  assert out['shape'].shape == (batch, 68, 2)
  assert out['stage_shapes'].shape == (k, batch, 68, 2)
  np.testing.assert_array_equal(out['stage_shapes'][-1], out['shape'])
  num_cnns, num_regressors = config.model.num_representation_experts, config.model.num_regression_experts
  assert out['gates']['representation'].shape == (k, batch, num_cnns)
  assert out['gates']['regression'].shape == (k, batch, num_regressors)
  for weights in out['gates'].values():
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.asarray(weights) >= 0)
  if architecture in ('baseline', 'moe'):
    np.testing.assert_allclose(out['gates']['regression'], 1.0 / num_regressors)
  if architecture.startswith('pose_'):
    assert out['pose'].shape == (batch, 3)
    assert np.all(np.abs(np.asarray(out['pose'])) <= np.pi)
  else:
    assert 'pose' not in out


def _loss_and_grads(config, batch=4):
  model = models.create(config)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (batch, 150, 150)), jnp.float32)
  init_shape = jnp.asarray(rng.uniform(40, 110, (batch, 68, 2)), jnp.float32)
  target = init_shape + jnp.asarray(rng.normal(0, 3, (batch, 68, 2)), jnp.float32)
  variables = tiny_variables(config.model.architecture)

  def loss(params):
    out, _ = model.apply({**variables, 'params': params}, images, init_shape, train=True,
                         mutable=['batch_stats'])
    return jnp.mean((out['shape'] - target)**2)

  return jax.jit(jax.grad(loss))(variables['params'])


def test_gradients_reach_every_gate_node_and_every_expert():
  config = default.get_config('pose_tree_moe', 'cpu')
  config.model.freeze_pose = False  # fine-tuned jointly: the pose heads learn from the landmarks
  config.model.stop_gradient_between_stages = False  # the last stage's loss reaches stage 0
  grads = _loss_and_grads(config)
  for name, stage in grads['cascade'].items():
    for committee in ('representation', 'regression'):
      for path, leaf in jax.tree_util.tree_leaves_with_path(stage[committee]):
        per_expert = np.abs(np.asarray(leaf)).reshape(leaf.shape[0], -1).sum(-1)
        assert np.all(per_expert > 0), f'{name}/{committee}{jax.tree_util.keystr(path)}'
    for gate in ('representation_gate', 'regression_gate'):
      per_node = np.abs(np.asarray(stage[gate]['nodes']['kernel'])).sum(0)
      assert np.all(per_node > 0), f'{name}/{gate}: a node gets no gradient'
  assert count(grads['pose_estimator']) > 0
  head = grads['pose_estimator']['yaw_head']['out']['kernel']
  assert np.abs(np.asarray(head)).sum() > 0  # the pose reaches the loss through the gates


def test_stop_gradient_between_stages():
  config = default.get_config('tree_moe', 'cpu')
  with config.unlocked():
    config.model.stop_gradient_between_stages = False
  joint = _loss_and_grads(config)['cascade']['stage0']
  with config.unlocked():
    config.model.stop_gradient_between_stages = True
  staged = _loss_and_grads(config)['cascade']['stage0']
  # Loss on the last stage only: stage 0 still learns jointly, but not stage-wise.
  assert np.abs(np.asarray(joint['regression']['experts']['out']['bias'])).sum() > 0
  assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(staged))


def test_frozen_pose_gets_no_gradient():
  config = default.get_config('pose_tree_moe', 'cpu')
  config.model.freeze_pose = True
  grads = _loss_and_grads(config)
  assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(grads['pose_estimator']))


def test_bad_inputs_get_clear_errors():
  config = default.get_config('tree_moe', 'cpu')
  model = models.create(config)
  shape = jnp.zeros((2, 68, 2))
  with pytest.raises(ValueError, match=r'images must be \[B, 150, 150\]'):
    model.init(jax.random.key(0), jnp.zeros((2, 150, 150, 1)), shape)
  with pytest.raises(ValueError, match=r'images must be \[B, 150, 150\]'):
    model.init(jax.random.key(0), jnp.zeros((2, 128, 128)), shape)
  with pytest.raises(ValueError, match=r'init_shape must be \[B, P, 2\]'):
    model.init(jax.random.key(0), jnp.zeros((2, 150, 150)), jnp.zeros((2, 68)))
  with pytest.raises(ValueError, match=r'init_shape must be \[B, P, 2\]'):
    model.init(jax.random.key(0), jnp.zeros((2, 150, 150)), jnp.zeros((2, 29, 2)))


def test_bad_configs_get_clear_errors():
  config = default.get_config('pose_tree_moe', 'cpu')
  config.model.representation_gate_depth = 3  # 8 leaves for 4 expert CNNs
  with pytest.raises(ValueError, match='depth 3 has 8 leaves.*4 experts'):
    models.create(config)
  config = default.get_config('tree_moe', 'cpu')
  config.model.architecture = 'tree_mixture'
  with pytest.raises(ValueError, match='unknown architecture .*baseline, moe, softmax_moe'):
    models.create(config)
  for field, name in [('regression_lowering', 'regression committee'), ('representation_lowering', 'CNN committee')]:
    config = default.get_config('tree_moe', 'cpu')
    config.model[field] = 'loop'  # refused when the model is built, before any init or apply
    with pytest.raises(ValueError, match=f"unknown {name} lowering 'loop'"):
      models.create(config)
  with pytest.raises(ValueError, match='unknown architecture .*pose_tree_moe'):
    default.get_config('resnet')
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    default.get_config('moe', 'huge')
  with pytest.raises(AttributeError):  # locked: a typo is not silently a new field
    default.get_config('moe').model.num_expert = 3


def test_import_does_not_load_tensorflow():
  code = 'import sys, treemoe_jax; assert "tensorflow" not in sys.modules, "tensorflow imported"'
  subprocess.run([sys.executable, '-c', code], check=True)


def test_top1_regression_uses_the_most_weighted_expert_alone():
  config = default.get_config('tree_moe', 'cpu')
  with config.unlocked():
    config.model.num_stages = 1
    config.model.patch_scales = ()  # the reference below crops at full resolution
  model = models.create(config)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (3, 150, 150)), jnp.float32)
  init_shape = jnp.asarray(rng.uniform(40, 110, (3, 68, 2)), jnp.float32)
  variables = tiny_variables('tree_moe')
  variables = {'params': {'cascade': {'stage0': variables['params']['cascade']['stage0']}}}
  out = model.apply(variables, images, init_shape, regression_top_k=1)
  # Reference: run the regression experts by hand and take the argmax expert's output.
  stage = variables['params']['cascade']['stage0']
  crops = patches.extract_patches(images, init_shape, 16)
  h = experts.ExpertCNNs(1, config.model.representation_features).apply(
      {'params': stage['representation']}, crops)[:, 0]
  each = experts.ExpertMLPs(8, config.model.regression_hidden, 136).apply(
      {'params': stage['regression']}, h)  # [B, E, 2P]
  best = np.argmax(np.asarray(out['gates']['regression'][0]), axis=-1)
  expected = init_shape + np.asarray(each)[np.arange(3), best].reshape(3, 68, 2) * 75.0
  np.testing.assert_allclose(out['shape'], expected, rtol=1e-4, atol=1e-3)


def test_top1_under_a_uniform_gate_is_one_expert_not_the_ensemble():
  config = default.get_config('moe', 'cpu')
  with config.unlocked():
    config.model.num_stages = 1
    config.model.patch_scales = ()  # the reference below crops at full resolution
  model = models.create(config)
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.uniform(-1, 1, (2, 150, 150)), jnp.float32)
  init_shape = jnp.asarray(rng.uniform(40, 110, (2, 68, 2)), jnp.float32)
  variables = tiny_variables('moe')
  stage = variables['params']['cascade']['stage0']
  variables = {'params': {'cascade': {'stage0': stage}}}

  @jax.jit  # one compile: eager op-by-op dispatch is slower on CPU
  def top1_mean_and_expert0(images, init_shape):
    top1 = model.apply(variables, images, init_shape, regression_top_k=1)['shape']
    mean = model.apply(variables, images, init_shape)['shape']
    # Reference: expert 0 alone (every weight ties at 1/8; ties go to the lowest index), run as a
    # one-expert committee on its slice of the stacked parameters.
    crops = patches.extract_patches(images, init_shape, config.model.patch_size)
    h = experts.ExpertCNNs(1, config.model.representation_features).apply(
        {'params': stage['representation']}, crops)[:, 0]
    expert0 = jax.tree.map(lambda leaf: leaf[:1], stage['regression'])
    alone = experts.ExpertMLPs(1, config.model.regression_hidden, 136).apply(
        {'params': expert0}, h)[:, 0]  # [B, 2P]
    return top1, mean, alone

  top1, mean, alone = top1_mean_and_expert0(images, init_shape)
  expected = init_shape + np.asarray(alone).reshape(2, 68, 2) * 75.0
  np.testing.assert_allclose(top1, expected, rtol=1e-4, atol=1e-3)
  assert np.abs(np.asarray(top1 - mean)).max() > 1e-2  # not the ensemble mean


def _traced_init(architecture, images, init_shape=jax.ShapeDtypeStruct((2, 68, 2), jnp.float32)):
  """Trace-time input checks: `init` under eval_shape raises before any computation."""
  model = models.create(default.get_config(architecture, 'cpu'))
  return lambda: jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                                images, init_shape)


@pytest.mark.parametrize('architecture', ARCHITECTURES)
def test_images_of_the_wrong_kind_get_one_clear_error(architecture):
  with pytest.raises(TypeError, match=r'images must be floating point.*float32 in \[-1, 1\]'
                     r'.*normalize.*got dtype uint8'):
    _traced_init(architecture, jax.ShapeDtypeStruct((2, 150, 150), jnp.uint8))()
  with pytest.raises(TypeError, match='images must be floating point.*got dtype int32'):
    _traced_init(architecture, jax.ShapeDtypeStruct((2, 150, 150), jnp.int32))()
  for shape in [(150, 150), (2, 150, 150, 1), (2, 150, 150, 3), (2, 128, 128), (2, 150, 149)]:
    with pytest.raises(ValueError, match=rf'images must be \[B, 150, 150\].*got shape '
                       rf'{re.escape(str(shape))}'):
      _traced_init(architecture, jax.ShapeDtypeStruct(shape, jnp.float32))()


@pytest.mark.parametrize('architecture', ARCHITECTURES)
def test_init_shape_of_the_wrong_kind_gets_a_clear_error(architecture):
  images = jax.ShapeDtypeStruct((2, 150, 150), jnp.float32)
  with pytest.raises(TypeError, match='init_shape must be float32.*got dtype int32'):
    _traced_init(architecture, images, jax.ShapeDtypeStruct((2, 68, 2), jnp.int32))()
  for shape in [(2, 68), (2, 68, 3), (3, 68, 2), (2, 29, 2)]:
    with pytest.raises(ValueError, match=r'init_shape must be \[B, P, 2\] = \[2, 68, 2\]'):
      _traced_init(architecture, images, jax.ShapeDtypeStruct(shape, jnp.float32))()


def test_float_images_of_any_precision_pass_the_checks():
  model = models.create(default.get_config('tree_moe', 'cpu'))
  for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                               jax.ShapeDtypeStruct((2, 150, 150), dtype),
                               jax.ShapeDtypeStruct((2, 68, 2), jnp.float32))
    assert 'cascade' in variables['params']


def test_bfloat16_model_keeps_float32_parameters_coordinates_and_loss():
  """config.model.dtype = 'bfloat16': bf16 compute; parameters, shapes, gates and loss float32,
  and the landmarks close to the float32 model's with the same parameters."""
  from treemoe_jax.train import tasks  # pylint: disable=g-import-not-at-top
  def one_stage(dtype):  # one stage holds every part the dtype policy touches; bf16 is slow here
    config = default.get_config('pose_tree_moe', 'cpu')
    with config.unlocked():
      config.model.update(dtype=dtype, num_stages=1)
      config.pose.update(stage_sizes=(1,), base_width=4, head_hidden=8)  # a one-block ResNet
    return config
  task = tasks.alignment_task(one_stage('bfloat16'))
  reference = models.create(one_stage('float32'))
  variables = jax.jit(task.init)(jax.random.key(0))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  images = jax.random.uniform(jax.random.key(1), (2, 150, 150), minval=-1, maxval=1)
  init = jnp.full((2, 68, 2), 75.0) + 20 * jax.random.normal(jax.random.key(2), (2, 68, 2))
  out = jax.jit(lambda v: task.model.apply(v, images, init))(variables)
  expected = jax.jit(lambda v: reference.apply(v, images, init))(variables)
  assert out['shape'].dtype == jnp.float32 and out['pose'].dtype == jnp.float32
  assert out['gates']['regression'].dtype == jnp.float32
  assert not np.array_equal(out['shape'], expected['shape'])  # it did compute in bf16
  np.testing.assert_allclose(out['shape'], expected['shape'], atol=1.0)  # pixels, 150 px crop
  batch = {'image': images, 'landmarks': init + 2.0, 'init_shape': init,
           'pose': jnp.zeros((2, 3))}
  (loss, _), grads = jax.jit(jax.value_and_grad(task.loss, has_aux=True))(
      variables['params'], variables.get('batch_stats', {}), batch)
  assert loss.dtype == jnp.float32 and np.isfinite(loss)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))


def test_an_inference_model_computes_what_the_trained_one_does():
  """models.create(..., inference=True) may lower its committees differently (the CPU: 'padded'
  expert CNNs), never what they compute: the same variables give the same shapes and gates."""
  config = default.get_config('pose_tree_moe', 'cpu')
  trained, inference = models.create(config), models.create(config, inference=True)
  assert inference.stage.inference and not trained.stage.inference
  images = jax.random.uniform(jax.random.key(0), (2, 150, 150), minval=-1, maxval=1)
  init_shape = jax.random.uniform(jax.random.key(1), (2, 68, 2), minval=40, maxval=110)
  variables = tiny_variables('pose_tree_moe')
  expected = jax.jit(trained.apply)(variables, images, init_shape)
  got = jax.jit(inference.apply)(variables, images, init_shape)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
