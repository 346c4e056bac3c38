"""The dataset-format readers against files written in the real formats by these tests.

`.pts` text is written by hand (not by `write_pts`), COFW as MATLAB v7.3 lays it out in HDF5
(h5py), 300W-LP / AFLW2000-3D / COFW-68 as MAT 5 (scipy.io.savemat, plus one big-endian file
written byte by byte), images by PIL. Expected values come from the written numbers and the
documented 1-based shift, never from the reader. The fuzz tests feed random bytes and damaged
copies of valid files: nothing but a FormatError may come out (a valid parse is fine too).

Axis legend: P landmarks, N faces in a COFW file, H x W x C image pixels.
"""

import io
import os
import pickle
import struct

import h5py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import numpy as np
from PIL import Image, ImageFile
import pytest
import scipy.io

from input_pipeline import formats

FormatError = formats.FormatError
# database=None: no .hypothesis/ folder in the repository; text strategies below use explicit
# alphabets for the same reason (Hypothesis caches Unicode tables on disk otherwise).
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_TEXT = ''.join(chr(i) for i in range(32, 127)) + '\t\n\r\ufeff\u00e9'


def _expect_error(path, reader, *args, match=None, **kwargs):
  """Calls reader(path, ...) and checks it raises a FormatError naming the file (and `match`)."""
  with pytest.raises(FormatError) as info:
    reader(path, *args, **kwargs)
  message = str(info.value)
  assert message.startswith(f'{os.fspath(path)}: '), message
  if match is not None:
    assert match.lower() in message.lower(), message
  return message


def _landmarks(rng, num=68, scale=400.0):
  """1-based coordinates as they would be written in a file: float64 with 3 decimals."""
  return np.round(rng.uniform(1.0, scale, (num, 2)), 3)


# --- FormatError and box_of -------------------------------------------------------------------


def test_format_error_is_a_value_error_that_pickles():
  error = FormatError('/data/a.pts', 'missing brace')
  assert isinstance(error, ValueError)
  assert str(error) == '/data/a.pts: missing brace'
  copy = pickle.loads(pickle.dumps(error))
  assert (copy.path, copy.problem, str(copy)) == (error.path, error.problem, str(error))


def test_box_of():
  points = np.array([[3.0, 7.0], [-1.5, 2.0], [10.0, 4.0]], np.float32)
  np.testing.assert_array_equal(formats.box_of(points), [-1.5, 2.0, 10.0, 7.0])
  batch = np.stack([points, points + 1.0])
  np.testing.assert_array_equal(formats.box_of(batch), [[-1.5, 2.0, 10.0, 7.0],
                                                         [-0.5, 3.0, 11.0, 8.0]])
  assert formats.box_of(batch).dtype == np.float32
  for bad in (np.zeros((3,)), np.zeros((0, 2)), np.zeros((4, 3)), [[np.nan, 0.0]]):
    with pytest.raises(ValueError):
      formats.box_of(bad)


# --- .pts -------------------------------------------------------------------------------------


def _pts_text(points, *, newline='\n', count=None, body_format='{:.3f} {:.3f}'):
  """Hand-written `.pts` text of 1-based `points`, with the real files' odd spacing."""
  count = len(points) if count is None else count
  lines = ['version: 1', f'n_points:  {count}', '{']
  lines += [body_format.format(x, y) for x, y in points]
  lines.append('}')
  return newline.join(lines) + newline


@pytest.mark.parametrize('newline,bom,trailing', [
    ('\n', False, ''), ('\r\n', True, '\r\n\r\n'), ('\r', False, '\n  \n'), ('\n', True, '\t\n')])
def test_read_pts_values(tmp_path, newline, bom, trailing):
  points = _landmarks(np.random.default_rng(0))
  # Odd whitespace: tabs, runs of spaces, leading/trailing blanks; numbers in several spellings.
  lines = ['  version:1 ', 'n_points :\t68', '{  ']
  spellings = ['{:.3f}\t{:.3f}', '  {:.3f}   {:.3f}  ', '{:+.3f} {:.3f}']
  lines += [spellings[i % 3].format(x, y) for i, (x, y) in enumerate(points)]
  lines[5] = f'{points[2, 0]:.3e} {points[2, 1]:.3f}'  # Exponent notation (round-trips exactly).
  points[2, 0] = float(f'{points[2, 0]:.3e}')
  lines += ['}']
  text = newline.join(lines) + trailing
  path = tmp_path / 'face.pts'
  path.write_bytes((b'\xef\xbb\xbf' if bom else b'') + text.encode())
  got = formats.read_pts(path)
  assert got.dtype == np.float32 and got.shape == (68, 2)
  np.testing.assert_array_equal(got, (points - 1.0).astype(np.float32))


def test_read_pts_other_counts(tmp_path):
  points = _landmarks(np.random.default_rng(1), num=39)
  path = tmp_path / 'profile.pts'
  path.write_text(_pts_text(points))
  np.testing.assert_array_equal(formats.read_pts(path, num_points=None),
                                (points - 1.0).astype(np.float32))
  np.testing.assert_array_equal(formats.read_pts(path, num_points=39),
                                (points - 1.0).astype(np.float32))
  _expect_error(path, formats.read_pts, match='n_points is 39, expected 68')


