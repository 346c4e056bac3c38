"""Figures of section 4.4 and CED curves, from evaluation arrays (matplotlib, Agg, no display).

Each function takes plain numpy data and a path, so a notebook can redraw any figure from
`results.json` or `predictions/*.npz` without a model:
  ced          CED curves (fraction of faces with NME <= t), one panel per group of curves;
  pose_space   Fig. 5: faces in head-pose space, coloured by their most-weighted expert CNN;
  gate_mass    Fig. 6: mean cumulative gate weight of the k most-weighted experts;
  top1_stages  Fig. 7: each cascade stage with its top-1 regressor only, estimated vs true pose.

Letters: N faces, P landmarks, K stages, L experts. Shapes in pixels of the 150x150 face crop,
angles in degrees.
"""

import math
import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from treemoe_jax import geometry
from treemoe_jax import metrics

PathLike = str | pathlib.Path

# The 68-point markup as polylines (closed ones repeat their first point): readable shapes.
_CONTOURS = (
    geometry.JAW, geometry.RIGHT_BROW, geometry.LEFT_BROW, geometry.NOSE_BRIDGE,
    geometry.NOSE_BASE, np.r_[geometry.RIGHT_EYE, 36], np.r_[geometry.LEFT_EYE, 42],
    np.r_[geometry.OUTER_MOUTH, 48], np.r_[geometry.INNER_MOUTH, 60])


def _save(fig, path: PathLike) -> None:
  fig.savefig(path, dpi=110)
  plt.close(fig)


def ced_limit(errors: Sequence[np.ndarray]) -> float:
  """The x range of a CED: the paper's 0.10, or wider until it shows 90% of the faces."""
  q90 = float(np.quantile(np.concatenate([np.ravel(e) for e in errors]), 0.9))
  return max(max(metrics.THRESHOLDS), math.ceil(q90 * 20) / 20)


def ced(path: PathLike, panels: Mapping[str, Mapping[str, np.ndarray]], *, title: str) -> None:
  """One panel per entry of `panels` (panel title -> {curve label -> per-face NME [N]})."""
  limit = ced_limit([e for curves in panels.values() for e in curves.values()])
  thresholds = np.linspace(0, limit, 1001)
  rows = max(len(curves) for curves in panels.values())
  fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0 + 0.2 * rows),
                           squeeze=False)
  for ax, (panel, curves) in zip(axes[0], panels.items()):
    for label, errors in curves.items():
      _, fraction = metrics.ced(errors, thresholds)
      ax.plot(100 * thresholds, fraction, lw=1.6,
              label=f'{label}: NME {100 * np.mean(errors):.2f}%, '
                    f'AUC@0.10 {metrics.auc(errors, 0.10):.3f}')
    for t in metrics.THRESHOLDS:
      ax.axvline(100 * t, color='0.6', lw=0.8, ls=':')
    ax.set(xlim=(0, 100 * limit), ylim=(0, 1.01), xlabel='NME (%)',
           ylabel='fraction of faces with NME <= x', title=panel or None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.14))  # off the curves
  fig.suptitle(title, fontsize=10, wrap=True)
  fig.tight_layout()
  _save(fig, path)


def _expert_colors(num_experts: int, tree: bool) -> list:
  """Tree leaves in sibling pairs of one hue (as in the paper's Fig. 5); softmax experts apart."""
  cmap = plt.get_cmap('Paired' if tree and num_experts <= 12 else 'tab10'
                      if num_experts <= 10 else 'tab20')
  return [cmap(i % cmap.N) for i in range(num_experts)]


def pose_space(path: PathLike, pose_deg: np.ndarray, expert: np.ndarray, *, num_experts: int,
               true_pose_deg: np.ndarray | None = None, tree: bool = True, title: str) -> None:
  """Fig. 5: faces in pose space [N, 3] (yaw, pitch, roll), coloured by `expert` [N].

  Panels: true yaw/pitch and yaw/roll (where the experts fall on the faces' actual poses), then
  the estimated yaw/pitch, which is what the gate reads: the partition the tree learned, exactly
  (it differs from head pose where the estimator was fine-tuned by the alignment loss).
  """
  panels = [('estimated', pose_deg, 1, 'pitch')]
  if true_pose_deg is not None:
    panels = [('true', true_pose_deg, 1, 'pitch'), ('true', true_pose_deg, 2, 'roll')] + panels
  colors = _expert_colors(num_experts, tree)
  fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.6, 4.4),
                           squeeze=False)
  for ax, (which, pose, axis, name) in zip(axes[0], panels):
    for l in range(num_experts):
      keep = expert == l
      ax.scatter(pose[keep, 0], pose[keep, axis], s=12, color=colors[l], alpha=0.9,
                 linewidths=0, label=f'{"leaf" if tree else "expert"} {l} ({keep.sum()} faces)')
    ax.set(xlabel=f'{which} yaw (deg)', ylabel=f'{which} {name} (deg)',
           title=f'{which} pose' + (' (the gate\'s input)' if which == 'estimated' else ''))
    ax.axvline(0, color='0.7', lw=0.6)
    ax.axhline(0, color='0.7', lw=0.6)
    ax.grid(alpha=0.25)
  handles, labels = axes[0][0].get_legend_handles_labels()
  fig.legend(handles, labels, loc='center right', fontsize=8, markerscale=2,
             title='top CNN expert')
  fig.suptitle(title, fontsize=10, wrap=True)
  fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
  _save(fig, path)


