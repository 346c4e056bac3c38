"""Routing at inference: what dense / top-k / greedy experts cost and what they lose (sections
4.4.3-4.4.4).

  python -m benchmarks.routing                               # speed of the full-size layer
  python -m benchmarks.routing --routed_lowering rows        # ... pair by pair on any backend
  python -m benchmarks.routing --tree_workdir W --softmax_workdir W2 --doc docs/routing.md

1. The regression layer at the paper's size (64 regressors of 2040 -> 128 -> 136, the depth-6
   tree gate), random weights: ms per batch, img/s and XLA's FLOPs per routing, at batch 1 and 32,
   with the jit GEMM rate of the same run for scale; then the 8 pose expert CNNs, top-1 against
   dense, per routed lowering.
2. With trained workdirs: end-to-end img/s of the whole cascade per routing, and NME on the
   synthetic Table 1 views and Table 3 yaw buckets (eval.py's protocols, `--routing`).
3. The share of regressors holding 90% of the first stage's gate mass, tree vs softmax gate
   (paper: 20% vs 40%).
"""

import argparse
import functools
import itertools
import pathlib
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from treemoe_jax import runs
from treemoe_jax.evaluate import routing_report
from treemoe_jax.nn import cascade
from treemoe_jax.nn import experts
from treemoe_jax.nn import gates
from treemoe_jax.nn import models
from treemoe_jax.nn import routing as routing_lib

ROUTINGS = ('dense', 'topk:8', 'topk:4', 'topk:1', 'greedy')
VIEWS = ('frontal', 'large_pose', 'occluded', 'yaw_0_30', 'yaw_30_60', 'yaw_60_90')
PROTOCOLS = 'synthetic_table1,synthetic_table3'
DISTINCT_BATCHES = 8  # the layer's calls cycle through this many batches (layer_speed)


class RegressionLayer(nn.Module):
  """One stage's regression committee and its gate, routed as the cascade routes them."""
  num_experts: int = 64
  hidden: int = 128
  outputs: int = 136
  gate: str = 'tree'
  routing: routing_lib.Routing = routing_lib.DENSE
  regression_lowering: str = 'auto'  # the dense committee's (experts.MLP_LOWERINGS)
  routed_lowering: str = 'auto'  # the routed committee's (experts.ROUTED_LOWERINGS)

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:  # [B, F] -> [B, O]
    committee = experts.ExpertMLPs(self.num_experts, self.hidden, self.outputs,
                                   lowering=self.regression_lowering,
                                   routed_lowering=self.routed_lowering, name='regression')
    depth = int(np.log2(self.num_experts))
    gate = gates.make_gate(self.gate, self.num_experts, depth, name='regression_gate')
    return cascade.gated_committee(committee, gate, h, h, self.routing)[0]


def layer_speed(gemm: float, batches=(1, 32), features: int = 2040,
                routed_lowering: str = 'auto', min_seconds: float = 2.0,
                distinct_batches: int = DISTINCT_BATCHES) -> list[dict]:
  """The layer per routing, its committee routed by `routed_lowering` (experts.ROUTED_LOWERINGS),
  and beside it with the parameters gathered per face first (experts.gathered, what 'auto' ran
  before 'rows' was measured).

  Each call takes the next of `distinct_batches` batches of features, as a stream of different
  faces would: a routed call reads only its chosen experts' weights, and with the same batch on
  every call those (25 MB for top-1 at batch 32) stay in this CPU's 32 MB L3 cache from one call
  to the next (top-1 at batch 32: 1.2-1.5 ms with the same batch, 1.4-1.7 cycling 16).
  """
  rows = []
  for batch in batches:
    hs = [jax.random.normal(jax.random.key(i), (batch, features)) for i in range(distinct_batches)]
    h = hs[0]
    variables = jax.jit(RegressionLayer().init)(jax.random.key(1, impl='rbg'), h)
    dense_seconds = None
    for name in ROUTINGS:
      layer = RegressionLayer(routing=routing_lib.parse(name), routed_lowering=routed_lowering)
      forward = jax.jit(layer.apply).lower(variables, h).compile()
      stream = itertools.cycle(hs)
      seconds = common.time_call(lambda: forward(variables, next(stream)), min_seconds)
      dense_seconds = dense_seconds or seconds
      gathered_seconds = None
      if name != 'dense':
        gathered = jax.jit(RegressionLayer(routing=routing_lib.parse(name),
                                           routed_lowering='gather').apply)
        gathered = gathered.lower(variables, h).compile()
        stream = itertools.cycle(hs)
        gathered_seconds = common.time_call(lambda: gathered(variables, next(stream)),
                                            min_seconds)
      # Counted on the vmap lowering: XLA counts a scanned committee's loop body once.
      counted = RegressionLayer(routing=routing_lib.parse(name), regression_lowering='vmap',
                                routed_lowering='gather')
      flops = common.lowered_flops(jax.jit(counted.apply).lower(variables, h))
      lowering = ('dense' if name == 'dense' else experts.resolve_routed_lowering(
          routed_lowering, batch, routing_lib.parse(name).k, RegressionLayer.num_experts))
      rows.append({'batch': batch, 'routing': name, 'lowering': lowering, 'ms': 1e3 * seconds,
                   'img_per_s': batch / seconds, 'mflop_per_img': flops / batch / 1e6,
                   'speedup': dense_seconds / seconds,
                   'gathered_ms': gathered_seconds and 1e3 * gathered_seconds,
                   'gemm_fraction': flops / seconds / 1e9 / gemm})
      print(layer_row(rows[-1]), flush=True)
  return rows


