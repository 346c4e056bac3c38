"""Forward img/s of the full-size architectures, beside this machine's jit GEMM GFLOP/s.

  python benchmarks/forward_speed.py [--batch_sizes 1,32] [--architectures tree_moe,...]

For each architecture and batch size: compile time, GFLOP per image (XLA's count), img/s and the
GFLOP/s that implies, as a fraction of the GEMM rate measured in the same run. Absolute times on
shared CPUs are noise; the ratios within one run are not. The forward is compiled with the
options evaluation and `Aligner` use (treemoe_jax/xla_options.py), or XLA's with --xla_defaults.
"""

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import common  # pylint: disable=g-import-not-at-top
from configs import default  # pylint: disable=g-import-not-at-top
from treemoe_jax.nn import models  # pylint: disable=g-import-not-at-top
from treemoe_jax import xla_options  # pylint: disable=g-import-not-at-top


def measure(architecture: str, batch: int, variant: str, variables_cache: dict,
            xla_defaults: bool = False) -> dict:
  config = default.get_config(architecture, variant)
  model = models.create(config)
  if architecture not in variables_cache:
    variables_cache[architecture] = jax.jit(lambda key: models.init(model, key))(
        jax.random.key(0, impl='rbg'))
  variables = variables_cache[architecture]
  size = config.model.image_size
  images = jax.random.uniform(jax.random.key(1), (batch, size, size), minval=-1, maxval=1)
  init_shape = jnp.full((batch, 68, 2), size / 2.0) + jax.random.normal(
      jax.random.key(2), (batch, 68, 2)) * size / 5
  start = time.perf_counter()
  options = None if xla_defaults else xla_options.inference_options(
      model.pose_estimator is not None)  # what evaluation and Aligner compile with
  forward = jax.jit(model.apply, compiler_options=options).lower(
      variables, images, init_shape).compile()
  compile_s = time.perf_counter() - start
  seconds = common.time_call(lambda: forward(variables, images, init_shape)['shape'])
  counted = models.create(common.countable(config))  # the same model, every expert counted
  flops = common.lowered_flops(jax.jit(counted.apply).lower(variables, images, init_shape))
  return dict(compile_s=compile_s, img_s=batch / seconds, gflop_img=flops / batch / 1e9,
              gflops=flops / seconds / 1e9)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch_sizes', default='1,32')
  parser.add_argument('--architectures', default=','.join(default.PAPER_SIZES))
  parser.add_argument('--variant', default='full', choices=default.VARIANTS)
  parser.add_argument('--xla_defaults', action='store_true',
                      help="XLA's default compiler options, not treemoe_jax.xla_options'")
  args = parser.parse_args()
  gemm = common.print_header(('architecture', 'batch', 'compile s', 'GFLOP/img', 'img/s', 'GFLOP/s',
                              '% of GEMM'))
  cache = {}
  for architecture in args.architectures.split(','):
    for batch in map(int, args.batch_sizes.split(',')):
      r = measure(architecture, batch, args.variant, cache, args.xla_defaults)
      print(f'| {architecture} | {batch} | {r["compile_s"]:.1f} | {r["gflop_img"]:.2f} | '
            f'{r["img_s"]:.2f} | {r["gflops"]:.1f} | {100 * r["gflops"] / gemm:.1f} |', flush=True)
    cache.clear()
  print(f'jit GEMM after the run: {common.gemm_gflops():.1f} GFLOP/s')


if __name__ == '__main__':
  main()
