"""Optional offline face detectors whose boxes are converted to the box the models were trained on.

  pip install 'treemoe-jax[detect]'   # dlib-bin (opencv-python-headless is a dependency)

The models crop a square around the *tight box of the 68 landmarks* (`formats.box_of`) widened by a
margin (`pipeline.crop_window`). A detector's box is another box: OpenCV's Haar cascade and dlib's
HOG detector start on the forehead, stop above the chin and are wider than the jaw. Each detector's
box goes through a `BoxMap` measured on faces with known landmarks (see `BOX_MAPS` and
`experiments/detector_calibration.py`), so that the crop the model sees is placed as in training,
where boxes were jittered by 5% of their side (`pipeline.AugmentConfig`).

  detector = detect.make('auto')      # dlib if installed, else OpenCV
  for d in detector(image):           # uint8 [H, W], [H, W, 1] or [H, W, 3], best first
    d.box, d.score                    # float32 (x0, y0, x1, y1) image pixels; detector's score

Boxes are in the project's pixel convention (`input_pipeline.formats`): pixel centres at integers,
so pixel (0, 0) covers [-0.5, 0.5]^2 and a detector rectangle is converted edge to edge. Scores are
each detector's own and not comparable across detectors: OpenCV's final-stage weight
(`detectMultiScale3(..., outputRejectLevels=True)` levelWeights, about 3 to 8 for a face) and dlib's
SVM margin (`run(image, 1, 0)`, about 0 to 3). Every detection above the detector's own threshold
is returned; false detections (dlib finds the mission patch on skimage's astronaut at score 0.12)
are the caller's to filter by score.

Letters: N detections, H x W image pixels.
"""

import dataclasses
import importlib
from collections.abc import Callable

import numpy as np
from PIL import Image

Array = np.ndarray
# Raw detections: boxes float32 [N, 4] (x0, y0, x1, y1) in the detector's own framing, scores [N].
RawDetector = Callable[[Array], tuple[Array, Array]]

NAMES = ('dlib', 'opencv')  # 'auto' takes the first one installed, in this order.
_PACKAGES = {'dlib': ('dlib', 'dlib-bin>=19.24'), 'opencv': ('cv2', 'opencv-python-headless<5')}
# Images are searched at most this many pixels on their longer side (downscaled, boxes scaled back):
# dlib's upsampling doubles each side and a 12-megapixel photo would take tens of seconds. Faces
# from about 40 px (dlib) or 24 px (OpenCV) in the downscaled image are found.
DEFAULT_MAX_SIDE = 1024
_OPENCV_CASCADE = 'haarcascade_frontalface_default.xml'
_OPENCV_SCALE_FACTOR, _OPENCV_MIN_NEIGHBORS = 1.1, 3  # OpenCV's defaults.
_DLIB_UPSAMPLE, _DLIB_THRESHOLD = 1, 0.0  # Upsampled once: faces from 40 px, not 80.


@dataclasses.dataclass(frozen=True)
class BoxMap:
  """Detector box -> tight landmark box: the centre moves by (dx * width, dy * height) of the
  detector's box, and its width and height are scaled by sx and sy."""
  dx: float
  dy: float
  sx: float
  sy: float

  def __call__(self, boxes: Array) -> Array:
    """Mapped boxes float32 [..., 4] of detector boxes [..., 4] (x0, y0, x1, y1)."""
    boxes = np.asarray(boxes, np.float64)
    size = boxes[..., 2:] - boxes[..., :2]
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2 + size * [self.dx, self.dy]
    half = size * [self.sx, self.sy] / 2
    return np.concatenate([centre - half, centre + half], -1).astype(np.float32)


def fit_box_map(detected: Array, truth: Array) -> BoxMap:
  """The `BoxMap` taking detector boxes [N, 4] to the faces' landmark boxes [N, 4]: the median of
  each face's own (dx, dy, sx, sy), so that a few odd detections do not pull it."""
  detected, truth = np.asarray(detected, np.float64), np.asarray(truth, np.float64)
  if detected.shape != truth.shape or detected.ndim != 2 or detected.shape[1:] != (4,) or \
     not len(detected):
    raise ValueError(f'need two [N, 4] box arrays with N >= 1, got {detected.shape}, '
                     f'{truth.shape}')
  size = detected[:, 2:] - detected[:, :2]
  shift = ((truth[:, :2] + truth[:, 2:]) - (detected[:, :2] + detected[:, 2:])) / 2 / size
  scale = (truth[:, 2:] - truth[:, :2]) / size
  dx, dy, sx, sy = np.median(np.concatenate([shift, scale], 1), axis=0)
  return BoxMap(float(dx), float(dy), float(sx), float(sy))


