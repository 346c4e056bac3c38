"""Video: tracking from the last frame's landmarks on a rendered turning head, the detector only
where tracking is lost, smoothing against the moving-average formula, jitter by hand, and video
files written and read back, and align.py on a clip.

The stand-in aligner is an oracle: it returns the frame's true landmarks (plus noise where a test
asks), so every expected box, call and number is computed here from the renderer's truth.
"""

import csv
import json

import numpy as np
import pytest

import align
from tests.test_align_cli import FakeFace
from input_pipeline import synthetic
from treemoe_jax.inference import align_files
from treemoe_jax.inference import detect
from treemoe_jax.inference import video

FRAMES = 12


@pytest.fixture(scope='module')
def clip():
  """A head turning from -70 to +70 degrees of yaw while moving right, 12 frames of 96 px."""
  yaw = np.radians(np.linspace(-70, 70, FRAMES))
  poses = np.stack([yaw, np.zeros(FRAMES), np.zeros(FRAMES)], -1)
  centres = np.stack([np.linspace(0.4, 0.6, FRAMES), np.full(FRAMES, 0.5)], -1)
  config = synthetic.RenderConfig(image_size=96, occlusion_fraction=0.0, box_fraction=(0.4, 0.4))
  return synthetic.render_sequence(poses, seed=3, centres=centres, config=config)




class OracleAligner:
  """The true landmarks of the frame it is given (found by its pixels), plus `noise` [T, P, 2]."""

  def __init__(self, clip, noise=None, broken=()):
    self.truth = clip['landmarks']
    self.index = {frame.tobytes(): i for i, frame in enumerate(clip['image'])}
    self.noise = np.zeros_like(self.truth) if noise is None else noise
    self.broken = broken  # frames whose landmarks collapse to one point
    self.boxes, self.passes = [], []

  def align(self, frame, boxes, passes=None):
    i = self.index[frame.tobytes()]
    self.passes.append(passes)
    self.boxes.append(np.asarray(boxes[0], np.float64))
    points = self.truth[i] + self.noise[i]
    if i in self.broken:
      points = np.zeros_like(points) + points.mean(0)
    return [FakeFace(points.astype(np.float32), np.asarray(boxes[0], np.float32), np.zeros(3))]


class TruthDetector:
  """Finds the true landmark box of the frame, score 1; records the frames it searched."""

  def __init__(self, clip):
    self.boxes = clip['box']
    self.index = {frame.tobytes(): i for i, frame in enumerate(clip['image'])}
    self.searched = []

  def __call__(self, frame):
    i = self.index[frame.tobytes()]
    self.searched.append(i)
    return [detect.Detection(np.array([0, 0, 5, 5], np.float32), 0.1),
            detect.Detection(self.boxes[i].astype(np.float32), 1.0)]


def test_each_frames_box_is_the_last_frames_landmark_box(clip):
  aligner, detector = OracleAligner(clip), TruthDetector(clip)
  results = list(video.track(aligner, clip['image'], detector=detector))
  assert [r.status for r in results] == [video.OK] * FRAMES
  assert [r.source for r in results] == [video.DETECTOR] + [video.TRACKED] * (FRAMES - 1)
  assert detector.searched == [0]  # the detector once: tracking is never lost
  np.testing.assert_allclose(aligner.boxes[0], clip['box'][0], atol=1e-4)  # the best detection
  assert aligner.passes == [None] + [1] * (FRAMES - 1)  # a landmark box is aligned once
  for t in range(1, FRAMES):  # the tight box of frame t-1's landmarks, by hand
    truth = clip['landmarks'][t - 1]
    np.testing.assert_allclose(aligner.boxes[t], [*truth.min(0), *truth.max(0)], atol=1e-4)
  assert results[0].face.score == 1.0 and results[1].face.score is None
  np.testing.assert_array_equal(results[5].face.landmarks, clip['landmarks'][5])


