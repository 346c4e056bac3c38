"""Accuracy of `geometry.pose_from_landmarks` on rendered faces of known pose.

  python -m benchmarks.pose_from_landmarks [--num 400] [--seed 0] [--noise 0.02]

Renders `num` faces with the default (wide: yaw uniform over +-90 degrees) config and fits the
head pose to their landmarks. The renderer's landmarks are projected 3D points of a face that
varies in identity and expression (open jaw, smile), so the error measures what a rigid mean face
cannot explain, not the optimiser. Rows:
  default              `pose_from_landmarks(landmarks)`: mandible and lower lip out, hidden jaw
                       points out, Cauchy reweighting.
  hidden jaw kept      `hidden_jaw_weight=1.0`, the setting for projected 3D landmarks (these).
  all 68, plain LS     every point, weight 1, no reweighting: a plain weak-perspective fit.
  contour jaw          hidden jaw points moved to the head's visible outline, as annotators (300W)
                       and 300W-LP's `pts_2d` place them (simulated on the renderer's mean head
                       mesh), then the default fit; and the same with the hidden jaw kept.
  noise                Gaussian noise of `noise` x sqrt(box w h) on every coordinate, default fit.
Prints median and 90th-percentile absolute errors (degrees) per angle, for all faces and for
|yaw| > 60 degrees, and the fit's time per face.
"""

import os

for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
  os.environ.setdefault(_var, '1')  # One core: before numpy loads its BLAS.

import argparse  # pylint: disable=wrong-import-position
import time

import numpy as np

from input_pipeline import synthetic
from treemoe_jax import geometry

ANGLES = ('yaw', 'pitch', 'roll')


def contour_snapped(faces: dict[str, np.ndarray]) -> np.ndarray:
  """Landmarks with each self-occluded jaw point moved to the head's outline at its height.

  An approximation of contour-snapped annotation (3DDFA's 300W-LP `pts_2d`, 300W's markup): among
  the renderer's mean head vertices in front of the ears at the jaw point's model height (+-0.4 cm),
  the one farthest out in the image towards the point's side of the face. Scale and shift come
  from a least-squares fit of the known rotation to the rendered landmarks.
  """
  # pylint: disable=protected-access
  model = geometry.MEAN_FACE_3D.astype(np.float64)
  head = synthetic._head_model().vertices.astype(np.float64)
  front = head[head[:, 2] > 0]
  rot = synthetic._rotation(faces['pose'].astype(np.float64)).astype(np.float64)
  landmarks = faces['landmarks'].astype(np.float64)
  flat = np.einsum('bij,pj->bpi', rot[:, :2], model)
  fc, lc = flat - flat.mean(1, keepdims=True), landmarks - landmarks.mean(1, keepdims=True)
  scale = (fc * lc).sum((1, 2)) / (fc * fc).sum((1, 2))
  shift = landmarks.mean(1) - scale[:, None] * flat.mean(1)
  out = landmarks.copy()
  for b, j in zip(*np.nonzero(faces['self_occluded'][:, geometry.JAW])):
    side = 1.0 if model[j, 0] >= 0 else -1.0
    outward = side * rot[b, :2, 0]  # Image direction of the model's +-x axis.
    candidates = front[np.abs(front[:, 1] - model[j, 1]) < 0.4] @ rot[b, :2].T
    out[b, j] = scale[b] * candidates[np.argmax(candidates @ outward)] + shift[b]
  return out.astype(np.float32)


def errors(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """Absolute angle errors [N, 3] in degrees, wrapped to [0, 180]."""
  d = estimate.astype(np.float64) - truth
  return np.abs(np.degrees(np.arctan2(np.sin(d), np.cos(d))))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num', type=int, default=400)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--noise', type=float, default=0.02)
  args = parser.parse_args()

  faces = synthetic.render_faces(args.num, seed=args.seed)
  truth = faces['pose'].astype(np.float64)
  large = np.abs(truth[:, 0]) > np.radians(60)
  landmarks = faces['landmarks']
  snapped = contour_snapped(faces)
  box = faces['box'].astype(np.float64)
  size = np.sqrt((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))
  rng = np.random.default_rng(args.seed)
  noisy = landmarks + args.noise * size[:, None, None] * rng.standard_normal(landmarks.shape)
  rows = {
      'default': (landmarks, {}),
      'hidden jaw kept': (landmarks, dict(hidden_jaw_weight=1.0)),
      'all 68, plain LS': (landmarks, dict(weights=np.ones(68), hidden_jaw_weight=1.0,
                                           cauchy_scale=None)),
      'contour jaw, default': (snapped, {}),
      'contour jaw, hidden jaw kept': (snapped, dict(hidden_jaw_weight=1.0)),
      f'noise {args.noise:g}, default': (noisy, {}),
  }

  print(f'{args.num} rendered faces (seed {args.seed}, wide poses, yaw +-90), '
        f'{int(large.sum())} with |yaw| > 60. Absolute error, degrees: median / p90.\n')
  header = ['landmarks, fit', 'faces'] + [f'{a} med / p90' for a in ANGLES] + ['ms / face']
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for name, (points, kwargs) in rows.items():
    start = time.perf_counter()
    estimate = geometry.pose_from_landmarks(points, **kwargs)
    ms = 1e3 * (time.perf_counter() - start) / args.num
    err = errors(estimate, truth)
    for subset, mask in (('all', slice(None)), ('abs yaw > 60', large)):
      e = err[mask]
      cells = [f'{np.median(e[:, k]):.2f} / {np.percentile(e[:, k], 90):.2f}' for k in range(3)]
      timing = f'{ms:.2f}' if subset == 'all' else ''
      print(f'| {name} | {subset} | ' + ' | '.join(cells) + f' | {timing} |')


if __name__ == '__main__':
  main()
