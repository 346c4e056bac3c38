"""Command-line errors: one sentence naming the bad key and its valid siblings, no traceback."""

import pathlib
import subprocess
import sys

import pytest

from configs import default
from treemoe_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL_KEYS = sorted(default.model_config('tree_moe').keys())


def test_override_paths_and_config_spec_are_read_as_absl_reads_them():
  argv = ['--config', 'configs/moe.py:cpu', '--config.model.a=1', '--config.b', '2',
          '--noconfig.c', '--configs.d=1', '--workdir=/tmp/w', '--', '--config.e=1']
  assert cli.flag_value(argv) == 'configs/moe.py:cpu'
  assert cli.flag_value(['--config=a.py', '--config=b.py:x']) == 'b.py:x'
  assert cli.flag_value(['--workdir', 'w']) is None
  assert cli.override_paths(argv) == ['model.a', 'b', 'c']


def test_missing_field_names_the_key_and_the_sorted_valid_keys():
  config = default.get_config('tree_moe', 'cpu')
  assert cli.missing_field(config, 'model.num_stages') is None
  assert cli.missing_field(config, 'augment.flip_prob') is None
  sentence = cli.missing_field(config, 'model.nonsense')
  assert sentence == ("unknown config field --config.model.nonsense: config.model has no "
                      f"'nonsense'; valid: {', '.join(MODEL_KEYS)}")
  assert 'architecture, dtype, freeze_pose, gate_pose' in sentence  # sorted, by hand; no 0.1 aliases
  assert 'cnn_features' not in sentence
  sentence = cli.missing_field(config, 'num_train_stepz')
  assert sentence.startswith("unknown config field --config.num_train_stepz: config has no "
                             "'num_train_stepz' (did you mean 'num_train_steps'?); valid: ")
  assert 'batch_size, checkpoint_every_steps' in sentence
  sentence = cli.missing_field(config, 'model.num_stages.x')
  assert sentence == ('unknown config field --config.model.num_stages.x: config.model.num_stages '
                      "is 2, not a group of fields, so it has no 'x'")
  sentence = cli.missing_field(config, 'model.representation_features[0]')
  assert sentence.startswith('cannot set --config.model.representation_features[0]: '
                             'config.model.representation_features is a tuple; override it whole')


def test_command_line_error_finds_the_first_bad_override_or_config_spec():
  spec = str(ROOT / 'configs/tree_moe.py')
  assert cli.command_line_error(['--config', spec + ':cpu', '--config.model.num_stages=1']) is None
  assert cli.command_line_error(['--workdir=/tmp/w']) is None
  error = cli.command_line_error(['--config', spec + ':cpu', '--config.seed=1',
                                  '--config.pose.widht=3', '--config.model.nonsense=3'])
  assert error.startswith("unknown config field --config.pose.widht: config.pose has no 'widht'")
  error = cli.command_line_error([f'--config={spec}:huge'])
  assert error == (f"--config={spec}:huge: unknown variant 'huge'; valid: full, reproduction, "
                   'reproduction_64, cpu')
  error = cli.command_line_error(['--config', str(ROOT / 'configs/nope.py')])
  assert error.startswith(f'--config={ROOT / "configs/nope.py"}: config file ')
  assert 'does not exist' in error


@pytest.mark.parametrize('script, args, expected', [
    ('train.py', ['--config', 'configs/tree_moe.py:cpu', '--config.model.nonsense=3'],
     ['config.model.nonsense', 'valid: architecture, dtype, freeze_pose',
      'num_stages', 'patch_size']),
    ('train.py', ['--config', 'configs/tree_moe.py:cpu', '--config.num_train_stepz=3'],
     ['config.num_train_stepz', "did you mean 'num_train_steps'", 'batch_size', 'seed']),
    ('train.py', ['--config', 'configs/tree_moe.py:huge'],
     ["unknown variant 'huge'", 'valid: full, reproduction, reproduction_64, cpu']),
    ('eval.py', ['--config', 'configs/moe.py:cpu', '--config.eval_protocl=x'],
     ['config.eval_protocl', "did you mean 'eval_protocol'"]),
])
def test_entry_points_fail_with_one_sentence(tmp_path, script, args, expected):
  result = subprocess.run([sys.executable, script, '--workdir', str(tmp_path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert 'Traceback (most recent call last)' not in result.stderr, result.stderr
  # One line says it all (other lines, if any, are library warnings at import).
  lines = [line for line in result.stderr.splitlines() if line.startswith(f'{script}: ')]
  assert len(lines) == 1, result.stderr
  for text in expected:
    assert text in lines[0], result.stderr
  assert not any(tmp_path.iterdir())  # stopped before doing anything
