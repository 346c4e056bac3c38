"""The reproduction report's computed comparisons, on hand-made results (no training)."""

import argparse
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from experiments import reproduce

VIEWS = reproduce.ALL_VIEWS
BUCKETS = reproduce.TABLE3_VIEWS[:3]


def _record(arch: str, seed: int, errors_by_view: dict, *, share=None, mae=None,
            stages=(0.05, 0.03)) -> dict:
  """A per-run JSON as the reproduction writes it: per view the NME and per-face errors."""
  views = {v: {'nme': float(np.mean(e)), 'errors': [float(x) for x in e]}
           for v, e in errors_by_view.items()}
  views['mean'] = {'nme': float(np.mean([views[v]['nme'] for v in BUCKETS]))}
  record = {'arch': arch, 'seed': seed, 'config': f'configs/{arch}.py:reproduction',
            'variant': 'reproduction', 'steps': 100, 'split': 'test',
            'train_dataset': 'synthetic_faces/default', 'views': views,
            'stages_large_pose': list(stages), 'gate_mass_stage0': {},
            'gate_share_90': share or {}, 'validation_curve': [[50, 0.05], [100, 0.04]],
            'train_seconds': 60.0, 'eval_seconds': 6.0}
  if mae:
    record['pose_mae_deg'] = dict.fromkeys(VIEWS, mae)
  return record


def _runs(errors: dict) -> dict:
  """{(arch, seed): record} from {(arch, seed): per-face errors, the same on every view}."""
  return {key: _record(*key, dict.fromkeys(VIEWS, e)) for key, e in errors.items()}


# --- Seed-matched paired differences. ---


def test_paired_difference_of_one_seed_is_the_face_by_face_mean_and_standard_error():
  rng = np.random.default_rng(0)
  a_errors, b_errors = rng.uniform(0.01, 0.05, 50), rng.uniform(0.01, 0.05, 50)
  mean, error, seeds = reproduce.paired_difference({0: a_errors}, {0: b_errors})
  diffs = [100 * (x - y) for x, y in zip(a_errors, b_errors)]  # brute force, in % points
  expected_mean = sum(diffs) / len(diffs)
  expected_sd = math.sqrt(sum((d - expected_mean) ** 2 for d in diffs) / (len(diffs) - 1))
  assert seeds == [0]
  assert mean == pytest.approx(expected_mean, rel=1e-9)
  assert error == pytest.approx(expected_sd / math.sqrt(len(diffs)), rel=1e-9)


def test_paired_difference_over_seeds_by_hand():
  """Two seeds, three faces. Seed 0: a - b = +1, 0, +2 points (mean +1); seed 1: -1, 0, 0
  (mean -1/3). Mean over seeds +1/3; std over seeds (4/3) / sqrt(2), s.e. that / sqrt(2) = 2/3.
  A seed only one side ran (2) is left out."""
  a = {0: [0.02, 0.03, 0.04], 1: [0.02, 0.02, 0.02], 2: [0.5, 0.5, 0.5]}
  b = {0: [0.01, 0.03, 0.02], 1: [0.03, 0.02, 0.02]}
  mean, error, seeds = reproduce.paired_difference(a, b)
  assert seeds == [0, 1]
  assert mean == pytest.approx(1 / 3)
  assert error == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match='same faces'):
    reproduce.paired_difference({0: [0.1, 0.2]}, {0: [0.1]})


def test_paired_rows_mark_differences_beyond_two_standard_errors():
  base = np.linspace(0.02, 0.04, 40)
  jitter = np.tile([0.001, -0.001], 20)
  better = base - 0.005 + jitter  # 0.5 points better on every face, +-0.1: significant
  level = better + 2 * jitter  # tree - softmax = -+0.2 per face, mean 0: not significant
  runs = _runs({('tree_moe', 0): better, ('baseline', 0): base, ('softmax_moe', 0): level})
  rows = reproduce.paired_rows(runs)
  by_pair = {row.split(' (')[0].strip('| '): row.split(') |')[1] for row in rows}
  assert set(by_pair) == {'tree_moe - baseline', 'tree_moe - softmax_moe'}  # pairs that ran
  assert by_pair['tree_moe - baseline'].count('**-0.50 ± 0.02**') == len(VIEWS)
  assert '**' not in by_pair['tree_moe - softmax_moe']
  assert by_pair['tree_moe - softmax_moe'].count('+0.00 ± 0.03') == len(VIEWS)
  assert all('seed 0 only, per-face s.e.' in row for row in rows)


def test_ratio_to_the_peer_and_pose_error_rows():
  table = {'baseline': {v: (2.0, None) for v in VIEWS}}
  ert = {'test': {v: {'nme': 0.04} for v in VIEWS}}
  assert reproduce.ert_ratio_rows(table, ert) == [
      '| baseline | ' + ' | '.join(['0.50'] * len(VIEWS)) + ' |']
  assert reproduce.ert_ratio_rows(table, None) == []
  mae = {'yaw': 8.56, 'pitch': 7.5, 'roll': 4.7}
  runs = {('pose_tree_moe', 0): _record('pose_tree_moe', 0, dict.fromkeys(VIEWS, [0.02]),
                                        mae=mae)}
  assert reproduce.pose_error_rows(runs) == [
      '| yaw / pitch / roll MAE deg | ' + ' | '.join(['8.6 / 7.5 / 4.7'] * len(VIEWS)) + ' |']


