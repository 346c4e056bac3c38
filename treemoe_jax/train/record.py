"""A workdir's record of what was trained: `config.json`, `mean_shape.npy`, and the resume rules.

The record is written once, when a run starts from scratch, and is the truth afterwards: evaluation
builds its model from it, and a resumed run is compared with it before anything is written. A
change to what is trained (model, data, crop, seed, batch, optimiser, ...) would silently train
something else or die inside orbax with a tree mismatch, so it stops with one error listing every
difference; a change to how long or how often (`SAFE_TO_CHANGE`) is allowed and logged.
"""

import json
import logging
import pathlib
from typing import Any

import ml_collections
import numpy as np

from treemoe_jax.runs import CONFIG_FILE, MEAN_SHAPE_FILE  # noqa: F401 (the record's files)
from treemoe_jax.runs import has_checkpoint, latest_checkpoint_step, load_config  # noqa: F401
from treemoe_jax.runs import canonical, load_mean_shape  # noqa: F401

# Fields a resumed run may change: when to stop, how often to log, evaluate and save, where the
# (same) data lives, what is evaluated. Everything else decides what the run trains.
SAFE_TO_CHANGE = ('num_train_steps', 'log_every_steps', 'eval_every_steps',
                  'checkpoint_every_steps', 'keep_checkpoints', 'data_dir', 'manual_dir',
                  'eval_split', 'eval_protocol')
# How a committee is computed, not what it computes: each lowering is tested equal to the plain
# one, so a run may resume on another backend with the lowering that suits it.
SAFE_TO_CHANGE += ('model.representation_lowering', 'model.representation_conv_impl',
                   'model.regression_lowering', 'model.representation_first_layer')
# Keys added after runs were stored, with the value that reproduces what those runs did: a stored
# config without the key compares as this value, so adding a key does not orphan old workdirs.
# ('pose.head_output' absent: the pi*tanh heads those estimators learned, as models.head_output.)
# (The committees' lowerings, added later too, need no entry: safe to change.)
ADDED_LATER = {'model.dtype': 'float32', 'pose.head_output': 'tanh', 'decay_steps': 0,
               'init_from': ''}
# config.moe (0.3): runs before it trained on the mixture's loss alone, the paper's objective.
ADDED_LATER |= {f'moe.{key}': value for key, value in {
    'expert_loss': 'none', 'expert_loss_weight': 0.0, 'mixture_loss_weight': 1.0,
    'competition_scale': 1.0, 'balance_weight': 0.0, 'entropy_weight': 0.0}.items()}
# The learning-rate schedule may change on resume only where the steps already trained keep their
# rates (`schedule_keeps_the_past`): e.g. a constant run resumed as 'wsd', which adds the decay.
SCHEDULE_KEYS = ('learning_rate', 'lr_schedule', 'warmup_steps', 'decay_steps')


def _strip_trailing_ones(scales):
  scales = list(scales)
  while scales and scales[-1] == 1:
    scales.pop()
  return scales


# Values spelled differently that configure the same run: a stage with no patch scale cuts its
# patches at scale 1, so (2, 1) and (2,) are one model.
_CANONICAL = {'model.patch_scales': _strip_trailing_ones}
_ABSENT = '<absent>'


class ResumeError(ValueError):
  """A resumed run's config changes what was trained: use a new workdir."""


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out |= _flatten(value, f'{prefix}{key}.')
    return out or {prefix.rstrip('.'): {}}
  return {prefix.rstrip('.'): tree}


def _as_json(config: ml_collections.ConfigDict | dict) -> dict:
  """The JSON form under 0.2's names, so that a tuple and the list it was stored as compare
  equal, and an aliased or renamed field once."""
  if isinstance(config, ml_collections.ConfigDict):
    return canonical(json.loads(config.to_json_best_effort()))
  return canonical(config)


