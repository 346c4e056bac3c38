"""The six architectures of section 3.5 from one code path, chosen by `config.model`.

Which gates an architecture has is fixed here (it is what the name means); how wide and how
many experts it has is data in `configs/` (the paper's sizes in `configs/default.py`, small ones
in each config's `tiny` variant).

Axis legend: B batch, H = W image size, P landmarks, K stages, L / L' experts.
"""

import enum

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from treemoe_jax.nn import cascade
from treemoe_jax.nn import pose as pose_lib
from treemoe_jax.nn import routing as routing_lib
from treemoe_jax.nn.gates import GateKind


class Architecture(str, enum.Enum):
  BASELINE = 'baseline'
  MOE = 'moe'
  SOFTMAX_MOE = 'softmax_moe'
  TREE_MOE = 'tree_moe'
  POSE_SOFTMAX_MOE = 'pose_softmax_moe'
  POSE_TREE_MOE = 'pose_tree_moe'


# (representation gate, regression gate) of each architecture (Fig. 3, section 3.5).
GATES: dict[Architecture, tuple[GateKind, GateKind]] = {
    Architecture.BASELINE: (GateKind.UNIFORM, GateKind.UNIFORM),
    Architecture.MOE: (GateKind.UNIFORM, GateKind.UNIFORM),
    Architecture.SOFTMAX_MOE: (GateKind.UNIFORM, GateKind.SOFTMAX),
    Architecture.TREE_MOE: (GateKind.UNIFORM, GateKind.TREE),
    Architecture.POSE_SOFTMAX_MOE: (GateKind.SOFTMAX, GateKind.SOFTMAX),
    Architecture.POSE_TREE_MOE: (GateKind.TREE, GateKind.TREE),
}


def parse_architecture(name: str) -> Architecture:
  try:
    return Architecture(name)
  except ValueError:
    valid = ', '.join(a.value for a in Architecture)
    raise ValueError(f'unknown architecture {name!r}; valid: {valid}') from None


GATE_POSES = ('estimator', 'truth')


class FaceAligner(nn.Module):
  """Head-pose estimator (pose-gated architectures only) + K-stage cascade.

  `__call__(images [B, H, W], init_shape [B, P, 2], train)` returns a dict with the final
  `shape` [B, P, 2], `stage_shapes` [K, B, P, 2], `gates` {'representation' [K, B, L],
  'regression' [K, B, L']} and, for pose-gated models, `pose` [B, 3] (yaw, pitch, roll).
  """
  stage: cascade.StageSpec
  num_stages: int = 4
  image_size: int = 150
  stop_gradient_between_stages: bool = False
  pose_estimator: pose_lib.PoseEstimator | None = None
  freeze_pose: bool = False  # a trained pose estimator read as data: no gradient, BN in eval mode
  patch_scales: tuple[float, ...] | None = None  # per stage; None = 1 (cascade.Cascade)
  # 'estimator': the gate reads pose_estimator's pose (the paper). 'truth': it reads the `pose`
  # given to __call__ (the true head pose, an upper bound on what a better estimator would give).
  gate_pose: str = 'estimator'

  def _check_inputs(self, images: jax.Array, init_shape: jax.Array) -> None:
    """Reject inputs of the wrong kind at trace time: uint8 pixels would run and give garbage."""
    size, points = self.image_size, self.stage.num_landmarks
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise TypeError('images must be floating point: the model expects float32 in [-1, 1] '
                      '(e.g. from input_pipeline.pipeline.normalize), not raw [0, 255] pixels; '
                      f'got dtype {images.dtype}')
    if images.ndim != 3 or images.shape[1:] != (size, size):
      raise ValueError(f'images must be [B, {size}, {size}] grayscale float32 in [-1, 1], '
                       f'got shape {tuple(images.shape)}')
    if not jnp.issubdtype(init_shape.dtype, jnp.floating):
      raise TypeError('init_shape must be float32 (x, y) pixel coordinates, '
                      f'got dtype {init_shape.dtype}')
    if init_shape.shape != (images.shape[0], points, 2):
      raise ValueError(f'init_shape must be [B, P, 2] = [{images.shape[0]}, {points}, 2] '
                       f'(x, y per landmark), got shape {tuple(init_shape.shape)}')

  @nn.compact
  def __call__(self, images: jax.Array, init_shape: jax.Array, train: bool = False,
               regression_top_k: int = 0, pose: jax.Array | None = None,
               routing: 'str | routing_lib.Routing' = 'dense', paths: bool = False) -> dict:
    """`regression_top_k` > 0: each stage adds only its k most-weighted regressors (Fig. 7).

    `paths`: also return every expert path's own prediction per stage (cascade.expert_paths),
    for the mixture-of-experts objectives in training.

    `routing` ('dense', 'topk:K', 'greedy'; routing.py): which experts of each learned gate run
    at inference; only those are computed.

    `pose` [B, 3]: the head pose the gate reads when `gate_pose` is 'truth' (ignored otherwise).
    """
    self._check_inputs(images, init_shape)
    if self.gate_pose not in GATE_POSES:
      raise ValueError(f'unknown gate_pose {self.gate_pose!r}; valid: {", ".join(GATE_POSES)}')
    if self.gate_pose == 'truth':
      if self.stage.gates_on_pose and (pose is None or pose.shape != (images.shape[0], 3)):
        raise ValueError("gate_pose='truth' gates on the given head pose: pass pose [B, 3] "
                         '(yaw, pitch, roll in radians)')
      pose = pose if self.stage.gates_on_pose else None
    else:
      pose = None
    if self.pose_estimator is not None and self.gate_pose == 'estimator':
      # A submodule by attribute: its parameters live under 'pose_estimator'.
      estimate = self.pose_estimator(images, train=train and not self.freeze_pose)
      pose = estimate['pose']
      if self.freeze_pose:
        pose = jax.lax.stop_gradient(pose)
    outputs = cascade.Cascade(self.stage, self.num_stages, self.stop_gradient_between_stages,
                              self.patch_scales,
                              name='cascade')(images, init_shape, pose, regression_top_k,
                                              routing_lib.parse(routing), paths)
    if pose is not None:
      outputs['pose'] = pose
    return outputs