def test_seed_gain_rows_are_relative_gains_per_seed_then_mean_and_spread():
  faces = np.full(10, 1.0)
  baseline_nme = {0: 0.040, 1: 0.050, 2: 0.020}
  pose_nme = {0: 0.036, 1: 0.040, 2: 0.019}  # 10%, 20% and 5% lower than baseline
  errors = {}
  for seed in baseline_nme:
    errors[('baseline', seed)] = faces * baseline_nme[seed]
    errors[('pose_tree_moe', seed)] = faces * pose_nme[seed]
  errors[('tree_moe', 0)] = errors[('baseline', 0)]  # one seed only: no spread row
  rows = reproduce.seed_gain_rows(_runs(errors))
  assert len(rows) == 4
  assert rows[1] == ('| pose_tree_moe vs baseline, seed 1 | ' + ' | '.join(['+20.0'] * len(VIEWS))
                     + ' |')
  gains = [10.0, 20.0, 5.0]
  mean = sum(gains) / 3
  sd = math.sqrt(sum((g - mean) ** 2 for g in gains) / 2)
  assert rows[3].endswith(' | '.join([f'+{mean:.1f} ± {sd:.1f}'] * len(VIEWS)) + ' |')
  only_seed_0 = {k: v for k, v in errors.items() if k[1] == 0}
  assert reproduce.seed_gain_rows(_runs(only_seed_0)) == []


def test_the_tree_against_softmax_reading_names_the_views_the_tree_wins():
  tree_wins = {'frontal', 'yaw_0_30'}
  faces = np.linspace(0.9, 1.1, 20)
  runs = {}
  for seed in (0, 1):
    runs[('tree_moe', seed)] = _record('tree_moe', seed, {
        v: faces * (0.010 if v in tree_wins else 0.020) for v in VIEWS})
    runs[('softmax_moe', seed)] = _record('softmax_moe', seed, dict.fromkeys(VIEWS, faces * 0.015))
  lines = reproduce.reading(runs, None)
  [line] = [l for l in lines if l.startswith('- Tree gate beats softmax gate')]
  assert '**did not hold**' in line
  assert '(tree_moe vs softmax_moe, seeds 0, 1)' in line
  assert 'the tree is ahead on 2 of 6 views (frontal, yaw_0_30)' in line


def test_verdicts_pair_only_the_seeds_both_sides_ran():
  """pose_tree_moe ran seed 0 only, baseline seeds 0-2: the verdict reads seed 0's faces of
  both, not seed 0 against a 3-seed mean."""
  faces = np.ones(8)
  runs = _runs({('baseline', 0): faces * 0.040, ('baseline', 1): faces * 0.020,
                ('baseline', 2): faces * 0.020, ('pose_tree_moe', 0): faces * 0.034})
  lines = reproduce.reading(runs, None)
  [line] = [l for l in lines if 'ahead of baseline by >= 10% on yaw_60_90' in l]
  # Seed 0: 4.00 -> 3.40, +15%: held (the 3-seed baseline mean, 2.67, would say otherwise).
  assert '**held** (4.00 -> 3.40, +15.0%; a - b -0.60 ± 0.00 points, seed 0 only' in line


def test_gate_concentration_is_compared_seed_by_seed():
  faces = np.ones(4)
  runs = {}
  for seed, (tree, soft) in enumerate([(0.25, 0.5), (0.375, 0.5), (0.5, 0.5)]):
    runs[('tree_moe', seed)] = _record('tree_moe', seed, dict.fromkeys(VIEWS, faces),
                                       share={'regression': tree})
    runs[('softmax_moe', seed)] = _record('softmax_moe', seed, dict.fromkeys(VIEWS, faces),
                                          share={'regression': soft})
  runs[('softmax_moe', 3)] = _record('softmax_moe', 3, dict.fromkeys(VIEWS, faces),
                                     share={'regression': 1.0})  # no tree seed 3: left out
  d = reproduce.gate_difference(runs, 'tree_moe', 'softmax_moe', 'regression')
  per_seed = np.array([-25.0, -12.5, 0.0])
  assert d['seeds'] == [0, 1, 2] and d['per_seed'] == pytest.approx(per_seed)
  assert d['mean'] == pytest.approx(per_seed.mean())
  assert d['se'] == pytest.approx(per_seed.std(ddof=1) / np.sqrt(3))
  [line] = [l for l in reproduce.reading(runs, None) if 'regression mass' in l]
  assert '**held**' in line and f'{per_seed.mean():+.1f} ± {d["se"]:.1f} points' in line


# --- The per-run JSON and the page written from it alone. ---