# Measured by `python -m experiments.detector_calibration` (it prints these lines): each detector on
# the 768 renders of synthetic_faces/small (train 512 + test 256; 200 x 200 gray, yaw uniform in
# +-90 degrees). A face counts as found when a detection's centre lies in its landmark box (the
# best-scoring such detection is the face's); the map is the median over the found faces.
#   dlib:   281 found (|yaw| 0-30: 190/255, 30-60: 87/241, 60-90: 4/272), 1 false detection.
#   opencv: 256 found (179/255, 56/241, 21/272), 15 false detections.
# The landmark box's centre is 0.12 (dlib) / 0.17 (OpenCV) of the detector box's height lower: the
# boxes start on the forehead, 16% / 24% of their height above the brows, and stop 8% / 10% above
# the chin; they are 17% / 24% wider than the landmark box. After the map the centre is still off
# by 13% of the landmark box's side (median; 21% / 24% at the 90th percentile), mostly sideways and
# from yaw, which no single map removes (training jittered boxes by 5%); the longer side is within
# 0.88-1.10 (dlib) and 0.54-1.16 (OpenCV) of the truth for 80% of the faces. Renders are not
# photographs. On the two photographs the script prints, against landmark boxes read by eye (brows
# to chin, jaw at ear level; tests/test_detect.py): Grace Hopper's (188, 170, 345, 332) gets edges
# within 8 px (dlib) and 16 px (OpenCV, 10% of the side); the smiling astronaut's (183, 89, 266,
# 190) gets the top and sides within 8 px but the bottom 16 px (dlib) and 20 px (OpenCV) above the
# chin: the crop (25% margin) still holds the chin, with 5 px to spare (dlib) or none (OpenCV).
BOX_MAPS = {
    'dlib': BoxMap(dx=-0.0113, dy=0.1183, sx=0.8533, sy=0.9210),
    'opencv': BoxMap(dx=-0.0009, dy=0.1652, sx=0.8048, sy=0.8589),
}


# Detections scoring below this are dropped (a false face is a guess). dlib: the astronaut's two
# real faces above score 1.1, its mission patch 0.12 (experiments/detector_calibration.py). OpenCV's
# levelWeights were not measured against false detections: everything is kept.
DEFAULT_MIN_SCORE = {'dlib': 0.5, 'opencv': float('-inf')}


@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
  """One face: `box` float32 [4] (x0, y0, x1, y1), image pixels, in the landmark-box convention
  the models were trained on; `score` the detector's own confidence (higher is surer)."""
  box: Array
  score: float


class Detector:
  """A named detector: `detector(image)` -> list[Detection], best score first."""

  def __init__(self, name: str, raw: RawDetector, box_map: BoxMap, max_side: int,
               min_score: float = float('-inf')):
    self.name, self.box_map, self.max_side, self.min_score = name, box_map, max_side, min_score
    self._raw = raw

  def __repr__(self) -> str:
    return f'Detector({self.name!r}, {self.box_map}, max_side={self.max_side})'

  def raw(self, image: Array) -> tuple[Array, Array]:
    """(boxes float32 [N, 4] as the detector frames faces, scores float32 [N]), image pixels,
    best first: the input of the calibration."""
    pixels = _pixels(image)
    height, width = pixels.shape[:2]
    factor = max(height, width) / self.max_side
    if factor > 1:  # Search a smaller copy; edges map back as (e + 0.5) * f - 0.5.
      small = (max(1, round(width / factor)), max(1, round(height / factor)))
      pixels = np.asarray(Image.fromarray(pixels).resize(small, Image.Resampling.BILINEAR))
      scale = np.array([width / small[0], height / small[1]] * 2)
    else:
      scale = np.ones(4)
    boxes, scores = self._raw(np.ascontiguousarray(pixels))
    boxes = ((np.asarray(boxes, np.float64).reshape(-1, 4) + 0.5) * scale - 0.5)
    scores = np.asarray(scores, np.float64).reshape(-1)
    order = np.argsort(-scores, kind='stable')
    return boxes[order].astype(np.float32), scores[order].astype(np.float32)

  def __call__(self, image: Array) -> list[Detection]:
    boxes, scores = self.raw(image)
    mapped = self.box_map(boxes)
    return [Detection(_frozen(box), float(score)) for box, score in zip(mapped, scores)
            if score >= self.min_score]


