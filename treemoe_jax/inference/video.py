"""Faces in a video: each frame's box from the previous frame's landmarks, a detector only where
tracking is lost, optional temporal smoothing.

  for frame in video.track(aligner, video.read_frames('clip.mp4'), detector=detect.make()):
    frame.status, frame.source, frame.face.landmarks            # 'ok', 'tracked', [68, 2]

The models crop around the tight box of the 68 landmarks (`treemoe_jax.inference.detect`), so the
box of frame t's landmarks is frame t+1's box as the models were trained to read it, with no
detector's framing in between. Tracking is *lost* when that box leaves the image, collapses under
`MIN_SIDE_PX`, or jumps in size by over `MAX_SIDE_CHANGE` from one frame to the next (`lost_why`);
the frame is then searched by the detector. One face is followed per video: the detector's most
confident. Smoothing is the one-euro filter (`Smoother`): a moving average that follows fast
motion, restarted wherever tracking restarts.

Reading and writing video files and cameras uses OpenCV (a dependency of the package).

Letters: T frames, P = 68 landmarks, H, W frame pixels.
"""

from collections.abc import Callable, Iterable, Iterator
import dataclasses
import math
import pathlib

import numpy as np

from treemoe_jax.inference import photos

VIDEO_EXTENSIONS = frozenset({'.mp4', '.m4v', '.mov', '.avi', '.mkv', '.webm', '.mpg', '.mpeg',
                              '.wmv'})
MIN_SIDE_PX = 8.0  # A landmark box smaller than this holds no face the models can read.
MAX_SIDE_CHANGE = 1.5  # A box that grows or shrinks more than this in one frame is not the face.
OK, NO_FACE = 'ok', 'no face found'
DETECTOR, TRACKED = 'detector', 'tracked'


@dataclasses.dataclass(frozen=True)
class FrameFace:
  """The face of one frame, in the frame's pixels. `landmarks` are smoothed when smoothing is
  on (`raw_landmarks` are the model's own); pose radians or None; the detector's score or None."""
  landmarks: np.ndarray  # [P, 2]
  raw_landmarks: np.ndarray  # [P, 2]
  box: np.ndarray  # [4] the box the crop was cut around
  pose: np.ndarray | None
  score: float | None


@dataclasses.dataclass(frozen=True)
class FrameResult:
  """One frame: `status` OK or NO_FACE; `source` DETECTOR or TRACKED (None without a face);
  `lost` why tracking was lost at this frame ('' if it was not)."""
  index: int
  status: str
  source: str | None = None
  face: FrameFace | None = None
  lost: str = ''


def is_video(path) -> bool:
  return pathlib.Path(path).suffix.lower() in VIDEO_EXTENSIONS


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
  """`photos.landmark_box` as float64 [4]: the next frame's box."""
  return np.asarray(photos.landmark_box(landmarks), np.float64)


def lost_why(box: np.ndarray, previous: np.ndarray | None, width: int, height: int) -> str:
  """Why `box` (from the last landmarks) cannot be the next frame's box ('' when it can)."""
  box = np.asarray(box, np.float64)
  if not np.isfinite(box).all():
    return 'landmarks not finite'
  side = max(box[2] - box[0], box[3] - box[1])
  if side < MIN_SIDE_PX:
    return f'landmark box of {side:.3g} px, under {MIN_SIDE_PX:g} px'
  problem = photos.box_problem(box, width, height)
  if problem:
    return problem
  if previous is not None:
    before = max(previous[2] - previous[0], previous[3] - previous[1])
    if not 1 / MAX_SIDE_CHANGE <= side / before <= MAX_SIDE_CHANGE:
      return f'landmark box went from {before:.3g} to {side:.3g} px in one frame'
  return ''


