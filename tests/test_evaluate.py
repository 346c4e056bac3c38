"""Evaluation: protocol arithmetic against hand-computed values, then end to end on micro runs.

The end-to-end part trains two micro cascades for a few steps (tree_moe, and pose_tree_moe with a
micro pose estimator), evaluates them on the synthetic protocols and compares them, checking
results.json field by field, the Markdown tables and that every figure has content.
"""

import json
import math
import pathlib

import matplotlib.image
import numpy as np
import pytest

from tests.micro import micro_config
from treemoe_jax.evaluate import evaluator as evaluate
from treemoe_jax import geometry
from treemoe_jax import metrics
from treemoe_jax.evaluate import protocols

STEPS = 10
PER_VIEW = 8  # synthetic_faces/tiny's faces per test view
METRIC_KEYS = ('num_images', 'nme', 'nme_std_error', 'fr@0.08', 'auc@0.08', 'fr@0.10',
               'auc@0.10', 'nme_init', 'nme_per_stage', 'ced', 'errors', 'gates')


# --- Protocol arithmetic (no model). ---


def _face(rng, n=5):
  """Random plausible 68-point shapes [n, 68, 2]: the 3D mean face's front view, jittered."""
  base = geometry.MEAN_FACE_3D[:, :2] * 6 + 75
  return base + rng.normal(0, 1.0, (n, 68, 2))


def test_union_pools_faces_and_mean_averages_columns():
  small = {'errors': [0.1, 0.1], 'num_images': 2, 'nme': 0.1, 'nme_init': 0.3,
           'nme_per_stage': [0.2, 0.1], 'fr@0.08': 1.0, 'auc@0.08': 0.0, 'fr@0.10': 0.0,
           'auc@0.10': 0.0, 'nme_std_error': 0.03}
  large = {'errors': [0.02] * 6, 'num_images': 6, 'nme': 0.02, 'nme_init': 0.1,
           'nme_per_stage': [0.04, 0.02], 'fr@0.08': 0.0, 'auc@0.08': 0.75, 'fr@0.10': 0.0,
           'auc@0.10': 0.8, 'nme_std_error': 0.04}
  rows = {'a': small, 'b': large}
  union = evaluate.aggregate_metrics(
      protocols.Aggregate('full', protocols.AggregateKind.UNION, ('a', 'b')), rows)
  # Pooled by hand: (2 * 0.1 + 6 * 0.02) / 8 = 0.04, not the mean of means 0.06.
  assert union['num_images'] == 8
  np.testing.assert_allclose(union['nme'], 0.04)
  np.testing.assert_allclose(union['fr@0.08'], 2 / 8)
  np.testing.assert_allclose(union['nme_per_stage'], [(2 * 0.2 + 6 * 0.04) / 8, 0.04])
  np.testing.assert_allclose(union['nme_init'], (2 * 0.3 + 6 * 0.1) / 8)
  mean = evaluate.aggregate_metrics(
      protocols.Aggregate('mean', protocols.AggregateKind.MEAN, ('a', 'b')), rows)
  np.testing.assert_allclose(mean['nme'], 0.06)
  np.testing.assert_allclose(mean['auc@0.10'], 0.4)
  np.testing.assert_allclose(mean['nme_std_error'], 0.05 / 2)  # sqrt(0.03^2 + 0.04^2) / 2
  assert mean['num_images'] == 8


def test_cofw_mapping_keeps_a_known_offset_whatever_the_truth_markup():
  rng = np.random.default_rng(0)
  gt = _face(rng)
  pred = gt + np.array([3.0, -4.0])  # every point 5 px off, in either markup
  cofw = protocols.TABLE1.subsets[-1]
  assert cofw.landmarks.num_points == 29
  pupil_distance = np.linalg.norm(gt[:, 36:42].mean(1) - gt[:, 42:48].mean(1), axis=-1)
  from_68 = evaluate.subset_errors(pred, gt, cofw)
  gt_29 = np.einsum('qp,npc->nqc', cofw.landmarks.matrix(), gt)
  from_29 = evaluate.subset_errors(pred, gt_29, cofw)
  np.testing.assert_allclose(from_68, 5.0 / pupil_distance, rtol=1e-6)
  np.testing.assert_allclose(from_29, 5.0 / pupil_distance, rtol=1e-6)


