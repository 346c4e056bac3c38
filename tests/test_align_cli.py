"""align.py without a model: a fake Aligner and a fake detector stand in, so that the file handling,
the JSON / PNG / CSV outputs and the problem reporting are tested on their own.

The fake follows the Aligner contract (`align_batch(images, boxes=...)` -> per image a list of faces
with landmarks [68, 2], box [4], pose [3] radians, score None); its landmarks are the mean face
stretched over each box, so every expected number is computed here from the box alone.
"""

import csv
import dataclasses
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import align
from treemoe_jax.inference import align_files
from treemoe_jax.inference import detect
from treemoe_jax import geometry

POSE = np.array([0.1, -0.2, 0.3], np.float32)  # yaw, pitch, roll radians
FACE_BOX = (2.0, 3.0, 13.0, 14.0)  # What the fake detector finds on any non-black image.
FACE_SCORE = 0.875


def _unit_face() -> np.ndarray:
  points = geometry.MEAN_FACE_3D[:, :2].astype(np.float64)
  return (points - points.min(0)) / (points.max(0) - points.min(0))


def _landmarks(box) -> np.ndarray:
  box = np.asarray(box, np.float64)
  return (box[:2] + _unit_face() * (box[2:] - box[:2])).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class FakeFace:
  landmarks: np.ndarray
  box: np.ndarray
  pose: np.ndarray | None = None
  score: float | None = None
  stage_landmarks: np.ndarray | None = None


class FakeAligner:
  def __init__(self):
    self.calls = []  # Per call: the number of images and their boxes.
    self.routing_warning = None  # what Aligner says of a routing eval.py found collapsed

  def align_batch(self, images, boxes=None):
    assert boxes is not None and len(boxes) == len(images)  # align.py always gives the boxes.
    for image in images:
      assert image.dtype == np.uint8 and image.ndim == 3
    self.calls.append((len(images), [list(b) for b in boxes]))
    return [[FakeFace(_landmarks(b), np.asarray(b, np.float32), POSE) for b in image_boxes]
            for image_boxes in boxes]


class FakeDetector:
  name = 'fake'

  def __init__(self):
    self.searched = 0

  def __call__(self, image):
    self.searched += 1
    if image.max() == 0:
      return []
    return [detect.Detection(np.array(FACE_BOX, np.float32), FACE_SCORE)]


@pytest.fixture
def fakes(monkeypatch):
  aligner, detector = FakeAligner(), FakeDetector()
  made = []
  monkeypatch.setattr(align_files, 'load_aligner', lambda **kwargs: made.append(kwargs) or aligner)
  monkeypatch.setattr(detect, 'make', lambda name='auto', **kwargs: made.append(name) or detector)
  return aligner, detector, made


def _png(path, size=16, value=128):
  Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def _chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))


def _bomb(path):
  """A 200-byte PNG that claims 100000 x 100000 pixels (PIL refuses it before decoding)."""
  header = struct.pack('>IIBBBBB', 100_000, 100_000, 8, 0, 0, 0, 0)
  path.write_bytes(b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', header) +
                   _chunk(b'IDAT', zlib.compress(b'\0' * 64)) + _chunk(b'IEND', b''))


@pytest.fixture
def inputs(tmp_path):
  root = tmp_path / 'photos'
  root.mkdir()
  _png(root / 'a.jpg')
  _png(root / 'b faceless.png', value=0)
  _png(root / 'UPPER.JPG')
  (root / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  (root / 'empty.png').write_bytes(b'')
  (root / 'notes.txt').write_text('not an image')
  _png(root / 'big.png', size=64)  # 4096 pixels: over --max_pixels 1000.
  _bomb(root / 'bomb.png')
  other = tmp_path / 'other'
  other.mkdir()
  _png(other / 'a.jpg')  # Same name as photos/a.jpg.
  workdir = tmp_path / 'workdir'
  workdir.mkdir()
  return root, other, workdir, tmp_path / 'out'


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.reader(f))


