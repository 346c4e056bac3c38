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

The metric code below is numpy on the host and pure (`subset_metrics`, `protocol_results`,
`markdown`, `comparison_markdown`), so it is testable without a model.

Axis legend: N faces, B batch, P = 68 landmarks, Q landmarks of a mapped markup, K stages,
L / L' representation / regression experts.
"""

import dataclasses
import datetime
import json
import logging
import pathlib
import subprocess
import time
from collections.abc import Iterator, Sequence

import flax
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

import treemoe_jax
from treemoe_jax import checkpointing
from treemoe_jax import metrics
from treemoe_jax import models
from treemoe_jax import plots
from treemoe_jax import protocols as protocols_lib
from treemoe_jax import train

P = jax.sharding.PartitionSpec
Arrays = dict[str, np.ndarray]
ProtocolsLike = str | protocols_lib.Protocol | Sequence[str | protocols_lib.Protocol]

# Per-face arrays the model pass returns (host numpy, leading axis N).
#   shape [N, P, 2], stage_shapes [N, K, P, 2], gates_representation [N, K, L],
#   gates_regression [N, K, L'], landmarks [N, P or Q, 2] (truth), pose_true [N, 3],
#   pose [N, 3] (estimated; pose-gated models only), position [N] (index in evaluation order).
# Angles in radians.
NUM_FIGURE_FACES = 4  # Fig. 7 rows
CED_JSON_THRESHOLDS = metrics.CED_THRESHOLDS[::10]  # 0 to 0.10 in steps of 0.001


# --- A trained run. ---


@dataclasses.dataclass(frozen=True)
class Run:
  """What evaluation needs of a workdir: its config (the truth), model, weights, step and s(0)."""
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  model: models.FaceAligner
  variables: dict  # host numpy {'params', 'batch_stats'?}
  step: int
  mean_shape: np.ndarray  # [P, 2] crop pixels


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """The workdir's config.json (JSON turned tuples into lists; consumers convert where needed)."""
  path = pathlib.Path(workdir) / 'config.json'
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: is {workdir} a training workdir?')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_run(workdir: str | pathlib.Path, step: int | None = None) -> Run:
  """The newest (or `step`'s) checkpoint of an alignment workdir, restored to host memory."""
  workdir = pathlib.Path(workdir)
  config = load_config(workdir)
  if config.task != 'alignment':
    raise ValueError(f'{workdir} trained a {config.task!r} model; evaluation needs a cascade')
  mngr = checkpointing.manager(str(workdir / 'checkpoints'), asynchronous=False)
  try:
    state = checkpointing.restore_to_host(mngr, step)
    step = int(mngr.latest_step() if step is None else step)
  finally:
    mngr.close()
  variables = {'params': state['params']}
  if state.get('batch_stats'):
    variables['batch_stats'] = state['batch_stats']
  return Run(workdir, config, models.create(config), variables, step,
             np.load(workdir / 'mean_shape.npy'))


# --- The model pass: every face of a split once, on every device. ---


def make_predict(model: models.FaceAligner, mesh, regression_top_k: int = 0):
  """predict(variables, batch) -> per-face outputs, batch-leading, sharded like the batch."""

  def predict(variables, batch):
    out = model.apply(variables, batch['image'], batch['init_shape'], train=False,
                      regression_top_k=regression_top_k)
    rows = {
        'shape': out['shape'],
        'stage_shapes': jnp.moveaxis(out['stage_shapes'], 0, 1),  # [B, K, P, 2]
        'gates_representation': jnp.moveaxis(out['gates']['representation'], 0, 1),
        'gates_regression': jnp.moveaxis(out['gates']['regression'], 0, 1),
        'landmarks': batch['landmarks'], 'pose_true': batch['pose'], 'mask': batch['mask'],
    }
    if 'pose' in out:
      rows['pose'] = out['pose']
    return rows

  replicated = jax.sharding.NamedSharding(mesh, P())
  rows = train.batch_sharding(mesh)
  return jax.jit(predict, in_shardings=(replicated, rows), out_shardings=rows)


