"""Tests of the Keras ResNet-50 -> pose trunk conversion against an independent reference.

The tests write h5 files in the Keras layouts (keras.applications' weights-only file, the
`model.save('x.h5')` full-model file) with random values, and compare the converted flax trunk
with a plain numpy float64 implementation of what Keras computes (conv + bias -> batch norm with
Keras' epsilon -> relu, caffe-preprocessed BGR input).
"""

import functools
import json
import math

import h5py
import jax
import jax.numpy as jnp
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
import pytest

from treemoe_jax.nn import pose as pose_lib
from treemoe_jax.nn import pretrained

# Stage 2 has an identity (no-projection) block.
TINY = dict(stage_sizes=(1, 2, 1, 1), base_width=4)
RESNET50_STAGES = (3, 4, 6, 3)
KERAS_EPS = 1.001e-5
BGR_MEAN = np.array([103.939, 116.779, 123.68])
WEIGHTLESS = ('input_1', 'conv1_pad', 'conv1_relu', 'pool1_pad', 'pool1_pool')


# --- Keras layout, written with random values. ---------------------------------------------------


def keras_resnet_shapes(stage_sizes, base_width, in_channels=3):
  """{Keras layer: {var: shape}} in network order, as keras.applications' ResNet v1 names them."""
  shapes = {}

  def conv_bn(name, k, cin, cout):
    shapes[f'{name}_conv'] = {'kernel': (k, k, cin, cout), 'bias': (cout,)}
    shapes[f'{name}_bn'] = {v: (cout,) for v in ('gamma', 'beta', 'moving_mean', 'moving_variance')}

  conv_bn('conv1', 7, in_channels, base_width)
  cin = base_width
  for s, blocks in enumerate(stage_sizes):
    width = base_width * 2**s
    for b in range(1, blocks + 1):
      name = f'conv{s + 2}_block{b}'
      if b == 1:
        conv_bn(f'{name}_0', 1, cin, 4 * width)
      conv_bn(f'{name}_1', 1, cin, width)
      conv_bn(f'{name}_2', 3, width, width)
      conv_bn(f'{name}_3', 1, width, 4 * width)
      cin = 4 * width
  return shapes


def random_keras_resnet(stage_sizes, base_width, seed=0):
  """Random Keras weights with sane activations, sizeable conv biases and some zero variances.

  Zero variances make the epsilon correction visible in float32 (1.001e-5 vs 1e-5 under a square
  root is a 5e-4 relative change); large biases make bias folding visible.
  """
  rng = np.random.default_rng(seed)
  layers = {}
  for name, shapes in keras_resnet_shapes(stage_sizes, base_width).items():
    if name.endswith('_conv'):
      kh, kw, cin, cout = shapes['kernel']
      scale = 1 / math.sqrt(kh * kw * cin) / (70.0 if name == 'conv1_conv' else 1.0)
      layers[name] = {'kernel': rng.normal(0, scale, shapes['kernel']),
                      'bias': rng.normal(0, 1.0, cout)}
    else:
      (c,) = shapes['gamma']
      var = rng.uniform(0.5, 2.0, c)
      var[::3] = 0.0
      layers[name] = {'gamma': rng.uniform(0.5, 1.5, c), 'beta': rng.normal(0, 0.2, c),
                      'moving_mean': rng.normal(0, 1.0, c), 'moving_variance': var}
  return layers