def forward(model: FaceAligner, *, routing: 'str | routing_lib.Routing' = 'dense',
            regression_top_k: int = 0, stage_top1: bool = False):
  """The one inference forward: fn(variables, images [B, S, S], init_shape [B, P, 2], pose=None)
  -> per-face rows, batch leading, for evaluation, the Aligner and the export alike:
  shape [B, P, 2], stage_shapes [B, K, P, 2], gates_representation [B, K, L],
  gates_regression [B, K, L'] and, for pose-gated models, pose [B, 3].

  `stage_top1` (dense only) adds stage_top1_shapes [B, K, P, 2]: each stage's most-weighted
  expert path alone, from the full model's previous shape (Fig. 7 as the paper draws it).
  `pose` is read only by a model that gates on the true pose (`gate_pose='truth'`).
  """
  routing = routing_lib.parse(routing)

  def apply(variables, images, init_shape, pose=None):
    out = model.apply(variables, images, init_shape, train=False,
                      regression_top_k=regression_top_k, routing=routing,
                      pose=pose if model.gate_pose == 'truth' else None, paths=stage_top1)
    rows = {'shape': out['shape'],
            'stage_shapes': jnp.moveaxis(out['stage_shapes'], 0, 1),
            'gates_representation': jnp.moveaxis(out['gates']['representation'], 0, 1),
            'gates_regression': jnp.moveaxis(out['gates']['regression'], 0, 1)}
    if 'pose' in out:
      rows['pose'] = out['pose']
    if stage_top1:
      rows['stage_top1_shapes'] = jnp.moveaxis(top_path_shapes(out['paths']), 0, 1)
    return rows

  return apply


def top_path_shapes(paths: dict) -> jax.Array:
  """Each stage's shape from its most-weighted path (l, m) alone: paths -> [K, B, P, 2].

  The weight of path (l, m) is g_l g'_m(H_l) (cascade.expert_paths); ties go to the lowest.
  """
  weights = paths['representation'][..., None] * paths['regression']  # [K, B, L, L']
  best = weights.reshape(weights.shape[:2] + (-1,)).argmax(-1)  # [K, B]
  shapes = paths['shapes'].reshape(best.shape + (-1,) + paths['shapes'].shape[-2:])
  return jnp.take_along_axis(shapes, best[..., None, None, None], 2)[:, :, 0]


