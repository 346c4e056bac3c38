"""Reports of an evaluation: Markdown tables, figures and several runs side by side.

Pure functions of the results that `treemoe_jax.evaluate` computes (nested dicts of numbers and
per-face arrays), so they are testable without a model: `markdown` (results.md), `write_outputs`
(results.json, results.md, predictions/*.npz and the CED, Fig. 5-7 plots), `comparison_markdown`
and `write_comparison_figures` (Table 1 is six runs).

Axis legend: N faces, K stages, L experts.
"""

import json
import pathlib
from collections.abc import Sequence

import numpy as np

from treemoe_jax.nn import models
from treemoe_jax.nn import routing as routing_lib
from treemoe_jax.evaluate import plots
from treemoe_jax.evaluate import routing_report
# Fig. 6's gate mass, where the routing report computes it (re-exported).
from treemoe_jax.evaluate.routing_report import cumulative_gate_mass, share_for_mass  # noqa: F401

Arrays = dict[str, np.ndarray]


def column(results: dict, name: str) -> dict:
  """A protocol's row for column `name`, a subset or an aggregate."""
  return results['subsets'].get(name) or results['aggregates'][name]


def view_subset(result: dict, view: str) -> dict:
  """The record of one view (a subset of any protocol) in an evaluation's results.json."""
  for proto in result['protocols'].values():
    if view in proto.get('subsets', {}):
      return proto['subsets'][view]
  raise KeyError(view)


def column_nme(result: dict, name: str) -> float:
  """NME (fraction) of one column of any protocol in results.json: a view or an aggregate."""
  for proto in result['protocols'].values():
    if name in proto.get('aggregates', {}):
      return proto['aggregates'][name]['nme']
  return view_subset(result, name)['nme']


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
           f'{prov["seconds"]:.0f} s. Faces: the {prov.get("split", "test")} views; routing: '
           f'{prov.get("routing", "dense")}.', '']
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
  if 'routing_report' in results:
    lines += routing_report.markdown(results['routing_report'])
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


# --- Files and figures. ---


def write_outputs(out: pathlib.Path, results: dict, by_protocol: dict,
                  figure_faces: list[dict] | None, run) -> None:
  """results.json, results.md, per-face arrays and (given `figure_faces`) the figures."""
  out.mkdir(parents=True, exist_ok=True)
  (out / 'results.json').write_text(json.dumps(results, indent=1))
  (out / 'results.md').write_text(markdown(results))
  if 'routing_report' in results:  # what the Aligner and the export read (routing.warning_for)
    prov = results['provenance']
    (out / routing_lib.CHECK_FILE).write_text(json.dumps(routing_lib.check_record(
        results['routing_report'], step=prov['checkpoint_step'], split=prov.get('split', 'test')),
        indent=1))
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