def _valid_pts(num=68):
  return _pts_text(_landmarks(np.random.default_rng(2), num=num))


def _replace_line(text, index, line):
  lines = text.split('\n')
  lines[index] = line
  return '\n'.join(lines)


PTS_ERRORS = {
    'empty': (b'', 'empty'),
    'blank': (b' \n\r\n\t\n', 'empty'),
    'binary': (b'\x89PNG\r\n\x1a\n\x00\xff\xfe', 'not a text file'),
    'wrong version': (_replace_line(_valid_pts(), 0, 'version: 2'), 'unsupported version'),
    'no version': ('\n'.join(_valid_pts().split('\n')[1:]), "'version: 1'"),
    'bad count': (_replace_line(_valid_pts(), 1, 'n_points: sixty-eight'), 'positive integer'),
    'zero count': (_replace_line(_valid_pts(), 1, 'n_points: 0'), 'positive integer'),
    'count mismatch': (_pts_text(_landmarks(np.random.default_rng(3)), count=69), 'expected 68'),
    'too few lines': (_replace_line(_valid_pts(), 10, ''), 'has 67 point lines'),
    'too many lines': (_replace_line(_valid_pts(), 10, '5 6\n7 8'), 'has 69 point lines'),
    'no opening brace': (_replace_line(_valid_pts(), 2, ''), "expected '{'"),
    'no closing brace': (_valid_pts().replace('}', ''), "missing the closing '}'"),
    'header only': ('version: 1\nn_points: 68\n', "expected '{'"),
    'nan': (_replace_line(_valid_pts(), 7, '12.5 nan'), 'non-finite'),
    'inf': (_replace_line(_valid_pts(), 7, '-inf 3'), 'non-finite'),
    'beyond float32': (_replace_line(_valid_pts(), 7, '1e39 3'), 'non-finite'),
    'word': (_replace_line(_valid_pts(), 7, '12.5 abc'), 'not a number'),
    'comma decimal': (_replace_line(_valid_pts(), 7, '12,5 3'), 'not a number'),
    'underscore': (_replace_line(_valid_pts(), 7, '1_2 3'), 'not a number'),
    'three numbers': (_replace_line(_valid_pts(), 7, '1 2 3'), 'two numbers'),
    'one number': (_replace_line(_valid_pts(), 7, '1'), 'two numbers'),
    'text after brace': (_valid_pts() + 'extra\n', "after the closing '}'"),
    'unicode digits': (_replace_line(_valid_pts(), 1, 'n_points: \u0666\u0668'), 'positive'),
}


@pytest.mark.parametrize('case', sorted(PTS_ERRORS))
def test_read_pts_errors(tmp_path, case):
  content, match = PTS_ERRORS[case]
  path = tmp_path / 'bad.pts'
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  _expect_error(path, formats.read_pts, match=match)


def test_read_pts_missing_file_and_directory(tmp_path):
  _expect_error(tmp_path / 'nope.pts', formats.read_pts, match='cannot read')
  _expect_error(tmp_path, formats.read_pts, match='not a regular file')


def test_write_pts_round_trips_bit_exact_and_is_1_based(tmp_path):
  rng = np.random.default_rng(4)
  points = np.concatenate([rng.uniform(-50, 5000, (66, 2)), [[0.0, -1.0], [1e-7, 123456.7]]])
  points = points.astype(np.float32)
  path = tmp_path / 'out.pts'
  formats.write_pts(path, points)
  text = path.read_text()
  lines = text.split('\n')
  assert lines[:3] == ['version: 1', 'n_points:  68', '{'] and lines[-2:] == ['}', '']
  x, y = (float(v) for v in lines[3].split())
  np.testing.assert_allclose([x, y], points[0].astype(np.float64) + 1.0, rtol=1e-6)
  np.testing.assert_array_equal(formats.read_pts(path), points)


@FUZZ
@given(st.lists(st.tuples(st.floats(-1e6, 1e6, width=32), st.floats(-1e6, 1e6, width=32)),
                min_size=1, max_size=80))
def test_write_pts_round_trip_fuzz(fuzz_dir, rows):
  points = np.array(rows, np.float32)
  path = fuzz_dir / 'round_trip.pts'
  formats.write_pts(path, points)
  got = formats.read_pts(path, num_points=None)
  large = np.abs(points) >= 2.0**-29  # Bit-exact there (documented); within 2**-52 px below.
  np.testing.assert_array_equal(got[large], points[large])
  np.testing.assert_allclose(got[~large], points[~large], rtol=0, atol=2.0**-52)


def test_write_pts_refuses_bad_landmarks(tmp_path):
  for bad in (np.zeros((68, 3)), np.zeros((0, 2)), np.full((68, 2), np.nan)):
    _expect_error(tmp_path / 'x.pts', formats.write_pts, bad)


