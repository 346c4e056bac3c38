"""Where a full-size forward spends its time: each component of one stage, timed alone.

  python -m benchmarks.components [--batch 8]
  python -m benchmarks.components --batch 1024 --dtype bfloat16 --pose_only --gemm_n 8192  # GPU

Pose estimator (ResNet-50), patch extraction, the representation committee (1 CNN of section
3.5 widths, and 8 pose expert CNNs as one nn.vmap), the 64-expert regression committee and the
tree gate, each jitted alone at the same batch, with XLA's FLOP count and the jit GEMM rate of
the same run for scale.
"""

import argparse

import jax
import jax.numpy as jnp

from benchmarks import common
from treemoe_jax.nn import experts
from treemoe_jax.nn import gates
from treemoe_jax.nn import patches
from treemoe_jax.nn import pose


def time_module(name, module, *inputs, gemm, counted=None, **kwargs):
  """Times `module`; FLOPs from `counted` (the same computation, no loop over experts) if given."""
  variables = jax.jit(lambda key, *x: module.init(key, *x, **kwargs))(
      jax.random.key(0, impl='rbg'), *inputs)
  forward = jax.jit(lambda v, *x: module.apply(v, *x, **kwargs)).lower(variables, *inputs).compile()
  seconds = common.time_call(lambda: forward(variables, *inputs))
  flops = common.lowered_flops(jax.jit(lambda v, *x: (counted or module).apply(v, *x, **kwargs))
                               .lower(variables, *inputs))
  report(name, seconds, flops, gemm)


def report(name, seconds, flops, gemm):
  rate = flops / seconds / 1e9
  print(f'| {name} | {1e3 * seconds:.1f} | {flops / 1e9:.3f} | {rate:.1f} | '
        f'{100 * rate / gemm:.1f} |', flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--dtype', default='float32', help="the pose estimator's computation")
  parser.add_argument('--pose_only', action='store_true', help='the pose estimator alone')
  parser.add_argument('--gemm_n', type=int, default=2048, help='8192 on a GPU')
  args = parser.parse_args()
  b = args.batch
  gemm = common.gemm_gflops(args.gemm_n, jnp.dtype(args.dtype))
  print(f'device: {jax.devices()[0].device_kind}, batch {b}, jit GEMM ({args.dtype}) '
        f'{gemm:.1f} GFLOP/s')
  print('| component (one stage unless noted) | ms | GFLOP | GFLOP/s | % of GEMM |')
  print('|---|---|---|---|---|')
  images = jax.random.uniform(jax.random.key(1), (b, 150, 150), minval=-1, maxval=1)
  shape = 75 + 20 * jax.random.normal(jax.random.key(2), (b, 68, 2))
  time_module(f'pose estimator (ResNet-50, once per image, {args.dtype})',
              pose.PoseEstimator(dtype=jnp.dtype(args.dtype)), images, gemm=gemm, train=False)
  if args.pose_only:
    return
  extract = jax.jit(patches.extract_patches).lower(images, shape).compile()
  report('patch extraction 68 x 32x32', common.time_call(lambda: extract(images, shape)),
         common.compiled_flops(extract), gemm)
  crops = extract(images, shape)
  for impl in experts.CONV_IMPLS:
    time_module(f'1 CNN 20-40-80-160-30 ({impl})', experts.ExpertCNNs(1, conv_impl=impl), crops,
                gemm=gemm)
    time_module(f'8 expert CNNs 7-14-28-56-30 (nn.vmap, {impl})',
                experts.ExpertCNNs(8, (7, 14, 28, 56, 30), conv_impl=impl), crops, gemm=gemm)
  h = jax.random.normal(jax.random.key(3), (b, 2040))
  for lowering in experts.MLP_LOWERINGS[1:]:
    time_module(f'64 expert regressors 2040-128-136 ({lowering})',
                experts.ExpertMLPs(64, 128, 136, lowering=lowering), h, gemm=gemm,
                counted=experts.ExpertMLPs(64, 128, 136, lowering='vmap'))
  time_module('baseline regressor 2040-8192-136', experts.ExpertMLPs(1, 8192, 136), h, gemm=gemm)
  time_module('tree gate depth 6 on h', gates.TreeGate(6), h, gemm=gemm)


if __name__ == '__main__':
  main()