def _results_json() -> dict:
  """A results.json shaped like eval.py's, with gates and a routing report."""
  rng = np.random.default_rng(1)

  def subset(view):
    errors = rng.uniform(0.01, 0.05, 5).round(6)
    gates = {'regression': {'num_experts': 8, 'cumulative_mass_stage0': np.linspace(
                 0.3, 1.0, 8).tolist()},
             'representation': {'num_experts': 1, 'cumulative_mass_stage0': [1.0]}}
    return {'nme': float(errors.mean()), 'errors': errors.tolist(), 'gates': gates,
            'nme_per_stage': [0.061234567, float(errors.mean())]}
  table3 = {v: subset(v) for v in BUCKETS}
  return {'provenance': {'variant': 'reproduction', 'checkpoint_step': 6000, 'split': 'test',
                         'train_dataset': 'synthetic_faces/default'},
          'protocols': {
              'synthetic_table1': {'subsets': {v: subset(v) for v in reproduce.TABLE1_VIEWS}},
              'synthetic_table3': {'subsets': table3, 'aggregates': {'mean': {
                  'nme': float(np.mean([s['nme'] for s in table3.values()]))}}}},
          'routing_report': {'nme': {'dense': dict.fromkeys(VIEWS, 0.0212345678),
                                     'greedy': dict.fromkeys(VIEWS, 0.03)},
                             'concentration': {'regression': {
                                 'share_for_90': [0.625, 0.5], 'experts_in_use': [5.5, 3.25],
                                 'top1_experts': [6, 4]}}}}


def test_a_run_record_keeps_what_the_report_needs(tmp_path):
  results = _results_json()
  record = reproduce.run_record(results, arch='tree_moe', seed=1, config='configs/tree_moe.py',
                                curve=[[100, 0.05]], train_seconds=61.23, eval_seconds=None)
  large = results['protocols']['synthetic_table1']['subsets']['large_pose']
  assert record['views']['large_pose']['errors'] == large['errors']
  assert set(record['views']) == set(VIEWS) | {'mean'}
  assert record['views']['mean']['nme'] == pytest.approx(
      results['protocols']['synthetic_table3']['aggregates']['mean']['nme'], rel=1e-5)
  assert record['stages_large_pose'][0] == 0.0612346  # 6 significant digits
  assert record['gate_share_90'] == {'regression': 0.875}  # 0.3, 0.4, ... 0.9: 7 of 8
  assert record['routing']['nme']['dense']['frontal'] == 0.0212346
  assert record['routing']['share_for_90'] == {'regression': [0.625, 0.5]}
  assert record['steps'] == 6000 and record['train_seconds'] == 61.2
  reproduce.write_json(tmp_path / 'r.json', record)
  text = (tmp_path / 'r.json').read_text()
  assert json.loads(text) == record
  assert len(text.splitlines()) < 90  # every list of numbers on one line (a few lines a field)


def _write_results(results_dir, rng) -> dict:
  """Fabricated JSON of a reproduction: three seeds of three architectures, one of a fourth
  (moe) and of pose_tree_moe, the ERT, the estimator; returns the runs."""
  runs = {}
  for arch, level in (('baseline', 0.030), ('softmax_moe', 0.026), ('tree_moe', 0.025)):
    for seed in (0, 1, 2):
      runs[(arch, seed)] = _record(arch, seed, {
          v: rng.uniform(0.5, 1.5, 12) * level * (1 + 0.3 * i) for i, v in enumerate(VIEWS)},
          share=None if arch == 'baseline' else {'regression': 0.5 + 0.125 * seed})
  runs[('moe', 0)] = _record('moe', 0, {v: rng.uniform(0.02, 0.03, 12) for v in VIEWS})
  runs[('pose_tree_moe', 0)] = _record(
      'pose_tree_moe', 0, {v: rng.uniform(0.01, 0.03, 12) for v in VIEWS},
      mae={'yaw': 4.0, 'pitch': 5.0, 'roll': 3.0})
  for (arch, seed), record in runs.items():
    reproduce.write_json(results_dir / f'{arch}_seed{seed}.json', record)
  choice = {'chosen': 'cascade_15', 'validation': {
      'dlib_defaults': dict.fromkeys(VIEWS, 0.04), 'cascade_15': dict.fromkeys(VIEWS, 0.035)},
            'test': {v: rng.uniform(0.03, 0.05, 12) for v in VIEWS}}
  reproduce.write_json(results_dir / 'ert.json', reproduce.ert_record(
      choice, {v: np.full(12, 0.2) for v in VIEWS},
      option_sets={n: reproduce.ERT_OPTIONS[n] for n in choice['validation']}, train_faces=40,
      threads=2, train_seconds={'dlib_defaults': 600.0}))
  reproduce.write_json(results_dir / 'pose.json', {
      'steps': 200, 'schedule': 'a warm-up, then a cosine decay', 'split': 'validation',
      'check': 100, 'tol': 0.05, 'last_gain': 0.02, 'seconds': 120.0,
      'curve': [{'step': 100, 'yaw': 6.0, 'pitch': 6.0, 'roll': 3.0},
                {'step': 200, 'yaw': 5.9, 'pitch': 5.8, 'roll': 3.0}]})
  reproduce.write_json(results_dir / 'run.json', {
      'command': 'python experiments/reproduce.py --steps 100', 'date': '2026-12-01',
      'size': 'small', 'variant': 'reproduction', 'dataset': 'synthetic_faces/default',
      'train_faces': 40, 'steps': 100, 'jobs': 2, 'cpu_count': 2, 'out': '/tmp/r'})
  return runs


