"""A short full-size run on one accelerator, without TensorFlow: the paper's sizes learn there.

  python experiments/full_size_gpu.py [--architecture pose_tree_moe] [--minutes 4]

`experiments/reproduce.py --size full` is the real thing, through train.py and tf.data. Machines
lent without TensorFlow (this project's GPU sessions) run this instead: faces rendered by the
numpy renderer on every CPU core, cropped on the device (`treemoe_jax.crop`, the pipeline's map and
antialiasing, in JAX), then the head-pose estimator (ResNet-50, section 3.1) and the full-size
cascade trained with the package's own task, optimiser and jitted step, each for a wall-clock
budget. Simplified on purpose: no face-box jitter or flips, s(0) jittered as
`config.augment` says. Prints the learning curve and the test NME per stage, beside the mean
shape, for the |yaw| buckets.

Axis legend: N faces, S crop size, P = 68 landmarks.
"""

import argparse
import functools
import multiprocessing
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import default  # pylint: disable=g-import-not-at-top
from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
from treemoe_jax import crop as crop_lib  # pylint: disable=g-import-not-at-top
from treemoe_jax import metrics  # pylint: disable=g-import-not-at-top
from treemoe_jax import parallel  # pylint: disable=g-import-not-at-top
from treemoe_jax.train import tasks  # pylint: disable=g-import-not-at-top
from treemoe_jax.train import trainer as train  # pylint: disable=g-import-not-at-top

CHUNK = 128


def _render(args: tuple[int, int]) -> dict:
  seed, num = args
  return synthetic.render_faces(num, seed, synthetic.RenderConfig(image_size=256))


