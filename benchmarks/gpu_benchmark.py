"""The performance issue's GPU check in one command: at most ~15 min on one card, no TensorFlow.

  python -m benchmarks.gpu_benchmark --out DIR        # writes DIR/gpu_benchmark.json
  python -m benchmarks.gpu_benchmark --variant tiny --batches 1,8 --train_batch 8   # CPU smoke
  python -m benchmarks.gpu_benchmark --only 'merged'    # the items whose name holds 'merged'

Installs nothing beyond the project's wheels (jax, flax, optax, orbax, chex; ml_collections).
Measures, most important first, so that a lease cut short still answers the targets: the
full-size pose_tree_moe forward in bfloat16 (batch-1 latency, img/s up to batch 1024) and its
training step (% of the bf16 GEMM rate measured in this process: the MFU); then float32 with the
plain port beside it; then tree_moe; then the committees' other lowerings, forward and training
(by default 'blockdiag' with its first layer as one matmul, then as the space-to-depth
convolution: the candidates the H100's profile points to; then the nn.vmap pair and the merged
CNNs: what 'auto', now 'blockdiag'/'vmap' on a GPU, was measured against on one H100), every
lowering's forward before their training steps. Each item starts only while
`--budget_s` lasts; a batch that does not fit in memory is recorded as such. The JSON is
rewritten after every row (a run killed at its limit keeps what it measured), in run_all's
format (`python -m benchmarks.run_all --from_json` renders it).
Prints the targets' figures last.

XLA's GPU cost analysis (jax 0.11.2) counts no FLOPs for convolutions and matmuls before
optimisation, so rates there read 0. FLOPs do not depend on the device: afterwards, on any CPU,

  python -m benchmarks.gpu_benchmark --count_flops OUT/gpu_benchmark.json[,MORE.json] \
      --merged_json docs/data/gpu_benchmark_h100.json

merges the runs and fills each row's count from the same computation lowered on the CPU.
"""

import argparse
import json
import pathlib
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp

from benchmarks import common
from benchmarks import plain_port

GEMM_N = 8192  # a GPU reaches its matmul rate only on large products; 2048 is far below it


def plan(args) -> list[tuple[str, Callable[[], list[dict]]]]:
  """(name, measure) pairs in the order they run: the targets' figures first."""
  batches = [int(b) for b in args.batches.split(',')]
  ends = sorted({batches[0], batches[-1]})
  first = ends + [b for b in batches if b not in ends]  # latency and the largest batch first
  cases = {}

  def case(architecture, dtype, lowering='auto'):
    key = (architecture, dtype, lowering)
    if key not in cases:
      cases[key] = common.forward_case(architecture, args.variant, dtype, lowering)
    return cases[key]

  def forward(architecture, dtype, batch, lowering='auto'):
    return lambda: [common.forward_row(case(architecture, dtype, lowering), batch,
                                       args.min_seconds)]

  def plain(architecture, batch):
    return lambda: [common.plain_port_row(case(architecture, 'float32'), batch,
                                          args.min_seconds)]

  def train(architecture, dtype, lowering='auto'):
    return lambda: [common.train_row(architecture, args.variant, dtype, args.train_batch,
                                     lowering)]

  items = []
  for architecture in args.architectures.split(','):
    for dtype in ('bfloat16', 'float32'):
      items += [(f'forward {architecture} {dtype} batch {b}', forward(architecture, dtype, b))
                for b in first]
      if dtype == 'float32':
        items += [(f'plain port {architecture} batch {b}', plain(architecture, b)) for b in ends]
      items.append((f'train {architecture} {dtype}', train(architecture, dtype)))
  for architecture in args.architectures.split(','):
    # Every lowering's forward before any of their training steps: a forward compiles in 12-30 s
    # on one H100, a training step in 40-60 s, so a short lease compares more lowerings so.
    others = args.other_lowerings.split(',')
    for lowering in others:
      items += [(f'forward {architecture} bfloat16 {lowering} batch {b}',
                 forward(architecture, 'bfloat16', b, lowering)) for b in ends]
    items += [(f'train {architecture} bfloat16 {lowering}', train(architecture, 'bfloat16', lowering))
              for lowering in others]
  return items