def write_keras_h5(path, layers, *, full_model=False, keras3_names=False, nested=False,
                   fill=False):
  """Writes `layers` in the Keras legacy h5 layout.

  full_model: under 'model_weights' with a model_config attribute (model.save('x.h5')).
  keras3_names: weight names without ':0' (Keras 3's legacy h5). nested: the ResNet is one layer
  ('resnet50') of an outer model with its own 'dense' head. fill: `layers` holds shapes, written
  as unallocated datasets with a fill value (a full-size file in no time).
  """
  suffix = '' if keras3_names else ':0'
  with h5py.File(path, 'w') as f:
    root = f
    if full_model:
      f.attrs['model_config'] = json.dumps({'class_name': 'Functional', 'config': {}})
      root = f.create_group('model_weights')
    root.attrs['backend'] = b'tensorflow'
    root.attrs['keras_version'] = b'2.15.0'

    def write_group(name, group_layers):
      g = root.create_group(name)
      weight_names = [f'{layer}/{var}{suffix}' for layer, vs in group_layers.items() for var in vs]
      g.attrs['weight_names'] = np.array([w.encode() for w in weight_names], dtype='S')
      values = [v for vs in group_layers.values() for v in vs.values()]
      for weight_name, value in zip(weight_names, values):
        if fill:
          g.create_dataset(weight_name, shape=value, dtype='f4', fillvalue=0.5)
        else:
          g.create_dataset(weight_name, data=np.asarray(value, np.float32))

    if nested:
      names = ['input_2', 'resnet50', 'dense']
      write_group('input_2', {})
      write_group('resnet50', layers)
      write_group('dense', {'dense': {'kernel': np.ones((2, 3)), 'bias': np.ones(3)}})
    else:
      names = [*WEIGHTLESS, *layers, 'avg_pool']
      for name in sorted(names):  # Keras writes the groups sorted by name.
        write_group(name, {name: layers[name]} if name in layers else {})
    root.attrs['layer_names'] = np.array([n.encode() for n in names], dtype='S')
  return path


# --- The reference: what Keras' ResNet50 computes, in numpy float64. ----------------------------


def ref_conv(x, kernel, stride=1, pad=0, pad_value=0.0):
  """Keras Conv2D on an input padded by `pad` with `pad_value` (scalar or per channel), 'valid'."""
  if pad:
    b, h, w, c = x.shape
    padded = np.empty((b, h + 2 * pad, w + 2 * pad, c))
    padded[...] = pad_value
    padded[:, pad:-pad, pad:-pad] = x
    x = padded
  kh, kw = kernel.shape[:2]
  windows = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
  return np.einsum('bhwcij,ijco->bhwo', windows, kernel)


def ref_conv_bn(x, layers, name, stride=1, pad=0, pad_value=0.0):
  conv, bn = layers[f'{name}_conv'], layers[f'{name}_bn']
  y = ref_conv(x, conv['kernel'], stride, pad, pad_value) + conv['bias']
  return (bn['gamma'] * (y - bn['moving_mean']) / np.sqrt(bn['moving_variance'] + KERAS_EPS)
          + bn['beta'])


def relu(x):
  return np.maximum(x, 0.0)


def ref_block(x, layers, name, stride, shortcut):
  """Keras residual_block_v1: stride on the first 1x1 conv, 'SAME' 3x3, projection shortcut."""
  sc = ref_conv_bn(x, layers, f'{name}_0', stride) if shortcut else x
  y = relu(ref_conv_bn(x, layers, f'{name}_1', stride))
  y = relu(ref_conv_bn(y, layers, f'{name}_2', pad=1))
  y = ref_conv_bn(y, layers, f'{name}_3')
  return relu(sc + y)


def ref_keras_resnet(x, layers, stage_sizes, stem_pad_value=0.0):
  """Keras ResNet v1 up to the global average pool, on caffe-preprocessed input [B, H, W, 3]."""
  y = relu(ref_conv_bn(x, layers, 'conv1', stride=2, pad=3, pad_value=stem_pad_value))
  y = np.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))  # ZeroPadding2D, then MaxPooling2D(3, 2).
  y = sliding_window_view(y, (3, 3), axis=(1, 2))[:, ::2, ::2].max(axis=(-2, -1))
  for s, blocks in enumerate(stage_sizes):
    for b in range(1, blocks + 1):
      stride = 2 if s > 0 and b == 1 else 1
      y = ref_block(y, layers, f'conv{s + 2}_block{b}', stride, shortcut=b == 1)
  return y.mean(axis=(1, 2))


def caffe_input(gray):
  """Grayscale g in [-1, 1] -> Keras' caffe input (BGR): p - mean, p = 127.5 (g + 1) per channel."""
  return 127.5 * (np.asarray(gray, np.float64)[..., None] + 1.0) - BGR_MEAN


