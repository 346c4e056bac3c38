"""The aligner's forward: an image and face boxes in, landmarks in the image's pixels out.

One function for the Aligner and the export (jitted whole there, or serialised with
`jax.export`): the face crop (`treemoe_jax.crop`), s(0) placed in every crop, the model's forward
(`models.forward`), and the landmarks mapped back. No TensorFlow.

Axis legend: N faces, S crop size, P = 68 landmarks, K stages, H, W, C image.
"""

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from treemoe_jax import crop

DEFAULT_BUCKETS = (1, 8, 32)  # faces per call: len(buckets) programs compiled per image shape
# crop-level forward: (images [N, S, S], init_shape [N, P, 2]) -> {shape, stage_shapes, pose?}
CropForward = Callable[..., dict]


def place_mean_shape(mean_shape, count: int):
  """s(0) of `count` crops [N, P, 2]: the run's mean shape, as training placed it (no jitter)."""
  mean_shape = jnp.asarray(mean_shape, jnp.float32)
  return jnp.broadcast_to(mean_shape, (count,) + mean_shape.shape)


def image_forward(crop_forward: CropForward, *, mean_shape: np.ndarray, image_size: int,
                  margin: float):
  """fn(image [H, W, C] 0-255, image_hw [2], boxes [N, 4], weights=None) -> landmarks
  [N, P, 2], stage_landmarks [N, K, P, 2] in image pixels, and pose [N, 3] where the model
  estimates it.

  `image_hw` is the image's true (height, width) when `image` is zero-padded to a shape bucket;
  `weights` [C] how its channels make grey (`crop.channel_weights`; default from C).
  """

  def forward(image, image_hw, boxes, weights=None):
    windows = crop.crop_window(boxes, margin)  # [N, 3]
    faces = crop.face_images(image, windows, image_size, image_hw, weights)  # [N, S, S]
    rows = crop_forward(faces, place_mean_shape(mean_shape, boxes.shape[0]))
    out = {'landmarks': crop.uncrop_landmarks(rows['shape'], windows, image_size),
           'stage_landmarks': crop.uncrop_landmarks(rows['stage_shapes'], windows[:, None],
                                                    image_size)}
    if 'pose' in rows:
      out['pose'] = rows['pose']
    return out

  return forward