def _frozen(array: Array) -> Array:
  array = np.array(array, np.float32)
  array.setflags(write=False)
  return array


def _pixels(image: Array) -> Array:
  """uint8 [H, W] or [H, W, 3] of an image uint8 [H, W], [H, W, 1] or [H, W, 3]."""
  pixels = np.asarray(image)
  if pixels.dtype != np.uint8:
    raise ValueError(f'images must be uint8, got {pixels.dtype}')
  if pixels.ndim == 3 and pixels.shape[2] == 1:
    pixels = pixels[..., 0]
  if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)) or 0 in pixels.shape:
    raise ValueError(f'images must be [H, W], [H, W, 1] or [H, W, 3], got {np.shape(image)}')
  return pixels


def _import(name: str):
  """The detector's Python module, or an ImportError that says what to pip install."""
  module, package = _PACKAGES[name]
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"the {name!r} face detector needs {package.split('<')[0].split('>')[0]}: "
                      f"pip install '{package}' (or pip install 'treemoe-jax[detect]' for both "
                      'detectors), or give the face boxes yourself') from e


def available() -> list[str]:
  """The detectors whose package imports here, in 'auto' order."""
  names = []
  for name in NAMES:
    try:
      _import(name)
    except ImportError:
      continue
    names.append(name)
  return names


def _opencv() -> RawDetector:
  cv2 = _import('opencv')
  cascade = cv2.CascadeClassifier(cv2.data.haarcascades + _OPENCV_CASCADE)
  if cascade.empty():
    raise RuntimeError(f'OpenCV could not load {cv2.data.haarcascades + _OPENCV_CASCADE}')

  def raw(pixels: Array) -> tuple[Array, Array]:
    gray = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if pixels.ndim == 3 else pixels
    rects, _, weights = cascade.detectMultiScale3(
        gray, scaleFactor=_OPENCV_SCALE_FACTOR, minNeighbors=_OPENCV_MIN_NEIGHBORS,
        outputRejectLevels=True)
    rects = np.asarray(rects, np.float64).reshape(-1, 4)  # (x, y, w, h): pixels x .. x + w - 1.
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], 1) - 0.5
    return boxes, np.asarray(weights, np.float64).reshape(-1)

  return raw


def _dlib() -> RawDetector:
  dlib = _import('dlib')
  hog = dlib.get_frontal_face_detector()

  def raw(pixels: Array) -> tuple[Array, Array]:
    rects, scores, _ = hog.run(pixels, _DLIB_UPSAMPLE, _DLIB_THRESHOLD)
    # A dlib rectangle's right and bottom are inclusive pixel indices.
    boxes = [(r.left() - 0.5, r.top() - 0.5, r.right() + 0.5, r.bottom() + 0.5) for r in rects]
    return np.array(boxes, np.float64).reshape(-1, 4), np.array(scores, np.float64)

  return raw


def make(name: str = 'auto', *, max_side: int = DEFAULT_MAX_SIDE,
         min_score: float | None = None) -> Detector:
  """The detector `name` ('auto', 'dlib' or 'opencv'); 'auto' is the first of `NAMES` installed.

  Detections below `min_score` are dropped (None: `DEFAULT_MIN_SCORE` of that detector).

  ImportError (with the pip command) when that detector, or for 'auto' every detector, is missing;
  ValueError for an unknown name.
  """
  if max_side < 1:
    raise ValueError(f'max_side must be >= 1, got {max_side}')
  if name == 'auto':
    names = available()
    if not names:
      raise ImportError('no face detector is installed: pip install \'treemoe-jax[detect]\' '
                        "(opencv-python-headless and dlib-bin; either is enough), or give the face "
                        'boxes yourself')
    name = names[0]
  match name:
    case 'dlib':
      raw = _dlib()
    case 'opencv':
      raw = _opencv()
    case _:
      raise ValueError(f"unknown face detector {name!r}; valid: auto, {', '.join(NAMES)}")
  return Detector(name, raw, BOX_MAPS[name], max_side,
                  DEFAULT_MIN_SCORE[name] if min_score is None else min_score)

