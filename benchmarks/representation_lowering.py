"""How to compute a committee of expert CNNs: nn.vmap's grouped convolutions against alternatives.

  python -m benchmarks.representation_lowering [--faces 32]

The 8 pose experts of the paper (7-14-28-56-30, kernels 5-5-3-3-1) on the 68 patches of `--faces`
faces, from the same `[E, ...]` parameters, each lowering jitted alone:
  vmap        nn.vmap of one expert (XLA: grouped convolutions), the reference;
  unrolled    one plain convolution chain per expert;
  merged      the first convolution once with E x F0 outputs (all experts read the same patch),
              then per expert (experts.merged_committee, what `representation_lowering='auto'` picks on CPU;
              kernel gradients per layer as `experts.kernel_grad_for` picks);
  merged_xla_kernel_grads   merged, every kernel gradient XLA's (before im2col kernel gradients);
  merged_em   merged, with the first layer's output made expert-major before the experts slice it;
  merged_im2col   merged, then each expert's later layers as im2col matmuls (k*k strided slices);
  merged_batched  merged, then each later layer as one im2col matmul batched over the experts;
  merged_matmul1  merged, the first layer as one matmul of its windows and a row of ones
                  (experts.first_layer_matmul: the bias a row of the matrix);
  merged_s2d1     merged, the first layer as the stride-1 convolution of the space-to-depth
                  input (4 channels, 3x3: experts.space_to_depth_conv).
Forward and gradient (w.r.t. the parameters) times, and each lowering's largest difference from
the reference. Read the ratios within one run.

  python -m benchmarks.representation_lowering --set gpu --faces 1024 --dtype bfloat16   # a GPU's candidates

times, beside vmap and merged, what suits a GPU's matrix units (experts.grouped_committee):
  merged_cpu_grads merged with the CPU's custom VJP (space-to-depth input gradients);
  merged_none      merged with XLA's own gradients (no custom VJP: 'auto' off the CPU);
  merged_pad8      merged, each expert's widths zero-padded to multiples of 8 (7-14-28-56 -> 8-16-32-56);
  grouped1_pad8    every later layer one grouped convolution, a group per expert, padded;
  grouped2_pad8, grouped4_pad8   groups of 2 / 4 experts with block-diagonal kernels, padded;
  blockdiag        one group: every later layer one dense convolution, block-diagonal kernel
                   (8x those layers' FLOPs; `representation_lowering='blockdiag'`);
  blockdiag_matmul1  blockdiag with its first layer as experts.first_layer_matmul;
  blockdiag_s2d1     blockdiag with its first layer as the space-to-depth convolution.
The FLOP rate is the reference's count (the useful work) over each lowering's time;
`--lowerings blockdiag,grouped2_pad8` times only those (the reference is always computed).

  python -m benchmarks.representation_lowering --layers --faces 16

times each layer of one expert alone: forward, kernel gradient and input gradient, as XLA's
strided convolution and as a stride-1 convolution of the space-to-depth input, and the kernel
gradient as one matmul of the windows (experts.im2col_kernel_grad).

  python -m benchmarks.representation_lowering --rules [--repeats 2]

times the committee gradient with im2col kernel gradients for no layer, the first only, the
layers `experts.kernel_grad_for` picks ('auto') and every layer.

  python -m benchmarks.representation_lowering --train_step [--repeats 2]

times run_all's training-step rows (pose_tree_moe full at batch 8, tiny at batch 16) with every
kernel gradient XLA's (before) and with `experts.kernel_grad_for`'s choice (after), alternating.
"""

import argparse
import contextlib

import jax
import jax.numpy as jnp

from benchmarks import common
from treemoe_jax.nn import experts

FEATURES, KERNELS = (7, 14, 28, 56, 30), (5, 5, 3, 3, 1)


