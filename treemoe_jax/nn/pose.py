"""Head-pose estimator (paper section 3.1): a ResNet-50 trunk and three separate angle heads.

The trunk maps a grayscale face to the pooled embedding phi (2048-d at full size). Yaw, pitch and
roll are regressed from phi by separate networks (eq. 1): the paper found that separate heads
regress the angles better than one shared head.

Axes: B batch, H/W image height/width, C channels, F embedding features.

Parameter tree of `PoseEstimator` (ResNet-50 v1: the stride sits on a block's first 1x1 conv, as in
Keras' ResNet50, so pretrained weights map one to one; stages and blocks count from 1):
  trunk/stem_conv, trunk/stem_bn,
  trunk/stage{s}_block{b}/{conv1, bn1, conv2, bn2, conv3, bn3[, proj_conv, proj_bn]},
  {yaw, pitch, roll}_head/{hidden, out}  (only `out` for a linear head).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any

ANGLES = ('yaw', 'pitch', 'roll')


def _batch_norm(train: bool, dtype: Dtype, **kwargs: Any) -> nn.BatchNorm:
  """BatchNorm with torch-style statistics: batch stats in training, running averages otherwise."""
  return nn.BatchNorm(
      use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, **kwargs)


class BottleneckBlock(nn.Module):
  """ResNet v1 bottleneck: 1x1 (strided) -> 3x3 -> 1x1 (x4), plus a shortcut.

  The shortcut is a strided 1x1 projection where the shape changes (first block of a stage).
  """
  width: int
  strides: int = 1
  expansion: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """[B, H, W, C] -> [B, H / strides, W / strides, width * expansion]."""
    features = self.width * self.expansion
    y = nn.Conv(self.width, (1, 1), self.strides, use_bias=False, dtype=self.dtype, name='conv1')(x)
    y = nn.relu(_batch_norm(train, self.dtype, name='bn1')(y))
    y = nn.Conv(self.width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                name='conv2')(y)
    y = nn.relu(_batch_norm(train, self.dtype, name='bn2')(y))
    y = nn.Conv(features, (1, 1), use_bias=False, dtype=self.dtype, name='conv3')(y)
    # Zero scale: each residual branch starts switched off, which eases training from scratch.
    y = _batch_norm(train, self.dtype, scale_init=nn.initializers.zeros, name='bn3')(y)
    if x.shape[-1] != features or self.strides != 1:
      x = nn.Conv(features, (1, 1), self.strides, use_bias=False, dtype=self.dtype,
                  name='proj_conv')(x)
      x = _batch_norm(train, self.dtype, name='proj_bn')(x)
    return nn.relu(x + y)


class ResNetTrunk(nn.Module):
  """ResNet v1 up to the global average pool: [B, H, W, C] -> phi [B, 32 * base_width].

  The defaults are ResNet-50; a tiny `stage_sizes`/`base_width` runs the same code fast on CPU.
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    # Symmetric padding (not 'SAME', which pads (2, 3) here) matches Keras and torchvision.
    x = nn.Conv(self.base_width, (7, 7), 2, padding=((3, 3), (3, 3)), use_bias=False,
                dtype=self.dtype, name='stem_conv')(x)
    x = nn.relu(_batch_norm(train, self.dtype, name='stem_bn')(x))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = BottleneckBlock(
            self.base_width * 2**i, strides=2 if i > 0 and j == 0 else 1, dtype=self.dtype,
            name=f'stage{i + 1}_block{j + 1}')(x, train)
    return jnp.mean(x, axis=(1, 2))


HEAD_OUTPUTS = ('wrap', 'tanh')


class AngleHead(nn.Module):
  """One angle regressor: phi [B, F] -> [B, 1] radians in [-pi, pi], the output wrapped.

  Wrapped (atan2(sin, cos), gradient 1 everywhere), not squashed: the full-size ResNet-50 trained
  from scratch drove a `pi * tanh` head into saturation within a few hundred steps on a GPU,
  where its gradient vanished and the yaw error stayed at ~130 degrees. The output layer starts
  10x smaller than LeCun's (std 0.1 / sqrt(fan-in)), so every head starts near angle 0 and the
  trunk still gets a gradient on the first step.
  """
  hidden_features: int = 256  # 0: a linear head.
  dtype: Dtype = jnp.float32
  # 'tanh': pi * tanh(out), the heads before the fix; kept so that estimators trained with them
  # (their config.json has no `pose.head_output`) still read the angles they learned.
  output: str = 'wrap'

  @nn.compact
  def __call__(self, phi: Array) -> Array:
    if self.output not in HEAD_OUTPUTS:
      raise ValueError(f'unknown head output {self.output!r}; valid: {", ".join(HEAD_OUTPUTS)}')
    if self.hidden_features:
      phi = nn.relu(nn.Dense(self.hidden_features, dtype=self.dtype, name='hidden')(phi))
    small = nn.initializers.variance_scaling(0.01, 'fan_in', 'truncated_normal')
    out = nn.Dense(1, dtype=self.dtype, kernel_init=small, name='out')(phi)
    out = out.astype(jnp.float32)
    if self.output == 'tanh':
      return jnp.pi * jnp.tanh(out)
    return jnp.arctan2(jnp.sin(out), jnp.cos(out))


class PoseEstimator(nn.Module):
  """Omega(I) = Omega_yaw(phi) || Omega_pitch(phi) || Omega_roll(phi), phi = ResNet(I) (eq. 1).

  Maps grayscale images [B, H, W] in [-1, 1] to {'pose': [B, 3] (yaw, pitch, roll) radians in
  [-pi, pi], 'embedding': phi [B, F]}, F = 32 * base_width (2048 for ResNet-50).
  """
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  base_width: int = 64
  head_hidden: int = 256  # 0: linear heads.
  dtype: Dtype = jnp.float32
  head_output: str = 'wrap'  # AngleHead.output

  @nn.compact
  def __call__(self, images: Array, train: bool) -> dict[str, Array]:
    if images.ndim != 3:
      raise ValueError(
          f'PoseEstimator expects grayscale images [B, H, W]; got shape {tuple(images.shape)}.')
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise TypeError(
          f'PoseEstimator expects float images in [-1, 1]; got dtype {images.dtype}.')
    x = images[..., None].astype(self.dtype)  # [B, H, W, C=1]
    phi = ResNetTrunk(self.stage_sizes, self.base_width, dtype=self.dtype, name='trunk')(x, train)
    pose = jnp.concatenate(
        [AngleHead(self.head_hidden, dtype=self.dtype, output=self.head_output,
                   name=f'{angle}_head')(phi)
         for angle in ANGLES], axis=-1)
    return {'pose': pose, 'embedding': phi}
