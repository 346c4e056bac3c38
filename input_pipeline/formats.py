"""Exact readers of the real datasets' on-disk formats (SPEC "Real dataset formats").

numpy-only (plus PIL, h5py and scipy.io to open the files): the TFDS builders (w300, cofw,
w300_lp, aflw2000_3d, face_folder) call these and nothing else touches the raw files.

Axis legend: P landmarks in a file (68 for 300W, COFW-68, 300W-LP, AFLW2000-3D; 29 for COFW),
N faces in a file (COFW), H x W image pixels, C channels (1 or 3).

Conventions (SPEC "Conventions"): every landmark array comes out float32 `[P, 2]` (x, y) in pixels
of its image, 0-based, pixel *centres* at integers (pixel (0, 0) covers [-0.5, 0.5]^2); boxes come
out float32 `(x0, y0, x1, y1)` in the same coordinates; angles stay as the file stores them
(radians). Files that count pixels from 1 (the `.pts` files and the MATLAB files) are shifted by
the named `*_ORIGIN` constants below, each the coordinate the file gives the centre of the top-left
pixel. The shift is done in float64 and rounded to float32 once, so a value comes out as the
correctly rounded `value - origin`.

Errors: every reader raises exactly one error type for a bad file, `FormatError` (a ValueError),
whose message starts with the file's path and says what is wrong and, where useful, what was
expected. Missing, unreadable and empty files are FormatErrors too, so a builder can catch one
type, name the file and move on (or stop). Programming errors (an unknown `field`, a misconfigured
PIL) raise ValueError / RuntimeError as usual.
"""

from collections.abc import Sequence
import dataclasses
import io
import os
import re
import stat
import struct
from typing import Any, NoReturn
import warnings
import zlib

import h5py
import numpy as np
from PIL import Image
from PIL import ImageFile
from PIL import ImageOps
import scipy.io

PathLike = str | os.PathLike
Array = np.ndarray

__all__ = [
    'FormatError', 'PTS_ORIGIN', 'COFW_ORIGIN', 'THREEDDFA_ORIGIN', 'DEFAULT_MAX_PIXELS',
    'COFW_NUM_POINTS', 'read_pts', 'write_pts', 'read_image', 'read_cofw', 'read_cofw68_points',
    'read_cofw68_boxes', 'read_300w_lp_landmarks', 'read_pose_para', 'read_aflw2000_3d', 'box_of',
]

# Coordinate of the top-left pixel's centre in each file family; reading subtracts it.
PTS_ORIGIN = 1.0  # 300W `.pts` (SPEC: 1-based, menpo's convention).
COFW_ORIGIN = 1.0  # COFW `phis`/`bboxes` and COFW-68 `Points`/`bboxes`: MATLAB pixels (SPEC).
# ASSUMED, not confirmed by SPEC: 300W-LP `pts_2d`/`pts_3d` and AFLW2000-3D `pt3d_68` are 1-based
# like the other MATLAB files. They come from Zhu et al.'s MATLAB fitting code, which projects
# with `y = height + 1 - y` (a flip about the centre of MATLAB's 1..height pixel rows), so 1-based
# is the consistent reading. Set this to 0.0 if evidence says the values are already 0-based.
THREEDDFA_ORIGIN = 1.0

# Refuse images above this many pixels (64 Mi: 192 MiB as uint8 RGB) before decoding them. The
# largest 300W / COFW images are a few megapixels; PIL's own decompression-bomb limit
# (`Image.MAX_IMAGE_PIXELS`, 89.5 M by default) applies as well.
DEFAULT_MAX_PIXELS = 64 * 2**20

COFW_NUM_POINTS = 29
_COFW_KEYS = {'train': ('IsTr', 'phisTr', 'bboxesTr'), 'test': ('IsT', 'phisT', 'bboxesT')}
_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'
_MAT5_HEADER = b'MATLAB 5.0 MAT-file'
_PNG_END = b'\0\0\0\0IEND\xaeB`\x82'  # The IEND chunk: length 0, type, CRC.
# A decimal number as written in `.pts` files; Python's float() would also take 'nan', 'inf',
# '1_0' and surrounding whitespace, which are not numbers in this format.
_NUMBER = re.compile(r'[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?')
_NON_FINITE = re.compile(r'[+-]?(?:nan|inf|infinity)', re.IGNORECASE)
_VERSION_LINE = re.compile(r'version\s*:\s*(\S*)')
_N_POINTS_LINE = re.compile(r'n_points\s*:\s*(\S*)')