def test_yaw_filter_and_dataset_resolution():
  # A |yaw| filter on one split (Table 3's real buckets are the builder's splits instead).
  subset = protocols.Subset('yaw_60_90', 'aflw2000_3d', 'test', 'box', abs_yaw_deg=(60, math.inf))
  yaw = np.radians([10.0, -59.9, 60.1, -90.0, 95.0])
  pose = np.stack([yaw, 0 * yaw, 0 * yaw], -1)
  np.testing.assert_array_equal(subset.keep(pose), [False, False, True, True, True])
  assert protocols.resolve_dataset('synthetic_faces', 'synthetic_faces/tiny') == \
      'synthetic_faces/tiny'
  assert protocols.resolve_dataset('w300', 'synthetic_faces/tiny') == 'w300'
  assert protocols.resolve_dataset('synthetic_faces/small', 'synthetic_faces/tiny') == \
      'synthetic_faces/small'
  assert [p.name for p in protocols.parse('table1, synthetic_table3')] == [
      'table1', 'synthetic_table3']
  with pytest.raises(ValueError, match='unknown protocol'):
    protocols.parse('table9')


def test_protocols_name_their_missing_builders():
  evaluate.check_builders(protocols.parse('table1,table2,table3'))  # every builder registered
  evaluate.check_builders(protocols.parse('synthetic_table1,synthetic_table2,synthetic_table3'))
  elsewhere = protocols.Protocol('wflw', 'a dataset without a builder here', subsets=(
      protocols.Subset('test', 'wflw', 'test', 'inter_ocular'),))
  with pytest.raises(ValueError, match=r'wflw.*synthetic_table1'):
    evaluate.check_builders((elsewhere,))


def test_cumulative_gate_mass_against_a_loop():
  rng = np.random.default_rng(1)
  weights = rng.dirichlet(np.ones(6), size=20)
  expected = np.zeros(6)
  for row in weights:
    expected += np.cumsum(sorted(row, reverse=True)) / len(weights)
  np.testing.assert_allclose(evaluate.cumulative_gate_mass(weights), expected)
  np.testing.assert_allclose(evaluate.cumulative_gate_mass(np.full((3, 4), 0.25)),
                             [0.25, 0.5, 0.75, 1.0])
  np.testing.assert_allclose(evaluate.cumulative_gate_mass(np.eye(4)), np.ones(4))


# --- End to end on micro runs. ---


@pytest.fixture(scope='module')
def data_dir(micro_data_dir) -> str:
  return micro_data_dir


@pytest.fixture(scope='module')
def runs(micro_runs) -> dict[str, pathlib.Path]:
  return micro_runs  # conftest.py: shared with test_aligner.py (training them is the slow part)