def _to_host(tree):
  """Global arrays -> numpy with every row, on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


_BATCH_KEYS = ('image', 'landmarks', 'init_shape', 'pose', 'mask')


def _global_batches(run: Run, mesh, dataset: str, split: str, *, batch_size: int,
                    data_dir: str | None) -> Iterator[dict]:
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
  crop = pipeline.CropConfig(size=run.config.model.image_size, margin=run.config.crop_margin)
  local = pipeline.eval_dataset(
      dataset, global_batch_size=batch_size, mean_shape=run.mean_shape, data_dir=data_dir,
      split=split, process_index=jax.process_index(), process_count=jax.process_count(),
      crop=crop)
  for batch in local.as_numpy_iterator():
    yield train.global_batch(batch, _BATCH_KEYS, mesh)


def split_size(dataset: str, split: str, data_dir: str | None) -> int:
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
  return pipeline.get_builder(dataset, data_dir=data_dir).info.splits[split].num_examples


def predict_split(run: Run, predict, variables, mesh, dataset: str, split: str, *,
                  batch_size: int, data_dir: str | None) -> Arrays:
  """Every face of `split` once: the padded rows dropped by their mask, order kept."""
  chunks = []
  for batch in _global_batches(run, mesh, dataset, split, batch_size=batch_size,
                               data_dir=data_dir):
    rows = _to_host(predict(variables, batch))
    mask = np.asarray(rows.pop('mask'), bool)
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
    rows = _to_host({k: batch[k] for k in ('image', 'init_shape', 'mask')})
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


def cumulative_gate_mass(weights: np.ndarray) -> np.ndarray:
  """Fig. 6's curve [L]: mean over faces of the cumulative sum of gate weights [N, L], sorted down.

  Entry k-1 is the share of the prediction that the k most-weighted experts carry: 1/L, 2/L, ...
  for a uniform gate, all ones for a gate that always picks one expert.
  """
  return np.cumsum(-np.sort(-np.asarray(weights, np.float64), axis=-1), axis=-1).mean(0)


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


def column(results: dict, name: str) -> dict:
  """A protocol's row for column `name`, a subset or an aggregate."""
  return results['subsets'].get(name) or results['aggregates'][name]


# --- Markdown. ---


def _pct(x: float) -> str:
  return f'{100 * x:.2f}'


_ROWS = (('NME (%)', 'nme', _pct), ('NME std. error (%)', 'nme_std_error', _pct),
         ('FR@0.08 (%)', 'fr@0.08', _pct),
         ('FR@0.10 (%)', 'fr@0.10', _pct), ('AUC@0.08', 'auc@0.08', '{:.4f}'.format),
         ('AUC@0.10', 'auc@0.10', '{:.4f}'.format), ('faces', 'num_images', str))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  return lines + ['| ' + ' | '.join(r) + ' |' for r in rows]


def _run_label(provenance: dict) -> str:
  return f'{provenance["architecture"]} ({provenance["variant"]})'


def markdown(results: dict) -> str:
  """results.md: per protocol, the paper's table (NME in %) and the standard extras."""
  prov = results['provenance']
  lines = [f'# Evaluation of `{prov["workdir"]}`', '',
           f'{_run_label(prov)} trained on `{prov["train_dataset"]}`, checkpoint step '
           f'{prov["checkpoint_step"]}; evaluated {prov["date"]} on {prov["device"]["count"]} x '
           f'{prov["device"]["kind"]} (jax {prov["versions"]["jax"]}) in '
           f'{prov["seconds"]:.0f} s.', '']
  for name, proto in results['protocols'].items():
    cols = proto['columns']
    rows = [[label] + [fmt(column(proto, c)[key]) for c in cols] for label, key, fmt in _ROWS]
    rows.append(['NME s(0) > stages (%)'] + [
        ' > '.join(_pct(x) for x in [column(proto, c)['nme_init'], *column(proto, c)[
            'nme_per_stage']]) for c in cols])
    if all('pose_mae_deg' in proto['subsets'].get(c, {}) for c in cols):
      rows.append(['pose MAE y/p/r (deg)'] + [
          '/'.join(f'{v:.1f}' for v in proto['subsets'][c]['pose_mae_deg'].values())
          for c in cols])
    lines += [f'## {name}', '', proto['description'] + '.', '']
    lines += _table(['', *cols], rows)
    lines += ['', _describe_columns(proto), '']
  if 'top1' in results:
    t = results['top1']
    lines += [f'Each stage with its top-1 regressor only (Fig. 7), {t["protocol"]} '
              f'{t["subset"]}: NME {_pct(t["nme_top1"])}% (stages: '
              f'{" > ".join(_pct(x) for x in t["nme_top1_per_stage"])}), against '
              f'{_pct(t["nme_all_experts"])}% with every regressor weighted by its gate.', '']
  return '\n'.join(lines)


