"""Training (section 3.5): one data-parallel step over every device of every host.

`train_and_evaluate(config, workdir)` trains the head-pose estimator (`config.task == 'pose'`) or
a cascade (`'alignment'`). The step is one `jax.jit` over a 1-D `Mesh` of all devices: the batch
sharded on 'data', the state replicated, XLA inserting the gradient all-reduce (and BatchNorm's
cross-device statistics, so N devices compute what one device would on the whole batch).

The tf.data pipeline and the TensorBoard writer (both import TensorFlow) are imported where the
loop needs them, so the step machinery also serves TF-free benchmarks on accelerators.

Axis legend: B global batch, P landmarks, K stages, L experts.
"""

import copy
import dataclasses
import json
import logging
import pathlib
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from treemoe_jax import checkpointing
from treemoe_jax import gates
from treemoe_jax import metrics as metrics_lib
from treemoe_jax import models
from treemoe_jax import pose as pose_lib

P = jax.sharding.PartitionSpec
Batch = dict[str, jax.Array]


class TrainState(train_state.TrainState):
  batch_stats: Any = None


class NonFiniteError(FloatingPointError):
  """A NaN or inf in a batch or the loss: the run stops, the last good checkpoint untouched."""


# --- Tasks: what is trained, its loss and its evaluation. ---


@dataclasses.dataclass(frozen=True)
class Task:
  name: str
  model: nn.Module
  init: Callable[[jax.Array], dict]  # rng -> variables
  loss: Callable[..., tuple[jax.Array, tuple[Any, dict]]]  # (params, batch_stats, batch)
  eval_sums: Callable[[dict, Batch], dict]  # (variables, batch) -> masked sums over the batch
  batch_keys: tuple[str, ...]


def _apply(model, params, batch_stats, *args, train: bool):
  variables = {'params': params} | ({'batch_stats': batch_stats} if batch_stats else {})
  if train:
    return model.apply(variables, *args, train=True, mutable=['batch_stats'])
  return model.apply(variables, *args, train=False), {}


def wrap_angle(angle: jax.Array) -> jax.Array:
  """Angle differences in (-pi, pi]: a yaw of 179 deg and one of -179 deg are 2 deg apart."""
  return jnp.arctan2(jnp.sin(angle), jnp.cos(angle))


def pose_task(config: ml_collections.ConfigDict) -> Task:
  """Section 3.1: yaw, pitch and roll regressed with a periodic L2 loss."""
  model = models.create_pose_estimator(config.pose)
  size = config.model.image_size

  def init(rng):
    variables = model.init(rng, jnp.zeros((1, size, size), jnp.float32), train=False)
    if config.resnet50_weights:
      from treemoe_jax import pretrained  # pylint: disable=g-import-not-at-top (h5py, on demand)
      variables = pretrained.init_pose_trunk(variables, config.resnet50_weights)
    return variables

  def loss(params, batch_stats, batch):
    out, updates = _apply(model, params, batch_stats, batch['image'], train=True)
    error = wrap_angle(out['pose'] - batch['pose'])  # [B, 3]
    mae = jnp.degrees(jnp.abs(error)).mean(0)
    metrics = {f'mae_deg/{a}': mae[i] for i, a in enumerate(pose_lib.ANGLES)}
    return jnp.mean(error**2), (updates.get('batch_stats'), metrics)

  def eval_sums(variables, batch):
    out = model.apply(variables, batch['image'], train=False)
    error = jnp.degrees(jnp.abs(wrap_angle(out['pose'] - batch['pose'])))  # [B, 3]
    mask = batch['mask'].astype(jnp.float32)
    sums = {f'mae_deg/{a}': jnp.sum(error[:, i] * mask) for i, a in enumerate(pose_lib.ANGLES)}
    return sums | {'count': jnp.sum(mask)}

  return Task('pose', model, init, loss, eval_sums, ('image', 'pose'))


