"""Align faces in people's own photographs with a trained (or exported) model.

`Aligner.from_workdir(path)` loads the run's config, mean shape and parameters (pose estimator
included) once; `align(image, boxes)` / `align_batch(images, boxes)` crop every face with the
training crop (`input_pipeline.pipeline.face_image`: same margin, same antialiasing), run all the
faces of all the images through one jitted forward in fixed bucket sizes (no recompiling per face
count), and map the landmarks back to each image's pixels. `Aligner.from_export(path)` runs the
`jax.export` artifact of `treemoe_jax.export` instead, without the model's Python classes.

Axis legend: N faces, S crop size (150), P = 68 landmarks, K stages.
"""

import dataclasses
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from treemoe_jax import routing as routing_lib
from treemoe_jax import xla_options

DEFAULT_BUCKETS = (1, 8, 32)
Box = Sequence[float]  # (x0, y0, x1, y1) image pixels
Forward = Callable[[np.ndarray, np.ndarray], dict]  # images [n, S, S], init [n, P, 2] -> arrays


@dataclasses.dataclass(frozen=True)
class Face:
  """One aligned face. Coordinates are the original image's pixels (x, y), pixel centres at
  integers; pose in radians (yaw, pitch, roll), None for models without a pose estimator."""
  landmarks: np.ndarray  # [P, 2]
  box: np.ndarray  # [4] x0, y0, x1, y1: the face box the crop was cut around
  pose: np.ndarray | None = None  # [3]
  score: float | None = None  # the detector's, when a detector found the face
  stage_landmarks: np.ndarray | None = None  # [K, P, 2] s(1) .. s(K), when asked for


def check_image(image, what: str = 'image') -> np.ndarray:
  """uint8 [H, W] or [H, W, 3] (or [H, W, 1]) -> [H, W, C]; ValueError/TypeError in a sentence."""
  if not isinstance(image, np.ndarray):
    image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f'{what} must be uint8 pixels (0-255), got dtype {image.dtype}')
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3) or min(image.shape[:2]) < 1:
    raise ValueError(f'{what} must be [H, W] grayscale or [H, W, 3] RGB, got shape {image.shape}')
  return image


def check_box(box, what: str = 'box') -> np.ndarray:
  """(x0, y0, x1, y1) -> float32 [4]; ValueError unless finite with x1 > x0 and y1 > y0."""
  values = np.asarray(box, np.float64).reshape(-1)
  if values.shape != (4,) or not np.isfinite(values).all():
    raise ValueError(f'{what} must be 4 finite numbers (x0, y0, x1, y1), got {box!r}')
  if values[2] <= values[0] or values[3] <= values[1]:
    raise ValueError(f'{what} must have x1 > x0 and y1 > y0, got {box!r}')
  return values.astype(np.float32)


def buckets_for(count: int, buckets: Sequence[int]) -> list[int]:
  """Bucket sizes that cover `count` faces: the largest while more remain, then the smallest
  that holds the rest (so at most max(buckets) - 1 padded rows per call, and len(buckets)
  compiled programs in all)."""
  sizes, left = [], count
  while left > 0:
    size = next((b for b in sorted(buckets) if b >= left), max(buckets))
    sizes.append(size)
    left -= size
  return sizes


