"""Figures of the synthetic face set: a montage with landmarks and the pose distributions.

  python -m input_pipeline.synthetic_plots --out docs/figures/

writes synthetic_montage.png (64 faces, visible landmarks green, occluded red, yaw in the corner)
and synthetic_pose_distribution.png (yaw, pitch, roll histograms of both pose distributions).
"""

import argparse
import dataclasses
import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from input_pipeline import synthetic


def montage(path: pathlib.Path, seed: int = 0, rows: int = 8, cols: int = 8) -> None:
  """Faces sorted by yaw, so the grid reads as heads turning from left to right."""
  faces = synthetic.render_faces(rows * cols, seed, synthetic.RenderConfig())
  order = np.argsort(faces['pose'][:, 0])
  size = faces['image'].shape[-1]
  fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.6), dpi=96)
  for ax, i in zip(axes.flat, order):
    ax.imshow(faces['image'][i], cmap='gray', vmin=0, vmax=255, interpolation='bilinear')
    points, visible = faces['landmarks'][i], faces['visibility'][i]
    ax.scatter(*points[visible].T, s=1.2, c='#3f3', linewidths=0)
    ax.scatter(*points[~visible].T, s=1.2, c='#f33', linewidths=0)
    yaw = np.degrees(faces['pose'][i, 0])
    ax.text(3, 3, f'{yaw:+.0f}', color='yellow', fontsize=6, va='top',
            bbox={'facecolor': 'black', 'alpha': 0.5, 'pad': 1, 'linewidth': 0})
    ax.set_xlim(-0.5, size - 0.5)
    ax.set_ylim(size - 0.5, -0.5)
    ax.axis('off')
  fig.subplots_adjust(0, 0, 1, 1, 0.02, 0.02)
  fig.savefig(path)
  plt.close(fig)


def pose_distribution(path: pathlib.Path, num: int = 20000, seed: int = 0) -> None:
  """Histograms of the sampled poses (no rendering: the pose sampler the renderer uses)."""
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), dpi=100)
  for name in synthetic.POSE_DISTRIBUTIONS:
    config = dataclasses.replace(synthetic.RenderConfig(), pose_distribution=name)
    poses = np.degrees(synthetic.sample_poses(num, seed, config))
    for ax, angles, label in zip(axes, poses.T, ('yaw', 'pitch', 'roll')):
      ax.hist(angles, bins=np.arange(-90, 91, 5), histtype='step', density=True, label=name)
      ax.set_xlabel(f'{label} (degrees)')
  axes[0].set_ylabel('density')
  axes[0].legend()
  fig.suptitle(f'Head pose of {num} synthetic faces per distribution')
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', type=pathlib.Path, default=pathlib.Path('docs/figures'))
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  montage(args.out / 'synthetic_montage.png', args.seed)
  pose_distribution(args.out / 'synthetic_pose_distribution.png', seed=args.seed)


if __name__ == '__main__':
  main()