def _describe_columns(proto: dict) -> str:
  parts = []
  for c in proto['columns']:
    if c in proto['subsets']:
      s = proto['subsets'][c]
      where = f'`{s["dataset"]}:{s["split"]}`'
      if s['abs_yaw_deg']:
        where += f' with |yaw| in [{s["abs_yaw_deg"][0]}, {s["abs_yaw_deg"][1]}) deg'
      if s['landmarks'] != 'ibug68':
        where += f' on the {s["landmarks"]} points'
      parts.append(f'{c} = {where}, {s["normalizer"]} normaliser')
    else:
      a = proto['aggregates'][c]
      how = 'faces pooled' if a['kind'] == 'union' else 'mean of the columns'
      parts.append(f'{c} = {" + ".join(a["parts"])} ({how})')
  return 'Columns: ' + '; '.join(parts) + '.'


def comparison_markdown(results: Sequence[dict]) -> str:
  """Several runs side by side, one row per run, like Table 1 (NME %), then FR and AUC at 0.10."""
  labels = _unique_labels([r['provenance'] for r in results])
  lines = ['# Comparison', '']
  for label, r in zip(labels, results):
    prov = r['provenance']
    lines.append(f'- {label}: `{prov["workdir"]}`, step {prov["checkpoint_step"]}, trained on '
                 f'`{prov["train_dataset"]}`')
  for name, proto in results[0]['protocols'].items():
    cols = proto['columns']
    lines += ['', f'## {name}', '', proto['description'] + '.']
    for title, key, fmt in [row for row in _ROWS if row[1] in ('nme', 'fr@0.10', 'auc@0.10')]:
      rows = [[label] + [fmt(column(r['protocols'][name], c)[key]) +
                         (f' ± {_pct(column(r["protocols"][name], c)["nme_std_error"])}'
                          if key == 'nme' else '') for c in cols]
              for label, r in zip(labels, results)]
      lines += ['', f'{title}' + (' ± its standard error' if key == 'nme' else '') + ':', '']
      lines += _table(['method', *cols], rows)
  return '\n'.join(lines) + '\n'


def _unique_labels(provenances: Sequence[dict]) -> list[str]:
  labels = [p['architecture'] for p in provenances]
  return [label if labels.count(label) == 1 else f'{label} ({pathlib.Path(p["workdir"]).name})'
          for label, p in zip(labels, provenances)]


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


def evaluate_workdir(workdir: str | pathlib.Path, protocols: ProtocolsLike | None = None, *,
                     data_dir: str | None = None, batch_size: int | None = None,
                     out: str | pathlib.Path | None = None, figures: bool = True) -> dict:
  """Evaluates the newest checkpoint of `workdir` on `protocols`; writes and returns the results.

  `protocols`: names ('synthetic_table1,synthetic_table3'), Protocol objects, or None for the
  run's `config.eval_protocol` (else `protocols.DEFAULT`). Files go to `out` (default: the
  workdir) from process 0; every process must call this.
  """
  start = time.perf_counter()
  chosen = _protocols_of(load_config(workdir), protocols)
  check_builders(chosen)  # before restoring anything
  run = load_run(workdir)
  data_dir = data_dir or run.config.get('data_dir') or None
  batch_size = eval_batch_size(batch_size or run.config.batch_size)
  mesh = train.make_mesh()
  variables = jax.device_put(run.variables, jax.sharding.NamedSharding(mesh, P()))
  predict = make_predict(run.model, mesh)

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
                                      seconds=time.perf_counter() - start),  # the tables' time
             'protocols': tables}
  out = pathlib.Path(out) if out else run.workdir
  figure_faces = None
  if figures:  # every process takes part: the faces are read and predicted on all devices
    results['top1'], figure_faces = top1_pass(
        run, variables=variables, mesh=mesh, by_protocol=by_protocol, batch_size=batch_size,
        data_dir=data_dir)
  if jax.process_index() == 0:
    write_outputs(out, results, by_protocol, figure_faces, run)
  return results


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