class Aligner:
  """Face boxes in, landmarks (and head pose) out; see the module docstring."""

  def __init__(self, forward: Forward, *, mean_shape: np.ndarray, image_size: int, margin: float,
               buckets: Sequence[int] = DEFAULT_BUCKETS, routing: str = 'dense',
               detector: Callable | None = None):
    if not buckets or min(buckets) < 1:
      raise ValueError(f'buckets must be positive face counts, got {buckets}')
    self._forward = forward
    self.mean_shape = np.asarray(mean_shape, np.float32)  # [P, 2] crop pixels
    self.image_size, self.margin = int(image_size), float(margin)
    self.buckets = tuple(sorted(set(int(b) for b in buckets)))
    self.routing = str(routing_lib.parse(routing))
    self._detector = detector

  # --- Construction. ---

  @classmethod
  def from_workdir(cls, workdir: str | pathlib.Path, *, routing: str = 'dense',
                   buckets: Sequence[int] = DEFAULT_BUCKETS, step: int | None = None,
                   detector: Callable | None = None) -> 'Aligner':
    """The newest (or `step`'s) checkpoint of a trained alignment workdir."""
    from treemoe_jax import evaluate  # pylint: disable=g-import-not-at-top
    run = evaluate.load_run(workdir, step)
    if run.model.gate_pose == 'truth':
      raise ValueError(f'{workdir} gates on the true head pose (an oracle for analysis); a '
                       'photograph has none: align with a model trained with its estimator')
    variables = jax.device_put(run.variables)
    options = xla_options.inference_options(run.model.pose_estimator is not None)
    apply = jax.jit(model_forward(run.model, routing), compiler_options=options)
    return cls(lambda images, init: apply(variables, images, init),
               mean_shape=run.mean_shape, image_size=run.config.model.image_size,
               margin=run.config.crop_margin, buckets=buckets, routing=routing, detector=detector)

  @classmethod
  def from_export(cls, directory: str | pathlib.Path, *, routing: str = 'dense',
                  detector: Callable | None = None) -> 'Aligner':
    """A `treemoe_jax.export` directory: runs the serialised forward, no model classes."""
    from treemoe_jax import export  # pylint: disable=g-import-not-at-top
    loaded = export.load(directory, routing)
    return cls(loaded.forward, mean_shape=loaded.mean_shape, image_size=loaded.image_size,
               margin=loaded.margin, buckets=loaded.buckets, routing=routing, detector=detector)

  # --- Alignment. ---

  def align(self, image, boxes: Sequence[Box] | None = None, *,
            return_stages: bool = False) -> list[Face]:
    """The faces of one uint8 image `[H, W]` or `[H, W, 3]`; `boxes` None: the detector's."""
    return self.align_batch([image], None if boxes is None else [boxes],
                            return_stages=return_stages)[0]

  def align_batch(self, images: Sequence, boxes: Sequence[Sequence[Box] | None] | None = None,
                  *, return_stages: bool = False) -> list[list[Face]]:
    """Per image, its faces. `boxes[i]` None (or `boxes` None): found by the detector; an
    empty list: no face. Every face of every image goes through the same bucketed calls."""
    images = [check_image(image, f'image {i}') for i, image in enumerate(images)]
    if boxes is None:
      boxes = [None] * len(images)
    if len(boxes) != len(images):
      raise ValueError(f'{len(images)} images but boxes for {len(boxes)}')
    faces = []  # (image index, box [4], score)
    for i, (image, image_boxes) in enumerate(zip(images, boxes)):
      if image_boxes is None:
        faces += [(i, d.box, d.score) for d in self.detector(image)]
      else:
        faces += [(i, check_box(b, f'box {j} of image {i}'), None)
                  for j, b in enumerate(image_boxes)]
    results = self.align_crops([images[i] for i, _, _ in faces], [b for _, b, _ in faces])
    per_image = [[] for _ in images]
    for (i, box, score), (landmarks, stages, pose) in zip(faces, results):
      per_image[i].append(Face(landmarks, box, pose, score, stages if return_stages else None))
    return per_image

  def align_crops(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(landmarks [P, 2], stage landmarks [K, P, 2], pose [3] or None) per (image, box)."""
    from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    windows, crops = [], []
    for image, box in zip(images, boxes):
      window = pipeline.crop_window(tf.constant(box), self.margin)
      crops.append(pipeline.face_image(tf.constant(image), window, self.image_size).numpy())
      windows.append(window.numpy())
    outputs = self._run_buckets(np.stack(crops) if crops else None, len(crops))
    results = []
    for n, window in enumerate(windows):
      to_image = lambda points: pipeline.uncrop_landmarks(points, window, self.image_size)
      pose = outputs['pose'][n] if 'pose' in outputs else None
      results.append((to_image(outputs['shape'][n]), to_image(outputs['stage_shapes'][n]), pose))
    return results

  def _run_buckets(self, crops: np.ndarray | None, count: int) -> dict[str, np.ndarray]:
    """The forward over `count` crops in bucket-sized calls; outputs trimmed to `count` rows."""
    parts, start = [], 0
    for size in buckets_for(count, self.buckets):
      chunk = crops[start:start + size]
      padded = np.zeros((size,) + crops.shape[1:], np.float32)
      padded[:len(chunk)] = chunk
      init = np.broadcast_to(self.mean_shape, (size,) + self.mean_shape.shape)
      out = self._forward(padded, np.ascontiguousarray(init))
      parts.append({k: np.asarray(v)[:len(chunk)] for k, v in out.items()})
      start += size
    if not parts:
      return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  @property
  def detector(self) -> Callable:
    """The face detector used when no box is given (treemoe_jax.detect, made on first use)."""
    if self._detector is None:
      from treemoe_jax import detect  # pylint: disable=g-import-not-at-top
      self._detector = detect.make('auto')
    return self._detector


def model_forward(model, routing: str):
  """forward(variables, images [n, S, S], init [n, P, 2]) -> {shape, stage_shapes, pose?}."""
  routing = routing_lib.parse(routing)

  def forward(variables, images, init_shape):
    out = model.apply(variables, images, init_shape, train=False, routing=routing)
    rows = {'shape': out['shape'], 'stage_shapes': jnp.moveaxis(out['stage_shapes'], 0, 1)}
    if 'pose' in out:
      rows['pose'] = out['pose']
    return rows

  return forward