def alignment_task(config: ml_collections.ConfigDict) -> Task:
  """Section 3.5: L2 on landmark positions of every stage (or the last), NME per stage logged."""
  model = models.create(config)
  normalizer = config.nme_normalizer
  if config.loss_stages not in ('all', 'last'):
    raise ValueError(f"loss_stages must be 'all' or 'last', got {config.loss_stages!r}")

  def init(rng):
    return models.init(model, rng)

  def stage_nme(out, batch):  # [K, B]
    return jax.vmap(lambda s: metrics_lib.nme_jax(s, batch['landmarks'], normalizer))(
        out['stage_shapes'])

  def loss(params, batch_stats, batch):
    out, updates = _apply(model, params, batch_stats, batch['image'], batch['init_shape'],
                          train=True)
    squared = jnp.sum((out['stage_shapes'] - batch['landmarks'])**2, -1)  # [K, B, P]
    per_stage = squared.mean((1, 2))  # [K]
    loss = per_stage.mean() if config.loss_stages == 'all' else per_stage[-1]
    nme = stage_nme(out, batch).mean(1)  # [K]
    metrics = {f'nme/stage{k}': nme[k] for k in range(nme.shape[0])}
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
    out = model.apply(variables, batch['image'], batch['init_shape'], train=False)
    mask = batch['mask'].astype(jnp.float32)
    nme = stage_nme(out, batch)  # [K, B]
    init_nme = metrics_lib.nme_jax(batch['init_shape'], batch['landmarks'], normalizer)
    sums = {f'nme/stage{k}': jnp.sum(nme[k] * mask) for k in range(nme.shape[0])}
    return sums | {'nme/init': jnp.sum(init_nme * mask), 'count': jnp.sum(mask)}

  return Task('alignment', model, init, loss, eval_sums,
              ('image', 'landmarks', 'init_shape'))


# --- The data-parallel machinery. ---


