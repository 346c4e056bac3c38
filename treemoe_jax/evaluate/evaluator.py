"""Evaluation (section 4): a trained workdir on the paper's protocols, with provenance and figures.

`evaluate_workdir(workdir, protocols)` restores the newest checkpoint onto every device, runs each
(dataset, split) the protocols name once (padded and masked, so every face counts exactly once),
brings the per-image shapes, gate weights and poses to the host, and computes per subset the mean
NME, the failure rate and AUC at 0.08 and 0.10, and the CED. It writes into the workdir (or `out`):
  results.json   everything, with the config, checkpoint step, split sizes, date, device, versions;
  results.md     one Markdown table per protocol, NME in % as in the paper;
  predictions/<protocol>/<subset>.npz   the per-image arrays;
  ced_<protocol>.png, fig5_pose_space.png (pose-gated models), fig6_gate_mass.png,
  fig7_top1_stages.png (see treemoe_jax/plots.py).
`compare(workdirs)` evaluates several runs and puts them side by side (Table 1 is six runs).
Tables and figures are drawn by `treemoe_jax.reports`; the mesh and global batches come from
`treemoe_jax.parallel`: evaluation imports no training code.

The metric code below is numpy on the host and pure (`subset_metrics`, `protocol_results`), so
it is testable without a model.

Axis legend: N faces, B batch, P = 68 landmarks, Q landmarks of a mapped markup, K stages,
L / L' representation / regression experts.
"""

import datetime
import logging
import pathlib
import subprocess
import time
from collections.abc import Iterator, Sequence

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import treemoe_jax
from treemoe_jax import metrics
from treemoe_jax.nn import models
from treemoe_jax import parallel
from treemoe_jax.evaluate import protocols as protocols_lib
from treemoe_jax.evaluate import reports
from treemoe_jax.evaluate import routing_report
from treemoe_jax.evaluate.routing_report import cumulative_gate_mass  # noqa: F401 (re-exported)
from treemoe_jax.nn import routing as routing_lib
from treemoe_jax import runs
from treemoe_jax.runs import Run, load_run  # noqa: F401 (evaluation's run, re-exported)
from treemoe_jax import xla_options

Arrays = dict[str, np.ndarray]
ProtocolsLike = str | protocols_lib.Protocol | Sequence[str | protocols_lib.Protocol]

# Per-face arrays the model pass returns (host numpy, leading axis N).
#   shape [N, P, 2], stage_shapes [N, K, P, 2], gates_representation [N, K, L],
#   gates_regression [N, K, L'], landmarks [N, P or Q, 2] (truth), pose_true [N, 3],
#   pose [N, 3] (estimated; pose-gated models only), position [N] (index in evaluation order).
# Angles in radians.
NUM_FIGURE_FACES = 4  # Fig. 7 rows
CED_JSON_THRESHOLDS = metrics.CED_THRESHOLDS[::10]  # 0 to 0.10 in steps of 0.001


# --- The model pass: every face of a split once, on every device. ---


def make_predict(model: models.FaceAligner, mesh, regression_top_k: int = 0,
                 routing: str = 'dense', stage_top1: bool = False):
  """predict(variables, batch) -> per-face outputs, batch-leading, sharded like the batch.

  `routing` (routing.py): which experts run; `regression_top_k` masks after running them all;
  `stage_top1`: each stage's top-1 expert path from the dense shape too (models.forward).
  """

  apply = models.forward(model, routing=routing, regression_top_k=regression_top_k,
                         stage_top1=stage_top1)

  def predict(variables, batch):
    rows = apply(variables, batch['image'], batch['init_shape'], batch['pose'])
    rows |= {
        'landmarks': batch['landmarks'], 'pose_true': batch['pose'], 'mask': batch['mask'],
        # Per face, whether its inputs are finite: gathered to every host, so all stop together.
        'finite_inputs': jnp.all(jnp.stack([
            jnp.all(jnp.isfinite(batch[k].reshape(batch[k].shape[0], -1)), axis=1)
            for k in ('image', 'landmarks', 'init_shape', 'pose')]), axis=0),
    }
    if 'landmarks_29' in batch:  # COFW's own 29-point truth, for its mapped column
      rows['landmarks_29'] = batch['landmarks_29']
    return rows

  replicated = parallel.replicated(mesh)
  rows = parallel.batch_sharding(mesh)
  return jax.jit(predict, in_shardings=(replicated, rows), out_shardings=rows,
                 compiler_options=xla_options.inference_options(model.pose_estimator is not None))


