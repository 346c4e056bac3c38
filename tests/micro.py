"""The micro training run the tests share: its config, its command line, and a train.py process.

Kept out of the test modules so that conftest.py and several tests import it without importing
each other.
"""

import os
import pathlib
import subprocess
import sys

from configs import default

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8
# The micro cascade: the tiny architecture at 64x64, one stage, 16x16 patches, 4 regressors.
OVERRIDES = {
    'dataset': 'synthetic_faces/tiny', 'batch_size': 8, 'num_train_steps': STEPS,
    'log_every_steps': 2, 'checkpoint_every_steps': 2, 'eval_every_steps': STEPS,
    'model.image_size': 64, 'model.patch_size': 16, 'model.representation_features': (4, 4, 4, 4, 4),
    'model.num_stages': 1,
    'model.num_regression_experts': 4, 'model.regression_gate_depth': 2,
    'model.regression_hidden': 8,
}


def micro_config(data_dir: str, **changes):
  config = default.get_config('tree_moe', 'cpu')
  for key, value in (OVERRIDES | {'data_dir': data_dir} | changes).items():
    parent, _, leaf = key.rpartition('.')
    setattr(config[parent] if parent else config, leaf, value)
  return config


def flags(data_dir: str, **changes) -> list[str]:
  """The same micro config as command-line overrides of configs/tree_moe.py:cpu."""
  out = ['--config', str(ROOT / 'configs/tree_moe.py:cpu')]
  for key, value in (OVERRIDES | {'data_dir': data_dir} | changes).items():
    out.append(f'--config.{key}={value}')
  return out


def run_train(workdir, data_dir, *, env=None, extra=(), script='train.py', **changes
              ) -> subprocess.Popen:
  env = {**os.environ, **(env or {})}
  env.pop('JAX_DEFAULT_PRNG_IMPL', None)  # the default generator, as users run it
  return subprocess.Popen(
      [sys.executable, str(ROOT / script), '--workdir', str(workdir),
       *flags(data_dir, **changes), *extra],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
  out, _ = process.communicate(timeout=timeout)
  assert process.returncode == 0, out[-3000:]
  return out