def _conv(x, w, b):
  return jax.lax.conv_general_dilated(x, w, (2, 2), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + b


def _chain(layers, x, e, start=0):
  for i, layer in enumerate(layers[start:], start):
    x = _conv(x, layer['kernel'][e], layer['bias'][e])
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  return x.mean((1, 2))


def unrolled(params, crops):  # crops [B, P, S, S] -> [B, E, P*n]
  b, p, s, _ = crops.shape
  layers = [params[f'conv{i}'] for i in range(len(params))]
  x = crops.reshape(b * p, s, s, 1)
  outs = [_chain(layers, x, e).reshape(b, -1) for e in range(layers[0]['kernel'].shape[0])]
  return jnp.stack(outs, axis=1)


def _expert_major_first_layer(params, crops):
  """The shared first layer as one convolution, expert-major: (layers, [E, B*P, H, W, F0])."""
  b, p, s, _ = crops.shape
  layers = [params[f'conv{i}'] for i in range(len(params))]
  kernel = layers[0]['kernel']
  e_count, k, _, c, f = kernel.shape
  merged = jnp.moveaxis(kernel, 0, -2).reshape(k, k, c, e_count * f)
  x = jax.nn.relu(_conv(crops.reshape(b * p, s, s, 1), merged, layers[0]['bias'].reshape(-1)))
  return layers, jnp.moveaxis(x.reshape(x.shape[:3] + (e_count, f)), 3, 0)


def merged_expert_major(params, crops):
  layers, x = _expert_major_first_layer(params, crops)
  outs = [_chain(layers, x[e], e, start=1).reshape(crops.shape[0], -1) for e in range(len(x))]
  return jnp.stack(outs, axis=1)


def merged_batched(params, crops):
  """merged, then every later layer as one batched im2col matmul over the expert axis."""
  layers, x = _expert_major_first_layer(params, crops)  # [E, B*P, H, W, F0]
  e_count, b = len(x), crops.shape[0]
  for i, layer in enumerate(layers[1:], 1):
    w = layer['kernel']  # [E, k, k, C, F]
    cols = experts.im2col(x, w.shape[1], 2)  # [E, N, H', W', T, C]
    x = jnp.einsum('enhwtc,etcf->enhwf', cols, w.reshape(e_count, -1, w.shape[3], w.shape[4]))
    x = x + layer['bias'][:, None, None, None, :]
    if i < len(layers) - 1:
      x = jax.nn.relu(x)
  x = x.mean((2, 3))  # [E, B*P, n]
  return jnp.moveaxis(x.reshape(e_count, b, -1), 0, 1)


def merged_im2col(params, crops):
  """merged, then per expert the later layers as im2col matmuls."""
  layers, x0 = _expert_major_first_layer(params, crops)  # [E, B*P, H, W, F0]
  e_count, b = len(x0), crops.shape[0]
  outs = []
  for e in range(e_count):
    x = x0[e]
    for i, layer in enumerate(layers[1:], 1):
      w = layer['kernel'][e]
      x = jnp.einsum('nhwtc,tcf->nhwf', experts.im2col(x, w.shape[0], 2),
                     w.reshape(-1, w.shape[2], w.shape[3])) + layer['bias'][e]
      if i < len(layers) - 1:
        x = jax.nn.relu(x)
    outs.append(x.mean((1, 2)).reshape(b, -1))
  return jnp.stack(outs, axis=1)


def space_to_depth_conv(x, w, b):
  return experts.space_to_depth_conv(x, w) + b


def layer_table(faces: int) -> None:
  """Per layer of one expert: forward, kernel-gradient and input-gradient ms, XLA vs space-to-depth,
  and the im2col kernel gradient."""
  print(f'| layer ({faces} faces x 68 patches) | XLA fwd / kernel grad / input grad ms | '
        'space-to-depth | im2col kernel grad ms | max diff |')
  print('|---|---|---|---|---|')
  shapes = [(32, 1, 56, 5), (16, 7, 14, 5), (8, 14, 28, 3), (4, 28, 56, 3)]  # H, C, F, k
  for height, c, f, k in shapes:
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (faces * 68, height, height, c))
    w = 0.1 * jax.random.normal(keys[1], (k, k, c, f))
    b = jnp.zeros(f)
    g = jax.random.normal(keys[2], _conv(x, w, b).shape)
    cells = []
    for conv in (_conv, space_to_depth_conv):
      times = []
      for fn in (lambda x, w, g, conv=conv: conv(x, w, b),
                 lambda x, w, g, conv=conv: jax.vjp(lambda w: conv(x, w, b), w)[1](g)[0],
                 lambda x, w, g, conv=conv: jax.vjp(lambda x: conv(x, w, b), x)[1](g)[0]):
        compiled = jax.jit(fn).lower(x, w, g).compile()  # g an argument: no constant folding
        times.append(1e3 * common.time_call(lambda compiled=compiled: compiled(x, w, g)))
      cells.append(' / '.join(f'{t:.1f}' for t in times))
    kernel_grad = jax.jit(lambda x, g, k=k: experts.im2col_kernel_grad(x, g, k, 2)
                          ).lower(x, g).compile()
    cells.append(f'{1e3 * common.time_call(lambda: kernel_grad(x, g)):.1f}')
    diff = float(jnp.abs(space_to_depth_conv(x, w, b) - _conv(x, w, b)).max())
    print(f'| {height}x{height}, {c} -> {f}, {k}x{k} | {" | ".join(cells)} | {diff:.1e} |',
          flush=True)


