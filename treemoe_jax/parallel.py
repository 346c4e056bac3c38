"""Data parallelism: the mesh, its shardings and global batches, shared by training and evaluation.

One 1-D mesh of every device of every host, named 'data': batches are sharded on it, states and
parameters replicated, and XLA inserts the collectives (the gradient all-reduce, BatchNorm's
cross-device statistics, the global reductions of a step's metrics).

Axis legend: B global batch (leading axis of every batch array).
"""

import jax
from jax.experimental import multihost_utils
import numpy as np

P = jax.sharding.PartitionSpec
Batch = dict[str, jax.Array]


def make_mesh() -> jax.sharding.Mesh:
  """All devices of all hosts on one 'data' axis (Auto: XLA places the collectives)."""
  return jax.make_mesh((jax.device_count(),), ('data',),
                       axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Rows split over 'data': device d holds rows [d * B/N, (d + 1) * B/N)."""
  return jax.sharding.NamedSharding(mesh, P('data'))


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
  """Every device holds the whole array (parameters, optimiser state, metrics)."""
  return jax.sharding.NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], keys: tuple[str, ...], mesh) -> Batch:
  """One global array per key from this process's rows (jax.make_array_from_process_local_data).

  Nothing is checked here on the host: a check of one host's own rows would make that host stop
  while the others enter the next collective. Finiteness is a global reduction inside the jitted
  step (`tasks.nonfinite_inputs`).
  """
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(local[key]))
          for key in keys}


def to_host(tree):
  """Global arrays -> numpy with every row, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)