_BATCH_KEYS = ('image', 'landmarks', 'init_shape', 'pose', 'mask')
_EXTRA_KEYS = ('landmarks_29',)  # what some datasets add (COFW)


def _global_batches(run: Run, mesh, dataset: str, split: str, *, batch_size: int,
                    data_dir: str | None) -> Iterator[dict]:
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
  crop = pipeline.CropConfig(size=run.config.model.image_size, margin=run.config.crop_margin)
  local = pipeline.eval_dataset(
      dataset, global_batch_size=batch_size, mean_shape=run.mean_shape, data_dir=data_dir,
      split=split, process_index=jax.process_index(), process_count=jax.process_count(),
      crop=crop)
  for batch in local.as_numpy_iterator():
    yield parallel.global_batch(batch, _BATCH_KEYS + tuple(k for k in _EXTRA_KEYS if k in batch),
                                mesh)


def split_size(dataset: str, split: str, data_dir: str | None) -> int:
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
  return pipeline.get_builder(dataset, data_dir=data_dir).info.splits[split].num_examples


def predict_split(run: Run, predict, variables, mesh, dataset: str, split: str, *,
                  batch_size: int, data_dir: str | None) -> Arrays:
  """Every face of `split` once: the padded rows dropped by their mask, order kept."""
  chunks = []
  for batch in _global_batches(run, mesh, dataset, split, batch_size=batch_size,
                               data_dir=data_dir):
    rows = parallel.to_host(predict(variables, batch))
    mask = np.asarray(rows.pop('mask'), bool)
    finite = np.asarray(rows.pop('finite_inputs'), bool)
    if not finite[mask].all():
      raise FloatingPointError(f'{dataset}:{split}: {int((~finite[mask]).sum())} face(s) with '
                               'NaN/inf in the image, landmarks, s(0) or pose; fix the data')
    chunks.append({k: np.asarray(v)[mask] for k, v in rows.items()})
  out = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
  # Evaluation order (the split's order on one process): how figures find a face's image again.
  out['position'] = np.arange(len(out['shape']))
  expected = split_size(dataset, split, data_dir)
  if len(out['shape']) != expected:
    raise RuntimeError(f'{dataset}:{split}: evaluated {len(out["shape"])} faces, the split has '
                       f'{expected}; every face must count exactly once')
  return out


def images_at(run: Run, mesh, dataset: str, split: str, positions: Sequence[int], *,
              batch_size: int, data_dir: str | None) -> Arrays:
  """The model inputs of a few faces (by position in `predict_split`'s order), for figures.

  A second read of the split, so the main pass keeps no images (AFLW2000-3D would be 180 MB).
  """
  wanted = {int(p): i for i, p in enumerate(positions)}
  out = {'image': [None] * len(wanted), 'init_shape': [None] * len(wanted)}
  seen = 0
  for batch in _global_batches(run, mesh, dataset, split, batch_size=batch_size,
                               data_dir=data_dir):
    rows = parallel.to_host({k: batch[k] for k in ('image', 'init_shape', 'mask')})
    for row in np.flatnonzero(np.asarray(rows['mask'], bool)):
      if seen in wanted:
        for key in out:
          out[key][wanted[seen]] = np.asarray(rows[key][row])
      seen += 1
  return {k: np.stack(v) for k, v in out.items()}


# --- Metrics: pure functions of per-face arrays. ---


