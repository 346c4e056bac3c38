"""Align faces in people's own photographs with a trained (or exported) model.

`Aligner.from_workdir(path)` restores the run (`treemoe_jax.runs`) once and jits its whole
forward: the face crop (`treemoe_jax.crop`, the training crop's map and antialiasing, in JAX),
the model and the map back to the image's pixels (`inference.forward`). `Aligner.from_export(path)`
runs the `jax.export` artifact of the same forward instead, without the model's Python classes.
Neither imports TensorFlow. Faces go through in bucket-sized calls and images are zero-padded to
a multiple of `SHAPE_STEP` pixels (their true size passed along), so a folder of photos compiles
a few programs, not one per face count or image size.

Axis legend: N faces, S crop size (150), P = 68 landmarks, K stages, H, W, C image.
"""

import dataclasses
import functools
import json
import math
import pathlib
import warnings
from collections.abc import Callable, Sequence

import jax
import numpy as np

from treemoe_jax import xla_options
from treemoe_jax.inference import forward as forward_lib
from treemoe_jax.inference import photos
from treemoe_jax.inference.forward import DEFAULT_BUCKETS  # noqa: F401 (re-exported)
from treemoe_jax.nn import routing as routing_lib

# Two passes (the second cropped around the first's landmarks) by default: on the validation
# faces they cut the NME from dlib's boxes from 1.77% to 1.40%, OpenCV's from 10.1% to 9.5%; only
# the true landmark box, the models' own framing, is better aligned once (2.51% against 2.61%):
# docs/align.md, "Two passes"; docs/data/second_pass.json.
DEFAULT_PASSES = 2
SHAPE_STEP = 16  # images are padded to multiples of this (true size passed): few compiled shapes
Box = Sequence[float]  # (x0, y0, x1, y1) image pixels
# image [H, W, C] uint8, image_hw [2], boxes [N, 4] -> {landmarks, stage_landmarks, pose?}
ImageForward = Callable[[np.ndarray, np.ndarray, np.ndarray], dict]


class RoutingWarning(UserWarning):
  """A routing that eval.py measured far worse than dense, or never measured, for this model."""


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


def check_passes(passes) -> int:
  """1 (the given box) or 2 (then again around the landmarks); ValueError otherwise."""
  if passes not in (1, 2):
    raise ValueError(f'passes must be 1 or 2, got {passes!r}')
  return int(passes)


