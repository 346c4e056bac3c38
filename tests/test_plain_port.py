"""The package's forward equals benchmarks/plain_port.py's independent rewrite (dense routing).

The plain port computes the expert CNNs as grouped convolutions, the tree gate as products of
sigmoids along each leaf's path and the regressors as einsums: it shares only the parameter tree,
the patch crop and the ResNet module with the package. It is also the speed baseline of
`python -m benchmarks.run_all`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import plain_port
from configs import default
from treemoe_jax.nn import gates
from treemoe_jax.nn import models


@pytest.mark.parametrize('architecture,patch_size', [
    ('baseline', 16), ('softmax_moe', 16), ('pose_tree_moe', 16),
    ('pose_tree_moe', 32)])  # the paper's 32 px: the package's CNNs crop to what they read
def test_plain_port_equals_package_forward(architecture, patch_size):
  config = default.get_config(architecture, 'cpu')
  with config.unlocked():
    config.model.patch_scales = ()  # the paper's patches: what the port covers
    config.model.patch_size = patch_size
  model = models.create(config)
  variables = jax.jit(lambda key: models.init(model, key))(jax.random.key(0))
  # Sharper gates than at initialisation, so that a wrong leaf order would show.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, x: x * 30 if 'gate' in jax.tree_util.keystr(path) else x, variables)
  images = jax.random.uniform(jax.random.key(1), (3, 150, 150), minval=-1, maxval=1)
  init = jnp.full((3, 68, 2), 75.0) + 15 * jax.random.normal(jax.random.key(2), (3, 68, 2))
  expected = jax.jit(lambda v: model.apply(v, images, init)['shape'])(variables)
  got = jax.jit(plain_port.make_forward(model))(variables, images, init)
  assert float(jnp.abs(expected - init).mean()) > 0.1  # the stages moved the shape
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_tree_leaf_probs_by_path_equals_package():
  logits = jax.random.normal(jax.random.key(0), (5, 15)) * 3
  np.testing.assert_allclose(plain_port.tree_leaf_probs(logits), gates.tree_leaf_probs(logits),
                             rtol=1e-5, atol=1e-7)
