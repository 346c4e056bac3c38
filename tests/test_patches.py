"""Patch extraction against a plain numpy bilinear loop (SPEC's sampling convention)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from treemoe_jax.nn import patches


def numpy_patch(image: np.ndarray, x_p: float, y_p: float, size: int) -> np.ndarray:
  """Pixel by pixel: sample at x = x_p - S/2 + 0.5 + j, y = y_p - S/2 + 0.5 + i; outside = 0."""
  height, width = image.shape

  def pixel(r, c):
    return image[r, c] if 0 <= r < height and 0 <= c < width else 0.0

  out = np.zeros((size, size))
  for i in range(size):
    for j in range(size):
      x = x_p - size / 2 + 0.5 + j
      y = y_p - size / 2 + 0.5 + i
      c0, r0 = int(np.floor(x)), int(np.floor(y))
      fx, fy = x - c0, y - r0
      out[i, j] = ((1 - fy) * ((1 - fx) * pixel(r0, c0) + fx * pixel(r0, c0 + 1)) +
                   fy * ((1 - fx) * pixel(r0 + 1, c0) + fx * pixel(r0 + 1, c0 + 1)))
  return out


@pytest.mark.parametrize('size', [8, 7])
def test_patches_equal_numpy_bilinear_loop(size):
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 20, 24)).astype(np.float32)
  # Sub-pixel points inside, near every border, straddling corners, and far outside.
  points = np.array([[[10.3, 7.71], [0.2, 0.9], [-2.5, 10.25], [23.6, 19.4]],
                     [[5.0, 5.0], [-3.9, -4.1], [26.7, 3.3], [300.0, -250.0]]], np.float32)
  got = np.asarray(patches.extract_patches(jnp.asarray(images), jnp.asarray(points), size))
  assert got.shape == (2, 4, size, size)
  for b in range(2):
    for p in range(4):
      expected = numpy_patch(images[b], *points[b, p].astype(np.float64), size)
      np.testing.assert_allclose(got[b, p], expected, atol=2e-5, err_msg=f'image {b} point {p}')
  np.testing.assert_array_equal(got[1, 3], 0.0)  # wholly outside: zeros


def test_integer_centre_gives_exact_pixels():
  # A landmark at pixel centre (x, y) and even S: pixel (S/2, S/2) of the patch sits at x + 0.5,
  # half way between pixels x and x+1; at x_p = x - 0.5 the patch is an exact copy.
  image = np.arange(30 * 30, dtype=np.float32).reshape(30, 30)
  got = patches.extract_patches(jnp.asarray(image[None]), jnp.array([[[14.5, 12.5]]]), 8)
  np.testing.assert_array_equal(got[0, 0], image[9:17, 11:19])


def test_patches_are_differentiable_in_image_and_landmarks():
  rng = np.random.default_rng(1)
  images = jnp.asarray(rng.normal(size=(1, 16, 16)), jnp.float32)
  points = jnp.array([[[7.3, 8.6]]])
  grad_image = jax.grad(lambda im: patches.extract_patches(im, points, 4).sum())(images)
  # Each of the 4x4 samples spreads weight 1 over its neighbours: total gradient = 16.
  np.testing.assert_allclose(grad_image.sum(), 16.0, rtol=1e-5)
  assert np.count_nonzero(np.asarray(grad_image)) == 25  # a 5x5 window
  grad_x = jax.grad(lambda pt: patches.extract_patches(images, pt, 4).sum())(points)
  eps = 1e-2
  shift = jnp.array([[[eps, 0.0]]])
  numeric = (patches.extract_patches(images, points + shift, 4).sum() -
             patches.extract_patches(images, points - shift, 4).sum()) / (2 * eps)
  np.testing.assert_allclose(grad_x[0, 0, 0], numeric, rtol=1e-3)


def test_patches_bad_input():
  images = jnp.zeros((2, 16, 16))
  with pytest.raises(ValueError, match=r'\[B, H, W\]'):
    patches.extract_patches(jnp.zeros((2, 16, 16, 1)), jnp.zeros((2, 5, 2)))
  with pytest.raises(ValueError, match=r'\[B, P, 2\]'):
    patches.extract_patches(images, jnp.zeros((2, 5, 3)))
  with pytest.raises(ValueError, match='2 images but landmarks for 3'):
    patches.extract_patches(images, jnp.zeros((3, 5, 2)))


@pytest.mark.parametrize('scale', [2.0, 3.0, 1.5])
def test_scaled_patches_sample_a_ramp_at_the_stretched_grid(scale):
  """Antialiasing preserves a linear image away from its borders, so a patch of the shrunk image
  reads the ramp exactly at x_p + (j - S/2 + 0.5) * (W / W') (a known geometric fact)."""
  size, side = 8, 150
  y, x = np.mgrid[0:side, 0:side].astype(np.float64)
  image = (0.3 * x - 0.2 * y + 5.0)[None]  # [1, H, W]
  landmarks = np.array([[[70.3, 80.6], [60.0, 75.25], [90.8, 66.1]]])  # [1, P, 2]
  got = np.asarray(patches.scaled_patches(jnp.asarray(image, jnp.float32),
                                          jnp.asarray(landmarks, jnp.float32), size, scale))
  spacing = side / round(side / scale)  # the exact ratio of the two images' pixel sizes
  offsets = (np.arange(size) - size / 2 + 0.5) * spacing
  for p, (lx, ly) in enumerate(landmarks[0]):
    want = 0.3 * (lx + offsets[None, :]) - 0.2 * (ly + offsets[:, None]) + 5.0
    # 0.015 grey levels on a 0.3/px ramp: within 0.05 px (a non-integer ratio's discrete kernel)
    np.testing.assert_allclose(got[0, p], want, atol=0.015)


def test_scaled_patches_average_away_a_stripe_pattern():
  """A 1-px stripe pattern (period 2) shrunk 2x is grey: no aliasing into the patches."""
  stripes = np.tile(np.array([0.0, 1.0], np.float32), 75)[None, None, :].repeat(150, 1)
  crops = np.asarray(patches.scaled_patches(jnp.asarray(stripes), jnp.full((1, 1, 2), 75.5),
                                            8, 2.0))
  assert np.abs(crops - 0.5).max() < 0.05
  assert patches.scaled_patches(jnp.asarray(stripes), jnp.full((1, 1, 2), 75.5), 8, 1.0).std() > 0.4


def test_scaled_patches_refuse_magnification():
  with pytest.raises(ValueError, match='scale must be >= 1'):
    patches.scaled_patches(jnp.zeros((1, 20, 20)), jnp.zeros((1, 1, 2)), 4, 0.5)