class FormatError(ValueError):
  """A dataset file is missing, unreadable or not in the expected format.

  `str(error)` is `'<path>: <problem>'`; `.path` and `.problem` hold the two parts.
  """

  def __init__(self, path: PathLike, problem: str):
    super().__init__(os.fspath(path), problem)  # args stay (path, problem): pickles round-trip.
    self.path = os.fspath(path)
    self.problem = problem

  def __str__(self) -> str:
    return f'{self.path}: {self.problem}'


def _fail(path: PathLike, problem: str) -> NoReturn:
  raise FormatError(path, problem)


def _show(text: str | bytes, limit: int = 60) -> str:
  """`repr` of a snippet of file content, shortened for an error message."""
  return repr(text[:limit]) + ('...' if len(text) > limit else '')


def _check_regular_file(path: PathLike) -> int:
  """The size in bytes of `path`, which must be a readable, non-empty regular file."""
  try:
    info = os.stat(path)
  except OSError as e:
    _fail(path, f'cannot read the file ({e.strerror or e})')
  if not stat.S_ISREG(info.st_mode):
    _fail(path, 'not a regular file (a directory?)')
  if info.st_size == 0:
    _fail(path, 'empty file (0 bytes)')
  return info.st_size


def _read_bytes(path: PathLike) -> bytes:
  _check_regular_file(path)
  try:
    with open(path, 'rb') as f:
      return f.read()
  except OSError as e:
    _fail(path, f'cannot read the file ({e.strerror or e})')


def _head(path: PathLike, size: int = 16) -> bytes:
  try:
    with open(path, 'rb') as f:
      return f.read(size)
  except OSError:
    return b''


def _finite_float32(values: Array, path: PathLike, what: str, origin: float = 0.0) -> Array:
  """`values - origin`, computed in float64, as float32; NaN, inf and values beyond float32's
  range are a FormatError."""
  values = np.asarray(values, np.float64)
  with np.errstate(all='ignore'):  # A damaged file may hold signalling NaNs.
    out = (values - origin).astype(np.float32)
  bad = ~np.isfinite(out)
  if bad.any():
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    _fail(path, f'{what} has a non-finite value (NaN, inf or beyond float32) at index {index}: '
          f'{float(values[index])!r}')
  return out


def _xywh_to_corners(boxes: Array, path: PathLike, what: str) -> Array:
  """MATLAB `[x y w h]` boxes `[N, 4]` (1-based top-left, `COFW_ORIGIN`) -> float32 0-based
  `(x0, y0, x1, y1)`.

  x0 = x - 1, y0 = y - 1, x1 = x - 1 + w, y1 = y - 1 + h: the top-left corner moves like a landmark
  (the same 1-based -> 0-based translation) and the size is kept, so x1 - x0 = w, as for every
  `(x0, y0, x1, y1)` box in this project (e.g. `box_of`, whose sqrt(w * h) is the box normaliser).
  Which half-pixel the annotators meant is recorded nowhere; boxes only place the initial shape,
  where half a pixel does not matter. Negative sizes and non-finite values are a FormatError.
  """
  boxes = np.asarray(boxes, np.float64)
  _finite_float32(boxes, path, what)
  negative = (boxes[:, 2:] < 0).any(axis=1)
  if negative.any():
    row = int(np.argmax(negative))
    _fail(path, f'{what} row {row} has a negative width or height: {boxes[row].tolist()}')
  corner = boxes[:, :2] - COFW_ORIGIN
  return _finite_float32(np.concatenate([corner, corner + boxes[:, 2:]], axis=1), path, what)


# --- 300W .pts --------------------------------------------------------------------------------


