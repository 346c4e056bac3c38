"""A plain port of the face aligner's forward: what a straightforward JAX rewrite would compute.

Not imported by the package: the speed baseline that `python -m benchmarks.run_all` compares the
package's forward to, and an independent reference that tests/test_plain_port.py checks the
package's forward against (dense routing). It reads the package's own parameter tree and writes
each part the obvious way:
  - the expert CNNs as grouped convolutions (`feature_group_count` = E, the patch copied to every
    expert's channels);
  - the tree gate's leaf probabilities as a product of sigmoids along each leaf's root path;
  - the regressors as einsums over the expert axis.
The head-pose estimator is the package's ResNet-50 module: there is nothing to port there.
Only the paper's layout is covered: every patch at full resolution (no `patch_scales`).

Axis legend: B batch, P landmarks, S patch size, E experts, F features, H hidden, O = 2P.
"""

import jax
import jax.numpy as jnp
import numpy as np

from treemoe_jax.nn import cascade
from treemoe_jax.nn import gates
from treemoe_jax.nn import models
from treemoe_jax.nn import patches as patches_lib


def grouped_cnns(params: dict, crops: jax.Array) -> jax.Array:
  """E expert CNNs as grouped convolutions: crops [B, P, S, S] -> [B, E, P*n]."""
  batch, num_patches, size, _ = crops.shape
  layers = [params[f'conv{i}'] for i in range(len(params))]
  num_experts = layers[0]['kernel'].shape[0]
  x = jnp.tile(crops.reshape(batch * num_patches, size, size, 1), (1, 1, 1, num_experts))
  for i, layer in enumerate(layers):
    kernel = layer['kernel']  # [E, k, k, C, F]
    _, k, _, channels, width = kernel.shape
    grouped = jnp.moveaxis(kernel, 0, 3).reshape(k, k, channels, num_experts * width)
    x = jax.lax.conv_general_dilated(x, grouped, (2, 2), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                     feature_group_count=num_experts) + layer['bias'].reshape(-1)
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  n = layers[-1]['kernel'].shape[-1]
  x = x.mean(axis=(1, 2)).reshape(batch, num_patches, num_experts, n)
  return jnp.moveaxis(x, 2, 1).reshape(batch, num_experts, num_patches * n)


def tree_leaf_probs(logits: jax.Array) -> jax.Array:
  """mu_l = prod over the root path of d_n (left) or 1 - d_n (right): logits [B, N] -> [B, L]."""
  depth = gates.tree_depth(logits.shape[-1])
  left = jax.nn.sigmoid(logits)
  columns = []
  for leaf in range(2**depth):
    node, prob = 0, jnp.ones(logits.shape[:-1])
    for level in reversed(range(depth)):
      go_right = (leaf >> level) & 1
      prob = prob * (1 - left[:, node] if go_right else left[:, node])
      node = 2 * node + 1 + go_right
    columns.append(prob)
  return jnp.stack(columns, axis=-1)


def gate_weights(kind: gates.GateKind, params: dict | None, x: jax.Array, num_experts: int):
  kind = gates.GateKind(kind)
  if kind == gates.GateKind.UNIFORM:
    return jnp.full((x.shape[0], num_experts), 1.0 / num_experts)
  if kind == gates.GateKind.SOFTMAX:
    return jax.nn.softmax(x @ params['logits']['kernel'] + params['logits']['bias'], axis=-1)
  return tree_leaf_probs(x @ params['nodes']['kernel'] + params['nodes']['bias'])


def regressors(params: dict, h: jax.Array) -> jax.Array:
  """E regressors as einsums: h [B, F] -> [B, E, O]."""
  hidden = jax.nn.relu(jnp.einsum('bf,efh->beh', h, params['hidden']['kernel'])
                       + params['hidden']['bias'])
  return jnp.einsum('beh,eho->beo', hidden, params['out']['kernel']) + params['out']['bias']


def make_forward(model: models.FaceAligner):
  """forward(variables, images [B, H, W], init_shape [B, P, 2]) -> final shape [B, P, 2]."""
  spec: cascade.StageSpec = model.stage
  if model.patch_scales and any(s != 1 for s in model.patch_scales):
    raise ValueError('the plain port covers the paper\'s full-resolution patches only')
  if model.gate_pose != 'estimator':
    raise ValueError('the plain port reads the pose estimator\'s pose')

  def forward(variables, images, init_shape):
    params = variables['params']
    pose = None
    if model.pose_estimator is not None:
      pose_vars = {'params': params['pose_estimator'],
                   'batch_stats': variables['batch_stats']['pose_estimator']}
      pose = model.pose_estimator.apply(pose_vars, images, train=False)['pose']
    shape = init_shape
    for k in range(model.num_stages):
      stage = params['cascade'][f'stage{k}']
      crops = patches_lib.extract_patches(images, shape, spec.patch_size)
      h_experts = grouped_cnns(stage['representation']['experts'], crops)
      rep_in = pose if spec.gates_on_pose else jnp.zeros((images.shape[0], 1))
      rep_w = gate_weights(spec.representation_gate, stage.get('representation_gate'), rep_in,
                           spec.num_representation_experts)
      h = jnp.einsum('bef,be->bf', h_experts, rep_w)
      reg_w = gate_weights(spec.regression_gate, stage.get('regression_gate'), h,
                           spec.num_regression_experts)
      delta = jnp.einsum('beo,be->bo', regressors(stage['regression']['experts'], h), reg_w)
      shape = shape + delta.reshape(shape.shape) * (images.shape[-1] / 2)
    return shape

  return forward


def count_parameters(variables) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(variables['params'])))