LAYER_HEADER = ('| batch | routing | lowering | ms | img/s | MFLOP/img (XLA) | speed-up vs dense '
                '| gathered ms |\n|---|---|---|---|---|---|---|---|')


def layer_row(r: dict) -> str:
  gathered = '-' if r.get('gathered_ms') is None else f'{r["gathered_ms"]:.3f}'
  return (f'| {r["batch"]} | {r["routing"]} | {r["lowering"]} | {r["ms"]:.3f} | '
          f'{r["img_per_s"]:.0f} | {r["mflop_per_img"]:.2f} | {r["speedup"]:.1f}x | {gathered} |')


def expected_distinct_experts(batch: int, num_experts: int) -> float:
  """How many different experts `batch` top-1 choices spread evenly over `num_experts` pick on
  average, E (1 - (1 - 1/E)^B): what a routed call reads at least, without a cache."""
  return num_experts * (1 - (1 - 1 / num_experts) ** batch)


def weights_read(num_experts: int = RegressionLayer.num_experts, features: int = 2040,
                 hidden: int = 128, copies: int = 4) -> tuple[float, int]:
  """(ms, bytes) to read the first-layer kernels of all `num_experts` regressors once from memory
  (a jitted sum): the floor that a routed layer reading fewer experts scales from.

  Each call sums the next of `copies` distinct copies (268 MB in all): summing the same 67 MB on
  every call reads about half of it from this CPU's 32 MB L3 cache (1.67 ms, "40 GB/s", against
  2.33-2.45 ms, 27-29 GB/s, cycling).
  """
  kernels = [jnp.full((num_experts, features, hidden), i, jnp.float32) for i in range(copies)]
  total = jax.jit(jnp.sum)
  stream = itertools.cycle(kernels)
  return 1e3 * common.time_call(lambda: total(next(stream))), kernels[0].nbytes


def cnn_speed(batches=(1, 8, 32), num_experts: int = 8, patches: int = 68) -> list[dict]:
  """The pose experts' CNN committee at the paper's size (8 experts, features 7-14-28-56-30, 68
  patches of 32 px), one random expert per face: ms with the parameters gathered per face first
  (`gather`) and pair by pair (`rows`), and dense (all experts; its CPU inference lowering)."""
  rows = []
  for batch in batches:
    crops = jax.random.normal(jax.random.key(0), (batch, patches, 32, 32))
    chosen = jax.random.randint(jax.random.key(2), (batch, 1), 0, num_experts)
    make = lambda routed: experts.ExpertCNNs(num_experts, (7, 14, 28, 56, 30), inference=True,
                                             routed_lowering=routed)
    variables = jax.jit(make('auto').init)(jax.random.key(1), crops)
    row = {'batch': batch}
    for lowering in ('dense', 'gather', 'rows'):
      committee = make('auto' if lowering == 'dense' else lowering)
      args = (variables, crops) if lowering == 'dense' else (variables, crops, chosen)
      forward = jax.jit(committee.apply).lower(*args).compile()
      row[f'{lowering}_ms'] = 1e3 * common.time_call(functools.partial(forward, *args))
    rows.append(row)
    print(cnn_row(row), flush=True)
  return rows


CNN_HEADER = ('| batch | dense ms | top-1 gathered ms | top-1 pair by pair ms | speed-up vs dense '
              '|\n|---|---|---|---|---|')


def cnn_row(r: dict) -> str:
  return (f'| {r["batch"]} | {r["dense_ms"]:.1f} | {r["gather_ms"]:.1f} | {r["rows_ms"]:.1f} | '
          f'{r["dense_ms"] / r["rows_ms"]:.1f}x |')


