"""Training end to end on a micro config: learning, data parallelism, crashes, preemption, NaN.

One uninterrupted in-process run is the reference; the 8-device, 2-process and killed-then-resumed
runs are separate processes (JAX fixes its devices at start-up) compared to it.
"""

import json
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
from jax._src import array
import numpy as np
import pytest

import input_pipeline.datasets  # pylint: disable=unused-import (registers the builders)
from treemoe_jax import checkpointing
from treemoe_jax.train import trainer as train
from treemoe_jax.train import record as workdirs

from tests.micro import ROOT, STEPS, finish, micro_config, run_train


def saved_params(workdir, step=None) -> dict:
  """The parameters of a workdir's checkpoint (default: the newest), as numpy arrays."""
  mngr = checkpointing.manager(str(pathlib.Path(workdir) / 'checkpoints'), asynchronous=False)
  state = checkpointing.restore_to_host(mngr, step)
  mngr.close()
  return state['params']


def checkpoint_steps(workdir) -> list[int]:
  directory = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in directory.glob('*') if p.name.isdigit())


@pytest.fixture(scope='module')
def data_dir(micro_data_dir) -> str:
  return micro_data_dir  # conftest.py: prepared once per session, before any race


@pytest.fixture(scope='module')
def reference(data_dir, tmp_path_factory) -> pathlib.Path:
  """An uninterrupted STEPS-step run on one device, in this process."""
  workdir = tmp_path_factory.mktemp('reference')
  train.train_and_evaluate(micro_config(data_dir), str(workdir))
  return workdir


def test_reference_run_writes_everything(reference):
  assert checkpoint_steps(reference)[-1] == STEPS
  config = json.loads((reference / 'config.json').read_text())
  assert config['model']['architecture'] == 'tree_moe' and config['num_train_steps'] == STEPS
  assert np.load(reference / 'mean_shape.npy').shape == (68, 2)
  records = [json.loads(line) for line in (reference / 'metrics.jsonl').read_text().splitlines()]
  train_steps = [r['step'] for r in records if 'train/loss' in r]
  assert train_steps == list(range(2, STEPS + 1, 2))
  last = [r for r in records if 'train/loss' in r][-1]
  for key in ('train/img_per_s', 'train/nme/stage0', 'train/gate_entropy/stage0/regression'):
    assert np.isfinite(last[key])
  assert last['train/learning_rate'] == pytest.approx(1e-3)
  assert len(last['train/expert_usage/stage0/regression']) == 4
  np.testing.assert_allclose(sum(last['train/expert_usage/stage0/regression']), 1.0, rtol=1e-4)
  evals = [r for r in records if 'eval/nme/stage0' in r]
  assert evals and evals[-1]['eval/num_examples'] == 32  # every test face counted once
  assert list(reference.glob('events.out.tfevents.*'))  # TensorBoard


def test_loss_falls(data_dir, tmp_path):
  # Without augmentation the 64 faces are learnable in a hundred steps: the loss (mean
  # per-landmark distance, px) falls by well over a fifth by step 120, and keeps falling. The
  # loop is under test, on the mixture's loss (the paper's objective): the expert-path objective,
  # the default, spreads these 120 steps over 4 regressors each learning alone
  # (tests/test_expert_losses.py trains that one).
  config = micro_config(data_dir, num_train_steps=120, log_every_steps=1,
                        checkpoint_every_steps=120, eval_every_steps=120,
                        **{'augment.translate_std': 0.0, 'augment.scale_std': 0.0,
                           'augment.flip_prob': 0.0, 'augment.box_shift_std': 0.0,
                           'augment.box_scale_std': 0.0, 'moe.expert_loss': 'none',
                           'moe.expert_loss_weight': 0.0, 'moe.mixture_loss_weight': 1.0})
  result = train.train_and_evaluate(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['train/loss'] for r in records if 'train/loss' in r]
  assert len(losses) == 120
  assert np.mean(losses[-20:]) < 0.8 * np.mean(losses[:20]), losses
  assert result['nme/stage0'] < result['nme/init']  # the cascade moved towards the truth


def test_eight_devices_match_one_device(reference, data_dir, tmp_path):
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  out = finish(run_train(tmp_path, data_dir, env=env))
  assert '8 local of 8 devices' in out
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               saved_params(tmp_path), saved_params(reference))


def test_two_processes_match_one(reference, data_dir, tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  processes = [
      run_train(tmp_path, data_dir, extra=(f'--coordinator_address=127.0.0.1:{port}',
                                           '--num_processes=2', f'--process_id={i}'))
      for i in range(2)]
  outs = [finish(p) for p in processes]
  assert 'process 1/2, 1 local of 2 devices' in outs[1]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5),
               saved_params(tmp_path), saved_params(reference))


