"""People's own photographs in and out: which files to read, where their outputs go, their boxes.

  paths, skipped = photos.list_images(['me.jpg', 'holiday/'])   # files as given, folders listed
  names = photos.output_names(paths)                           # safe, distinct, per input
  boxes = photos.read_boxes('boxes.json')                      # file name -> [(x0, y0, x1, y1)]

Output names are built from the input's file name alone, with every character outside
[A-Za-z0-9._-] replaced, so that no input (`../../etc/passwd`, a name with slashes, dots or
unicode) can write outside the output folder; `output_path` checks it again on the resolved path.

Boxes files (`--boxes`), in the images' pixels as displayed (after EXIF orientation), pixel centres
at integers: a JSON object {"<file name>": [[x0, y0, x1, y1], ...], ...}, or a CSV with the header
`file,x0,y0,x1,y1` and one row per box. Keys are file names (not paths); an empty list says the
image has no face to align.
"""

from collections.abc import Iterable, Sequence
import csv
import json
import math
import os
import pathlib
import re
import sys

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) image pixels
PathLike = str | os.PathLike

# What a folder is searched for (case-insensitive); a file named on the command line is read
# whatever its name, and the reader decides.
# Netpbm (.pgm, .ppm, .pnm, .pbm): face sets such as BioID ship as .pgm, and PIL reads them.
IMAGE_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp',
                              '.pgm', '.ppm', '.pnm', '.pbm'})
CSV_HEADER = ('file', 'x0', 'y0', 'x1', 'y1')
_UNSAFE = re.compile(r'[^A-Za-z0-9._-]')
# A decimal number as a CSV cell may hold it ('nan' and 'inf' match, to be refused as not finite).
_NUMBER = re.compile(
    r'[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf(?:inity)?)', re.I)
_MAX_NAME = 200  # Characters of an output stem: '.json' and a suffix still fit in 255 bytes.
# Box coordinates beyond float32's whole numbers (2**24) cannot be cropped or mapped back to the
# pixel; such a box is a mistake in the boxes file, refused with its row or key.
MAX_COORDINATE = float(2**24)
# A box this many times the image's longer side, or not overlapping it, holds no face of the
# image: the crop would be the padding, the landmarks nonsense (`box_problem`).
MAX_BOX_TO_IMAGE = 10.0


class InputError(ValueError):
  """A command-line input that does not exist or names no image; the message is the sentence."""


class BoxesError(ValueError):
  """A boxes file that cannot be used; the message names the file and the row or key."""


# --- Inputs. ---


def list_images(inputs: Sequence[PathLike]) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
  """(image files to read, folder entries skipped), each in order.

  A file is taken as given; a folder contributes its files with an image extension, sorted by
  name, not recursing, hidden files (names starting with '.') left out. A file reached twice is
  read once. InputError if an input does not exist or nothing is left to read.
  """
  if not inputs:
    raise InputError('no images or folders given')
  images, skipped, seen = [], [], set()

  def add(path: pathlib.Path) -> None:
    key = os.path.normcase(os.path.realpath(path))
    if key not in seen:
      seen.add(key)
      images.append(path)

  for given in inputs:
    path = pathlib.Path(given)
    if path.is_dir():
      for entry in sorted(path.iterdir(), key=lambda p: p.name):
        if entry.is_dir():
          continue
        if entry.name.startswith('.') or entry.suffix.lower() not in IMAGE_EXTENSIONS:
          skipped.append(entry)
        else:
          add(entry)
    elif path.exists():
      add(path)
    else:
      raise InputError(f'{given}: no such file or folder')
  if not images:
    extensions = ', '.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
    raise InputError(f'no image to align in {", ".join(map(str, inputs))} '
                     f'(folders are searched for {extensions})')
  return images, skipped


def printable(path: PathLike) -> str:
  """The path as text that any UTF-8 file or terminal takes: bytes of a file name that are not
  UTF-8 (Python keeps them as surrogates, e.g. 'caf\\udce9.png' from Latin-1 'café') are written
  as escapes ('caf\\\\xe9.png'), so that a CSV row or a printed line cannot stop the run."""
  return os.fsencode(path).decode('utf-8', 'backslashreplace')


# --- Output names. ---


