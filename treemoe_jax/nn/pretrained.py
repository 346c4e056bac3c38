"""ImageNet-pretrained ResNet-50 weights from a Keras `.h5` file, converted for the pose trunk.

The paper starts the head-pose estimator (section 3.1) from an ImageNet-pretrained ResNet-50. This
module lets a user who has such weights locally initialise `pose.PoseEstimator`'s trunk from them.
It reads the public Keras layouts (no TensorFlow or Keras needed, only h5py):

- the weights-only file of `keras.applications.ResNet50`
  (`resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5`, or the one with the classifier top) and
  any `model.save_weights('x.h5')` of Keras 2: one top-level group per layer (`conv1_conv`,
  `conv2_block1_1_bn`, ...), each with a `weight_names` attribute listing its datasets
  (`conv1_conv/kernel:0`, `conv1_bn/moving_mean:0`, ...), in the Keras order
  kernel, bias / gamma, beta, moving_mean, moving_variance;
- the full-model file (`model.save('x.h5')`, Keras 2 or Keras 3's legacy h5): the same under a
  `model_weights` group (Keras 3 names its weights without `:0`, e.g. `conv1_conv/kernel`).

A ResNet-50 nested as one layer of a bigger Keras model is found too: a weight is placed by its own
name (`.../conv2_block1_1_conv/kernel:0`), not by the group that holds it. Layers outside the
ResNet naming (the `predictions` classifier, a user's own head) are ignored.

Keras layer -> trunk module (stages count from 1 here, Keras' `conv{n}` from 2):
  conv1_conv, conv1_bn                     -> stem_conv, stem_bn
  conv{s+1}_block{b}_{1,2,3}_{conv,bn}     -> stage{s}_block{b}/{conv1,bn1,conv2,bn2,conv3,bn3}
  conv{s+1}_block{b}_0_{conv,bn}           -> stage{s}_block{b}/{proj_conv,proj_bn}  (shortcut)

The conversion keeps the function the Keras network computes in inference mode (batch norm on its
running averages), with one documented approximation at the stem's image border
(`_convert_stem`). Each step is in its own function below, which says why.

Public: `load_keras_resnet50(path) -> (params, batch_stats)` (trees of the trunk, as `PoseEstimator`
names them under `trunk`), `init_pose_trunk(variables, path)`, `keras_layer_name(module_path)`.
"""

from collections.abc import Iterator, Mapping
import contextlib
import logging
import os
import re
from typing import Any

import flax
from flax import traverse_util
import h5py
import jax.numpy as jnp
import numpy as np

Tree = dict[str, Any]

# Keras' ResNet50 builds every BatchNormalization with epsilon=1.001e-5 (keras applications
# resnet.py); `pose._batch_norm` uses 1e-5.
KERAS_BN_EPSILON = 1.001e-5
FLAX_BN_EPSILON = 1e-5
# Keras' ResNet50 expects `preprocess_input(..., mode='caffe')`: RGB -> BGR, then the ImageNet
# mean of each BGR channel subtracted, no scaling.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
# Our images are grayscale g in [-1, 1]; as an 8-bit pixel value, p = GRAY_SCALE * (g + 1).
GRAY_SCALE = 127.5

_STEM = re.compile(r'conv1_(conv|bn)')
_BLOCK = re.compile(r'conv(\d+)_block(\d+)_([0-3])_(conv|bn)')
# Names of the Keras ResNet family that the v1 mapping above does not cover (ResNet50V2's
# `conv2_block1_preact_bn` and `post_bn`, ...): such a file is refused rather than half loaded.
_RESNET_LIKE = re.compile(r'conv\d+_.*|post_(bn|relu)|pool1_.*')
_CONV_VARS = ('kernel', 'bias')
_BN_VARS = ('gamma', 'beta', 'moving_mean', 'moving_variance')
_BRANCH_NAMES = {'0': ('proj_conv', 'proj_bn'), '1': ('conv1', 'bn1'), '2': ('conv2', 'bn2'),
                 '3': ('conv3', 'bn3')}