def render(num: int, first_seed: int) -> dict:
  """`num` wide-pose faces, 20% with occluders, rendered on every core."""
  jobs = [(first_seed + i, min(CHUNK, num - i * CHUNK)) for i in range(-(-num // CHUNK))]
  with multiprocessing.get_context('spawn').Pool(os.cpu_count()) as pool:
    parts = pool.map(_render, jobs)
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


crop = jax.jit(functools.partial(crop_lib.crop_faces, size=150, margin=0.25))  # the one crop


def prepare(faces: dict) -> dict[str, np.ndarray]:
  images, landmarks = [], []
  for start in range(0, len(faces['image']), 256):
    part = slice(start, start + 256)
    image, points = crop(faces['image'][part], faces['box'][part], faces['landmarks'][part])
    images.append(np.asarray(image))
    landmarks.append(np.asarray(points))
  return {'image': np.concatenate(images), 'landmarks': np.concatenate(landmarks),
          'pose': faces['pose'].astype(np.float32)}


def batches(data: dict, batch: int, seed: int, mean_shape: np.ndarray, augment) -> dict:
  """Endless shuffled batches; s(0) = the mean shape moved and scaled as config.augment says."""
  rng = np.random.default_rng(seed)
  num = len(data['image'])
  while True:
    order = rng.permutation(num)
    for start in range(0, num - batch + 1, batch):
      rows = order[start:start + batch]
      shift = rng.normal(0, augment.translate_std, (batch, 1, 2))
      scale = 1 + rng.normal(0, augment.scale_std, (batch, 1, 1))
      centre = mean_shape.mean(0)
      init = ((mean_shape - centre) * scale + centre + shift).astype(np.float32)
      yield {'image': data['image'][rows], 'landmarks': data['landmarks'][rows],
             'pose': data['pose'][rows], 'init_shape': init}


def train_for(task, config, data, mesh, minutes: float, mean_shape, overrides=None,
              frozen=()) -> tuple[train.TrainState, list]:
  tx = train.make_optimizer(config, frozen)
  state = train.create_train_state(task, tx, mesh, jax.random.key(config.seed), overrides)
  step_fn = train.make_train_step(task, mesh)
  stream = batches(data, config.batch_size, config.seed, mean_shape, config.augment)
  curve, step = [], 0
  start = time.perf_counter()
  compiled_at = None
  while time.perf_counter() - start < 60 * minutes:
    batch = parallel.global_batch(next(stream), task.batch_keys, mesh)
    state, out = step_fn(state, batch)
    step += 1
    if step == 1:
      jax.block_until_ready(out['loss'])
      compiled_at = time.perf_counter()
    if step % 250 == 0:
      loss = float(out['loss'])
      rate = (step - 1) * config.batch_size / (time.perf_counter() - compiled_at)
      curve.append((step, loss))
      print(f'  {task.name} step {step}: loss {loss:.4f}, {rate:.0f} img/s', flush=True)
  jax.block_until_ready(state.params)
  return state, curve


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--architecture', default='pose_tree_moe')
  parser.add_argument('--train_faces', type=int, default=8192)
  parser.add_argument('--test_faces', type=int, default=1024)
  parser.add_argument('--pose_minutes', type=float, default=1.5)
  parser.add_argument('--minutes', type=float, default=3.0)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--variant', default='full', help="'tiny' for a CPU smoke test")
  args = parser.parse_args()
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, '
        f'{os.cpu_count()} CPU cores', flush=True)
  start = time.perf_counter()
  train_data = prepare(render(args.train_faces, 0))
  test_data = prepare(render(args.test_faces, 10_000))
  print(f'rendered and cropped {args.train_faces} + {args.test_faces} faces in '
        f'{time.perf_counter() - start:.0f} s', flush=True)
  mean_shape = train_data['landmarks'].mean(0)
  mesh = parallel.make_mesh()

  config = default.get_config(args.architecture, args.variant)  # the paper's size by default
  with config.unlocked():
    config.batch_size = args.batch
  overrides, frozen = None, ()
  if args.architecture.startswith('pose_'):
    pose_config = default.get_config(args.architecture, args.variant)
    with pose_config.unlocked():
      pose_config.task, pose_config.batch_size = 'pose', args.batch
    pose_task = tasks.pose_task(pose_config)
    print(f'head-pose estimator (ResNet-50), {args.pose_minutes} min:', flush=True)
    pose_state, _ = train_for(pose_task, pose_config, train_data, mesh, args.pose_minutes,
                              mean_shape)
    variables = {'params': pose_state.params, 'batch_stats': pose_state.batch_stats}
    error = []
    for s in range(0, len(test_data['image']), 256):
      out = pose_task.model.apply(variables, test_data['image'][s:s + 256], train=False)
      error.append(np.degrees(np.abs(np.asarray(tasks.wrap_angle(
          out['pose'] - test_data['pose'][s:s + 256])))))
    mae = np.concatenate(error).mean(0)
    print(f'  test MAE deg: yaw {mae[0]:.2f}, pitch {mae[1]:.2f}, roll {mae[2]:.2f}', flush=True)
    overrides = {'params': {'pose_estimator': pose_state.params},
                 'batch_stats': {'pose_estimator': pose_state.batch_stats}}
    frozen = ('pose_estimator',)
  task = tasks.alignment_task(config)
  print(f'{args.architecture} at {args.variant} size ({config.model.num_stages} stages, '
        f'{config.model.patch_size} px patches), {args.minutes} min:', flush=True)
  state, _ = train_for(task, config, train_data, mesh, args.minutes, mean_shape, overrides,
                       frozen)

  variables = {'params': state.params} | ({'batch_stats': state.batch_stats}
                                          if state.batch_stats else {})
  apply = jax.jit(lambda v, images, init: task.model.apply(v, images, init, train=False))
  init = np.broadcast_to(mean_shape, test_data['landmarks'].shape).astype(np.float32)
  stages = []
  for s in range(0, len(init), 256):
    stages.append(np.asarray(apply(variables, test_data['image'][s:s + 256],
                                   init[s:s + 256])['stage_shapes']))
  stages = np.concatenate(stages, axis=1)  # [K, N, P, 2]
  yaw = np.degrees(np.abs(test_data['pose'][:, 0]))
  print('\n| abs(yaw) bucket | faces | mean shape NME % | ' +
        ' | '.join(f'stage {k + 1}' for k in range(len(stages))) + ' |')
  print('|---|---|---|' + '---|' * len(stages))
  for lo, hi in ((0, 30), (30, 60), (60, 91), (0, 91)):
    keep = (yaw >= lo) & (yaw < hi)
    if not keep.any():
      continue
    truth = test_data['landmarks'][keep]
    base = metrics.nme(init[keep], truth, 'box').mean()
    per_stage = [metrics.nme(s[keep], truth, 'box').mean() for s in stages]
    name = 'all' if (lo, hi) == (0, 91) else f'{lo}-{min(hi, 90)}'
    print(f'| {name} | {keep.sum()} | {100 * base:.2f} | ' +
          ' | '.join(f'{100 * v:.2f}' for v in per_stage) + ' |')
  print(f'\ntotal {time.perf_counter() - start:.0f} s', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
