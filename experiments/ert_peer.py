"""The classic peer: dlib's ERT trained and tested on exactly the crops the neural models see.

  pip install -e '.[peers]'   # dlib-bin: the peer only, not a dependency of the package
  python -m experiments.ert_peer [--dataset synthetic_faces/small] [--protocols ...] [--threads 2]

Kazemi and Sullivan's ensemble of regression trees (`dlib.train_shape_predictor`, default options
unless given) learns from the train split's 150x150 crops (the pipeline's own crop, no
augmentation) and is evaluated on the test views (or their validation twins, `--split`) with the
same NME (box normaliser) as `eval.py`. It is told as much about each face as the cascade is: the
cascade starts from the mean shape placed in the crop, ERT from the box that the crop was cut
around (the same square, 100 px wide in every crop). The mean shape itself is the zero-learning
baseline. Prints one Markdown table (NME %, per view) and the training time.

dlib's points are whole pixels (`dlib.point` holds ints; `full_object_detection.part(i)` returns
one), in the training targets as in the predictions. So ERT works on the crops upscaled `--scale`
times (nearest neighbour: the same pixels) and its points are divided back; at 1 every coordinate
would round to a whole crop pixel, 0.38 px per point on average.

Axis legend: N faces, P = 68 landmarks, S crop side.
"""

import argparse
import sys
import time

import numpy as np

from treemoe_jax import metrics
from treemoe_jax.evaluate import protocols

SCALE = 4  # crops upscaled this many times for dlib's whole-pixel points


def crop_config():
  """The pipeline's default crop (150 px, margin 0.25: the configs' default)."""
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
  return pipeline.CropConfig()


def crops(dataset: str, split: str, data_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, S, S], landmarks float32 [N, P, 2]) of `split`, as the model sees them."""
  import input_pipeline.datasets  # pylint: disable=g-import-not-at-top,unused-import (registers)
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
  builder = pipeline.get_builder(dataset, data_dir=data_dir)
  num = builder.info.splits[split].num_examples
  images, landmarks = [], []
  ds = pipeline.eval_dataset(builder, global_batch_size=min(num, 256),
                             mean_shape=np.zeros((68, 2), np.float32), split=split,
                             crop=crop_config())
  for batch in ds.as_numpy_iterator():
    keep = batch['mask']
    images.append(np.round((batch['image'][keep] + 1) * 127.5).clip(0, 255).astype(np.uint8))
    landmarks.append(batch['landmarks'][keep])
  return np.concatenate(images), np.concatenate(landmarks)


def views(protocol_names: str, split: str) -> list[protocols.Subset]:
  """The protocols' subsets on `split`: 'test', or the 'validation' twins options are chosen on."""
  return [subset for protocol in protocols.parse(protocol_names)
          for subset in protocols.on_split(protocol, split).subsets]


def upscale(images: np.ndarray, scale: int) -> np.ndarray:
  """[..., S, S] -> [..., scale * S, scale * S], each pixel repeated (nearest neighbour)."""
  return images.repeat(scale, axis=-2).repeat(scale, axis=-1) if scale > 1 else images


def to_upscaled(points: np.ndarray, scale: int) -> np.ndarray:
  """Crop coordinates (pixel i centred at i) -> coordinates in the upscaled crop."""
  return scale * (np.asarray(points, np.float64) + 0.5) - 0.5


def from_upscaled(points: np.ndarray, scale: int) -> np.ndarray:
  return (np.asarray(points, np.float64) + 0.5) / scale - 0.5


def face_rect(scale: int = 1):
  """The face box inside every crop (the crop is this square widened by the margin), upscaled."""
  import dlib  # pylint: disable=g-import-not-at-top
  crop = crop_config()
  side = crop.size / (1 + 2 * crop.margin)
  first = round((crop.size - side) / 2)
  last = first + round(side) - 1
  return dlib.rectangle(scale * first, scale * first, scale * last + scale - 1,
                        scale * last + scale - 1)


def train(images: np.ndarray, landmarks: np.ndarray, threads: int, scale: int = SCALE,
          **options):
  """A dlib shape predictor of crops [N, S, S] upscaled `scale` times; `options` set fields of
  dlib.shape_predictor_training_options."""
  import dlib  # pylint: disable=g-import-not-at-top
  settings = dlib.shape_predictor_training_options()
  settings.num_threads = threads
  for key, value in options.items():
    setattr(settings, key, value)
  rect = face_rect(scale)
  objects = [[dlib.full_object_detection(
      rect, [dlib.point(round(x), round(y)) for x, y in to_upscaled(pts, scale)])]
             for pts in landmarks]
  return dlib.train_shape_predictor([upscale(image, scale) for image in images], objects,
                                    settings)


def predict(predictor, images: np.ndarray, scale: int = SCALE) -> np.ndarray:
  """Landmarks [N, P, 2] in crop coordinates: `predictor` (trained at `scale`) on each crop."""
  rect = face_rect(scale)
  out = np.empty((len(images), 68, 2), np.float64)
  for i, image in enumerate(images):
    shape = predictor(upscale(image, scale), rect)
    out[i] = [(p.x, p.y) for p in shape.parts()]
  return from_upscaled(out, scale).astype(np.float32)


def load(path):
  import dlib  # pylint: disable=g-import-not-at-top
  return dlib.shape_predictor(str(path))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', default='synthetic_faces/small')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--protocols', default='synthetic_table1,synthetic_table3')
  parser.add_argument('--split', choices=('test', 'validation'), default='test')
  parser.add_argument('--scale', type=int, default=SCALE, help='crops upscaled for dlib')
  parser.add_argument('--threads', type=int, default=2)
  args = parser.parse_args()
  images, landmarks = crops(args.dataset, 'train', args.data_dir)
  mean_shape = landmarks.mean(0)
  start = time.perf_counter()
  predictor = train(images, landmarks, args.threads, scale=args.scale)
  seconds = time.perf_counter() - start
  print(f'ERT (dlib defaults, crops upscaled {args.scale}x) trained on {len(images)} crops of '
        f'{args.dataset}:train in {seconds:.0f} s, {args.threads} threads')
  print('| view | faces | mean shape NME % | ERT NME % |')
  print('|---|---|---|---|')
  for subset in views(args.protocols, args.split):
    dataset = protocols.resolve_dataset(subset.dataset, args.dataset)
    test_images, truth = crops(dataset, subset.split, args.data_dir)
    mean = np.broadcast_to(mean_shape, truth.shape)
    ert = metrics.nme(predict(predictor, test_images, args.scale), truth, subset.normalizer).mean()
    base = metrics.nme(mean, truth, subset.normalizer).mean()
    print(f'| {subset.name} | {len(truth)} | {100 * base:.2f} | {100 * ert:.2f} |', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