class Smoother:
  """The one-euro filter (Casiez, Roussel & Vogel 2012) on landmarks, per coordinate.

  An exponential moving average whose weight on the new frame follows the speed: a cut-off of
  `min_cutoff` Hz when the face is still (jitter removed), rising by `beta` Hz per face-box side
  per second of speed (little lag when it moves). Speeds are in box sides so that one `beta` serves
  every resolution. beta = 0 is a plain moving average, out = (1 - w) out_before + w new with
  w = 1 / (1 + fps / (2 pi min_cutoff)). min_cutoff = 0 is off.
  """

  def __init__(self, min_cutoff: float, beta: float = 0.0, fps: float = 30.0,
               d_cutoff: float = 1.0):
    for name, value in (('min_cutoff', min_cutoff), ('beta', beta), ('fps', fps),
                        ('d_cutoff', d_cutoff)):
      if not (math.isfinite(value) and value >= 0):
        raise ValueError(f'smoothing {name} must be a finite number >= 0, got {value}')
    if fps == 0 or d_cutoff == 0:
      raise ValueError('smoothing needs fps > 0 and d_cutoff > 0')
    self.min_cutoff, self.beta, self.fps, self.d_cutoff = min_cutoff, beta, fps, d_cutoff
    self.reset()

  def reset(self) -> None:
    self.value, self.speed = None, None

  def weight(self, cutoff) -> np.ndarray:
    """The new frame's weight for a cut-off frequency (Hz)."""
    return 1.0 / (1.0 + self.fps / (2 * np.pi * np.asarray(cutoff, np.float64)))

  def __call__(self, landmarks: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Smoothed landmarks [P, 2] (pixels); `scale` is the face's box side (pixels)."""
    landmarks = np.asarray(landmarks, np.float64)
    if self.min_cutoff == 0 or self.value is None:
      self.value, self.speed = landmarks, np.zeros_like(landmarks)
      return landmarks.astype(np.float32)
    speed = (landmarks - self.value) * self.fps  # pixels per second
    w = self.weight(self.d_cutoff)
    self.speed = w * speed + (1 - w) * self.speed
    cutoff = self.min_cutoff + self.beta * np.abs(self.speed) / max(float(scale), 1e-6)
    w = self.weight(cutoff)
    self.value = w * landmarks + (1 - w) * self.value
    return self.value.astype(np.float32)


def _best_detection(detector: Callable, frame: np.ndarray):
  detections = list(detector(frame))
  if not detections:
    return None
  best = max(detections, key=lambda d: float(d.score))
  return np.asarray(best.box, np.float64), float(best.score)


def track(aligner, frames: Iterable[np.ndarray], *, detector: Callable | None = None,
          tracking: bool = True, smoother: Smoother | None = None,
          first_box: tuple[float, float, float, float] | None = None) -> Iterator[FrameResult]:
  """One FrameResult per frame (uint8 [H, W] or [H, W, 3]), as the frames come.

  `tracking` False: every frame is searched by the detector. `smoother`: smooths the landmarks
  (None: not smoothed). `first_box`: the face's box in the first frame, in place of a detection
  (then a detector is needed only if tracking is lost).
  """
  smoother = smoother or Smoother(0.0)
  box, previous, source, score = None, None, None, None  # this frame's box and how it came
  if first_box is not None:
    box = np.asarray(photos.check_box(first_box, 'first_box', 'the first frame'), np.float64)
    source = DETECTOR
  for index, frame in enumerate(frames):
    height, width = frame.shape[:2]
    lost = lost_why(box, previous, width, height) if source == TRACKED else ''
    if lost or box is None:
      box, source, score = None, None, None
      if detector is not None:
        found = _best_detection(detector, frame)
        if found is not None:
          (box, score), source = found, DETECTOR
      elif index == 0:
        raise ValueError('track needs a first_box or a detector to find the face in frame 0')
    if lost:
      smoother.reset()  # a new track: nothing to average with
    if box is None:
      smoother.reset()
      previous = None
      yield FrameResult(index, NO_FACE, lost=lost)
      continue
    # A tracked box is already the landmark box: one pass (a detector's box gets the Aligner's).
    (face,) = (aligner.align(frame, [box], passes=1) if source == TRACKED else
               aligner.align(frame, [box]))
    raw = np.asarray(face.landmarks, np.float32)
    side = float(np.max(np.ptp(raw, axis=0)))
    yield FrameResult(index, OK, source, FrameFace(
        smoother(raw, side), raw, np.asarray(face.box, np.float32),
        None if face.pose is None else np.asarray(face.pose, np.float32), score), lost=lost)
    previous = box
    box, source, score = (landmark_box(raw), TRACKED, None) if tracking else (None, None, None)


def jitter_per_step(landmarks: np.ndarray, truth: np.ndarray, norm: np.ndarray) -> np.ndarray:
  """Per step t-1 -> t `[T - 1]`: the mean over landmarks of |(x_t - x_t-1) - (g_t - g_t-1)| /
  norm_t, how much the landmarks move beyond how the truth moves. `landmarks`, `truth` [T, P, 2];
  `norm` [T] (e.g. the truth's box size); NaN where a frame has no prediction (NaN landmarks)."""
  landmarks, truth = np.asarray(landmarks, np.float64), np.asarray(truth, np.float64)
  extra = np.diff(landmarks, axis=0) - np.diff(truth, axis=0)  # [T - 1, P, 2]
  return np.linalg.norm(extra, axis=-1).mean(-1) / np.asarray(norm, np.float64)[1:]


def temporal_jitter(landmarks: np.ndarray, truth: np.ndarray, norm: np.ndarray) -> float:
  """The mean of `jitter_per_step` over the steps between two frames with a face (NaN if none)."""
  steps = jitter_per_step(landmarks, truth, norm)
  steps = steps[np.isfinite(steps)]
  return float(steps.mean()) if steps.size else math.nan


# --- Files and cameras (OpenCV). ---


def _cv2():
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('reading and writing video needs OpenCV: pip install opencv-python-headless'
                      ) from e
  return cv2


class VideoError(ValueError):
  """A video file or camera that cannot be opened or read; the message is the sentence."""


def open_video(source) -> tuple[Iterator[np.ndarray], float]:
  """(RGB uint8 frames [H, W, 3], frames per second) of a video file or a camera index (int)."""
  cv2 = _cv2()
  if isinstance(source, int):
    capture, what = cv2.VideoCapture(source), f'camera {source}'
  else:
    if not pathlib.Path(source).is_file():
      raise VideoError(f'{photos.printable(source)}: no such file')
    capture, what = cv2.VideoCapture(str(source)), photos.printable(source)
  if not capture.isOpened():
    capture.release()
    raise VideoError(f'{what}: cannot be opened as a video' if not isinstance(source, int) else
                     f'no camera at index {source} (or it is busy)')
  fps = float(capture.get(cv2.CAP_PROP_FPS))
  fps = fps if math.isfinite(fps) and fps > 0 else 25.0

  def frames():
    try:
      while True:
        ok, frame = capture.read()
        if not ok:
          return
        yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
      capture.release()

  return frames(), fps


def write_video(path, frames: Iterable[np.ndarray], fps: float) -> int:
  """Writes RGB uint8 frames [H, W, 3] to an .mp4 (MPEG-4 part 2, which every OpenCV build can
  write); returns the frame count."""
  cv2 = _cv2()
  writer, count = None, 0
  try:
    for frame in frames:
      frame = np.asarray(frame, np.uint8)
      if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, -1)
      if writer is None:
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), float(fps),
                                 (frame.shape[1], frame.shape[0]))
        if not writer.isOpened():
          raise VideoError(f'{path}: OpenCV cannot write this video')
      writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
      count += 1
  finally:
    if writer is not None:
      writer.release()
  return count


def annotate(frame: np.ndarray, result: FrameResult) -> np.ndarray:
  """The frame (RGB uint8) with its face drawn: landmarks cyan, box green when tracked, yellow
  from the detector; the frame number and source, or 'no face', in the corner."""
  cv2 = _cv2()
  image = np.ascontiguousarray(frame if frame.ndim == 3 else np.repeat(frame[..., None], 3, -1))
  scale = max(image.shape[:2]) / 480
  thickness = max(1, round(scale))
  text = f'{result.index}: ' + (result.source if result.face is not None else 'no face')
  if result.face is not None:
    x0, y0, x1, y1 = (int(round(v)) for v in result.face.box)
    colour = (0, 220, 0) if result.source == TRACKED else (255, 220, 0)
    cv2.rectangle(image, (x0, y0), (x1, y1), colour, thickness)
    for x, y in np.asarray(result.face.landmarks, np.float64):
      if math.isfinite(x) and math.isfinite(y):
        cv2.circle(image, (int(round(x)), int(round(y))), max(1, round(2 * scale)),
                   (0, 255, 255), -1)
  cv2.putText(image, text, (4, int(16 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale,
              (255, 255, 255), thickness, cv2.LINE_AA)
  return image