# --- Fixtures. ----------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny_keras():
  return random_keras_resnet(TINY['stage_sizes'], TINY['base_width'])


@pytest.fixture(scope='module')
def tiny_file(tmp_path_factory, tiny_keras):
  return write_keras_h5(tmp_path_factory.mktemp('keras') / 'notop.h5', tiny_keras)


@pytest.fixture(scope='module')
def tiny_model():
  """The tiny PoseEstimator with random variables (numpy: compiling its init costs seconds)."""
  model = pose_lib.PoseEstimator(**TINY, head_hidden=8)
  abstract = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.key(0), jnp.zeros((1, 32, 32)))
  rng = np.random.default_rng(5)
  variables = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), abstract)
  return model, variables


def _allclose(a, b, tol=1e-4):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


# --- Conversion against the reference. ----------------------------------------------------------


@pytest.mark.parametrize('module, keras_name, stride, shortcut, in_shape', [
    ('stage2_block1', 'conv3_block1', 2, True, (2, 8, 8, 16)),   # Strided, projection shortcut.
    ('stage2_block2', 'conv3_block2', 1, False, (2, 4, 4, 32)),  # Identity shortcut.
])
def test_block_matches_keras_block(tiny_file, tiny_keras, module, keras_name, stride, shortcut,
                                   in_shape):
  params, batch_stats = pretrained.load_keras_resnet50(tiny_file)
  x = np.random.default_rng(1).normal(size=in_shape)
  block = pose_lib.BottleneckBlock(width=in_shape[-1] // 2 if shortcut else in_shape[-1] // 4,
                                   strides=stride)
  ours = block.apply({'params': params[module], 'batch_stats': batch_stats[module]},
                     jnp.asarray(x, jnp.float32), train=False)
  _allclose(ours, ref_block(x, tiny_keras, keras_name, stride, shortcut))


def test_batch_norm_fold_is_exact_formula(tiny_keras, tiny_file):
  """mean' = mean - bias and var' = var + 1.001e-5 - 1e-5, checked on the raw arrays."""
  _, batch_stats = pretrained.load_keras_resnet50(tiny_file)
  conv, bn = tiny_keras['conv3_block1_2_conv'], tiny_keras['conv3_block1_2_bn']
  got = batch_stats['stage2_block1']['bn2']
  np.testing.assert_allclose(got['mean'], bn['moving_mean'] - conv['bias'], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(got['var'] + 1e-5, bn['moving_variance'] + KERAS_EPS, rtol=1e-6)


def test_stem_matches_keras_on_caffe_input(tiny_file, tiny_keras, tiny_model):
  """Our 1-channel stem on g equals Keras' 3-channel stem on caffe(g), except at the border.

  At the border Keras pads the preprocessed image with 0 (the mean colour), we effectively pad
  with mid-gray: with the reference padded by a gray pixel it is exact everywhere.
  """
  model, variables = tiny_model
  variables = pretrained.init_pose_trunk(variables, tiny_file)
  gray = np.random.default_rng(2).uniform(-1, 1, (2, 32, 32))
  _, state = model.apply(variables, jnp.asarray(gray, jnp.float32), train=False,
                         capture_intermediates=True, mutable=['intermediates'])
  ours = np.asarray(state['intermediates']['trunk']['stem_bn']['__call__'][0])  # [2, 16, 16, 4]
  keras = ref_conv_bn(caffe_input(gray), tiny_keras, 'conv1', stride=2, pad=3)
  # Output i sees input rows 2i-3 .. 2i+3: the padding for i <= 1 and i >= 15.
  _allclose(ours[:, 2:-1, 2:-1], keras[:, 2:-1, 2:-1])
  assert not np.allclose(ours[:, 0], keras[:, 0], rtol=1e-3, atol=1e-3)
  gray_pixel = 127.5 - BGR_MEAN
  _allclose(ours, ref_conv_bn(caffe_input(gray), tiny_keras, 'conv1', 2, 3, gray_pixel))


def test_whole_trunk_matches_keras_resnet(tiny_file, tiny_keras, tiny_model):
  """The embedding phi equals Keras' pooled features (with the stem's gray border, see above).

  This pins the layer mapping as a whole: stage and block order, strides, shortcuts, pooling.
  """
  model, variables = tiny_model
  variables = pretrained.init_pose_trunk(variables, tiny_file)
  gray = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32))
  phi = model.apply(variables, jnp.asarray(gray, jnp.float32), train=False)['embedding']
  keras = ref_keras_resnet(caffe_input(gray), tiny_keras, TINY['stage_sizes'],
                           stem_pad_value=127.5 - BGR_MEAN)
  _allclose(phi, keras)