# --- fuzzing helpers --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def fuzz_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('fuzz')


@st.composite
def _damaged(draw, valid: bytes, tokens: bool = False):
  """`valid` after one or two random edits: truncation, byte flips, inserted bytes or text,
  a deleted range, or (`tokens`) two whitespace-separated tokens swapped."""
  data = valid
  kinds = ['truncate', 'flip', 'insert_bytes', 'insert_text', 'delete'] + ['swap'] * tokens
  for _ in range(draw(st.integers(1, 2))):
    kind = draw(st.sampled_from(kinds))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == 'truncate':
      data = data[:at]
    elif kind == 'flip' and data:
      flips = draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)),
                            min_size=1, max_size=4))
      buffer = bytearray(data)
      for i, mask in flips:
        buffer[i] ^= mask
      data = bytes(buffer)
    elif kind == 'insert_bytes':
      data = data[:at] + draw(st.binary(min_size=1, max_size=16)) + data[at:]
    elif kind == 'insert_text':
      data = data[:at] + draw(st.text(FUZZ_TEXT, min_size=1, max_size=12)).encode() + data[at:]
    elif kind == 'delete':
      data = data[:at] + data[at + draw(st.integers(1, 64)):]
    elif kind == 'swap':
      words = data.split(b' ')
      if len(words) > 1:
        i, j = draw(st.integers(0, len(words) - 1)), draw(st.integers(0, len(words) - 1))
        words[i], words[j] = words[j], words[i]
        data = b' '.join(words)
  return data


def _fuzz_one(path, content, reader, check):
  """Writes `content`, runs `reader`: a FormatError naming the file, or a result `check` accepts."""
  path.write_bytes(content)
  try:
    result = reader(path)
  except FormatError as e:
    assert str(e).startswith(f'{path}: ')
    return
  check(result)


def _check_landmarks(points, num=68):
  assert points.shape == (num, 2) and points.dtype == np.float32 and np.isfinite(points).all()


@FUZZ
@given(st.one_of(st.binary(max_size=3000), _damaged(_valid_pts().encode(), tokens=True),
                 _damaged(_pts_text(_landmarks(np.random.default_rng(5)), newline='\r\n')
                          .encode(), tokens=True)))
def test_read_pts_fuzz(fuzz_dir, content):
  _fuzz_one(fuzz_dir / 'fuzz.pts', content, formats.read_pts, _check_landmarks)


# --- images -----------------------------------------------------------------------------------


def _save(image, path, fmt, **kwargs):
  image.save(path, fmt, **kwargs)
  return path


def _rgb(rng, height=23, width=37):  # H != W catches transposed reads.
  return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_read_image_png_modes_exact(tmp_path):
  rng = np.random.default_rng(6)
  rgb = _rgb(rng)
  got = formats.read_image(_save(Image.fromarray(rgb), tmp_path / 'rgb.png', 'PNG'))
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, rgb)

  gray = rgb[..., 0]
  got = formats.read_image(_save(Image.fromarray(gray), tmp_path / 'gray.png', 'PNG'))
  np.testing.assert_array_equal(got, gray[..., None])

  rgba = np.concatenate([rgb, rng.integers(0, 256, rgb.shape[:2] + (1,), dtype=np.uint8)], -1)
  got = formats.read_image(_save(Image.fromarray(rgba), tmp_path / 'rgba.png', 'PNG'))
  np.testing.assert_array_equal(got, rgb)  # Alpha dropped, colours as stored.

  la = np.stack([gray, 255 - gray], -1)
  got = formats.read_image(_save(Image.fromarray(la, 'LA'), tmp_path / 'la.png', 'PNG'))
  np.testing.assert_array_equal(got, gray[..., None])

  palette = rng.integers(0, 256, (4, 3), dtype=np.uint8)
  indices = rng.integers(0, 4, gray.shape, dtype=np.uint8)
  image = Image.fromarray(indices, 'P')
  image.putpalette(palette.reshape(-1).tolist())
  got = formats.read_image(_save(image, tmp_path / 'palette.png', 'PNG'))
  np.testing.assert_array_equal(got, palette[indices])

  bits = rng.integers(0, 2, gray.shape).astype(bool)
  got = formats.read_image(_save(Image.fromarray(bits), tmp_path / 'bits.png', 'PNG'))
  np.testing.assert_array_equal(got, np.where(bits, 255, 0).astype(np.uint8)[..., None])

  deep = rng.integers(0, 65536, gray.shape).astype(np.uint16)
  deep[0, :3] = (0, 65535, 128)
  got = formats.read_image(_save(Image.fromarray(deep), tmp_path / 'deep.png', 'PNG'))
  np.testing.assert_array_equal(got, np.round(deep / 257.0).astype(np.uint8)[..., None])