def failed(error: Exception) -> str:
  """One line for the log and the JSON: out of memory said plainly, anything else abridged."""
  text = str(error)
  if 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower():
    return 'out of memory'
  return f'{type(error).__name__}: {text.splitlines()[0][:300] if text else ""}'


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='/tmp/gpu_benchmark')
  parser.add_argument('--architectures', default='pose_tree_moe,tree_moe')
  parser.add_argument('--variant', default='full', help="'tiny' for a CPU smoke test")
  parser.add_argument('--batches', default='1,8,32,256,1024')
  parser.add_argument('--train_batch', type=int, default=256)
  parser.add_argument('--other_lowerings',
                      default='blockdiag/vmap/matmul,blockdiag/vmap/s2d,vmap/vmap,merged/vmap',
                      help="'CNN/MLP' or 'CNN/MLP/FIRST' committee lowerings measured beside "
                      "'auto' (common.split_lowering)")
  parser.add_argument('--only', default='',
                      help="comma-separated substrings: run only the items whose name holds one")
  parser.add_argument('--min_seconds', type=float, default=1.0)
  parser.add_argument('--budget_s', type=float, default=480,
                      help='no new item starts after this many seconds')
  parser.add_argument('--count_flops', default='',
                      help='comma-separated JSONs of GPU runs: fill their FLOPs here and merge')
  parser.add_argument('--merged_json', default='docs/data/gpu_benchmark_h100.json')
  parser.add_argument('--plot', default='',
                      help='with --count_flops: a PNG of forward img/s against batch')
  parser.add_argument('--auto_was', default='',
                      help="'CNN/MLP' that 'auto' ran as in rows recorded without it")
  args = parser.parse_args()
  if args.count_flops:
    merged = merge_with_flops(args.count_flops.split(','), args.auto_was)
    common.write_json(args.merged_json, merged)
    print(common.markdown(merged))
    print(targets(merged))
    if args.plot:
      plot(merged, args.plot)
    return 0
  start = time.perf_counter()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  report = out / 'gpu_benchmark.json'
  results = {'machine': common.machine(), 'script': '-m benchmarks.gpu_benchmark',
             'argv': ' '.join(sys.argv[1:]), 'json': str(report), 'gemm_n': GEMM_N,
             'gemm_gflops_start': common.gemm_gflops(GEMM_N),
             'gemm_gflops_bf16': common.gemm_gflops(GEMM_N, jnp.bfloat16),
             'rows': [], 'failed': {}, 'skipped': []}
  common.log(f'{results["machine"]}; GEMM {GEMM_N}^3 {results["gemm_gflops_start"]:.0f} '
             f'GFLOP/s fp32, {results["gemm_gflops_bf16"]:.0f} bf16')
  for name, measure in plan(args):
    if args.only and not any(part in name for part in args.only.split(',')):
      continue
    if time.perf_counter() - start > args.budget_s:
      results['skipped'].append(name)
      continue
    try:
      results['rows'] += measure()
    except Exception as error:  # pylint: disable=broad-except
      results['failed'][name] = failed(error)
      common.log(f'{name}: {results["failed"][name]}')
    common.write_json(report, results)
  results['gemm_gflops_end'] = common.gemm_gflops(GEMM_N)
  common.write_json(report, results)
  print(common.markdown(results))
  if results['skipped']:
    print(f'\nNot started within --budget_s {args.budget_s:.0f}: {", ".join(results["skipped"])}')
  print(targets(results))
  return 0


def merge_with_flops(paths: list[str], auto_was: str = '') -> dict:
  """The rows of several runs on one machine, each with XLA's FLOP count of its computation
  lowered here (rows that already have one keep it). The first run's GEMM rates stay."""
  runs = [json.loads(pathlib.Path(path).read_text()) for path in paths]
  merged = dict(runs[0], rows=[], json=str(paths), argv=' + '.join(r['argv'] for r in runs))
  for run in runs:
    for row in run['rows']:
      row = dict(row)
      if not row.get('resolved'):
        row['resolved'] = auto_was if row.get('lowering', 'auto') == 'auto' else row['lowering']
      if not row['gflop_img']:
        flops = counted_flops(row)
        row.update(gflop_img=flops / row['batch'] / 1e9, gflops=flops / row['seconds'] / 1e9,
                   flops_counted_on=jax.default_backend())
      merged['rows'].append(row)
  return merged


def counted_flops(row: dict) -> float:
  """XLA's FLOPs (common.countable, before optimisation) of the computation a row timed."""
  config = common.config_for(row['architecture'], row['variant'], row['dtype'], row['resolved'])
  if row['kind'] == 'train':
    mesh, state, _, batches = common.setup_step(config, row['batch'], num_batches=1)
    return common.step_flops(config, 'alignment', mesh, state, batches[0])
  case = common.forward_case(row['architecture'], row['variant'], row['dtype'], row['resolved'],
                             abstract=True)
  fn = plain_port.make_forward(case.model) if row['kind'] == 'plain_port' else case.counted_forward
  images, init = common.inputs(row['batch'])
  return common.lowered_flops(jax.jit(fn).lower(case.variables, images, init))


def plot(results: dict, path: str) -> None:
  """Forward img/s against batch, one line per architecture, dtype and committee lowering, with
  the plain port and the issue's 20,000 img/s: where each lowering wins is read off the crossing."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  lines = {}
  for r in results['rows']:
    if r['kind'] in ('forward', 'plain_port'):
      name = (f'{r["architecture"]} {r["dtype"]} ' + (r['resolved'] if r['kind'] == 'forward'
                                                      else 'plain port'))
      lines.setdefault(name, []).append((r['batch'], r['img_s']))
  fig, ax = plt.subplots(figsize=(8, 5))
  for name, points in sorted(lines.items()):
    if len(points) > 1:
      batch, img_s = zip(*sorted(points))
      ax.plot(batch, img_s, 'o-' if 'plain' not in name else 's--', label=name)
  ax.axhline(20000, color='grey', linestyle=':', label="the issue's target (bf16, batch 1024)")
  ax.set(xscale='log', yscale='log', xlabel='batch (faces)', ylabel='forward img/s',
         title=f'{results["machine"]["device"]}, jax {results["machine"]["jax"]}')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def targets(results: dict) -> str:
  """The issue's GPU targets as measured: bf16 latency and largest-batch img/s, training MFU."""
  bf16 = results['gemm_gflops_bf16']
  lines = [f'\nTargets (bf16 GEMM {GEMM_N}^3 {bf16:.0f} GFLOP/s in this process):']
  for r in results['rows']:
    if r['kind'] == 'forward' and r['dtype'] == 'bfloat16' and r['lowering'] == 'auto':
      what = (f'latency {1e3 * r["seconds"]:.2f} ms' if r['batch'] == 1
              else f'{r["img_s"]:.0f} img/s')
      lines.append(f'- {r["architecture"]} bf16 forward batch {r["batch"]}: {what}')
    if r['kind'] == 'train':
      lines.append(f'- {r["architecture"]} {r["dtype"]} train batch {r["batch"]}: '
                   f'{r["img_s"]:.0f} img/s, {100 * r["gflops"] / bf16:.1f}% of the bf16 GEMM')
  return '\n'.join(lines)


if __name__ == '__main__':
  sys.exit(main())
