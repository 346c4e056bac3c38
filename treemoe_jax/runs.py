"""A trained workdir, restored: its config, s(0), parameters and (for a cascade) its model.

The one way of reading a run, shared by training (a pose estimator for a cascade), evaluation and
inference. Read-only: nothing here creates or writes a file in the workdir. No TensorFlow.

A workdir holds `config.json` and `mean_shape.npy` (the record of what was trained, written when
the run started) and `checkpoints/<step>/` (orbax: the train state and the data position).
"""

import dataclasses
import json
import pathlib

import ml_collections
import numpy as np

from treemoe_jax import checkpointing
from treemoe_jax.nn import models

CONFIG_FILE = 'config.json'
# Config names of release 0.1 -> 0.2's (one word per committee: 'representation' for the expert
# CNNs, 'regression' for the expert regressors; size variants that no dataset config shares).
# A config.json written before reads under the new names; configs keep the old ones as aliases.
RENAMED_FIELDS = {
    'model.cnn_features': 'model.representation_features',
    'model.num_cnn_experts': 'model.num_representation_experts',
    'model.cnn_kernel_sizes': 'model.representation_kernel_sizes',
    'model.cnn_conv_impl': 'model.representation_conv_impl',
    'model.cnn_lowering': 'model.representation_lowering',
    'model.cnn_first_layer': 'model.representation_first_layer',
    'model.mlp_lowering': 'model.regression_lowering',
}
RENAMED_VARIANTS = {'tiny': 'cpu', 'small': 'reproduction'}
MEAN_SHAPE_FILE = 'mean_shape.npy'
CHECKPOINTS = 'checkpoints'


def canonical(config: dict) -> dict:
  """A config as JSON-ready nested dicts, under 0.2's names: renamed fields moved to their new
  keys (an alias beside its field dropped), an old size variant's name replaced."""
  config = json.loads(json.dumps(config))
  for old, new in RENAMED_FIELDS.items():
    group, old_key = old.split('.')
    fields = config.get(group)
    if isinstance(fields, dict) and old_key in fields:
      value = fields.pop(old_key)
      fields.setdefault(new.split('.')[1], value)
  if config.get('variant') in RENAMED_VARIANTS:
    config['variant'] = RENAMED_VARIANTS[config['variant']]
  return config


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The workdir's config.json, under 0.2's names (JSON turned tuples into lists; consumers
  convert where needed)."""
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: is {workdir} a training workdir?')
  return ml_collections.ConfigDict(canonical(json.loads(path.read_text())))


def load_mean_shape(workdir: str | pathlib.Path) -> np.ndarray:
  """s(0) before placement [P, 2], as the run learned it from its train split."""
  path = pathlib.Path(workdir) / MEAN_SHAPE_FILE
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: is {workdir} a training workdir?')
  return np.load(path)


def checkpoint_steps(workdir: str | pathlib.Path) -> list[int]:
  """The steps of the finished checkpoints (orbax names them by step; unfinished ones *-tmp*)."""
  directory = pathlib.Path(workdir) / CHECKPOINTS
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def has_checkpoint(workdir: str | pathlib.Path) -> bool:
  """Whether a finished checkpoint exists."""
  return bool(checkpoint_steps(workdir))


def latest_checkpoint_step(workdir: str | pathlib.Path) -> int:
  """The step of the newest finished checkpoint; 0 when there is none."""
  return max(checkpoint_steps(workdir), default=0)


def restore_state(workdir: str | pathlib.Path, step: int | None = None) -> tuple[dict, int]:
  """(train state as host numpy, its step): the newest finished checkpoint, or `step`'s."""
  steps = checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'no finished checkpoint in {pathlib.Path(workdir) / CHECKPOINTS}: '
                            'has this run saved one yet?')
  if step is not None and step not in steps:
    raise FileNotFoundError(f'{workdir} has no checkpoint at step {step}; it has {steps}')
  mngr = checkpointing.manager(str(pathlib.Path(workdir) / CHECKPOINTS), asynchronous=False,
                               create=False)
  try:
    state = checkpointing.restore_to_host(mngr, step)
  finally:
    mngr.close()
  return state, int(max(steps) if step is None else step)


def variables_of(state: dict) -> dict:
  """A train state's model variables: {'params'} and, where the model has them, 'batch_stats'."""
  variables = {'params': state['params']}
  if state.get('batch_stats'):
    variables['batch_stats'] = state['batch_stats']
  return variables


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained cascade: its config (the truth), model, weights, step and s(0)."""
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  model: models.FaceAligner
  variables: dict  # host numpy {'params', 'batch_stats'?}
  step: int
  mean_shape: np.ndarray  # [P, 2] crop pixels


def load_run(workdir: str | pathlib.Path, step: int | None = None) -> Run:
  """The newest (or `step`'s) checkpoint of an alignment workdir, restored to host memory."""
  workdir = pathlib.Path(workdir)
  config = load_config(workdir)
  if config.task != 'alignment':
    raise ValueError(f'{workdir} trained a {config.task!r} model; evaluation and alignment need '
                     'a cascade')
  state, step = restore_state(workdir, step)
  return Run(workdir, config, models.create(config, inference=True), variables_of(state), step,
             load_mean_shape(workdir))


def load_pose_estimator(pose_workdir: str | pathlib.Path) -> dict:
  """{'params': ..., 'batch_stats': ...} of the newest checkpoint of a pose-training workdir."""
  directory = pathlib.Path(pose_workdir) / CHECKPOINTS
  if not directory.is_dir():
    raise FileNotFoundError(f'no pose checkpoints in {directory}: train one with '
                            f'--config configs/pose_resnet50.py --workdir {pose_workdir}')
  state, _ = restore_state(pose_workdir)
  return {'params': state['params'], 'batch_stats': state.get('batch_stats') or {}}