logger = logging.getLogger(__name__)


def keras_layer_name(module_path: str | tuple[str, ...]) -> str:
  """The Keras layer that fills a trunk module: 'stage1_block1/proj_conv' -> 'conv2_block1_0_conv'.

  Used in error messages, so a user can look the layer up in the file (e.g. with `h5ls`).
  """
  parts = module_path.split('/') if isinstance(module_path, str) else list(module_path)
  if parts and parts[0] == 'trunk':
    parts = parts[1:]
  if parts in (['stem_conv'], ['stem_bn']):
    return 'conv1_' + parts[0].removeprefix('stem_')
  if len(parts) == 2 and (m := re.fullmatch(r'stage(\d+)_block(\d+)', parts[0])):
    for branch, names in _BRANCH_NAMES.items():
      if parts[1] in names:
        kind = 'conv' if parts[1] == names[0] else 'bn'
        return f'conv{int(m[1]) + 1}_block{m[2]}_{branch}_{kind}'
  return '?'


def load_keras_resnet50(path: str | os.PathLike) -> tuple[Tree, Tree]:
  """Reads a Keras ResNet(-50) v1 `.h5` file and converts it to `PoseEstimator`'s trunk.

  Returns `(params, batch_stats)`: nested dicts of float32 numpy arrays shaped as the trunk's
  variables (`params['stage1_block1']['conv1']['kernel']`, `batch_stats['stem_bn']['mean']`, ...),
  i.e. what `PoseEstimator` holds under `trunk`. The number of stages and blocks is whatever the
  file holds; `init_pose_trunk` checks it against a model.

  Raises FileNotFoundError for a missing file and ValueError for a file that is not HDF5, is
  corrupt, holds no Keras layer weights, or holds a ResNet this converter does not map (v2).
  """
  with _open_h5(path) as f:
    layers = _read_keras_layers(f, path)
  return _convert(layers, path)


def init_pose_trunk(variables: Mapping[str, Any], path: str | os.PathLike) -> Tree:
  """`PoseEstimator` variables with the trunk replaced by the Keras file's converted weights.

  `variables` is `PoseEstimator(...).init(...)`'s result (or its `jax.eval_shape`); the angle heads
  and any other collection are returned unchanged. Every converted array must match the trunk's
  shape: otherwise a ValueError lists the layers the file lacks, the layers the model lacks (e.g.
  a ResNet-101 file: stage counts are given), and the first layer whose shape differs. Arrays take
  the dtype of the variables they replace.
  """
  variables = flax.core.unfreeze(variables)
  for collection in ('params', 'batch_stats'):
    if 'trunk' not in variables.get(collection, {}):
      raise ValueError(
          f"init_pose_trunk expects PoseEstimator variables with '{collection}/trunk'; got "
          f"collections {sorted(variables)} with {collection} keys "
          f"{sorted(variables.get(collection, {}))}.")
  params, batch_stats = load_keras_resnet50(path)
  _check_matches(
      {'params': variables['params']['trunk'], 'batch_stats': variables['batch_stats']['trunk']},
      {'params': params, 'batch_stats': batch_stats}, path)

  def replace(old: Any, new: np.ndarray) -> jnp.ndarray:
    return jnp.asarray(new, dtype=old.dtype)

  out = dict(variables)
  for collection, converted in (('params', params), ('batch_stats', batch_stats)):
    flat = traverse_util.flatten_dict(converted)
    out[collection] = dict(variables[collection])
    out[collection]['trunk'] = traverse_util.unflatten_dict({
        key: replace(old, flat[key])
        for key, old in traverse_util.flatten_dict(variables[collection]['trunk']).items()})
  return out


# --- Reading the h5 file. ------------------------------------------------------------------------


