"""Helpers shared by the benchmark scripts: timing and the machine's jit GEMM rate."""

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp


def time_call(fn: Callable[[], jax.Array], min_seconds: float = 2.0, min_runs: int = 3) -> float:
  """Median seconds per call of `fn` (already compiled), after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  start = time.perf_counter()
  while len(times) < min_runs or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  times.sort()
  return times[len(times) // 2]


def gemm_gflops(n: int = 2048, dtype=jnp.float32) -> float:
  """GFLOP/s of one jitted n x n matmul in `dtype`: the ceiling model rates are compared to."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  return 2 * n**3 / time_call(lambda: matmul(a, a)) / 1e9


def compiled_flops(compiled) -> float:
  """FLOPs XLA counts for a compiled computation (0 if the backend does not say)."""
  return _flops(compiled.cost_analysis())


def lowered_flops(lowered) -> float:
  """FLOPs XLA counts for a lowered (not yet compiled) computation: tracing cost only."""
  return _flops(lowered.cost_analysis())


def _flops(analysis) -> float:
  if isinstance(analysis, list):  # older JAX returned one dict per device
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def countable(config):
  """`config` with every committee lowered so that XLA's cost analysis sees all of its work.

  XLA counts a loop's body once, not once per trip, so a committee computed by `lax.scan` over
  its experts (`mlp_lowering='scan'`) would report one expert's FLOPs. The model computed is the
  same; benchmarks time the real lowering and take the FLOPs from this one. The CNN committee's
  'blockdiag' and 'padded' lowerings multiply by zeros (off-diagonal blocks, padded channels):
  they are counted as 'merged', which computes the same function without them (useful work), and
  the first layer as XLA's convolution (`cnn_first_layer='matmul'` adds the bias as a matmul row).
  """
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.mlp_lowering = 'vmap'
    config.model.cnn_first_layer = 'conv'  # 'matmul' multiplies a column of ones too
    if config.model.get('cnn_lowering') in ('blockdiag', 'padded'):
      config.model.cnn_lowering = 'merged'
  return config


def print_header(columns: tuple[str, ...]) -> float:
  """Prints the device line with this run's GEMM rate and a Markdown table header; the rate."""
  gemm = gemm_gflops()
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}; '
        f'jit GEMM 2048^3 fp32: {gemm:.1f} GFLOP/s', flush=True)
  print('| ' + ' | '.join(columns) + ' |')
  print('|' + '---|' * len(columns), flush=True)
  return gemm