def end_to_end_speed(workdir: str, batch: int = 32) -> dict[str, float]:
  """img/s of the trained cascade's jitted forward per routing (the Aligner's forward)."""
  run = runs.load_run(workdir)
  size = run.config.model.image_size
  images = jax.random.uniform(jax.random.key(0), (batch, size, size), minval=-1, maxval=1)
  init = jnp.broadcast_to(jnp.asarray(run.mean_shape), (batch,) + run.mean_shape.shape)
  variables = jax.device_put(run.variables)
  rates = {}
  for name in ROUTINGS:
    forward = jax.jit(models.forward(run.model, routing=name))
    rates[name] = batch / common.time_call(lambda: forward(variables, images, init)['shape'])
    print(f'end to end, {run.config.model.architecture}, batch {batch}, {name}: '
          f'{rates[name]:.1f} img/s', flush=True)
  return rates


def accuracy(workdir: str, names=ROUTINGS, split: str = 'test') -> dict:
  """{routing: {view: NME %}} on the synthetic Table 1 / Table 3 protocols, and eval.py's routing
  report (every routing beside dense in one evaluation: ratios, the gates' concentration per
  stage, Fig. 7 per stage, the flags) under 'report'."""
  from treemoe_jax.evaluate import evaluator as evaluate  # pylint: disable=g-import-not-at-top (TF)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    results = evaluate.evaluate_workdir(workdir, PROTOCOLS, out=tmp, figures=False, split=split,
                                        compare_routings=','.join(names))
  report = results['routing_report']
  out = {name: {v: 100 * by_view[v] for v in VIEWS} for name, by_view in report['nme'].items()}
  out['dense']['gate_share'] = {layer: stats['share_for_90'][0]
                                for layer, stats in report['concentration'].items()}
  for name, row in out.items():
    print(f'NME %, {name}: ' + ' '.join(f'{v} {row[v]:.2f}' for v in VIEWS), flush=True)
  print(f'({time.perf_counter() - start:.0f} s)', flush=True)
  return {'nme': out, 'report': report, 'split': split}