def test_init_pose_trunk_keeps_heads_and_dtypes(tiny_file, tiny_model):
  _, variables = tiny_model
  new = pretrained.init_pose_trunk(variables, tiny_file)
  for name in ('yaw_head', 'pitch_head', 'roll_head'):
    jax.tree.map(np.testing.assert_array_equal, new['params'][name], variables['params'][name])
  assert jax.tree.structure(new) == jax.tree.structure(variables)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(new))
  params, _ = pretrained.load_keras_resnet50(tiny_file)
  np.testing.assert_array_equal(new['params']['trunk']['stage1_block1']['proj_conv']['kernel'],
                                params['stage1_block1']['proj_conv']['kernel'])


@pytest.mark.parametrize('layout', [
    dict(full_model=True),
    dict(full_model=True, keras3_names=True),
    dict(full_model=True, nested=True),
])
def test_full_model_layouts_convert_the_same(tmp_path, tiny_keras, tiny_file, layout):
  expected = pretrained.load_keras_resnet50(tiny_file)
  got = pretrained.load_keras_resnet50(write_keras_h5(tmp_path / 'model.h5', tiny_keras, **layout))
  jax.tree.map(np.testing.assert_array_equal, got, expected)
  assert jax.tree.structure(got) == jax.tree.structure(expected)


def test_full_size_resnet50_file_fits_pose_estimator(tmp_path):
  """The full keras.applications ResNet50 layout fits `PoseEstimator()` (checked on shapes)."""
  path = write_keras_h5(tmp_path / 'resnet50_notop.h5',
                        keras_resnet_shapes(RESNET50_STAGES, 64), fill=True)
  model = pose_lib.PoseEstimator()
  abstract = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.key(0), jnp.zeros((1, 150, 150)))
  variables = pretrained.init_pose_trunk(abstract, path)
  for collection in ('params', 'batch_stats'):
    got = jax.tree.map(lambda x: (x.shape, x.dtype), variables[collection]['trunk'])
    want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract[collection]['trunk'])
    assert got == want
  count = sum(x.size for x in jax.tree.leaves(variables['params']['trunk']))
  assert count == 23_508_032 - 7 * 7 * 2 * 64  # torchvision's count, one input channel.


# --- Clear errors. -------------------------------------------------------------------------------


def test_missing_file():
  with pytest.raises(FileNotFoundError, match='nowhere.h5'):
    pretrained.load_keras_resnet50('/nonexistent/nowhere.h5')


def test_not_an_h5_file(tmp_path):
  path = tmp_path / 'weights.h5'
  path.write_text('not hdf5')
  with pytest.raises(ValueError, match='not a readable HDF5'):
    pretrained.load_keras_resnet50(path)


def test_truncated_file(tmp_path, tiny_file):
  data = tiny_file.read_bytes()
  path = tmp_path / 'truncated.h5'
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match='truncated.h5'):
    pretrained.load_keras_resnet50(path)


def test_h5_without_keras_weights(tmp_path):
  path = tmp_path / 'other.h5'
  with h5py.File(path, 'w') as f:
    f.create_dataset('x', data=np.zeros(3))
  with pytest.raises(ValueError, match='no Keras layer weights'):
    pretrained.load_keras_resnet50(path)


