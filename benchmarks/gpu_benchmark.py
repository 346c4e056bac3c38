"""The performance issue's GPU check in one command: at most ~15 min on one card, no TensorFlow.

  python benchmarks/gpu_benchmark.py --out DIR        # writes DIR/gpu_benchmark.json
  python benchmarks/gpu_benchmark.py --variant tiny --batches 1,8 --train_batch 8   # CPU smoke

Installs nothing beyond the project's wheels (jax, flax, optax, orbax, chex; ml_collections).
Runs benchmarks/run_all.py for the full-size pose_tree_moe and tree_moe: forward img/s in
float32 and bfloat16 at batch 1 to 1024, batch-1 latency, the training step at batch 256 (its
% of the bf16 GEMM rate measured in the same process is the MFU), the plain port beside it, and
the committees' other lowerings ('merged' CNNs, 'scan' regressors on a GPU) to decide what 'auto'
should pick there.
Then prints the targets' figures last.
"""

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import run_all  # pylint: disable=g-import-not-at-top


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='/tmp/gpu_benchmark')
  parser.add_argument('--architectures', default='pose_tree_moe,tree_moe')
  parser.add_argument('--variant', default='full', help="'tiny' for a CPU smoke test")
  parser.add_argument('--batches', default='1,8,32,256,1024')
  parser.add_argument('--train_batch', type=int, default=256)
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  report = out / 'gpu_benchmark.json'
  largest = args.batches.split(',')[-1]
  sys.argv = [sys.argv[0], f'--architectures={args.architectures}', f'--variants={args.variant}',
              f'--batches_full={args.batches}', f'--batches_tiny={args.batches}',
              f'--plain_batches=1,{largest}', f'--train_batch_full={args.train_batch}',
              f'--train_batch_tiny={args.train_batch}', f'--before={args.architectures}',
              '--no_pipeline',
              '--min_seconds=1', f'--json={report}', '--doc=']
  run_all.main()
  results = json.loads(report.read_text())
  bf16 = results['gemm_gflops_bf16']
  print(f'\nTargets (bf16 GEMM {bf16:.0f} GFLOP/s in this process):')
  for r in results['rows']:
    if r['kind'] == 'forward' and r['dtype'] == 'bfloat16' and r['batch'] in (1, int(largest)):
      what = 'latency ms' if r['batch'] == 1 else 'img/s'
      value = 1e3 * r['seconds'] if r['batch'] == 1 else r['img_s']
      print(f'- {r["architecture"]} bf16 forward batch {r["batch"]} ({r["lowering"]}): '
            f'{what} {value:.2f}')
    if r['kind'] == 'train':
      print(f'- {r["architecture"]} {r["dtype"]} train batch {r["batch"]} ({r["lowering"]}): '
            f'{r["img_s"]:.0f} img/s, {100 * r["gflops"] / bf16:.1f}% of the bf16 GEMM rate')
  return 0


if __name__ == '__main__':
  sys.exit(main())