def test_a_folder_run_writes_every_output_and_lists_every_problem(inputs, fakes, capsys):
  root, other, workdir, out = inputs
  aligner, detector, made = fakes
  code = align.main([str(root), str(other / 'a.jpg'), '--workdir', str(workdir), '--out', str(out),
                     '--batch', '2', '--max_pixels', '1000', '--routing', 'topk:2',
                     '--no_progress'])
  assert code == 0
  assert made == ['auto', {'workdir': str(workdir), 'exported': None, 'routing': 'topk:2',
                           'passes': 2}]
  expected = {  # output name -> status; folder order is sorted by file name.
      'UPPER.JPG': 'ok', 'a.jpg': 'ok', 'b_faceless.png': 'no face found', 'big.png': 'refused',
      'bomb.png': 'refused', 'corrupt.jpg': 'unreadable', 'empty.png': 'unreadable',
      'a_2.jpg': 'ok'}
  records = {name: json.loads((out / f'{name}.json').read_text()) for name in expected}
  assert {name: r['status'] for name, r in records.items()} == expected
  assert records['a_2.jpg']['file'] == str(other / 'a.jpg')
  assert 'empty file' in records['empty.png']['message']
  assert 'max_pixels = 1000' in records['big.png']['message']
  assert 'decompression bomb' in records['bomb.png']['message']
  assert not (out / 'notes.txt.json').exists()
  # Pictures for every image that could be read, none for the others.
  assert sorted(p.name for p in out.glob('*.png')) == [
      'UPPER.JPG.png', 'a.jpg.png', 'a_2.jpg.png', 'b_faceless.png.png']
  assert Image.open(out / 'a.jpg.png').size == (640, 640)  # 16 px drawn at the smallest size.

  # One face per readable, non-black image, as the detector boxed it, with its score.
  face = records['a.jpg']['faces']
  assert len(face) == 1 and records['a.jpg']['boxes_from'] == 'detector fake'
  face = face[0]
  assert face['box'] == list(FACE_BOX) and face['score'] == FACE_SCORE
  np.testing.assert_allclose(face['landmarks'], _landmarks(FACE_BOX), atol=5e-4)
  np.testing.assert_allclose([face['pose_radians'][k] for k in ('yaw', 'pitch', 'roll')], POSE,
                             atol=1e-6)
  np.testing.assert_allclose([face['pose_degrees'][k] for k in ('yaw', 'pitch', 'roll')],
                             [5.7296, -11.4592, 17.1887], atol=1e-3)
  assert records['b_faceless.png']['faces'] == [] and records['b_faceless.png']['image_size'] == [
      16, 16]

  # The aligner saw only images with faces, at most --batch images per call.
  # Batches of 2: (UPPER, a), (b faceless, big), (bomb, corrupt), (empty, other/a).
  assert [n for n, _ in aligner.calls] == [2, 1]
  assert detector.searched == 4

  faces = _rows(out / 'landmarks.csv')
  assert len(faces[0]) == 4 + 4 + 3 + 2 * 68
  assert faces[0][:11] == ['file', 'output', 'face', 'score', 'box_x0', 'box_y0', 'box_x1',
                           'box_y1', 'yaw_deg', 'pitch_deg', 'roll_deg']
  assert faces[0][11:15] == ['x0', 'y0', 'x1', 'y1'] and faces[0][-1] == 'y67'
  assert [row[1] for row in faces[1:]] == ['UPPER.JPG', 'a.jpg', 'a_2.jpg']
  row = faces[2]
  assert row[2:4] == ['0', '0.875000'] and [float(v) for v in row[4:8]] == list(FACE_BOX)
  np.testing.assert_allclose([float(v) for v in row[8:11]], np.degrees(POSE), atol=1e-3)
  np.testing.assert_allclose(np.array(row[11:], float).reshape(68, 2), _landmarks(FACE_BOX),
                             atol=5e-4)

  problems = _rows(out / 'problems.csv')
  assert problems[0] == ['file', 'output', 'status', 'message']
  assert [(row[1], row[2]) for row in problems[1:]] == [
      ('b_faceless.png', 'no face found'), ('big.png', 'refused'), ('bomb.png', 'refused'),
      ('corrupt.jpg', 'unreadable'), ('empty.png', 'unreadable')]

  printed = capsys.readouterr().out
  assert '3 faces aligned in 3 of 8 images' in printed
  assert '5 images without faces' in printed
  assert f'{root / "b faceless.png"}: no face found' in printed


def test_boxes_file_gives_faces_and_the_detector_does_the_rest(inputs, fakes):
  root, _, workdir, out = inputs
  aligner, detector, _ = fakes
  boxes = root.parent / 'boxes.json'
  boxes.write_text(json.dumps({'a.jpg': [[1, 1, 9, 9], [4, 5, 15, 15]], 'UPPER.JPG': [],
                               'elsewhere.jpg': [[0, 0, 1, 1]]}))
  assert align.main([str(root / 'a.jpg'), str(root / 'UPPER.JPG'), str(root / 'b faceless.png'),
                     '--exported', str(workdir), '--out', str(out), '--boxes', str(boxes),
                     '--no_progress']) == 0
  a = json.loads((out / 'a.jpg.json').read_text())
  assert a['boxes_from'] == 'boxes file' and [f['score'] for f in a['faces']] == [None, None]
  assert [f['box'] for f in a['faces']] == [[1, 1, 9, 9], [4, 5, 15, 15]]
  np.testing.assert_allclose(a['faces'][1]['landmarks'], _landmarks((4, 5, 15, 15)), atol=5e-4)
  upper = json.loads((out / 'UPPER.JPG.json').read_text())
  assert upper['status'] == 'no face box given' and upper['faces'] == []
  assert detector.searched == 1  # Only the image the file does not name.
  assert aligner.calls == [(1, [[(1.0, 1.0, 9.0, 9.0), (4.0, 5.0, 15.0, 15.0)]])]
  rows = _rows(out / 'landmarks.csv')
  assert [(r[1], r[2], r[3]) for r in rows[1:]] == [('a.jpg', '0', ''), ('a.jpg', '1', '')]


