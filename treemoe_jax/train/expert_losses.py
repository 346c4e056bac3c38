"""Mixture-of-experts objectives beside the paper's loss on the mixture (config.moe).

The paper trains on the mixture's output only (section 3.5). Then nothing asks any one expert to
be right on its own: experts may co-adapt and cancel, the gates stay soft, and greedy routing,
which runs one expert, runs a model nobody trained. These terms ask for experts:

- `weighted`: each expert path's own error weighted by its gate, sum_l g_l e_l (Jacobs, Jordan,
  Nowlan & Hinton 1991, eq. 1.2). Its gradient on the gate is g_l (e_l - mean e): weight flows to
  the experts that are right, and each expert is trained where its gate sends it.
- `competitive`: -s log sum_l g_l exp(-e_l / s), the same paper's eq. 1.3 in loss units s: a soft
  minimum over the experts, so only the best experts of a face are pulled towards it.
- `balance`: the squared coefficient of variation of each gate's importance over the batch
  (Shazeer et al. 2017, eq. 6), so that committing gates do not all pick one expert.
- `entropy`: the mean entropy of each learned gate's weights, penalised to make gates commit.

Axis legend: K stages, B batch, L representation experts, M regression experts, P landmarks.
"""

import jax
import jax.numpy as jnp

from treemoe_jax.nn import gates

EXPERT_LOSSES = ('none', 'weighted', 'competitive')


def point_errors(shapes: jax.Array, landmarks: jax.Array, loss_type: str) -> jax.Array:
  """Per-landmark loss `[..., P]` of `shapes` `[..., P, 2]` against `landmarks` (broadcast).

  'distance': the Euclidean error (px; the epsilon keeps the gradient finite at a perfect point);
  'l2': its square (section 3.5).
  """
  squared = jnp.sum((shapes - landmarks)**2, -1)
  return jnp.sqrt(squared + 1e-6) if loss_type == 'distance' else squared


def path_weights(paths: dict) -> jax.Array:
  """g_l(pose) g'_m(H_l): how much path (l, m) counts in the mixture `[K, B, L, M]`."""
  return paths['representation'][..., None] * paths['regression']


def path_errors(paths: dict, landmarks: jax.Array, loss_type: str) -> jax.Array:
  """Each path's own error, averaged over landmarks `[K, B, L, M]`; landmarks `[B, P, 2]`."""
  return point_errors(paths['shapes'], landmarks[:, None, None], loss_type).mean(-1)


def weighted_expert_loss(errors: jax.Array, weights: jax.Array) -> jax.Array:
  """sum_paths w e per face, averaged over faces: `[K, B, L, M]` twice -> `[K]` (eq. 1.2)."""
  return jnp.sum(weights * errors, axis=(-2, -1)).mean(-1)


def competitive_expert_loss(errors: jax.Array, weights: jax.Array, scale: float) -> jax.Array:
  """-s log sum_paths w exp(-e / s) per face, averaged over faces -> `[K]` (eq. 1.3).

  Computed as a log-sum-exp with log w (a zero weight is -inf, its path ignored), so large
  errors do not underflow. s -> infinity gives `weighted_expert_loss`; s -> 0 the best path's
  error among those the gate weighs at all.
  """
  if scale <= 0:
    raise ValueError(f'the competitive loss needs a positive scale, got {scale}')
  flat = lambda x: x.reshape(x.shape[:-2] + (-1,))  # [K, B, L * M]
  log_weights = jnp.log(jnp.where(weights > 0, weights, 1.0))
  log_weights = jnp.where(weights > 0, log_weights, -jnp.inf)
  mixed = jax.nn.logsumexp(flat(log_weights - errors / scale), axis=-1)  # [K, B]
  return (-scale * mixed).mean(-1)


def balance_loss(weights: jax.Array) -> jax.Array:
  """Squared coefficient of variation of the gate's importance: `[K, B, L]` -> `[K]`.

  Importance is each expert's summed weight over the batch (Shazeer et al. 2017); 0 when every
  expert carries the same share of the batch, L - 1 when one expert carries all of it.
  """
  importance = weights.sum(-2)  # [K, L]
  mean = importance.mean(-1)
  return importance.var(-1) / (mean**2 + 1e-12)


def mean_entropy(weights: jax.Array) -> jax.Array:
  """Mean gate entropy per stage (nats): `[K, B, L]` -> `[K]`."""
  return gates.gate_entropy(weights).mean(-1)


# The paper's objective: the mixture's loss alone. What a config without `moe` (release 0.2 and
# before) trained with.
PAPER = {'expert_loss': 'none', 'expert_loss_weight': 0.0, 'mixture_loss_weight': 1.0,
         'competition_scale': 1.0, 'balance_weight': 0.0, 'entropy_weight': 0.0}


def settings(config) -> dict:
  """config.moe over the paper's objective, checked; a config without `moe` is the paper's."""
  moe = dict(PAPER)
  if config.get('moe') is not None:
    unknown = set(config.moe) - set(PAPER)
    if unknown:
      raise ValueError(f'unknown config.moe field(s) {sorted(unknown)}; valid: {sorted(PAPER)}')
    moe.update(config.moe.to_dict())
  if moe['expert_loss'] not in EXPERT_LOSSES:
    raise ValueError(f"unknown config.moe.expert_loss {moe['expert_loss']!r}; valid: "
                     f'{", ".join(EXPERT_LOSSES)}')
  for name in ('expert_loss_weight', 'mixture_loss_weight', 'balance_weight', 'entropy_weight'):
    if not moe[name] >= 0:
      raise ValueError(f'config.moe.{name} must be >= 0, got {moe[name]}')
  if moe['expert_loss'] != 'none' and moe['expert_loss_weight'] == 0:
    raise ValueError(f"config.moe.expert_loss={moe['expert_loss']!r} with expert_loss_weight 0 "
                     'trains nothing of it; give it a weight, or expert_loss=none')
  if moe['mixture_loss_weight'] == 0 and moe['expert_loss'] == 'none':
    raise ValueError('config.moe: neither the mixture nor its experts are trained '
                     '(mixture_loss_weight 0 and expert_loss none)')
  if moe['expert_loss'] == 'competitive' and not moe['competition_scale'] > 0:
    raise ValueError(f"config.moe.competition_scale must be > 0, got {moe['competition_scale']}")
  return moe
