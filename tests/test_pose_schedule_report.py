"""experiments/pose_schedule.py reads the schedule a run followed from its logged rates."""

import numpy as np
import pytest

from experiments import pose_schedule


def _records(rates):
  return [{'step': 100 * (i + 1), 'train/learning_rate': float(r)} for i, r in enumerate(rates)]


def test_the_schedule_in_words_comes_from_the_logged_rates():
  assert pose_schedule.schedule_words(_records([1e-3] * 5)) == 'constant 0.001'
  # Constant until step 300, then a linear decay to 0 at step 500 (a run resumed with 'wsd').
  assert pose_schedule.schedule_words(_records([1e-3, 1e-3, 1e-3, 5e-4, 0.0])) == (
      '0.001, decay from step 300 to 0 at 500')
  warm_then_cosine = [1e-3, 2e-3, 2e-3 * (1 + np.cos(np.pi / 3)) / 2, 0.0]
  assert pose_schedule.schedule_words(_records(warm_then_cosine)) == (
      'warm-up to 0.002 by step 200, decay from step 200 to 0 at 400')


def test_curves_and_a_missing_or_foreign_workdir(tmp_path):
  records = [{'step': 100, 'train/loss': 1.0},
             {'step': 200, 'eval/mae_deg/yaw': 5.0, 'eval/mae_deg/pitch': 4.0,
              'eval/mae_deg/roll': 3.0}]
  assert pose_schedule.mae_curve(records) == [{'step': 200, 'yaw': 5.0, 'pitch': 4.0,
                                               'roll': 3.0}]
  with pytest.raises(ValueError, match='pose estimator'):
    pose_schedule.mae_curve(records[:1])
  with pytest.raises(FileNotFoundError, match='metrics.jsonl'):
    pose_schedule.read_metrics(tmp_path)