@contextlib.contextmanager
def kernel_grads(kind):
  """Within: every merged-committee layer takes its kernel gradient as `kind` ('auto': as
  experts.kernel_grad_for picks; a function of (kernel_size, channels): as it says)."""
  chosen = experts.kernel_grad_for
  if callable(kind):
    experts.kernel_grad_for = kind
  elif kind != 'auto':
    experts.kernel_grad_for = lambda kernel_size, channels: kind
  try:
    yield
  finally:
    experts.kernel_grad_for = chosen


RULES = {'xla': 'xla', 'first_layer_only': lambda kernel_size, channels: (
    'im2col' if channels == 1 else 'xla'), 'auto': 'auto', 'im2col': 'im2col'}


def rules_table(faces: int, repeats: int) -> None:
  """The committee gradient under each rule for which layers take im2col kernel gradients."""
  crops = jax.random.normal(jax.random.key(0), (faces, 68, 32, 32))
  module = experts.ExpertCNNs(8, FEATURES, KERNELS, lowering='vmap')
  params = jax.jit(module.init)(jax.random.key(1), crops)['params']['experts']
  compiled = {}
  for name, rule in RULES.items():
    with kernel_grads(rule):
      compiled[name] = jax.jit(jax.grad(
          lambda p, x: jnp.sum(experts.merged_committee(p, x) ** 2))).lower(params, crops).compile()
  print(f'| kernel gradients ({faces} faces) | committee gradient ms |')
  print('|---|---|')
  for name, fn in list(compiled.items()) * repeats:
    print(f'| {name} | {1e3 * common.time_call(lambda fn=fn: fn(params, crops)):.0f} |', flush=True)