def test_read_image_jpeg(tmp_path):
  rgb = np.zeros((40, 60, 3), np.uint8)
  rgb[:, :30] = (200, 40, 90)  # Flat areas: JPEG reproduces them within a few levels.
  rgb[:, 30:] = (10, 220, 120)
  got = formats.read_image(_save(Image.fromarray(rgb), tmp_path / 'rgb.jpg', 'JPEG',
                                 quality=95))
  assert got.shape == (40, 60, 3) and got.dtype == np.uint8
  assert np.abs(got[5:-5, 5:25].astype(int) - rgb[5:-5, 5:25]).max() <= 4
  got = formats.read_image(_save(Image.fromarray(rgb[..., 0]), tmp_path / 'gray.jpg', 'JPEG'))
  assert got.shape == (40, 60, 1)
  cmyk = Image.fromarray(rgb).convert('CMYK')
  got = formats.read_image(_save(cmyk, tmp_path / 'cmyk.jpg', 'JPEG', quality=95))
  assert got.shape == (40, 60, 3)
  assert np.abs(got[5:-5, 5:25].astype(int) - rgb[5:-5, 5:25]).max() <= 6


def test_read_image_exif_orientation(tmp_path):
  rgb = _rgb(np.random.default_rng(7))
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
  path = _save(Image.fromarray(rgb), tmp_path / 'rotated.jpg', 'JPEG', exif=exif)
  assert formats.read_image(path).shape == (23, 37, 3)  # The stored grid, as annotated.
  assert formats.read_image(path, exif_transpose=True).shape == (37, 23, 3)


def _encoded(fmt, rng=None):
  rng = rng or np.random.default_rng(8)
  buffer = io.BytesIO()
  Image.fromarray(_rgb(rng, 48, 64)).save(buffer, fmt)
  return buffer.getvalue()


def test_loading_truncated_images_is_off_by_default():
  assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize('fmt,cuts', [
    ('JPEG', (0.3, 0.7, -2, -1)),
    # -12: no IEND chunk; -16: the last IDAT chunk's CRC is missing too; -20: the zlib checksum
    # is gone as well (PIL's load() alone accepts all three).
    ('PNG', (0.3, 0.7, -20, -16, -12, -1)),
])
def test_read_image_truncated(tmp_path, fmt, cuts):
  data = _encoded(fmt)
  for cut in cuts:
    size = int(len(data) * cut) if isinstance(cut, float) else len(data) + cut
    path = tmp_path / f'cut_{size}.{fmt.lower()}'
    path.write_bytes(data[:size])
    _expect_error(path, formats.read_image, match='truncated or corrupt')


def test_read_image_png_with_a_damaged_chunk(tmp_path):
  data = bytearray(_encoded('PNG'))
  data[len(data) // 2] ^= 0x55  # Inside IDAT: its CRC no longer matches.
  path = tmp_path / 'flipped.png'
  path.write_bytes(bytes(data))
  _expect_error(path, formats.read_image, match='corrupt')


def test_read_image_errors(tmp_path):
  _expect_error(tmp_path / 'missing.jpg', formats.read_image, match='cannot read')
  _expect_error(tmp_path, formats.read_image, match='not a regular file')
  (tmp_path / 'empty.jpg').write_bytes(b'')
  _expect_error(tmp_path / 'empty.jpg', formats.read_image, match='empty')
  (tmp_path / 'text.jpg').write_text('version: 1\nn_points: 68\n')
  _expect_error(tmp_path / 'text.jpg', formats.read_image, match='not an image')
  path = _save(Image.fromarray(_rgb(np.random.default_rng(9))), tmp_path / 'big.png', 'PNG')
  _expect_error(path, formats.read_image, max_pixels=23 * 37 - 1, match='max_pixels')
  assert formats.read_image(path, max_pixels=23 * 37).shape == (23, 37, 3)
  float_image = Image.fromarray(np.zeros((4, 5), np.float32))
  _expect_error(_save(float_image, tmp_path / 'float.tif', 'TIFF'), formats.read_image,
                match="mode 'F'")


def test_read_image_decompression_bombs(tmp_path, monkeypatch):
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)
  warn = _save(Image.new('L', (40, 30)), tmp_path / 'warn.png', 'PNG')  # 1200: PIL warns.
  error = _save(Image.new('L', (50, 50)), tmp_path / 'error.png', 'PNG')  # > 2x: PIL raises.
  for path in (warn, error):
    _expect_error(path, formats.read_image, max_pixels=10**9, match='decompression bomb')


def test_read_image_refuses_to_run_with_truncated_loading(tmp_path, monkeypatch):
  path = _save(Image.new('L', (4, 4)), tmp_path / 'ok.png', 'PNG')
  monkeypatch.setattr(ImageFile, 'LOAD_TRUNCATED_IMAGES', True)
  with pytest.raises(RuntimeError, match='LOAD_TRUNCATED_IMAGES'):
    formats.read_image(path)


def _check_image(image):
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] in (1, 3)