def test_sigkill_then_resume_is_bitwise_equal(reference, data_dir, tmp_path):
  process = run_train(tmp_path, data_dir)
  deadline = time.time() + 240
  while not any(s >= 4 for s in checkpoint_steps(tmp_path)) and process.poll() is None:
    assert time.time() < deadline, 'no checkpoint in time'
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert checkpoint_steps(tmp_path)[-1] < STEPS, 'finished before the kill: nothing tested'
  out = finish(run_train(tmp_path, data_dir))
  assert 'resumed alignment from step' in out
  jax.tree.map(np.testing.assert_array_equal, saved_params(tmp_path), saved_params(reference))


def test_sigterm_saves_a_restorable_checkpoint(data_dir, tmp_path):
  process = run_train(tmp_path, data_dir, num_train_steps=100_000, checkpoint_every_steps=1000)
  deadline = time.time() + 240
  while not (tmp_path / 'metrics.jsonl').exists():  # compiled and stepping
    assert process.poll() is None and time.time() < deadline
    time.sleep(0.1)
  process.send_signal(signal.SIGTERM)
  out = finish(process, timeout=120)
  assert 'SIGTERM' in out
  (step,) = checkpoint_steps(tmp_path)
  assert 0 < step < 1000  # saved because of the signal, not the schedule
  params = saved_params(tmp_path, step)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))


def test_divergence_stops_before_saving(data_dir, tmp_path):
  # Checked every step; no checkpoint before the blow-up, so the message says none exists.
  config = micro_config(data_dir, learning_rate=1e30, log_every_steps=1,
                        checkpoint_every_steps=1000)
  with pytest.raises(train.NonFiniteError,
                     match=r'(loss|grad norm) is (nan|inf).*No checkpoint exists yet'):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpoint_steps(tmp_path) == []


