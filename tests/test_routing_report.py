"""Dense, top-k and greedy side by side (evaluate/routing_report.py, eval.py --compare_routings)."""

import json
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from treemoe_jax import runs as runs_lib
from treemoe_jax.evaluate import evaluator
from treemoe_jax.evaluate import reports
from treemoe_jax.evaluate import routing_report
from treemoe_jax.nn import models
from treemoe_jax.nn import routing as routing_lib


def test_routings_for_learned_gates():
  assert routing_report.routings_for([]) == ['dense']
  assert routing_report.routings_for([1]) == ['dense']
  assert routing_report.routings_for([2]) == ['dense', 'greedy']
  assert routing_report.routings_for([4, 64]) == ['dense', 'topk:2', 'greedy']
  assert routing_report.parse_routings('greedy, topk:4,dense,greedy') == [
      'dense', 'greedy', 'topk:4']
  with pytest.raises(ValueError, match='unknown routing'):
    routing_report.parse_routings('sparse')


def test_compare_flags_what_exceeds_the_ratio():
  nme = {'dense': {'a': 0.02, 'b': 0.04}, 'greedy': {'a': 0.024, 'b': 0.06},
         'topk:2': {'a': 0.021, 'b': 0.041}}
  report = routing_report.compare(nme)
  np.testing.assert_allclose(report['ratio_to_dense']['greedy']['a'], 1.2)
  np.testing.assert_allclose(report['ratio_to_dense']['greedy']['b'], 1.5)
  assert report['flagged'] == {'greedy': ['b']}  # 1.2 <= 1.25 < 1.5
  [line] = routing_report.warning(report)
  assert line.startswith('WARNING: greedy routing is up to 1.5x the dense NME (b)')
  assert routing_report.warning(routing_report.compare({'dense': nme['dense']})) == []
  with pytest.raises(ValueError, match='needs dense'):
    routing_report.compare({'greedy': nme['greedy']})


def test_concentration_by_hand():
  committed = np.tile(np.eye(4)[:, None], (1, 2, 1))  # [N=4, K=2, L=4], one expert per face
  stats = routing_report.concentration(committed)
  assert stats['share_for_90'] == [0.25, 0.25]
  np.testing.assert_allclose(stats['entropy'], [0, 0], atol=1e-7)
  np.testing.assert_allclose(stats['top1_weight'], [1, 1])
  # Four faces, four different experts: specialists, the load spread over all four.
  np.testing.assert_allclose(stats['experts_in_use'], [4, 4], rtol=1e-4)
  assert stats['top1_experts'] == [4, 4]
  uniform = routing_report.concentration(np.full((3, 1, 8), 1 / 8))
  assert uniform['share_for_90'] == [1.0]  # 7 experts carry 87.5% < 90%
  np.testing.assert_allclose(uniform['entropy'], [np.log(8)], rtol=1e-6)
  np.testing.assert_allclose(uniform['experts_in_use'], [8], rtol=1e-4)


def test_a_collapse_commits_every_face_to_the_same_expert():
  """Every face sure of expert 2: Fig. 6's share is as low as for specialists, but the faces use
  one expert between them."""
  collapsed = np.zeros((5, 1, 4))
  collapsed[:, :, 2] = 1
  stats = routing_report.concentration(collapsed)
  assert stats['share_for_90'] == [0.25] and stats['top1_experts'] == [1]
  np.testing.assert_allclose(stats['experts_in_use'], [1])
  # Half the faces on expert 0, half on 1, each sure: two in use, exp(log 2).
  halves = np.zeros((4, 4))
  halves[:2, 0] = halves[2:, 1] = 1
  assert routing_report.experts_in_use(halves) == pytest.approx(2)


def test_markdown_shows_each_routing_and_the_warning():
  report = routing_report.compare({'dense': {'frontal': 0.02}, 'greedy': {'frontal': 0.2}})
  report['stage_top1'] = {'frontal': [0.05, 0.03]}
  report['concentration'] = {'regression': routing_report.concentration(
      np.full((2, 2, 4), 0.25))}
  text = '\n'.join(routing_report.markdown(report))
  for piece in ('| dense | 2.00 | 1.00x |', '| greedy | 20.00 | 10.00x |', '5.00 > 3.00',
                'regression gate (4 experts)', 'WARNING: greedy routing is up to 10.0x'):
    assert piece in text, piece


@pytest.fixture(scope='module')
def evaluated(micro_runs, tmp_path_factory):
  out = tmp_path_factory.mktemp('routing')
  return evaluator.evaluate_workdir(micro_runs['pose_tree_moe'], 'synthetic_table1', out=out,
                                    figures=False, split='validation',
                                    compare_routings='auto'), out