@settings(FUZZ, max_examples=100)
@given(st.sampled_from(['PNG', 'JPEG']), st.data())
def test_read_image_fuzz(fuzz_dir, fmt, data):
  content = data.draw(_damaged(_encoded(fmt)))
  _fuzz_one(fuzz_dir / f'fuzz.{fmt.lower()}', content, formats.read_image, _check_image)


# --- COFW (MATLAB v7.3 = HDF5) ----------------------------------------------------------------

TEST_KEYS = ('IsT', 'phisT', 'bboxesT')
TRAIN_KEYS = ('IsTr', 'phisTr', 'bboxesTr')
# MATLAB v7.3 files are HDF5 with a 512-byte user block starting with a MAT-style text header.
V73_HEADER = (b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 '
              b'HDF5 schema 1.00 .').ljust(116) + b'\0' * 8 + b'\x00\x02IM'


def _write_cofw(path, images, phis, boxes, *, keys=TEST_KEYS, layout='row'):
  """A COFW file as MATLAB -v7.3 writes it: the cell array of images is a (1, N) ('row') or
  (N, 1) ('column') dataset of object references into '#refs#'; every MATLAB array is stored
  transposed (column-major), so an H x W x 3 image is (3, W, H), phis N x 87 is (87, N)."""
  num = len(images)
  with h5py.File(path, 'w', userblock_size=512) as f:
    refs = []
    for i, image in enumerate(images):
      stored = f.create_dataset(f'#refs#/{chr(ord("a") + i)}', data=np.asarray(image).T)
      stored.attrs['MATLAB_class'] = np.bytes_('uint8')
      refs.append(stored.ref)
    shape = (1, num) if layout == 'row' else (num, 1)
    cell = f.create_dataset(keys[0], shape=shape, dtype=h5py.ref_dtype)
    cell[...] = np.array(refs, dtype=object).reshape(shape)
    cell.attrs['MATLAB_class'] = np.bytes_('cell')
    for key, value in ((keys[1], phis), (keys[2], boxes)):
      f.create_dataset(key, data=np.asarray(value, np.float64).T)
      f[key].attrs['MATLAB_class'] = np.bytes_('double')
  with open(path, 'r+b') as f:
    f.write(V73_HEADER)
  return path


def _cofw_data(rng):
  images = [_rgb(rng, 31, 22), rng.integers(0, 256, (17, 26), dtype=np.uint8)]  # RGB and gray.
  xy = np.round(rng.uniform(1, 21, (2, 58)), 4)
  occluded = rng.integers(0, 2, (2, 29)).astype(np.float64)
  phis = np.concatenate([xy, occluded], axis=1)  # MATLAB N x 87: x 1..29, y 30..58, occ 59..87.
  boxes = np.array([[2.0, 3.5, 15.0, 20.25], [1.0, 1.0, 24.0, 15.0]])  # [x y w h]
  return images, phis, boxes


@pytest.mark.parametrize('keys,layout', [(TEST_KEYS, 'row'), (TEST_KEYS, 'column'),
                                         (TRAIN_KEYS, 'row')])
def test_read_cofw_values(tmp_path, keys, layout):
  images, phis, boxes = _cofw_data(np.random.default_rng(10))
  path = _write_cofw(tmp_path / 'COFW.mat', images, phis, boxes, keys=keys, layout=layout)
  got = formats.read_cofw(path)
  assert got['split'] == ('test' if keys == TEST_KEYS else 'train')
  assert len(got['images']) == 2
  np.testing.assert_array_equal(got['images'][0], images[0])
  np.testing.assert_array_equal(got['images'][1], images[1][..., None])
  assert all(image.dtype == np.uint8 for image in got['images'])
  expected = np.stack([phis[:, :29], phis[:, 29:58]], axis=-1) - 1.0
  assert got['landmarks'].dtype == np.float32 and got['landmarks'].shape == (2, 29, 2)
  np.testing.assert_array_equal(got['landmarks'], expected.astype(np.float32))
  np.testing.assert_array_equal(got['occluded'], phis[:, 58:] == 1)
  assert got['occluded'].dtype == bool
  x, y, w, h = boxes.T
  np.testing.assert_array_equal(
      got['boxes'], np.stack([x - 1, y - 1, x - 1 + w, y - 1 + h], -1).astype(np.float32))


def _edit_h5(path, edit):
  with h5py.File(path, 'r+') as f:
    edit(f)
  return path


def _replace(key, value):
  def edit(f):
    del f[key]
    f.create_dataset(key, data=value)
  return edit


