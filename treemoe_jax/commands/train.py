"""Trains a face aligner or head-pose estimator (`treemoe_jax.train.train_and_evaluate`).

  python train.py --config configs/pose_tree_moe.py:cpu --workdir /tmp/ptm [--config.x=y ...]

Multi-host: pass --coordinator_address/--num_processes/--process_id, or --distributed to let
jax.distributed.initialize() read them from the cluster's environment (TPU pods, SLURM).
"""

import logging as std_logging

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from input_pipeline import pipeline
from treemoe_jax import cli
from treemoe_jax.train import trainer as train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/<exp>.py[:variant]',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Checkpoints, metrics and config.json go here.')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'jax.distributed.initialize() from env.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0-based.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietOrbax(std_logging.Filter):
  """Orbax narrates every save at INFO; keep its warnings, drop the narration."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or 'orbax' not in record.pathname


def main(argv):
  logging.get_absl_handler().addFilter(_QuietOrbax())
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _COORDINATOR.value:
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value)
  elif _DISTRIBUTED.value:
    jax.distributed.initialize()
  logging.info('process %d/%d, %d local of %d devices: %s', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)
  pipeline.run_ops_on_one_thread()  # before TensorFlow starts: tf.data's map is the parallelism
  results = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  logging.info('done; evaluation on %s: %s', _CONFIG.value.eval_split,
               '  '.join(f'{k} {v:.4f}' for k, v in sorted(results.items())))


def run():
  """The console script `treemoe-train`."""
  app.run(main, flags_parser=cli.flags_parser)


if __name__ == '__main__':
  run()
