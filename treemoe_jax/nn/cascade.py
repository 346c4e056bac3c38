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
               regression_top_k: int = 0, routing: routing_lib.Routing = routing_lib.DENSE):
    """images [B, H, W], shape [B, P, 2], pose [B, 3] or None -> (shape [B, P, 2], gate weights).

    `regression_top_k` > 0 keeps exactly the k regressors the gate weighs most (renormalised;
    ties to the lowest index, see `top_k`), as in Fig. 7's top-1 predictions, computing all of
    them. `routing` (routing.py) instead runs only the selected experts of both committees. The
    returned gate weights are the gates' own.
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
    h, rep_weights = gated_committee(representation, rep_gate, gate_input, crops, routing)
    num_outputs = 2 * spec.num_landmarks
    regression = experts.ExpertMLPs(spec.num_regression_experts, spec.regression_hidden,
                                    num_outputs, spec.regression_output_init,
                                    dtype=jnp.dtype(spec.dtype), lowering=spec.regression_lowering,
                                    name='regression')
    reg_gate = gates.make_gate(spec.regression_gate, spec.num_regression_experts,
                               spec.regression_gate_depth, name='regression_gate')
    delta, reg_weights = gated_committee(regression, reg_gate, h, h, routing,
                                         regression_top_k)  # [B, 2P], [B, L']
    # The regressors speak in half-image units (normalised coordinates in [-1, 1]): a unit-scale
    # output is a displacement across half the face crop, so Adam at 1e-3 moves them usefully.
    new_shape = shape + delta.reshape(shape.shape) * (images.shape[-1] / 2)
    return new_shape, {'representation': rep_weights, 'regression': reg_weights}


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
               routing: routing_lib.Routing = routing_lib.DENSE) -> dict:
    scales = self.patch_scales or (1.0,) * self.num_stages
    if len(scales) != self.num_stages:
      raise ValueError(f'{len(scales)} patch scales for {self.num_stages} stages')
    shape = init_shape
    stage_shapes, rep_weights, reg_weights = [], [], []
    for k in range(self.num_stages):
      if self.stop_gradient_between_stages:
        shape = jax.lax.stop_gradient(shape)  # stage-wise training: stage k sees s(k) as data
      shape, weights = CascadeStage(self.spec, float(scales[k]), name=f'stage{k}')(
          images, shape, pose, regression_top_k, routing)
      stage_shapes.append(shape)
      rep_weights.append(weights['representation'])
      reg_weights.append(weights['regression'])
    return {
        'shape': shape,  # [B, P, 2]
        'stage_shapes': jnp.stack(stage_shapes),  # [K, B, P, 2]
        'gates': {'representation': jnp.stack(rep_weights),  # [K, B, L]
                  'regression': jnp.stack(reg_weights)},  # [K, B, L']
    }
