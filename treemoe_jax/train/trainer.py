"""Training (section 3.5): the state, one data-parallel step, and the loop that feeds it.

`train_and_evaluate(config, workdir)` trains the head-pose estimator (`config.task == 'pose'`) or
a cascade (`'alignment'`); what each computes is in `train.tasks`, the mesh and global batches in
`treemoe_jax.parallel`, the workdir's record and resume rules in `train.record`, where batches
come from in `train.data` (tf.data by default, or arrays in memory: any `Data`). The step is
one `jax.jit` over the mesh: the batch sharded on 'data', the state replicated, XLA inserting
the gradient all-reduce.

The loop never waits on the host between log steps: the loss and the count of non-finite inputs
(global reductions inside the step, so every host reads the same) travel in the step's metrics
and are read only at log, checkpoint and evaluation steps, which also stop a run that saw a NaN
before it can save. Steps in between run under `jax.transfer_guard_device_to_host('disallow')`.
Preemption (SIGTERM) saves the same step on every host: orbax's preemption sync point across
hosts, a signal handler in a single process.

The tf.data pipeline and the TensorBoard writer (both import TensorFlow) are imported only when a
run uses them, so the same loop trains on TF-free accelerator machines (`data.ArrayData`).

Axis legend: B global batch, P landmarks, K stages, L experts.
"""

import copy
import logging
import pathlib
import signal
import time
from collections.abc import Iterator
from typing import Any

from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from treemoe_jax import checkpointing
from treemoe_jax.nn import models
from treemoe_jax import parallel
from treemoe_jax.train import data as data_lib
from treemoe_jax.train import progress as progress_lib
from treemoe_jax.train import tasks
from treemoe_jax.runs import load_pose_estimator  # noqa: F401 (re-exported)
from treemoe_jax.train import record as workdirs
from treemoe_jax import xla_options
from treemoe_jax.train.schedules import SCHEDULES, learning_rate_schedule  # noqa: F401 (re-exported)


class TrainState(train_state.TrainState):
  batch_stats: Any = None


class NonFiniteError(FloatingPointError):
  """A NaN or inf in a batch or the loss: the run stops, the last good checkpoint untouched."""


# --- The state and the step. ---


def make_optimizer(config: ml_collections.ConfigDict, frozen_top: tuple[str, ...] = ()
                   ) -> optax.GradientTransformation:
  """Adam at config.learning_rate; parameters under `frozen_top` are left as they are."""
  adam = optax.adam(learning_rate_schedule(config))
  if not frozen_top:
    return adam
  labels = lambda params: {k: ('frozen' if k in frozen_top else 'train') for k in params}
  return optax.multi_transform({'train': adam, 'frozen': optax.set_to_zero()}, labels)


def create_train_state(task: tasks.Task, tx: optax.GradientTransformation, mesh, rng: jax.Array,
                       overrides: dict | None = None) -> TrainState:
  """The replicated state built in place on the devices (no host copy of the parameters).

  `overrides` {'params': {...}, 'batch_stats': {...}} replace top-level subtrees after init
  (a trained pose estimator).
  """

  overrides = overrides or {}

  def init(rng, overrides):  # overrides are arguments: 25M weights are no compile-time constant
    variables = task.init(rng)
    params, batch_stats = dict(variables['params']), dict(variables.get('batch_stats', {}))
    params.update(overrides.get('params', {}))
    batch_stats.update(overrides.get('batch_stats', {}))
    return TrainState.create(apply_fn=task.model.apply, params=params, tx=tx,
                             batch_stats=batch_stats)

  replicated = parallel.replicated(mesh)
  abstract = jax.eval_shape(init, rng, overrides)
  expected = {k: jax.tree.map(lambda x: (x.shape, x.dtype), abstract.params[k])
              for k in overrides.get('params', {})}
  for name, tree in overrides.get('params', {}).items():
    given = jax.tree.map(lambda x: (np.shape(x), np.asarray(x).dtype), tree)
    if given != expected[name]:
      raise ValueError(f'the loaded {name!r} does not fit this model: the checkpoint was '
                       'trained with other sizes (compare config.pose, or for init_from '
                       'config.model, with its config)')
  out_shardings = jax.tree.map(lambda _: replicated, abstract)
  return jax.jit(init, out_shardings=out_shardings)(rng, overrides)