def read_pts(path: PathLike, num_points: int | None = 68) -> Array:
  """The landmarks `[P, 2]` float32 (x, y), 0-based, of a 300W / iBUG `.pts` file.

  Format: `version: 1`, `n_points: P`, `{`, P lines `x y`, `}`, 1-based pixels (`PTS_ORIGIN` is
  subtracted). Whitespace around tokens, blank lines, CRLF line ends and a UTF-8 BOM are accepted;
  anything else (a missing brace, a third number on a line, text after `}`, NaN / inf, a count that
  disagrees with `n_points`) is a FormatError. `num_points=None` accepts any positive P.
  """
  data = _read_bytes(path)
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    _fail(path, f'not a text file (byte {e.start} is not ASCII / UTF-8: '
          f'{_show(data[e.start:], 8)})')
  lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
  if not lines:
    _fail(path, 'empty file (only whitespace)')

  def header(index: int, pattern: re.Pattern, expected: str) -> str:
    if index >= len(lines):
      _fail(path, f'the file ends before the header line {expected!r}')
    n, line = lines[index]
    match = pattern.fullmatch(line)
    if not match:
      _fail(path, f'line {n}: expected the header {expected!r}, got {_show(line)}')
    return match.group(1)

  version = header(0, _VERSION_LINE, 'version: 1')
  if not _NUMBER.fullmatch(version) or float(version) != 1.0:
    _fail(path, f'line {lines[0][0]}: unsupported version {_show(version)}, expected 1')
  count_text = header(1, _N_POINTS_LINE, 'n_points: <count>')
  if not re.fullmatch(r'[0-9]{1,9}', count_text) or int(count_text) == 0:
    _fail(path, f'line {lines[1][0]}: n_points must be a positive integer, got {_show(count_text)}')
  count = int(count_text)
  if num_points is not None and count != num_points:
    _fail(path, f'n_points is {count}, expected {num_points}')
  if len(lines) < 3 or lines[2][1] != '{':
    got = _show(lines[2][1]) if len(lines) > 2 else 'the end of the file'
    _fail(path, f"expected '{{' after the n_points line, got {got}")

  values = []
  closing = None
  for position in range(3, len(lines)):
    n, line = lines[position]
    if line == '}':
      closing = position
      break
    tokens = line.split()
    if len(tokens) != 2:
      _fail(path, f'line {n}: expected two numbers "x y", got {_show(line)}')
    for token in tokens:
      if _NON_FINITE.fullmatch(token):
        _fail(path, f'line {n}: non-finite coordinate {_show(token)}')
      if not _NUMBER.fullmatch(token):
        _fail(path, f'line {n}: not a number: {_show(token)}')
    values.append([float(tokens[0]), float(tokens[1])])
  if closing is None:
    _fail(path, f"missing the closing '}}' (after {len(values)} point lines, n_points {count})")
  if len(values) != count:
    _fail(path, f'n_points is {count} but the file has {len(values)} point lines')
  if closing != len(lines) - 1:
    n, line = lines[closing + 1]
    _fail(path, f"line {n}: unexpected text after the closing '}}': {_show(line)}")
  return _finite_float32(np.array(values, np.float64), path, 'the landmarks', origin=PTS_ORIGIN)


def _pts_number(value: np.float32) -> str:
  """The shortest fixed-point text (at least 3 decimals) that `read_pts` reads back as `value`."""
  shifted = float(value) + PTS_ORIGIN
  for decimals in range(3, 18):
    text = f'{shifted:.{decimals}f}'
    if np.float32(float(text) - PTS_ORIGIN) == value:
      return text
  return repr(shifted)


def write_pts(path: PathLike, landmarks: Array) -> None:
  """Writes landmarks `[P, 2]` (x, y), 0-based, as a 1-based `.pts` file (`PTS_ORIGIN` added).

  Numbers get the fewest decimals (at least 3) that `read_pts` reads back as the same float32:
  bit for bit for every |x| >= 2**-29 px (and 0); a smaller x comes back within 2**-52 px, since
  1 + x is written. Bad landmarks raise FormatError; an OSError while writing propagates.
  """
  points = np.asarray(landmarks)
  if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0:
    _fail(path, f'cannot write landmarks of shape {points.shape}, expected [P, 2] with P >= 1')
  points = _finite_float32(points, path, 'the landmarks to write')
  lines = ['version: 1', f'n_points:  {len(points)}', '{']
  lines += [f'{_pts_number(x)} {_pts_number(y)}' for x, y in points]
  lines.append('}')
  with open(path, 'w', encoding='ascii', newline='\n') as f:
    f.write('\n'.join(lines) + '\n')


# --- images -----------------------------------------------------------------------------------