def safe_name(path: PathLike) -> str:
  """The output stem of an input: its file name, characters outside [A-Za-z0-9._-] replaced by
  '_', leading dots stripped, at most 200 characters; 'image' if nothing is left."""
  name = re.split(r'[\\/]', os.fspath(path))[-1]  # Either separator, on any system.
  name = _UNSAFE.sub('_', name).lstrip('.')[:_MAX_NAME]
  return name or 'image'


def output_names(paths: Iterable[PathLike]) -> list[str]:
  """A distinct `safe_name` per input, in order: a repeated name (two folders' `a.jpg`, or names
  equal but for case, which collide on macOS and Windows) gets '_2', '_3', ... before its
  extension."""
  names, used = [], set()
  for path in paths:
    name = safe_name(path)
    stem, dot, extension = name.rpartition('.') if '.' in name else (name, '', '')
    candidate, n = name, 1
    while candidate.lower() in used:
      n += 1
      candidate = f'{stem}_{n}{dot}{extension}'
    used.add(candidate.lower())
    names.append(candidate)
  return names


def output_path(outdir: PathLike, name: str, suffix: str) -> pathlib.Path:
  """OUTDIR/<name><suffix>, refused (ValueError) unless it resolves to a file inside OUTDIR."""
  root = pathlib.Path(outdir).resolve()
  path = (root / f'{name}{suffix}').resolve()
  if path.parent != root:
    raise ValueError(f'output name {name + suffix!r} would leave {root}')
  return path


# --- Boxes files. ---


def read_boxes(path: PathLike) -> dict[str, list[Box]]:
  """File name -> its boxes, from a JSON (`.json`) or CSV boxes file (format in the module doc).

  BoxesError, naming the file and the row (CSV) or key (JSON), for an unreadable file, a bad header,
  a path where a file name belongs, or a box that is not 4 finite numbers with x1 > x0, y1 > y0.
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding='utf-8-sig')
  except (OSError, UnicodeDecodeError) as e:
    raise BoxesError(f'{path}: cannot read the boxes file ({e})') from e
  if path.suffix.lower() == '.json' or text.lstrip().startswith('{'):
    return _boxes_from_json(text, path)
  return _boxes_from_csv(text, path)


def _file_key(key, path: pathlib.Path, where: str) -> str:
  if not isinstance(key, str) or not key.strip():
    raise BoxesError(f'{path}: {where}: the file name is empty')
  key = key.strip()  # As CSV cells are: ' a.jpg ' names a.jpg.
  if re.search(r'[\\/]', key):
    name = re.split(r'[\\/]', key)[-1]
    raise BoxesError(f'{path}: {where}: {key!r} is a path; give the file name alone ({name!r}): '
                     'boxes are matched by file name')
  return key


def check_box(values, path: PathLike, where: str, *, text: bool = False) -> Box:
  """Four finite numbers (x0, y0, x1, y1) with x1 > x0 and y1 > y0, as floats, or a BoxesError.
  Numbers are ints or floats (JSON: bools and strings are not numbers) or, with `text`, decimal
  numbers written out (CSV cells)."""
  if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 4:
    raise BoxesError(f'{path}: {where}: a box is 4 numbers [x0, y0, x1, y1], got {values!r}')
  box = []
  for value in values:
    number = None
    shown = _shorten(value)
    try:
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
      elif text and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
    except OverflowError:  # A JSON integer of 309 digits or more.
      number = math.inf
    if number is None:
      raise BoxesError(f'{path}: {where}: {shown} is not a number (box {_shorten(values)})')
    if not math.isfinite(number):
      raise BoxesError(f'{path}: {where}: {shown} is not finite (box {_shorten(values)})')
    if abs(number) > MAX_COORDINATE:
      raise BoxesError(f'{path}: {where}: {shown} is beyond +-2**24 px, where float32 has no '
                       f'whole pixels (box {_shorten(values)})')
    box.append(number)
  x0, y0, x1, y1 = box
  if not (x1 > x0 and y1 > y0):
    raise BoxesError(f'{path}: {where}: a box needs x1 > x0 and y1 > y0, got {values!r}')
  return x0, y0, x1, y1


def _shorten(value, limit: int = 60) -> str:
  """repr(value), cut to `limit` characters: a 300-digit number is not echoed whole."""
  try:
    shown = repr(value)
  except ValueError:  # An int too long for Python's str() limit.
    shown = f'<an integer of over {sys.get_int_max_str_digits()} digits>'
  return shown if len(shown) <= limit else f'{shown[:limit - 20]}...({len(shown)} characters)'


def box_problem(box: Box, width: int, height: int) -> str:
  """Why `box` holds no face of a `width` x `height` image ('' when it may): it lies outside
  the image (pixel centres at integers: the image covers [-0.5, W - 0.5] x [-0.5, H - 0.5]), or
  its side is over `MAX_BOX_TO_IMAGE` times the image's longer side."""
  x0, y0, x1, y1 = (float(v) for v in box)
  if not (x0 < width - 0.5 and x1 > -0.5 and y0 < height - 0.5 and y1 > -0.5):
    return f'box {_round_box(box)} lies outside the {width}x{height} image'
  side, longest = max(x1 - x0, y1 - y0), max(width, height)
  if side > MAX_BOX_TO_IMAGE * longest:
    return (f'box {_round_box(box)} is {side / longest:.3g}x the {width}x{height} image: over '
            f'{MAX_BOX_TO_IMAGE:g}x, it cannot hold a face of it')
  return ''