def _row(text: str, label: str, section: str) -> list[str]:
  """The cells of the row `label` in the section headed `section`."""
  part = text.split(section, 1)[1].split('\n## ', 1)[0]
  [row] = [l for l in part.splitlines() if l.startswith(f'| {label} |')]
  return [c.strip() for c in row.strip('|').split('|')][1:]


def test_report_only_rewrites_the_page_from_the_json_alone(tmp_path):
  results_dir, doc = tmp_path / 'results', tmp_path / 'docs' / 'reproduction.md'
  runs = _write_results(results_dir, np.random.default_rng(0))
  assert reproduce.main(['--report-only', '--results_dir', str(results_dir),
                         '--doc', str(doc)]) == 0
  text = doc.read_text()
  assert f'`{results_dir}`' in text and 'regenerates it from the committed JSON' in text
  assert '`python experiments/reproduce.py --steps 100`' in text

  # Table cells: the mean over seeds and its standard error, recomputed here from the JSON.
  nme = {v: np.array([100 * runs[('tree_moe', s)]['views'][v]['nme'] for s in (0, 1, 2)])
         for v in VIEWS + ('mean',)}
  expected = [f'{nme[v].mean():.2f} ± {nme[v].std(ddof=1) / np.sqrt(3):.2f}'
              for v in reproduce.TABLE1_VIEWS]
  assert _row(text, 'tree_moe', '## Table 1 analogue')[:3] == expected
  assert _row(text, 'tree_moe', '## Table 3 analogue')[:4] == [
      f'{nme[v].mean():.2f} ± {nme[v].std(ddof=1) / np.sqrt(3):.2f}'
      for v in reproduce.TABLE3_VIEWS]
  assert _row(text, 'moe', '## Table 1 analogue')[0] == (
      f'{100 * runs[("moe", 0)]["views"]["frontal"]["nme"]:.2f}')  # one seed: no ±
  assert 'except moe: seed 0; pose_tree_moe: seed 0' in text

  # A paired row: per seed the mean per-face difference, then mean ± s.e. over the seeds.
  label = 'tree_moe - softmax_moe (tree gate against softmax gate; seeds 0, 1, 2)'
  cells = _row(text, label, '## Paired differences')
  for view, cell in zip(VIEWS, cells):
    per_seed = [100 * np.mean(np.subtract(runs[('tree_moe', s)]['views'][view]['errors'],
                                          runs[('softmax_moe', s)]['views'][view]['errors']))
                for s in (0, 1, 2)]
    mean, se = np.mean(per_seed), np.std(per_seed, ddof=1) / np.sqrt(3)
    assert cell.strip('*') == f'{mean:+.2f} ± {se:.2f}'.replace('-0.00', '+0.00')
  # pose_tree_moe ran seed 0 only: its row against baseline pairs seed 0 alone.
  [row] = [l for l in text.splitlines() if l.startswith('| pose_tree_moe - baseline (')]
  assert 'seed 0 only, per-face s.e.' in row

  ert = json.loads((results_dir / 'ert.json').read_text())
  assert _row(text, 'dlib ERT (same train crops; `cascade_15`, chosen on validation)',
              '## Table 1 analogue')[0] == f'{100 * ert["test"]["frontal"]["nme"]:.2f}'
  assert '| **cascade_15** (chosen) | cascade_depth=15 |' in text
  assert '| yaw / pitch / roll MAE deg | 4.0 / 5.0 / 3.0 |' in text
  assert '![learning curves](figures/reproduction_curves.png)' in text

  doc.unlink()  # the same JSON, the same page
  reproduce.main(['--report_only', '--results_dir', str(results_dir), '--doc', str(doc)])
  assert doc.read_text() == text


def test_the_full_run_writes_the_json_and_the_page_from_it(tmp_path):
  """write_results (what the full run calls after evaluating) and then write_doc: the page's
  numbers are the JSON's, which are the evaluation's."""
  workdir = tmp_path / 'out' / 'tree_moe_seed0'
  workdir.mkdir(parents=True)
  (workdir / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in [
      {'step': 50, 'train/loss': 1.0}, {'step': 100, 'eval/nme/stage0': 0.09,
                                         'eval/nme/stage1': 0.051234567}]))
  args = argparse.Namespace(
      results_dir=tmp_path / 'results', variant='reproduction', size='small',
      dataset='synthetic_faces/default', steps=6000, seeds=[0], jobs=2, out=tmp_path / 'out',
      compare_routings='auto', pose_check=100, pose_tol=0.05)
  pose = {'steps': 200, 'last_gain': float('nan'),
          'curve': [{'step': 200, 'yaw': 5.123456, 'pitch': 4.0, 'roll': 3.0}]}
  ert = {'train_faces': 40, 'test': {}, 'train_seconds': {}}
  results = {('tree_moe', 0): _results_json()}
  reproduce.write_results(args, ['--steps', '6000'], {('tree_moe', 0): workdir}, results, pose,
                          ert, {'tree_moe_seed0': 100.0, 'pose': 50.0})
  record = json.loads((args.results_dir / 'tree_moe_seed0.json').read_text())
  assert record['validation_curve'] == [[100, 0.0512346]]
  assert record['config'] == 'configs/tree_moe.py:reproduction'
  assert json.loads((args.results_dir / 'pose.json').read_text())['last_gain'] is None
  meta = json.loads((args.results_dir / 'run.json').read_text())
  assert meta['command'] == 'python experiments/reproduce.py --steps 6000'
  (args.results_dir / 'ert.json').unlink()  # a stub: the page without the peer
  text = reproduce.write_doc(args.results_dir, tmp_path / 'reproduction.md')
  frontal = results[('tree_moe', 0)]['protocols']['synthetic_table1']['subsets']['frontal']
  assert _row(text, 'tree_moe', '## Table 1 analogue')[0] == f'{100 * frontal["nme"]:.2f}'
  assert '| tree_moe | greedy | 3.00 |' in text  # the routing report
  assert record['routing']['experts_in_use'] == {'regression': [5.5, 3.25]}
  assert ('the faces use 5.5, 3.2 experts between them (exp of the mean gate\'s entropy), 6, 4 '
          "of them some face's top-1") in text


