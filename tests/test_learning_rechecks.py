"""experiments/learning.py: earlier choices made on the test split, read again on validation."""

import pathlib

from experiments import learning


def _record(output: float, split: str) -> dict:
  return {'curve': [{'step': 2000, 'init': 0.2, 'stages': [0.1, output]}],
          'recorded_config': {'eval_split': split} if split != 'test' else {}}


def test_a_rerun_evaluates_on_validation_with_the_objective_then_in_force():
  command = learning.command('distance_loss', pathlib.Path('/w'), 2000, 500)
  assert command[-1] == '--config.eval_split=validation'
  for pin in ('--config.moe.expert_loss=none', '--config.moe.expert_loss_weight=0',
              '--config.moe.mixture_loss_weight=1', '--config.loss_type=distance'):
    assert pin in command
  assert learning.command('base', pathlib.Path('/w'), 2000, 500, 'test')[-1] == (
      '--config.eval_split=test')
  assert learning.STEPS['small_cosine_2e-3_short'] == 4000
  assert learning.VARIANTS['small_constant'][0] == 'configs/baseline.py:reproduction'


def test_each_choice_is_read_on_both_splits_by_hand():
  # Rows measured before `validation` existed carry no eval_split: they read test.
  assert learning.split_of(_record(0.05, 'test')) == 'test'
  test = {'base': _record(0.080, 'test'), 'stop_gradient': _record(0.060, 'test'),
          'init_jitter_3px': _record(0.064, 'test')}
  validation = {'base': _record(0.050, 'validation'),
                'stop_gradient': _record(0.055, 'validation'),   # reversed: 5.00 -> 5.50
                'init_jitter_3px': _record(0.040, 'validation')}  # holds: 5.00 -> 4.00
  rows = learning.decision_rows({'test': test, 'validation': validation})
  by_rows = {row.split(' | ')[1]: row for row in rows}
  assert by_rows['`base` -> `stop_gradient`'].endswith(
      '| 8.00 -> 6.00 (+25.0%) | 5.00 -> 5.50 (-10.0%) | reversed on validation |')
  assert by_rows['`base` -> `init_jitter_3px`'].endswith(
      '| 8.00 -> 6.40 (+20.0%) | 5.00 -> 4.00 (+20.0%) | holds |')
  assert by_rows['`combined` -> `combined_hidden128`'].endswith(
      '| not run | not run | not re-checked yet |')
  assert len(rows) == len(learning.DECISIONS)