def train_step_table(repeats: int) -> None:
  """Training-step img/s, XLA's kernel gradients against the chosen ones, in one process."""
  print(f'jit GEMM at the start {common.gemm_gflops():.1f} GFLOP/s')
  print('| architecture | size | batch | kernel gradients | train img/s |')
  print('|---|---|---|---|---|')
  for architecture, size, batch in (('pose_tree_moe', 'full', 8), ('pose_tree_moe', 'tiny', 16)):
    for kind in ('xla', 'auto') * repeats:
      with kernel_grads(kind):
        row = common.train_row(architecture, size, 'float32', batch, 'merged/scan')
      print(f'| {architecture} | {size} | {batch} | {kind} | {row["img_s"]:.2f} |', flush=True)
  print(f'jit GEMM at the end {common.gemm_gflops():.1f} GFLOP/s')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--faces', type=int, default=32)
  parser.add_argument('--layers', action='store_true', help='per-layer gradient timing instead')
  parser.add_argument('--train_step', action='store_true', help='training steps, before/after')
  parser.add_argument('--rules', action='store_true', help='committee gradient per rule for '
                      'the im2col kernel gradients')
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--set', default='cpu', choices=('cpu', 'gpu'),
                      help="which lowerings: the CPU study's or a GPU's candidates")
  parser.add_argument('--dtype', default='float32', help='the computation (parameters float32)')
  parser.add_argument('--gemm_n', type=int, default=2048, help='8192 on a GPU')
  parser.add_argument('--lowerings', default='',
                      help="comma-separated names: only these (e.g. 'blockdiag,grouped2_pad8')")
  args = parser.parse_args()
  if args.train_step:
    train_step_table(args.repeats)
    return
  if args.rules:
    rules_table(args.faces, args.repeats)
    return
  if args.layers:
    layer_table(args.faces)
    return
  dtype = jnp.dtype(args.dtype)
  crops = jax.random.normal(jax.random.key(0), (args.faces, 68, 32, 32))
  module = experts.ExpertCNNs(8, FEATURES, KERNELS, lowering='vmap', dtype=dtype)
  variables = jax.jit(module.init)(jax.random.key(1), crops)
  params = variables['params']['experts']
  vmapped = lambda p, x: module.apply({'params': {'experts': p}}, x)
  lowerings = (gpu_lowerings(vmapped, dtype) if args.set == 'gpu' else
               cpu_lowerings(vmapped, dtype))
  if args.lowerings:
    unknown = set(args.lowerings.split(',')) - set(lowerings)
    if unknown:
      parser.error(f'unknown lowerings {sorted(unknown)}; valid: {", ".join(lowerings)}')
    lowerings = {name: fn for name, fn in lowerings.items() if name in args.lowerings.split(',')}
  gemm = common.gemm_gflops(args.gemm_n, dtype)
  counted = experts.ExpertCNNs(8, FEATURES, KERNELS, lowering='vmap', conv_impl='xla')
  flops = common.lowered_flops(jax.jit(lambda p, x: counted.apply(
      {'params': {'experts': p}}, x)).lower(params, crops))  # the useful work, on any backend
  print(f'device: {jax.devices()[0].device_kind}, {args.faces} faces x 68 patches, {args.dtype}, '
        f'jit GEMM {gemm:.1f} GFLOP/s, {flops / 1e9:.1f} GFLOP forward (counted as nn.vmap)')
  print('| lowering | forward ms | % GEMM | gradient ms | max diff |')
  print('|---|---|---|---|---|')
  reference = jax.jit(vmapped)(params, crops)
  for name, fn in lowerings.items():
    try:
      forward = jax.jit(fn).lower(params, crops).compile()
      seconds = common.time_call(lambda: forward(params, crops))
      grad = jax.jit(jax.grad(lambda p, x: jnp.sum(fn(p, x) ** 2))).lower(params, crops).compile()
      grad_seconds = common.time_call(lambda: grad(params, crops))
    except Exception as error:  # pylint: disable=broad-except
      print(f'| {name} | failed: {str(error).splitlines()[0][:200]} | | | |', flush=True)
      continue
    diff = float(jnp.abs(forward(params, crops) - reference).max())
    print(f'| {name} | {1e3 * seconds:.1f} | {100 * flops / seconds / 1e9 / gemm:.1f} | '
          f'{1e3 * grad_seconds:.1f} | {diff:.1e} |', flush=True)


def cpu_lowerings(vmapped, dtype):
  return {'vmap': vmapped, 'unrolled': unrolled,
          'merged': lambda p, x: experts.merged_committee(p, x, dtype=dtype),
          'merged_xla_kernel_grads': lambda p, x: experts.merged_committee(
              p, x, dtype=dtype, kernel_grad='xla'),
          'merged_em': merged_expert_major, 'merged_im2col': merged_im2col,
          'merged_batched': merged_batched,
          'merged_matmul1': lambda p, x: experts.merged_committee(p, x, dtype=dtype,
                                                                  first_layer='matmul'),
          'merged_s2d1': lambda p, x: experts.merged_committee(p, x, dtype=dtype,
                                                               first_layer='s2d')}


def gpu_lowerings(vmapped, dtype):
  def grouped(experts_per_group, multiple, first_layer='conv'):
    return lambda p, x: experts.grouped_committee(p, x, experts_per_group, multiple, dtype=dtype,
                                                  first_layer=first_layer)
  return {'vmap': vmapped,
          'merged_cpu_grads': lambda p, x: experts.merged_committee(
              p, x, dtype=dtype, kernel_grad='xla'),
          'merged_none': lambda p, x: experts.merged_committee(p, x, dtype=dtype,
                                                               kernel_grad='none'),
          'merged_pad8': lambda p, x: experts.merged_committee(
              experts.padded_channels(p, 8), x, dtype=dtype, kernel_grad='none'),
          'grouped1_pad8': grouped(1, 8), 'grouped2_pad8': grouped(2, 8),
          'grouped4_pad8': grouped(4, 8), 'blockdiag': grouped(None, 1),
          'blockdiag_matmul1': grouped(None, 1, 'matmul'),
          'blockdiag_s2d1': grouped(None, 1, 's2d')}


if __name__ == '__main__':
  main()
