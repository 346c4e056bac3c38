"""Shape-indexed patches: a square crop centred on every current landmark (section 3.2).

Axis legend: B images, H/W image height/width, P landmarks, Z patch size.

Patch pixel (i, j) of landmark (x_p, y_p) samples the image bilinearly at
x = x_p - Z/2 + 0.5 + j, y = y_p - Z/2 + 0.5 + i (SPEC); each of the four bilinear neighbours
outside the image counts as 0. Because every pixel of one patch shares the same sub-pixel
offset, a patch is four shifted integer windows of the image blended with four scalar weights:
one `dynamic_slice` per patch instead of Z*Z*4 scattered gathers.

`scaled_patches` crops the same Z x Z grid from an antialiased, `scale` times smaller copy of the
image: a patch then spans Z * scale image pixels, so an early cascade stage, whose landmarks may
be 20 px off, still sees the feature it must move to (coarse to fine).
"""

import functools

import jax
import jax.numpy as jnp


def _check_inputs(images: jax.Array, landmarks: jax.Array, size: int) -> None:
  if images.ndim != 3:
    raise ValueError(f'images must be [B, H, W] grayscale, got shape {images.shape}')
  if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
    raise ValueError(f'landmarks must be [B, P, 2] (x, y), got shape {landmarks.shape}')
  if landmarks.shape[0] != images.shape[0]:
    raise ValueError(f'{images.shape[0]} images but landmarks for {landmarks.shape[0]}')
  if size < 1:
    raise ValueError(f'patch size must be positive, got {size}')


@functools.partial(jax.jit, static_argnames='size')
def extract_patches(images: jax.Array, landmarks: jax.Array, size: int = 32) -> jax.Array:
  """Bilinear `size` x `size` crops `[B, P, Z, Z]` of `images` `[B, H, W]` at `landmarks`
  `[B, P, 2]`.

  Jit-able, batched and differentiable w.r.t. both the image and the landmarks. Windows far
  outside the image are all zeros (they land entirely in the zero padding).
  """
  _check_inputs(images, landmarks, size)
  pad = size + 1  # any window clamped by dynamic_slice then lies wholly in the padding
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad)))  # [B, H+2p, W+2p]
  origin = landmarks - size / 2 + 0.5  # [B, P, 2] sample position of patch pixel (0, 0)
  corner = jnp.floor(origin)
  frac = origin - corner  # [B, P, 2] the bilinear weights' sub-pixel offset
  start = corner.astype(jnp.int32) + pad  # [B, P, 2] (x, y) in the padded image

  def window(image, xy):  # [H+2p, W+2p], [2] -> [Z+1, Z+1]
    return jax.lax.dynamic_slice(image, (xy[1], xy[0]), (size + 1, size + 1))

  windows = jax.vmap(jax.vmap(window, in_axes=(None, 0)))(padded, start)  # [B, P, Z+1, Z+1]
  fx = frac[..., 0, None, None]
  fy = frac[..., 1, None, None]
  top = (1 - fx) * windows[..., :-1, :-1] + fx * windows[..., :-1, 1:]
  bottom = (1 - fx) * windows[..., 1:, :-1] + fx * windows[..., 1:, 1:]
  return (1 - fy) * top + fy * bottom


def downscale(images: jax.Array, landmarks: jax.Array, scale: float
              ) -> tuple[jax.Array, jax.Array]:
  """(images `[B, H', W']` antialiased to 1/scale the size, landmarks `[B, P, 2]` in their pixels).

  H' = round(H / scale); pixel centres map as x' = (x + 0.5) * H' / H - 0.5 (SPEC's convention:
  both images span the same area), which is how `jax.image.resize` places its samples.
  """
  height, width = images.shape[1:]
  new_h, new_w = max(round(height / scale), 1), max(round(width / scale), 1)
  small = jax.image.resize(images, (images.shape[0], new_h, new_w), 'linear', antialias=True)
  factor = jnp.array([new_w / width, new_h / height], landmarks.dtype)
  return small, (landmarks + 0.5) * factor - 0.5


def scaled_patches(images: jax.Array, landmarks: jax.Array, size: int = 32,
                   scale: float = 1.0) -> jax.Array:
  """`extract_patches` on the image shrunk by `scale` (>= 1): `[B, P, Z, Z]` spanning Z*scale px."""
  if scale < 1:
    raise ValueError(f'patch scale must be >= 1 (1 = full resolution), got {scale}')
  if scale == 1:
    return extract_patches(images, landmarks, size)
  return extract_patches(*downscale(images, landmarks, scale), size)
