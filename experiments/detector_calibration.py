"""Measures `treemoe_jax.inference.detect.BOX_MAPS`: each detector's box -> the tight landmark box.

  pip install -e '.[detect]'
  python -m experiments.detector_calibration [--dataset synthetic_faces/small] [--splits train,test]

Runs every installed detector on the rendered faces, whose landmark box is known, and counts a face
as found when a detection's centre lies inside its landmark box (the best-scoring such detection
is the face's; the others are false detections). The map is `detect.fit_box_map` over the found
faces: the median shift of the centre (fractions of the detector box's width and height) and the
median width and height ratios. Prints per detector the faces found (by |yaw|), the map, what is
left after it (centre error and longer-side ratio, as the crop uses them, against the 5% box jitter
of training) and the lines to paste into detect.py; then what each detector finds on two real
photographs (skimage's astronaut, matplotlib's Grace Hopper), raw and mapped.

Letters: N faces, P = 68 landmarks.
"""

import argparse
import sys

import numpy as np

import input_pipeline.datasets  # pylint: disable=unused-import (registers)
from input_pipeline import pipeline
from treemoe_jax.inference import detect

YAW_BINS = ((0, 30), (30, 60), (60, 91))  # |yaw| degrees; 90 itself falls in the last bin.


def faces(dataset: str, splits: list[str], data_dir: str | None):
  """(images uint8 [N, H, W, C], landmark boxes float32 [N, 4], |yaw| degrees [N])."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = pipeline.get_builder(dataset, data_dir=data_dir)
  images, boxes, yaws = [], [], []
  for split in splits:
    for example in tfds.as_numpy(builder.as_dataset(split=split)):
      images.append(example['image'])
      boxes.append(example['box'])
      yaws.append(abs(np.degrees(example['pose'][0])))
  return np.stack(images), np.stack(boxes), np.array(yaws)


def match(detector: detect.Detector, images, truth):
  """(found [N] bool, raw box of each found face [N, 4] (NaN if none), false detections)."""
  found = np.zeros(len(images), bool)
  raw = np.full((len(images), 4), np.nan, np.float32)
  false = 0
  for i, (image, box) in enumerate(zip(images, truth)):
    boxes, _ = detector.raw(image)  # Best first.
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    inside = np.all((centres >= box[:2]) & (centres <= box[2:]), axis=1)
    false += int((~inside).sum())
    if inside.any():
      found[i], raw[i] = True, boxes[np.argmax(inside)]
  return found, raw, false


def residuals(mapped, truth):
  """(centre error / truth's longer side [N], mapped longer side / truth's longer side [N])."""
  side = np.max(truth[:, 2:] - truth[:, :2], axis=1)
  error = np.linalg.norm((mapped[:, :2] + mapped[:, 2:] - truth[:, :2] - truth[:, 2:]) / 2, axis=1)
  return error / side, np.max(mapped[:, 2:] - mapped[:, :2], axis=1) / side


def calibrate(names, images, truth, yaws) -> dict[str, detect.BoxMap]:
  bins = ', '.join(f'{a}-{min(b, 90)}' for a, b in YAW_BINS)
  print(f'| detector | found / {len(images)} | found at yaw {bins} deg (either side) | '
        'false detections | dx | dy | sx | sy | centre error % (median, p90) | '
        'side ratio (p10, median, p90) |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  maps = {}
  for name in names:
    found, raw, false = match(detect.make(name), images, truth)
    by_yaw = ', '.join(f'{found[(yaws >= a) & (yaws < b)].sum()}/{((yaws >= a) & (yaws < b)).sum()}'
                       for a, b in YAW_BINS)
    if found.sum() < 10:
      print(f'| {name} | {found.sum()} | {by_yaw} | {false} | too few faces to fit |')
      continue
    box_map = maps[name] = detect.fit_box_map(raw[found], truth[found])
    error, ratio = residuals(box_map(raw[found]), truth[found])
    print(f'| {name} | {found.sum()} | {by_yaw} | {false} | {box_map.dx:+.4f} | {box_map.dy:+.4f} '
          f'| {box_map.sx:.4f} | {box_map.sy:.4f} | {100 * np.median(error):.1f}, '
          f'{100 * np.quantile(error, 0.9):.1f} | '
          f'{", ".join(f"{q:.3f}" for q in np.quantile(ratio, [0.1, 0.5, 0.9]))} |', flush=True)
  return maps


def photographs():
  """(name, uint8 image) of the two real photographs available offline."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from matplotlib import cbook  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with cbook.get_sample_data('grace_hopper.jpg') as f:
    hopper = np.asarray(Image.open(f).convert('RGB'))
  return [('skimage astronaut', skimage.data.astronaut()), ('matplotlib grace_hopper', hopper)]


def on_photographs(names, maps) -> None:
  print('\n| photograph | detector | score | detector box | mapped box (measured map) |')
  print('|---|---|---|---|---|')
  show = lambda box: '(' + ', '.join(f'{v:.1f}' for v in box) + ')'
  for photo, image in photographs():
    for name in names:
      boxes, scores = detect.make(name).raw(image)
      if not len(boxes):
        print(f'| {photo} {image.shape[1]}x{image.shape[0]} | {name} | no face | | |')
      for box, score in zip(boxes, scores):
        mapped = maps[name](box) if name in maps else box
        print(f'| {photo} {image.shape[1]}x{image.shape[0]} | {name} | {score:.3f} | {show(box)} '
              f'| {show(mapped)} |')


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', default='synthetic_faces/small')
  parser.add_argument('--splits', default='train,test')
  parser.add_argument('--data_dir', default=None)
  args = parser.parse_args()
  names = detect.available()
  if not names:
    print("no detector installed: pip install -e '.[detect]'")
    return 1
  images, truth, yaws = faces(args.dataset, args.splits.split(','), args.data_dir)
  print(f'{args.dataset} {args.splits}: {len(images)} faces, {images.shape[2]}x{images.shape[1]}')
  maps = calibrate(names, images, truth, yaws)
  print('\nBOX_MAPS = {')
  for name, box_map in maps.items():
    print(f"    '{name}': BoxMap(dx={box_map.dx:.4f}, dy={box_map.dy:.4f}, "
          f'sx={box_map.sx:.4f}, sy={box_map.sy:.4f}),')
  print('}')
  on_photographs(names, maps)
  return 0


if __name__ == '__main__':
  sys.exit(main())