def _cofw_error_cases():
  images, phis, boxes = _cofw_data(np.random.default_rng(11))
  nan_phis = phis.copy()
  nan_phis[1, 3] = np.nan
  bad_flags = phis.copy()
  bad_flags[0, 60] = 2
  negative = boxes.copy()
  negative[1, 2] = -3
  three_phis = np.concatenate([phis, phis[:1]])
  return {
      'missing boxes': (lambda f: f.__delitem__('bboxesT'), 'no complete COFW variables'),
      'no keys': (lambda f: (f.move('IsT', 'Images'), f.move('phisT', 'P')),
                  "variables present: ['Images', 'P', 'bboxesT']"),
      'both splits': (lambda f: (f.copy('IsT', 'IsTr'), f.copy('phisT', 'phisTr'),
                                 f.copy('bboxesT', 'bboxesTr')), 'both'),
      'phis not transposed': (_replace('phisT', phis), 'expected (87, 2)'),
      'phis for 3 faces': (_replace('phisT', three_phis.T), 'expected (87, 2)'),
      'boxes for 1 face': (_replace('bboxesT', boxes[:1].T), 'expected (4, 2)'),
      'boxes as text': (_replace('bboxesT', np.array([b'x y w h'])), 'numeric'),
      'nan landmark': (_replace('phisT', nan_phis.T), 'non-finite'),
      'occlusion 2': (_replace('phisT', bad_flags.T), 'must be 0 or 1'),
      'negative width': (_replace('bboxesT', negative.T), 'negative width'),
      'images not refs': (_replace('IsT', np.zeros((1, 2))), 'cell vector'),
      'image as double': (_replace('#refs#/a', images[0].T.astype(np.float64)), 'uint8'),
      'image 4 channels': (_replace('#refs#/a', np.zeros((4, 5, 6), np.uint8)),
                           'after transposing'),
      'null reference': (lambda f: f['IsT'].__setitem__((0, 1), h5py.Reference()), 'null'),
  }, (images, phis, boxes)


@pytest.mark.parametrize('case', sorted(_cofw_error_cases()[0]))
def test_read_cofw_errors(tmp_path, case):
  cases, (images, phis, boxes) = _cofw_error_cases()
  edit, match = cases[case]
  path = _edit_h5(_write_cofw(tmp_path / 'COFW.mat', images, phis, boxes), edit)
  _expect_error(path, formats.read_cofw, match=match)


def test_read_cofw_not_hdf5(tmp_path):
  v5 = tmp_path / 'v5.mat'
  scipy.io.savemat(v5, {'phisT': np.zeros((2, 87))})
  _expect_error(v5, formats.read_cofw, match='MAT 5 file')
  text = tmp_path / 'text.mat'
  text.write_text('IsT phisT bboxesT')
  _expect_error(text, formats.read_cofw, match='not an HDF5')
  _expect_error(tmp_path / 'missing.mat', formats.read_cofw, match='cannot read')
  (tmp_path / 'empty.mat').write_bytes(b'')
  _expect_error(tmp_path / 'empty.mat', formats.read_cofw, match='empty')
  with h5py.File(tmp_path / 'empty_cell.mat', 'w') as f:
    f.create_dataset('IsT', shape=(1, 0), dtype=h5py.ref_dtype)
    f['phisT'] = np.zeros((87, 0))
    f['bboxesT'] = np.zeros((4, 0))
  _expect_error(tmp_path / 'empty_cell.mat', formats.read_cofw, match='no images')


@pytest.fixture(scope='module')
def valid_cofw_bytes(tmp_path_factory):
  images, phis, boxes = _cofw_data(np.random.default_rng(12))
  path = _write_cofw(tmp_path_factory.mktemp('cofw') / 'COFW.mat', images, phis, boxes)
  return path.read_bytes()


def _check_cofw(result):
  num = len(result['images'])
  for image in result['images']:
    _check_image(image)
  assert result['landmarks'].shape == (num, 29, 2) and np.isfinite(result['landmarks']).all()
  assert result['occluded'].shape == (num, 29) and result['boxes'].shape == (num, 4)


@FUZZ
@given(st.data())
def test_read_cofw_fuzz(fuzz_dir, valid_cofw_bytes, data):
  content = data.draw(st.one_of(st.binary(max_size=2000), _damaged(valid_cofw_bytes)))
  _fuzz_one(fuzz_dir / 'fuzz_cofw.mat', content, formats.read_cofw, _check_cofw)


# --- MAT 5: 300W-LP, AFLW2000-3D, COFW-68 ------------------------------------------------------


def _pose(rng):
  return np.concatenate([rng.uniform(-1.5, 1.5, 3), rng.uniform(50, 300, 3),
                         [0.0012]]).astype(np.float32)[None]  # (1, 7) float32, as shipped.


def _image_mat(rng, **extra):
  """Variables of a 300W-LP / AFLW2000-3D image `.mat` with the real names and shapes."""
  return {'Pose_Para': _pose(rng), 'Shape_Para': rng.normal(size=(199, 1)),
          'Exp_Para': rng.normal(size=(29, 1)), 'pt2d': rng.uniform(0, 450, (2, 21)),
          'roi': np.array([[10.0, 20.0, 300.0, 310.0]]), **extra}


