"""The learning-rate schedules a run can name (`config.lr_schedule`), as optax schedules.

Its own module because two places need them: the optimiser (train.py), and the resume check
(workdirs.py), which lets a run resume with another schedule only where the rates of the steps
already trained stay the same.
"""

import ml_collections
import optax

SCHEDULES = ('constant', 'cosine', 'wsd')


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The rate Adam uses at each step (logged as `learning_rate`).

  'constant': section 3.5's 1e-3 throughout. 'cosine': a linear warm-up over `warmup_steps`, then
  a cosine decay to 0 at `num_train_steps`; the late small steps are what brings the landmarks
  to sub-pixel precision (docs/learning.md measures it). 'wsd' (warm-up, stable, decay): the
  warm-up, the constant rate, then a linear decay to 0 over the last `decay_steps`. Unlike the
  cosine, the rate before the decay does not depend on `num_train_steps`, so a run trained at a
  constant rate (in chunks, until its error stops falling) can resume and add the decay as its
  last chunk (docs/learning.md, "The pose estimator").
  """
  kind = config.get('lr_schedule', 'constant')
  if kind == 'constant':
    return optax.constant_schedule(config.learning_rate)
  if kind == 'cosine':
    warmup = min(config.get('warmup_steps', 0), config.num_train_steps - 1)
    return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, max(warmup, 0),
                                              config.num_train_steps, end_value=0.0)
  if kind == 'wsd':
    return _warmup_stable_decay(config.learning_rate, config.get('warmup_steps', 0),
                                config.get('decay_steps', 0), config.num_train_steps)
  raise ValueError(f'unknown lr_schedule {kind!r}; valid: {", ".join(SCHEDULES)}')


def _warmup_stable_decay(rate: float, warmup: int, decay: int, total: int) -> optax.Schedule:
  """0 -> rate over `warmup` steps, rate until `total - decay`, then linearly to 0 at `total`."""
  if decay < 0 or warmup < 0 or warmup + decay > total:
    raise ValueError(f'wsd schedule: need 0 <= warmup_steps ({warmup}) + decay_steps ({decay}) '
                     f'<= num_train_steps ({total})')
  decay_start = total - decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, rate, warmup) if warmup else optax.constant_schedule(rate),
       optax.constant_schedule(rate),
       optax.linear_schedule(rate, 0.0, max(decay, 1))],
      boundaries=[warmup, decay_start])