def make_mesh() -> jax.sharding.Mesh:
  """All devices of all hosts on one 'data' axis (Auto: XLA places the collectives)."""
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Section 3.5: a constant 1e-3; a schedule, so the logged rate is the one Adam used."""
  return optax.constant_schedule(config.learning_rate)


def make_optimizer(config: ml_collections.ConfigDict, frozen_top: tuple[str, ...] = ()
                   ) -> optax.GradientTransformation:
  """Adam at config.learning_rate; parameters under `frozen_top` are left as they are."""
  adam = optax.adam(learning_rate_schedule(config))
  if not frozen_top:
    return adam
  labels = lambda params: {k: ('frozen' if k in frozen_top else 'train') for k in params}
  return optax.multi_transform({'train': adam, 'frozen': optax.set_to_zero()}, labels)


def create_train_state(task: Task, tx: optax.GradientTransformation, mesh, rng: jax.Array,
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

  replicated = jax.sharding.NamedSharding(mesh, P())
  abstract = jax.eval_shape(init, rng, overrides)
  expected = {k: jax.tree.map(lambda x: (x.shape, x.dtype), abstract.params[k])
              for k in overrides.get('params', {})}
  for name, tree in overrides.get('params', {}).items():
    given = jax.tree.map(lambda x: (np.shape(x), np.asarray(x).dtype), tree)
    if given != expected[name]:
      raise ValueError(f'the loaded {name!r} does not fit this model: the checkpoint was '
                       'trained with other sizes (compare config.pose with its config.json)')
  out_shardings = jax.tree.map(lambda _: replicated, abstract)
  return jax.jit(init, out_shardings=out_shardings)(rng, overrides)


def make_train_step(task: Task, mesh, schedule: optax.Schedule | None = None):
  """train_step(state, batch) -> (state, metrics), jitted once, the state's buffers donated."""

  def train_step(state: TrainState, batch: Batch):
    def loss_fn(params):
      return task.loss(params, state.batch_stats, batch)

    (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    metrics = metrics | {'loss': loss, 'grad_norm': optax.tree.norm(grads)}
    if schedule is not None:
      metrics['learning_rate'] = schedule(state.step)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats or state.batch_stats)
    return state, metrics

  replicated = jax.sharding.NamedSharding(mesh, P())
  return jax.jit(train_step, in_shardings=(replicated, batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def batch_sharding(mesh) -> jax.sharding.NamedSharding:
  return jax.sharding.NamedSharding(mesh, P('data'))


def global_batch(local: dict[str, np.ndarray], keys: tuple[str, ...], mesh) -> Batch:
  """One global array per key from this process's rows (jax.make_array_from_process_local_data)."""
  sharding = batch_sharding(mesh)
  out = {}
  for key in keys:
    value = np.asarray(local[key])
    if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
      raise NonFiniteError(f'the input batch has non-finite values in {key!r}')
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def evaluate(task: Task, state: TrainState, batches: Iterator[dict], mesh) -> dict[str, float]:
  """Means over every real example (padding rows masked out) of the task's eval metrics."""
  variables = {'params': state.params} | ({'batch_stats': state.batch_stats}
                                          if state.batch_stats else {})
  replicated = jax.sharding.NamedSharding(mesh, P())
  step = jax.jit(task.eval_sums, in_shardings=(replicated, batch_sharding(mesh)),
                 out_shardings=replicated)
  totals = None
  for local in batches:
    sums = step(variables, global_batch(local, task.batch_keys + ('mask',), mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals.pop('count'))
  return {k: float(v) / count for k, v in totals.items()} | {'num_examples': count}


# --- Progress, preemption and the loop. ---


class _Preemption:
  """SIGTERM sets a flag; the loop saves a checkpoint at the next step and returns."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, as in a notebook's worker thread
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _scalars(metrics: dict) -> dict[str, float]:
  return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def _json_ready(metrics: dict) -> dict:
  return {k: (np.asarray(v).round(6).tolist()) for k, v in metrics.items()}


class _Progress:
  """A line per log step (step, loss, img/s, ETA) and the same figures as TensorBoard + JSON."""

  def __init__(self, workdir: pathlib.Path, total_steps: int, batch_size: int, first_step: int):
    from clu import metric_writers  # pylint: disable=g-import-not-at-top (imports TensorFlow)
    self.lead = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(str(workdir), just_logging=not self.lead)
    self.jsonl = workdir / 'metrics.jsonl'
    self.total, self.batch = total_steps, batch_size
    self.last_step, self.last_time = first_step, time.perf_counter()

  def log(self, step: int, metrics: dict, kind: str = 'train') -> None:
    now = time.perf_counter()
    extra = {}
    if kind == 'train':
      rate = (step - self.last_step) * self.batch / max(now - self.last_time, 1e-9)
      eta = (self.total - step) * self.batch / max(rate, 1e-9)
      extra = {'img_per_s': rate}
      self.last_step, self.last_time = step, now
      nme = metrics.get(f'nme/stage{_last_stage(metrics)}')
      logging.info('step %d/%d  loss %.4f%s  %.1f img/s  ETA %s', step, self.total,
                   float(metrics['loss']), f'  nme {float(nme):.4f}' if nme is not None else '',
                   rate, _duration(eta))
    else:
      logging.info('%s at step %d: %s', kind, step,
                   '  '.join(f'{k} {v:.4f}' for k, v in sorted(_scalars(metrics).items())))
    prefixed = {f'{kind}/{k}': v for k, v in (metrics | extra).items()}
    self.writer.write_scalars(step, _scalars(prefixed))
    if self.lead:
      with self.jsonl.open('a') as f:
        f.write(json.dumps({'step': step, **_json_ready(prefixed)}) + '\n')

  def close(self):
    self.writer.flush()
    self.writer.close()


def _last_stage(metrics: dict) -> int:
  stages = [int(k.removeprefix('nme/stage')) for k in metrics if k.startswith('nme/stage')]
  return max(stages) if stages else -1


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  return f'{minutes // 60}h{minutes % 60:02d}m' if minutes >= 60 else f'{minutes}m{seconds:02d}s'


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


def _data(config, split: str) -> dict:
  """Arguments shared by the train and eval pipelines of `config`."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
  return dict(dataset=config.dataset, data_dir=config.data_dir or None, split=split,
              process_index=jax.process_index(), process_count=jax.process_count(),
              crop=pipeline.CropConfig(size=config.model.image_size, margin=config.crop_margin))


def load_pose_estimator(pose_workdir: str | pathlib.Path) -> dict:
  """{'params': ..., 'batch_stats': ...} of the newest checkpoint of a pose-training workdir."""
  directory = pathlib.Path(pose_workdir) / 'checkpoints'
  if not directory.is_dir():
    raise FileNotFoundError(f'no pose checkpoints in {directory}: train one with '
                            f'--config configs/pose_resnet50.py --workdir {pose_workdir}')
  mngr = checkpointing.manager(str(directory), asynchronous=False)
  state = checkpointing.restore_to_host(mngr)
  mngr.close()
  return {'params': state['params'], 'batch_stats': state.get('batch_stats') or {}}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` into `workdir` (resuming from its newest checkpoint); returns the last eval.

  A pose-gated cascade with no `pose_checkpoint` first trains its pose estimator into
  WORKDIR/pose (for `pose_train_steps`), then the cascade reading it.
  """
  validate_config(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  if config.task == 'pose':
    return _train(config, workdir, pose_task(config))
  overrides = None
  if models.stage_spec(config.model).gates_on_pose:
    pose_dir = config.pose_checkpoint
    if not pose_dir:
      pose_dir = workdir / 'pose'
      pose_config = copy.deepcopy(config)
      with pose_config.unlocked():
        pose_config.task = 'pose'
        pose_config.num_train_steps = config.pose_train_steps
      logging.info('no pose_checkpoint configured: training the pose estimator into %s', pose_dir)
      train_and_evaluate(pose_config, str(pose_dir))
    pose = load_pose_estimator(pose_dir)
    overrides = {'params': {'pose_estimator': pose['params']},
                 'batch_stats': {'pose_estimator': pose['batch_stats']}}
  return _train(config, workdir, alignment_task(config), overrides)


def _train(config, workdir: pathlib.Path, task: Task, overrides: dict | None = None) -> dict:
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
  mesh = make_mesh()
  mean_shape = pipeline.mean_shape(config.dataset, data_dir=config.data_dir or None,
                                   split=config.train_split,
                                   crop=_data(config, config.train_split)['crop'])
  if jax.process_index() == 0:
    np.save(workdir / 'mean_shape.npy', mean_shape)  # s(0), with the run that learned from it
  frozen = ('pose_estimator',) if task.name == 'alignment' and config.model.freeze_pose else ()
  tx = make_optimizer(config, frozen)
  state = create_train_state(task, tx, mesh, jax.random.key(config.seed), overrides)
  mngr = checkpointing.manager(str(workdir / 'checkpoints'), keep=config.keep_checkpoints)
  restored = checkpointing.restore(mngr, checkpointing.abstract(state))
  start_step = 0
  if restored is not None:
    state, data = restored
    start_step = data['step']
    if (data['seed'], data['batch_size']) != (config.seed, config.batch_size):
      raise ValueError(f'{workdir} was trained with seed {data["seed"]} and batch size '
                       f'{data["batch_size"]}; resuming it with {config.seed} and '
                       f'{config.batch_size} would not see the same data')
    logging.info('resumed %s from step %d', task.name, start_step)
  if start_step >= config.num_train_steps:
    logging.info('%s already trained for %d steps', task.name, start_step)

  train_step = make_train_step(task, mesh, learning_rate_schedule(config))
  batches = pipeline.train_dataset(
      global_batch_size=config.batch_size, seed=config.seed, mean_shape=mean_shape,
      start_step=start_step, augmentation=pipeline.AugmentConfig(**config.augment),
      **_data(config, config.train_split)).as_numpy_iterator()
  progress = _Progress(workdir, config.num_train_steps, config.batch_size, start_step)

  def eval_batches():
    return pipeline.eval_dataset(global_batch_size=config.batch_size, mean_shape=mean_shape,
                                 **_data(config, config.eval_split)).as_numpy_iterator()

  def check_loss(step, metrics):
    loss = float(metrics['loss'])
    if not np.isfinite(loss):
      _stop(mngr, f'loss is {loss} at step {step}')

  def checkpoint(step, metrics):
    check_loss(step, metrics)  # never save a state that a NaN went through
    checkpointing.save(mngr, step, state, {'step': step, 'seed': config.seed,
                                           'batch_size': config.batch_size})

  eval_metrics, metrics, previous = {}, None, None
  with _Preemption() as preemption:
    for step in range(start_step + 1, config.num_train_steps + 1):
      try:
        batch = global_batch(next(batches), task.batch_keys, mesh)
      except NonFiniteError as e:
        _stop(mngr, f'{e} at step {step}')
      if step == start_step + 1:
        train_step = _compile(train_step, state, batch, task.name)
      state, metrics = train_step(state, batch)
      if previous is not None:
        check_loss(*previous)  # one step late, so the host never stalls the device
      previous = (step, metrics)
      last = step == config.num_train_steps
      if step % config.log_every_steps == 0 or last:
        check_loss(step, metrics)
        progress.log(step, jax.device_get(metrics))
      if step % config.checkpoint_every_steps == 0 or last or preemption.requested:
        checkpoint(step, metrics)
      if preemption.requested:
        logging.warning('SIGTERM: saved step %d in %s; exiting', step, workdir)
        break
      if step % config.eval_every_steps == 0 or last:
        eval_metrics = evaluate(task, state, eval_batches(), mesh)
        progress.log(step, eval_metrics, kind='eval')
  mngr.wait_until_finished()
  mngr.close()
  progress.close()
  if not eval_metrics and not preemption.requested:  # resumed a finished run: evaluate it
    eval_metrics = evaluate(task, state, eval_batches(), mesh)
  return eval_metrics


def _compile(step_fn, state, batch, name: str):
  """Compiles the step up front, logging the compile time and XLA's FLOP count."""
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  analysis = compiled.cost_analysis()
  analysis = (analysis[0] if isinstance(analysis, list) else analysis) or {}
  logging.info('%s step compiled in %.1f s: %.2f GFLOP per step', name,
               time.perf_counter() - start, float(analysis.get('flops', 0.0)) / 1e9)
  return compiled


def _stop(mngr: ocp.CheckpointManager, what: str):
  mngr.wait_until_finished()
  last_good = mngr.latest_step()
  mngr.close()
  raise NonFiniteError(
      f'{what}: stopping. The last good checkpoint (step {last_good}) is untouched; look for '
      'NaN/inf in the data or lower the learning rate before resuming.')
