"""The reproduction report's computed comparisons, on hand-made results (no training)."""

import argparse
import json
import math

import numpy as np
import pytest

from experiments import reproduce


def _result(errors_by_view: dict, pose_mae=None) -> dict:
  """A results.json shaped like eval.py's: per-view per-face errors (fractions of the box)."""
  def subset(view):
    record = {'nme': float(np.mean(errors_by_view[view])), 'errors': list(errors_by_view[view])}
    if pose_mae:
      record['pose_mae_deg'] = pose_mae
    return record
  return {'protocols': {
      'synthetic_table1': {'subsets': {v: subset(v) for v in reproduce.TABLE1_VIEWS}},
      'synthetic_table3': {'subsets': {v: subset(v) for v in reproduce.TABLE3_VIEWS[:3]}}}}


def test_paired_difference_is_the_face_by_face_mean_and_standard_error():
  rng = np.random.default_rng(0)
  a_errors, b_errors = rng.uniform(0.01, 0.05, 50), rng.uniform(0.01, 0.05, 50)
  views = dict.fromkeys(reproduce.ALL_VIEWS)
  a = _result({v: a_errors for v in views})
  b = _result({v: b_errors for v in views})
  mean, error = reproduce.paired_difference(a, b, 'occluded')
  diffs = [100 * (x - y) for x, y in zip(a_errors, b_errors)]  # brute force, in % points
  expected_mean = sum(diffs) / len(diffs)
  expected_sd = math.sqrt(sum((d - expected_mean) ** 2 for d in diffs) / (len(diffs) - 1))
  assert mean == pytest.approx(expected_mean, rel=1e-9)
  assert error == pytest.approx(expected_sd / math.sqrt(len(diffs)), rel=1e-9)


def test_paired_rows_mark_differences_beyond_two_standard_errors():
  views = reproduce.ALL_VIEWS
  base = np.linspace(0.02, 0.04, 40)
  jitter = np.tile([0.001, -0.001], 20)
  better = base - 0.005 + jitter  # 0.5 points better on every face, +-0.1: significant
  level = better + 2 * jitter  # tree - softmax = -+0.2 per face, mean 0: not significant
  results = {('tree_moe', 0): _result(dict.fromkeys(views, better)),
             ('baseline', 0): _result(dict.fromkeys(views, base)),
             ('softmax_moe', 0): _result(dict.fromkeys(views, level))}
  rows = reproduce.paired_rows(results, seed=0)
  by_pair = {row.split(' (')[0].strip('| '): row.split(') |')[1] for row in rows}
  assert set(by_pair) == {'tree_moe - baseline', 'tree_moe - softmax_moe'}  # pairs that ran
  assert by_pair['tree_moe - baseline'].count('**-0.50 ± 0.02**') == len(views)
  assert '**' not in by_pair['tree_moe - softmax_moe']
  assert by_pair['tree_moe - softmax_moe'].count('+0.00 ± 0.03') == len(views)


def test_ratio_to_the_peer_and_pose_error_rows():
  views = reproduce.ALL_VIEWS
  table = {'baseline': {v: (2.0, None) for v in views}}
  peer = {'ert': {v: 0.04 for v in views}}
  assert reproduce.ert_ratio_rows(table, peer) == [
      '| baseline | ' + ' | '.join(['0.50'] * len(views)) + ' |']
  assert reproduce.ert_ratio_rows(table, {'ert': {}}) == []
  mae = {'yaw': 8.56, 'pitch': 7.5, 'roll': 4.7}
  results = {('pose_tree_moe', 0): _result(dict.fromkeys(views, [0.02]), pose_mae=mae)}
  assert reproduce.pose_error_rows(results, 0) == [
      '| yaw / pitch / roll MAE deg | ' + ' | '.join(['8.6 / 7.5 / 4.7'] * len(views)) + ' |']


def test_seed_gain_rows_are_relative_gains_per_seed_then_mean_and_spread():
  views = reproduce.ALL_VIEWS
  faces = np.full(10, 1.0)
  baseline_nme = {0: 0.040, 1: 0.050, 2: 0.020}
  pose_nme = {0: 0.036, 1: 0.040, 2: 0.019}  # 10%, 20% and 5% lower than baseline
  results = {}
  for seed in baseline_nme:
    results[('baseline', seed)] = _result(dict.fromkeys(views, faces * baseline_nme[seed]))
    results[('pose_tree_moe', seed)] = _result(dict.fromkeys(views, faces * pose_nme[seed]))
  results[('tree_moe', 0)] = results[('baseline', 0)]  # one seed only: no spread row
  rows = reproduce.seed_gain_rows(results, [0, 1, 2])
  assert len(rows) == 4
  assert rows[1] == '| pose_tree_moe vs baseline, seed 1 | ' + ' | '.join(['+20.0'] * len(views)) + ' |'
  gains = [10.0, 20.0, 5.0]
  mean = sum(gains) / 3
  sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / 2)
  assert rows[3].endswith(' | '.join([f'+{mean:.1f} ± {sd:.1f}'] * len(views)) + ' |')
  assert reproduce.seed_gain_rows(results, [0]) == []