def subset_errors(pred: np.ndarray, gt: np.ndarray, subset: protocols_lib.Subset) -> np.ndarray:
  """Per-face NME [N] of shapes pred [N, 68, 2] against truth [N, 68 or Q, 2] in `subset`'s terms.

  With a landmark map (COFW), predictions are mapped to its Q points; truth in 68 points is
  mapped too (its normaliser from the 68 points), truth already in Q points is used as is (its
  normaliser from the map's pupils, or its own box).
  """
  if subset.landmarks is None:
    return metrics.nme(pred, gt, subset.normalizer)
  mapping = subset.landmarks.matrix()  # [Q, 68]
  pred_q = np.einsum('qp,npc->nqc', mapping, pred)
  if gt.shape[1] == pred.shape[1]:
    gt_q, norm = np.einsum('qp,npc->nqc', mapping, gt), metrics.normalizer(gt, subset.normalizer)
  elif gt.shape[1] == subset.landmarks.num_points:
    gt_q = np.asarray(gt, np.float64)
    if subset.normalizer == 'inter_pupil':
      a, b = subset.landmarks.pupils
      norm = np.linalg.norm(gt_q[:, a] - gt_q[:, b], axis=-1)
    elif subset.normalizer == 'box':
      wh = gt_q.max(1) - gt_q.min(1)
      norm = np.sqrt(wh[:, 0] * wh[:, 1])
    else:
      raise ValueError(f'subset {subset.name!r}: no {subset.normalizer} normaliser in the '
                       f'{subset.landmarks.name} markup')
  else:
    raise ValueError(f'subset {subset.name!r}: truth has {gt.shape[1]} points, expected 68 or '
                     f'{subset.landmarks.num_points}')
  if np.any(norm <= 0) or not np.all(np.isfinite(norm)):
    raise ValueError(f'subset {subset.name!r}: a zero or non-finite normaliser')
  return np.linalg.norm(pred_q - gt_q, axis=-1).mean(-1) / norm


def _wrap_deg(radians: np.ndarray) -> np.ndarray:
  return np.degrees(np.arctan2(np.sin(radians), np.cos(radians)))


def select(arrays: Arrays, subset: protocols_lib.Subset) -> Arrays:
  """The faces of an evaluated split that belong to `subset` (its |yaw| filter)."""
  keep = subset.keep(arrays['pose_true'])
  if not keep.any():
    raise ValueError(f'subset {subset.name!r}: no face of {subset.dataset}:{subset.split} has '
                     f'|yaw| in {subset.abs_yaw_deg} deg')
  return {k: v[keep] for k, v in arrays.items()}


def _errors_row(errors: np.ndarray, stage_errors: np.ndarray, init_errors: np.ndarray) -> dict:
  """The table row of per-face errors [N] (and per stage [K, N], s(0) [N])."""
  _, fraction = metrics.ced(errors, CED_JSON_THRESHOLDS)
  return metrics.summary(errors) | {
      # The standard error of the mean NME: how far apart two runs must be to differ (64 faces
      # per synthetic view give about 0.5% NME).
      'nme_std_error': float(errors.std(ddof=1) / np.sqrt(len(errors))) if len(errors) > 1
                       else 0.0,
      'nme_init': float(init_errors.mean()),
      'nme_per_stage': [float(e.mean()) for e in stage_errors],
      'ced': {'thresholds': CED_JSON_THRESHOLDS.round(4).tolist(),
              'fraction': fraction.round(6).tolist()},
      'errors': errors.round(6).tolist(),
  }


def subset_metrics(arrays: Arrays, subset: protocols_lib.Subset, mean_shape: np.ndarray) -> dict:
  """Everything reported for one subset's faces: the table row, per-stage NME, gates, pose."""
  gt = arrays['landmarks']
  if subset.landmarks is not None and f'landmarks_{subset.landmarks.num_points}' in arrays:
    gt = arrays[f'landmarks_{subset.landmarks.num_points}']  # the markup's own annotation
  errors = subset_errors(arrays['shape'], gt, subset)
  stage_errors = np.stack([subset_errors(arrays['stage_shapes'][:, k], gt, subset)
                           for k in range(arrays['stage_shapes'].shape[1])])
  init = np.broadcast_to(mean_shape, arrays['shape'].shape)
  row = _errors_row(errors, stage_errors, subset_errors(init, gt, subset))
  row['gates'] = {}
  for layer in ('representation', 'regression'):
    weights = arrays[f'gates_{layer}']  # [N, K, L]
    top = weights.argmax(-1)  # [N, K]
    row['gates'][layer] = {
        'num_experts': int(weights.shape[-1]),
        'mean_weight': weights.mean(0).round(6).tolist(),  # [K][L]
        'argmax_share': [np.bincount(top[:, k], minlength=weights.shape[-1]).tolist()
                         for k in range(weights.shape[1])],  # [K][L] face counts
        'cumulative_mass_stage0': cumulative_gate_mass(weights[:, 0]).round(6).tolist(),
    }
  if 'pose' in arrays:
    error = np.abs(_wrap_deg(arrays['pose'] - arrays['pose_true'])).mean(0)
    row['pose_mae_deg'] = dict(zip(('yaw', 'pitch', 'roll'), error.round(4).tolist()))
  return row