def make_train_step(task: tasks.Task, mesh, schedule: optax.Schedule | None = None):
  """train_step(state, batch) -> (state, metrics), jitted once, the state's buffers donated.

  The metrics hold the loss and `nonfinite/<key>`, the count of NaN/inf entries in each float
  input over the global batch: the loop reads them at log steps, never in between.
  """

  def train_step(state: TrainState, batch: parallel.Batch):
    def loss_fn(params):
      return task.loss(params, state.batch_stats, batch)

    (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    metrics = metrics | tasks.nonfinite_inputs(batch) | {
        'loss': loss, 'grad_norm': optax.tree.norm(grads)}
    if schedule is not None:
      metrics['learning_rate'] = schedule(state.step)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats or state.batch_stats)
    return state, metrics

  replicated = parallel.replicated(mesh)
  return jax.jit(train_step, in_shardings=(replicated, parallel.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def evaluate(task: tasks.Task, state: TrainState, batches: Iterator[dict], mesh
             ) -> dict[str, float]:
  """Means over every real example (padding rows masked out) of the task's eval metrics."""
  variables = {'params': state.params} | ({'batch_stats': state.batch_stats}
                                          if state.batch_stats else {})

  def sums(variables, batch):
    return task.eval_sums(variables, batch) | tasks.nonfinite_inputs(batch)

  replicated = parallel.replicated(mesh)
  step = jax.jit(sums, in_shardings=(replicated, parallel.batch_sharding(mesh)),
                 out_shardings=replicated,  # on CPU, the options evaluate.py's forward uses
                 compiler_options=xla_options.inference_options(task.runs_pose_estimator))
  totals = None
  for local in batches:
    out = step(variables, parallel.global_batch(local, task.batch_keys + ('mask',), mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  if totals is None:  # no evaluation faces (ArrayData without them)
    return {}
  totals = jax.device_get(totals)
  bad = {k.removeprefix('nonfinite/') for k, v in totals.items()
         if k.startswith('nonfinite/') and v}
  if bad:
    raise NonFiniteError(f'the evaluation data have non-finite values in {sorted(bad)}')
  count = float(totals.pop('count'))
  return {k: float(v) / count for k, v in totals.items()
          if not k.startswith('nonfinite/')} | {'num_examples': count}


# --- Health, preemption and the loop. ---


def first_unhealthy(pending: list[tuple[int, dict]]) -> str | None:
  """What went wrong first among (step, metrics) not yet read, or None: one host read for all.

  Reads only the loss, the gradient norm and the non-finite counts, the figures that decide
  whether a state may be saved; the step's metrics are global reductions, so every host finds
  the same answer.
  """
  if not pending:
    return None
  steps = [s for s, _ in pending]
  health = jax.device_get([{k: v for k, v in m.items() if k in ('loss', 'grad_norm') or
                            k.startswith('nonfinite/')} for _, m in pending])
  for step, metrics in zip(steps, health):
    bad = sorted(k.removeprefix('nonfinite/') for k, v in metrics.items()
                 if k.startswith('nonfinite/') and v)
    if bad:
      return (f'the input batch has non-finite values in {", ".join(repr(b) for b in bad)} '
              f'at step {step}')
    for key in ('loss', 'grad_norm'):  # a NaN gradient poisons the state as surely
      if key in metrics and not np.isfinite(metrics[key]):
        return f'{key.replace("_", " ")} is {float(metrics[key])} at step {step}'
  return None


class Preemption:
  """SIGTERM asks the run to save and exit at a step that is the same on every host.

  Several processes: JAX's coordination service catches the signal and orbax's
  `reached_preemption` names the sync step (every host must ask at every step, which is cheap).
  One process: a signal handler sets a flag (none outside the main thread, as in a notebook).
  """

  def __init__(self, mngr: ocp.CheckpointManager):
    self._mngr = mngr
    self._multihost = jax.process_count() > 1
    self._requested = False
    self._previous = None

  def __enter__(self):
    if not self._multihost:  # a Python handler would replace the coordination service's
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread
        self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self._requested = True

  def reached(self, step: int) -> bool:
    if self._multihost:
      self._requested = self._requested or self._mngr.reached_preemption(step)
    return self._requested

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def validate_config(config: ml_collections.ConfigDict) -> None:
  if config.task not in ('alignment', 'pose'):
    raise ValueError(f"task must be 'alignment' or 'pose', got {config.task!r}")
  for key in ('batch_size', 'num_train_steps', 'log_every_steps', 'eval_every_steps',
              'checkpoint_every_steps', 'keep_checkpoints'):
    if config[key] < 1:
      raise ValueError(f'config.{key} must be positive, got {config[key]}')
  if config.batch_size % jax.device_count():
    raise ValueError(f'config.batch_size {config.batch_size} is not divisible by the '
                     f'{jax.device_count()} devices: each device needs the same number of rows')


def with_pose_heads_of(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the pose heads its `pose_checkpoint` was trained with (recorded as such).

  The heads' output function is not a parameter: a cascade must read a trained estimator through
  the heads it learned with, or every angle it gates on is wrong.
  """
  if (config.task != 'alignment' or not config.pose_checkpoint
      or not (pathlib.Path(config.pose_checkpoint) / workdirs.CONFIG_FILE).exists()):
    return config
  trained = models.head_output(workdirs.load_config(config.pose_checkpoint).pose)
  if trained == models.head_output(config.pose):
    return config
  logging.warning('the pose estimator in %s has %r heads: config.pose.head_output=%r for this '
                  'run', config.pose_checkpoint, trained, trained)
  config = copy.deepcopy(config)
  with config.unlocked():
    config.pose.head_output = trained
  return config


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       data: data_lib.Data | None = None,
                       deadline: float | None = None) -> dict[str, float]:
  """Trains `config` into `workdir` (resuming from its newest checkpoint); returns the last eval.

  `data`: where the batches come from (default `data_lib.TFDSData(config)`, tf.data over the
  config's dataset; `data_lib.ArrayData` for faces in memory, without TensorFlow). `deadline`
  (a `time.time()`): stop early at the first step past it, saved and evaluated like the last.

  A resumed run must keep what was trained (`workdirs.check_resume`; checked before anything is
  written). A pose-gated cascade with no `pose_checkpoint` first trains its pose estimator into
  WORKDIR/pose (for `pose_train_steps`), then the cascade reading it.
  """
  validate_config(config)
  config = with_pose_heads_of(config)
  workdir = pathlib.Path(workdir)
  resuming = workdirs.check_resume(workdir, config)
  if jax.process_index() == 0:
    workdirs.record(workdir, config)  # the same fields, or ones that are safe to change
  data = data_lib.TFDSData(config) if data is None else data
  if config.task == 'pose':
    return _train(config, workdir, tasks.pose_task(config), resuming, data, deadline)
  if config.get('init_from'):
    start = initial_model(config)
    overrides = {'params': dict(start.variables['params']),
                 'batch_stats': dict(start.variables.get('batch_stats', {}))}
    return _train(config, workdir, tasks.alignment_task(config), resuming, data, deadline,
                  overrides, mean_shape=start.mean_shape)
  overrides = None
  if models.stage_spec(config.model).gates_on_pose and models.gate_pose(config) == 'estimator':
    pose_dir = config.pose_checkpoint
    if not pose_dir:
      pose_dir = workdir / 'pose'
      pose_config = copy.deepcopy(config)
      with pose_config.unlocked():
        pose_config.task = 'pose'
        pose_config.num_train_steps = config.pose_train_steps
      logging.info('no pose_checkpoint configured: training the pose estimator into %s', pose_dir)
      train_and_evaluate(pose_config, str(pose_dir), data=data, deadline=deadline)
    pose = load_pose_estimator(pose_dir)
    overrides = {'params': {'pose_estimator': pose['params']},
                 'batch_stats': {'pose_estimator': pose['batch_stats']}}
  return _train(config, workdir, tasks.alignment_task(config), resuming, data, deadline,
                overrides)


def initial_model(config: ml_collections.ConfigDict):
  """The bundle `config.init_from` names (`runs.Run`), checked to be this config's model."""
  from treemoe_jax import bundle  # pylint: disable=g-import-not-at-top
  if config.task != 'alignment':
    raise ValueError('config.init_from starts an alignment run from a bundle; a pose run has none')
  source = bundle.PRETRAINED if config.init_from == 'pretrained' else pathlib.Path(
      config.init_from)
  if config.init_from == 'pretrained' and not (source / bundle.MODEL_FILE).exists():
    raise FileNotFoundError(f'config.init_from=pretrained: this installation has no pretrained '
                            f'model ({source} is empty)')
  start = bundle.load(source)
  differences = [d for d in workdirs.config_differences(
      {'model': start.config.model.to_dict(), 'pose': start.config.pose.to_dict()},
      {'model': config.model.to_dict(), 'pose': config.pose.to_dict()})
                 if d[0] not in workdirs.SAFE_TO_CHANGE]
  if differences:
    lines = '\n'.join(f'  {key}: {old!r} (the bundle) -> {new!r}' for key, old, new in differences)
    raise ValueError(f'config.init_from={config.init_from}: the bundle\'s model is not this '
                     f'config\'s; fine-tuning needs the same sizes. Differences:\n{lines}\nTrain '
                     f'with the config it was trained with (its {bundle.MODEL_FILE}, "config").')
  return start


def _mean_shape(data: data_lib.Data, workdir: pathlib.Path, resuming: bool,
                given: np.ndarray | None = None) -> np.ndarray:
  """s(0): the record of a resumed run, else `given` (a fine-tuned model's own) or learned from
  the training faces, and recorded."""
  if resuming and (workdir / workdirs.MEAN_SHAPE_FILE).exists():
    return workdirs.load_mean_shape(workdir)
  mean_shape = np.asarray(data.mean_shape() if given is None else given, np.float32)
  if jax.process_index() == 0:
    np.save(workdir / workdirs.MEAN_SHAPE_FILE, mean_shape)
  return mean_shape


def _train(config, workdir: pathlib.Path, task: tasks.Task, resuming: bool, data: data_lib.Data,
           deadline: float | None = None, overrides: dict | None = None,
           mean_shape: np.ndarray | None = None) -> dict:
  """The one training loop: dispatch steps, check health, log, save, evaluate, stop."""
  mesh = parallel.make_mesh()
  mean_shape = _mean_shape(data, workdir, resuming, mean_shape)
  frozen = ('pose_estimator',) if task.name == 'alignment' and config.model.freeze_pose else ()
  tx = make_optimizer(config, frozen)
  state = create_train_state(task, tx, mesh, jax.random.key(config.seed), overrides)
  mngr = checkpointing.manager(str(workdir / 'checkpoints'), keep=config.keep_checkpoints)
  restored = checkpointing.restore(mngr, checkpointing.abstract(state))
  start_step = 0
  if restored is not None:
    state, position = restored
    start_step = position['step']
    logging.info('resumed %s from step %d', task.name, start_step)
  if start_step >= config.num_train_steps:
    logging.info('%s already trained for %d steps', task.name, start_step)

  train_step = make_train_step(task, mesh, learning_rate_schedule(config))
  batches = data.train_batches(mean_shape=mean_shape, start_step=start_step)
  progress = progress_lib.Progress(workdir, config.num_train_steps, config.batch_size,
                                   start_step)

  def eval_batches():
    return data.eval_batches(mean_shape=mean_shape)

  eval_metrics, pending, preempted = {}, [], False
  with Preemption(mngr) as preemption:
    for step in range(start_step + 1, config.num_train_steps + 1):
      if step == start_step + 1:
        batch = parallel.global_batch(next(batches), task.batch_keys, mesh)
        train_step = _compile(train_step, state, batch, task.name)
      # Dispatch only: nothing in here may wait on the device.
      with jax.transfer_guard_device_to_host('disallow'):
        if step > start_step + 1:
          batch = parallel.global_batch(next(batches), task.batch_keys, mesh)
        state, metrics = train_step(state, batch)
        pending.append((step, metrics))
        preempted = preemption.reached(step)
      last = step == config.num_train_steps or (deadline is not None and time.time() > deadline)
      log = step % config.log_every_steps == 0 or last
      save = step % config.checkpoint_every_steps == 0 or last or preempted
      evaluate_now = (step % config.eval_every_steps == 0 or last) and not preempted
      if not (log or save or evaluate_now):
        continue
      problem = first_unhealthy(pending)  # before anything is saved or shown
      if problem:
        _stop(mngr, problem)
      pending = []
      if log:
        progress.log(step, jax.device_get(metrics))
      if save:
        checkpointing.save(mngr, step, state, {'step': step, 'seed': config.seed,
                                               'batch_size': config.batch_size})
      if preempted:
        logging.warning('SIGTERM: saved step %d in %s; exiting', step, workdir)
        break
      if evaluate_now:
        eval_metrics = evaluate(task, state, eval_batches(), mesh)
        progress.log(step, eval_metrics, kind='eval')
      if last:
        break
  mngr.wait_until_finished()
  mngr.close()
  progress.close()
  if not eval_metrics and not preempted:  # resumed a finished run: evaluate it
    eval_metrics = evaluate(task, state, eval_batches(), mesh)
  return eval_metrics


def _compile(step_fn, state, batch, name: str):
  """Compiles the step up front, logging the compile time and XLA's FLOP count.

  XLA counts a loop's body once: a committee scanned over its experts (`regression_lowering='scan'`,
  the CPU default) adds one expert's FLOPs to the count. benchmarks/ counts the full model.
  """
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  analysis = compiled.cost_analysis()
  analysis = (analysis[0] if isinstance(analysis, list) else analysis) or {}
  logging.info('%s step compiled in %.1f s: XLA counts %.2f GFLOP per step', name,
               time.perf_counter() - start, float(analysis.get('flops', 0.0)) / 1e9)
  return compiled


def _stop(mngr: ocp.CheckpointManager, what: str):
  mngr.wait_until_finished()
  last_good = mngr.latest_step()
  mngr.close()
  kept = (f'The last good checkpoint (step {last_good}) is untouched' if last_good is not None
          else 'No checkpoint exists yet, so nothing was saved')
  raise NonFiniteError(f'{what}: stopping. {kept}; look for NaN/inf in the data or lower the '
                       'learning rate before resuming.')