def test_report_only_reads_no_tensorflow_and_no_dlib(tmp_path):
  """The page and its record-drawn figures in seconds: no TensorFlow (the data) and no dlib (the
  peer) are imported; JAX only through the plotting helpers."""
  results_dir, doc = tmp_path / 'results', tmp_path / 'page.md'
  _write_results(results_dir, np.random.default_rng(2))
  script = ('import sys; from experiments import reproduce; '
            f'reproduce.main(["--report-only", "--results_dir", {str(results_dir)!r}, '
            f'"--doc", {str(doc)!r}]); '
            'print(sorted(m for m in ("tensorflow", "dlib") if m in sys.modules))')
  done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        cwd=reproduce.ROOT, timeout=120, check=True)
  assert done.stdout.strip().splitlines()[-1] == '[]'
  assert doc.read_text().startswith('# Reproduction on the embedded benchmark (`reproduction`)')
  # The records' learning curves (these fabricated records carry no gate masses: no Fig. 6).
  assert (tmp_path / 'figures' / 'page_curves.png').read_bytes()[:4] == b'\x89PNG'


def test_report_only_without_results_says_so(tmp_path):
  with pytest.raises(SystemExit, match='no <arch>_seed<seed>.json'):
    reproduce.main(['--report-only', '--results_dir', str(tmp_path), '--doc',
                    str(tmp_path / 'x.md')])


def test_the_variant_names_its_own_page_and_results():
  args = reproduce.parse_args(['--report-only', '--variant', 'reproduction'])
  assert args.doc == reproduce.ROOT / 'docs' / 'reproduction_8.md'
  assert args.results_dir == reproduce.ROOT / 'docs' / 'data' / 'reproduction' / 'reproduction'
  args = reproduce.parse_args(['--report-only'])  # the paper's 64 regressors: the reproduction
  assert args.variant == 'reproduction_64'
  assert args.doc == reproduce.ROOT / 'docs' / 'reproduction.md'
  assert args.results_dir == reproduce.ROOT / 'docs' / 'data' / 'reproduction' / 'reproduction_64'
  assert reproduce.parse_args(['--report-only', '--size', 'full']).doc == (
      reproduce.ROOT / 'docs' / 'reproduction_full.md')
  assert args.seeds == [0, 1, 2] and args.oracle
  assert args.seed_architectures == list(reproduce.ARCHITECTURES) + list(reproduce.ORACLES)
  assert not reproduce.parse_args(['--report-only', '--no_oracle']).oracle


# --- Choices on validation only. ---


@pytest.mark.parametrize('overrides', [
    ['--config.eval_split=test'], ['--config.eval_split=test_frontal'],
    ['--config.eval_split', 'test'], ['--config.train_split=test']])
def test_an_override_that_chooses_on_test_is_refused(overrides):
  with pytest.raises(ValueError, match='reads the test views once, for the final tables'):
    reproduce.refuse_choices_on_test(overrides)


def test_validation_overrides_pass():
  reproduce.refuse_choices_on_test(['--config.eval_split=validation', '--config.seed=3',
                                    '--config.dataset=test_like_name'])


def test_the_command_refuses_eval_on_test_before_any_training(tmp_path, monkeypatch, capsys):
  def no_training(*args, **kwargs):
    raise AssertionError('trained before refusing')
  monkeypatch.setattr(reproduce, 'train', no_training)
  with pytest.raises(SystemExit) as exit_info:
    reproduce.main(['--out', str(tmp_path / 'out'), '--results_dir', str(tmp_path / 'r'),
                    '--doc', str(tmp_path / 'd.md'), '--steps', '1', '--',
                    '--config.eval_split=test'])
  assert exit_info.value.code == 2
  assert 'refusing --config.eval_split=test' in capsys.readouterr().err
  assert not (tmp_path / 'out').exists()