def write_doc(path: pathlib.Path, report: dict) -> None:
  lines = ['# Routing at inference: dense, top-k and greedy experts', '',
           'Written by `python -m benchmarks.routing ' + ' '.join(sys.argv[1:]) + '` on '
           f'{report["device"]}'
           f'{" (" + common.cpu_summary(report["cpu"]) + ")" if report.get("cpu") else ""}, '
           f'{report["date"]}; jit GEMM {report["gemm"]:.0f} GFLOP/s in the '
           'same run. Only the selected experts run (`treemoe_jax/routing.py`), so the saving '
           'is in FLOPs and time, not a mask. How they run is the committee\'s routed lowering '
           '(`experts.resolve_routed_lowering`): on CPU one (face, expert) pair after another, '
           'each expert\'s parameters sliced where they lie (`rows`), or all experts when many '
           'pairs (`dense`); "gathered ms" is the same routing with the chosen experts\' '
           'parameters gathered per face first (`gather`, the lowering before `rows`).', '',
           '## The regression layer at the paper\'s size', '',
           '64 regressors (2040 -> 128 -> 136) and the depth-6 tree gate, random weights. Each '
           f'call takes the next of {DISTINCT_BATCHES} batches of different features, as a stream '
           'of faces would: '
           'with the same batch on every call, the experts it chooses stay in this CPU\'s cache '
           'from call to call (top-1 at batch 32 took 1.2-1.5 ms so, against 1.4-1.7 cycling; '
           'routing.md before 2026-11-28 timed it so).', '',
           LAYER_HEADER]
  lines += [layer_row(r) for r in report['layer']]
  if report.get('weights_read_ms'):
    read, size = report['weights_read_ms'], report['weights_read_bytes']
    n = RegressionLayer.num_experts
    distinct = expected_distinct_experts(32, n)
    dense_ms = next(r['ms'] for r in report['layer']
                    if r['batch'] == 32 and r['routing'] == 'dense')
    lines += ['', f'Reading the {n} first-layer kernels once from memory ({size / 1e6:.0f} MB, a '
              f'jitted sum cycling through copies larger than the cache) took {read:.2f} ms in '
              f'the same run ({size / read / 1e6:.0f} GB/s). Top-1 of {n} at batch 32 reads the '
              f'kernels of at most 32 experts, about {distinct:.1f} for 32 choices spread evenly '
              f'({n} (1 - ({n - 1}/{n})^32)): {read * distinct / n:.2f}-'
              f'{read * 32 / n:.2f} ms, the '
              'floor of that row when its kernels come from memory (the cache keeps a few from '
              f'call to call). So top-1 can be at most about {dense_ms / (read * 32 / n):.1f}-'
              f'{dense_ms / (read * distinct / n):.1f}x cheaper than the dense layer\'s '
              f'{dense_ms:.2f} ms on this machine.']
  if report.get('cnn'):
    lines += ['', '## The pose experts\' CNN committee at the paper\'s size', '',
              '8 expert CNNs (features 7-14-28-56-30) on 68 patches of 32 px per face, random '
              'weights, one random expert per face (`ExpertCNNs(routed_lowering=...)`); dense is '
              'all 8 in their CPU inference lowering.', '', CNN_HEADER]
    lines += [cnn_row(r) for r in report['cnn']]
  for kind in ('tree', 'softmax'):
    acc = report.get(f'{kind}_accuracy')
    if not acc:
      continue
    workdir = report[f'{kind}_workdir']
    lines += ['', f'## A trained {kind}-gated cascade', '',
              f'`{workdir}` ({report[f"{kind}_architecture"]}, {report[f"{kind}_experts"]} '
              f'regressors per stage), synthetic {acc["split"]} views, NME % (box). End to end: '
              'the jitted cascade at batch 32.', '',
              '| routing | ' + ' | '.join(VIEWS) + ' | end-to-end img/s |',
              '|---|' + '---|' * (len(VIEWS) + 1)]
    speed = report.get(f'{kind}_speed', {})
    for name, row in acc['nme'].items():
      rate = f'{speed[name]:.0f}' if name in speed else '-'
      lines.append(f'| {name} | ' + ' | '.join(f'{row[v]:.2f}' for v in VIEWS) + f' | {rate} |')
    lines += ['', "eval.py's routing report of the same evaluation (every view of both "
              'protocols):', '', *routing_report.markdown(acc['report'])]
  shares = {k: report[f'{k}_accuracy']['nme']['dense']['gate_share'].get('regression')
            for k in ('tree', 'softmax') if report.get(f'{k}_accuracy')}
  if shares:
    lines += ['', '## Where the gate mass sits (Fig. 6)', '',
              'Share of the regressors that holds 90% of the first stage\'s gate mass (sorted, '
              'mean over the large-pose faces); the paper: tree 20%, softmax 40%.', '']
    lines += [f'- {k} gate: {100 * v:.0f}%' for k, v in shares.items() if v is not None]
  path.write_text('\n'.join(lines) + '\n')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--tree_workdir', help='a trained tree-gated run (tree_moe, pose_tree_moe)')
  parser.add_argument('--softmax_workdir', help='a trained softmax-gated run, for Fig. 6')
  parser.add_argument('--doc', help='write the Markdown report here (e.g. docs/routing.md)')
  parser.add_argument('--json', help='write the figures as JSON here')
  parser.add_argument('--split', default='test', choices=('test', 'validation'),
                      help="the trained runs' views: test for this report, validation while "
                      'choosing')
  parser.add_argument('--routed_lowering', default='auto',
                      help="the regression layer's routed lowering: auto, gather, rows, dense")
  args = parser.parse_args()
  print(LAYER_HEADER, flush=True)
  gemm = common.gemm_gflops()
  report = {'device': f'{jax.devices()[0].device_kind} x{jax.device_count()}',
            'cpu': common.describe_cpu(), 'date': time.strftime('%Y-%m-%d'), 'gemm': gemm,
            'layer': layer_speed(gemm, routed_lowering=args.routed_lowering)}
  report['weights_read_ms'], report['weights_read_bytes'] = weights_read()
  print(f'reading the {RegressionLayer.num_experts} regressors\' first-layer kernels ({report["weights_read_bytes"] / 1e6:.0f}'
        f' MB): {report["weights_read_ms"]:.2f} ms', flush=True)
  print(CNN_HEADER, flush=True)
  report['cnn'] = cnn_speed()
  for kind in ('tree', 'softmax'):
    workdir = getattr(args, f'{kind}_workdir')
    if not workdir:
      continue
    config = runs.load_config(workdir)
    report[f'{kind}_workdir'] = workdir
    report[f'{kind}_architecture'] = config.model.architecture
    report[f'{kind}_experts'] = config.model.num_regression_experts
    names = ROUTINGS if kind == 'tree' else ('dense',)
    if kind == 'tree':
      report['tree_speed'] = end_to_end_speed(workdir)
    report[f'{kind}_accuracy'] = accuracy(workdir, names, args.split)
  if args.json:
    common.write_json(args.json, report)
  if args.doc:
    write_doc(pathlib.Path(args.doc), report)


if __name__ == '__main__':
  main()