_MEANED = ('nme', 'fr@0.08', 'auc@0.08', 'fr@0.10', 'auc@0.10', 'nme_init')


def aggregate_metrics(aggregate: protocols_lib.Aggregate, rows: dict[str, dict]) -> dict:
  """A derived column from its parts' rows: pooled faces ('union') or mean of values ('mean')."""
  parts = [rows[name] for name in aggregate.parts]
  base = {'kind': aggregate.kind.value, 'parts': list(aggregate.parts)}
  if aggregate.kind == protocols_lib.AggregateKind.UNION:
    errors = np.concatenate([np.asarray(p['errors']) for p in parts])
    # Per-stage and s(0) means pooled exactly: face-weighted means of the parts' means.
    counts = np.array([p['num_images'] for p in parts], np.float64)
    stages = np.array([p['nme_per_stage'] for p in parts])
    row = _errors_row(errors, np.zeros((0, len(errors))), np.zeros(1))
    row['nme_per_stage'] = (counts @ stages / counts.sum()).tolist()
    row['nme_init'] = float(counts @ [p['nme_init'] for p in parts] / counts.sum())
    return base | row
  row = {k: float(np.mean([p[k] for p in parts])) for k in _MEANED}
  row['nme_per_stage'] = np.mean([p['nme_per_stage'] for p in parts], axis=0).tolist()
  # The parts are independent sets: the standard errors add in quadrature.
  row['nme_std_error'] = float(np.sqrt(sum(p['nme_std_error']**2 for p in parts)) / len(parts))
  return base | row | {'num_images': int(sum(p['num_images'] for p in parts))}


def protocol_results(protocol: protocols_lib.Protocol, arrays_by_subset: dict[str, Arrays],
                     mean_shape: np.ndarray, datasets: dict[str, str]) -> dict:
  """The protocol's rows: every subset, then its aggregates; `datasets` names what ran."""
  subsets = {}
  for subset in protocol.subsets:
    subsets[subset.name] = {
        'dataset': datasets[subset.name], 'split': subset.split,
        'normalizer': subset.normalizer,
        'landmarks': subset.landmarks.name if subset.landmarks else 'ibug68',
        'abs_yaw_deg': list(subset.abs_yaw_deg) if subset.abs_yaw_deg else None,
    } | subset_metrics(arrays_by_subset[subset.name], subset, mean_shape)
  aggregates = {a.name: aggregate_metrics(a, subsets) for a in protocol.aggregates}
  return {'description': protocol.description, 'columns': list(protocol.column_names),
          'figure_subset': protocol.figure_subset_name, 'subsets': subsets,
          'aggregates': aggregates}


# --- Provenance and the driver. ---


def _git_commit() -> str | None:
  try:
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run(['git', '-C', str(root), 'rev-parse', 'HEAD'], capture_output=True,
                         text=True, timeout=10, check=True).stdout.strip()
    return out or None
  except (OSError, subprocess.SubprocessError):
    return None


def provenance(run: Run, *, sizes: dict[str, dict], batch_size: int, seconds: float) -> dict:
  device = jax.devices()[0]
  return {
      'workdir': str(run.workdir.resolve()),
      'architecture': run.config.model.architecture,
      'variant': run.config.get('variant', ''),
      'train_dataset': run.config.dataset,
      'checkpoint_step': run.step,
      'config': run.config.to_dict(),
      'datasets': sizes,
      'eval_batch_size': batch_size,
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'device': {'platform': device.platform, 'kind': device.device_kind,
                 'count': jax.device_count(), 'process_count': jax.process_count()},
      'versions': {'jax': jax.__version__, 'flax': flax.__version__, 'numpy': np.__version__,
                   'treemoe_jax': treemoe_jax.__version__, 'git_commit': _git_commit()},
      'seconds': round(seconds, 2),
  }


