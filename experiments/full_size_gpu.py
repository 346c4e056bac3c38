"""A short full-size run on one accelerator, without TensorFlow: the paper's sizes learn there.

  python experiments/full_size_gpu.py [--architecture pose_tree_moe] [--minutes 4]

`experiments/reproduce.py --size full` is the real thing, through train.py and tf.data. Machines
lent without TensorFlow (this project's GPU sessions) run this instead: faces rendered by the
numpy renderer on every CPU core, cropped on the device (`treemoe_jax.crop`, the pipeline's map and
antialiasing, in JAX), then the head-pose estimator (ResNet-50, section 3.1) and the full-size
cascade trained through the package's one loop (`trainer.train_and_evaluate` on
`train.data.ArrayData`), each for a wall-clock budget. Simplified on purpose: no face-box jitter
or flips, s(0) jittered as `config.augment` says. Logs the learning curve and prints the test
NME per stage, beside the mean shape, for the |yaw| buckets.

Axis legend: N faces, S crop size, P = 68 landmarks.
"""

import argparse
import functools
import multiprocessing
import os
import pathlib
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs import default  # pylint: disable=g-import-not-at-top
from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
from treemoe_jax import crop as crop_lib  # pylint: disable=g-import-not-at-top
from treemoe_jax import metrics  # pylint: disable=g-import-not-at-top
from treemoe_jax import runs  # pylint: disable=g-import-not-at-top
from treemoe_jax.nn import models  # pylint: disable=g-import-not-at-top
from treemoe_jax.train import data as data_lib  # pylint: disable=g-import-not-at-top
from treemoe_jax.train import trainer  # pylint: disable=g-import-not-at-top

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


def budget_config(config, batch: int):
  """`config` for a wall-clock run: the step count is the deadline's, logs every 250 steps, one
  evaluation and one checkpoint at the end."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.batch_size = batch
    config.num_train_steps = 10**7  # the deadline stops it
    config.log_every_steps = 250
    config.eval_every_steps = config.checkpoint_every_steps = 10**7
  return config


def array_data(config, train_data: dict, test_data: dict) -> data_lib.ArrayData:
  """The cropped faces as the loop's data, s(0) jittered as `config.augment` says."""
  return data_lib.ArrayData(train_data, test_data, batch_size=config.batch_size,
                            seed=config.seed, translate_std=config.augment.translate_std,
                            scale_std=config.augment.scale_std,
                            process_index=jax.process_index(), process_count=jax.process_count())


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--architecture', default='pose_tree_moe')
  parser.add_argument('--train_faces', type=int, default=8192)
  parser.add_argument('--test_faces', type=int, default=1024)
  parser.add_argument('--pose_minutes', type=float, default=1.5)
  parser.add_argument('--minutes', type=float, default=3.0)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--variant', default='full', help="'cpu' for a CPU smoke test")
  parser.add_argument('--workdir', default=None, help='where the runs go (default: a new temp dir)')
  args = parser.parse_args()
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, '
        f'{os.cpu_count()} CPU cores', flush=True)
  start = time.perf_counter()
  train_data = prepare(render(args.train_faces, 0))
  test_data = prepare(render(args.test_faces, 10_000))
  print(f'rendered and cropped {args.train_faces} + {args.test_faces} faces in '
        f'{time.perf_counter() - start:.0f} s', flush=True)
  workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix='full_size_gpu_'))
  config = budget_config(default.get_config(args.architecture, args.variant), args.batch)
  data = array_data(config, train_data, test_data)
  if args.architecture.startswith('pose_'):
    pose_config = budget_config(config, args.batch)
    with pose_config.unlocked():
      pose_config.task = 'pose'
    print(f'head-pose estimator (ResNet-50), {args.pose_minutes} min:', flush=True)
    pose_eval = trainer.train_and_evaluate(pose_config, str(workdir / 'pose'), data=data,
                                           deadline=time.time() + 60 * args.pose_minutes)
    print('  test MAE deg: ' + ', '.join(f'{k.removeprefix("mae_deg/")} {v:.2f}'
                                         for k, v in sorted(pose_eval.items()) if 'mae' in k),
          flush=True)
    with config.unlocked():
      config.pose_checkpoint = str(workdir / 'pose')
  print(f'{args.architecture} at {args.variant} size ({config.model.num_stages} stages, '
        f'{config.model.patch_size} px patches), {args.minutes} min:', flush=True)
  trainer.train_and_evaluate(config, str(workdir), data=data,
                             deadline=time.time() + 60 * args.minutes)

  run = runs.load_run(workdir)
  mean_shape = run.mean_shape
  apply = jax.jit(models.forward(run.model))
  init = np.broadcast_to(mean_shape, test_data['landmarks'].shape).astype(np.float32)
  stages = []
  for s in range(0, len(init), 256):
    stages.append(np.asarray(apply(run.variables, test_data['image'][s:s + 256],
                                   init[s:s + 256])['stage_shapes']))
  stages = np.moveaxis(np.concatenate(stages), 1, 0)  # [K, N, P, 2]
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