def test_without_tracking_every_frame_is_detected(clip):
  detector = TruthDetector(clip)
  results = list(video.track(OracleAligner(clip), clip['image'], detector=detector,
                             tracking=False))
  assert detector.searched == list(range(FRAMES))
  assert {r.source for r in results} == {video.DETECTOR}


def test_a_collapsed_face_loses_tracking_and_the_detector_takes_over(clip):
  aligner, detector = OracleAligner(clip, broken={4}), TruthDetector(clip)
  results = list(video.track(aligner, clip['image'], detector=detector))
  assert detector.searched == [0, 5]  # frame 4's landmarks give frame 5 a box of 0 px
  assert results[5].source == video.DETECTOR and '0 px, under 8' in results[5].lost
  np.testing.assert_allclose(aligner.boxes[5], clip['box'][5], atol=1e-4)
  assert [r.source for r in results[6:]] == [video.TRACKED] * (FRAMES - 6)


def test_lost_tracking_without_a_face_found_is_a_frame_without_face(clip):
  class Blind(TruthDetector):
    def __call__(self, frame):
      found = super().__call__(frame)
      return found if self.searched[-1] == 0 else []

  detector = Blind(clip)
  results = list(video.track(OracleAligner(clip, broken={2}), clip['image'], detector=detector))
  assert [r.status for r in results[:3]] == [video.OK] * 3
  assert all(r.status == video.NO_FACE and r.face is None for r in results[3:])
  assert detector.searched == [0] + list(range(3, FRAMES))  # then every frame, until found
  assert '0 px, under 8' in results[3].lost and results[4].lost == ''


@pytest.mark.parametrize('box, previous, reason', [
    ((10, 10, 50, 50), None, ''),
    ((10, 10, 50, 50), (10, 10, 40, 40), ''),  # 40 / 30 = 1.33: within 1.5x
    ((10, 10, 70, 50), (10, 10, 50, 50), ''),  # 60 / 40 = 1.5: the edge, kept
    ((10, 10, 71, 50), (10, 10, 50, 50), 'went from 40 to 61 px'),  # 1.525: lost
    ((10, 10, 41, 41), (0, 0, 45, 45), ''),  # 31 / 45 = 0.689 >= 1 / 1.5
    ((10, 10, 39, 39), (0, 0, 45, 45), 'went from 45 to 29 px'),  # 0.644: lost
    ((10, 10, 14, 14), None, 'landmark box of 4 px, under 8 px'),
    ((200, 10, 240, 50), None, 'lies outside the 96x96 image'),
    ((np.nan, 10, 40, 50), None, 'not finite'),
])
def test_tracking_is_lost_when_the_box_cannot_be_the_face(box, previous, reason):
  found = video.lost_why(np.array(box, float), None if previous is None else np.array(
      previous, float), 96, 96)
  if reason:
    assert reason in found, found
  else:
    assert found == ''


def _weight(cutoff, fps):
  """The one-euro filter's weight on the new frame, by its formula: 1 / (1 + fps / (2 pi fc))."""
  return 1 / (1 + fps / (2 * np.pi * cutoff))


def test_a_still_face_is_smoothed_as_a_moving_average_cuts_noise():
  w = _weight(2.0, 30.0)  # 0.295
  # A step: after n frames of the new value, 1 - (1 - w)^n of the way there.
  smoother = video.Smoother(2.0, beta=0.0, fps=30.0)
  smoother(np.zeros((1, 2)))
  for n in range(1, 6):
    np.testing.assert_allclose(smoother(np.ones((1, 2))), 1 - (1 - w)**n, rtol=1e-5)
  # Independent noise of variance s^2 keeps w / (2 - w) s^2 of it.
  noise = np.random.default_rng(0).normal(0, 2.0, (40_000, 1, 2))
  for cutoff in (0.5, 2.0, 8.0):
    smoother, w = video.Smoother(cutoff, fps=30.0), _weight(cutoff, 30.0)
    out = np.stack([smoother(x) for x in noise])[1000:]
    assert out.var() == pytest.approx(4.0 * w / (2 - w), rel=0.05)
  with pytest.raises(ValueError, match='beta must be a finite number >= 0'):
    video.Smoother(1.0, beta=-1)
  off = video.Smoother(0.0)
  assert off(np.ones((1, 2)))[0, 0] == 1 and off(np.zeros((1, 2)))[0, 0] == 0


