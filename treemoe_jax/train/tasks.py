"""What is trained: each task's model, initialisation, loss and evaluation sums.

Two tasks share the training machinery (`treemoe_jax.train`): the head-pose estimator (section
3.1, `pose_task`) and the cascade (section 3.5, `alignment_task`). A task's functions are pure
and traceable: the trainer jits them over the data mesh.

Masks meet metrics only through `masked_sum` (`where(mask, x, 0)`): a padding row has all-zero
ground truth, so its normaliser is 0 and its NME inf or NaN, and `inf * 0` is NaN.

Axis legend: B batch, P landmarks, K stages, L experts.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from treemoe_jax.nn import gates
from treemoe_jax import metrics as metrics_lib
from treemoe_jax.train import expert_losses
from treemoe_jax.nn import models
from treemoe_jax.nn import pose as pose_lib

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  model: nn.Module
  init: Callable[[jax.Array], dict]  # rng -> variables
  loss: Callable[..., tuple[jax.Array, tuple[Any, dict]]]  # (params, batch_stats, batch)
  eval_sums: Callable[[dict, Batch], dict]  # (variables, batch) -> masked sums over the batch
  batch_keys: tuple[str, ...]
  # Whether its forward runs the ResNet-50 pose estimator: picks the XLA:CPU options of its
  # evaluation (xla_options.inference_options).
  runs_pose_estimator: bool = False


def apply(model, params, batch_stats, *args, train: bool, **kwargs):
  """model.apply with BatchNorm statistics when the model has them; (output, updates)."""
  variables = {'params': params} | ({'batch_stats': batch_stats} if batch_stats else {})
  if train:
    return model.apply(variables, *args, train=True, mutable=['batch_stats'], **kwargs)
  return model.apply(variables, *args, train=False, **kwargs), {}


def wrap_angle(angle: jax.Array) -> jax.Array:
  """Angle differences in (-pi, pi]: a yaw of 179 deg and one of -179 deg are 2 deg apart."""
  return jnp.arctan2(jnp.sin(angle), jnp.cos(angle))


def masked_sum(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Sum of `values` [B] over the rows where `mask` [B] is True; other rows may be inf or NaN."""
  return jnp.sum(jnp.where(mask, values, 0.0))


def nonfinite_inputs(batch: Batch) -> dict[str, jax.Array]:
  """{'nonfinite/<key>': count of NaN/inf entries} over the *global* batch, for float keys.

  Computed inside the jitted step, so every host reads the same count: a host that checked only
  its own rows would stop while the others wait in the next collective.
  """
  return {f'nonfinite/{k}': jnp.sum(~jnp.isfinite(v)) for k, v in sorted(batch.items())
          if jnp.issubdtype(v.dtype, jnp.floating)}


def pose_task(config: ml_collections.ConfigDict) -> Task:
  """Section 3.1: yaw, pitch and roll regressed with a periodic L2 loss."""
  model = models.create_pose_estimator(config.pose, config.model.get('dtype', 'float32'))
  size = config.model.image_size

  def init(rng):
    variables = model.init(rng, jnp.zeros((1, size, size), jnp.float32), train=False)
    if config.resnet50_weights:
      from treemoe_jax.nn import pretrained  # pylint: disable=g-import-not-at-top (h5py, on demand)
      variables = pretrained.init_pose_trunk(variables, config.resnet50_weights)
    return variables

  def loss(params, batch_stats, batch):
    out, updates = apply(model, params, batch_stats, batch['image'], train=True)
    error = wrap_angle(out['pose'] - batch['pose'])  # [B, 3]
    mae = jnp.degrees(jnp.abs(error)).mean(0)
    metrics = {f'mae_deg/{a}': mae[i] for i, a in enumerate(pose_lib.ANGLES)}
    return jnp.mean(error**2), (updates.get('batch_stats'), metrics)

  def eval_sums(variables, batch):
    out = model.apply(variables, batch['image'], train=False)
    error = jnp.degrees(jnp.abs(wrap_angle(out['pose'] - batch['pose'])))  # [B, 3]
    mask = batch['mask']
    sums = {f'mae_deg/{a}': masked_sum(error[:, i], mask) for i, a in enumerate(pose_lib.ANGLES)}
    return sums | {'count': jnp.sum(mask.astype(jnp.float32))}

  return Task('pose', model, init, loss, eval_sums, ('image', 'pose'), runs_pose_estimator=True)


# 'l2': section 3.5's squared error (px^2). 'distance': each landmark's Euclidean error (px), the
# quantity NME averages: a far-off face (occluded, profile) no longer outweighs the sub-pixel
# work on all the others (docs/learning.md).
LOSS_TYPES = ('l2', 'distance')


