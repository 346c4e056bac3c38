"""Images per second of the synthetic face renderer at the default config.

  python benchmarks/render_speed.py [--num 256] [--repeats 3] [--processes 2]

One core by default; `--processes N` renders chunks in N spawned workers, as the dataset builder
does when it prepares `synthetic_faces` (one worker per core).

Prints wall-clock and CPU-time rates (they differ when other processes share the machine) for the
best of `repeats` runs, and the batch size the renderer used.
"""

import os

for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
  os.environ.setdefault(_var, '1')  # One core: before numpy loads its BLAS.

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import multiprocessing
import time

from input_pipeline import synthetic


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--processes', type=int, default=1)
  args = parser.parse_args()
  if args.processes > 1:
    return parallel(args)
  config = synthetic.RenderConfig()
  synthetic.render_faces(4, seed=0, config=config)  # Builds the head model and textures once.
  wall, cpu = [], []
  for seed in range(args.repeats):
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    synthetic.render_faces(args.num, seed=seed, config=config)
    wall.append(time.perf_counter() - start_wall)
    cpu.append(time.process_time() - start_cpu)
  print(f'image_size={config.image_size} batch_size={config.batch_size} num={args.num}: '
        f'{args.num / min(wall):.1f} images/s wall-clock, {args.num / min(cpu):.1f} images/s '
        f'of CPU time ({os.cpu_count()} cores here, load {os.getloadavg()[0]:.1f})')


def _render(seed: int) -> int:
  return len(synthetic.render_faces(64, seed=seed, config=synthetic.RenderConfig())['image'])


def parallel(args) -> None:
  """Chunks of 64 faces over a pool of spawned workers, timed after the workers warm up."""
  with multiprocessing.get_context('spawn').Pool(args.processes) as pool:
    pool.map(_render, range(args.processes))  # imports, head model and textures, once each
    best = float('inf')
    for repeat in range(args.repeats):
      start = time.perf_counter()
      done = sum(pool.map(_render, range(100 * (repeat + 1), 100 * (repeat + 1) + args.num // 64)))
      best = min(best, time.perf_counter() - start)
  print(f'{args.processes} worker processes, chunks of 64, num={done}: {done / best:.1f} images/s '
        f'wall-clock ({os.cpu_count()} cores here, load {os.getloadavg()[0]:.1f})')


if __name__ == '__main__':
  main()