@contextlib.contextmanager
def _open_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
  """h5py.File for reading, with errors that say what is wrong with the file."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(2, 'No such Keras weights file', path)
  if os.path.isdir(path):
    raise IsADirectoryError(21, 'Expected a Keras .h5 weights file, got a directory', path)
  try:
    f = h5py.File(path, 'r')
  except OSError as e:  # h5py: 'file signature not found', 'truncated file', ...
    raise ValueError(f'{path} is not a readable HDF5 (Keras .h5) file: {e}') from e
  try:
    yield f
  finally:
    f.close()


def _string_list_attr(group: h5py.Group, name: str) -> list[str]:
  """A Keras list-of-names attribute, which Keras splits into `name0`, `name1`, ... when long.

  Keras does so because an HDF5 object header holds at most 64 KiB of attributes.
  """
  if name in group.attrs:
    chunks = [group.attrs[name]]
  else:
    chunks, i = [], 0
    while f'{name}{i}' in group.attrs:
      chunks.append(group.attrs[f'{name}{i}'])
      i += 1
  return [n.decode('utf8') if isinstance(n, bytes) else str(n)
          for chunk in chunks for n in np.atleast_1d(chunk)]


def _read_keras_layers(f: h5py.File, path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """{Keras layer name: {variable name: array}} for every layer with weights.

  The weights live under `model_weights` in a full-model file and at the top level in a
  weights-only file. Each weight is placed by its own name's last two parts (`layer/var:0`), so a
  ResNet nested inside a bigger model is found as well; names of one part fall back to the group.
  Variables whose names are not the standard ones are named by position, in Keras' order (which
  is how Keras itself loads these files).
  """
  try:
    root = f['model_weights'] if 'model_weights' in f else f
    group_names = _string_list_attr(root, 'layer_names') or list(root.keys())
    layers: dict[str, dict[str, np.ndarray]] = {}
    for group_name in group_names:
      group = root[group_name]
      by_layer: dict[str, list[tuple[str, np.ndarray]]] = {}
      for weight_name in _string_list_attr(group, 'weight_names'):
        parts = weight_name.split('/')
        layer = parts[-2] if len(parts) > 1 else group_name
        var = parts[-1].split(':')[0]
        by_layer.setdefault(layer, []).append((var, np.asarray(group[weight_name])))
      for layer, named in by_layer.items():
        if layer in layers:
          raise ValueError(f'{path}: layer {layer!r} appears twice in the file.')
        layers[layer] = _name_variables(layer, named, path)
  except (OSError, KeyError, RuntimeError) as e:  # A damaged file can fail while reading too.
    raise ValueError(f'{path}: could not read the Keras weights ({e}).') from e
  if not layers:
    raise ValueError(
        f"{path} holds no Keras layer weights (no 'weight_names' attributes, at the top level or "
        "under 'model_weights'). Expected the Keras 2 / legacy h5 layout, e.g. keras.applications' "
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5; a Keras 3 '.weights.h5' file is a "
        "different layout: save that model with model.save('model.h5') instead.")
  return layers


def _name_variables(
    layer: str, named: list[tuple[str, np.ndarray]], path: str | os.PathLike
) -> dict[str, np.ndarray]:
  """{standard variable name: array} for one layer (by name, else by Keras' positional order)."""
  names = [name for name, _ in named]
  if set(names) <= set(_CONV_VARS) or set(names) <= set(_BN_VARS):
    return dict(named)
  order = _BN_VARS if len(named) == 4 else _CONV_VARS
  if len(named) > len(order):
    raise ValueError(f'{path}: layer {layer!r} has unexpected weights {names}.')
  return {name: value for name, (_, value) in zip(order, named)}


# --- Converting. ---------------------------------------------------------------------------------


def _convert(
    layers: dict[str, dict[str, np.ndarray]], path: str | os.PathLike
) -> tuple[Tree, Tree]:
  """Pairs each Keras conv with its batch norm and converts the pair (see module docstring)."""
  pairs: dict[tuple[str, ...], dict[str, str]] = {}  # module path prefix -> {'conv'/'bn': name}
  unsupported, ignored = [], []
  for name in layers:
    if m := _STEM.fullmatch(name):
      pairs.setdefault(('stem',), {})[m[1]] = name
    elif (m := _BLOCK.fullmatch(name)) and int(m[1]) >= 2:
      block = f'stage{int(m[1]) - 1}_block{m[2]}'
      pairs.setdefault((block, m[3]), {})[m[4]] = name
    elif _RESNET_LIKE.fullmatch(name):
      unsupported.append(name)
    else:
      ignored.append(name)
  if unsupported:
    raise ValueError(
        f'{path}: layers {unsupported[:5]}{" ..." if len(unsupported) > 5 else ""} are not part '
        'of a Keras ResNet v1 (ResNet50/101/152): is this a ResNet50V2 or another variant? Only '
        'keras.applications.ResNet50-style weights convert to this trunk.')
  if ignored:
    logger.info('Ignoring layers outside the ResNet trunk in %s: %s', path, ignored)
  if ('stem',) not in pairs:
    raise ValueError(f"{path} holds no Keras ResNet layers (no 'conv1_conv'); its layers with "
                     f'weights: {sorted(layers)[:10]}.')

  params: Tree = {}
  batch_stats: Tree = {}
  for key, names in pairs.items():
    for kind, other in (('conv', 'bn'), ('bn', 'conv')):
      if kind in names and other not in names:
        missing = names[kind].removesuffix(kind) + other
        raise ValueError(
            f'{path}: layer {names[kind]!r} has no {missing!r} in the file; each conv must come '
            'with its batch norm (the conv bias is folded into it).')
    conv, bn = layers[names['conv']], layers[names['bn']]
    _check_pair(names, conv, bn, path)
    if key == ('stem',):
      kernel, bias = _convert_stem(conv['kernel'], conv.get('bias'), names['conv'], path)
      conv_name, bn_name, parent_p, parent_s = 'stem_conv', 'stem_bn', params, batch_stats
    else:
      kernel = np.asarray(conv['kernel'], np.float64)
      bias = np.asarray(conv.get('bias', 0.0), np.float64)
      conv_name, bn_name = _BRANCH_NAMES[key[1]]
      parent_p = params.setdefault(key[0], {})
      parent_s = batch_stats.setdefault(key[0], {})
    scale, offset, mean, var = _convert_batch_norm(bn, bias)
    parent_p[conv_name] = {'kernel': kernel.astype(np.float32)}
    parent_p[bn_name] = {'scale': scale, 'bias': offset}
    parent_s[bn_name] = {'mean': mean, 'var': var}
  return _model_order(params), _model_order(batch_stats)


def _check_pair(names: dict[str, str], conv: dict[str, np.ndarray], bn: dict[str, np.ndarray],
                path: str | os.PathLike) -> None:
  """A conv kernel is [kh, kw, in, out] and its batch norm has `out` entries in each vector."""
  kernel = conv.get('kernel')
  if kernel is None or kernel.ndim != 4:
    raise ValueError(f"{path}: layer {names['conv']!r} has no 4-d 'kernel' "
                     f'(got {sorted(conv)} with shapes {[v.shape for v in conv.values()]}).')
  out = kernel.shape[-1]
  for var in _BN_VARS:
    if var not in bn:
      raise ValueError(f"{path}: layer {names['bn']!r} lacks '{var}' (has {sorted(bn)}).")
  shapes = {var: v.shape for var, v in [*bn.items(), *conv.items()] if var != 'kernel'}
  if any(shape != (out,) for shape in shapes.values()):
    raise ValueError(f"{path}: layers {names['conv']!r} (kernel {kernel.shape}) and "
                     f"{names['bn']!r} disagree: vector shapes {shapes}, expected ({out},).")


def _convert_batch_norm(
    bn: dict[str, np.ndarray], conv_bias: np.ndarray
) -> tuple[np.ndarray, ...]:
  """Keras BN after a biased conv -> flax BN after a bias-free conv, same function in eval mode.

  Keras computes gamma * (conv(x) + b - mean) / sqrt(var + 1.001e-5) + beta; our convs have no
  bias (batch norm makes it redundant) and our BN epsilon is 1e-5. With
    mean' = mean - b                       (the bias folded into the running mean) and
    var'  = var + 1.001e-5 - 1e-5          (so that var' + 1e-5 == var + 1.001e-5),
  gamma * (conv(x) - mean') / sqrt(var' + 1e-5) + beta is the same number. In training mode the
  batch statistics replace both running averages, and a per-channel constant before batch norm
  cancels anyway, so nothing is lost there. Computed in float64, stored in float32.
  Returns (scale, bias, mean, var) as flax names them.
  """
  mean = np.asarray(bn['moving_mean'], np.float64) - conv_bias
  var = np.asarray(bn['moving_variance'], np.float64) + (KERAS_BN_EPSILON - FLAX_BN_EPSILON)
  return tuple(np.asarray(v, np.float32) for v in (bn['gamma'], bn['beta'], mean, var))


def _convert_stem(kernel: np.ndarray, bias: np.ndarray | None, name: str,
                  path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """The 3-channel BGR stem conv -> our 1-channel grayscale stem, plus the bias it implies.

  Keras' ResNet50 sees caffe-preprocessed pixels x_c = p_c - m_c (BGR order, m = CAFFE_BGR_MEAN).
  Our trunk sees grayscale g in [-1, 1]; we treat it as the 8-bit gray pixel p = 127.5 (g + 1) on
  all three channels. Then for each output channel o
    sum_{h,w,c} K[h,w,c,o] (127.5 g + 127.5 - m_c)
      = sum_{h,w} (127.5 sum_c K[h,w,c,o]) g  +  sum_{h,w,c} K[h,w,c,o] (127.5 - m_c),
  i.e. a 1-channel conv with kernel' = 127.5 * K.sum(in-channel axis, keepdims) plus a
  per-channel constant, which is returned added to the conv bias (and so folds into the stem BN's
  running mean, `_convert_batch_norm`).

  Approximation at the border: Keras zero-pads the *preprocessed* image (3 pixels each side), i.e.
  pads with the ImageNet mean colour, whereas zero-padding g pads with mid-gray (127.5 in every
  channel); in the constant above each padded tap still counts. So the stem outputs whose 7x7
  window overlaps the padding (the outer 2 rows and columns of the stem map at stride 2) differ
  from Keras' as if the border were mid-gray instead of the mean colour (|127.5 - m_c| <= 23.6 of
  255). Exact handling needs a different pad value per input channel, which a 1-channel conv
  cannot express; fine-tuning absorbs the difference. Away from the border it is exact.
  """
  kernel = np.asarray(kernel, np.float64)
  if kernel.shape[2] != 3:
    raise ValueError(
        f'{path}: layer {name!r} has {kernel.shape[2]} input channels; the ImageNet ResNet-50 stem '
        'has 3 (BGR), which this converter maps to one grayscale channel.')
  offset = np.einsum('hwco,c->o', kernel, GRAY_SCALE - np.asarray(CAFFE_BGR_MEAN))
  bias = np.zeros(kernel.shape[-1]) if bias is None else np.asarray(bias, np.float64)
  return GRAY_SCALE * kernel.sum(axis=2, keepdims=True), bias + offset


_MODULE_ORDER = ('stem_conv', 'stem_bn', 'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3',
                 'proj_conv', 'proj_bn')


def _order_key(layer: tuple[str, ...]) -> tuple[int, ...]:
  """Sort key of a trunk module path, in the order the trunk creates its modules."""
  m = re.fullmatch(r'stage(\d+)_block(\d+)', layer[0]) if layer else None
  block = (int(m[1]), int(m[2])) if m else (0, 0)
  names = [n for n in layer if n in _MODULE_ORDER]
  return (*block, _MODULE_ORDER.index(names[-1]) if names else len(_MODULE_ORDER))


def _model_order(tree: Tree) -> Tree:
  """Keys in the order the trunk creates its modules (stem, then stage by stage, block by block).

  Only cosmetic: parameter overviews and error messages then read in network order.
  """
  out = {}
  for name in sorted(tree, key=lambda n: _order_key((n,))):
    sub = tree[name]
    if name.startswith('stage'):
      sub = {k: sub[k] for k in sorted(sub, key=_MODULE_ORDER.index)}
    out[name] = sub
  return out


# --- Checking against a model. -------------------------------------------------------------------


def _stage_sizes(layer_names: set[tuple[str, ...]]) -> tuple[int, ...]:
  """Blocks per stage, read from module names like ('stage3_block6', 'conv1')."""
  sizes: dict[int, int] = {}
  for path in layer_names:
    if m := re.fullmatch(r'stage(\d+)_block(\d+)', path[0]):
      sizes[int(m[1])] = max(sizes.get(int(m[1]), 0), int(m[2]))
  return tuple(sizes.get(s, 0) for s in range(1, max(sizes, default=0) + 1))


def _check_matches(expected: Tree, got: Tree, path: str | os.PathLike) -> None:
  """Raises a ValueError unless `got` has exactly `expected`'s layers and shapes.

  Trees are {'params': ..., 'batch_stats': ...} of the trunk; a layer is a leaf's path without
  its last part (('stage1_block1', 'conv1')).
  """
  flat_expected = {(c, *k): v for c in expected
                   for k, v in traverse_util.flatten_dict(expected[c]).items()}
  flat_got = {(c, *k): v for c in got for k, v in traverse_util.flatten_dict(got[c]).items()}
  layers_expected = sorted({k[1:-1] for k in flat_expected}, key=_order_key)
  layers_got = sorted({k[1:-1] for k in flat_got}, key=_order_key)

  def describe(layers: list[tuple[str, ...]]) -> str:
    shown = ', '.join(f"{'/'.join(l)} ({keras_layer_name(l)})" for l in layers[:8])
    return shown + (f' and {len(layers) - 8} more' if len(layers) > 8 else '')

  problems = []
  missing = [l for l in layers_expected if l not in set(layers_got)]
  unexpected = [l for l in layers_got if l not in set(layers_expected)]
  if missing:
    problems.append(f'the file lacks trunk layers {describe(missing)}.')
  if unexpected:
    problems.append(f'the model has no layers {describe(unexpected)}.')
  stages_file, stages_model = _stage_sizes(set(layers_got)), _stage_sizes(set(layers_expected))
  if stages_file != stages_model:
    problems.append(f'The file has {stages_file} blocks per stage, the model {stages_model} '
                    '(ResNet-50: (3, 4, 6, 3); ResNet-101: (3, 4, 23, 3)).')
  for key in sorted(flat_expected, key=lambda k: _order_key(k[1:-1])):
    leaf = flat_expected[key]
    if key in flat_got and tuple(flat_got[key].shape) != tuple(leaf.shape):
      layer = '/'.join(key[1:-1])
      problems.append(
          f'First shape mismatch: layer trunk/{layer} (Keras {keras_layer_name(key[1:-1])!r}) '
          f'{key[0]} {key[-1]!r} has shape {tuple(flat_got[key].shape)} in the file (converted) '
          f'but {tuple(leaf.shape)} in the model.')
      break
  if problems:
    raise ValueError(f'{os.fspath(path)} does not fit this PoseEstimator trunk: '
                     + ' '.join(problems))
