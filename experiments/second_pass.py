"""Does a second pass, re-cropped around the first pass's landmarks, help a detector's box?

  pip install -e '.[train,detect]'
  python experiments/second_pass.py --workdir WORKDIR [--faces 400] [--json docs/data/second_pass.json]

On the first `--faces` rendered faces of the `validation` split (every pose; never the test
views), each installed detector's box (mapped to the landmark box, `treemoe_jax.inference.detect`)
and the true landmark box are aligned with one pass and with two (`Aligner(passes=2)`), and the
box-normalised NME (the truth's sqrt(w h)) compared on the same faces, by |yaw|, with the paired
difference's standard error. The faces a detector finds are those whose true box holds the
centre of one of its detections (`experiments/detector_calibration.py`).
"""

import argparse
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import input_pipeline.datasets  # noqa: E402,F401 (registers)
from input_pipeline import pipeline  # noqa: E402
from treemoe_jax import metrics  # noqa: E402
from treemoe_jax.inference import aligner as aligner_lib  # noqa: E402
from treemoe_jax.inference import detect  # noqa: E402

YAW_BINS = ((0, 30), (30, 60), (60, 91))


def validation_faces(dataset: str, count: int, data_dir: str | None):
  """(images [N, H, W], landmarks [N, 68, 2], boxes [N, 4], |yaw| degrees [N])."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = pipeline.get_builder(dataset, data_dir=data_dir)
  images, points, boxes, yaws = [], [], [], []
  for example in tfds.as_numpy(builder.as_dataset(split=f'validation[:{count}]')):
    images.append(example['image'])
    points.append(example['landmarks'])
    boxes.append(example['box'])
    yaws.append(abs(np.degrees(example['pose'][0])))
  return np.stack(images), np.stack(points), np.stack(boxes), np.array(yaws)


def detector_boxes(detector, images, truth_boxes):
  """Per face the mapped box of the detection whose centre is inside the true box, or None."""
  found = []
  for image, box in zip(images, truth_boxes):
    best = None
    for d in detector(image):  # best first
      centre = (d.box[:2] + d.box[2:]) / 2
      if np.all((centre >= box[:2]) & (centre <= box[2:])):
        best = np.asarray(d.box, np.float32)
        break
    found.append(best)
  return found


def compare(model, images, landmarks, boxes, yaws, keep) -> dict:
  """NME with one and two passes on the faces `keep`, overall and by |yaw|."""
  idx = np.flatnonzero(keep)
  errors = {}
  for passes in (1, 2):
    pred = np.stack([model.align(images[i], [boxes[i]], passes=passes)[0].landmarks
                     for i in idx])
    errors[passes] = metrics.nme(pred, landmarks[idx], 'box')
  diff = errors[2] - errors[1]

  def stats(mask):
    if not mask.any():
      return None
    d = diff[mask]
    return {'faces': int(mask.sum()), 'one_pass': float(errors[1][mask].mean()),
            'two_passes': float(errors[2][mask].mean()), 'difference': float(d.mean()),
            'standard_error': float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None}

  out = {'all': stats(np.ones(len(idx), bool))}
  for lo, hi in YAW_BINS:
    out[f'{lo}-{min(hi, 90)}'] = stats((yaws[idx] >= lo) & (yaws[idx] < hi))
  return out


def table(record: dict) -> str:
  lines = ['| boxes | faces | NME % one pass | two passes | difference (SE) | by abs(yaw) 0-30 / '
           '30-60 / 60-90: difference |', '|---|---|---|---|---|---|']
  for name, result in record['boxes'].items():
    a = result['all']
    bins = ' / '.join('-' if result[k] is None else f"{100 * result[k]['difference']:+.2f}"
                      for k in ('0-30', '30-60', '60-90'))
    lines.append(f"| {name} | {a['faces']} | {100 * a['one_pass']:.2f} | "
                 f"{100 * a['two_passes']:.2f} | {100 * a['difference']:+.2f} "
                 f"({100 * a['standard_error']:.2f}) | {bins} |")
  return '\n'.join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--dataset', default='synthetic_faces/default')
  p.add_argument('--data_dir', default=None)
  p.add_argument('--faces', type=int, default=400)
  p.add_argument('--json', default=None)
  args = p.parse_args(argv)
  images, landmarks, truth_boxes, yaws = validation_faces(args.dataset, args.faces,
                                                          args.data_dir)
  model = aligner_lib.Aligner.from_workdir(args.workdir)
  record = {'model': args.workdir, 'dataset': args.dataset, 'split': f'validation[:{args.faces}]',
            'boxes': {}}
  record['boxes']['true landmark box'] = compare(model, images, landmarks, truth_boxes, yaws,
                                                 np.ones(len(images), bool))
  for name in detect.available():
    found = detector_boxes(detect.make(name), images, truth_boxes)
    keep = np.array([b is not None for b in found])
    boxes = np.stack([b if b is not None else truth_boxes[i] for i, b in enumerate(found)])
    record['boxes'][f'{name} detector'] = compare(model, images, landmarks, boxes, yaws, keep)
    print(f'{name}: {keep.sum()} of {len(keep)} faces found', flush=True)
  print(table(record))
  if args.json:
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(record, indent=1) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
