"""Training img/s of the data-parallel step, tiny and full size, on whatever devices JAX sees.

  python benchmarks/train_speed.py [--architectures pose_tree_moe,tree_moe] [--full_batch 8]
  python benchmarks/train_speed.py --variants full --full_batch 8,32,64 --no_pose   # batch sweep

Random batches fed straight to the jitted step (no TensorFlow: the same script runs on a GPU
machine without it), so this is the step's own speed; the input pipeline has its own benchmark
(benchmarks/pipeline_speed.py). Prints the jit GEMM rate of the same run for scale.
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # pylint: disable=g-import-not-at-top
from configs import default  # pylint: disable=g-import-not-at-top
from treemoe_jax import parallel  # pylint: disable=g-import-not-at-top
from treemoe_jax.train import tasks  # pylint: disable=g-import-not-at-top
from treemoe_jax.train import trainer as train  # pylint: disable=g-import-not-at-top


def random_batch(config, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  size = config.model.image_size
  landmarks = rng.uniform(0.2 * size, 0.8 * size, (batch, 68, 2)).astype(np.float32)
  return {'image': rng.uniform(-1, 1, (batch, size, size)).astype(np.float32),
          'landmarks': landmarks,
          'init_shape': (landmarks + rng.normal(0, 5, landmarks.shape)).astype(np.float32),
          'pose': rng.uniform(-1, 1, (batch, 3)).astype(np.float32)}


def make_task(config, task_name: str = 'alignment') -> tasks.Task:
  return tasks.pose_task(config) if task_name == 'pose' else tasks.alignment_task(config)


def setup_step(config, batch: int, task_name: str = 'alignment', num_batches: int = 2):
  """(mesh, state, jitted step, random global batches) of the data-parallel training step."""
  task = make_task(config, task_name)
  mesh = parallel.make_mesh()
  state = train.create_train_state(task, optax.adam(1e-3), mesh, jax.random.key(0))
  rng = np.random.default_rng(0)
  batches = [parallel.global_batch(random_batch(config, batch, rng), task.batch_keys, mesh)
             for _ in range(num_batches)]
  return mesh, state, train.make_train_step(task, mesh), batches


def step_flops(config, task_name: str, mesh, state, batch) -> float:
  """XLA's count of one step with every expert counted (common.countable), before
  optimisation: a scanned committee's compiled loop would count one expert."""
  counted = make_task(common.countable(config), task_name)
  return common.lowered_flops(train.make_train_step(counted, mesh).lower(state, batch))


def time_step(config, batch: int, task_name: str = 'alignment') -> dict:
  """Compile time, median seconds of 3 steps after a warm-up, and XLA's FLOPs of one step."""
  mesh, state, step, batches = setup_step(config, batch, task_name)
  start = time.perf_counter()
  compiled = step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, batches[0])  # warm-up
  jax.block_until_ready(metrics['loss'])
  times = []
  for i in range(3):
    start = time.perf_counter()
    state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready(metrics['loss'])
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  flops = step_flops(config, task_name, mesh, state, batches[0])
  return dict(compile_s=compile_s, seconds=seconds, img_s=batch / seconds,
              gflop_img=flops / batch / 1e9, gflops=flops / seconds / 1e9)


def measure(architecture: str, variant: str, batch: int, task_name: str) -> dict:
  return time_step(default.get_config(architecture, variant), batch, task_name)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--architectures', default='pose_tree_moe,tree_moe')
  ints = lambda s: [int(b) for b in s.split(',')]
  parser.add_argument('--tiny_batch', type=ints, default=[16])
  parser.add_argument('--full_batch', type=ints, default=[8])
  parser.add_argument('--variants', default='tiny,full')
  parser.add_argument('--no_pose', action='store_true', help='skip the pose estimator alone')
  args = parser.parse_args()
  gemm = common.print_header(('what', 'variant', 'batch', 'compile s', 'train img/s', 'GFLOP/s',
                              '% of GEMM'))
  runs = [(a, 'alignment') for a in args.architectures.split(',')]
  runs += [] if args.no_pose else [('pose_tree_moe', 'pose')]
  for variant in args.variants.split(','):
    for architecture, task in runs:
      for batch in args.tiny_batch if variant == 'tiny' else args.full_batch:
        r = measure(architecture, variant, batch, task)
        what = 'pose estimator' if task == 'pose' else architecture
        print(f'| {what} | {variant} | {batch} | {r["compile_s"]:.1f} | {r["img_s"]:.2f} | '
              f'{r["gflops"]:.1f} | {100 * r["gflops"] / gemm:.1f} |', flush=True)


if __name__ == '__main__':
  main()
