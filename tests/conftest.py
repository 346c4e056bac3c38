"""Shared test set-up.

Tests run on JAX's default PRNG, the one `train.py` uses: bitwise resume and device-count
equality must hold for what users run, not for a faster test-only generator.
"""

import atexit
import fcntl
import os
import pathlib
import shutil
import tempfile

import pytest
from hypothesis import settings

# Fuzz tests draw the same examples on every run: CI is not where a new failure should first
# appear by chance (run with --hypothesis-profile=explore to search afresh).
settings.register_profile('ci', derandomize=True, database=None, deadline=None)
settings.register_profile('explore', database=None, deadline=None)
settings.load_profile('ci')


def _share_compiled_programs() -> None:
  """One persistent compilation cache for the session, and the train.py processes it starts.

  The suite spends most of its time compiling, and many tests build the same tiny model afresh
  (a new module, a new jit): XLA then compiles a program it compiled minutes before. The cache
  is keyed on the program and the XLA flags, so a hit runs exactly what a fresh compile would.
  The directory is new per session unless JAX_COMPILATION_CACHE_DIR names one.
  """
  if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    path = tempfile.mkdtemp(prefix='treemoe_jax_cache_')
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ['JAX_COMPILATION_CACHE_DIR'] = path
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
  import jax  # pylint: disable=g-import-not-at-top (after the environment it reads)
  jax.config.update('jax_compilation_cache_dir', os.environ['JAX_COMPILATION_CACHE_DIR'])
  jax.config.update('jax_persistent_cache_min_compile_time_secs',
                    float(os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS']))
  jax.config.update('jax_persistent_cache_min_entry_size_bytes',
                    int(os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES']))


_share_compiled_programs()

MICRO_STEPS = 10


def _once_per_session(tmp_path_factory, name: str, make) -> pathlib.Path:
  """`make(path)` run once per test session, even across pytest-xdist's worker processes.

  The suite runs on 2 workers (pyproject's addopts): the first worker to ask builds the folder
  under the session's shared temporary root while holding a lock; the others wait for it and
  read the same folder. Without xdist it is an ordinary session fixture.
  """
  if 'PYTEST_XDIST_WORKER' not in os.environ:
    path = tmp_path_factory.mktemp(name)
    make(path)
    return path
  root = tmp_path_factory.getbasetemp().parent  # one per session, shared by its workers
  path, done = root / name, root / f'{name}.done'
  with open(root / f'{name}.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir()
      make(path)
      done.touch()
  return path


@pytest.fixture(scope='session')
def micro_data_dir(tmp_path_factory) -> str:
  """The tiny synthetic face set, rendered once per session (read-only for tests)."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
  return str(_once_per_session(
      tmp_path_factory, 'tfds',
      lambda path: pipeline.get_builder('synthetic_faces/tiny', data_dir=str(path))))


@pytest.fixture(scope='session')
def micro_runs(micro_data_dir, tmp_path_factory) -> dict[str, pathlib.Path]:
  """Two trained micro workdirs, tree_moe and pose_tree_moe (tests must not write into them)."""
  from tests.micro import micro_config  # pylint: disable=g-import-not-at-top
  from treemoe_jax.train import trainer as train  # pylint: disable=g-import-not-at-top

  def trained(root, name, **changes):
    config = micro_config(micro_data_dir, num_train_steps=MICRO_STEPS,
                          checkpoint_every_steps=MICRO_STEPS, eval_every_steps=MICRO_STEPS,
                          log_every_steps=MICRO_STEPS, **changes)
    train.train_and_evaluate(config, str(root / name))

  def both(root):
    trained(root, 'tree_moe')
    # A one-block pose ResNet, pre-trained for 4 steps: Fig. 5 needs a pose, not a good one.
    trained(root, 'pose_tree_moe', **{
        'model.architecture': 'pose_tree_moe', 'model.num_representation_experts': 4,
        'model.representation_gate_depth': 2, 'pose_train_steps': 4, 'pose.stage_sizes': (1,),
        'pose.base_width': 4, 'pose.head_hidden': 8})

  root = _once_per_session(tmp_path_factory, 'micro_runs', both)
  return {'tree_moe': root / 'tree_moe', 'pose_tree_moe': root / 'pose_tree_moe'}