def test_the_ert_options_are_chosen_on_validation_and_only_the_chosen_one_reads_test():
  # Mean over the views on validation: a 3.0, b 2.5 (despite a's best frontal), c 2.8.
  # On test, a is best: the choice must not see it.
  validation = {'a': dict.fromkeys(VIEWS, 0.030) | {'frontal': 0.001},
                'b': dict.fromkeys(VIEWS, 0.025), 'c': dict.fromkeys(VIEWS, 0.028)}
  test = {'a': 0.010, 'b': 0.040, 'c': 0.030}
  calls = []

  def fit(name, options):
    calls.append(('fit', name))
    return name

  def score(model, split):
    calls.append((split, model))
    if split == 'validation':
      return {v: np.full(4, nme) for v, nme in validation[model].items()}
    return {v: np.full(4, test[model]) for v in VIEWS}

  option_sets = {'a': {}, 'b': {'cascade_depth': 15}, 'c': {'tree_depth': 5}}
  choice = reproduce.choose_on_validation(option_sets, fit, score)
  assert choice['chosen'] == 'b'
  assert [c for c in calls if c[0] == 'test'] == [('test', 'b')]
  assert calls[-1] == ('test', 'b')  # after every validation score
  assert choice['validation']['a']['frontal'] == pytest.approx(0.001)
  assert np.mean(choice['test']['yaw_60_90']) == pytest.approx(0.040)
  record = reproduce.ert_record(choice, {v: np.full(4, 0.2) for v in VIEWS},
                                option_sets=option_sets, train_faces=4, threads=1,
                                train_seconds={})
  assert record['chosen'] == 'b' and record['scale'] == reproduce.ERT_SCALE
  assert record['test']['mean']['nme'] == pytest.approx(0.040)
  assert record['test']['frontal']['errors'] == [0.04] * 4


def test_ert_points_are_finer_than_a_crop_pixel(monkeypatch):
  """dlib's points are integers: at ERT_SCALE they fall on a quarter-pixel grid of the crop."""
  pytest.importorskip('dlib')
  import types  # pylint: disable=g-import-not-at-top
  from experiments import ert_peer  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(ert_peer, 'crop_config',
                      lambda: types.SimpleNamespace(size=150, margin=0.25))
  points = np.array([[10.0, 20.25], [149.0, 0.0]])
  for scale in (1, 4):
    assert ert_peer.from_upscaled(ert_peer.to_upscaled(points, scale), scale) == pytest.approx(
        points)
  rect = ert_peer.face_rect(4)
  assert (rect.left(), rect.right()) == (100, 499)  # crop pixels 25..124, each 4 wide
  rng = np.random.default_rng(0)
  landmarks = (rng.uniform(30, 120, (68, 2)) + rng.normal(0, 1, (12, 68, 2))).astype(np.float32)
  images = rng.integers(0, 255, (12, 150, 150), dtype=np.uint8)
  predictor = ert_peer.train(images, landmarks, 1, scale=4, cascade_depth=1,
                             num_trees_per_cascade_level=2, oversampling_amount=1)
  shapes = ert_peer.predict(predictor, images[:2], scale=4)
  assert shapes.shape == (2, 68, 2)
  assert np.any(shapes % 1 != 0) and np.all((shapes * 4 + 1.5) % 1 == 0)


# --- Training and its schedule. ---


def test_a_trained_pose_estimator_is_read_not_retrained_and_its_last_gain_reported(tmp_path):
  (tmp_path / 'pose').mkdir()
  curve = [(1000, 9.0, 6.0, 3.0), (2000, 6.0, 4.5, 1.5), (3000, 5.7, 4.2, 1.2)]
  lines = [{'step': s, 'eval/mae_deg/yaw': y, 'eval/mae_deg/pitch': p, 'eval/mae_deg/roll': r}
           for s, y, p, r in curve]
  lines.insert(1, {'step': 1500, 'train/loss': 0.1})  # not an eval line
  (tmp_path / 'pose' / 'metrics.jsonl').write_text('\n'.join(map(json.dumps, lines)))
  args = argparse.Namespace(pose_steps=3000, pose_check=1000, pose_seed=0, size='small',
                            variant='reproduction', dataset='unused', overrides=[])
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
              overrides=[], size='small', variant='reproduction')
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
  assert all('--config.eval_split=validation' in overrides for overrides, _ in by_name.values())
  assert json.loads((tmp_path / 'timings.json').read_text()) == {
      'baseline_seed0': 1.0, 'moe_seed0': 1.0, 'pose_tree_moe_seed0': 1.0}


def test_the_true_pose_oracle_trains_on_every_seed(tmp_path, monkeypatch):
  import concurrent.futures
  configs = {}

  def fake_train(config, workdir, overrides, logfile):
    configs[workdir.name] = (config, overrides)
    return 1.0

  monkeypatch.setattr(reproduce, 'train', fake_train)
  pose = concurrent.futures.Future()
  pose.set_result({'workdir': '/est'})
  oracle = 'pose_tree_moe_true_pose'
  args = _scheduling_args(seeds=[0, 1, 2], architectures=['pose_tree_moe'], oracle=True,
                          seed_architectures=['pose_tree_moe', oracle])
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    runs = reproduce.train_architectures(tmp_path, args, pose,
                                         reproduce.Timings(tmp_path / 't.json'), pool)
  assert {(a, s) for a, s in runs if a == oracle} == {(oracle, 0), (oracle, 1), (oracle, 2)}
  config, overrides = configs[f'{oracle}_seed2']
  assert config == 'configs/pose_tree_moe.py:reproduction'
  assert '--config.model.gate_pose=truth' in overrides and '--config.seed=2' in overrides


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


