"""Runs an untrained model of a config on one batch and prints what the forward returns.

  python -m treemoe_jax.demo --config configs/pose_tree_moe.py:tiny

A smoke test of the whole forward (pose estimator, patches, both committees, K stages) until
training lands.
"""

import time

from absl import app
from ml_collections import config_flags
import jax
import jax.numpy as jnp
import numpy as np

from treemoe_jax import models

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/<exp>.py[:variant]',
                                          lock_config=True)


def _batch(batch_size: int, image_size: int, num_landmarks: int, seed: int = 0):
  """Noise images and a jittered centred shape: the forward needs shapes, not faces."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (batch_size, image_size, image_size)).astype(np.float32)
  shape = image_size / 2 + rng.normal(0, image_size / 6, (batch_size, num_landmarks, 2))
  return jnp.asarray(images), jnp.asarray(shape, jnp.float32)


def main(argv) -> None:
  del argv
  config = _CONFIG.value
  model = models.create(config)
  images, init_shape = _batch(4, config.model.image_size, config.model.num_landmarks)
  start = time.perf_counter()
  variables = jax.jit(model.init)(jax.random.key(config.seed), images, init_shape)
  out = jax.block_until_ready(jax.jit(model.apply)(variables, images, init_shape))
  params = sum(x.size for x in jax.tree.leaves(variables['params']))
  print(f'{config.model.architecture} ({config.variant}): {params:,} parameters, '
        f'{config.model.num_stages} stages, compiled and ran in {time.perf_counter() - start:.1f} s')
  for key, value in jax.tree_util.tree_leaves_with_path(out):
    print(f'  {jax.tree_util.keystr(key):28s} {str(value.shape):18s} '
          f'mean {float(jnp.mean(value)):9.4f}  std {float(jnp.std(value)):9.4f}')
  moved = jnp.linalg.norm(out['shape'] - init_shape, axis=-1).mean()
  print(f'  untrained cascade moved landmarks by {float(moved):.2f} px on average')


if __name__ == '__main__':
  app.run(main)