def alignment_task(config: ml_collections.ConfigDict) -> Task:
  """Section 3.5: L2 on landmark positions of every stage (or the last), NME per stage logged."""
  model = models.create(config)
  # The same parameters, lowered for a forward never differentiated (evaluation: eval_sums).
  inference_model = models.create(config, inference=True)
  normalizer = config.nme_normalizer
  if config.loss_stages not in ('all', 'last'):
    raise ValueError(f"loss_stages must be 'all' or 'last', got {config.loss_stages!r}")
  loss_type = config.get('loss_type', 'l2')
  if loss_type not in LOSS_TYPES:
    raise ValueError(f'unknown loss_type {loss_type!r}; valid: {", ".join(LOSS_TYPES)}')

  def init(rng):
    return models.init(model, rng)

  def stage_nme(out, batch):  # [K, B]
    return jax.vmap(lambda s: metrics_lib.nme_jax(s, batch['landmarks'], normalizer))(
        out['stage_shapes'])

  truth_pose = models.gate_pose(config) == 'truth'
  pose_of = lambda batch: {'pose': batch['pose']} if truth_pose else {}

  moe = expert_losses.settings(config)
  want_paths = moe['expert_loss'] != 'none'
  # The gates that learn (a uniform gate has no parameters: its balance and entropy are fixed).
  learned = [layer for layer, kind in zip(('representation', 'regression'), models.GATES[
      models.parse_architecture(config.model.architecture)]) if kind != gates.GateKind.UNIFORM]
  stage_mean = (lambda per_stage: per_stage.mean()) if config.loss_stages == 'all' else (
      lambda per_stage: per_stage[-1])

  def loss(params, batch_stats, batch):
    out, updates = apply(model, params, batch_stats, batch['image'], batch['init_shape'],
                         train=True, paths=want_paths, **pose_of(batch))
    per_point = expert_losses.point_errors(out['stage_shapes'], batch['landmarks'],
                                           loss_type)  # [K, B, P]
    mixture = stage_mean(per_point.mean((1, 2)))
    metrics = {'loss/mixture': mixture}
    loss = moe['mixture_loss_weight'] * mixture
    if want_paths:
      errors = expert_losses.path_errors(out['paths'], batch['landmarks'], loss_type)
      weights = expert_losses.path_weights(out['paths'])  # [K, B, L, M]
      if moe['expert_loss'] == 'weighted':
        per_stage = expert_losses.weighted_expert_loss(errors, weights)
      else:
        per_stage = expert_losses.competitive_expert_loss(errors, weights,
                                                          moe['competition_scale'])
      metrics['loss/experts'] = stage_mean(per_stage)
      loss += moe['expert_loss_weight'] * metrics['loss/experts']
      # What greedy routing would make of each face: the path of the largest weight per stage.
      best = weights.reshape(weights.shape[:2] + (-1,)).argmax(-1)  # [K, B]
      top_error = jnp.take_along_axis(errors.reshape(best.shape + (-1,)), best[..., None], -1)
      metrics['loss/top_path'] = stage_mean(top_error[..., 0].mean(-1))
    if learned and moe['balance_weight']:
      metrics['loss/balance'] = sum(stage_mean(expert_losses.balance_loss(out['gates'][layer]))
                                    for layer in learned)
      loss += moe['balance_weight'] * metrics['loss/balance']
    if learned and moe['entropy_weight']:
      metrics['loss/entropy'] = sum(stage_mean(expert_losses.mean_entropy(out['gates'][layer]))
                                    for layer in learned)
      loss += moe['entropy_weight'] * metrics['loss/entropy']
    nme = stage_nme(out, batch).mean(1)  # [K]
    metrics |= {f'nme/stage{k}': nme[k] for k in range(nme.shape[0])}
    metrics['nme/init'] = metrics_lib.nme_jax(batch['init_shape'], batch['landmarks'],
                                              normalizer).mean()
    for layer, weights in out['gates'].items():  # [K, B, L]
      entropy = gates.gate_entropy(weights).mean(1)  # [K]
      usage = weights.mean(1)  # [K, L]: how much each expert is used on this batch
      for k in range(weights.shape[0]):
        metrics[f'gate_entropy/stage{k}/{layer}'] = entropy[k]
        metrics[f'expert_usage/stage{k}/{layer}'] = usage[k]
    return loss, (updates.get('batch_stats'), metrics)

  def eval_sums(variables, batch):
    out = inference_model.apply(variables, batch['image'], batch['init_shape'], train=False,
                                **pose_of(batch))
    mask = batch['mask']
    nme = stage_nme(out, batch)  # [K, B]
    init_nme = metrics_lib.nme_jax(batch['init_shape'], batch['landmarks'], normalizer)
    sums = {f'nme/stage{k}': masked_sum(nme[k], mask) for k in range(nme.shape[0])}
    return sums | {'nme/init': masked_sum(init_nme, mask),
                   'count': jnp.sum(mask.astype(jnp.float32))}

  return Task('alignment', model, init, loss, eval_sums,
              ('image', 'landmarks', 'init_shape') + (('pose',) if truth_pose else ()),
              runs_pose_estimator=getattr(model, 'pose_estimator', None) is not None)