def stage_spec(model_config: ml_collections.ConfigDict,
               inference: bool = False) -> cascade.StageSpec:
  """The stage of `model_config`, with the gates its architecture name stands for
  (`inference`: StageSpec.inference)."""
  architecture = parse_architecture(model_config.architecture)
  representation_gate, regression_gate = GATES[architecture]
  spec = cascade.StageSpec(
      num_landmarks=model_config.num_landmarks,
      patch_size=model_config.patch_size,
      representation_features=tuple(model_config.representation_features),
      representation_kernel_sizes=tuple(model_config.representation_kernel_sizes),
      num_representation_experts=model_config.num_representation_experts,
      representation_conv_impl=model_config.representation_conv_impl,
      representation_lowering=model_config.get('representation_lowering', 'auto'),
      representation_first_layer=model_config.get('representation_first_layer', 'auto'),
      regression_lowering=model_config.get('regression_lowering', 'auto'),
      inference=inference,
      dtype=model_config.get('dtype', 'float32'),
      representation_gate=representation_gate,
      representation_gate_depth=model_config.get('representation_gate_depth'),
      num_regression_experts=model_config.num_regression_experts,
      regression_hidden=model_config.regression_hidden,
      regression_output_init=model_config.get('regression_output_init', 'lecun'),
      regression_gate=regression_gate,
      regression_gate_depth=model_config.get('regression_gate_depth'),
  )
  experts = (spec.num_representation_experts, spec.num_regression_experts)
  if architecture == Architecture.BASELINE and experts != (1, 1):
    raise ValueError('the baseline has one CNN and one regressor, got '
                     f'{spec.num_representation_experts} and {spec.num_regression_experts}')
  spec.validate()
  return spec


def create_pose_estimator(pose_config: ml_collections.ConfigDict,
                          dtype: str = 'float32') -> pose_lib.PoseEstimator:
  """`dtype`: the computation's (config.model.dtype); parameters and angles stay float32."""
  return pose_lib.PoseEstimator(stage_sizes=tuple(pose_config.stage_sizes),
                                base_width=pose_config.base_width,
                                head_hidden=pose_config.head_hidden,
                                dtype=jnp.dtype(dtype),
                                head_output=head_output(pose_config))


def head_output(pose_config: ml_collections.ConfigDict) -> str:
  """The pose heads' output: a config without the field predates the wrapped heads ('tanh')."""
  return pose_config.get('head_output', 'tanh')


def create(config: ml_collections.ConfigDict, inference: bool = False) -> FaceAligner:
  """The face aligner that `config.model` describes (`config.pose` sizes its pose estimator).

  `inference`: its forward will never be differentiated (evaluation, Aligner, export), so the
  committees may be computed in the way fastest for that (the same outputs, the same parameters).
  """
  spec = stage_spec(config.model, inference)
  if config.model.num_stages < 1:
    raise ValueError(f'num_stages must be >= 1, got {config.model.num_stages}')
  return FaceAligner(
      stage=spec,
      num_stages=config.model.num_stages,
      image_size=config.model.image_size,
      stop_gradient_between_stages=config.model.stop_gradient_between_stages,
      pose_estimator=(create_pose_estimator(config.pose, config.model.get('dtype', 'float32'))
                      if spec.gates_on_pose and gate_pose(config) == 'estimator' else None),
      gate_pose=gate_pose(config),
      freeze_pose=config.model.freeze_pose,
      patch_scales=_patch_scales(config.model),
  )


def gate_pose(config: ml_collections.ConfigDict) -> str:
  """What a pose-gated model's gate reads: 'estimator' (the paper) or 'truth' (an oracle)."""
  return config.model.get('gate_pose', 'estimator')


def _patch_scales(model_config: ml_collections.ConfigDict) -> tuple[float, ...] | None:
  """config.model.patch_scales: the first stages' scales, later stages at 1 (full resolution).

  So `(2,)` (tiny, small) keeps meaning "the first stage coarse" when --config.model.num_stages
  changes; () = every stage at full resolution, the paper's patches.
  """
  scales = tuple(float(s) for s in model_config.get('patch_scales', ()))
  if len(scales) > model_config.num_stages:
    raise ValueError(f'config.model.patch_scales has {len(scales)} entries for '
                     f'{model_config.num_stages} stages: give at most one per stage')
  if not scales:
    return None
  return scales + (1.0,) * (model_config.num_stages - len(scales))


def init(model: FaceAligner, rng: jax.Array, batch_size: int = 1) -> dict:
  """Variables of `model` for a dummy batch (shapes only matter)."""
  images = jnp.zeros((batch_size, model.image_size, model.image_size), jnp.float32)
  shape = jnp.zeros((batch_size, model.stage.num_landmarks, 2), jnp.float32)
  pose = jnp.zeros((batch_size, 3), jnp.float32) if model.gate_pose == 'truth' else None
  return model.init(rng, images, shape, train=False, pose=pose)
