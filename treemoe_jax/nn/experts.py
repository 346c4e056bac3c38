"""Expert committees: L expert networks evaluated as one vectorised axis (sections 3.2-3.3).

Each committee is `nn.vmap` of a single expert with `variable_axes={'params': 0}`, so the expert
axis L leads every parameter (it can be sharded on an 'expert' mesh axis later) and no Python
loop runs over experts. A committee returns every expert's output; `combine` weights them with a
gate (eq. 4 and 7).

Axis legend: B batch, P landmarks, Z patch size, C channels, n features per landmark,
L experts, F = P * n representation features, O regression outputs (2P).
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

CONV_IMPLS = ('im2col', 'xla')
# How a committee of expert CNNs is computed (the same parameters): 'vmap' (nn.vmap of one expert:
# grouped convolutions), 'merged' (`merged_committee`), 'padded' ('merged' on widths padded to 8),
# 'blockdiag' (`grouped_committee`, one group: block-diagonal dense convolutions, L times the FLOPs
# for a GPU's matrix units). 'auto' picks the one measured faster per backend: docs/benchmarks.md
# ("Where the CPU's time goes", "GPU (one H100)"); a never-differentiated forward may differ.
CNN_LOWERINGS = ('auto', 'vmap', 'merged', 'blockdiag', 'padded')
CNN_AUTO = {'cpu': 'merged', 'gpu': 'blockdiag'}
CNN_AUTO_INFERENCE = {'cpu': 'padded'}  # over CNN_AUTO for a forward that is never differentiated
PADDED_MULTIPLE = 8  # 'padded': each expert's hidden widths rounded up to this
# How the merged committees compute their shared first layer: 'conv' (XLA's convolution),
# 'matmul' (`first_layer_matmul`) or 's2d' (`space_to_depth_conv`). 'auto' is 'conv' on every
# backend measured so far (docs/benchmarks.md, "Where the CPU's time goes", "GPU (one H100)").
FIRST_LAYERS = ('auto', 'conv', 'matmul', 's2d')
FIRST_LAYER_AUTO: dict[str, str] = {}  # backend -> measured faster; absent: 'conv'


def resolve_first_layer(first_layer: str, backend: str | None = None) -> str:
  """'auto' -> the first-layer lowering measured faster on `backend`, else 'conv'."""
  if first_layer not in FIRST_LAYERS:
    raise ValueError(f'unknown CNN first layer {first_layer!r}; valid: {", ".join(FIRST_LAYERS)}')
  if first_layer != 'auto':
    return first_layer
  return FIRST_LAYER_AUTO.get(backend or jax.default_backend(), 'conv')


def resolve_cnn_lowering(lowering: str, backend: str | None = None,
                         inference: bool = False) -> str:
  """'auto' -> the lowering measured faster on `backend` (default: JAX's default backend), for
  a forward that is never differentiated if `inference`."""
  auto = (CNN_AUTO | CNN_AUTO_INFERENCE) if inference else CNN_AUTO
  return _resolve('CNN committee', lowering, CNN_LOWERINGS, auto, backend)


def _resolve(committee: str, lowering: str, valid: tuple[str, ...], auto: dict[str, str],
             backend: str | None) -> str:
  """A committee's lowering: `lowering` itself, or for 'auto' `auto[backend]` ('vmap' for a
  backend it does not name)."""
  if lowering not in valid:
    raise ValueError(f'unknown {committee} lowering {lowering!r}; valid: {", ".join(valid)}')
  if lowering != 'auto':
    return lowering
  return auto.get(backend or jax.default_backend(), 'vmap')


def im2col(x: jax.Array, k: int, stride: int) -> jax.Array:
  """The k x k windows of a 'SAME' strided convolution: x [..., H, W, C] -> [..., H', W', k*k, C].

  Padded as XLA pads 'SAME' (the extra row/column after), windows in kernel order (row, column).
  """
  height, width = x.shape[-3:-1]
  x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [same_padding(height, k, stride),
                                            same_padding(width, k, stride), (0, 0)])
  return _taps(x, k, stride, -(-height // stride), -(-width // stride))


def same_padding(size: int, k: int, stride: int) -> tuple[int, int]:
  """(before, after) that XLA's 'SAME' pads a side of `size` with: the extra one after."""
  total = max((-(-size // stride) - 1) * stride + k - size, 0)
  return total // 2, total - total // 2


def _taps(x: jax.Array, k: int, stride: int, out_h: int, out_w: int, axis: int = -2
          ) -> jax.Array:
  """The k*k stride-spaced taps of an already padded x [..., H, W, C]: [..., out_h, out_w, k*k, C]
  (`axis=-2`) or [k*k, ..., out_h, out_w, C] (`axis=0`), in kernel order (row, column)."""
  s = stride
  return jnp.stack([x[..., i:i + s * (out_h - 1) + 1:s, j:j + s * (out_w - 1) + 1:s, :]
                    for i in range(k) for j in range(k)], axis=axis)


Crop = tuple[int, int, int]  # (rows taken, padding before, padding after): see receptive_crops


def receptive_crops(size: int, kernel_sizes: Sequence[int], stride: int = 2
                    ) -> tuple[Crop | None, ...]:
  """Per layer of a chain of 'SAME' strided convolutions on a size x size map whose last map is
  averaged: None (the layer runs 'SAME' on its whole input) or (t, a, b): it runs on its input's
  first t rows and columns, padded by a before and b after, and computes only the outputs the
  features depend on.

  Why: with 32x32 patches the last stride-2 1x1 layer reads one pixel of its 2x2 input, so the
  layer before needs one of its four outputs, the one before that 3x3 of its 4x4, and the second
  layer 7x7 of its 8x8; as 'SAME' they compute every output (XLA does not prune them). The
  padding after is chosen equal to the padding before where that reads no extra output: a GPU's
  convolution library pads symmetrically, and XLA copies the whole map to pad it otherwise
  (one H100: a pad of the first layer's output took 1.7 ms of a stage's 20 at batch 1024).
  """
  sizes = [size]
  for _ in kernel_sizes:
    sizes.append(-(-sizes[-1] // stride))
  crops, needed = [], sizes[-1]  # the last map is averaged: all of it
  for k, rows, out in zip(reversed(kernel_sizes), reversed(sizes[:-1]), reversed(sizes[1:])):
    same_total = max((out - 1) * stride + k - rows, 0)
    same = (rows, same_total // 2, same_total - same_total // 2)
    before = same[1]
    end = (needed - 1) * stride + k - before  # one past the last input row read
    take = min(end, rows)
    after = end - take
    if after <= before < after + stride:  # symmetric, and the extra rows read no output
      after = before
    crop = (take, before, after)
    if crop == same and needed == out:
      crops.append(None)
      needed = rows
    else:
      crops.append(crop)
      needed = take
  return tuple(reversed(crops))


Padding = tuple[int, int] | None  # (before, after) on both spatial axes; None: 'SAME'


def split_crop(x: jax.Array, crop: Crop | None) -> tuple[jax.Array, Padding]:
  """x [N, H, W, C] cut to the rows and columns `crop` takes, and the padding it asks for
  (None, with x whole, for 'SAME')."""
  if crop is None:
    return x, None
  take, before, after = crop
  return x[:, :take, :take], (before, after)


def cropped_conv(x: jax.Array, kernel: jax.Array, stride: int, crop: Crop | None,
                 feature_group_count: int = 1) -> jax.Array:
  """XLA's strided convolution, 'SAME' on x [N, H, W, C] or on the window `crop`
  (`receptive_crops`); kernel [k, k, C / groups, F]."""
  x, padding = split_crop(x, crop)
  return _xla_conv(x, kernel, stride, padding, feature_group_count)


def windows(x: jax.Array, k: int, stride: int, crop: Crop | None = None,
            taps_first: bool = False) -> jax.Array:
  """`im2col`'s windows, of the window `crop` (`receptive_crops`) if given:
  x [N, H, W, C] -> [N, H', W', k*k, C], or with `taps_first` [k*k, N, H', W', C]."""
  x, padding = split_crop(x, crop)
  if padding is None:  # 'SAME', as `im2col` pads it
    padding = same_padding(x.shape[1], k, stride)
  x = jnp.pad(x, ((0, 0), padding, padding, (0, 0)))
  out = (x.shape[1] - k) // stride + 1
  return _taps(x, k, stride, out, out, axis=0 if taps_first else -2)


def first_layer_matmul(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int,
                       crop: Crop | None = None) -> jax.Array:
  """A strided convolution with bias as one matmul of its windows with a row of ones:
  x [N, H, W, C], kernel [k, k, C, F], bias [F] -> [N, H', W', F].

  Why: the committee's first layer reads a 1-channel patch, a shape a GPU's convolution library
  runs far below its matrix rate (one H100, bf16: the forward took 7.1 ms a stage for 50 GFLOP
  at 1024 faces; in the training step at 256 faces, its kernel gradient 1.7 ms a stage and XLA's
  reduction for its ReLU and bias gradients 3.3 ms). With the bias a row of the matrix, its
  gradient comes out of the kernel gradient's matmul instead of a reduction.
  The windows are taps-first, [T, N, H', W']: each tap (and the ones and zeros) is one
  contiguous slab, so building them is a concatenate along the major axis. Laid out window by
  window ([N, H', W', T], 3e858a9) one H100 took 199 ms to build them for the 4 stages, against
  4.3 ms for the matmul. The contraction is padded with zero rows to a multiple of 8 (25 taps + 1
  -> 32), the size a GPU's matrix units take.
  """
  k, _, channels, features = kernel.shape
  taps = k * k * channels
  padded = -(-(taps + 1) // 8) * 8
  columns = windows(x, k, stride, crop, taps_first=True)  # [k*k, N, H', W', C]
  columns = jnp.moveaxis(columns, -1, 1)  # [k*k, C, N, H', W']: kernel order (row, column, C)
  columns = columns.reshape((taps,) + columns.shape[2:])  # [k*k*C, N, H', W']
  spatial = columns.shape[1:]
  columns = jnp.concatenate([columns, jnp.ones((1,) + spatial, columns.dtype),
                             jnp.zeros((padded - taps - 1,) + spatial, columns.dtype)])  # [T, ...]
  matrix = jnp.concatenate([kernel.reshape(taps, features), bias[None],
                            jnp.zeros((padded - taps - 1, features), kernel.dtype)], 0)  # [T, F]
  return jnp.einsum('tnhw,tf->nhwf', columns, matrix)  # [N, H', W', F]


class Im2colConv(nn.Module):
  """A strided 'SAME' convolution as k*k strided slices and one matmul; nn.Conv's parameters.

  Why: vmapped over experts, nn.Conv becomes a grouped convolution, whose gradient XLA:CPU
  computes 6-13x slower than this im2col form's batched matmul (benchmarks/components.py
  --train); the parameters (kernel [k, k, C, F], bias [F]) and the outputs are nn.Conv's.
  """
  features: int
  kernel_size: int
  stride: int = 2
  dtype: Dtype = jnp.float32  # computation; the parameters stay float32
  crop: Crop | None = None  # the window it runs on (`receptive_crops`); None: 'SAME'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [N, H, W, C] -> [N, H/s, W/s, F]
    channels = x.shape[-1]
    k = self.kernel_size
    columns = windows(x, k, self.stride, self.crop)  # [N, H', W', k*k, C]
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (k, k, channels, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    return jnp.einsum('nhwtc,tcf->nhwf', columns.astype(self.dtype),
                      kernel.reshape(k * k, channels, self.features).astype(self.dtype)
                      ) + bias.astype(self.dtype)


class PatchCNN(nn.Module):
  """One expert CNN f_l, shared across the P patches: 5 strided convolutions (section 3.5).

  `features[-1]` = n features per landmark. With 32x32 patches and five stride-2 layers the
  map ends 1x1; for other patch sizes the last map is average-pooled to keep n per landmark.
  Each layer computes only the outputs the features read (`receptive_crops`; the same values).
  `conv_impl` picks how a convolution is computed ('im2col' or XLA's 'xla'), not what.
  """
  features: Sequence[int] = (20, 40, 80, 160, 30)
  kernel_sizes: Sequence[int] = (5, 5, 3, 3, 1)
  stride: int = 2
  conv_impl: str = 'im2col'
  dtype: Dtype = jnp.float32  # computation; parameters and the returned features are float32

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:  # [B, P, Z, Z] -> [B, P*n]
    if len(self.features) != len(self.kernel_sizes):
      raise ValueError(f'{len(self.features)} conv widths but {len(self.kernel_sizes)} kernels')
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f'unknown conv_impl {self.conv_impl!r}; valid: {", ".join(CONV_IMPLS)}')
    batch, num_patches, size, _ = patches.shape
    x = patches.reshape(batch * num_patches, size, size, 1).astype(self.dtype)  # [B*P, Z, Z, 1]
    last = len(self.features) - 1
    crops = receptive_crops(size, self.kernel_sizes, self.stride)
    for i, (width, kernel, crop) in enumerate(zip(self.features, self.kernel_sizes, crops)):
      if self.conv_impl == 'im2col':
        x = Im2colConv(width, kernel, self.stride, self.dtype, crop, name=f'conv{i}')(x)
      else:
        x, padding = split_crop(x, crop)
        x = nn.Conv(width, (kernel, kernel), strides=self.stride,
                    padding='SAME' if padding is None else (padding, padding), dtype=self.dtype,
                    name=f'conv{i}')(x)
      if i < last:
        x = nn.relu(x)
    x = x.astype(jnp.float32).mean(axis=(1, 2))  # [B*P, n]; a no-op on the paper's 1x1 map
    return x.reshape(batch, num_patches * self.features[-1])


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding = None,
              feature_group_count: int = 1) -> jax.Array:
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride),
                                      'SAME' if padding is None else (padding, padding),
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                      feature_group_count=feature_group_count)


def space_to_depth_conv(x: jax.Array, kernel: jax.Array, padding: Padding = None) -> jax.Array:
  """The 'SAME' (or `padding`) stride-2 convolution as a stride-1 'VALID' one on the
  space-to-depth input.

  x [N, H, W, C], kernel [k, k, C, F] -> [N, ceil(H/2), ceil(W/2), F] ('SAME'). The kernel is
  padded to an even size and split into 2x2 blocks that read the 4 C channels of each 2x2 input
  block.
  """
  n, height, width, channels = x.shape
  k, features = kernel.shape[0], kernel.shape[-1]
  k2 = k + k % 2

  def pads(size):
    if padding is None:
      out = -(-size // 2)
      lo = same_padding(size, k, 2)[0]  # 'SAME': the extra row after, as XLA pads
    else:
      out = (size + sum(padding) - k) // 2 + 1
      lo = padding[0]
    return lo, 2 * (out - 1) + k2 - size - lo  # after: to the even window's end (may cut rows)

  (top, bottom), (left, right) = pads(height), pads(width)
  x = jnp.pad(x, ((0, 0), (top, max(bottom, 0)), (left, max(right, 0)), (0, 0)))
  x = x[:, :top + height + bottom, :left + width + right]
  h2, w2 = x.shape[1] // 2, x.shape[2] // 2
  x = x.reshape(n, h2, 2, w2, 2, channels).transpose(0, 1, 3, 2, 4, 5)
  x = x.reshape(n, h2, w2, 4 * channels)
  kernel = jnp.pad(kernel, ((0, k2 - k), (0, k2 - k), (0, 0), (0, 0)))
  kernel = kernel.reshape(k2 // 2, 2, k2 // 2, 2, channels, features).transpose(0, 2, 1, 3, 4, 5)
  return jax.lax.conv_general_dilated(x, kernel.reshape(k2 // 2, k2 // 2, 4 * channels, features),
                                      (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


KERNEL_GRADS = ('xla', 'im2col')
# merged_committee's kernel_grad: these, or 'none' (XLA's own gradient of its strided convolution,
# no custom VJP) or 'auto': `kernel_grad_for` per layer on CPU, where it was measured; 'xla'
# elsewhere (the space-to-depth input gradient; docs/benchmarks.md, "GPU (one H100)").
MERGED_KERNEL_GRADS = KERNEL_GRADS + ('none', 'auto')


def im2col_kernel_grad(x: jax.Array, g: jax.Array, k: int, stride: int,
                       padding: Padding = None) -> jax.Array:
  """The kernel gradient of a 'SAME' (or `padding`) strided convolution as one matmul of its
  windows.

  x [N, H, W, C], g [N, H', W', F] (the output's cotangent) -> [k, k, C, F]: the windows
  [N*H'*W', k*k*C], transposed, times g [N*H'*W', F].
  """
  channels, features = x.shape[-1], g.shape[-1]
  crop = None if padding is None else (x.shape[1],) + tuple(padding)
  columns = windows(x, k, stride, crop).reshape(-1, k * k * channels)
  return (columns.T @ g.reshape(-1, features)).reshape(k, k, channels, features)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def stride2_conv(x: jax.Array, kernel: jax.Array, kernel_grad: str = 'xla',
                 padding: Padding = None) -> jax.Array:
  """XLA's 'SAME' stride-2 convolution with faster gradients on XLA:CPU
  (`python -m benchmarks.representation_lowering --layers`).

  The input gradient goes through the space-to-depth form: XLA:CPU computes a strided
  convolution's input gradient (a convolution of a dilated input) 5x slower than that of the
  equivalent stride-1 one, while its forward is faster as it is. `kernel_grad='im2col'` takes
  the kernel gradient as one matmul of the windows (`im2col_kernel_grad`): 3x faster than
  XLA's for the committee's 1-channel first layer, faster or even for its 3x3 layers, slower for
  its 16x16 5x5 one (docs/benchmarks.md). `padding`: (before, after) instead of 'SAME'.
  """
  _check_kernel_grad(kernel_grad)
  return _xla_conv(x, kernel, 2, padding)


def _check_kernel_grad(kernel_grad: str) -> None:
  """Refused when the convolution is traced, not only when (if ever) it is differentiated."""
  if kernel_grad not in KERNEL_GRADS:
    raise ValueError(f'unknown kernel_grad {kernel_grad!r}; valid: {", ".join(KERNEL_GRADS)}')


def _stride2_forward(x, kernel, kernel_grad, padding):
  _check_kernel_grad(kernel_grad)  # otherwise the backward pass's choice
  return _xla_conv(x, kernel, 2, padding), (x, kernel)


def _stride2_backward(kernel_grad, padding, residuals, g):
  x, kernel = residuals
  if kernel_grad == 'im2col':
    kernel_cotangent = im2col_kernel_grad(x, g, kernel.shape[0], 2, padding)
  else:
    kernel_cotangent = jax.vjp(lambda k: _xla_conv(x, k, 2, padding), kernel)[1](g)[0]
  input_grad = jax.vjp(lambda y: space_to_depth_conv(y, kernel, padding), x)[1](g)[0]
  return input_grad, kernel_cotangent


stride2_conv.defvjp(_stride2_forward, _stride2_backward)


def kernel_grad_for(kernel_size: int, channels: int) -> str:
  """The kernel gradient measured faster on XLA:CPU for a committee layer of this shape
  (benchmarks.representation_lowering --layers): im2col for 1 input channel or a kernel <= 3x3."""
  return 'im2col' if channels == 1 or kernel_size <= 3 else 'xla'


def _conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int,
          kernel_grad: str = 'xla', crop: Crop | None = None) -> jax.Array:
  """nn.Conv's 'SAME' strided convolution: x [N, H, W, C], kernel [k, k, C, F] -> [N, H', W', F];
  with `crop`, on that window (`receptive_crops`)."""
  if kernel_grad not in MERGED_KERNEL_GRADS:
    raise ValueError(f'unknown kernel_grad {kernel_grad!r}; valid: {", ".join(MERGED_KERNEL_GRADS)}')
  x, padding = split_crop(x, crop)
  if kernel_grad == 'auto':  # measured per layer on XLA:CPU; elsewhere the custom VJP as a whole
    kernel_grad = (kernel_grad_for(kernel.shape[0], kernel.shape[2])
                   if jax.default_backend() == 'cpu' else 'xla')
  if stride == 2 and kernel_grad != 'none':
    return stride2_conv(x, kernel, kernel_grad, padding) + bias
  return _xla_conv(x, kernel, stride, padding) + bias


def _merged_first_layer(layers: list[dict], patches: jax.Array, stride: int, dtype: Dtype,
                        kernel_grad: str, crop: Crop | None, first_layer: str = 'conv'
                        ) -> jax.Array:
  """Every expert's first convolution as one, L x F0 outputs, expert-major: [B*P, H, W, L*F0]
  (all experts read the same patch). `first_layer`: 'conv' (`_conv`), 'matmul'
  (`first_layer_matmul`) or 's2d' (`space_to_depth_conv`: 4 input channels, not 1)."""
  batch, num_patches, size, _ = patches.shape
  kernel0 = layers[0]['kernel'].astype(dtype)  # [L, k, k, C, F0]
  num_experts, k, _, channels, width = kernel0.shape
  merged = jnp.moveaxis(kernel0, 0, -2).reshape(k, k, channels, num_experts * width)  # e-major
  bias = layers[0]['bias'].astype(dtype).reshape(-1)
  x = patches.reshape(batch * num_patches, size, size, 1).astype(dtype)
  if first_layer == 'matmul':
    x = first_layer_matmul(x, merged, bias, stride, crop)
  elif first_layer == 's2d':
    if stride != 2:
      raise ValueError(f"first_layer='s2d' computes a stride-2 convolution, not stride {stride}")
    x, padding = split_crop(x, crop)
    x = space_to_depth_conv(x, merged, padding) + bias
  else:
    x = _conv(x, merged, bias, stride, kernel_grad, crop)
  return nn.relu(x) if len(layers) > 1 else x


def padded_channels(params: dict, multiple: int) -> dict:
  """The committee's parameters with each expert's hidden widths zero-padded up to `multiple`.

  The same function: a padded channel's kernel and bias are 0, so it is relu(0) = 0, and the next
  layer's kernel rows that read it are 0. Why: a GPU's matrix units take channels in multiples of
  8 (the pose experts' are 7-14-28-56). Leaves `[L, k, k, C, F]` / `[L, F]`; the last layer's
  outputs (the features) keep their width. Differentiable: the gradient of a pad is a slice.
  """
  padded, extra_in = {}, 0
  for i in range(len(params)):
    kernel, bias = params[f'conv{i}']['kernel'], params[f'conv{i}']['bias']
    extra_out = 0 if i == len(params) - 1 else -kernel.shape[-1] % multiple
    padded[f'conv{i}'] = {
        'kernel': jnp.pad(kernel, [(0, 0)] * 3 + [(0, extra_in), (0, extra_out)]),
        'bias': jnp.pad(bias, [(0, 0), (0, extra_out)])}
    extra_in = extra_out
  return padded


def group_block_diagonal(kernel: jax.Array, experts_per_group: int) -> jax.Array:
  """Expert kernels [L, k, k, C, F] -> one grouped-convolution kernel [k, k, G*C, L*F].

  L / G groups of G experts; within a group the kernel is block-diagonal (expert a's outputs read
  only expert a's inputs). Input and output channels are expert-major, as in `merged_committee`;
  used with feature_group_count = L / G.
  """
  num_experts, k, _, channels, features = kernel.shape
  g = experts_per_group
  if num_experts % g:
    raise ValueError(f'{num_experts} experts do not split into groups of {g}')
  kernel = kernel.reshape(num_experts // g, g, k, k, channels, features)  # [J, G, k, k, C, F]
  blocks = jnp.einsum('jakicf,ab->kiacjbf', kernel, jnp.eye(g, dtype=kernel.dtype))
  return blocks.reshape(k, k, g * channels, num_experts * features)


def grouped_committee(params: dict, patches: jax.Array, experts_per_group: int | None = None,
                      channel_multiple: int = 1, stride: int = 2,
                      dtype: Dtype = jnp.float32, first_layer: str = 'conv') -> jax.Array:
  """What nn.vmap(PatchCNN) computes, `[B, L, P*n]`, with every layer one convolution.

  The first layer as in `merged_committee`; every later layer one convolution over all experts'
  channels, grouped by `experts_per_group` G (None: all L in one group, the block-diagonal
  lowering; 1: a grouped convolution, one group per expert, as nn.vmap lowers to) with each group's
  kernel block-diagonal (`group_block_diagonal`). G trades FLOPs (G times those layers') for wider
  convolutions; `channel_multiple` pads each expert's widths (`padded_channels`). The later
  layers take XLA's gradients, the first as `merged_committee`'s 'auto'.
  """
  if channel_multiple > 1:
    params = padded_channels(params, channel_multiple)
  batch, num_patches = patches.shape[:2]
  layers = [params[f'conv{i}'] for i in range(len(params))]
  num_experts = layers[0]['kernel'].shape[0]
  g = experts_per_group or num_experts
  crops = receptive_crops(patches.shape[-1], [layer['kernel'].shape[1] for layer in layers],
                          stride)
  x = _merged_first_layer(layers, patches, stride, dtype, 'auto', crops[0],
                          first_layer)  # [B*P, H, W, L*F0]
  for i, layer in enumerate(layers[1:], start=1):
    kernel = group_block_diagonal(layer['kernel'].astype(dtype), g)
    x = cropped_conv(x, kernel, stride, crops[i], feature_group_count=num_experts // g)
    x = x + layer['bias'].astype(dtype).reshape(-1)
    if i < len(layers) - 1:
      x = nn.relu(x)
  features = x.astype(jnp.float32).mean(axis=(1, 2))  # [B*P, L*n]
  features = features.reshape(batch, num_patches, num_experts, -1)  # [B, P, L, n]
  return jnp.swapaxes(features, 1, 2).reshape(batch, num_experts, -1)  # [B, L, P*n]


def merged_committee(params: dict, patches: jax.Array, stride: int = 2,
                     dtype: Dtype = jnp.float32, kernel_grad: str = 'auto',
                     first_layer: str = 'conv') -> jax.Array:
  """The committee nn.vmap(PatchCNN) computes, from its parameters `[L, ...]`: `[B, L, P*n]`.

  Every expert's first convolution reads the same patch, so the L of them are one dense
  convolution with L x F0 outputs; each expert's later layers are plain convolutions on its own
  channels. On XLA:CPU this avoids the grouped convolutions nn.vmap lowers to (2-3% of the GEMM
  rate; benchmarks/representation_lowering.py). `params` is the committee's {'conv{i}':
  {'kernel' [L, k, k, C, F], 'bias' [L, F]}}; patches [B, P, Z, Z]. `kernel_grad`
  (MERGED_KERNEL_GRADS): how the stride-2 layers take their gradients.
  """
  batch, num_patches = patches.shape[:2]
  layers = [params[f'conv{i}'] for i in range(len(params))]
  last = len(layers) - 1
  num_experts, width = layers[0]['bias'].shape
  crops = receptive_crops(patches.shape[-1], [layer['kernel'].shape[1] for layer in layers],
                          stride)
  x = _merged_first_layer(layers, patches, stride, dtype, kernel_grad, crops[0],
                          first_layer)  # [B*P, H, W, L*F0]
  x = x.reshape(x.shape[:3] + (num_experts, width))  # [B*P, H, W, L, F0]
  outputs = []
  for e in range(num_experts):
    y = x[..., e, :]
    for i, layer in enumerate(layers[1:], start=1):
      y = _conv(y, layer['kernel'][e].astype(dtype), layer['bias'][e].astype(dtype), stride,
                kernel_grad, crops[i])
      if i < last:
        y = nn.relu(y)
    features = y.astype(jnp.float32).mean(axis=(1, 2))  # [B*P, n]
    outputs.append(features.reshape(batch, num_patches * features.shape[-1]))
  return jnp.stack(outputs, axis=1)  # [B, L, P*n]


def gathered(apply_one, committee_params, chosen: jax.Array, x: jax.Array) -> jax.Array:
  """Only the chosen experts: `apply_one(params, x_b)` for each row b and its A experts.

  committee_params: leaves `[L, ...]` (the committee's leading expert axis); chosen int `[B, A]`;
  x `[B, ...]` -> `[B, A, ...]`. The A experts' parameters are gathered per example, so the work
  is B * A expert evaluations, not B * L (routing.py).
  """
  picked = jax.tree.map(lambda p: p[chosen], committee_params)  # leaves [B, A, ...]
  per_row = jax.vmap(apply_one, in_axes=(0, None))  # over A
  return jax.vmap(per_row)(picked, x)  # over B


# Pairs per loop iteration. Greedy top-1 of the 64 full-size regressors at batch 32 on CPU: 1.7
# ms at 8, 1.9-2.3 at 4, 2.1-3.9 at 12, 2.3-2.6 at 16, 3.7-13 at 32 (XLA may turn the 32
# slices back into one gather).
ROW_UNROLL = 8


def rowwise(apply_one, committee_params, chosen: jax.Array, x: jax.Array,
            unroll: int = ROW_UNROLL) -> jax.Array:
  """What `gathered` computes, one (row, expert) pair after another: `[B, A, ...]`.

  A `lax.scan` over the B x A pairs slices each pair's expert parameters where they lie. Why: on
  XLA:CPU, `gathered` first copies B x A experts' parameters into a fresh buffer (33 MB for 32
  of the 64 full-size regressors), which costs as much as running all 64 experts; pair by pair the
  copy is one expert's, in a buffer the loop reuses (benchmarks/routing.py).
  """
  batch, k = chosen.shape
  if k == 1:  # the loop reads x's rows in order
    inputs, row_input = x, lambda x_i: x_i
  else:  # each pair indexes its row: x repeated A times was a copy (36 MB of patches at top-4)
    inputs = jnp.arange(batch * k) // k  # [B*A]: each pair's row of x
    row_input = lambda row: jax.lax.dynamic_index_in_dim(x, row, keepdims=False)

  def pair(carry, expert_and_input):
    expert, x_or_row = expert_and_input
    params = jax.tree.map(lambda p: p[expert], committee_params)  # leaves without the expert axis
    return carry, apply_one(params, row_input(x_or_row))
  _, out = jax.lax.scan(pair, None, (chosen.reshape(-1), inputs),
                        unroll=max(1, min(unroll, batch * k)))
  return out.reshape((batch, k) + out.shape[1:])  # [B, A, ...]


ROUTED_LOWERINGS = ('auto', 'gather', 'rows', 'dense')


def resolve_routed_lowering(lowering: str, batch: int, k: int, num_experts: int,
                            backend: str | None = None, dense: bool = True) -> str:
  """How B rows with A chosen experts each of L are computed: `lowering`, or for 'auto' what was
  measured faster (benchmarks/routing.py, the full-size regression layer). `dense=False` for a
  committee that offers no 'dense' (the CNNs: 'auto' is then 'rows' on CPU, 'gather' elsewhere).

  On CPU 'rows' (`rowwise`, about 50 µs a pair there) while B x A < 2E or A <= L / 16, else
  'dense': at batch 32 with top-1 of 64, 1.5-1.9 ms against 12.4-13.7 dense and 12.6-16.6
  gathered; with 8 of 64, 12.4 ms pair by pair against 12.1 dense. Elsewhere (not measured
  with 'rows'): 'gather' while B x A < L, else 'dense', as the regressors are memory-bound there.
  """
  valid = ROUTED_LOWERINGS if dense else tuple(v for v in ROUTED_LOWERINGS if v != 'dense')
  if lowering not in valid:
    raise ValueError(f'unknown routed_lowering {lowering!r}; valid: {", ".join(valid)}')
  if lowering != 'auto':
    return lowering
  pairs = batch * k
  if (backend or jax.default_backend()) == 'cpu':
    few = pairs < 2 * num_experts or 16 * k <= num_experts
    return 'rows' if few or not dense else 'dense'
  return 'gather' if pairs < num_experts or not dense else 'dense'


class ExpertCNNs(nn.Module):
  """The representation committee: L expert CNNs -> H `[B, L, P*n]` (eq. 3).

  With `chosen` int `[B, A]`, only those experts run: `[B, A, P*n]` (routing.py).
  """
  num_experts: int
  features: Sequence[int] = (20, 40, 80, 160, 30)
  kernel_sizes: Sequence[int] = (5, 5, 3, 3, 1)
  conv_impl: str = 'im2col'
  # CNN_LOWERINGS: how the dense committee is computed, not what. 'merged' always uses XLA's
  # convolution (conv_impl picks the lowering inside nn.vmap only).
  lowering: str = 'auto'
  dtype: Dtype = jnp.float32  # computation; parameters and outputs are float32
  # True: this forward is never differentiated, so 'auto' may pick a lowering whose gradient is
  # slower (CNN_AUTO_INFERENCE). Outputs are the same either way.
  inference: bool = False
  # With `chosen`: 'gather' (`gathered`), 'rows' (`rowwise`) or 'auto': 'rows' on CPU (8
  # full-size pose experts, top-1: 1.6x faster than 'gather' at batch 32, 1.05-1.9x at batch 8;
  # benchmarks/routing.py), 'gather' elsewhere.
  routed_lowering: str = 'auto'
  first_layer: str = 'auto'  # FIRST_LAYERS: the merged lowerings' first layer

  @nn.compact
  def __call__(self, patches: jax.Array, chosen: jax.Array | None = None
               ) -> jax.Array:  # [B, P, Z, Z] -> [B, L or A, P*n]
    expert = functools.partial(PatchCNN, tuple(self.features), tuple(self.kernel_sizes),
                               conv_impl=self.conv_impl, dtype=self.dtype)
    committee = nn.vmap(
        PatchCNN, variable_axes={'params': 0}, split_rngs={'params': True},
        in_axes=None, out_axes=1, axis_size=self.num_experts)
    committee = committee(tuple(self.features), tuple(self.kernel_sizes),
                          conv_impl=self.conv_impl, dtype=self.dtype, name='experts')
    if self.is_initializing():
      return committee(patches)
    if chosen is None:
      lowering = resolve_cnn_lowering(self.lowering, inference=self.inference)
      first_layer = resolve_first_layer(self.first_layer)
      if lowering in ('merged', 'padded'):
        params = self.variables['params']['experts']
        if lowering == 'padded':
          params = padded_channels(params, PADDED_MULTIPLE)
        return merged_committee(params, patches, dtype=self.dtype, first_layer=first_layer)
      if lowering == 'blockdiag':
        return grouped_committee(self.variables['params']['experts'], patches, dtype=self.dtype,
                                 first_layer=first_layer)
      return committee(patches)
    lowering = resolve_routed_lowering(self.routed_lowering, *chosen.shape, self.num_experts,
                                       dense=False)  # a routed row is one expert on P patches
    routed = rowwise if lowering == 'rows' else gathered
    return routed(lambda p, x: expert().apply({'params': p}, x[None])[0],
                  self.variables['params']['experts'], chosen, patches)


OUTPUT_INITS = ('lecun', 'zeros')
# How the dense regression committee is computed (the parameters are the same): 'vmap' is nn.vmap
# of one regressor, which XLA:CPU lowers to a copy of the whole [L, F, H] first-layer kernel into
# [F, L*H] on every call before one GEMM; 'scan' runs the experts one after another on their own
# kernel slices (`scanned`), reading each weight once. 'auto' picks per backend what was measured
# faster: 'scan' on CPU (experiments/regression_lowering.py), 'vmap' elsewhere (one H100, full
# pose_tree_moe bf16 forward with 'vmap' CNNs: batch 1 at 2.9 ms against 6.9 with 'scan'; with
# 'merged' CNNs, batch 1024 at 5777 against 5646 img/s).
MLP_LOWERINGS = ('auto', 'vmap', 'scan')
MLP_AUTO = {'cpu': 'scan'}


def resolve_mlp_lowering(lowering: str, backend: str | None = None) -> str:
  """'auto' -> the lowering measured faster on `backend` (default: JAX's default backend)."""
  return _resolve('regression committee', lowering, MLP_LOWERINGS, MLP_AUTO, backend)


def scanned(apply_one, committee_params, x: jax.Array) -> jax.Array:
  """Every expert on the same input, one after another: `apply_one(params_e, x)` -> `[B, L, ...]`.

  committee_params: leaves `[L, ...]`. A `lax.scan` over the expert axis slices each expert's
  parameters where they lie, so a memory-bound committee reads its weights once.
  """
  _, out = jax.lax.scan(lambda carry, params: (carry, apply_one(params, x)), None,
                        committee_params)  # [L, B, ...]
  return jnp.swapaxes(out, 0, 1)


class RegressorMLP(nn.Module):
  """One expert regressor r_l: ds_l = W1 relu(W0 h + b0) + b1 (eq. 6).

  `output_init` 'zeros' starts W1 at 0, so that a fresh stage moves no landmark: with LeCun
  initialisation each stage's first displacements are random jumps of tens of pixels that the
  cascade must first unlearn (docs/learning.md).
  """
  hidden: int
  outputs: int
  output_init: str = 'lecun'
  dtype: Dtype = jnp.float32  # computation; parameters and outputs are float32

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:  # [B, F] -> [B, O]
    if self.output_init not in OUTPUT_INITS:
      raise ValueError(f'unknown output_init {self.output_init!r}; valid: {", ".join(OUTPUT_INITS)}')
    init = nn.initializers.zeros if self.output_init == 'zeros' else nn.initializers.lecun_normal()
    hidden = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name='hidden')(h))
    return nn.Dense(self.outputs, kernel_init=init, dtype=self.dtype,
                    name='out')(hidden).astype(jnp.float32)


class ExpertMLPs(nn.Module):
  """The regression committee: L' expert regressors -> dS `[B, L, O]` (eq. 5).

  With `chosen` int `[B, A]`, only those experts run: `[B, A, O]` (routing.py). How, is
  `routed_lowering`: 'gather' their parameters per example (B * A expert evaluations), 'rows'
  (the same B * A, pair by pair: `rowwise`), 'dense' (run all L, keep A: the same result), or
  'auto' (`resolve_routed_lowering`: measured per backend).
  """
  num_experts: int
  hidden: int
  outputs: int
  output_init: str = 'lecun'
  routed_lowering: str = 'auto'
  dtype: Dtype = jnp.float32  # computation; parameters and outputs are float32
  # MLP_LOWERINGS: how the dense committee is computed, not what.
  lowering: str = 'auto'

  @nn.compact
  def __call__(self, h: jax.Array, chosen: jax.Array | None = None
               ) -> jax.Array:  # [B, F] -> [B, L or A, O]
    committee = nn.vmap(
        RegressorMLP, variable_axes={'params': 0}, split_rngs={'params': True},
        in_axes=None, out_axes=1, axis_size=self.num_experts)
    committee = committee(self.hidden, self.outputs, self.output_init, self.dtype, name='experts')
    if self.is_initializing():
      return committee(h)
    if chosen is None:
      return self._dense(committee, h)
    lowering = resolve_routed_lowering(self.routed_lowering, *chosen.shape, self.num_experts)
    if lowering == 'dense':
      # Many pairs: each pair reads its expert's weights again, so running all L once and
      # keeping A is faster (docs/align.md).
      return jnp.take_along_axis(self._dense(committee, h), chosen[..., None], axis=1)  # [B,A,O]
    if lowering == 'rows':
      # One row as a batch of 1: XLA:CPU's [1, F] x [F, H] product beat its [F] x [F, H] one.
      return rowwise(lambda p, h_i: self._apply_one(p, h_i[None])[0],
                     self.variables['params']['experts'], chosen, h)
    return gathered(self._apply_one, self.variables['params']['experts'], chosen, h)

  def _apply_one(self, params: dict, h: jax.Array) -> jax.Array:
    """One expert regressor with `params` (leaves without the expert axis)."""
    expert = RegressorMLP(self.hidden, self.outputs, self.output_init, self.dtype)
    return expert.apply({'params': params}, h)

  def _dense(self, committee: nn.Module, h: jax.Array) -> jax.Array:  # [B, F] -> [B, L, O]
    if resolve_mlp_lowering(self.lowering) == 'scan':
      return scanned(self._apply_one, self.variables['params']['experts'], h)
    return committee(h)


def combine(expert_outputs: jax.Array, weights: jax.Array) -> jax.Array:
  """Gate-weighted sum over experts (eq. 4, 7): `[B, L, F]`, `[B, L]` -> `[B, F]`."""
  if expert_outputs.shape[:2] != weights.shape:
    raise ValueError(f'expert outputs {expert_outputs.shape} do not match gate weights '
                     f'{weights.shape}: expected [B, L, F] and [B, L]')
  return jnp.einsum('bef,be->bf', expert_outputs, weights)
