"""Aligns the face in a video file or a camera into an output folder: the video loop of `align.py`.

Per video, named by `photos.output_names` (`clip.mp4` -> `clip.mp4`):
- OUTDIR/<name>.csv: a row per frame (frame, time, status, source, why tracking was lost, the
  detector's score, box, pose degrees, the 68 landmarks, smoothed where smoothing is on);
- OUTDIR/<name>.annotated.mp4: the frames with the face drawn (`video.annotate`);
- OUTDIR/<name>.json: what the run did (frames, faces, detector calls, tracking losses, options).
The CSV is flushed per frame, so a long video or a camera stopped with Ctrl-C keeps what was done.
"""

from collections.abc import Callable
import csv
import dataclasses
import json
import pathlib
import time

import numpy as np
import tqdm

from treemoe_jax.inference import align_files
from treemoe_jax.inference import photos
from treemoe_jax.inference import video


@dataclasses.dataclass
class VideoSummary:
  source: str  # the file as given, or 'camera N'
  name: str  # outputs: OUTDIR/<name>.csv, .annotated.mp4, .json
  frames: int = 0
  faces: int = 0
  detected: int = 0  # frames whose box came from the detector
  lost: int = 0  # frames where tracking was lost
  fps: float = 0.0
  seconds: float = 0.0  # wall time of the run
  options: dict = dataclasses.field(default_factory=dict)


def header(num_points: int = 68) -> list[str]:
  face = align_files.landmarks_header(num_points)[4:]  # box, pose, points
  return ['frame', 'time_s', 'status', 'source', 'lost', 'score', *face]


def _row(result: video.FrameResult, fps: float) -> list:
  number = align_files._number  # pylint: disable=protected-access (the same cell format)
  row = [result.index, f'{result.index / fps:.4f}', result.status, result.source or '',
         result.lost, '']
  face = result.face
  if face is None:
    return row + [''] * (4 + 3 + 2 * 68)
  row[5] = number(face.score, 6)
  pose = [None] * 3 if face.pose is None else np.degrees(face.pose).tolist()
  return row + [number(v, 3) for v in np.asarray(face.box, np.float64)] + [
      number(v, 3) for v in pose] + [number(v, 3) for v in
                                     np.asarray(face.landmarks, np.float64).reshape(-1)]


def run(aligner, source, outdir, *, name: str | None = None, detector: Callable | None = None,
        tracking: bool = True, smoothing: float = 0.0, smoothing_beta: float = 20.0,
        max_frames: int | None = None, progress: bool = True) -> VideoSummary:
  """Aligns the face of `source` (a video path, or an int camera index) frame by frame.

  `smoothing`: the one-euro filter's cut-off when still (Hz; 0: off), `smoothing_beta` its rise
  with speed (`video.Smoother`)."""
  video.Smoother(smoothing, smoothing_beta)  # bad values refused before the video is opened
  frames, fps = video.open_video(source)
  label = f'camera {source}' if isinstance(source, int) else photos.printable(source)
  name = name or (f'camera{source}' if isinstance(source, int) else photos.safe_name(source))
  outdir = pathlib.Path(outdir)
  outdir.mkdir(parents=True, exist_ok=True)
  summary = VideoSummary(label, name, fps=fps, options={
      'tracking': tracking, 'smoothing': smoothing, 'smoothing_beta': smoothing_beta,
      'max_frames': max_frames})
  start = time.time()
  kept = []  # each frame goes to the annotated video as it is aligned

  def limited():
    for index, frame in enumerate(frames):
      if max_frames is not None and index >= max_frames:
        return
      kept.append(frame)
      yield frame

  def annotated(results):
    for result in results:
      frame = kept.pop(0)
      summary.frames += 1
      summary.faces += result.face is not None
      summary.detected += result.source == video.DETECTOR
      summary.lost += bool(result.lost)
      writer.writerow(_row(result, fps))
      table.flush()
      bar.update()
      yield video.annotate(frame, result)

  csv_path = photos.output_path(outdir, name, '.csv')
  with csv_path.open('w', newline='', encoding='utf-8') as table, tqdm.tqdm(
      unit='frame', disable=not progress) as bar:
    writer = csv.writer(table)
    writer.writerow(header())
    results = video.track(aligner, limited(), detector=detector, tracking=tracking,
                          smoother=video.Smoother(smoothing, smoothing_beta, fps))
    try:
      video.write_video(photos.output_path(outdir, name, '.annotated.mp4'), annotated(results),
                        fps)
    except KeyboardInterrupt:  # a camera's end: the video is closed, the rows are written
      summary.options['interrupted'] = True
  summary.seconds = time.time() - start
  photos.output_path(outdir, name, '.json').write_text(
      json.dumps(dataclasses.asdict(summary), indent=1) + '\n')
  return summary


def describe(summary: VideoSummary, outdir) -> str:
  return (f'{summary.source}: a face in {summary.faces} of {summary.frames} frames '
          f'({summary.detected} from the detector, tracking lost {summary.lost} times), '
          f'{summary.frames / max(summary.seconds, 1e-9):.1f} frames/s; outputs '
          f'{pathlib.Path(outdir) / summary.name}.csv, .annotated.mp4, .json')
