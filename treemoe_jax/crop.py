"""The face crop: a face box in an image -> the model's S x S grayscale input in [-1, 1].

Written once, in JAX, for everything that runs on a device: the Aligner's and the export's jitted
forward, and the TensorFlow-free training scripts. The tf.data pipeline keeps its own TensorFlow
crop for speed (`input_pipeline.pipeline.crop_image`), tested equal to this one.

The map (SPEC "Conventions"). A crop window is (left, top, side): the square
[left, left + side] x [top, top + side] in image coordinates (pixel centres at integers), so the
crop's output pixel j is centred on input x_j = left + (j + 0.5) * side / S, and a point maps by
x_crop = (x - left) * S / side - 0.5. Enlarging (side <= S) samples bilinearly there, a sample
outside [0, W - 1] reading 0; shrinking (side > S) averages through a triangle of half-width
side / S input pixels (antialiasing, as PIL's and tf.image.resize's), the image extended by zeros.

Both are separable: crop = R @ gray @ C^T with R [S, H] and C [S, W] resampling matrices, so one
face of a 1600 x 1200 photo is one pair of matmuls, and a padded image gives the same crop as the
unpadded one when its true size is passed (`image_hw`), which bounds the shapes jit compiles for.

Axis legend: N faces, S crop size, H, W, C image height, width, channels.
"""

import jax
import jax.numpy as jnp

Array = jax.Array
# ITU-R 601 luma, as tf.image.rgb_to_grayscale: the model reads one channel.
RGB_TO_GRAY = (0.2989, 0.5870, 0.1140)


def crop_window(boxes, margin: float) -> Array:
  """(left, top, side) [..., 3]: the square on each box's centre, its longer side plus `margin`
  each side. boxes [..., 4] (x0, y0, x1, y1) image pixels."""
  boxes = jnp.asarray(boxes, jnp.float32)
  centre = (boxes[..., :2] + boxes[..., 2:]) / 2
  side = jnp.max(boxes[..., 2:] - boxes[..., :2], axis=-1) * (1 + 2 * margin)
  side = jnp.maximum(side, 1.0)  # A degenerate box still gives an invertible map.
  return jnp.concatenate([centre - side[..., None] / 2, side[..., None]], axis=-1)


def crop_landmarks(points, window, size: int):
  """Image points [..., P, 2] -> crop pixels: x_crop = (x - left) * S / side - 0.5."""
  return (points - window[..., None, :2]) * (size / window[..., None, 2:]) - 0.5


def uncrop_landmarks(points, window, size: int):
  """Crop pixels [..., P, 2] -> the image's: the inverse of `crop_landmarks` (numpy or JAX)."""
  return (points + 0.5) * (window[..., None, 2:] / size) + window[..., None, :2]


def _triangle_sum(centre: Array, half_width: Array) -> Array:
  """sum over all integers i of max(0, 1 - |i - c| / h): the antialiasing kernel's normaliser,
  in closed form (taps outside the image count, as they do in the pipeline's crop)."""
  floor = jnp.floor(centre)
  frac = centre - floor  # [0, 1): distance to the integer at or below c
  left = jnp.ceil(half_width - frac)  # integers c - frac - k, k = 0 .. left - 1, within reach
  right = jnp.ceil(half_width + frac) - 1  # integers c - frac + k, k = 1 .. right
  return (left - (left * frac + left * (left - 1) / 2) / half_width
          + right - (right * (right + 1) / 2 - right * frac) / half_width)


def resample_matrix(first: Array, step: Array, size: int, extent: int, length) -> Array:
  """[S, extent]: row j weighs the input pixels for the output pixel centred on first + j * step.

  `extent` is the array's (possibly padded) length along the axis, `length` the image's true one:
  pixels at or past `length` weigh 0.
  """
  centres = first + jnp.arange(size, dtype=jnp.float32) * step  # [S]
  index = jnp.arange(extent, dtype=jnp.float32)  # [extent]
  distance = jnp.abs(index[None, :] - centres[:, None])  # [S, extent]
  inside = index[None, :] < length
  # Shrinking: a triangle as wide as the output spacing, normalised over every integer it reaches.
  wide = jnp.maximum(0.0, 1.0 - distance / step) / _triangle_sum(centres, step)[:, None]
  # Enlarging: bilinear sampling; a sample outside [0, length - 1] reads 0 (tf crop_and_resize).
  sampled = (centres >= 0) & (centres <= length - 1)
  narrow = jnp.where(sampled[:, None], jnp.maximum(0.0, 1.0 - distance), 0.0)
  return jnp.where(inside, jnp.where(step > 1, wide, narrow), 0.0)


def channel_weights(channels: int) -> Array:
  """[C]: how the channels of an image sum to the grey the model reads (1: as is; 3: luma)."""
  if channels not in (1, 3):
    raise ValueError(f'images must have 1 or 3 channels, got {channels}')
  return jnp.asarray((1.0,) if channels == 1 else RGB_TO_GRAY, jnp.float32)


def to_grayscale(image: Array, weights=None) -> Array:
  """[H, W, C] (C = 1 or 3) -> float32 [H, W]; `weights` [C] default `channel_weights(C)`."""
  if weights is None:  # C known: a weighted sum XLA fuses with the conversion (8x a matmul)
    weights = channel_weights(image.shape[-1])
    return sum(image[..., c].astype(jnp.float32) * weights[c] for c in range(image.shape[-1]))
  return jnp.matmul(image.astype(jnp.float32), weights, precision=jax.lax.Precision.HIGHEST)


def face_image(image, window, size: int, image_hw=None, weights=None) -> Array:
  """One face: image [H, W] or [H, W, C] (uint8 or float, 0-255), window [3] -> [S, S] in [-1, 1].

  `image_hw` (height, width): the image's true size when `image` is zero-padded beyond it.
  `weights` [C]: `channel_weights(C)`, given where C is not known when tracing (the export).
  """
  image = jnp.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  gray = to_grayscale(image, weights)  # [H, W]; the crop is linear: grey first costs a third
  height, width = gray.shape
  true_h, true_w = (height, width) if image_hw is None else (image_hw[0], image_hw[1])
  window = jnp.asarray(window, jnp.float32)
  step = window[2] / size
  rows = resample_matrix(window[1] + 0.5 * step, step, size, height, true_h)  # [S, H]
  cols = resample_matrix(window[0] + 0.5 * step, step, size, width, true_w)  # [S, W]
  highest = jax.lax.Precision.HIGHEST  # TF32/bf16 passes would cost a grey level on accelerators
  crop = jnp.matmul(jnp.matmul(rows, gray, precision=highest), cols.T, precision=highest)
  return crop / 127.5 - 1.0


def face_images(image, windows, size: int, image_hw=None, weights=None) -> Array:
  """The faces of one image: windows [N, 3] -> [N, S, S] in [-1, 1]."""
  return jax.vmap(lambda w: face_image(image, w, size, image_hw, weights))(jnp.asarray(windows))


def crop_faces(images, boxes, landmarks, *, size: int, margin: float) -> tuple[Array, Array]:
  """A batch of stored faces as the pipeline crops them (no jitter): images [N, H, W(, C)],
  boxes [N, 4], landmarks [N, P, 2] -> (images [N, S, S] in [-1, 1], landmarks in crop pixels)."""
  windows = crop_window(boxes, margin)  # [N, 3]
  crops = jax.vmap(lambda image, window: face_image(image, window, size))(images, windows)
  return crops, crop_landmarks(jnp.asarray(landmarks, jnp.float32), windows, size)