def check_box(box, what: str = 'box', image_hw: tuple[int, int] | None = None) -> np.ndarray:
  """(x0, y0, x1, y1) -> float32 [4]; ValueError unless finite, within +-2**24 px (float32's
  whole pixels) with x1 > x0 and y1 > y0, and, given the image's (height, width), a box that can
  hold a face of it (`photos.box_problem`)."""
  try:
    values = np.asarray(box, np.float64).reshape(-1)
  except (TypeError, ValueError, OverflowError) as e:
    raise ValueError(f'{what} must be 4 finite numbers (x0, y0, x1, y1), got {box!r}') from e
  if values.shape != (4,) or not np.isfinite(values).all():
    raise ValueError(f'{what} must be 4 finite numbers (x0, y0, x1, y1), got {box!r}')
  if np.abs(values).max() > photos.MAX_COORDINATE:
    raise ValueError(f'{what} has a coordinate beyond +-2**24 px, where float32 has no whole '
                     f'pixels: {box!r}')
  if values[2] <= values[0] or values[3] <= values[1]:
    raise ValueError(f'{what} must have x1 > x0 and y1 > y0, got {box!r}')
  problem = image_hw and photos.box_problem(values, image_hw[1], image_hw[0])
  if problem:
    raise ValueError(f'{what}: {problem}')
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
  """Face boxes in, landmarks (and head pose) out; see the module docstring.

  `forward`: a crop-level model, (images [N, S, S] in [-1, 1], s(0) [N, P, 2]) -> {shape,
  stage_shapes [N, K, P, 2], pose?} in crop pixels, composed here with the crop (eagerly: for
  stand-ins and tests); or `image_forward`: the whole forward already composed and compiled
  (`from_workdir`, `from_export`).
  """

  def __init__(self, forward: Callable | None = None, *, mean_shape: np.ndarray,
               image_size: int, margin: float, buckets: Sequence[int] = DEFAULT_BUCKETS,
               routing: str = 'dense', detector: Callable | None = None,
               image_forward: ImageForward | None = None, routing_warning: str | None = None,
               passes: int = DEFAULT_PASSES):
    if not buckets or min(buckets) < 1:
      raise ValueError(f'buckets must be positive face counts, got {buckets}')
    if (forward is None) == (image_forward is None):
      raise ValueError('give exactly one of forward (crop level) and image_forward')
    self.mean_shape = np.asarray(mean_shape, np.float32)  # [P, 2] crop pixels
    self.image_size, self.margin = int(image_size), float(margin)
    if image_forward is None:
      image_forward = forward_lib.image_forward(forward, mean_shape=self.mean_shape,
                                                image_size=self.image_size, margin=self.margin)
    self._image_forward = image_forward
    self.buckets = tuple(sorted(set(int(b) for b in buckets)))
    self.routing = str(routing_lib.parse(routing))
    # Why this routing's landmarks may be poor (routing.warning_for), or None: never silent.
    self.routing_warning = routing_warning
    if routing_warning:
      warnings.warn(routing_warning, RoutingWarning, stacklevel=3)
    self._detector = detector
    self.passes = check_passes(passes)

  # --- Construction. ---

  @classmethod
  def from_workdir(cls, workdir: str | pathlib.Path, *, routing: str = 'dense',
                   buckets: Sequence[int] = DEFAULT_BUCKETS, step: int | None = None,
                   detector: Callable | None = None, passes: int = DEFAULT_PASSES) -> 'Aligner':
    """The newest (or `step`'s) checkpoint of a trained alignment workdir."""
    from treemoe_jax import runs  # pylint: disable=g-import-not-at-top (Flax, orbax)
    return cls._from_run(runs.load_run(workdir, step), routing=routing, buckets=buckets,
                         detector=detector, passes=passes, where=f'the run {workdir}')

  @classmethod
  def from_bundle(cls, directory: str | pathlib.Path, *, routing: str = 'dense',
                  buckets: Sequence[int] = DEFAULT_BUCKETS, detector: Callable | None = None,
                  passes: int = DEFAULT_PASSES) -> 'Aligner':
    """A model bundle (`treemoe_jax.bundle`): config, s(0) and variables, no
    checkpoint."""
    from treemoe_jax import bundle  # pylint: disable=g-import-not-at-top (Flax)
    return cls._from_run(bundle.load(directory), routing=routing, buckets=buckets,
                         detector=detector, passes=passes, where=f'the bundle {directory}')

  @classmethod
  def pretrained(cls, *, routing: str = 'dense', buckets: Sequence[int] = DEFAULT_BUCKETS,
                 detector: Callable | None = None, passes: int = DEFAULT_PASSES) -> 'Aligner':
    """The model that ships inside the package (trained on rendered faces only: README,
    "Pretrained model")."""
    from treemoe_jax import bundle  # pylint: disable=g-import-not-at-top
    if not (bundle.PRETRAINED / bundle.MODEL_FILE).exists():
      raise FileNotFoundError(
          f'this installation has no pretrained model ({bundle.PRETRAINED} is empty): train one '
          '(README, "Pretrained model") and align with --workdir, or reinstall the package')
    return cls.from_bundle(bundle.PRETRAINED, routing=routing, buckets=buckets,
                           detector=detector, passes=passes)

  @classmethod
  def _from_run(cls, run, *, routing, buckets, detector, passes, where) -> 'Aligner':
    """Compiles the whole forward of a restored run (`runs.Run`)."""
    from treemoe_jax.nn import models  # pylint: disable=g-import-not-at-top
    if run.model.gate_pose == 'truth':
      raise ValueError(f'{where} gates on the true head pose (an oracle for analysis); a '
                       'photograph has none: align with a model trained with its estimator')
    variables = jax.device_put(run.variables)
    size, margin = run.config.model.image_size, run.config.crop_margin
    apply = models.forward(run.model, routing=routing)

    def whole(variables, image, image_hw, boxes):
      return forward_lib.image_forward(functools.partial(apply, variables),
                                       mean_shape=run.mean_shape, image_size=size,
                                       margin=margin)(image, image_hw, boxes)

    options = xla_options.inference_options(run.model.pose_estimator is not None)
    compiled = jax.jit(whole, compiler_options=options)
    check_path = run.workdir / routing_lib.CHECK_FILE
    check = json.loads(check_path.read_text()) if check_path.exists() else None
    return cls(mean_shape=run.mean_shape, image_size=size, margin=margin, buckets=buckets,
               routing=routing, detector=detector, passes=passes,
               routing_warning=routing_lib.warning_for(check, routing, run.step, where=where),
               image_forward=lambda image, image_hw, boxes: compiled(variables, image, image_hw,
                                                                     boxes))

  @classmethod
  def from_export(cls, directory: str | pathlib.Path, *, routing: str = 'dense',
                  detector: Callable | None = None, passes: int = DEFAULT_PASSES) -> 'Aligner':
    """A `treemoe_jax.inference.export` directory: runs the serialised forward, no model
    classes, no TensorFlow."""
    from treemoe_jax.inference import export  # pylint: disable=g-import-not-at-top
    loaded = export.load(directory, routing)
    return cls(mean_shape=loaded.mean_shape, image_size=loaded.image_size, margin=loaded.margin,
               buckets=loaded.buckets, routing=routing, detector=detector, passes=passes,
               image_forward=loaded.forward, routing_warning=loaded.routing_warning)

  # --- Alignment. ---

  def align(self, image, boxes: Sequence[Box] | None = None, *,
            return_stages: bool = False, passes: int | None = None) -> list[Face]:
    """The faces of one uint8 image `[H, W]` or `[H, W, 3]`; `boxes` None: the detector's."""
    return self.align_batch([image], None if boxes is None else [boxes],
                            return_stages=return_stages, passes=passes)[0]

  def align_batch(self, images: Sequence, boxes: Sequence[Sequence[Box] | None] | None = None,
                  *, return_stages: bool = False, passes: int | None = None
                  ) -> list[list[Face]]:
    """Per image, its faces. `boxes[i]` None (or `boxes` None): found by the detector; an
    empty list: no face. Each image's faces go through bucket-sized calls of one forward.

    `passes` (default: the Aligner's) 2: each face is aligned again in the crop around the first
    pass's landmarks (their tight box, the box the models were trained on), so that the result
    depends less on how the given box frames the face. A face whose first landmarks give no
    usable box keeps its first pass. `Face.box` stays the box given or detected.
    """
    passes = self.passes if passes is None else check_passes(passes)
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
        faces += [(i, check_box(b, f'box {j} of image {i}', image.shape[:2]), None)
                  for j, b in enumerate(image_boxes)]
    crops_of = [images[i] for i, _, _ in faces]
    results = self.align_crops(crops_of, [b for _, b, _ in faces])
    for _ in range(passes - 1):
      results = self.realign(crops_of, results)
    per_image = [[] for _ in images]
    for (i, box, score), (landmarks, stages, pose) in zip(faces, results):
      per_image[i].append(Face(landmarks, box, pose, score, stages if return_stages else None))
    return per_image

  def realign(self, images: Sequence[np.ndarray], results: list[tuple]) -> list[tuple]:
    """`align_crops`' results again, each face cropped around its landmarks' tight box."""
    redo = []  # indices of faces whose landmarks give a usable box
    boxes = []
    for n, (image, (landmarks, _, _)) in enumerate(zip(images, results)):
      box = np.asarray(photos.landmark_box(landmarks), np.float64)
      if (np.isfinite(box).all() and box[2] > box[0] and box[3] > box[1]
          and not photos.box_problem(box, image.shape[1], image.shape[0])):
        redo.append(n)
        boxes.append(box.astype(np.float32))
    again = self.align_crops([images[n] for n in redo], boxes) if redo else []
    results = list(results)
    for n, result in zip(redo, again):
      results[n] = result
    return results

  def align_crops(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(landmarks [P, 2], stage landmarks [K, P, 2], pose [3] or None) per (image, box): each
    image's faces in bucket-sized calls (consecutive faces of one image share calls)."""
    results = []
    start = 0
    while start < len(images):
      stop = start
      while stop < len(images) and images[stop] is images[start]:
        stop += 1
      results += self._align_one_image(images[start], np.stack(boxes[start:stop]))
      start = stop
    return results

  def _align_one_image(self, image: np.ndarray, boxes: np.ndarray) -> list[tuple]:
    padded, image_hw = pad_image(image, SHAPE_STEP)
    outputs = []
    done = 0
    for size in buckets_for(len(boxes), self.buckets):
      chunk = boxes[done:done + size]
      rows = np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), 0)])  # pad: copies
      out = self._image_forward(padded, image_hw, rows.astype(np.float32))
      out = {k: np.asarray(v)[:len(chunk)] for k, v in out.items()}
      outputs += [(out['landmarks'][n], out['stage_landmarks'][n],
                   out['pose'][n] if 'pose' in out else None) for n in range(len(chunk))]
      done += len(chunk)
    return outputs

  @property
  def detector(self) -> Callable:
    """The face detector used when no box is given (treemoe_jax.detect, made on first use)."""
    if self._detector is None:
      from treemoe_jax.inference import detect  # pylint: disable=g-import-not-at-top
      self._detector = detect.make('auto')
    return self._detector


def pad_image(image: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
  """[H, W, C] -> (zero-padded [H', W', C] with H', W' multiples of `step`, int32 (H, W))."""
  height, width = image.shape[:2]
  shape = (math.ceil(height / step) * step, math.ceil(width / step) * step, image.shape[-1])
  if shape != image.shape:
    padded = np.zeros(shape, image.dtype)
    padded[:height, :width] = image
    image = padded
  return image, np.array([height, width], np.int32)