def test_without_a_model_the_pretrained_one_is_asked_for(inputs, fakes):
  root, _, _, out = inputs
  _, _, made = fakes
  assert align.main([str(root / 'a.jpg'), '--out', str(out), '--no_progress']) == 0
  assert made == ['auto', {'workdir': None, 'exported': None, 'routing': 'dense', 'passes': 2}]


def test_no_detector_is_made_when_the_boxes_file_names_every_image(inputs, fakes):
  root, _, workdir, out = inputs
  _, _, made = fakes
  boxes = root.parent / 'boxes.csv'
  boxes.write_text('file,x0,y0,x1,y1\na.jpg,1,1,9,9\n')
  assert align.main([str(root / 'a.jpg'), '--workdir', str(workdir), '--out', str(out),
                     '--boxes', str(boxes), '--no_progress']) == 0
  assert made == [{'workdir': str(workdir), 'exported': None, 'routing': 'dense', 'passes': 2}]


@pytest.mark.parametrize('args, message', [
    (['{root}', '--workdir', '{root}/nope', '--out', '{out}'], r'--workdir .*nope: no such folder'),
    (['{root}', '--workdir', '{workdir}', '--exported', '{workdir}', '--out', '{out}'],
     'not allowed with argument'),
    (['--workdir', '{workdir}', '--out', '{out}'], 'no images or folders given'),
    (['{root}/missing.jpg', '--workdir', '{workdir}', '--out', '{out}'],
     r'missing\.jpg: no such file or folder'),
    (['{root}', '--workdir', '{workdir}', '--out', '{out}', '--boxes', '{boxes}'],
     r"boxes\.csv: row 3 \(a\.jpg\): a box needs x1 > x0"),
    (['{root}', '--workdir', '{workdir}', '--out', '{out}', '--routing', 'top2'],
     r"--routing 'top2': expected dense, greedy or topk:K"),
    (['{root}', '--workdir', '{workdir}', '--out', '{out}', '--batch', '0'], '--batch'),
    (['{root}', '--workdir', '{workdir}', '--out', '{out}', '--detector', 'hog'],
     "invalid choice: 'hog'"),
])
def test_bad_arguments_stop_before_anything_is_written(inputs, fakes, capsys, args, message):
  root, _, workdir, out = inputs
  boxes = root.parent / 'boxes.csv'
  boxes.write_text('file,x0,y0,x1,y1\na.jpg,1,1,9,9\na.jpg,9,1,1,9\n')
  args = [a.format(root=root, workdir=workdir, out=out, boxes=boxes) for a in args]
  with pytest.raises(SystemExit) as stopped:
    align.main(args)
  assert stopped.value.code == 2
  error = capsys.readouterr().err
  assert 'Traceback' not in error
  assert __import__('re').search(message, error.splitlines()[-1]), error
  assert not out.exists() and fakes[0].calls == []


def test_a_missing_detector_is_a_bad_argument_naming_the_pip_command(inputs, monkeypatch, capsys):
  root, _, workdir, out = inputs

  def missing(name='auto', **kwargs):
    raise ImportError("no face detector is installed: pip install 'treemoe-jax[detect]'")

  monkeypatch.setattr(detect, 'make', missing)
  monkeypatch.setattr(align_files, 'load_aligner', lambda **kwargs: pytest.fail('loaded'))
  with pytest.raises(SystemExit) as stopped:
    align.main([str(root), '--workdir', str(workdir), '--out', str(out)])
  assert stopped.value.code == 2
  assert "pip install 'treemoe-jax[detect]'" in capsys.readouterr().err


