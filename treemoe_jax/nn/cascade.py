"""The cascade (section 3.5): s(k+1) = s(k) + ds(k), each ds(k) from one stage of gated experts.

A stage crops patches at the current shape, runs the representation committee (gated by the
head pose or not), then the regression committee gated on its own input h, and adds the
displacement. The cascade runs K such stages, each with its own parameters, from s(0).

Axis legend: B batch, H = W image size, P landmarks, Z patch size, K stages,
L representation experts, L' regression experts, F = P * n features.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from treemoe_jax.nn import experts
from treemoe_jax.nn import gates
from treemoe_jax.nn import patches
from treemoe_jax.nn import routing as routing_lib


DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """Everything that sizes one cascade stage (the rows of SPEC's architecture table)."""
  num_landmarks: int = 68
  patch_size: int = 32
  representation_features: tuple[int, ...] = (20, 40, 80, 160, 30)
  representation_kernel_sizes: tuple[int, ...] = (5, 5, 3, 3, 1)
  num_representation_experts: int = 1
  # How each committee is computed (experts.CONV_IMPLS, CNN_LOWERINGS, FIRST_LAYERS,
  # MLP_LOWERINGS): the same parameters and outputs either way.
  representation_conv_impl: str = 'im2col'
  representation_lowering: str = 'auto'
  representation_first_layer: str = 'auto'
  regression_lowering: str = 'auto'
  # A forward that is never differentiated (evaluation, Aligner, export): 'auto' lowerings may
  # then pick one with a slower gradient (experts.CNN_AUTO_INFERENCE). Not a model property.
  inference: bool = False
  # Computation dtype of the committees ('float32' or 'bfloat16'); parameters, patch coordinates,
  # gates, displacements and the loss stay float32 (a bfloat16 landmark is off by up to 0.5 px).
  dtype: str = 'float32'
  representation_gate: gates.GateKind = gates.GateKind.UNIFORM
  representation_gate_depth: int | None = None
  num_regression_experts: int = 64
  regression_hidden: int = 128
  regression_output_init: str = 'lecun'  # 'zeros': a fresh stage moves nothing (experts.py)
  regression_gate: gates.GateKind = gates.GateKind.TREE
  regression_gate_depth: int | None = 6

  @property
  def gates_on_pose(self) -> bool:
    """Whether the representation gate reads the head pose (uniform gates read nothing)."""
    return gates.GateKind(self.representation_gate) != gates.GateKind.UNIFORM

  def validate(self) -> None:
    """Fail at build time with a sentence, not later with a broadcasting error."""
    for what, n in [('num_landmarks', self.num_landmarks), ('patch_size', self.patch_size),
                    ('num_representation_experts', self.num_representation_experts),
                    ('num_regression_experts', self.num_regression_experts),
                    ('regression_hidden', self.regression_hidden)]:
      if n < 1:
        raise ValueError(f'{what} must be positive, got {n}')
    # make_gate checks that a tree has one leaf per expert.
    gates.make_gate(self.representation_gate, self.num_representation_experts,
                    self.representation_gate_depth)
    gates.make_gate(self.regression_gate, self.num_regression_experts, self.regression_gate_depth)
    if self.dtype not in DTYPES:
      raise ValueError(f'unknown dtype {self.dtype!r}; valid: {", ".join(DTYPES)}')
    # Resolved for any backend: a misspelt lowering fails here, not at the first apply.
    experts.resolve_cnn_lowering(self.representation_lowering, 'cpu')
    experts.resolve_first_layer(self.representation_first_layer, 'cpu')
    experts.resolve_mlp_lowering(self.regression_lowering, 'cpu')


def top_k(weights: jax.Array, k: int) -> jax.Array:
  """Gate weights `[..., L]` with all but k experts per row zeroed and the kept ones renormalised.

  Exactly k experts survive, chosen by index: a threshold (`weights >= k-th largest`) would keep
  every tied expert, so top-1 under a uniform gate would still be the whole ensemble. Ties go to
  the lowest expert index, as `jax.lax.top_k` breaks them. k <= 0 or k >= L keeps every expert.
  """
  num_experts = weights.shape[-1]
  if k <= 0 or k >= num_experts:
    return weights
  _, chosen = jax.lax.top_k(weights, k)  # [..., k] expert indices, largest weight first
  mask = jax.nn.one_hot(chosen, num_experts, dtype=weights.dtype).sum(-2)  # [..., L] 0/1
  kept = weights * mask
  return kept / kept.sum(-1, keepdims=True)


class CascadeStage(nn.Module):
  """One stage: patches at s(k) -> h = H g(pose) -> ds = dS g'(h) -> s(k) + ds.

  `patch_scale` > 1 crops the patches from an image that many times smaller (patches.py).
  """
  spec: StageSpec
  patch_scale: float = 1.0

  @nn.compact
  def __call__(self, images: jax.Array, shape: jax.Array, pose: jax.Array | None,
               regression_top_k: int = 0, routing: routing_lib.Routing = routing_lib.DENSE,
               paths: bool = False):
    """images [B, H, W], shape [B, P, 2], pose [B, 3] or None -> (shape [B, P, 2], gate weights).

    `regression_top_k` > 0 keeps exactly the k regressors the gate weighs most (renormalised;
    ties to the lowest index, see `top_k`), as in Fig. 7's top-1 predictions, computing all of
    them. `routing` (routing.py) instead runs only the selected experts of both committees. The
    returned gate weights are the gates' own.

    `paths` (dense only): also return every expert path's own prediction, for the mixture-of-
    experts objectives (train/moe_losses.py): path (l, m) is CNN expert l's features alone, read
    by regressor m, gated by g_l(pose) g'_m(H_l) (a hierarchical mixture, Jordan & Jacobs 1994).
    What greedy routing runs is one such path, so training them makes greedy a trained model.
    """
    spec = self.spec
    crops = patches.scaled_patches(images, shape, spec.patch_size, self.patch_scale)  # [B,P,Z,Z]
    rep_gate = gates.make_gate(spec.representation_gate, spec.num_representation_experts,
                               spec.representation_gate_depth, name='representation_gate')
    if spec.gates_on_pose and pose is None:
      raise ValueError(f'a {spec.representation_gate} representation gate reads the head pose, '
                       'but no pose was given')
    # A uniform gate reads nothing but the batch size.
    gate_input = pose if spec.gates_on_pose else jnp.zeros((images.shape[0], 1), images.dtype)
    representation = experts.ExpertCNNs(
        spec.num_representation_experts, spec.representation_features,
        spec.representation_kernel_sizes, spec.representation_conv_impl,
        spec.representation_lowering, jnp.dtype(spec.dtype), inference=spec.inference,
        first_layer=spec.representation_first_layer, name='representation')
    num_outputs = 2 * spec.num_landmarks
    regression = experts.ExpertMLPs(spec.num_regression_experts, spec.regression_hidden,
                                    num_outputs, spec.regression_output_init,
                                    dtype=jnp.dtype(spec.dtype), lowering=spec.regression_lowering,
                                    name='regression')
    reg_gate = gates.make_gate(spec.regression_gate, spec.num_regression_experts,
                               spec.regression_gate_depth, name='regression_gate')
    # The regressors speak in half-image units (normalised coordinates in [-1, 1]): a unit-scale
    # output is a displacement across half the face crop, so Adam at 1e-3 moves them usefully.
    to_pixels = images.shape[-1] / 2
    if paths:
      if routing.kind != 'dense' or regression_top_k:
        raise ValueError('expert paths are computed densely: routing and top-k are for inference')
      return expert_paths(representation, rep_gate, gate_input, crops, regression, reg_gate,
                          shape, to_pixels)
    h, rep_weights = gated_committee(representation, rep_gate, gate_input, crops, routing)
    delta, reg_weights = gated_committee(regression, reg_gate, h, h, routing,
                                         regression_top_k)  # [B, 2P], [B, L']
    new_shape = shape + delta.reshape(shape.shape) * to_pixels
    return new_shape, {'representation': rep_weights, 'regression': reg_weights}


def expert_paths(representation: nn.Module, rep_gate: nn.Module, gate_input: jax.Array,
                 crops: jax.Array, regression: nn.Module, reg_gate: nn.Module, shape: jax.Array,
                 to_pixels: float) -> tuple[jax.Array, dict]:
  """The dense stage and every expert path's own shape, in one pass of each committee.

  The regression committee reads the mixture's features h and each CNN expert's H_l stacked
  along the batch (one CNN expert: its H_1 is h, read once). Returns (the mixture's shape
  [B, P, 2], gate weights as the stage returns them plus 'paths': {'representation' [B, L],
  'regression' [B, L, L'] (g' on H_l), 'shapes' [B, L, L', P, 2]}).
  """
  per_expert = representation(crops)  # [B, L, F]
  rep_weights = rep_gate(gate_input)  # [B, L]
  h = experts.combine(per_expert, rep_weights)  # [B, F]
  batch, num_experts, features = per_expert.shape
  inputs = h[:, None] if num_experts == 1 else jnp.concatenate([h[:, None], per_expert], 1)
  stacked = inputs.reshape(-1, features)  # [B * (1 or 1 + L), F]
  outputs = regression(stacked).reshape(batch, inputs.shape[1], -1, 2 * shape.shape[1])
  reg_weights = reg_gate(stacked).reshape(batch, inputs.shape[1], -1)  # [B, 1 (+L), L']
  delta = jnp.einsum('bmo,bm->bo', outputs[:, 0], reg_weights[:, 0])  # the mixture's [B, 2P]
  path_outputs, path_reg = (outputs, reg_weights) if num_experts == 1 else (
      outputs[:, 1:], reg_weights[:, 1:])  # [B, L, L', 2P], [B, L, L']
  path_shapes = shape[:, None, None] + path_outputs.reshape(
      path_outputs.shape[:3] + shape.shape[1:]) * to_pixels  # [B, L, L', P, 2]
  new_shape = shape + delta.reshape(shape.shape) * to_pixels
  return new_shape, {'representation': rep_weights, 'regression': reg_weights[:, 0],
                     'paths': {'representation': rep_weights, 'regression': path_reg,
                               'shapes': path_shapes}}


def gated_committee(committee: nn.Module, gate: nn.Module, gate_input: jax.Array,
                    x: jax.Array, routing: routing_lib.Routing = routing_lib.DENSE,
                    masked_top_k: int = 0) -> tuple[jax.Array, jax.Array]:
  """(sum_l g_l(gate_input) E_l(x) `[B, F]`, the gate's weights `[B, L]`) (eq. 4, 7).

  Under `routing` only the selected experts run (a uniform gate prefers none: always dense);
  `masked_top_k` > 0 runs them all and keeps the k largest weights (Fig. 7, `top_k`).
  """
  weights = gate(gate_input)  # [B, L]
  selected = None
  if not (isinstance(gate, gates.UniformGate) or routing.kind == 'dense'
          or gate.is_initializing()):
    node_logits = gate.node_logits(gate_input) if isinstance(gate, gates.TreeGate) else None
    selected = routing_lib.select(weights, routing, node_logits)
  if selected is None:
    return experts.combine(committee(x), top_k(weights, masked_top_k)), weights  # [B, L, F]
  chosen, chosen_weights = selected  # [B, K]
  return experts.combine(committee(x, chosen), chosen_weights), weights  # [B, K, F]


class Cascade(nn.Module):
  """K stages from the initial shape; returns every stage's shape and gate weights.

  `patch_scales` gives each stage's patch scale (None: all 1, the paper's fixed 32 px patches).
  """
  spec: StageSpec
  num_stages: int = 4
  stop_gradient_between_stages: bool = False
  patch_scales: tuple[float, ...] | None = None

  @nn.compact
  def __call__(self, images: jax.Array, init_shape: jax.Array, pose: jax.Array | None,
               regression_top_k: int = 0,
               routing: routing_lib.Routing = routing_lib.DENSE, paths: bool = False) -> dict:
    """`paths`: also return 'paths', each stage's expert paths stacked on K (`expert_paths`)."""
    scales = self.patch_scales or (1.0,) * self.num_stages
    if len(scales) != self.num_stages:
      raise ValueError(f'{len(scales)} patch scales for {self.num_stages} stages')
    shape = init_shape
    stage_shapes, rep_weights, reg_weights, stage_paths = [], [], [], []
    for k in range(self.num_stages):
      if self.stop_gradient_between_stages:
        shape = jax.lax.stop_gradient(shape)  # stage-wise training: stage k sees s(k) as data
      shape, weights = CascadeStage(self.spec, float(scales[k]), name=f'stage{k}')(
          images, shape, pose, regression_top_k, routing, paths)
      stage_shapes.append(shape)
      rep_weights.append(weights['representation'])
      reg_weights.append(weights['regression'])
      stage_paths.append(weights.get('paths'))
    outputs = {
        'shape': shape,  # [B, P, 2]
        'stage_shapes': jnp.stack(stage_shapes),  # [K, B, P, 2]
        'gates': {'representation': jnp.stack(rep_weights),  # [K, B, L]
                  'regression': jnp.stack(reg_weights)},  # [K, B, L']
    }
    if paths:  # representation [K, B, L], regression [K, B, L, L'], shapes [K, B, L, L', P, 2]
      outputs['paths'] = jax.tree.map(lambda *x: jnp.stack(x), *stage_paths)
    return outputs