def test_a_moving_face_is_followed_with_the_lag_its_speed_allows():
  # A ramp of v px per frame: in the steady state the output lags L behind, with
  # L = (1 - w) / w * v = v fps / (2 pi fc), and the speed, measured from the last output as the
  # paper's filter does, (L + v) fps, so that fc = min_cutoff + beta (L + v) fps / scale:
  # 2 pi beta fps / scale L^2 + 2 pi (min_cutoff + beta v fps / scale) L - v fps = 0.
  fps, v, scale, min_cutoff = 30.0, 2.0, 100.0, 1.0
  ramp = np.arange(400)[:, None, None] * np.array([v, 0.0])  # [T, 1, 2]
  lags = []
  for beta in (0.0, 5.0):
    smoother = video.Smoother(min_cutoff, beta=beta, fps=fps)
    out = np.stack([smoother(x, scale) for x in ramp])
    a = 2 * np.pi * beta * fps / scale
    b = 2 * np.pi * (min_cutoff + beta * v * fps / scale)
    lag = v * fps / b if beta == 0 else (-b + np.sqrt(b * b + 4 * a * v * fps)) / (2 * a)
    assert ramp[-1, 0, 0] - out[-1, 0, 0] == pytest.approx(lag, rel=1e-3)
    lags.append(lag)
  assert lags[0] == pytest.approx(9.549, rel=1e-3) and lags[1] == pytest.approx(1.520, rel=1e-3)


def test_tracked_landmarks_are_smoothed_and_the_raw_ones_kept(clip):
  noise = np.random.default_rng(1).normal(0, 1.0, clip['landmarks'].shape)
  results = list(video.track(OracleAligner(clip, noise), clip['image'],
                             detector=TruthDetector(clip),
                             smoother=video.Smoother(3.0, fps=25.0)))
  raw = clip['landmarks'] + noise
  w = _weight(3.0, 25.0)
  expected = raw[0].astype(np.float32).astype(np.float64)
  for t, result in enumerate(results):
    if t:
      expected = (1 - w) * expected + w * raw[t].astype(np.float32)
    np.testing.assert_allclose(result.face.raw_landmarks, raw[t], atol=1e-5)
    np.testing.assert_allclose(result.face.landmarks, expected, atol=1e-4)


def test_jitter_is_the_motion_beyond_the_truths_by_hand():
  truth = np.zeros((3, 2, 2))
  truth[:, :, 0] = np.arange(3)[:, None]  # moves 1 px right per frame
  pred = truth.copy()
  pred[1, 0] += (3, 4)  # landmark 0 of frame 1 off by 5 px: steps 0->1 and 1->2 each 5 px extra
  # per step: mean over 2 landmarks of (5, 0) = 2.5; norm 10 then 5 -> (0.25 + 0.5) / 2
  assert video.temporal_jitter(pred, truth, np.array([1.0, 10.0, 5.0])) == pytest.approx(0.375)
  assert video.temporal_jitter(truth, truth, np.ones(3)) == 0.0
  pred[2] = np.nan  # no face in frame 2: only the step 0 -> 1 counts
  assert video.temporal_jitter(pred, truth, np.array([1.0, 10.0, 5.0])) == pytest.approx(0.25)