@pytest.mark.parametrize('compress', [False, True])
def test_read_300w_lp(tmp_path, compress):
  rng = np.random.default_rng(13)
  pts_2d, pts_3d = _landmarks(rng), _landmarks(rng)
  path = tmp_path / 'AFW_134212_1_0_pts.mat'
  scipy.io.savemat(path, {'pts_2d': pts_2d, 'pts_3d': pts_3d}, do_compression=compress)
  got = formats.read_300w_lp_landmarks(path)
  assert got.dtype == np.float32 and got.shape == (68, 2)
  np.testing.assert_array_equal(got, (pts_3d - 1.0).astype(np.float32))
  np.testing.assert_array_equal(formats.read_300w_lp_landmarks(path, field='pts_2d'),
                                (pts_2d - 1.0).astype(np.float32))
  with pytest.raises(ValueError, match='field'):
    formats.read_300w_lp_landmarks(path, field='pt2d')

  variables = _image_mat(rng)
  image_mat = tmp_path / 'AFW_134212_1_0.mat'
  scipy.io.savemat(image_mat, variables, do_compression=compress)
  pose = formats.read_pose_para(image_mat)
  assert pose.dtype == np.float32 and pose.shape == (7,)
  np.testing.assert_array_equal(pose, variables['Pose_Para'][0])


@pytest.mark.parametrize('compress', [False, True])
def test_read_aflw2000_3d(tmp_path, compress):
  rng = np.random.default_rng(14)
  pt3d = np.concatenate([_landmarks(rng).T, rng.uniform(-50, 50, (1, 68))])  # (3, 68)
  variables = _image_mat(rng, pt3d_68=pt3d)
  path = tmp_path / 'image00002.mat'
  scipy.io.savemat(path, variables, do_compression=compress)
  got = formats.read_aflw2000_3d(path)
  np.testing.assert_array_equal(got['landmarks'], (pt3d[:2].T - 1.0).astype(np.float32))
  np.testing.assert_array_equal(got['pose_para'], variables['Pose_Para'][0])
  assert got['landmarks'].dtype == got['pose_para'].dtype == np.float32


def _mat5_big_endian(name, array):
  """A MAT 5 file with one double matrix, big-endian, every element in the full 8-byte-tag form
  (scipy only writes native byte order and short names as small data elements)."""
  def element(mdtype, payload):
    return struct.pack('>II', mdtype, len(payload)) + payload + b'\0' * (-len(payload) % 8)
  header = b'MATLAB 5.0 MAT-file, big-endian, by hand'.ljust(116) + b'\0' * 8 + b'\x01\x00MI'
  body = (element(6, struct.pack('>II', 6, 0))  # array flags: mxDOUBLE_CLASS
          + element(5, struct.pack(f'>{array.ndim}i', *array.shape))
          + element(1, name.encode())
          + element(9, np.asarray(array, '>f8').tobytes(order='F')))
  return header + struct.pack('>II', 14, len(body)) + body


def test_read_pose_para_big_endian(tmp_path):
  pose = np.array([[0.1, -0.2, 0.3, 100.0, 120.0, 5.0, 0.001]])
  path = tmp_path / 'big.mat'
  path.write_bytes(_mat5_big_endian('Pose_Para', pose))
  np.testing.assert_array_equal(formats.read_pose_para(path), pose[0].astype(np.float32))


@pytest.mark.parametrize('compress', [False, True])
def test_read_cofw68(tmp_path, compress):
  rng = np.random.default_rng(15)
  points = _landmarks(rng)
  occ = rng.integers(0, 2, (1, 68)).astype(np.float64)
  path = tmp_path / '1_points.mat'
  scipy.io.savemat(path, {'Points': points, 'Occ': occ}, do_compression=compress)
  landmarks, occluded = formats.read_cofw68_points(path)
  np.testing.assert_array_equal(landmarks, (points - 1.0).astype(np.float32))
  np.testing.assert_array_equal(occluded, occ[0] == 1)
  assert landmarks.dtype == np.float32 and occluded.dtype == bool

  boxes = np.round(rng.uniform(1, 200, (507, 4)), 2)
  path = tmp_path / 'cofw68_test_bboxes.mat'
  scipy.io.savemat(path, {'bboxes': boxes}, do_compression=compress)
  got = formats.read_cofw68_boxes(path)
  x, y, w, h = boxes.T
  assert got.shape == (507, 4) and got.dtype == np.float32
  np.testing.assert_array_equal(got, np.stack([x - 1, y - 1, x - 1 + w, y - 1 + h], -1)
                                .astype(np.float32))


