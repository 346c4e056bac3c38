"""Aligns image files into an output folder: the loop behind `align.py`.

Per input image, named by `photos.output_names`: OUTDIR/<name>.json (its faces, or why it has none)
and OUTDIR/<name>.png (`annotate.draw`; not for an image that cannot be read). Per run:
OUTDIR/landmarks.csv, a row per face, and OUTDIR/problems.csv, a row per image that has no face or
could not be read. A bad image is listed and the run goes on; "no face found" is reported, never
guessed.

A face's box comes from the boxes file when it names the image, else from the detector
(`treemoe_jax.detect`, in the models' box convention), whose score is kept. Images go through
`Aligner.align_batch` `batch_size` at a time, always with their boxes: the aligner detects nothing.

Letters: N faces, P landmarks (68).
"""

from collections.abc import Callable, Sequence
import csv
import dataclasses
import json
import math
import pathlib

import numpy as np
import tqdm

from input_pipeline import formats
from treemoe_jax.inference import drawing as annotate
from treemoe_jax import geometry
from treemoe_jax.inference import photos

OK = 'ok'
NO_FACE = 'no face found'  # The detector found none.
NO_BOX = 'no face box given'  # The boxes file gives the image an empty list.
UNREADABLE = 'unreadable'  # Missing, empty, truncated, corrupt or not an image.
REFUSED = 'refused'  # Over max_pixels, or a possible decompression bomb: never decoded.
BAD_BOX = 'bad box'  # A box of the boxes file outside the image or far larger (photos.box_problem).
NOT_DRAWN = 'picture not drawn'  # Faces aligned and written; only the PNG failed (problems.csv).
LANDMARKS_CSV, PROBLEMS_CSV = 'landmarks.csv', 'problems.csv'
ANGLES = ('yaw', 'pitch', 'roll')


@dataclasses.dataclass(frozen=True)
class AlignedFace:
  """A face as written: image pixels, pose radians (None without a pose estimator), the
  detector's score (None for a box from the boxes file)."""
  landmarks: np.ndarray  # [P, 2]
  box: np.ndarray  # [4] x0, y0, x1, y1: the box the crop was cut around
  pose: np.ndarray | None  # [3] yaw, pitch, roll
  score: float | None


@dataclasses.dataclass
class Result:
  """One input image: its status (OK, NO_FACE, NO_BOX, UNREADABLE, REFUSED) and faces."""
  file: str  # The path as listed.
  name: str  # Its outputs are OUTDIR/<name>.json and .png.
  status: str
  message: str = ''
  faces: list[AlignedFace] = dataclasses.field(default_factory=list)
  size: tuple[int, int] | None = None  # (width, height) when read
  boxes_from: str | None = None  # 'boxes file' or 'detector <name>'
  picture_error: str = ''  # Why OUTDIR/<name>.png could not be drawn, if it could not.


def load_aligner(*, workdir=None, exported=None, routing: str = 'dense', passes: int = 2):
  """`aligner.Aligner` of a trained workdir or of a `treemoe_jax.export` directory; neither: the
  pretrained model that ships with the package."""
  from treemoe_jax.inference import aligner  # pylint: disable=g-import-not-at-top (JAX, the model)
  if workdir is None and exported is None:
    return aligner.Aligner.pretrained(routing=routing, passes=passes)
  if exported is not None:
    return aligner.Aligner.from_export(exported, routing=routing, passes=passes)
  return aligner.Aligner.from_workdir(workdir, routing=routing, passes=passes)