def landmark_box(landmarks) -> tuple[float, float, float, float]:
  """The tight box (x0, y0, x1, y1) of landmarks [P, 2]: the box the models were trained on."""
  points = [(float(x), float(y)) for x, y in landmarks]
  xs, ys = [x for x, _ in points], [y for _, y in points]
  return min(xs), min(ys), max(xs), max(ys)


def _round_box(box) -> list:
  return [float(f'{float(v):.6g}') for v in box]


def _boxes_from_json(text: str, path: pathlib.Path) -> dict[str, list[Box]]:
  def no_duplicates(pairs):
    keys = [k.strip() if isinstance(k, str) else k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
      raise BoxesError(f'{path}: {repeated[0]!r} appears more than once')
    return dict(pairs)

  try:
    content = json.loads(text, object_pairs_hook=no_duplicates)
  except json.JSONDecodeError as e:
    raise BoxesError(f'{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})') from e
  except ValueError as e:  # An integer past Python's str-to-int digit limit.
    raise BoxesError(f'{path}: cannot read the JSON ({e})') from e
  if not isinstance(content, dict):
    raise BoxesError(f'{path}: expected a JSON object {{"<file name>": [[x0, y0, x1, y1], ...]}}, '
                     f'got a {type(content).__name__}')
  boxes = {}
  for key, entries in content.items():
    name = _file_key(key, path, f'key {key!r}')
    if not isinstance(entries, list) or (entries and not isinstance(entries[0], list)):
      raise BoxesError(f'{path}: {key!r}: expected a list of boxes [[x0, y0, x1, y1], ...], got '
                       f'{_shorten(entries)}')
    boxes[name] = [check_box(e, path, f'{key!r} box {i}') for i, e in enumerate(entries)]
  return boxes


def _boxes_from_csv(text: str, path: pathlib.Path) -> dict[str, list[Box]]:
  rows = csv.reader(text.splitlines())
  header = next(rows, None)
  if header is None or tuple(h.strip().lower() for h in header) != CSV_HEADER:
    raise BoxesError(f'{path}: row 1: expected the header {",".join(CSV_HEADER)}, got '
                     f'{",".join(header) if header else "an empty file"}')
  boxes = {}
  for row_number, row in enumerate(rows, start=2):
    if not any(cell.strip() for cell in row):
      continue  # Blank lines.
    if len(row) != len(CSV_HEADER):
      raise BoxesError(f'{path}: row {row_number}: expected 5 cells {",".join(CSV_HEADER)}, got '
                       f'{len(row)}: {",".join(row)}')
    name = _file_key(row[0].strip(), path, f'row {row_number}')
    where = f'row {row_number} ({name})'
    box = check_box([c.strip() for c in row[1:]], path, where, text=True)
    boxes.setdefault(name, []).append(box)
  return boxes


def match_boxes(boxes: dict[str, list[Box]], paths: Sequence[PathLike]
                ) -> tuple[list[list[Box] | None], list[str]]:
  """(per input its boxes, or None where the file names none; the file names that match no
  input). Inputs are matched by file name, so two folders' `a.jpg` share `a.jpg`'s boxes."""
  names = [pathlib.Path(p).name for p in paths]
  unmatched = sorted(set(boxes) - set(names))
  return [boxes.get(name) for name in names], unmatched
