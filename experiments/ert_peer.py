"""The classic peer: dlib's ERT trained and tested on exactly the crops the neural models see.

  pip install -e '.[peers]'   # dlib-bin: the peer only, not a dependency of the package
  python -m experiments.ert_peer [--dataset synthetic_faces/small] [--protocols ...] [--threads 2]

Kazemi and Sullivan's ensemble of regression trees (`dlib.train_shape_predictor`, default options
unless given) learns from the train split's 150x150 crops (the pipeline's own crop, no
augmentation) and is evaluated on the test views with the same NME (box normaliser) as
`eval.py`. It is told as much about each face as the cascade is: the cascade starts from the mean
shape placed in the crop, ERT from the box that the crop was cut around (the same square, 100 px
wide in every crop). The mean shape itself is the zero-learning baseline. Prints one Markdown
table (NME %, per view) and the training time.

Axis legend: N faces, P = 68 landmarks.
"""

import argparse
import sys
import time

import numpy as np

import input_pipeline.datasets  # pylint: disable=unused-import (registers)
from input_pipeline import pipeline
from treemoe_jax import metrics
from treemoe_jax.evaluate import protocols

CROP = pipeline.CropConfig()  # 150 px, margin 0.25: the configs' default


def crops(dataset: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, S, S], landmarks float32 [N, P, 2]) of `split`, as the model sees them."""
  builder = pipeline.get_builder(dataset, data_dir=data_dir)
  num = builder.info.splits[split].num_examples
  images, landmarks = [], []
  ds = pipeline.eval_dataset(builder, global_batch_size=min(num, 256),
                             mean_shape=np.zeros((68, 2), np.float32), split=split, crop=CROP)
  for batch in ds.as_numpy_iterator():
    keep = batch['mask']
    images.append(np.round((batch['image'][keep] + 1) * 127.5).clip(0, 255).astype(np.uint8))
    landmarks.append(batch['landmarks'][keep])
  return np.concatenate(images), np.concatenate(landmarks)


def face_rect():
  """The face box inside every crop: the crop is this square widened by the margin."""
  import dlib  # pylint: disable=g-import-not-at-top
  side = CROP.size / (1 + 2 * CROP.margin)
  first = round((CROP.size - side) / 2)
  return dlib.rectangle(first, first, first + round(side) - 1, first + round(side) - 1)


def train(images: np.ndarray, landmarks: np.ndarray, threads: int, **options):
  import dlib  # pylint: disable=g-import-not-at-top
  settings = dlib.shape_predictor_training_options()
  settings.num_threads = threads
  for key, value in options.items():
    setattr(settings, key, value)
  rect = face_rect()
  objects = [[dlib.full_object_detection(rect, [dlib.point(round(x), round(y)) for x, y in pts])]
             for pts in landmarks]
  return dlib.train_shape_predictor(list(images), objects, settings)


def predict(predictor, images: np.ndarray) -> np.ndarray:
  rect = face_rect()
  out = np.empty((len(images), 68, 2), np.float32)
  for i, image in enumerate(images):
    shape = predictor(image, rect)
    out[i] = [(p.x, p.y) for p in shape.parts()]
  return out


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', default='synthetic_faces/small')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--protocols', default='synthetic_table1,synthetic_table3')
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args()
  images, landmarks = crops(args.dataset, 'train', args.data_dir)
  mean_shape = landmarks.mean(0)
  start = time.perf_counter()
  predictor = train(images, landmarks, args.threads)
  seconds = time.perf_counter() - start
  print(f'ERT (dlib defaults) trained on {len(images)} crops of {args.dataset}:train in '
        f'{seconds:.0f} s, {args.threads} threads')
  print('| view | faces | mean shape NME % | ERT NME % |')
  print('|---|---|---|---|')
  for protocol in protocols.parse(args.protocols):
    for subset in protocol.subsets:
      dataset = protocols.resolve_dataset(subset.dataset, args.dataset)
      test_images, truth = crops(dataset, subset.split, args.data_dir)
      mean = np.broadcast_to(mean_shape, truth.shape)
      ert = metrics.nme(predict(predictor, test_images), truth, subset.normalizer).mean()
      base = metrics.nme(mean, truth, subset.normalizer).mean()
      print(f'| {subset.name} | {len(truth)} | {100 * base:.2f} | {100 * ert:.2f} |', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
