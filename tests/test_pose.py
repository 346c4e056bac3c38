"""Tests of the head-pose estimator against independent references (published counts, formulas)."""

import functools
import math
import re
from collections.abc import Callable
from typing import NamedTuple

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from treemoe_jax.nn import pose as pose_lib

TINY = dict(stage_sizes=(1, 1, 1, 1), base_width=8, head_hidden=16)
TINY_FEATURES = 32 * 8  # 4 * base_width * 2**3
PI32 = np.float32(np.pi)  # pi * tanh saturates at float32(pi), a hair above math.pi.


def _count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


class Tiny(NamedTuple):
  model: pose_lib.PoseEstimator
  variables: dict
  images: jax.Array  # [3, H, W]; tests feed pairs, so every jitted call sees batch 2 or 1.
  predict: Callable  # (variables, images) -> outputs, eval mode.
  train_apply: Callable  # (variables, images) -> (outputs, {'batch_stats': ...}), train mode.


@pytest.fixture(scope='module')
def tiny() -> Tiny:
  model = pose_lib.PoseEstimator(**TINY)
  images = jax.random.uniform(jax.random.key(1), (3, 32, 32), minval=-1.0, maxval=1.0)
  # An 'rbg' key compiles the initializers several times faster than threefry on CPU.
  init = jax.jit(functools.partial(model.init, train=False))
  variables = init(jax.random.key(0, impl='rbg'), images[:2])
  predict = jax.jit(functools.partial(model.apply, train=False))
  train_apply = jax.jit(functools.partial(model.apply, train=True, mutable=['batch_stats']))
  return Tiny(model, variables, images, predict, train_apply)


def test_resnet50_parameter_count_matches_published():
  model = pose_lib.PoseEstimator()
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 150, 150)), train=False))
  params = shapes['params']
  # torchvision ResNet-50 without fc, 3 input channels, BN gamma/beta counted: 23,508,032 (Keras'
  # 23,534,592 trainable adds a bias to each conv, which BN makes redundant).
  # One input channel removes 7 * 7 * 2 * 64 stem weights.
  assert _count(params['trunk']) == 23_508_032 - 7 * 7 * 2 * 64
  h = 256
  heads = {k: v for k, v in params.items() if k != 'trunk'}
  assert _count(heads) == 3 * (2048 * h + h + h + 1)
  # Running mean and variance: two per BN channel; channels per block 6 * width, projections
  # 4 * width, stem 64.
  widths = (64, 128, 256, 512)
  channels = 64 + sum(n * 6 * w + 4 * w for n, w in zip((3, 4, 6, 3), widths))
  assert _count(shapes['batch_stats']) == 2 * channels


def test_resnet50_parameter_tree_names():
  model = pose_lib.PoseEstimator()
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64)), train=False))['params']
  assert set(params) == {'trunk', 'yaw_head', 'pitch_head', 'roll_head'}
  blocks = {f'stage{s}_block{b}' for s, n in enumerate((3, 4, 6, 3), 1) for b in range(1, n + 1)}
  assert set(params['trunk']) == {'stem_conv', 'stem_bn'} | blocks
  assert params['trunk']['stem_conv']['kernel'].shape == (7, 7, 1, 64)
  first = params['trunk']['stage4_block1']
  assert set(first) == {'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3', 'proj_conv', 'proj_bn'}
  assert first['conv3']['kernel'].shape == (1, 1, 512, 2048)
  assert first['proj_conv']['kernel'].shape == (1, 1, 1024, 2048)
  assert 'proj_conv' not in params['trunk']['stage4_block2']
  assert set(params['yaw_head']) == {'hidden', 'out'}


def test_linear_heads():
  model = pose_lib.PoseEstimator(**{**TINY, 'head_hidden': 0})
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((2, 32, 32)), train=False))['params']
  for angle in pose_lib.ANGLES:
    assert set(params[f'{angle}_head']) == {'out'}
    assert _count(params[f'{angle}_head']) == TINY_FEATURES + 1


def test_output_shapes(tiny):
  out = tiny.predict(tiny.variables, tiny.images[:2])
  chex.assert_shape(out['pose'], (2, 3))
  chex.assert_shape(out['embedding'], (2, TINY_FEATURES))
  chex.assert_tree_all_finite(out)


def test_pose_bounded_for_huge_inputs_and_params(tiny):
  params = flax.core.unfreeze(tiny.variables['params'])
  for angle in pose_lib.ANGLES:
    params[f'{angle}_head']['out']['kernel'] *= 1e6
  variables = {**tiny.variables, 'params': params}
  pose = tiny.predict(variables, 1e3 * tiny.images[:2])['pose']
  assert np.all(np.abs(pose) <= PI32)
  chex.assert_tree_all_finite(pose)