def _mat_error_cases():
  rng = np.random.default_rng(16)
  good = _landmarks(rng)
  nan = good.copy()
  nan[5, 1] = np.nan
  cell = np.empty((1, 1), dtype=object)
  cell[0, 0] = np.zeros((1, 7))
  occ_two = np.ones((1, 68))
  occ_two[0, 3] = 2
  negative = np.array([[1.0, 2.0, -5.0, 4.0]])
  return {
      'missing field': (formats.read_300w_lp_landmarks, {'pts_2d': good},
                        "no variable 'pts_3d'; variables present: ['pts_2d']"),
      'wrong shape': (formats.read_300w_lp_landmarks, {'pts_3d': good.T},
                      'shape (2, 68), expected (68, 2)'),
      'nan': (formats.read_300w_lp_landmarks, {'pts_3d': nan}, 'non-finite'),
      'pose shape': (formats.read_pose_para, {'Pose_Para': np.zeros((1, 6))}, 'expected (1, 7)'),
      'pose missing': (formats.read_pose_para, {'pt2d': np.zeros((2, 21))},
                       "variables present: ['pt2d']"),
      'pose cell': (formats.read_pose_para, {'Pose_Para': cell}, 'cell array, expected a numeric'),
      'pose text': (formats.read_pose_para, {'Pose_Para': 'pitch yaw roll'}, 'char array'),
      'pt3d 2 rows': (formats.read_aflw2000_3d, {'pt3d_68': good.T, 'Pose_Para': np.zeros((1, 7))},
                      'expected (3, 68)'),
      'aflw no pose': (formats.read_aflw2000_3d, {'pt3d_68': np.ones((3, 68))}, 'Pose_Para'),
      'occ values': (formats.read_cofw68_points, {'Points': good, 'Occ': occ_two},
                     'must be 0 or 1'),
      'points missing': (formats.read_cofw68_points, {'Occ': np.zeros((1, 68))}, 'Points'),
      'boxes shape': (formats.read_cofw68_boxes, {'bboxes': np.zeros((507, 5))}, 'expected (N, 4)'),
      'boxes negative': (formats.read_cofw68_boxes, {'bboxes': negative}, 'negative width'),
  }


@pytest.mark.parametrize('case', sorted(_mat_error_cases()))
def test_read_mat5_errors(tmp_path, case):
  reader, variables, match = _mat_error_cases()[case]
  path = tmp_path / 'bad.mat'
  scipy.io.savemat(path, variables)
  _expect_error(path, reader, match=match)


@pytest.mark.parametrize('reader', [formats.read_300w_lp_landmarks, formats.read_pose_para,
                                    formats.read_aflw2000_3d, formats.read_cofw68_points,
                                    formats.read_cofw68_boxes])
def test_read_mat5_not_mat5(tmp_path, reader):
  _expect_error(tmp_path / 'missing.mat', reader, match='cannot read')
  (tmp_path / 'empty.mat').write_bytes(b'')
  _expect_error(tmp_path / 'empty.mat', reader, match='empty')
  (tmp_path / 'text.mat').write_text('pts_3d = [1 2; 3 4]\n' * 10)
  _expect_error(tmp_path / 'text.mat', reader, match='not a MAT 5 file')
  images, phis, boxes = _cofw_data(np.random.default_rng(17))
  v73 = _write_cofw(tmp_path / 'v73.mat', images, phis, boxes)
  _expect_error(v73, reader, match='v7.3')


def test_read_mat5_bad_data_type_does_not_crash(tmp_path):
  """A data-type code scipy indexes unchecked (it would crash the interpreter) is refused."""
  buffer = io.BytesIO()
  scipy.io.savemat(buffer, {'Pose_Para': np.zeros((1, 7))})
  data = bytearray(buffer.getvalue())
  tag = data.rindex(struct.pack('<II', 9, 56))  # The miDOUBLE tag of the 7 values.
  for bad_type in (8, 14, 41, 2**15):
    data[tag:tag + 4] = struct.pack('<I', bad_type)
    path = tmp_path / f'type_{bad_type}.mat'
    path.write_bytes(bytes(data))
    _expect_error(path, formats.read_pose_para, match='not a number type')


def _mat5_bytes(variables, compress):
  buffer = io.BytesIO()
  scipy.io.savemat(buffer, variables, do_compression=compress)
  return buffer.getvalue()


def _fuzz_mat_files():
  rng = np.random.default_rng(18)
  aflw = _image_mat(rng, pt3d_68=np.concatenate([_landmarks(rng).T, np.ones((1, 68))]))
  cofw68 = {'Points': _landmarks(rng), 'Occ': np.ones((1, 68))}
  files = [_mat5_bytes(variables, compress) for variables in (aflw, cofw68)
           for compress in (False, True)]
  return files + [_mat5_big_endian('Pose_Para', np.zeros((1, 7)))]


MAT_FILES = _fuzz_mat_files()
MAT_READERS = [formats.read_aflw2000_3d, formats.read_pose_para, formats.read_cofw68_points,
               formats.read_300w_lp_landmarks, formats.read_cofw68_boxes]


def _check_any(result):
  arrays = result.values() if isinstance(result, dict) else (
      result if isinstance(result, tuple) else (result,))
  for array in arrays:
    assert isinstance(array, np.ndarray) and (array.dtype == bool or np.isfinite(array).all())


@FUZZ
@given(st.sampled_from(MAT_READERS),
       st.one_of(st.binary(max_size=1500),
                 st.binary(max_size=600).map(lambda tail: MAT_FILES[0][:128] + tail),
                 st.sampled_from(MAT_FILES).flatmap(_damaged)))
def test_read_mat5_fuzz(fuzz_dir, reader, content):
  _fuzz_one(fuzz_dir / 'fuzz5.mat', content, reader, _check_any)
