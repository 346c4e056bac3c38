"""On an accelerator: the training step dispatches with no device-to-host transfer between logs.

  python benchmarks/transfer_guard_check.py

The loop in `treemoe_jax.train` dispatches each step under
`jax.transfer_guard_device_to_host('disallow')`. On the CPU an array already lives on the host
and the guard stays silent (the tests count reads instead); on a GPU or TPU it refuses a host
read. This runs the same dispatch (the real jitted step, the real global batches) for a few
steps, then the control: the old loop's per-step `float(loss)`, which the guard must refuse.
TF-free, so it runs on accelerator machines without TensorFlow. Prints one line per check and
exits 1 if either goes the wrong way.
"""

import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import train_speed  # pylint: disable=g-import-not-at-top
from configs import default  # pylint: disable=g-import-not-at-top
from treemoe_jax import parallel  # pylint: disable=g-import-not-at-top
from treemoe_jax.train import tasks  # pylint: disable=g-import-not-at-top
from treemoe_jax.train import trainer as train  # pylint: disable=g-import-not-at-top

STEPS = 5


def main() -> int:
  config = default.get_config('pose_tree_moe', 'tiny')
  task = tasks.alignment_task(config)
  mesh = parallel.make_mesh()
  state = train.create_train_state(task, train.make_optimizer(config), mesh, jax.random.key(0))
  step = train.make_train_step(task, mesh)
  rng = np.random.default_rng(0)
  local = [train_speed.random_batch(config, 8 * jax.device_count(), rng) for _ in range(STEPS)]
  step = step.lower(state, parallel.global_batch(local[0], task.batch_keys, mesh)).compile()
  print(f'device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), '
        f'jax {jax.__version__}', flush=True)
  pending = []
  with jax.transfer_guard_device_to_host('disallow'):  # what the loop does between log steps
    for batch in local:
      state, metrics = step(state, parallel.global_batch(batch, task.batch_keys, mesh))
      pending.append(metrics)
  problem = train.first_unhealthy(list(enumerate(pending, 1)))  # the log step's one read
  print(f'{STEPS} steps dispatched under the guard, then read at the log step: '
        f'{"unhealthy: " + problem if problem else "healthy"}', flush=True)
  ok = problem is None
  refused = False
  try:
    with jax.transfer_guard_device_to_host('disallow'):
      state, metrics = step(state, parallel.global_batch(local[0], task.batch_keys, mesh))
      float(metrics['loss'])  # the old loop's per-step read
  except Exception as e:  # pylint: disable=broad-except (jax raises a plain error)
    refused = 'transfer' in str(e).lower()
    print(f'control, float(loss) under the guard: refused ({str(e).splitlines()[0][:100]})')
  if not refused:
    print('control, float(loss) under the guard: NOT refused (the guard is silent on '
          f'{jax.devices()[0].platform})')
  return 0 if ok and (refused or jax.devices()[0].platform == 'cpu') else 1


if __name__ == '__main__':
  sys.exit(main())