def test_a_head_far_outside_pi_still_learns(tiny):
  """The wrapped head's gradient never vanishes: a pi * tanh head with an output of 40 had a
  gradient of ~1e-34 (saturated), which stopped the full-size estimator learning on a GPU."""
  phi = jnp.ones((1, 4))

  def loss(kernel):
    head = pose_lib.AngleHead(hidden_features=0)
    out = head.apply({'params': {'out': {'kernel': kernel, 'bias': jnp.zeros(1)}}}, phi)
    return jnp.sum(jnp.arctan2(jnp.sin(out - 0.3), jnp.cos(out - 0.3))**2)

  kernel = jnp.full((4, 1), 10.0)  # output 40 rad = 40 - 12 pi ~ 2.30 rad after wrapping
  grad = jax.grad(loss)(kernel)
  wrapped = np.arctan2(np.sin(40 - 0.3), np.cos(40 - 0.3))
  np.testing.assert_allclose(np.asarray(grad), 2 * wrapped * np.ones((4, 1)), rtol=1e-4)


def test_heads_start_near_angle_zero(tiny):
  """Far from the wrap at +-pi, whatever the trunk's scale: the output layer starts small."""
  pose = tiny.predict(tiny.variables, tiny.images)['pose']
  assert np.abs(np.asarray(pose)).max() < 0.5, pose


def test_heads_are_separate(tiny):
  base = tiny.predict(tiny.variables, tiny.images[:2])['pose']
  params = flax.core.unfreeze(tiny.variables['params'])
  params['pitch_head'] = jax.tree.map(lambda p: p + 0.5, params['pitch_head'])
  moved = tiny.predict({**tiny.variables, 'params': params}, tiny.images[:2])['pose']
  np.testing.assert_array_equal(moved[:, [0, 2]], base[:, [0, 2]])
  assert np.all(np.abs(moved[:, 1] - base[:, 1]) > 1e-4)


def test_train_mode_updates_batch_stats(tiny):
  _, updates = tiny.train_apply(tiny.variables, tiny.images[:2])
  old, new = tiny.variables['batch_stats'], updates['batch_stats']
  chex.assert_trees_all_equal_shapes(old, new)
  # Every running mean and variance moves from its init (0, 1) towards the batch statistics.
  for o, n in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
    assert not np.allclose(o, n)


def test_eval_mode_is_deterministic_and_per_image(tiny):
  pair = tiny.predict(tiny.variables, tiny.images[:2])
  again = tiny.predict(tiny.variables, tiny.images[:2])
  alone = tiny.predict(tiny.variables, tiny.images[:1])
  chex.assert_trees_all_equal(pair, again)
  for key in ('pose', 'embedding'):
    np.testing.assert_allclose(alone[key][0], pair[key][0], rtol=1e-5, atol=1e-6)


def test_train_mode_depends_on_batch(tiny):
  with_1, _ = tiny.train_apply(tiny.variables, tiny.images[:2])
  with_2, _ = tiny.train_apply(tiny.variables, tiny.images[jnp.array([0, 2])])
  assert not np.allclose(with_1['embedding'][0], with_2['embedding'][0])


def test_gradients_reach_stem_and_every_head(tiny):
  target = jnp.array([[0.3, -0.2, 0.1], [-0.5, 0.4, 0.0]])

  def loss_fn(params):
    out, _ = tiny.train_apply({**tiny.variables, 'params': params}, tiny.images[:2])
    return jnp.mean((out['pose'] - target) ** 2)

  grads = jax.jit(jax.grad(loss_fn))(tiny.variables['params'])
  assert np.any(grads['trunk']['stem_conv']['kernel'] != 0)
  for angle in pose_lib.ANGLES:
    for layer in ('hidden', 'out'):
      assert np.any(grads[f'{angle}_head'][layer]['kernel'] != 0), (angle, layer)


@pytest.mark.parametrize('shape', [(2, 32, 32, 1), (2, 32)])
def test_rejects_wrong_rank(tiny, shape):
  with pytest.raises(ValueError, match=r'\[B, H, W\].*' + re.escape(str(shape))):
    tiny.model.apply(tiny.variables, jnp.zeros(shape), train=False)


def test_rejects_integer_images(tiny):
  with pytest.raises(TypeError, match='float'):
    tiny.model.apply(tiny.variables, jnp.zeros((2, 32, 32), jnp.uint8), train=False)