def test_a_video_written_reads_back_with_its_frames(clip, tmp_path):
  path = tmp_path / 'clip.mp4'
  assert video.write_video(path, clip['image'], fps=12) == FRAMES
  frames, fps = video.open_video(path)
  frames = list(frames)
  assert fps == pytest.approx(12) and len(frames) == FRAMES
  assert frames[0].shape == (96, 96, 3) and frames[0].dtype == np.uint8
  # MPEG-4 is lossy: the frames come back close, not equal.
  error = np.abs(np.stack(frames).astype(float).mean(-1) - clip['image']).mean()
  assert error < 6, error
  with pytest.raises(video.VideoError, match='no such file'):
    video.open_video(tmp_path / 'missing.mp4')
  (tmp_path / 'fake.mp4').write_bytes(b'not a video at all')
  with pytest.raises(video.VideoError, match='cannot be opened as a video'):
    video.open_video(tmp_path / 'fake.mp4')


class StretchAligner:
  """align.py's contract, on any frame: a face filling the box, the model's mean face shape."""

  def __init__(self):
    self.routing_warning = None

  def align(self, frame, boxes, passes=None):
    box = np.asarray(boxes[0], np.float32)
    ramp = np.linspace(0, 1, 68, dtype=np.float32)
    unit = np.stack([ramp, ramp[::-1]], -1)  # spans the box exactly: its landmark box is the box
    return [FakeFace(box[:2] + unit * (box[2:] - box[:2]), box,
                     np.array([0.1, 0, 0], np.float32))]


class CentreDetector:
  name = 'centre'

  def __call__(self, frame):
    h, w = frame.shape[:2]
    return [detect.Detection(np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4], np.float32), 2.0)]


def test_align_py_on_a_clip_writes_a_row_and_a_frame_per_frame(clip, tmp_path, monkeypatch,
                                                               capsys):
  monkeypatch.setattr(align_files, 'load_aligner', lambda **kwargs: StretchAligner())
  monkeypatch.setattr(detect, 'make', lambda name='auto', **kwargs: CentreDetector())
  video.write_video(tmp_path / 'turn.mp4', clip['image'], fps=10)
  out = tmp_path / 'out'
  assert align.main([str(tmp_path / 'turn.mp4'), '--workdir', str(tmp_path), '--out', str(out),
                     '--smoothing', '2', '--no_progress', '--max_frames', '10']) == 0
  with open(out / 'turn.mp4.csv', newline='', encoding='utf-8') as f:
    rows = list(csv.reader(f))
  assert rows[0][:6] == ['frame', 'time_s', 'status', 'source', 'lost', 'score']
  assert len(rows[0]) == 6 + 4 + 3 + 2 * 68 and rows[0][-1] == 'y67'
  assert [r[0] for r in rows[1:]] == [str(i) for i in range(10)]  # --max_frames
  assert [r[1] for r in rows[1:3]] == ['0.0000', '0.1000']
  assert [r[3] for r in rows[1:4]] == ['detector', 'tracked', 'tracked']
  assert rows[1][5] == '2.000000' and rows[1][6:10] == ['24.000', '24.000', '72.000', '72.000']
  assert float(rows[2][10]) == pytest.approx(np.degrees(0.1), abs=1e-3)
  # Frame 1's box is the landmark box of frame 0's stretched face: the same box.
  assert rows[2][6:10] == rows[1][6:10]
  frames, _ = video.open_video(out / 'turn.mp4.annotated.mp4')
  assert len(list(frames)) == 10
  summary = json.loads((out / 'turn.mp4.json').read_text())
  assert (summary['frames'], summary['faces'], summary['detected'], summary['lost']) == (
      10, 10, 1, 0)
  assert summary['options'] == {'tracking': True, 'smoothing': 2.0, 'smoothing_beta': 20.0,
                                'max_frames': 10}
  assert 'a face in 10 of 10 frames (1 from the detector' in capsys.readouterr().out


def test_a_camera_that_is_not_there_is_said_and_the_run_ends(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(align_files, 'load_aligner', lambda **kwargs: StretchAligner())
  monkeypatch.setattr(detect, 'make', lambda name='auto', **kwargs: CentreDetector())
  code = align.main(['--camera', '9', '--workdir', str(tmp_path), '--out', str(tmp_path / 'o'),
                     '--no_progress'])
  assert code == 1
  assert 'no camera at index 9' in capsys.readouterr().err