def test_evaluation_reports_routings_on_validation_views(evaluated):
  results, out = evaluated
  assert results['provenance']['split'] == 'validation'
  table = results['protocols']['synthetic_table1']
  assert {row['split'] for row in table['subsets'].values()} == {
      'validation_frontal', 'validation_large_pose', 'validation_occluded'}
  report = results['routing_report']
  assert list(report['nme']) == ['dense', 'topk:2', 'greedy']  # 4 pose experts, 4 regressors
  for view, row in table['subsets'].items():
    np.testing.assert_allclose(report['nme']['dense'][view], row['nme'], rtol=1e-6)
    for routing in ('topk:2', 'greedy'):
      np.testing.assert_allclose(report['ratio_to_dense'][routing][view],
                                 report['nme'][routing][view] / row['nme'], rtol=1e-6)
    assert len(report['stage_top1'][view]) == len(row['nme_per_stage'])
  flagged = {r: sorted(v for v, x in by_view.items() if x > routing_report.COLLAPSE_RATIO)
             for r, by_view in report['ratio_to_dense'].items()}
  assert report['flagged'] == {r: v for r, v in flagged.items() if v}
  assert set(report['concentration']) == {'representation', 'regression'}
  text = (out / 'results.md').read_text()
  assert 'Faces: the validation views' in text and '| greedy |' in text
  assert json.loads((out / 'results.json').read_text())['routing_report']['nme'] == report['nme']
  assert reports.markdown(results) == text


def test_stage_top1_is_the_masked_top1_regressor_from_the_same_shape(micro_runs):
  """One CNN, one stage: the top-1 path of stage 0 from s(0) is what masking the regression gate
  to its top-1 regressor (regression_top_k=1, another code path) gives at stage 0."""
  run = runs_lib.load_run(micro_runs['tree_moe'])
  size, points = run.config.model.image_size, run.config.model.num_landmarks
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (5, size, size)), jnp.float32)
  shape = jnp.asarray(run.mean_shape[None] + rng.normal(0, 2, (5, points, 2)), jnp.float32)
  paths = jax.jit(models.forward(run.model, stage_top1=True))(run.variables, images, shape)
  masked = jax.jit(models.forward(run.model, regression_top_k=1))(run.variables, images, shape)
  np.testing.assert_allclose(paths['stage_top1_shapes'][:, 0], masked['stage_shapes'][:, 0],
                             rtol=1e-5, atol=1e-4)
  dense = jax.jit(models.forward(run.model))(run.variables, images, shape)
  np.testing.assert_allclose(paths['shape'], dense['shape'], rtol=1e-5, atol=1e-4)


def test_warning_for_each_case():
  check = {'checkpoint_step': 100, 'split': 'validation', 'collapse_ratio': 1.25,
           'worst_ratio_to_dense': {'greedy': 10.2, 'topk:2': 1.1}, 'flagged': ['greedy']}
  assert routing_lib.warning_for(check, 'dense') is None
  assert routing_lib.warning_for(None, 'dense') is None
  assert routing_lib.warning_for(check, 'topk:2', 100) is None
  assert 'measured at 10.2x the dense NME on the validation views' in routing_lib.warning_for(
      check, 'greedy', 100)
  assert 'has not been measured' in routing_lib.warning_for(check, 'topk:4', 100)
  assert 'has not been measured' in routing_lib.warning_for(None, 'greedy')
  assert 'measured at step 100; the model is at step 200' in routing_lib.warning_for(
      check, 'topk:2', 200)
  record = routing_lib.check_record(routing_report.compare(
      {'dense': {'a': 0.1, 'b': 0.1}, 'greedy': {'a': 0.2, 'b': 0.11}}), step=7, split='test')
  assert record == {'checkpoint_step': 7, 'split': 'test', 'collapse_ratio': 1.25,
                    'worst_ratio_to_dense': {'greedy': pytest.approx(2.0)},
                    'flagged': ['greedy']}


def test_the_aligner_and_the_export_warn_of_a_collapsed_routing(evaluated, micro_runs, tmp_path):
  """eval.py's routing check, beside the run, reaches Aligner.from_workdir, the export and
  align.py's output; a routing it never measured is said to be unmeasured."""
  from treemoe_jax.inference import aligner  # pylint: disable=g-import-not-at-top
  from treemoe_jax.inference import export  # pylint: disable=g-import-not-at-top
  _, out = evaluated
  workdir = tmp_path / 'run'
  shutil.copytree(micro_runs['pose_tree_moe'], workdir)
  with pytest.warns(aligner.RoutingWarning, match='has not been measured'):
    aligner.Aligner.from_workdir(workdir, routing='greedy', buckets=(1,))
  check = json.loads((out / routing_lib.CHECK_FILE).read_text())
  check['worst_ratio_to_dense']['greedy'] = 9.0  # as a collapsed model's would read
  (workdir / routing_lib.CHECK_FILE).write_text(json.dumps(check))
  with pytest.warns(aligner.RoutingWarning, match='measured at 9.0x the dense NME'):
    model = aligner.Aligner.from_workdir(workdir, routing='greedy', buckets=(1,))
  assert 'not accurate alone' in model.routing_warning
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # dense: nothing to say
    assert aligner.Aligner.from_workdir(workdir, buckets=(1,)).routing_warning is None
  export.export(workdir, tmp_path / 'export', routings=('greedy',), buckets=(1,))
  with pytest.warns(aligner.RoutingWarning, match='measured at 9.0x'):
    aligner.Aligner.from_export(tmp_path / 'export', routing='greedy')