def test_a_collapsed_routing_is_said_before_and_after_the_run(inputs, fakes, capsys):
  root, _, workdir, out = inputs
  aligner, _, _ = fakes
  aligner.routing_warning = 'greedy routing measured at 9.0x the dense NME: use dense'
  assert align.main([str(root / 'a.jpg'), '--workdir', str(workdir), '--out', str(out),
                     '--routing', 'greedy', '--no_progress']) == 0
  captured = capsys.readouterr()
  assert 'WARNING: greedy routing measured at 9.0x' in captured.err
  assert captured.out.rstrip().endswith('WARNING: greedy routing measured at 9.0x the dense '
                                        'NME: use dense')


def test_a_folder_of_awkward_inputs_completes_and_reports_each(tmp_path, fakes, monkeypatch,
                                                                capsys):
  # Each of these once stopped the whole run (issue 35): a picture matplotlib could not save
  # (over 1600:1), a file name that is not UTF-8 (the CSV could not write it), Netpbm files
  # skipped silently, JSON keys with spaces unmatched, huge boxes aligned into NaN or nonsense.
  import os  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'photos'
  root.mkdir()
  _png(root / 'a.jpg')
  _png(root / 'b outside.png')
  _png(os.fsencode(root) + b'/caf\xe9.png')  # Latin-1 'café.png'
  _png(root / 'd huge box.png')
  Image.fromarray(np.full((16, 16), 128, np.uint8)).save(root / 'face.pgm')
  _png(root / 'not drawn.png')
  Image.fromarray(np.full((1, 60), 128, np.uint8)).save(root / 'thin.png')
  Image.fromarray(np.full((2, 4000), 128, np.uint8)).save(root / 'wide.png')
  boxes = tmp_path / 'boxes.json'
  boxes.write_text(json.dumps({' thin.png ': [[0, 0, 1, 1]], 'wide.png': [[0, 0, 2, 2]],
                               'b outside.png': [[20, 20, 30, 30]],
                               'd huge box.png': [[0, 0, 1e6, 1e6]]}))
  draw = align_files.annotate.draw

  def failing_draw(path, image, faces, note=''):
    if 'not_drawn' in str(path):
      raise RuntimeError('no room on the canvas')
    draw(path, image, faces, note=note)

  monkeypatch.setattr(align_files.annotate, 'draw', failing_draw)
  out = tmp_path / 'out'
  assert align.main([str(root), '--workdir', str(tmp_path), '--out', str(out), '--boxes',
                     str(boxes), '--no_progress']) == 0

  aligner, detector, _ = fakes
  expected = {'a.jpg': 'ok', 'b_outside.png': 'bad box', 'caf_.png': 'ok',
              'd_huge_box.png': 'bad box', 'face.pgm': 'ok', 'not_drawn.png': 'ok',
              'thin.png': 'ok', 'wide.png': 'ok'}
  records = {name: json.loads((out / f'{name}.json').read_text()) for name in expected}
  assert {name: r['status'] for name, r in records.items()} == expected
  assert detector.searched == 4  # a, café, face.pgm, not drawn: the others have boxes.
  assert 'lies outside the 16x16 image' in records['b_outside.png']['message']
  assert 'is 6.25e+04x the 16x16 image' in records['d_huge_box.png']['message']
  assert records['thin.png']['faces'][0]['box'] == [0, 0, 1, 1]  # ' thin.png ' matched
  assert records['caf_.png']['file'] == f'{root}/caf\\xe9.png'
  assert records['not_drawn.png']['picture_error'] == 'RuntimeError: no room on the canvas'
  assert records['a.jpg']['picture_error'] is None
  # Pictures: the 2 x 4000 image drawn 1600 x 1 (at least a pixel a side), none for the failure.
  assert Image.open(out / 'wide.png.png').size == (1600, 1)
  assert Image.open(out / 'thin.png.png').size == (640, 10)  # 1 px at 640/60: 10.7, floored
  assert not (out / 'not_drawn.png.png').exists()

  with open(out / 'landmarks.csv', newline='', encoding='utf-8') as f:
    faces = list(csv.reader(f))
  assert [row[1] for row in faces[1:]] == ['a.jpg', 'caf_.png', 'face.pgm', 'not_drawn.png',
                                           'thin.png', 'wide.png']
  assert faces[2][0] == f'{root}/caf\\xe9.png'
  with open(out / 'problems.csv', newline='', encoding='utf-8') as f:
    problems = list(csv.reader(f))
  assert [(row[1], row[2]) for row in problems[1:]] == [
      ('b_outside.png', 'bad box'), ('d_huge_box.png', 'bad box'),
      ('not_drawn.png', 'picture not drawn')]
  printed = capsys.readouterr().out
  assert '6 faces aligned in 6 of 8 images' in printed
  assert '2 images without faces' in printed
  assert '1 picture not drawn (the landmarks are written' in printed
