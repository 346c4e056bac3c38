"""Images per second of the synthetic face renderer at the default config, on one CPU core.

  python benchmarks/render_speed.py [--num 256] [--repeats 3]

Prints wall-clock and CPU-time rates (they differ when other processes share the machine) for the
best of `repeats` runs, and the batch size the renderer used.
"""

import os

for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
  os.environ.setdefault(_var, '1')  # One core: before numpy loads its BLAS.

import argparse  # pylint: disable=g-import-not-at-top,wrong-import-position
import time

from input_pipeline import synthetic


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num', type=int, default=256)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
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


if __name__ == '__main__':
  main()
