"""The workdir record and resume rules, on hand-made workdirs (no training)."""

import json
import math

import ml_collections
import pytest

from configs import default
from treemoe_jax.train import record as workdirs


def _config(**changes) -> ml_collections.ConfigDict:
  config = default.get_config('tree_moe', 'cpu')
  with config.unlocked():
    for key, value in changes.items():
      parent, _, leaf = key.rpartition('.')
      setattr(config[parent] if parent else config, leaf, value)
  return config


def _trained_workdir(tmp_path, config) -> None:
  workdirs.record(tmp_path, config)
  (tmp_path / 'checkpoints' / '100').mkdir(parents=True)


def test_differences_list_every_changed_leaf_by_its_dotted_key():
  old = {'a': 1, 'model': {'b': [1, 2], 'c': 'x'}, 'gone': 3}
  new = {'a': 1, 'model': {'b': (1, 3), 'c': 'x'}, 'added': {'d': 0.5}}
  assert workdirs.config_differences(old, new) == [
      ('added.d', '<absent>', 0.5), ('gone', 3, '<absent>'), ('model.b', [1, 2], [1, 3])]
  # A tuple and the list that JSON stored it as are the same value.
  assert workdirs.config_differences(_config(), json.loads(_config().to_json())) == []


def test_no_checkpoint_means_nothing_to_resume(tmp_path):
  workdirs.record(tmp_path, _config())
  (tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp-1').mkdir(parents=True)  # unfinished
  assert not workdirs.check_resume(tmp_path, _config(**{'model.patch_size': 8}))


def test_changes_to_what_is_trained_are_refused_with_every_key(tmp_path):
  _trained_workdir(tmp_path, _config())
  new = _config(**{'model.patch_size': 8, 'dataset': 'synthetic_faces/tiny', 'seed': 3,
                   'batch_size': 32, 'learning_rate': 0.01, 'crop_margin': 0.3,
                   'train_split': 'train[:50%]', 'num_train_steps': 9})
  with pytest.raises(workdirs.ResumeError) as error:
    workdirs.check_resume(tmp_path, new)
  message = str(error.value)
  for line in ("model.patch_size: 16 -> 8", "dataset: 'synthetic_faces/small' -> "
               "'synthetic_faces/tiny'", 'seed: 0 -> 3', 'batch_size: 16 -> 32',
               'learning_rate: 0.001 -> 0.01', 'crop_margin: 0.25 -> 0.3',
               "train_split: 'train' -> 'train[:50%]'"):
    assert line in message, message
  assert 'num_train_steps: ' not in message  # safe, so not among the differences
  assert 'new --workdir' in message


def test_safe_changes_are_allowed(tmp_path):
  _trained_workdir(tmp_path, _config())
  assert workdirs.check_resume(tmp_path, _config(
      num_train_steps=5000, log_every_steps=7, eval_every_steps=9, checkpoint_every_steps=11,
      keep_checkpoints=1, data_dir='/elsewhere'))


def test_a_constant_run_may_resume_with_a_decay_that_starts_after_its_last_checkpoint(tmp_path):
  _trained_workdir(tmp_path, _config())  # constant 1e-3, checkpoint at step 100
  # Steps 0-99 keep their rate: the decay begins at 300 - 200 = step 100.
  assert workdirs.check_resume(tmp_path, _config(lr_schedule='wsd', decay_steps=200,
                                                 num_train_steps=300))


@pytest.mark.parametrize('changes', [
    dict(lr_schedule='wsd', decay_steps=250, num_train_steps=300),  # decays from step 50
    dict(lr_schedule='wsd', warmup_steps=10, decay_steps=100, num_train_steps=300),
    dict(lr_schedule='cosine', num_train_steps=300),
    dict(lr_schedule='wsd', decay_steps=100, num_train_steps=300, learning_rate=2e-3),
])
def test_a_schedule_change_that_rewrites_trained_steps_is_refused(tmp_path, changes):
  _trained_workdir(tmp_path, _config())
  with pytest.raises(workdirs.ResumeError, match="lr_schedule: 'constant' -> "):
    workdirs.check_resume(tmp_path, _config(**changes))


def test_checkpoints_without_a_record_are_refused(tmp_path):
  (tmp_path / 'checkpoints' / '3').mkdir(parents=True)
  with pytest.raises(workdirs.ResumeError, match='no config.json'):
    workdirs.check_resume(tmp_path, _config())


def test_the_committee_lowering_may_change_on_resume(tmp_path):
  # How a committee is computed, not what: a run may resume on another backend.
  _trained_workdir(tmp_path, _config(**{'model.representation_lowering': 'merged',
                                        'model.representation_conv_impl': 'im2col'}))
  assert workdirs.check_resume(tmp_path, _config(**{'model.representation_lowering': 'vmap',
                                                    'model.representation_conv_impl': 'xla'}))


def test_a_run_stored_before_a_key_existed_resumes_at_that_keys_old_behaviour(tmp_path):
  stored = json.loads(_config().to_json())
  del stored['model']['dtype'], stored['model']['representation_lowering']  # as a run of an older version
  workdirs.record(tmp_path, ml_collections.ConfigDict(stored))
  (tmp_path / 'checkpoints' / '100').mkdir(parents=True)
  assert workdirs.check_resume(tmp_path, _config())  # float32, as those runs computed
  with pytest.raises(workdirs.ResumeError, match="model.dtype: 'float32' -> 'bfloat16'"):
    workdirs.check_resume(tmp_path, _config(**{'model.dtype': 'bfloat16'}))


def test_pose_heads_stored_before_the_field_resume_as_the_tanh_heads_they_learned(tmp_path):
  stored = json.loads(_config().to_json())
  del stored['pose']['head_output']
  workdirs.record(tmp_path, ml_collections.ConfigDict(stored))
  (tmp_path / 'checkpoints' / '100').mkdir(parents=True)
  # train.py adopts the pose checkpoint's heads: 'tanh' for such an estimator.
  assert workdirs.check_resume(tmp_path, _config(**{'pose.head_output': 'tanh'}))
  with pytest.raises(workdirs.ResumeError, match="pose.head_output: 'tanh' -> 'wrap'"):
    workdirs.check_resume(tmp_path, _config(**{'pose.head_output': 'wrap'}))


def test_a_run_from_before_the_moe_objectives_resumes_only_with_the_papers(tmp_path):
  """0.2's runs trained on the mixture's loss alone: resuming one under today's default
  objective would train something else, so it is refused with each key; the paper's resumes."""
  stored = json.loads(_config().to_json())
  del stored['moe']
  workdirs.record(tmp_path, ml_collections.ConfigDict(stored))
  (tmp_path / 'checkpoints' / '100').mkdir(parents=True)
  with pytest.raises(workdirs.ResumeError) as refused:
    workdirs.check_resume(tmp_path, _config())
  for change in ("moe.expert_loss: 'none' -> 'weighted'", 'moe.expert_loss_weight: 0.0 -> 1.0',
                 'moe.mixture_loss_weight: 1.0 -> 0.0'):
    assert change in str(refused.value)
  papers = {f'moe.{k}': v for k, v in dict(expert_loss='none', expert_loss_weight=0.0,
                                            mixture_loss_weight=1.0).items()}
  assert workdirs.check_resume(tmp_path, _config(**papers))


def test_trailing_unit_patch_scales_are_the_same_model(tmp_path):
  # A stage without a scale cuts its patches at 1: (2, 1) and (2,) are one run; (2, 2) is not.
  _trained_workdir(tmp_path, _config(**{'model.patch_scales': (2.0, 1.0)}))
  assert workdirs.check_resume(tmp_path, _config(**{'model.patch_scales': (2.0,)}))
  with pytest.raises(workdirs.ResumeError, match='model.patch_scales'):
    workdirs.check_resume(tmp_path, _config(**{'model.patch_scales': (2.0, 2.0)}))


def _cosine_rate(step, total, rate=1e-3):
  """optax's cosine decay to 0 at `total`, no warm-up, by hand."""
  return 0.5 * rate * (1 + math.cos(math.pi * min(step, total) / total))


def test_a_longer_cosine_run_is_refused_with_the_rates_it_would_change(tmp_path):
  # Resumed to 2000, a cosine that ended at 1000 re-heats: step 999 trained at 2.5e-9, step 1000
  # would train at half the peak rate.
  config = _config(lr_schedule='cosine', num_train_steps=1000)
  workdirs.record(tmp_path, config)
  (tmp_path / 'checkpoints' / '1000').mkdir(parents=True)
  with pytest.raises(workdirs.ResumeError) as error:
    workdirs.check_resume(tmp_path, _config(lr_schedule='cosine', num_train_steps=2000))
  message = str(error.value)
  assert 'num_train_steps 1000 -> 2000 would change the learning rates of the 1000 steps' in message
  assert f'Step 999 trained at {_cosine_rate(999, 1000):.3g}' in message  # 2.47e-09
  assert f'step 1000 would now train at {_cosine_rate(1000, 2000):.3g}' in message  # 0.0005
  assert 'where the run planned 0' in message and 'num_train_steps=1000' in message
  # The same length resumes (an interrupted run), and a shorter one rewrites the past too.
  assert workdirs.check_resume(tmp_path, _config(lr_schedule='cosine', num_train_steps=1000))
  with pytest.raises(workdirs.ResumeError, match='1000 -> 1500 would change'):
    workdirs.check_resume(tmp_path, _config(lr_schedule='cosine', num_train_steps=1500))


def test_a_wsd_run_may_grow_until_its_decay_has_begun(tmp_path):
  config = _config(lr_schedule='wsd', decay_steps=200, num_train_steps=1000)
  workdirs.record(tmp_path, config)
  (tmp_path / 'checkpoints' / '700').mkdir(parents=True)  # still at the stable rate (to 800)
  assert workdirs.check_resume(tmp_path, _config(lr_schedule='wsd', decay_steps=200,
                                                 num_train_steps=3000))
  (tmp_path / 'checkpoints' / '900').mkdir(parents=True)  # halfway down the decay
  with pytest.raises(workdirs.ResumeError, match='1000 -> 3000 would change'):
    workdirs.check_resume(tmp_path, _config(lr_schedule='wsd', decay_steps=200,
                                            num_train_steps=3000))
  # A constant rate may grow freely (the README's chunks).
  constant = tmp_path / 'constant'
  _trained_workdir(constant, _config())
  assert workdirs.check_resume(constant, _config(num_train_steps=100_000))