def test_a_run_whose_record_is_committed_is_not_trained_again(tmp_path, monkeypatch):
  from configs import default as configs_default
  """A reproduction longer than one sitting goes on in the next: a stored record of the same
  config and step count stands for the run; one of another step count does not."""
  import concurrent.futures
  trained, finished = [], []

  def fake_train(config, workdir, overrides, logfile):
    trained.append(workdir.name)
    return 1.0

  monkeypatch.setattr(reproduce, 'train', fake_train)
  results_dir = tmp_path / 'results'
  args = _scheduling_args(results_dir=results_dir)
  today = reproduce.expected_objective('baseline', args)
  assert today == configs_default.get_config('baseline', 'reproduction').moe.to_dict()
  reproduce.write_json(results_dir / 'baseline_seed0.json',
                       {'arch': 'baseline', 'seed': 0, 'steps': 10, 'moe': today,
                        'config': 'configs/baseline.py:reproduction'})
  reproduce.write_json(results_dir / 'moe_seed0.json',  # another step count: trained again
                       {'arch': 'moe', 'seed': 0, 'steps': 5, 'moe': today,
                        'config': 'configs/moe.py:reproduction'})
  reproduce.write_json(results_dir / 'pose_tree_moe_seed0.json',  # another objective: again
                       {'arch': 'pose_tree_moe', 'seed': 0, 'steps': 10,
                        'moe': today | {'balance_weight': 12.5},
                        'config': 'configs/pose_tree_moe.py:reproduction'})
  planned, stored = reproduce.planned_runs(tmp_path / 'out', args)
  assert set(stored) == {('baseline', 0)} and set(planned) == {('pose_tree_moe', 0), ('moe', 0)}
  # A --config.moe override is part of the objective a stored record must match.
  changed = reproduce.expected_objective(
      'baseline', _scheduling_args(overrides=['--config.moe.balance_weight=12.5']))
  assert changed == today | {'balance_weight': 12.5}
  pose = concurrent.futures.Future()
  pose.set_result({'workdir': '/est'})
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    runs = reproduce.train_architectures(
        tmp_path / 'out', args, pose, reproduce.Timings(tmp_path / 't.json'), pool,
        on_trained=lambda arch, seed, workdir: finished.append((arch, seed, workdir.name)))
  assert sorted(trained) == ['moe_seed0', 'pose_tree_moe_seed0']
  assert set(runs) == {('pose_tree_moe', 0), ('moe', 0)}
  # Each run is handed on as soon as it is trained, on the thread that trained it.
  assert sorted(finished) == [('moe', 0, 'moe_seed0'), ('pose_tree_moe', 0, 'pose_tree_moe_seed0')]


def test_the_oracle_record_names_its_extra_override():
  args = _scheduling_args(variant='reproduction_64')
  assert reproduce.run_config('pose_tree_moe_true_pose', args) == (
      'configs/pose_tree_moe.py:reproduction_64 --config.model.gate_pose=truth')
  assert reproduce.run_config('moe', _scheduling_args(variant='full')) == 'configs/moe.py'


def test_run_json_keeps_every_command_that_added_runs(tmp_path):
  args = argparse.Namespace(
      results_dir=tmp_path, variant='reproduction', size='small', dataset='d', steps=10,
      seeds=[0], jobs=2, out=tmp_path / 'out', compare_routings='auto')
  no_pose = {'steps': 0, 'curve': [], 'last_gain': float('nan')}
  ert = {'train_faces': 4}
  for argv in (['--seeds', '0'], ['--seeds', '1,2'], ['--seeds', '0']):
    reproduce.write_results(args, argv, {}, {}, no_pose, ert, {})
  meta = json.loads((tmp_path / 'run.json').read_text())
  assert meta['command'] == 'python experiments/reproduce.py --seeds 0'
  assert meta['commands'] == ['python experiments/reproduce.py --seeds 1,2',
                              'python experiments/reproduce.py --seeds 0']


def test_a_run_is_recorded_as_soon_as_it_is_evaluated(tmp_path, monkeypatch):
  """record_run: the evaluation (a subprocess, faked here by writing its results.json) and then
  the run's record in --results_dir, before any other run has ended."""
  import subprocess
  workdir = tmp_path / 'out' / 'tree_moe_seed1'
  workdir.mkdir(parents=True)
  (workdir / 'metrics.jsonl').write_text(json.dumps({'step': 10, 'eval/nme/stage0': 0.05}))
  (workdir / 'config.json').write_text(json.dumps({'moe': {'balance_weight': 0.1}}))
  commands = []

  def fake_run(command, stdout, stderr, cwd, env):
    commands.append(command)
    (workdir / 'results.json').write_text(json.dumps(_results_json()))
    return subprocess.CompletedProcess(command, 0)

  monkeypatch.setattr(reproduce.subprocess, 'run', fake_run)
  args = _scheduling_args(results_dir=tmp_path / 'results', out=tmp_path / 'out',
                          compare_routings='auto')
  reproduce.record_run(args, reproduce.Timings(tmp_path / 't.json'), 'tree_moe', 1, workdir)
  assert commands[0][-5:] == ['tree_moe', '1', str(workdir), '10', 'auto']
  record = json.loads((tmp_path / 'results' / 'tree_moe_seed1.json').read_text())
  assert (record['arch'], record['seed'], record['config']) == (
      'tree_moe', 1, 'configs/tree_moe.py:reproduction')
  assert record['validation_curve'] == [[10, 0.05]]
  assert record['moe'] == {'balance_weight': 0.1}  # the objective it trained with
  frontal = _results_json()['protocols']['synthetic_table1']['subsets']['frontal']['nme']
  assert record['views']['frontal']['nme'] == pytest.approx(frontal, rel=1e-5)


