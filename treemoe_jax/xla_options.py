"""XLA compiler options for the inference forward, per backend (docs/benchmarks.md, "Where the
CPU's time goes").

Why: jax 0.10.2's XLA:CPU hands its convolutions (all but tiny ones) to the YNNPACK library by
default, one call per convolution. On this project's convolutions that is slower than XLA's own
(benchmarks/xla_cpu_options.py): the ResNet-50 pose estimator by 1.3x at batch 32, a committee
of 8 narrow pose experts by 1.2x. Two settings of the same flag measured faster:
- no library fusions (`NO_LIBRARY`): XLA's own emitters for everything, fastest for the models
  that run the ResNet-50;
- elementwise library fusions only (`ELTWISE`): YNNPACK then takes a convolution-bias-ReLU chain
  as one graph, which runs the single representation CNN of the pose-free models 4x faster;
  the ResNet's graphs, on the other hand, run slower that way.
The training step measured no faster with either, so it keeps XLA's defaults. Only the speed
changes: the outputs agree within float32 rounding (tests/test_xla_options.py).
"""

import functools
import os
import warnings

import jax
import jax.numpy as jnp

YNN_FUSIONS = 'xla_cpu_experimental_ynn_fusion_type'
NO_LIBRARY = ''
ELTWISE = 'LIBRARY_FUSION_TYPE_ELTWISE'


def inference_options(runs_pose_estimator: bool, backend: str | None = None
                      ) -> dict[str, str] | None:
  """`compiler_options` for `jax.jit` of an alignment forward; None keeps XLA's defaults.

  None off the CPU (nothing measured there says otherwise), when XLA_FLAGS already sets the
  flag (the user's choice wins), or when this XLA does not know the flag (it is experimental).
  """
  if (backend or jax.default_backend()) != 'cpu':
    return None
  if YNN_FUSIONS in os.environ.get('XLA_FLAGS', ''):
    return None
  value = NO_LIBRARY if runs_pose_estimator else ELTWISE
  return {YNN_FUSIONS: value} if _accepted(value) else None


@functools.cache
def _accepted(value: str) -> bool:
  """Whether XLA:CPU compiles with the flag set to `value` (checked once per value, on the
  CPU device whatever the default backend)."""
  try:
    on_cpu = jax.device_put(jnp.zeros(2, jnp.float32), jax.devices('cpu')[0])
    jax.jit(jnp.negative, compiler_options={YNN_FUSIONS: value}).lower(on_cpu).compile()
  except Exception as e:  # pylint: disable=broad-exception-caught
    warnings.warn(f'XLA:CPU refused {YNN_FUSIONS}={value!r} ({e}); the forward keeps XLA\'s '
                  'defaults and runs slower (docs/benchmarks.md)')
    return False
  return True