def config_differences(stored: ml_collections.ConfigDict | dict,
                       current: ml_collections.ConfigDict | dict) -> list[tuple[str, Any, Any]]:
  """[(dotted key, stored value, current value)] for every field that differs, sorted by key."""
  old, new = _flatten(_as_json(stored)), _flatten(_as_json(current))
  old = {**{k: v for k, v in ADDED_LATER.items() if k in new}, **old}
  for key, spelled in _CANONICAL.items():
    for flat in (old, new):
      if isinstance(flat.get(key), list):
        flat[key] = spelled(flat[key])
  return [(k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in sorted(old.keys() | new.keys())
          if old.get(k, _ABSENT) != new.get(k, _ABSENT)]


def schedule_keeps_the_past(stored: ml_collections.ConfigDict | dict,
                            current: ml_collections.ConfigDict, trained_steps: int) -> bool:
  """Whether `current`'s learning rates equal `stored`'s at every step in [0, trained_steps)."""
  from treemoe_jax.train import schedules  # optax: only when a schedule changed
  old = {key: value for key, value in _flatten(_as_json(stored)).items() if '.' not in key}
  old = {**{k: v for k, v in ADDED_LATER.items() if '.' not in k}, **old}
  try:
    rates = [np.asarray(schedules.learning_rate_schedule(ml_collections.ConfigDict(c))(
        np.arange(trained_steps))) for c in (old, {k: current.get(k) for k in old})]
  except ValueError:  # an unknown or invalid schedule: not provably the same
    return False
  return bool(np.allclose(*rates, rtol=1e-6, atol=0.0))


def check_resume(workdir: str | pathlib.Path, config: ml_collections.ConfigDict) -> bool:
  """Whether `workdir` holds a run to resume; raises ResumeError if `config` would change it.

  Reads only: a refusal leaves the workdir as it was. Allowed changes are logged.
  """
  workdir = pathlib.Path(workdir)
  if not has_checkpoint(workdir):
    return False
  if not (workdir / CONFIG_FILE).exists():
    raise ResumeError(f'{workdir} has checkpoints but no {CONFIG_FILE}: what it trained is '
                      'unknown, so it cannot be resumed safely. Use a new --workdir.')
  stored = load_config(workdir)
  differences = config_differences(stored, config)
  unsafe = [d for d in differences if d[0] not in SAFE_TO_CHANGE]
  trained = latest_checkpoint_step(workdir)
  changed = {d[0] for d in differences}
  if changed & (set(SCHEDULE_KEYS) | {'num_train_steps'}):
    keeps = schedule_keeps_the_past(stored, config, trained)
    if keeps:
      unsafe = [d for d in unsafe if d[0] not in SCHEDULE_KEYS]
    elif 'num_train_steps' in changed and not unsafe:
      # A cosine's decay (a decaying wsd's too) ends at num_train_steps: moved, it re-heats a
      # converged run (1000 steps of cosine resumed to 2000: step 999 at 2.5e-9, 1000 at 9e-4).
      raise ResumeError(_rates_change_message(workdir, stored, config, trained))
  if unsafe:
    lines = '\n'.join(f'  {key}: {old!r} -> {new!r}' for key, old, new in unsafe)
    raise ResumeError(
        f'{workdir} holds a run trained with another config; resuming it with this one would '
        f'train something else. Differences (stored -> now):\n{lines}\nUse a new --workdir for a '
        f'new experiment. Only {", ".join(SAFE_TO_CHANGE)} may change on resume.')
  for key, old, new in differences:
    logging.info('resuming %s with %s changed: %r -> %r', workdir, key, old, new)
  return True


def _rates_change_message(workdir, stored, config, trained: int) -> str:
  """Why a new num_train_steps is refused, with the rates it would change."""
  from treemoe_jax.train import schedules  # optax
  old_total, new_total = load_num_train_steps(stored), config.num_train_steps
  old = schedules.learning_rate_schedule(ml_collections.ConfigDict(
      {**config.to_dict(), 'num_train_steps': old_total}))
  new = schedules.learning_rate_schedule(config)
  last = max(trained - 1, 0)
  return (f'{workdir}: num_train_steps {old_total} -> {new_total} would change the learning '
          f"rates of the {trained} steps already trained: its {config.get('lr_schedule')!r} "
          f'schedule ends at num_train_steps. Step {last} trained at {float(old(last)):.3g}, and '
          f'step {trained} would now train at {float(new(trained)):.3g} where the run planned '
          f'{float(old(trained)):.3g}. Resume with num_train_steps={old_total}, or train the '
          f'longer schedule from the start in a new --workdir.')


def load_num_train_steps(stored) -> int:
  return int(_as_json(stored)['num_train_steps'])


def record(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
           mean_shape: np.ndarray | None = None) -> None:
  """Writes config.json (and mean_shape.npy) for a run that starts from scratch."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
  if mean_shape is not None:
    np.save(workdir / MEAN_SHAPE_FILE, np.asarray(mean_shape, np.float32))