@pytest.fixture(scope='module')
def compared(runs, data_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp('compare')
  text = evaluate.compare([runs['tree_moe'], runs['pose_tree_moe']], out=out,
                          batch_size=6)  # 6 does not divide 8: the padded last batch counts
  return out, text


def _assert_figure(path: pathlib.Path) -> None:
  assert path.exists(), path
  assert path.stat().st_size > 5_000, path
  pixels = matplotlib.image.imread(path)
  assert pixels.std() > 0.02, f'{path} is (nearly) blank'


def _check_row(row: dict, num: int, stages: int) -> None:
  assert set(METRIC_KEYS) <= set(row), set(METRIC_KEYS) - set(row)
  assert row['num_images'] == num == len(row['errors'])
  assert np.isfinite(row['nme']) and row['nme'] > 0
  np.testing.assert_allclose(row['nme'], np.mean(row['errors']), rtol=1e-5)
  for key in ('fr@0.08', 'auc@0.08', 'fr@0.10', 'auc@0.10'):
    assert 0 <= row[key] <= 1, (key, row[key])
  assert len(row['nme_per_stage']) == stages
  np.testing.assert_allclose(row['nme_per_stage'][-1], row['nme'], rtol=1e-5)
  fraction = np.asarray(row['ced']['fraction'])
  assert np.all(np.diff(fraction) >= 0) and 0 <= fraction[0] <= fraction[-1] <= 1


@pytest.mark.parametrize('name', ['tree_moe', 'pose_tree_moe'])
def test_results_json_has_every_field(compared, runs, name):
  out, _ = compared
  folder = out / f'{list(runs).index(name)}_{runs[name].name}'
  results = json.loads((folder / 'results.json').read_text())
  prov = results['provenance']
  assert prov['architecture'] == name and prov['checkpoint_step'] == STEPS
  assert prov['config']['model']['architecture'] == name
  assert prov['device']['count'] >= 1 and prov['versions']['jax'] and prov['date']
  assert prov['eval_batch_size'] % prov['device']['count'] == 0
  assert set(results['protocols']) == set(protocols.DEFAULT)
  for dataset_split, sizes in prov['datasets'].items():
    assert dataset_split.startswith('synthetic_faces/tiny:test_')
    assert sizes == {'split_size': PER_VIEW, 'evaluated': PER_VIEW}
  stages = micro_config('').model.num_stages
  for proto_name, proto in results['protocols'].items():
    assert proto['columns'] == list(protocols.get(proto_name).column_names)
    for row in proto['subsets'].values():
      _check_row(row, PER_VIEW, stages)
      assert row['dataset'] == 'synthetic_faces/tiny' and row['normalizer'] == 'box'
      gates = row['gates']
      assert gates['regression']['num_experts'] == 4
      np.testing.assert_allclose(gates['regression']['cumulative_mass_stage0'][-1], 1, rtol=1e-5)
      assert sum(gates['regression']['argmax_share'][0]) == PER_VIEW
      assert ('pose_mae_deg' in row) == (name == 'pose_tree_moe')
  mean = results['protocols']['synthetic_table3']['aggregates']['mean']
  buckets = results['protocols']['synthetic_table3']['subsets'].values()
  np.testing.assert_allclose(mean['nme'], np.mean([b['nme'] for b in buckets]))
  assert results['top1']['subset'] == 'large_pose' and results['top1']['nme_top1'] > 0

  markdown = (folder / 'results.md').read_text()
  assert '| NME (%) |' in markdown and 'yaw_60_90' in markdown
  nme = results['protocols']['synthetic_table1']['subsets']['frontal']['nme']
  assert f'{100 * nme:.2f}' in markdown
  for png in ('ced_synthetic_table1.png', 'ced_synthetic_table3.png', 'fig6_gate_mass.png',
              'fig7_top1_stages.png'):
    _assert_figure(folder / png)
  assert (folder / 'fig5_pose_space.png').exists() == (name == 'pose_tree_moe')
  if name == 'pose_tree_moe':
    _assert_figure(folder / 'fig5_pose_space.png')
  saved = np.load(folder / 'predictions' / 'synthetic_table1' / 'frontal.npz')
  assert saved['shape'].shape == (PER_VIEW, 68, 2) and saved['errors'].shape == (PER_VIEW,)


def test_comparison_puts_runs_side_by_side(compared):
  out, text = compared
  assert text == (out / 'comparison.md').read_text()
  for label in ('| tree_moe |', '| pose_tree_moe |', '| method | frontal | large_pose |'):
    assert label in text
  _assert_figure(out / 'fig6_gate_mass.png')
  _assert_figure(out / 'ced_comparison_synthetic_table1.png')


def test_table2_full_is_the_pooled_faces(runs, data_dir, tmp_path):
  results = evaluate.evaluate_workdir(runs['tree_moe'], 'synthetic_table2', out=tmp_path,
                                      figures=False)
  proto = results['protocols']['synthetic_table2']
  full = proto['aggregates']['full']
  pooled = proto['subsets']['common']['errors'] + proto['subsets']['challenging']['errors']
  assert full['num_images'] == 2 * PER_VIEW
  np.testing.assert_allclose(full['nme'], np.mean(pooled), rtol=1e-5)
  np.testing.assert_allclose(full['fr@0.10'], metrics.failure_rate(pooled, 0.10))
  assert proto['columns'] == ['common', 'challenging', 'full', 'occluded']
  assert not list(tmp_path.glob('*.png'))


def _numbers(tree):
  if isinstance(tree, dict):
    for value in tree.values():
      yield from _numbers(value)
  elif isinstance(tree, list):
    for value in tree:
      yield from _numbers(value)
  elif isinstance(tree, float):
    yield tree


@pytest.mark.parametrize('name', ['tree_moe', 'pose_tree_moe'])
def test_padded_evaluation_holds_no_nan_or_inf(compared, runs, name):
  # compare() ran with batch 6 over 8-face views: each view's last batch had 4 padding rows,
  # whose all-zero truth gives a zero normaliser; none of it may reach a number.
  out, _ = compared
  results = json.loads((out / f'{list(runs).index(name)}_{runs[name].name}' / 'results.json'
                        ).read_text())
  numbers = list(_numbers(results['protocols'])) + list(_numbers(results['top1']))
  assert numbers and all(np.isfinite(numbers))
