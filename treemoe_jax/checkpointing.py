"""Checkpoints of the train state *and* the data position, so a resumed run sees the same data.

The input pipeline is a pure function of (seed, step), so the data position is the step (kept
with the seed and batch size that it counts in). Saves are asynchronous; a run killed mid-save
leaves an `N.orbax-checkpoint-tmp` folder that restore ignores and the next start removes.
"""

from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(directory: str, *, keep: int = 3, asynchronous: bool = True,
            create: bool = True) -> ocp.CheckpointManager:
  """`create=False` for readers: a restore never makes (or cleans) folders in a workdir."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=create, cleanup_tmp_directories=create,
      enable_async_checkpointing=asynchronous)
  handlers = {'state': ocp.StandardCheckpointHandler(), 'data': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data: dict) -> bool:
  """Starts saving `state` and the data position `data` (JSON) at `step`; False if it exists."""
  return mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  data=ocp.args.JsonSave(data)), force=True)


def restore(mngr: ocp.CheckpointManager, abstract_state: Any, step: int | None = None
            ) -> tuple[Any, dict] | None:
  """(state, data) of `step` (default: the newest), laid out like `abstract_state`; None if none."""
  step = mngr.latest_step() if step is None else step
  if step is None:
    return None
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored['state'], restored['data']


def restore_to_host(mngr: ocp.CheckpointManager, step: int | None = None) -> Any:
  """The state of `step` (default: the newest) as numpy arrays, whatever devices wrote it.

  For reading parts of another run (a trained pose estimator, an evaluation): the arrays are
  restored onto this process's first device, not into the writer's device layout.
  """
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f'no finished checkpoint in {mngr.directory}')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        mngr.item_metadata(step)['state'])
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return jax.device_get(restored['state'])


def abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of `tree`, the target a restore fills."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