def _pixels_as_uint8(image: Image.Image, path: PathLike) -> Array:
  """`[H, W, C]` uint8 of a loaded PIL image: C = 1 for grayscale modes, 3 otherwise."""
  mode = image.mode
  if mode in ('L', '1', 'LA', 'La'):  # Bilevel as 0 / 255; the alpha channel is dropped.
    return np.array(image.convert('L') if mode != 'L' else image)[..., None]
  if mode in ('I', 'I;16', 'I;16L', 'I;16B', 'I;16N'):  # 16-bit grayscale -> round(v / 257).
    values = np.array(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
      _fail(path, f'{mode} grayscale values span [{values.min()}, {values.max()}], '
            'outside the 16-bit range [0, 65535] this reader scales to 8 bits')
    return ((values + 128) // 257).astype(np.uint8)[..., None]
  if mode == 'RGB':
    return np.array(image)
  if mode in ('P', 'PA'):  # Through RGBA: PIL warns when transparency goes straight to RGB.
    return np.array(image.convert('RGBA').convert('RGB'))
  if mode in ('RGBA', 'RGBa', 'RGBX', 'CMYK', 'YCbCr', 'LAB', 'HSV'):  # Alpha dropped.
    return np.array(image.convert('RGB'))
  _fail(path, f'unsupported image mode {mode!r} (floating-point or unusual pixels); '
        'convert the image to 8-bit grayscale or RGB')


def read_image(path: PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               exif_transpose: bool = False) -> Array:
  """The pixels `[H, W, C]` uint8 of an image file; C = 1 for grayscale, 3 for colour.

  Conversions: bilevel -> 0 / 255 gray; 16-bit gray -> round(v / 257); palette, CMYK, YCbCr ->
  RGB; alpha channels are dropped (the stored colours, not composited, as OpenCV does). Multi-frame
  files give their first frame. The stored pixel grid is returned as is (EXIF orientation is
  ignored, like the MATLAB / TF decoders the datasets were annotated with) unless
  `exif_transpose=True` (for users' own photos).

  FormatError for a missing, empty, truncated or corrupt file, something that is not an image, more
  than `max_pixels` pixels, or more than PIL's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`:
  its warning is an error here). Truncated files really fail: the pixels are decoded fully, and
  a PNG must hold a complete IEND chunk and pass its chunk checksums. RuntimeError if
  `PIL.ImageFile.LOAD_TRUNCATED_IMAGES` was set: PIL would then return partly grey images without
  complaint.
  """
  if ImageFile.LOAD_TRUNCATED_IMAGES:
    raise RuntimeError('PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images would load '
                       'silently as partial pixels; set it back to False to use read_image')
  data = _read_bytes(path)
  image_format = 'image'
  try:
    with warnings.catch_warnings():  # Process-wide state: not for concurrent threads.
      warnings.simplefilter('error', Image.DecompressionBombWarning)
      with Image.open(io.BytesIO(data)) as image:
        image_format = image.format or image_format
        width, height = image.size
        if width * height > max_pixels:
          _fail(path, f'{image_format} of {width} x {height} = {width * height} pixels is over '
                f'max_pixels = {max_pixels}: refused before decoding')
        if image.format == 'PNG':  # load() accepts a PNG cut anywhere in its last chunks.
          if data.rfind(_PNG_END) < 0:
            _fail(path, 'truncated or corrupt PNG: no complete IEND chunk')
          with Image.open(io.BytesIO(data)) as check:
            check.verify()  # Every chunk's CRC.
        image.load()
        if exif_transpose:
          image = ImageOps.exif_transpose(image)
        return _pixels_as_uint8(image, path)
  except FormatError:
    raise
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    _fail(path, f'refused as a possible decompression bomb ({e}); raise PIL.Image.MAX_IMAGE_PIXELS '
          'only for files you trust')
  except Image.UnidentifiedImageError:
    _fail(path, f'not an image file PIL can identify (starts with {_show(data, 16)})')
  except Exception as e:  # PIL signals corrupt data with many types (OSError, SyntaxError, ...).
    _fail(path, f'truncated or corrupt {image_format} ({type(e).__name__}: {e})')


# --- MATLAB files -----------------------------------------------------------------------------


def _load_mat5(path: PathLike, names: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
  """Variables `names` (those present) of a MAT 5 file, and the names of all its variables.

  MAT 5 is what MATLAB's `save` writes up to -v7. The file's structure is checked by
  `_scan_mat5` before scipy decodes it: scipy's MAT 5 reader is not hardened against damaged
  files (a bad data-type code in a numeric element indexes a C array unchecked and crashes the
  interpreter; scipy PR 25349, unmerged; loadmat's docstring warns since PR 25166).
  """
  data = _read_bytes(path)
  if data.startswith(_HDF5_SIGNATURE) or data[512:520] == _HDF5_SIGNATURE:
    _fail(path, 'is a MATLAB v7.3 (HDF5) file; expected a MAT 5 file (scipy.io.loadmat)')
  present = _scan_mat5(data, path, set(names))
  wanted = [name for name in names if name in present]
  if not wanted:
    return {}, present
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', scipy.io.matlab.MatReadWarning)  # Duplicate names.
      contents = scipy.io.loadmat(io.BytesIO(data), appendmat=False, squeeze_me=False,
                                  mat_dtype=False, variable_names=wanted,
                                  verify_compressed_data_integrity=True)
  except Exception as e:  # scipy signals damage with many types (ValueError, zlib.error, ...).
    _fail(path, f'damaged MAT 5 file ({type(e).__name__}: {e})')
  return {name: contents[name] for name in wanted if name in contents}, present


class _Mat5Damage(Exception):
  """Internal: what `_scan_mat5` found damaged, turned into a FormatError by it."""


class _Mat5Content(_Mat5Damage):
  """Internal: a sound file whose wanted variable is not numeric."""


# MAT 5 data types (mi*) scipy decodes as numbers, and array classes (mx*) that are numeric.
_MI_NUMERIC = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 12, 13})  # miINT8 .. miUINT64
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MX_NUMERIC = range(6, 16)  # mxDOUBLE_CLASS .. mxUINT64_CLASS
_MX_OPAQUE = 17
_MX_NAMES = {1: 'cell array', 2: 'struct', 3: 'object', 4: 'char array', 5: 'sparse matrix',
             16: 'function handle', 17: 'opaque object', 18: 'object'}
# The datasets' MAT 5 files hold a few KB; a compressed variable inflating past this is damage.
_MAT5_MAX_VARIABLE_BYTES = 64 * 2**20


def _scan_mat5(data: bytes, path: PathLike, wanted: set[str]) -> list[str]:
  """The variable names of a MAT 5 file, after checking its structure the way scipy reads it.

  Top level: a 128-byte header (its last two bytes 'IM' or 'MI' give the byte order), then
  elements, each an 8-byte tag (data type, byte count) and its data: miMATRIX, or miCOMPRESSED
  holding one zlib-compressed miMATRIX. A miMATRIX holds 16 bytes of array flags (class in the
  low byte, complex bit 11), a dims element, a name element and, for a numeric class, the real
  (and imaginary) data elements. Small data elements pack count and type in one 4-byte word.
  For variables in `wanted` the class must be numeric and each data element must carry a numeric
  data type and fit in its variable, which is all scipy then relies on.
  """
  try:
    if len(data) < 128:
      raise _Mat5Damage(f'{len(data)} bytes: shorter than the 128-byte MAT 5 header')
    if data[126:128] not in (b'IM', b'MI') or 0 in data[:4]:
      raise _Mat5Damage(f'no MAT 5 header (starts with {_show(data, 20)})')
    order = '<' if data[126:128] == b'IM' else '>'
    version = struct.unpack_from(order + 'H', data, 124)[0]
    if version != 0x0100:
      raise _Mat5Damage(f'MAT file version {version:#06x}, expected 0x0100 (MAT 5)')
    names, offset = [], 128
    while offset < len(data):
      if offset + 8 > len(data):
        raise _Mat5Damage(f'{len(data) - offset} stray bytes at the end')
      mdtype, size = struct.unpack_from(order + 'II', data, offset)
      body = data[offset + 8:offset + 8 + size]
      if size == 0 or len(body) < size:
        raise _Mat5Damage(f'variable {len(names) + 1} at byte {offset}: declares {size} bytes, '
                          f'{len(body)} present')
      if mdtype == _MI_COMPRESSED:
        body = _inflate(body)
        inner_type, inner_size = struct.unpack_from(order + 'II', body.ljust(8, b'\0'))
        if inner_type != _MI_MATRIX or inner_size > len(body) - 8:
          raise _Mat5Damage(f'compressed variable {len(names) + 1} does not hold one matrix')
        body = body[8:8 + inner_size]
      elif mdtype != _MI_MATRIX:
        raise _Mat5Damage(f'element at byte {offset} has data type {mdtype}, expected a matrix '
                          f'({_MI_MATRIX}) or compressed data ({_MI_COMPRESSED})')
      names.append(_scan_mat5_matrix(body, order, wanted))
      offset += 8 + size
  except _Mat5Content as e:
    _fail(path, str(e))
  except _Mat5Damage as e:
    _fail(path, f'damaged or not a MAT 5 file: {e}')
  except (struct.error, zlib.error) as e:
    _fail(path, f'damaged or not a MAT 5 file: {type(e).__name__}: {e}')
  return names


def _inflate(compressed: bytes) -> bytes:
  inflater = zlib.decompressobj()
  out = inflater.decompress(compressed, _MAT5_MAX_VARIABLE_BYTES)
  if inflater.unconsumed_tail:
    raise _Mat5Damage(f'a compressed variable inflates past {_MAT5_MAX_VARIABLE_BYTES} bytes')
  return out


def _mat5_element(body: bytes, offset: int, order: str) -> tuple[int, bytes, int]:
  """(data type, data, offset of the next element) of the element at `offset` of a matrix."""
  if offset + 8 > len(body):
    raise _Mat5Damage('a matrix ends inside an element tag')
  word, size = struct.unpack_from(order + 'II', body, offset)
  if word >> 16:  # Small data element: byte count in the high 16 bits, data in the tag.
    if word >> 16 > 4:
      raise _Mat5Damage('a small data element declares more than 4 bytes')
    return word & 0xFFFF, body[offset + 4:offset + 4 + (word >> 16)], offset + 8
  if offset + 8 + size > len(body):
    raise _Mat5Damage(f'an element of {size} bytes runs past the end of its matrix')
  return word, body[offset + 8:offset + 8 + size], offset + 8 + size + (-size % 8)


def _scan_mat5_matrix(body: bytes, order: str, wanted: set[str]) -> str:
  """The name of the matrix `body` (the miMATRIX data), checking a wanted one's numeric data."""
  if len(body) < 16:
    raise _Mat5Damage('a matrix shorter than its array flags')
  flags = struct.unpack_from(order + 'I', body, 8)[0]
  mclass, is_complex = flags & 0xFF, flags >> 11 & 1
  offset = 16
  if mclass != _MX_OPAQUE:  # Opaque objects have no dims element.
    _, _, offset = _mat5_element(body, offset, order)
  _, raw_name, offset = _mat5_element(body, offset, order)
  name = raw_name.decode('latin1')
  if name in wanted:
    if mclass not in _MX_NUMERIC:
      kind = _MX_NAMES.get(mclass, f'matrix of unknown class {mclass}')
      raise _Mat5Content(f'{name} is a {kind}, expected a numeric array')
    for part in ('real', 'imaginary')[:1 + is_complex]:
      mdtype, _, offset = _mat5_element(body, offset, order)
      if mdtype not in _MI_NUMERIC:
        raise _Mat5Damage(f'the {part} data of {name} has data type {mdtype}, not a number type')
  return name


def _describe(value: Any) -> str:
  if isinstance(value, np.ndarray):
    return f'{value.dtype} array of shape {value.shape}'
  return type(value).__name__


@dataclasses.dataclass(frozen=True)
class _MatFile:
  """Variables read from a MAT 5 file, and the names of all the variables it holds."""
  path: PathLike
  variables: dict[str, Any]
  present: list[str]

  def array(self, name: str, shapes: Sequence[tuple[int | None, ...]]) -> Array:
    """Variable `name`, numeric, of one of `shapes` (None: any positive size), as float64."""
    if name not in self.variables:
      _fail(self.path, f'no variable {name!r}; variables present: '
            f'{sorted(self.present) or "none"}')
    value = self.variables[name]
    if isinstance(value, str):  # scipy's placeholder for a variable it could not read.
      _fail(self.path, f'{name} is unreadable ({value})')
    if not isinstance(value, np.ndarray) or value.dtype.kind not in 'biuf':
      _fail(self.path, f'{name} is a {_describe(value)}, expected a numeric array')
    for shape in shapes:
      if len(shape) == value.ndim and all(
          (n is None and m > 0) or n == m for n, m in zip(shape, value.shape)):
        with np.errstate(all='ignore'):  # A damaged file may hold signalling NaNs.
          return value.astype(np.float64)
    expected = ' or '.join(str(s).replace('None', 'N') for s in shapes)
    _fail(self.path, f'{name} has shape {value.shape}, expected {expected}')


def _read_mat5(path: PathLike, names: Sequence[str]) -> _MatFile:
  variables, present = _load_mat5(path, names)
  return _MatFile(path, variables, present)


def _flags(values: Array, path: PathLike, what: str) -> Array:
  """0 / 1 values (MATLAB logical or double) as bool."""
  valid = np.isin(values, (0, 1))
  if not valid.all():
    _fail(path, f'{what} must be 0 or 1, found {values[~valid].flat[0]!r}')
  return values.astype(bool)


def read_300w_lp_landmarks(path: PathLike, field: str = 'pts_3d') -> Array:
  """The landmarks `[68, 2]` float32, 0-based, of a 300W-LP `landmarks/<subset>/<stem>_pts.mat`.

  `field`: 'pts_3d' (projected 3D landmarks, the 3D protocol's ground truth) or 'pts_2d'
  (contour-snapped 2D landmarks); each stored (68, 2) in image pixels. ASSUMED 1-based
  (`THREEDDFA_ORIGIN`): SPEC does not say; these come from MATLAB code.
  """
  if field not in ('pts_2d', 'pts_3d'):
    raise ValueError(f"field must be 'pts_2d' or 'pts_3d', got {field!r}")
  points = _read_mat5(path, [field]).array(field, [(68, 2)])
  return _finite_float32(points, path, field, origin=THREEDDFA_ORIGIN)


def read_pose_para(path: PathLike) -> Array:
  """`Pose_Para` `[7]` float32 of a 300W-LP or AFLW2000-3D image's `.mat`, raw.

  Order [pitch, yaw, roll (radians), tx, ty, tz, scale] with 3DDFA's angle signs; converting to
  this project's (yaw, pitch, roll) convention is the caller's job. Stored (1, 7); (7, 1) accepted.
  """
  return _pose_para(_read_mat5(path, ['Pose_Para']))


def _pose_para(mat: _MatFile) -> Array:
  pose = mat.array('Pose_Para', [(1, 7), (7, 1)]).reshape(7)
  return _finite_float32(pose, mat.path, 'Pose_Para')


def read_aflw2000_3d(path: PathLike) -> dict[str, Array]:
  """An AFLW2000-3D `imageNNNNN.mat`: `landmarks` `[68, 2]` float32, 0-based, and `pose_para`
  `[7]` float32 (raw, as `read_pose_para`).

  The landmarks are rows x, y of `pt3d_68` (3, 68) (image pixels; z dropped), transposed. ASSUMED
  1-based like 300W-LP (`THREEDDFA_ORIGIN`).
  """
  mat = _read_mat5(path, ['pt3d_68', 'Pose_Para'])
  points = mat.array('pt3d_68', [(3, 68)])
  return {
      'landmarks': _finite_float32(points[:2].T, path, 'pt3d_68', origin=THREEDDFA_ORIGIN),
      'pose_para': _pose_para(mat),
  }


def read_cofw68_points(path: PathLike) -> tuple[Array, Array]:
  """COFW-68 `test_annotations/{i}_points.mat`: (landmarks `[68, 2]` float32 0-based, occluded
  `[68]` bool). `Points` is 68 x 2, 1-based (`COFW_ORIGIN`); `Occ` 1 x 68, 1 = occluded."""
  mat = _read_mat5(path, ['Points', 'Occ'])
  points = mat.array('Points', [(68, 2)])
  occluded = mat.array('Occ', [(1, 68), (68, 1)]).reshape(68)
  return (_finite_float32(points, path, 'Points', origin=COFW_ORIGIN),
          _flags(occluded, path, 'Occ'))


def read_cofw68_boxes(path: PathLike) -> Array:
  """COFW-68 `cofw68_test_bboxes.mat`: `bboxes` N x 4 `[x y w h]` (N = 507 for the test set) as
  float32 `[N, 4]` 0-based `(x0, y0, x1, y1)`; see `_xywh_to_corners` for the conversion."""
  boxes = _read_mat5(path, ['bboxes']).array('bboxes', [(None, 4)])
  return _xywh_to_corners(boxes, path, 'bboxes')


# --- COFW (MATLAB v7.3 = HDF5) ----------------------------------------------------------------


def read_cofw(path: PathLike) -> dict[str, Any]:
  """A COFW `.mat` file (MATLAB v7.3, i.e. HDF5): `COFW_train_color.mat` or `COFW_test_color.mat`.

  Returns a dict:
    split: 'train' (variables IsTr, phisTr, bboxesTr) or 'test' (IsT, phisT, bboxesT), detected;
    images: list of N uint8 `[H, W, C]` arrays (C = 3, or 1 for a grayscale image stored 2-D);
    landmarks: float32 `[N, 29, 2]` (x, y), 0-based (MATLAB's 1-based minus `COFW_ORIGIN`);
    occluded: bool `[N, 29]` (1 = occluded in the file);
    boxes: float32 `[N, 4]` 0-based (x0, y0, x1, y1) from MATLAB's `[x y w h]`:
      x0 = x - 1, y0 = y - 1, x1 = x - 1 + w, y1 = y - 1 + h (see `_xywh_to_corners`).
  HDF5 stores MATLAB arrays transposed: the image cell array is an object-reference dataset of
  shape (1, N) or (N, 1) (both accepted), each image stored (C, W, H) or (W, H); `phis` (87, N)
  with rows 0-28 x, 29-57 y, 58-86 occlusion; `bboxes` (4, N).
  """
  size = _check_regular_file(path)
  head = _head(path, 1024)
  if head.startswith(_MAT5_HEADER) and head[512:520] != _HDF5_SIGNATURE:
    _fail(path, 'is a MAT 5 file (MATLAB save -v7 or older); COFW files are MATLAB v7.3 (HDF5)')
  if not h5py.is_hdf5(path):
    _fail(path, f'not an HDF5 / MATLAB v7.3 file ({size} bytes starting with {_show(head, 16)})')
  try:
    with h5py.File(path, 'r') as f:
      return _read_cofw_hdf5(f, path)
  except FormatError:
    raise
  except Exception as e:  # h5py signals damage with OSError, KeyError, RuntimeError, ...
    _fail(path, f'damaged HDF5 content ({type(e).__name__}: {e})')


def _h5_numeric(f: h5py.File, name: str, path: PathLike) -> Array:
  dataset = f[name]
  if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind not in 'biuf':
    what = f'{dataset.dtype} dataset' if isinstance(dataset, h5py.Dataset) else 'group'
    _fail(path, f'{name} is a {what}, expected a numeric array')
  return np.asarray(dataset[()])


def _read_cofw_hdf5(f: h5py.File, path: PathLike) -> dict[str, Any]:
  names = set(f.keys()) - {'#refs#', '#subsystem#'}
  complete = [split for split, keys in _COFW_KEYS.items() if names.issuperset(keys)]
  if len(complete) != 1:
    wanted = ' or '.join(', '.join(keys) for keys in _COFW_KEYS.values())
    problem = 'both the train and the test variables' if complete else 'no complete COFW variables'
    _fail(path, f'{problem}: expected {wanted}; variables present: {sorted(names) or "none"}')
  split = complete[0]
  images_key, phis_key, boxes_key = _COFW_KEYS[split]

  refs = f[images_key]
  if (not isinstance(refs, h5py.Dataset) or h5py.check_dtype(ref=refs.dtype) is not h5py.Reference
      or not (refs.ndim == 1 or (refs.ndim == 2 and 1 in refs.shape))):
    _fail(path, f'{images_key} is not a MATLAB cell vector of images (expected object references '
          f'of shape (1, N) or (N, 1), got {_describe_h5(refs)})')
  refs = np.asarray(refs[()]).reshape(-1)
  if not len(refs):
    _fail(path, f'{images_key} holds no images')
  images = [_cofw_image(f, ref, path, f'{images_key}{{{i + 1}}}') for i, ref in enumerate(refs)]
  num = len(images)

  phis = _h5_numeric(f, phis_key, path)
  if phis.shape != (3 * COFW_NUM_POINTS, num):
    _fail(path, f'{phis_key} is stored with shape {phis.shape}, expected '
          f'({3 * COFW_NUM_POINTS}, {num}) (MATLAB {num} x 87, transposed by HDF5; {num} images '
          f'in {images_key})')
  boxes = _h5_numeric(f, boxes_key, path)
  if boxes.shape != (4, num):
    _fail(path, f'{boxes_key} is stored with shape {boxes.shape}, expected (4, {num}) '
          f'(MATLAB {num} x 4, transposed by HDF5; {num} images in {images_key})')
  phis = phis.T.astype(np.float64)  # [N, 87]
  xy = np.stack([phis[:, :COFW_NUM_POINTS], phis[:, COFW_NUM_POINTS:2 * COFW_NUM_POINTS]], -1)
  return {
      'split': split,
      'images': images,
      'landmarks': _finite_float32(xy, path, f'{phis_key} landmarks', origin=COFW_ORIGIN),
      'occluded': _flags(phis[:, 2 * COFW_NUM_POINTS:], path, f'{phis_key} occlusion flags'),
      'boxes': _xywh_to_corners(boxes.T, path, boxes_key),
  }


def _describe_h5(node: Any) -> str:
  if isinstance(node, h5py.Dataset):
    return f'a {node.dtype} dataset of shape {node.shape}'
  return f'a {type(node).__name__}'


def _cofw_image(f: h5py.File, ref: Any, path: PathLike, what: str) -> Array:
  """One image of the cell array: stored (C, W, H) or (W, H) uint8 -> `[H, W, C]`."""
  if not isinstance(ref, h5py.Reference) or not ref:
    _fail(path, f'{what} is a null or invalid object reference')
  node = f[ref]
  if not isinstance(node, h5py.Dataset) or node.dtype != np.uint8 or node.ndim not in (2, 3):
    _fail(path, f'{what} is {_describe_h5(node)}, expected a uint8 image stored (3, W, H) or '
          '(W, H)')
  image = np.asarray(node[()]).T
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[2] not in (1, 3) or 0 in image.shape:
    _fail(path, f'{what} has shape {image.shape} after transposing, expected [H, W, 3] or [H, W]')
  return np.ascontiguousarray(image)


# --- boxes ------------------------------------------------------------------------------------


def box_of(landmarks: Array) -> Array:
  """The tight box `[..., 4]` float32 (x0, y0, x1, y1) of landmarks `[..., P, 2]`: min and max of
  x and y over the points (the ground-truth box of the standard protocols; its sqrt(w * h) is the
  box normaliser). ValueError for a bad shape or non-finite landmarks."""
  points = np.asarray(landmarks, np.float32)
  if points.ndim < 2 or points.shape[-1] != 2 or points.shape[-2] == 0:
    raise ValueError(f'landmarks must have shape [..., P, 2] with P >= 1, got {points.shape}')
  if not np.isfinite(points).all():
    raise ValueError('landmarks must be finite')
  return np.concatenate([points.min(axis=-2), points.max(axis=-2)], axis=-1)
