"""Names renamed in release 0.2 keep working for one release: the 0.1 size variants ('tiny',
'small') and config fields (`cnn_*`, `mlp_lowering`), in configs, on the command line and in the
config.json of runs trained before."""

import json
import subprocess
import sys
import pathlib

import ml_collections
import pytest

from configs import default
from treemoe_jax import runs
from treemoe_jax.train import record

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('old, new', [('tiny', 'cpu'), ('small', 'reproduction')])
def test_an_old_variant_name_warns_and_gives_the_new_variant(old, new):
  with pytest.warns(DeprecationWarning, match=f"'{old}' is now '{new}'"):
    config = default.get_config('tree_moe', old)
  assert config.variant == new
  assert config.to_json() == default.get_config('tree_moe', new).to_json()


@pytest.mark.parametrize('old, new', list(default.DEPRECATED_FIELDS.items()))
def test_an_old_field_name_is_an_alias_of_the_renamed_field(old, new):
  config = default.get_config('pose_tree_moe', 'cpu')
  assert config.model[old] == config.model[new]
  value = (3, 3, 3, 3, 3) if isinstance(config.model[new], tuple) else (
      7 if isinstance(config.model[new], int) else 'vmap')
  config.model[old] = value  # what --config.model.<old>=... does
  assert config.model[new] == value
  assert f'model.{old}' in runs.RENAMED_FIELDS and runs.RENAMED_FIELDS[f'model.{old}'] == f'model.{new}'


def test_the_command_line_accepts_an_old_field_name():
  code = ('from treemoe_jax import cli\n'
          "assert cli.command_line_error(['--config', 'configs/tree_moe.py:tiny', "
          "'--config.model.cnn_features=(4,4,4,4,4)', '--config.model.mlp_lowering=vmap']) is None\n")
  subprocess.run([sys.executable, '-W', 'ignore::DeprecationWarning', '-c', code], check=True,
                 cwd=ROOT)


def old_config_json() -> dict:
  """A config.json as release 0.1 wrote it: the old field names, no alias, variant 'tiny'."""
  stored = json.loads(default.get_config('pose_tree_moe', 'cpu').to_json())
  for old, new in default.DEPRECATED_FIELDS.items():
    stored['model'][old] = stored['model'].pop(new)
  stored['variant'] = 'tiny'
  return stored


def test_a_run_trained_before_reads_under_the_new_names(tmp_path):
  (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(old_config_json()))
  config = runs.load_config(tmp_path)
  assert config.variant == 'cpu'
  for old, new in default.DEPRECATED_FIELDS.items():
    assert old not in config.model
    assert list(config.model[new]) == list(default.get_config('pose_tree_moe', 'cpu').model[new]) \
        if isinstance(config.model[new], (list, tuple)) else config.model[new] is not None


def test_a_run_trained_before_resumes_with_todays_config(tmp_path):
  (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(old_config_json()))
  (tmp_path / 'checkpoints' / '100').mkdir(parents=True)
  assert record.check_resume(tmp_path, default.get_config('pose_tree_moe', 'cpu'))
  changed = default.get_config('pose_tree_moe', 'cpu')
  changed.model.representation_features = (4, 4, 4, 4, 4)
  with pytest.raises(record.ResumeError, match='model.representation_features'):
    record.check_resume(tmp_path, changed)


def test_canonical_keeps_the_new_field_when_both_are_present():
  stored = {'model': {'cnn_features': [1], 'representation_features': [2]}, 'variant': 'full'}
  assert runs.canonical(stored) == {'model': {'representation_features': [2]}, 'variant': 'full'}
  assert ml_collections.ConfigDict(runs.canonical(stored)).model.representation_features == [2]


def test_the_old_train_and_evaluate_modules_still_answer_with_a_warning():
  code = '''
import warnings
warnings.simplefilter('error', DeprecationWarning)
from treemoe_jax import evaluate, runs, train
from treemoe_jax.evaluate import evaluator
from treemoe_jax.train import trainer
assert evaluate.evaluate_workdir is evaluator.evaluate_workdir  # today's names: no warning
assert train.train_and_evaluate is trainer.train_and_evaluate
for package, module, name in ((evaluate, evaluator, 'make_predict'), (train, trainer,
                                                                        'make_train_step')):
  try:
    getattr(package, name)
    raise SystemExit(name + ' did not warn')
  except DeprecationWarning:
    pass
warnings.simplefilter('ignore', DeprecationWarning)
assert evaluate.make_predict is evaluator.make_predict and evaluate.load_run is runs.load_run
assert train.make_train_step is trainer.make_train_step
try:
  train.no_such_name
  raise SystemExit('no AttributeError')
except AttributeError:
  pass
'''
  subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)