def test_a_trained_pose_estimator_is_read_not_retrained_and_its_last_gain_reported(tmp_path):
  (tmp_path / 'pose').mkdir()
  curve = [(1000, 9.0, 6.0, 3.0), (2000, 6.0, 4.5, 1.5), (3000, 5.7, 4.2, 1.2)]
  lines = [{'step': s, 'eval/mae_deg/yaw': y, 'eval/mae_deg/pitch': p, 'eval/mae_deg/roll': r}
           for s, y, p, r in curve]
  lines.insert(1, {'step': 1500, 'train/loss': 0.1})  # not an eval line
  (tmp_path / 'pose' / 'metrics.jsonl').write_text('\n'.join(map(json.dumps, lines)))
  args = argparse.Namespace(pose_steps=3000, pose_check=1000, pose_seed=0, size='small',
                            dataset='unused', overrides=[])
  timings = {}
  pose = reproduce.train_pose(tmp_path, args, timings)  # would start train.py if not done
  assert timings == {}
  assert pose['steps'] == 3000 and [c['step'] for c in pose['curve']] == [1000, 2000, 3000]
  # Mean MAE 4.0 -> 3.7 deg over the last check: 7.5% better.
  assert pose['last_gain'] == pytest.approx(1 - 3.7 / 4.0)


def test_timings_of_side_by_side_reproductions_merge_in_the_file(tmp_path):
  path = tmp_path / 'timings.json'
  path.write_text('{"pose": 100.0}')
  first, second = reproduce.Timings(path), reproduce.Timings(path)  # two processes, one --out
  first['a_seed0'] = 10.0
  first.save()
  second['b_seed0'] = 20.0
  second['pose'] = 150.0  # the second one extended the estimator
  second.save()
  first['a_seed0'] += 5.0  # and the first one resumed its run
  first.save()
  assert json.loads(path.read_text()) == {'pose': 150.0, 'a_seed0': 15.0, 'b_seed0': 20.0}
  assert dict(first) == {'pose': 150.0, 'a_seed0': 15.0, 'b_seed0': 20.0}  # its report sees all


def _scheduling_args(**kw) -> argparse.Namespace:
  base = dict(seeds=[0], architectures=['baseline', 'pose_tree_moe', 'moe'],
              seed_architectures=[], oracle=False, steps=10, dataset='d', eval_every=5,
              overrides=[], size='small')
  return argparse.Namespace(**base | kw)


def test_pose_free_runs_train_beside_the_estimator_and_pose_gated_ones_after_it(tmp_path,
                                                                                monkeypatch):
  """Two at a time: the estimator and the pose-free runs overlap; a pose-gated run gets the
  estimator's workdir, and only once the estimator has finished."""
  import concurrent.futures
  import threading
  calls, first_run_started, pose_done = [], threading.Event(), threading.Event()

  def fake_train(config, workdir, overrides, logfile):
    calls.append((workdir.name, overrides, pose_done.is_set()))
    first_run_started.set()
    return 1.0

  def estimator():
    # Finishes only once a run has started beside it (times out, failing the test, otherwise).
    assert first_run_started.wait(timeout=30)
    pose_done.set()
    return {'workdir': '/est'}

  monkeypatch.setattr(reproduce, 'train', fake_train)
  timings = reproduce.Timings(tmp_path / 'timings.json')
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    pose = pool.submit(estimator)
    runs = reproduce.train_architectures(tmp_path, _scheduling_args(), pose, timings, pool)
  assert set(runs) == {('baseline', 0), ('pose_tree_moe', 0), ('moe', 0)}
  by_name = {name: (overrides, after_pose) for name, overrides, after_pose in calls}
  assert '--config.pose_checkpoint=/est' in by_name['pose_tree_moe_seed0'][0]
  assert by_name['pose_tree_moe_seed0'][1]  # started after the estimator ended
  assert not by_name['baseline_seed0'][1]  # started while it ran
  assert '--config.pose_checkpoint=' in by_name['baseline_seed0'][0]
  assert json.loads((tmp_path / 'timings.json').read_text()) == {
      'baseline_seed0': 1.0, 'moe_seed0': 1.0, 'pose_tree_moe_seed0': 1.0}


def test_a_failed_run_fails_the_reproduction_after_the_others_end(tmp_path, monkeypatch):
  import concurrent.futures
  trained = []

  def fake_train(config, workdir, overrides, logfile):
    if workdir.name == 'baseline_seed0':
      raise RuntimeError('train.py failed (exit 1)')
    trained.append(workdir.name)
    return 1.0

  monkeypatch.setattr(reproduce, 'train', fake_train)
  pose = concurrent.futures.Future()
  pose.set_result({'workdir': '/est'})
  with (concurrent.futures.ThreadPoolExecutor(2) as pool,
        pytest.raises(RuntimeError, match='exit 1')):
    reproduce.train_architectures(tmp_path, _scheduling_args(), pose,
                                  reproduce.Timings(tmp_path / 't.json'), pool)
  assert sorted(trained) == ['moe_seed0', 'pose_tree_moe_seed0']


def test_timings_added_from_many_threads_sum_in_the_file(tmp_path):
  import concurrent.futures
  timings = reproduce.Timings(tmp_path / 'timings.json')
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda i: timings.add(f'job{i % 4}', 1.0), range(200)))
  assert json.loads((tmp_path / 'timings.json').read_text()) == {f'job{i}': 50.0 for i in range(4)}


def test_the_tree_against_softmax_reading_names_the_views_the_tree_wins():
  views = reproduce.TABLE1_VIEWS + ('yaw_0_30', 'yaw_30_60', 'yaw_60_90')
  tree_wins = {'frontal', 'yaw_0_30'}
  table = {'tree_moe': {v: (1.0 if v in tree_wins else 2.0, 0.0) for v in views},
           'softmax_moe': {v: (1.5, 0.0) for v in views}}
  for row in table.values():
    row['gate_share'] = {}
  lines = reproduce.reading(table, {'ert': {}})
  [line] = [l for l in lines if l.startswith('- Tree gate beats softmax gate')]
  assert '**did not hold**' in line
  assert 'the tree is ahead on 2 of 6 views (frontal, yaw_0_30)' in line
