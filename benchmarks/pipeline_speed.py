"""Prints the whole training pipeline's images/s on this machine, after warm-up.

Reads, decodes, crops, augments and batches `synthetic_faces` (prepared on first use):

  python benchmarks/pipeline_speed.py [--config=small] [--batch_size=32] [--data_dir=DIR]
"""

import pathlib
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # Runs from a checkout.

import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

_CONFIG = flags.DEFINE_string('config', 'small', 'synthetic_faces builder config.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data dir (default: TFDS default).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Global batch size (one process).')
_WARMUP = flags.DEFINE_integer('warmup', 10, 'Batches before timing: fills shuffle buffer, traces.')
_STEPS = flags.DEFINE_integer('steps', 50, 'Timed batches.')


def main(argv: list[str]) -> None:
  del argv
  tfds.disable_progress_bar()
  pipeline.run_ops_on_one_thread()  # as train.py does
  start = time.perf_counter()
  builder = pipeline.get_builder(f'synthetic_faces/{_CONFIG.value}', data_dir=_DATA_DIR.value)
  mean_shape = pipeline.mean_shape(builder)
  print(f'dataset and mean shape ready in {time.perf_counter() - start:.1f} s: {builder.data_dir}')
  batches = pipeline.train_dataset(
      builder, global_batch_size=_BATCH_SIZE.value, seed=0, mean_shape=mean_shape
  ).as_numpy_iterator()
  for _ in range(_WARMUP.value):
    next(batches)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    next(batches)
  seconds = time.perf_counter() - start
  print(f'training pipeline, batch {_BATCH_SIZE.value}: '
        f'{_STEPS.value * _BATCH_SIZE.value / seconds:.0f} images/s '
        f'({1e3 * seconds / _STEPS.value:.1f} ms/batch)')


if __name__ == '__main__':
  app.run(main)