def write_outputs(out: pathlib.Path, results: dict, by_protocol: dict,
                  figure_faces: list[dict] | None, run: Run) -> None:
  """results.json, results.md, per-face arrays and (given `figure_faces`) the figures."""
  out.mkdir(parents=True, exist_ok=True)
  (out / 'results.json').write_text(json.dumps(results, indent=1))
  (out / 'results.md').write_text(markdown(results))
  for name, (_, arrays, _) in by_protocol.items():
    folder = out / 'predictions' / name
    folder.mkdir(parents=True, exist_ok=True)
    for subset_name, a in arrays.items():
      errors = np.asarray(results['protocols'][name]['subsets'][subset_name]['errors'])
      np.savez_compressed(folder / f'{subset_name}.npz', errors=errors, **a)
  if figure_faces is None:
    return
  label = _run_label(results['provenance'])
  step = results['provenance']['checkpoint_step']
  for name, proto in results['protocols'].items():
    plots.ced(out / f'ced_{name}.png', {'': ced_curves(proto)},
              title=f'CED, {name}: {label}, step {step}')
  first = next(iter(results['protocols'].values()))
  figure = first['figure_subset']
  plots.gate_mass(out / 'fig6_gate_mass.png',
                  {label: {layer: g['cumulative_mass_stage0']
                           for layer, g in first['subsets'][figure]['gates'].items()}},
                  title=f'Fig. 6: top experts\' share of the gate, stage 1, '
                        f'{figure} ({first["subsets"][figure]["dataset"]})')
  all_faces = _concat(list(_unique_splits(by_protocol).values()))
  if 'pose' in all_faces:
    plots.pose_space(out / 'fig5_pose_space.png', np.degrees(all_faces['pose']),
                     all_faces['gates_representation'][:, 0].argmax(-1),
                     num_experts=all_faces['gates_representation'].shape[-1],
                     true_pose_deg=np.degrees(all_faces['pose_true']),
                     tree=models.GATES[models.parse_architecture(
                         run.config.model.architecture)][0].value == 'tree',
                     title=f'Fig. 5: {len(all_faces["pose"])} test faces by their first-stage '
                           f'representation expert, {label}')
  plots.top1_stages(out / 'fig7_top1_stages.png', figure_faces,
                    title=f'Fig. 7: each stage with its top-1 regressor only, {figure}, {label}')


def ced_curves(proto: dict) -> dict[str, np.ndarray]:
  """Per-face errors of each column that has them (subsets and pooled aggregates)."""
  return {c: np.asarray(column(proto, c)['errors']) for c in proto['columns']
          if 'errors' in column(proto, c)}


def _unique_splits(by_protocol: dict) -> dict:
  """The faces of every evaluated (dataset, split) once, for figures over all test faces."""
  out = {}
  for protocol, arrays, datasets in by_protocol.values():
    for subset in protocol.subsets:
      key = (datasets[subset.name], subset.split, subset.abs_yaw_deg)
      out.setdefault(key, arrays[subset.name])
  return out


def _concat(arrays: list[Arrays]) -> Arrays:
  keys = set.intersection(*(set(a) for a in arrays))
  return {k: np.concatenate([a[k] for a in arrays]) for k in keys}


def compare(workdirs: Sequence[str | pathlib.Path], protocols: ProtocolsLike | None = None, *,
            out: str | pathlib.Path, data_dir: str | None = None, batch_size: int | None = None,
            figures: bool = True) -> str:
  """Evaluates each workdir (into its own folder under `out`) and writes them side by side.

  Writes out/comparison.md, out/ced_comparison_<protocol>.png and out/fig6_gate_mass.png
  (tree vs softmax gates when both kinds are among the runs); returns the Markdown.
  """
  out = pathlib.Path(out)
  results = []
  for i, workdir in enumerate(workdirs):
    name = f'{i}_{pathlib.Path(workdir).resolve().name}'
    results.append(evaluate_workdir(workdir, protocols, data_dir=data_dir, batch_size=batch_size,
                                    out=out / name, figures=figures))
  text = comparison_markdown(results)
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    (out / 'comparison.md').write_text(text)
    if figures:
      write_comparison_figures(out, results)
  return text


def write_comparison_figures(out: pathlib.Path, results: Sequence[dict]) -> None:
  labels = _unique_labels([r['provenance'] for r in results])
  for name, proto in results[0]['protocols'].items():
    panels = {c: {label: np.asarray(column(r['protocols'][name], c)['errors'])
                  for label, r in zip(labels, results)}
              for c in proto['columns'] if 'errors' in column(proto, c)}
    plots.ced(out / f'ced_comparison_{name}.png', panels, title=f'CED, {name}')
  first = next(iter(results[0]['protocols']))
  figure = results[0]['protocols'][first]['figure_subset']
  curves = {label: {layer: g['cumulative_mass_stage0'] for layer, g in
                    r['protocols'][first]['subsets'][figure]['gates'].items()}
            for label, r in zip(labels, results)}
  plots.gate_mass(out / 'fig6_gate_mass.png', curves,
                  title=f'Fig. 6: top experts\' share of the gate, stage 1, {figure}')