def gate_mass(path: PathLike, runs: Mapping[str, Mapping[str, Sequence[float]]], *,
              title: str) -> None:
  """Fig. 6: per layer, each run's mean cumulative gate weight of its k top experts vs k.

  `runs`: label -> {'representation': [L], 'regression': [L']} (`evaluate.cumulative_gate_mass`).
  A layer whose runs all have one expert is left out (nothing to rank), and so is a run with one
  expert in a layer where others have several.
  """
  layers = [layer for layer in ('representation', 'regression')
            if any(len(r.get(layer, ())) > 1 for r in runs.values())]
  if not layers:
    layers = ['regression']
  fig, axes = plt.subplots(1, len(layers), figsize=(max(6.5, 5.2 * len(layers)), 4.2),
                           squeeze=False)
  for ax, layer in zip(axes[0], layers):
    sizes = set()
    for label, curves in runs.items():
      if len(curves.get(layer, ())) <= 1:  # one expert (or none): nothing to rank in this panel
        continue
      curve = np.asarray(curves[layer], np.float64)
      sizes.add(len(curve))
      k = np.arange(1, len(curve) + 1)
      ax.plot(k, curve, marker='o', ms=3.5, lw=1.6, label=label)
    for size in sorted(sizes):
      k = np.arange(0, size + 1)
      ax.plot(k, k / size, color='0.55', ls='--', lw=1,
              label='uniform weights' if size == max(sizes) else None)
    ax.axhline(0.9, color='0.6', lw=0.8, ls=':')
    ax.set(xlabel='k, the number of top-weighted experts', ylabel='mean cumulative gate weight',
           title=f'{layer} layer ({max(sizes)} experts)', xlim=(0, max(sizes) + 0.3),
           ylim=(0, 1.02))
    ax.set_xticks(range(0, max(sizes) + 1, max(1, max(sizes) // 8)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
  fig.suptitle(title, fontsize=10, wrap=True)
  fig.tight_layout()
  _save(fig, path)


def _draw_shape(ax, shape: np.ndarray, color, **kw) -> None:
  """A 68-point shape as the markup's contours; any other markup as dots."""
  if len(shape) == geometry.NUM_LANDMARKS:
    for contour in _CONTOURS:
      ax.plot(*shape[contour].T, color=color, lw=0.9, **kw)
  ax.scatter(*shape.T, s=3, color=color, linewidths=0, zorder=3)


def _angles(pose_deg: np.ndarray) -> str:
  return '/'.join(f'{a:+.0f}' for a in pose_deg)


def top1_stages(path: PathLike, faces: Sequence[Mapping[str, np.ndarray]], *, title: str) -> None:
  """Fig. 7: per face (row), s(0), each stage with its top-1 regressor, all experts, the truth.

  A face: image [S, S] in [-1, 1], init [P, 2], top1 [K, P, 2], top1_expert [K], top1_weight [K],
  final [P, 2], truth [P or Q, 2], pose_true [3] deg, pose [3] deg or None.
  """
  num_stages = len(faces[0]['top1'])
  cols = num_stages + 3
  fig, axes = plt.subplots(len(faces), cols, figsize=(1.9 * cols, 2.05 * len(faces) + 0.5),
                           squeeze=False)
  for row, face in zip(axes, faces):
    size = face['image'].shape[-1]
    cells = [('s(0), the mean shape', face['init'], 'deepskyblue')]
    for k in range(num_stages):
      cells.append((f'stage {k + 1}: expert {face["top1_expert"][k]} '
                    f'(g={face["top1_weight"][k]:.2f})', face['top1'][k], 'yellow'))
    cells += [('all experts', face['final'], 'orange'), ('ground truth', face['truth'], 'lime')]
    for ax, (label, shape, color) in zip(row, cells):
      ax.imshow(face['image'], cmap='gray', vmin=-1, vmax=1)
      _draw_shape(ax, shape, color)
      ax.set(xlim=(-0.5, size - 0.5), ylim=(size - 0.5, -0.5), xticks=[], yticks=[])
      ax.set_title(label, fontsize=7)
    pose = (f'est {_angles(face["pose"])}\n' if face.get('pose') is not None else '')
    row[0].set_ylabel(f'{pose}true {_angles(face["pose_true"])}', fontsize=7)
  fig.suptitle(f'{title}\nrows: faces; y/p/r = yaw/pitch/roll (deg), g = the top-1 gate weight',
               fontsize=9)
  fig.tight_layout()
  _save(fig, path)
