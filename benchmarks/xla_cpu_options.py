"""XLA:CPU's library fusions, measured: each setting of `xla_cpu_experimental_ynn_fusion_type` on
the full-size components, the whole forwards and the training steps.

  python -m benchmarks.xla_cpu_options [--batch 32] [--train_batch 8] [--rounds 2]
  python -m benchmarks.xla_cpu_options --no_forward  # the training steps only

Every setting is compiled in this one process (`jax.jit(..., compiler_options=...)`) and the
settings are timed in turn, `--rounds` times, keeping each one's best; so a machine that slows
down mid-run slows every setting alike. "max diff" is the largest difference of the outputs from
XLA's defaults. treemoe_jax/xla_options.py holds what the package picks from this table.
"""

import argparse
import time

import jax
import numpy as np

from benchmarks import common
from configs import default
from treemoe_jax.nn import experts
from treemoe_jax.nn import models
from treemoe_jax.nn import patches
from treemoe_jax.nn import pose
from treemoe_jax import xla_options

_TYPE = 'LIBRARY_FUSION_TYPE_'
SETTINGS = {  # name -> compiler_options (None: XLA's defaults)
    'XLA defaults': None,
    'none': {xla_options.YNN_FUSIONS: xla_options.NO_LIBRARY},
    'eltwise': {xla_options.YNN_FUSIONS: xla_options.ELTWISE},
    'dot': {xla_options.YNN_FUSIONS: _TYPE + 'DOT'},
    'convolution': {xla_options.YNN_FUSIONS: _TYPE + 'INDIVIDUAL_CONVOLUTION'},
}


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(tree)])


def forward_cases(batch: int) -> dict:
  """name -> (fn, variables, inputs, FLOPs): components of one stage and the whole models."""
  images = jax.random.uniform(jax.random.key(1), (batch, 150, 150), minval=-1, maxval=1)
  shape = 75 + 20 * jax.random.normal(jax.random.key(2), (batch, 68, 2))
  crops = patches.extract_patches(images, shape)
  h = jax.random.normal(jax.random.key(3), (batch, 2040))

  def module(m, *inputs, counted=None, **kwargs):
    variables = jax.jit(lambda key, *x: m.init(key, *x, **kwargs))(jax.random.key(0), *inputs)
    fn = lambda v, *x: m.apply(v, *x, **kwargs)
    flops = common.lowered_flops(jax.jit(lambda v, *x: (counted or m).apply(v, *x, **kwargs))
                                 .lower(variables, *inputs))
    return fn, variables, inputs, flops

  cases = {
      'ResNet-50 pose estimator': module(pose.PoseEstimator(), images, train=False),
      '8 pose expert CNNs (merged)': module(experts.ExpertCNNs(8, (7, 14, 28, 56, 30)), crops),
      '1 representation CNN': module(experts.ExpertCNNs(1), crops),
      '64 regressors (scan)': module(experts.ExpertMLPs(64, 128, 136), h,
                                     counted=experts.ExpertMLPs(64, 128, 136, lowering='vmap')),
  }
  for architecture in ('tree_moe', 'pose_tree_moe'):
    config = default.get_config(architecture, 'full')
    model, counted = models.create(config), models.create(common.countable(config))
    variables = jax.jit(lambda key, m=model: models.init(m, key))(jax.random.key(0))
    flops = common.lowered_flops(jax.jit(lambda v, x, s, m=counted: m.apply(v, x, s)['shape'])
                                 .lower(variables, images, shape))
    cases[f'{architecture} forward'] = (lambda v, x, s, m=model: m.apply(v, x, s)['shape'],
                                        variables, (images, shape), flops)
  return cases


def time_forwards(batch: int, rounds: int, gemm: float) -> None:
  print(f'\nForward, batch {batch}: ms (% of GEMM)\n')
  print('| what | ' + ' | '.join(SETTINGS) + ' | max diff | GFLOP |')
  print('|---' * (len(SETTINGS) + 3) + '|', flush=True)
  for name, (fn, variables, inputs, flops) in forward_cases(batch).items():
    compiled = {s: jax.jit(fn, compiler_options=o).lower(variables, *inputs).compile()
                for s, o in SETTINGS.items()}
    best = {s: float('inf') for s in SETTINGS}
    for _ in range(rounds):
      for s, c in compiled.items():
        best[s] = min(best[s], common.time_call(lambda c=c: c(variables, *inputs), 1.0))
    reference = _flat(compiled['XLA defaults'](variables, *inputs))
    diff = max(float(np.abs(_flat(c(variables, *inputs)) - reference).max())
               for c in compiled.values())
    cells = [f'{1e3 * t:.0f} ({100 * flops / t / 1e9 / gemm:.0f}%)' for t in best.values()]
    print(f'| {name} | ' + ' | '.join(cells) + f' | {diff:.1e} | {flops / 1e9:.2f} |',
          flush=True)


def time_train_steps(batch: int, rounds: int, gemm: float) -> None:
  print(f'\nTraining step (the data-parallel jitted step), batch {batch}: img/s (% of GEMM)\n')
  print('| what | ' + ' | '.join(SETTINGS) + ' |')
  print('|---' * (len(SETTINGS) + 1) + '|', flush=True)
  for architecture, task_name in (('pose_tree_moe', 'alignment'), ('tree_moe', 'alignment'),
                                  ('pose_tree_moe', 'pose')):
    config = default.get_config(architecture, 'full')
    mesh, state, step, (data,) = common.setup_step(config, batch, task_name, num_batches=1)
    compiled = {s: step.lower(state, data).compile(compiler_options=o) for s, o in SETTINGS.items()}
    flops = common.step_flops(config, task_name, mesh, state, data)
    best = {s: float('inf') for s in SETTINGS}
    for _ in range(rounds + 1):  # the first round warms every setting up
      for s, c in compiled.items():
        start = time.perf_counter()
        state, metrics = c(state, data)  # the state is donated: thread it through
        jax.block_until_ready(metrics['loss'])
        best[s] = min(best[s], time.perf_counter() - start)
    what = 'pose estimator' if task_name == 'pose' else architecture
    cells = [f'{batch / t:.2f} ({100 * flops / t / 1e9 / gemm:.0f}%)' for t in best.values()]
    print(f'| {what} | ' + ' | '.join(cells) + ' |', flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--train_batch', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--no_train', action='store_true')
  parser.add_argument('--no_forward', action='store_true', help='the training steps only')
  args = parser.parse_args()
  if jax.default_backend() != 'cpu':
    raise SystemExit('these are XLA:CPU options; this machine runs JAX on '
                     f'{jax.default_backend()}')
  gemm = common.gemm_gflops()
  print(f'device: {jax.devices()[0].device_kind}, jax {jax.__version__}; jit GEMM 2048^3 fp32 '
        f'(XLA defaults): {gemm:.1f} GFLOP/s')
  if not args.no_forward:
    time_forwards(args.batch, args.rounds, gemm)
  if not args.no_train:
    time_train_steps(args.train_batch, args.rounds, gemm)
  print(f'\njit GEMM after the run: {common.gemm_gflops():.1f} GFLOP/s')


if __name__ == '__main__':
  main()
