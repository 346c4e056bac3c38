"""How to compute the committee of 64 expert regressors: nn.vmap against a scan over experts.

Finished study, moved from benchmarks/ (issue 33): 'scan' is what `regression_lowering='auto'` picks on
CPU; the figures are in docs/benchmarks.md. Rerun to check the choice on new hardware.

  python -m experiments.regression_lowering [--batches 1,8,32,256]

The paper's regression committee (64 experts 2040-128-136, one cascade stage) on `--batches`
rows of features, from the same `[E, ...]` parameters, each lowering jitted alone:
  vmap   nn.vmap of one regressor, the reference: XLA:CPU copies the [E, F, H] first-layer
         kernel into [F, E*H] on every call, then runs one GEMM;
  scan   experts.scanned: the experts one after another on their own kernel slices
         (what `regression_lowering='auto'` picks on CPU).
Forward and gradient (w.r.t. the parameters and the features, as training takes it) times, each
lowering's largest difference from the reference, and the first-layer kernel copies XLA left in
the compiled forward. Read the ratios within one run.

  python -m experiments.regression_lowering --whole_model [--repeats 2]

times the whole model before ('merged/vmap') and after ('merged/scan'), alternating, with
run_all's forward and training-step rows: pose_tree_moe and tree_moe full size (forward batch 1
and 32, training batch 8) and pose_tree_moe tiny (batch 16, the README main job's size).
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks import common
from treemoe_jax.nn import experts

NUM_EXPERTS, FEATURES, HIDDEN, OUTPUTS = 64, 2040, 128, 2 * 68


def kernel_copies(compiled) -> int:
  """Ops in the compiled program whose result is the whole first-layer kernel, re-laid out."""
  size = f'f32[{FEATURES},{NUM_EXPERTS * HIDDEN}]'
  return sum(size in line and ('copy' in line or 'transpose' in line)
             for line in compiled.as_text().splitlines() if '=' in line)


def whole_model(repeats: int) -> None:
  """Before/after rows of the whole model, alternating lowerings in one process."""
  gemm = common.gemm_gflops()
  print(f'jit GEMM at the start {gemm:.1f} GFLOP/s')
  print('| architecture | size | lowering | forward img/s (batch) | train img/s (batch) |')
  print('|---|---|---|---|---|')
  options = argparse.Namespace(min_seconds=2.0, plain_batches=[])
  for architecture, size, batches, train_batch in (('pose_tree_moe', 'full', [1, 32], 8),
                                                   ('tree_moe', 'full', [1, 32], 8),
                                                   ('pose_tree_moe', 'cpu', [16], 16)):
    for lowering in ('merged/vmap', 'merged/scan') * repeats:
      rows = common.forward_rows(architecture, size, 'float32', batches, options, lowering)
      train = common.train_row(architecture, size, 'float32', train_batch, lowering)
      forward = ', '.join(f'{r["img_s"]:.2f} ({r["batch"]})' for r in rows)
      print(f'| {architecture} | {size} | {lowering} | {forward} | {train["img_s"]:.2f} '
            f'({train_batch}) |', flush=True)
  print(f'jit GEMM at the end {common.gemm_gflops():.1f} GFLOP/s')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batches', default='1,8,32,256')
  parser.add_argument('--whole_model', action='store_true')
  parser.add_argument('--repeats', type=int, default=2)
  args = parser.parse_args()
  if args.whole_model:
    whole_model(args.repeats)
    return
  gemm = common.gemm_gflops()
  print(f'device: {jax.devices()[0].device_kind}, {NUM_EXPERTS} regressors '
        f'{FEATURES}-{HIDDEN}-{OUTPUTS}, jit GEMM {gemm:.1f} GFLOP/s')
  print('| batch | lowering | forward ms | % GEMM | gradient ms | max diff | kernel copies |')
  print('|---|---|---|---|---|---|---|')
  for batch in [int(b) for b in args.batches.split(',')]:
    h = jax.random.normal(jax.random.key(0), (batch, FEATURES))
    modules = {name: experts.ExpertMLPs(NUM_EXPERTS, HIDDEN, OUTPUTS, lowering=name)
               for name in ('vmap', 'scan')}
    variables = jax.jit(modules['vmap'].init)(jax.random.key(1), h)
    reference = jax.jit(modules['vmap'].apply)(variables, h)
    times = {}
    for name, module in modules.items():
      forward = jax.jit(module.apply).lower(variables, h).compile()
      seconds = common.time_call(lambda: forward(variables, h))
      # Counted, not read from XLA: its cost analysis counts a scan's body once, not E times.
      flops = 2 * batch * NUM_EXPERTS * (FEATURES * HIDDEN + HIDDEN * OUTPUTS)
      grad = jax.jit(jax.grad(lambda v, x, m=module: jnp.sum(m.apply(v, x) ** 2), (0, 1))
                     ).lower(variables, h).compile()
      grad_seconds = common.time_call(lambda: grad(variables, h))
      times[name] = seconds, grad_seconds
      diff = float(jnp.abs(forward(variables, h) - reference).max())
      print(f'| {batch} | {name} | {1e3 * seconds:.1f} | {100 * flops / seconds / 1e9 / gemm:.1f} '
            f'| {1e3 * grad_seconds:.1f} | {diff:.1e} | {kernel_copies(forward)} |', flush=True)
    (fwd_v, grad_v), (fwd_s, grad_s) = times['vmap'], times['scan']
    print(f'| {batch} | scan over vmap | {fwd_v / fwd_s:.2f}x faster | | '
          f'{grad_v / grad_s:.2f}x faster | | |', flush=True)


if __name__ == '__main__':
  main()