def check_builders(protocols: Sequence[protocols_lib.Protocol]) -> None:
  """A clear error, before any work, when a protocol needs a dataset builder not written yet."""
  from input_pipeline import datasets  # pylint: disable=g-import-not-at-top (TensorFlow)
  missing = protocols_lib.missing_builders(tuple(protocols), datasets.NAMES)
  if missing:
    names = ', '.join(p.name for p in protocols)
    raise ValueError(
        f'protocol {names} needs the TFDS builder(s) {", ".join(missing)}, which this checkout '
        f'does not have yet (registered: {", ".join(datasets.NAMES)}). Evaluate on the '
        f'synthetic views instead: --protocol '
        f'{",".join(n for n in protocols_lib.PROTOCOLS if n.startswith("synthetic"))}')


def eval_batch_size(batch_size: int) -> int:
  """`batch_size` rounded up so that every device gets the same number of rows."""
  step = jax.device_count()
  return max(step, -(-int(batch_size) // step) * step)


def _protocols_of(config: ml_collections.ConfigDict, protocols: ProtocolsLike | None
                  ) -> tuple[protocols_lib.Protocol, ...]:
  return protocols_lib.parse(protocols or config.get('eval_protocol') or protocols_lib.DEFAULT)


def prepare_datasets(protocols: Sequence[protocols_lib.Protocol], run_dataset: str, *,
                     data_dir: str | None, manual_dir: str | None) -> None:
  """Prepares every dataset the protocols read (from `manual_dir` for downloaded data) once."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
  names = dict.fromkeys(protocols_lib.resolve_dataset(s.dataset, run_dataset)
                        for p in protocols for s in p.subsets)
  for name in names:
    pipeline.get_builder(name, data_dir=data_dir, manual_dir=manual_dir)


def evaluate_workdir(workdir: str | pathlib.Path, protocols: ProtocolsLike | None = None, *,
                     data_dir: str | None = None, manual_dir: str | None = None,
                     batch_size: int | None = None,
                     out: str | pathlib.Path | None = None, figures: bool = True,
                     routing: str = 'dense', split: str = 'test',
                     compare_routings: str | Sequence[str] | None = None) -> dict:
  """Evaluates the newest checkpoint of `workdir` on `protocols`; writes and returns the results.

  `routing`: 'dense' (the paper), 'topk:K' or 'greedy': only those experts run (routing.py).
  `split`: 'test' (the final tables) or 'validation' (the synthetic protocols' validation views,
  where choices are made: protocols.on_split).
  `compare_routings`: 'auto' (dense, top-2 and greedy where the model has learned gates), or
  routings to run beside dense on every subset (results['routing_report'], routing_report.py).

  `protocols`: names ('synthetic_table1,synthetic_table3'), Protocol objects, or None for the
  run's `config.eval_protocol` (else `protocols.DEFAULT`). Files go to `out` (default: the
  workdir) from process 0; every process must call this.
  """
  start = time.perf_counter()
  chosen = tuple(protocols_lib.on_split(p, split)
                 for p in _protocols_of(runs.load_config(workdir), protocols))
  check_builders(chosen)  # before restoring anything
  run = load_run(workdir)
  data_dir = data_dir or run.config.get('data_dir') or None
  prepare_datasets(chosen, run.config.dataset, data_dir=data_dir, manual_dir=manual_dir)
  batch_size = eval_batch_size(batch_size or run.config.batch_size)
  mesh = parallel.make_mesh()
  variables = jax.device_put(run.variables, parallel.replicated(mesh))
  routings = _routings_to_compare(run.model, compare_routings)
  dense_main = routing_lib.parse(routing).kind == 'dense'
  predict = make_predict(run.model, mesh, routing=routing,
                         stage_top1=bool(routings) and dense_main)

  splits, sizes = {}, {}  # (dataset, split) -> arrays; 'dataset:split' -> sizes
  by_protocol = {}
  for protocol in chosen:
    arrays, datasets = {}, {}
    for subset in protocol.subsets:
      key = (protocols_lib.resolve_dataset(subset.dataset, run.config.dataset), subset.split)
      if key not in splits:
        logging.info('evaluating %s on %s:%s', run.workdir, *key)
        splits[key] = predict_split(run, predict, variables, mesh, *key, batch_size=batch_size,
                                    data_dir=data_dir)
        sizes[':'.join(key)] = {'split_size': split_size(*key, data_dir),
                                'evaluated': len(splits[key]['shape'])}
      arrays[subset.name], datasets[subset.name] = select(splits[key], subset), key[0]
    by_protocol[protocol.name] = (protocol, arrays, datasets)

  tables = {name: protocol_results(protocol, arrays, run.mean_shape, datasets)
            for name, (protocol, arrays, datasets) in by_protocol.items()}
  results = {'provenance': provenance(run, sizes=sizes, batch_size=batch_size,
                                      seconds=time.perf_counter() - start)  # the tables' time
             | {'routing': str(routing_lib.parse(routing)), 'split': split},
             'protocols': tables}
  if routings:
    results['routing_report'] = routing_pass(
        run, variables=variables, mesh=mesh, by_protocol=by_protocol, splits=splits,
        main_routing=str(routing_lib.parse(routing)), routings=routings, batch_size=batch_size,
        data_dir=data_dir)
    for line in routing_report.warning(results['routing_report']):
      logging.warning('%s: %s', run.workdir, line)
  out = pathlib.Path(out) if out else run.workdir
  figure_faces = None
  if figures:  # every process takes part: the faces are read and predicted on all devices
    results['top1'], figure_faces = top1_pass(
        run, variables=variables, mesh=mesh, by_protocol=by_protocol, batch_size=batch_size,
        data_dir=data_dir)
  if jax.process_index() == 0:
    reports.write_outputs(out, results, by_protocol, figure_faces, run)
  return results


def _learned_experts(model: models.FaceAligner) -> list[int]:
  """The expert counts of the model's learned (non-uniform) gates."""
  spec = model.stage
  return [n for kind, n in ((spec.representation_gate, spec.num_representation_experts),
                            (spec.regression_gate, spec.num_regression_experts))
          if kind != 'uniform']


def _routings_to_compare(model: models.FaceAligner,
                         routings: str | Sequence[str] | None) -> list[str]:
  """[] (no comparison), or dense first and the others ('auto': routing_report.routings_for)."""
  if not routings:
    return []
  if routings == 'auto':
    chosen = routing_report.routings_for(_learned_experts(model))
  else:
    chosen = routing_report.parse_routings(
        routings if isinstance(routings, str) else ','.join(routings))
  return chosen if len(chosen) > 1 else []


def routing_pass(run: Run, *, variables, mesh, by_protocol, splits, main_routing: str,
                 routings: Sequence[str], batch_size: int, data_dir) -> dict:
  """Every subset's NME under each routing (the main pass's reused), the dense gates'
  concentration per stage, and Fig. 7 per stage: each stage's top-1 path from the dense shape."""
  subsets = {}  # name -> (subset, split key): the first protocol naming it wins
  for protocol, _, datasets in by_protocol.values():
    for subset in protocol.subsets:
      subsets.setdefault(subset.name, (subset, (datasets[subset.name], subset.split)))
  nme, dense_arrays = {}, {}
  for routing in routings:
    if routing == main_routing:
      by_split = {key: splits[key] for _, key in subsets.values()}
    else:
      predict = make_predict(run.model, mesh, routing=routing, stage_top1=routing == 'dense')
      by_split = {key: predict_split(run, predict, variables, mesh, *key, batch_size=batch_size,
                                     data_dir=data_dir)
                  for key in dict.fromkeys(key for _, key in subsets.values())}
    nme[routing] = {}
    for name, (subset, key) in subsets.items():
      arrays = select(by_split[key], subset)
      nme[routing][name] = float(subset_errors(arrays['shape'], arrays['landmarks'],
                                               subset).mean())
      if routing == 'dense':
        dense_arrays[name] = arrays
  report = routing_report.compare(nme)
  report['stage_top1'] = {}
  for name, arrays in dense_arrays.items():
    if 'stage_top1_shapes' in arrays:
      subset, stages = subsets[name][0], arrays['stage_top1_shapes'].shape[1]
      report['stage_top1'][name] = [
          float(subset_errors(arrays['stage_top1_shapes'][:, k], arrays['landmarks'],
                              subset).mean()) for k in range(stages)]
  spec = run.model.stage
  report['concentration'] = {}
  for layer, kind in (('representation', spec.representation_gate),
                      ('regression', spec.regression_gate)):
    if kind != 'uniform':
      weights = np.concatenate([a[f'gates_{layer}'] for a in dense_arrays.values()])
      report['concentration'][layer] = routing_report.concentration(weights)
  return report


def top1_pass(run: Run, *, variables, mesh, by_protocol, batch_size, data_dir
              ) -> tuple[dict, list[dict]]:
  """Fig. 7: the first protocol's figure subset with each stage's top-1 regressor only.

  Returns the subset's NME that way (next to all experts': what one regressor alone is worth)
  and a few faces spread over its yaw range for the figure.
  """
  protocol, arrays, datasets = next(iter(by_protocol.values()))
  subset = next(s for s in protocol.subsets if s.name == protocol.figure_subset_name)
  dataset = datasets[subset.name]
  chosen = arrays[subset.name]
  top1 = select(predict_split(run, make_predict(run.model, mesh, regression_top_k=1), variables,
                              mesh, dataset, subset.split, batch_size=batch_size,
                              data_dir=data_dir), subset)
  errors = subset_errors(top1['shape'], top1['landmarks'], subset)
  summary = {'subset': subset.name, 'protocol': protocol.name, 'nme_top1': float(errors.mean()),
             'nme_all_experts': float(subset_errors(chosen['shape'], chosen['landmarks'],
                                                    subset).mean()),
             'nme_top1_per_stage': [
                 float(subset_errors(top1['stage_shapes'][:, k], top1['landmarks'],
                                     subset).mean())
                 for k in range(top1['stage_shapes'].shape[1])]}
  order = np.argsort(chosen['pose_true'][:, 0])
  picks = order[np.unique(np.linspace(0, len(order) - 1, NUM_FIGURE_FACES).round().astype(int))]
  inputs = images_at(run, mesh, dataset, subset.split, chosen['position'][picks],
                     batch_size=batch_size, data_dir=data_dir)
  faces = []
  for j, i in enumerate(picks):
    weights = top1['gates_regression'][i]  # [K, L'] the gate's weights along the top-1 path
    faces.append({
        'image': inputs['image'][j], 'init': inputs['init_shape'][j],
        'top1': top1['stage_shapes'][i], 'top1_expert': weights.argmax(-1),
        'top1_weight': weights.max(-1), 'final': chosen['shape'][i],
        'truth': chosen['landmarks'][i], 'pose_true': np.degrees(chosen['pose_true'][i]),
        'pose': np.degrees(chosen['pose'][i]) if 'pose' in chosen else None,
    })
  return summary, faces


def compare(workdirs: Sequence[str | pathlib.Path], protocols: ProtocolsLike | None = None, *,
            out: str | pathlib.Path, data_dir: str | None = None, manual_dir: str | None = None,
            batch_size: int | None = None,
            figures: bool = True, routing: str = 'dense', split: str = 'test',
            compare_routings: str | Sequence[str] | None = None) -> str:
  """Evaluates each workdir (into its own folder under `out`) and writes them side by side.

  Writes out/comparison.md, out/ced_comparison_<protocol>.png and out/fig6_gate_mass.png
  (tree vs softmax gates when both kinds are among the runs); returns the Markdown.
  """
  out = pathlib.Path(out)
  results = []
  for i, workdir in enumerate(workdirs):
    name = f'{i}_{pathlib.Path(workdir).resolve().name}'
    results.append(evaluate_workdir(workdir, protocols, data_dir=data_dir, manual_dir=manual_dir,
                                    batch_size=batch_size, out=out / name, figures=figures,
                                    routing=routing, split=split,
                                    compare_routings=compare_routings))
  text = reports.comparison_markdown(results)
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    (out / 'comparison.md').write_text(text)
    if figures:
      reports.write_comparison_figures(out, results)
  return text