def test_greedy_and_concentration_bars_by_hand():
  """Issue 34's bars: greedy within 10% of dense on every view (the worst view named), 90% of the
  tree gate's regression mass on at most 25% of the regressors (mean over seeds)."""
  faces = np.ones(4)

  def routed(arch, seed, greedy_frontal, share):
    record = _record(arch, seed, dict.fromkeys(VIEWS, faces), share={'regression': share})
    nme = {'dense': dict.fromkeys(reproduce.ALL_VIEWS, 0.02),
           'greedy': dict.fromkeys(reproduce.ALL_VIEWS, 0.021) | {'frontal': greedy_frontal}}
    return record | {'routing': {'nme': nme, 'share_for_90': {}}}

  # tree_moe: frontal greedy 0.022 and 0.0224 over dense 0.02 -> 1.12x, over the bar.
  runs = {('tree_moe', 0): routed('tree_moe', 0, 0.022, 0.2),
          ('tree_moe', 1): routed('tree_moe', 1, 0.0224, 0.25),
          ('softmax_moe', 0): routed('softmax_moe', 0, 0.021, 0.5)}
  assert reproduce.greedy_ratios(runs, 'tree_moe')['frontal'] == pytest.approx(1.11)
  greedy, share = reproduce.routing_verdicts(runs)
  assert '**did not hold**' in greedy and 'tree_moe 1.11x (frontal)' in greedy
  assert 'softmax_moe 1.05x' in greedy
  assert '**held**' in share and 'tree_moe 22%' in share and 'softmax' not in share
  runs[('tree_moe', 1)] = routed('tree_moe', 1, 0.021, 0.5)  # (0.2 + 0.5) / 2 = 35%
  greedy, share = reproduce.routing_verdicts(runs)
  assert '**held**' in greedy and '**did not hold**' in share and 'tree_moe 35%' in share


def test_the_earlier_choices_are_read_again_on_validation_by_hand(tmp_path):
  """The step count (last 1000 steps' gain) and the last stage (its gain over the one before),
  from each run's validation curve and last evaluation, mean over seeds."""
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in [
      {'step': 1000, 'eval/nme/stage0': 0.2, 'eval/nme/stage1': 0.1},
      {'step': 2000, 'train/loss': 1.0},
      {'step': 2000, 'eval/nme/stage0': 0.05, 'eval/nme/stage1': 0.04, 'eval/nme/stage2': 0.03}]))
  assert reproduce.validation_stages(workdir) == [0.05, 0.04, 0.03]
  faces = dict.fromkeys(VIEWS, np.ones(3))
  runs = {}
  for seed, (before, after, stages) in enumerate([(0.05, 0.04, [0.06, 0.05]),
                                                  (0.07, 0.06, [0.06, 0.03])]):
    record = _record('tree_moe', seed, faces)
    record['validation_curve'] = [[5000, before], [6000, after]]
    record['validation_stages'] = stages
    runs[('tree_moe', seed)] = record
  [row] = reproduce.recheck_rows(runs)
  # steps: 6.00 -> 5.00 (+16.7%); stages: 6.00 -> 4.00 (+33.3%)
  assert row == '| tree_moe | 2 | 5000 -> 6000: 6.00 -> 5.00 (+16.7%) | 6.00 -> 4.00 (+33.3%) |'


def test_a_retrained_estimator_is_compared_with_the_stored_one(tmp_path):
  """A later sitting retrains the estimator (its workdir is gone): pose.json keeps the first
  estimator's curve and adds how far the retrained one's validation MAE is from it."""
  path = tmp_path / 'pose.json'
  first = {'steps': 2, 'schedule': 's', 'seconds': 10.0, 'curve': [
      {'step': 1, 'yaw': 5.0, 'pitch': 4.0, 'roll': 3.0},
      {'step': 2, 'yaw': 4.0, 'pitch': 3.0, 'roll': 2.0}]}
  assert reproduce.write_pose(path, first) == first
  again = first | {'seconds': 12.0, 'curve': [
      {'step': 1, 'yaw': 5.0, 'pitch': 4.0, 'roll': 3.0},
      {'step': 2, 'yaw': 4.0, 'pitch': 3.25, 'roll': 2.0}]}
  stored = reproduce.write_pose(path, again)
  assert stored['curve'] == first['curve'] and stored['seconds'] == 10.0
  assert stored['retrained'][0]['max_abs_diff_deg'] == 0.25
  assert json.loads(path.read_text()) == stored
  # Another schedule is another estimator: it replaces the record.
  other = again | {'schedule': 't'}
  assert reproduce.write_pose(path, other) == other