def test_config_errors(data_dir, tmp_path, monkeypatch):
  result = subprocess.run(
      [sys.executable, str(ROOT / 'train.py'), '--workdir', str(tmp_path),
       '--config', str(ROOT / 'configs/tree_moe.py:cpu'), '--config.num_train_stepz=3'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0 and 'num_train_stepz' in result.stderr
  monkeypatch.setattr(jax, 'device_count', lambda: 8)
  with pytest.raises(ValueError, match='batch_size 12 is not divisible by the 8 devices'):
    train.validate_config(micro_config(data_dir, batch_size=12))


# --- Multi-host: a NaN or a SIGTERM on one host stops every host at the same step. ---


def _two_processes(tmp_path, data_dir, *, env=None, script='train.py', **changes):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return [run_train(tmp_path, data_dir, env=env, script=script, **changes,
                    extra=(f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                           f'--process_id={i}'))
          for i in range(2)]


def test_nan_in_one_hosts_rows_stops_both_hosts(data_dir, tmp_path):
  # Also the single-host case's message and checkpoints: a NaN at step 5 is found at the log
  # step 6, before its checkpoint, so step 4 stays the last good one.
  processes = _two_processes(tmp_path, data_dir, script='tests/poisoned_train.py',
                             env={'POISON_PROCESS': '1', 'POISON_STEP': '5'})
  outs = [p.communicate(timeout=300)[0] for p in processes]
  message = "non-finite values in 'image' at step 5: stopping. The last good checkpoint (step 4)"
  for process, out in zip(processes, outs):
    assert process.returncode != 0, out[-3000:]
    assert message in out, out[-3000:]
  assert checkpoint_steps(tmp_path) == [2, 4]


def test_sigterm_to_one_host_saves_the_same_step_on_both(data_dir, tmp_path):
  processes = _two_processes(tmp_path, data_dir, num_train_steps=100_000,
                             checkpoint_every_steps=1000, log_every_steps=1000)
  deadline = time.time() + 240
  while not (tmp_path / 'metrics.jsonl').exists() and not list(tmp_path.glob('events.*')):
    assert all(p.poll() is None for p in processes) and time.time() < deadline
    time.sleep(0.1)
  time.sleep(2)  # stepping
  processes[0].send_signal(signal.SIGTERM)
  outs = [finish(p, timeout=180) for p in processes]
  saved = [int(re.search(r'SIGTERM: saved step (\d+)', out).group(1)) for out in outs]
  assert saved[0] == saved[1], saved
  assert checkpoint_steps(tmp_path) == [saved[0]]
  assert 0 < saved[0] < 1000  # saved because of the signal, not the schedule


# --- The loop never waits on the host between log steps. ---


def _host_reads_after_each_step(data_dir, workdir, monkeypatch, *, read_loss: bool,
                                steps: int = 8) -> tuple[list[int], dict]:
  """How many device values the training thread reads on the host after each step's dispatch.

  `jax.transfer_guard_device_to_host('disallow')`, under which the loop dispatches, refuses such
  reads on accelerators, but on the CPU an array already lives on the host and the guard stays
  silent; so here every read of an array's value (`float`, `bool`, `device_get`, ...: all go
  through `ArrayImpl._value`) made by the loop's thread is counted instead. `read_loss` adds the
  old loop's per-step `float(loss)`, the control that the count sees such a read.
  """
  events = []
  loop_thread = threading.get_ident()
  value = array.ArrayImpl._value

  def counted(self):
    if threading.get_ident() == loop_thread:  # not orbax's background writers
      events.append('read')
    return value.fget(self)

  original = train._compile

  def counting(step_fn, state, batch, name):
    compiled = original(step_fn, state, batch, name)

    def step(state, batch):
      events.append('step')
      state, metrics = compiled(state, batch)
      if read_loss:
        float(metrics['loss'])
      return state, metrics
    return step

  monkeypatch.setattr(array.ArrayImpl, '_value', property(counted))
  monkeypatch.setattr(train, '_compile', counting)
  # Batches of 12 over the 32 test faces: the evaluation's last batch is padded.
  result = train.train_and_evaluate(
      micro_config(data_dir, batch_size=12, num_train_steps=steps, log_every_steps=4,
                   checkpoint_every_steps=4, eval_every_steps=8), str(workdir))
  monkeypatch.undo()
  first = events.index('step')
  reads = []
  for event in events[first:]:
    if event == 'step':
      reads.append(0)
    else:
      reads[-1] += 1
  return reads, result


def test_steady_state_loop_reads_the_device_only_at_log_steps(data_dir, tmp_path, monkeypatch):
  reads, result = _host_reads_after_each_step(data_dir, tmp_path / 'a', monkeypatch,
                                              read_loss=False)
  assert len(reads) == 8
  assert [i + 1 for i, n in enumerate(reads) if n] == [4, 8], reads
  # Training-time evaluation on a split the batch does not divide: padding masked out.
  assert result['num_examples'] == 32
  assert all(np.isfinite(v) for v in result.values()), result
  # The control: a per-step host read of the loss, as the loop once made, is counted.
  reads, _ = _host_reads_after_each_step(data_dir, tmp_path / 'b', monkeypatch, read_loss=True,
                                         steps=3)
  assert len(reads) == 3 and all(n >= 1 for n in reads), reads


def test_host_reads_only_at_log_checkpoint_and_eval_steps(reference):
  # The reference run logged at steps 2, 4, 6, 8 and read nothing in between (else the guard
  # had raised): its metrics are complete and finite.
  records = [json.loads(line) for line in (reference / 'metrics.jsonl').read_text().splitlines()]
  logged = [r for r in records if 'train/loss' in r]
  assert [r['step'] for r in logged] == [2, 4, 6, 8]
  assert all(r['train/nonfinite/image'] == 0 for r in logged)


# --- A resume keeps the record of what was trained. ---


def _snapshot(path: pathlib.Path) -> dict:
  return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.stat().st_size)
          for p in sorted(path.rglob('*'))}


def test_resume_with_another_model_is_refused_and_writes_nothing(reference, data_dir, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  before = _snapshot(workdir)
  config = micro_config(data_dir, num_train_steps=STEPS + 2, crop_margin=0.3,
                        **{'model.patch_size': 8})
  with pytest.raises(workdirs.ResumeError) as error:
    train.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert 'model.patch_size: 16 -> 8' in message and 'crop_margin: 0.25 -> 0.3' in message
  assert 'num_train_steps' not in message.split('Use a new --workdir')[0]  # safe: not listed
  assert 'new --workdir' in message
  assert _snapshot(workdir) == before


def test_resume_may_change_the_number_of_steps(reference, data_dir, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  mean_shape = np.load(workdir / 'mean_shape.npy')
  train.train_and_evaluate(micro_config(data_dir, num_train_steps=STEPS + 2, log_every_steps=1),
                           str(workdir))
  assert checkpoint_steps(workdir)[-1] == STEPS + 2
  assert json.loads((workdir / 'config.json').read_text())['num_train_steps'] == STEPS + 2
  np.testing.assert_array_equal(np.load(workdir / 'mean_shape.npy'), mean_shape)
