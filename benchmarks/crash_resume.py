"""Crash safety, measured: SIGKILL a tiny run at random moments, resume it, compare bitwise.

  python benchmarks/crash_resume.py [--kills 5] [--seed 0] [--workdir /tmp/crash_resume]

Trains a micro cascade (the tests' size) once without interruption, then, per kill, starts the
same run, kills it with SIGKILL at a random moment of its training (one kill lands while an
asynchronous checkpoint is being written: an `N.orbax-checkpoint-tmp*` folder on disk), restarts
it until it finishes and checks that its final parameters equal the uninterrupted run's bit for
bit. Prints one line per kill and the tally; exits 1 if any resumed run differs.
"""

import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from treemoe_jax import checkpointing  # pylint: disable=g-import-not-at-top

STEPS = 24
OVERRIDES = {
    'dataset': 'synthetic_faces/tiny', 'batch_size': 8, 'num_train_steps': STEPS,
    'log_every_steps': 4, 'checkpoint_every_steps': 2, 'eval_every_steps': STEPS,
    'model.image_size': 64, 'model.patch_size': 16, 'model.cnn_features': (4, 4, 4, 4, 4),
    'model.num_regression_experts': 4, 'model.regression_gate_depth': 2,
    'model.regression_hidden': 8,
}


def start(workdir: pathlib.Path, data_dir: str) -> subprocess.Popen:
  command = [sys.executable, str(ROOT / 'train.py'), '--workdir', str(workdir), '--config',
             str(ROOT / 'configs/tree_moe.py:tiny'), f'--config.data_dir={data_dir}']
  command += [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


def finish(process: subprocess.Popen) -> None:
  out, _ = process.communicate(timeout=900)
  if process.returncode != 0:
    raise RuntimeError(f'a training run failed:\n{out[-3000:]}')


def steps(workdir: pathlib.Path) -> list[int]:
  directory = workdir / 'checkpoints'
  return sorted(int(p.name) for p in directory.glob('*') if p.name.isdigit()) \
      if directory.is_dir() else []


def saving(workdir: pathlib.Path) -> bool:
  return any('tmp' in p.name for p in (workdir / 'checkpoints').glob('*')) \
      if (workdir / 'checkpoints').is_dir() else False


def params(workdir: pathlib.Path) -> list[np.ndarray]:
  import jax  # pylint: disable=g-import-not-at-top
  mngr = checkpointing.manager(str(workdir / 'checkpoints'), asynchronous=False)
  state = checkpointing.restore_to_host(mngr)
  mngr.close()
  return jax.tree.leaves(state['params'])


def kill_once(workdir: pathlib.Path, data_dir: str, *, delay: float | None) -> str:
  """Kills a run `delay` s after its first checkpoint (None: during a save); returns what it hit."""
  process = start(workdir, data_dir)
  deadline = time.time() + 600
  while not steps(workdir):
    if process.poll() is not None or time.time() > deadline:
      raise RuntimeError('the run ended or stalled before its first checkpoint')
    time.sleep(0.01)
  if delay is None:
    while not saving(workdir) and process.poll() is None:
      time.sleep(0.001)
    moment = 'during an asynchronous save'
  else:
    time.sleep(delay)
    moment = f'{delay:.2f} s after the first checkpoint'
  process.send_signal(signal.SIGKILL)
  process.wait()
  hit = f'{moment}; newest finished checkpoint: step {steps(workdir)[-1]}'
  return hit + (' (a half-written one was on disk)' if saving(workdir) else '')


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--kills', type=int, default=5)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--workdir', default='/tmp/crash_resume')
  args = parser.parse_args()
  root = pathlib.Path(args.workdir)
  shutil.rmtree(root, ignore_errors=True)
  data_dir = str(root / 'tfds')
  reference = root / 'reference'
  process = start(reference, data_dir)
  while not steps(reference) and process.poll() is None:
    time.sleep(0.01)
  first_checkpoint = time.time()
  while STEPS not in steps(reference) and process.poll() is None:
    time.sleep(0.01)
  duration = time.time() - first_checkpoint  # the window a kill can land in
  finish(process)
  expected = params(reference)
  print(f'reference: {STEPS} steps; {duration:.1f} s from its first checkpoint to its end',
        flush=True)
  rng = np.random.default_rng(args.seed)
  equal = tested = 0
  for i in range(args.kills):
    workdir = root / f'killed{i}'
    # Kill moments spread over the run's training time; kill 0 lands inside a save.
    for attempt in range(3):  # a kill that lands after the last checkpoint tests nothing
      delay = None if i == 0 else float(rng.uniform(0.0, 0.9 * duration))
      hit = kill_once(workdir, data_dir, delay=delay)
      if steps(workdir)[-1] < STEPS:
        break
      print(f'kill {i}: {hit}: the run had already finished; drawing again', flush=True)
      shutil.rmtree(workdir)
    else:
      continue
    finish(start(workdir, data_dir))
    tested += 1
    same = all(np.array_equal(a, b) for a, b in zip(params(workdir), expected))
    equal += same
    print(f'kill {i}: {hit}; resumed to step {STEPS}: '
          f'{"bitwise equal" if same else "DIFFERENT"}', flush=True)
  print(f'tally: {equal} of {tested} killed runs resumed bitwise equal to the uninterrupted run '
        f'({args.kills - tested} kills came after the end)', flush=True)
  return 0 if equal == tested > 0 else 1


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())