def run(aligner, paths: Sequence[pathlib.Path], outdir: str | pathlib.Path, *,
        boxes: Sequence[Sequence[photos.Box] | None] | None = None,
        detector: Callable | None = None, detector_name: str = '', batch_size: int = 8,
        max_pixels: int = formats.DEFAULT_MAX_PIXELS, progress: bool = True) -> list[Result]:
  """Aligns `paths` into `outdir` (created); returns a Result per path, in order.

  `boxes[i]`: the boxes of `paths[i]` (`photos.match_boxes`), None to ask `detector` (which must
  then be given: image -> [Detection]).
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  boxes = list(boxes) if boxes is not None else [None] * len(paths)
  if len(boxes) != len(paths):
    raise ValueError(f'{len(paths)} images but boxes for {len(boxes)}')
  if detector is None and any(b is None for b in boxes):
    raise ValueError('some images have no boxes and no detector was given')
  outdir = pathlib.Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  names = photos.output_names(paths)
  results = []
  with _Tables(outdir) as tables, tqdm.tqdm(total=len(paths), unit='image',
                                            disable=not progress) as bar:
    for start in range(0, len(paths), batch_size):
      batch = range(start, min(start + batch_size, len(paths)))
      done = _align_batch(aligner, [paths[i] for i in batch], [names[i] for i in batch],
                          [boxes[i] for i in batch], detector, detector_name, max_pixels)
      for result, image in done:
        _write(outdir, result, image)
        tables.add(result)
        bar.update()
      results += [result for result, _ in done]
  return results


def _align_batch(aligner, paths, names, boxes, detector, detector_name, max_pixels):
  """[(Result, image or None)] of one batch: read, find boxes, one `align_batch` call."""
  done, todo = [], []  # todo: (index in done, image, boxes [N, 4], scores [N])
  for path, name, given in zip(paths, names, boxes):
    result = Result(photos.printable(path), name, OK)
    try:
      image = formats.read_image(path, max_pixels=max_pixels, exif_transpose=True)
    except formats.FormatError as e:
      result.status = REFUSED if 'refused' in e.problem else UNREADABLE
      result.message = e.problem
      done.append((result, None))
      continue
    result.size = (image.shape[1], image.shape[0])
    if given is not None:
      result.boxes_from = 'boxes file'
      face_boxes, scores = [tuple(b) for b in given], [None] * len(given)
    else:
      result.boxes_from = f'detector {detector_name}'.strip()
      detections = detector(image)
      face_boxes = [tuple(float(v) for v in d.box) for d in detections]
      scores = [float(d.score) for d in detections]
    problems = [photos.box_problem(b, *result.size) for b in face_boxes]
    if not face_boxes:
      result.status = NO_BOX if given is not None else NO_FACE
    elif any(problems):
      result.status = BAD_BOX
      result.message = '; '.join(f'box {i}: {p}' for i, p in enumerate(problems) if p)
    else:
      todo.append((len(done), image, face_boxes, scores))
    done.append((result, image))
  if todo:
    aligned = aligner.align_batch([image for _, image, _, _ in todo],
                                  boxes=[face_boxes for _, _, face_boxes, _ in todo])
    for (index, _, _, scores), faces in zip(todo, aligned):
      done[index][0].faces = [
          AlignedFace(np.asarray(f.landmarks, np.float32), np.asarray(f.box, np.float32),
                      None if f.pose is None else np.asarray(f.pose, np.float32),
                      f.score if f.score is not None else score)
          for f, score in zip(faces, scores)]
  return done


def _round(values, digits: int):
  return None if values is None else np.round(np.asarray(values, np.float64), digits).tolist()


def _angles(pose, degrees: bool):
  if pose is None:
    return None
  values = np.degrees(pose) if degrees else np.asarray(pose)
  return dict(zip(ANGLES, _round(values, 3 if degrees else 6)))


def record(result: Result) -> dict:
  """The JSON-ready record of an image (what OUTDIR/<name>.json holds); pixels to 0.001 px."""
  return {
      'file': result.file,
      'status': result.status,
      'message': result.message,
      'image_size': list(result.size) if result.size else None,  # [width, height]
      'boxes_from': result.boxes_from,
      'picture_error': result.picture_error or None,  # why <name>.png is missing, if it is
      'faces': [{
          'face': i,
          'score': None if f.score is None else round(float(f.score), 6),
          'box': _round(f.box, 3),
          'pose_degrees': _angles(f.pose, degrees=True),
          'pose_radians': _angles(f.pose, degrees=False),
          'landmarks': _round(f.landmarks, 3),
      } for i, f in enumerate(result.faces)],
  }


def _write(outdir: pathlib.Path, result: Result, image: np.ndarray | None) -> None:
  """The PNG first, so that the JSON can say why it is missing."""
  if image is not None:
    note = '' if result.status == OK else result.status
    try:
      annotate.draw(photos.output_path(outdir, result.name, '.png'), image, result.faces,
                    note=note)
    except Exception as e:  # pylint: disable=broad-except (a picture never stops the run)
      result.picture_error = f'{type(e).__name__}: {e}'
  path = photos.output_path(outdir, result.name, '.json')
  path.write_text(json.dumps(record(result), indent=1) + '\n')


def landmarks_header(num_points: int = geometry.NUM_LANDMARKS) -> list[str]:
  box = [f'box_{c}' for c in ('x0', 'y0', 'x1', 'y1')]
  points = [f'{axis}{i}' for i in range(num_points) for axis in 'xy']
  return ['file', 'output', 'face', 'score', *box, *(f'{a}_deg' for a in ANGLES), *points]


def _number(value, digits: int) -> str:
  return '' if value is None or not math.isfinite(value) else f'{value:.{digits}f}'


class _Tables:
  """landmarks.csv and problems.csv, a row per face / problem image as results arrive. The
  landmark columns follow the first face's P (68 for every model here)."""

  def __init__(self, outdir: pathlib.Path):
    self.paths = [photos.output_path(outdir, name, '') for name in (LANDMARKS_CSV, PROBLEMS_CSV)]
    self.header_written = False

  def __enter__(self):
    self.files = [path.open('w', newline='', encoding='utf-8') for path in self.paths]
    self.faces, self.problems = (csv.writer(f) for f in self.files)
    self.problems.writerow(['file', 'output', 'status', 'message'])
    return self

  def _header(self, num_points: int) -> None:
    if not self.header_written:
      self.faces.writerow(landmarks_header(num_points))
      self.header_written = True

  def add(self, result: Result) -> None:
    if result.status != OK:
      self.problems.writerow([result.file, result.name, result.status, result.message])
    if result.picture_error:
      self.problems.writerow([result.file, result.name, NOT_DRAWN, result.picture_error])
    for i, face in enumerate(result.faces):
      points = np.asarray(face.landmarks, np.float64)
      self._header(len(points))
      pose = [None] * 3 if face.pose is None else np.degrees(face.pose).tolist()
      self.faces.writerow([
          result.file, result.name, i, _number(face.score, 6),
          *(_number(v, 3) for v in np.asarray(face.box, np.float64)),
          *(_number(v, 3) for v in pose), *(_number(v, 3) for v in points.reshape(-1))])
    for f in self.files:
      f.flush()

  def __exit__(self, *exc):
    self._header(geometry.NUM_LANDMARKS)
    for f in self.files:
      f.close()


def summary(results: Sequence[Result], outdir) -> str:
  """What the run did, in a few lines: counts, then every image with a problem."""
  faces = sum(len(r.faces) for r in results)
  aligned = sum(r.status == OK for r in results)
  lines = [f'{faces} face{"s" * (faces != 1)} aligned in {aligned} of {len(results)} '
           f'image{"s" * (len(results) != 1)}; outputs in {outdir}']
  problems = [r for r in results if r.status != OK]
  if problems:
    lines.append(f'{len(problems)} image{"s" * (len(problems) != 1)} without faces '
                 f'(also in {PROBLEMS_CSV}):')
    lines += [f'  {r.file}: {r.status}' + (f': {r.message}' if r.message else '')
              for r in problems]
  undrawn = [r for r in results if r.picture_error]
  if undrawn:
    lines.append(f'{len(undrawn)} picture{"s" * (len(undrawn) != 1)} not drawn (the landmarks '
                 f'are written; also in {PROBLEMS_CSV}):')
    lines += [f'  {r.file}: {r.picture_error}' for r in undrawn]
  return '\n'.join(lines)