def test_missing_layer_is_named(tmp_path, tiny_keras, tiny_model):
  layers = {k: v for k, v in tiny_keras.items() if not k.startswith('conv3_block1_2_')}
  path = write_keras_h5(tmp_path / 'lacking.h5', layers)
  with pytest.raises(ValueError, match=r'lacks trunk layers stage2_block1/conv2 '
                                       r'\(conv3_block1_2_conv\), stage2_block1/bn2'):
    pretrained.init_pose_trunk(tiny_model[1], path)


def test_conv_without_batch_norm_is_named(tmp_path, tiny_keras):
  layers = {k: v for k, v in tiny_keras.items() if k != 'conv3_block1_2_bn'}
  with pytest.raises(ValueError, match="'conv3_block1_2_conv' has no 'conv3_block1_2_bn'"):
    pretrained.load_keras_resnet50(write_keras_h5(tmp_path / 'no_bn.h5', layers))


def test_wrong_shape_names_first_mismatching_layer(tmp_path, tiny_keras, tiny_model):
  layers = dict(tiny_keras)
  rng = np.random.default_rng(4)
  layers['conv4_block1_2_conv'] = {'kernel': rng.normal(size=(3, 3, 16, 12)),
                                   'bias': rng.normal(size=12)}
  layers['conv4_block1_2_bn'] = {k: np.ones(12) for k in tiny_keras['conv4_block1_2_bn']}
  path = write_keras_h5(tmp_path / 'wrong.h5', layers)
  with pytest.raises(ValueError, match=r"trunk/stage3_block1/conv2 \(Keras 'conv4_block1_2_conv'\) "
                                       r"params 'kernel' has shape \(3, 3, 16, 12\) in the file"):
    pretrained.init_pose_trunk(tiny_model[1], path)


def test_deeper_resnet_is_refused_with_stage_counts(tmp_path, tiny_model):
  """Like a ResNet-101 file for a ResNet-50 model: extra blocks, named, and the stage counts."""
  layers = random_keras_resnet((1, 2, 2, 1), TINY['base_width'])
  path = write_keras_h5(tmp_path / 'deeper.h5', layers)
  with pytest.raises(ValueError, match=r'has no layers stage3_block2/conv1 \(conv4_block2_1_conv\)'
                     r'.*\(1, 2, 2, 1\) blocks per stage, the model \(1, 2, 1, 1\)'):
    pretrained.init_pose_trunk(tiny_model[1], path)


def test_resnet_v2_file_is_refused(tmp_path, tiny_keras):
  layers = {**tiny_keras, 'post_bn': tiny_keras['conv1_bn'],
            'conv2_block1_preact_bn': tiny_keras['conv1_bn']}
  with pytest.raises(ValueError, match='ResNet50V2'):
    pretrained.load_keras_resnet50(write_keras_h5(tmp_path / 'v2.h5', layers))


def test_keras_layer_names():
  assert pretrained.keras_layer_name('trunk/stem_conv') == 'conv1_conv'
  assert pretrained.keras_layer_name('stage1_block1/proj_bn') == 'conv2_block1_0_bn'
  assert pretrained.keras_layer_name(('stage4', 'x')) == '?'
  assert pretrained.keras_layer_name('stage4_block3/conv3') == 'conv5_block3_3_conv'


def test_training_config_initialises_the_trunk_from_the_file(tiny_file):
  """`config.resnet50_weights` reaches the pose task's init: the trunk is the converted file's."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from treemoe_jax.train import tasks  # pylint: disable=g-import-not-at-top
  config = default.get_config('pose_tree_moe', 'cpu')
  config.pose.stage_sizes, config.pose.base_width = TINY['stage_sizes'], TINY['base_width']
  config.resnet50_weights = str(tiny_file)
  variables = tasks.pose_task(config).init(jax.random.key(0))
  params, batch_stats = pretrained.load_keras_resnet50(tiny_file)
  jax.tree.map(np.testing.assert_array_equal, variables['params']['trunk'], params)
  jax.tree.map(np.testing.assert_array_equal, variables['batch_stats']['trunk'], batch_stats)
