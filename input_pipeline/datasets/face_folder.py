"""`face_folder`: the user's own annotated faces, in the format annotation tools export.

The data is any folder (TFDS manual dir, or its sub-folder `face_folder/`), searched recursively:
each image (.jpg, .jpeg, .png, .bmp; any case) with a 68-point `.pts` of the same stem beside it
(300-W / iBUG markup, 1-based pixels), one face per image. Images without a `.pts` are ignored and
listed in a log line; a `.pts` without its image (or with two images of its stem) is a bad example.
Names starting with '.' (hidden files and folders) are skipped.

Splits:
  - list files: if the folder holds `train.txt`, `test.txt` or `val.txt`, each one present is a
    split of the images it lists, one path relative to the folder per line (lines starting with
    '#' and blank lines are ignored). An entry that does not exist, has no `.pts`, or is listed
    twice is an error naming the list file and line. Annotated images in no list are left out
    (logged).
  - otherwise a seeded split: `test_fraction` (default 0.1) of the faces go to 'test',
    `val_fraction` (default 0) to 'val', the rest to 'train'. The split is a seeded permutation of
    the *sorted* relative paths, so a given folder always splits the same way, whatever order the
    file system lists it in. A non-zero fraction holds at least one face; a split of fraction 0 is
    absent.

Features: those of `w300` (`real.features` + `source`, the image path relative to the folder,
also the key). Poses are fitted to the landmarks.

Configs: 'default' (stops at the first bad file with a FormatError naming it), 'skip_bad' (skips
and reports bad files). For other fractions or seeds make your own:
  config = face_folder.FaceFolderConfig(name='mine_20pct', test_fraction=0.2, seed=3)
  builder = face_folder.FaceFolder(config=config, data_dir=DATA_DIR)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=FOLDER))
TFDS prepares a config once: after changing the folder, prepare again with
`download_mode=tfds.download.GenerateMode.FORCE_REDOWNLOAD` (or use a new config name).
"""

from collections.abc import Iterator
import dataclasses
import logging
import os
import pathlib
import posixpath

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import formats
from input_pipeline.datasets import real
from input_pipeline.datasets import w300

NAME = 'face_folder'
LIST_FILES = {'train': 'train.txt', 'test': 'test.txt', 'val': 'val.txt'}

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Put your annotated faces in one folder (sub-folders are searched too): each image (.jpg, .jpeg,
.png or .bmp) with a 68-point .pts file of the same name beside it (face_01.jpg + face_01.pts), in
the 300-W / iBUG format annotation tools export:
  version: 1
  n_points: 68
  {{
  x y        (68 lines, 1-based pixel coordinates, iBUG 68-point markup)
  }}
Optionally add train.txt / test.txt / val.txt listing each split's images (one path relative to
the folder per line); without them a seeded test_fraction of the faces is held out. Pass the folder
as the manual dir (or make it the sub-folder `{NAME}/` of the manual dir).
"""


@dataclasses.dataclass(eq=False)
class FaceFolderConfig(real.RealConfig):
  """How a folder is split (when it has no list files) and read."""
  test_fraction: float = 0.1  # Of the faces, held out as 'test' (ignored with list files).
  val_fraction: float = 0.0  # Of the faces, held out as 'val'; 0: no 'val' split.
  seed: int = 0  # Of the seeded split.
  # Rotate images as their EXIF orientation says (phone photos) before use. Only if the tool the
  # landmarks were made with showed them rotated; the stored pixel grid otherwise.
  exif_transpose: bool = False

  def __post_init__(self):
    for field in ('test_fraction', 'val_fraction'):
      value = getattr(self, field)
      if not 0.0 <= value < 1.0:
        raise ValueError(f'{field} must be in [0, 1), got {value}.')
    if self.test_fraction + self.val_fraction >= 1.0:
      raise ValueError(f'test_fraction + val_fraction must be < 1, got {self.test_fraction} + '
                       f'{self.val_fraction}.')
    if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
      raise ValueError(f'seed must be an integer >= 0, got {self.seed!r}.')


def _held_out(num: int, fraction: float) -> int:
  """How many of `num` faces a fraction takes: round half up, at least one if non-zero."""
  return 0 if fraction == 0 else max(1, int(np.floor(fraction * num + 0.5)))


def split_by_fraction(sources: list[str], *, test_fraction: float, val_fraction: float = 0.0,
                      seed: int = 0) -> dict[str, list[str]]:
  """{'train': [...], 'test': [...], 'val': [...]} (splits of fraction 0 absent), each sorted.

  A seeded permutation of the sorted `sources`: the same set of sources always splits the same way.
  ValueError when the fractions would leave 'train' empty.
  """
  ordered = sorted(set(sources))
  num = len(ordered)
  num_test, num_val = _held_out(num, test_fraction), _held_out(num, val_fraction)
  if num_test + num_val >= num:
    raise ValueError(f'{NAME}: {num} face(s) are too few to hold out test_fraction={test_fraction}'
                     f' and val_fraction={val_fraction} and keep some for training; add faces, '
                     'lower the fractions, or list the splits in train.txt / test.txt.')
  order = np.random.default_rng(seed).permutation(num)
  parts = {'test': order[:num_test], 'val': order[num_test:num_test + num_val],
           'train': order[num_test + num_val:]}
  return {split: sorted(ordered[i] for i in indices) for split, indices in parts.items()
          if len(indices)}


class FaceFolder(tfds.core.GeneratorBasedBuilder):
  """A folder of the user's own images with 68-point `.pts` annotations."""

  name = NAME

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      FaceFolderConfig(name='default',
                       description='List files, or a seeded 10% test split; stops at a bad file.'),
      FaceFolderConfig(name='skip_bad', skip_bad_examples=True,
                       description='As default, but skips bad files and reports them.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=real.features({'source': tfds.features.Text()}, encoding='png'),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    root = real.dataset_dir(real.manual_dir(dl_manager, NAME), NAME, (),
                            MANUAL_DOWNLOAD_INSTRUCTIONS)
    pairs, unannotated = _scan(root)
    if unannotated:
      logging.warning('%s: ignoring %d image(s) without a .pts beside them: %s', NAME,
                      len(unannotated), ', '.join(_relative(p, root) for p in unannotated))
    # A .pts without its image (or with two): stops, or is skipped and reported, up front, so that
    # the seeded split is drawn over well-formed pairs only.
    bad = [pair for pair in pairs if len(pair.images) != 1]
    for _ in real.guarded(bad, lambda pair: pair.image, skip=config.skip_bad_examples, name=NAME,
                          report_dir=pathlib.Path(self.data_dir)):
      pass
    good = {_relative(pair.image, root): pair for pair in pairs if len(pair.images) == 1}
    if not good:
      raise real.MissingDataError(f'{NAME}: {root} holds no image with a .pts beside it. '
                                  f'Prepare the folder as follows:\n{MANUAL_DOWNLOAD_INSTRUCTIONS}')
    splits = _list_splits(root, good, skipped={pair.pts.with_suffix('') for pair in bad})
    if splits is None:
      splits = split_by_fraction(list(good), test_fraction=config.test_fraction,
                                 val_fraction=config.val_fraction, seed=config.seed)
    logging.info('%s: %s', NAME, ', '.join(f'{s} {len(v)}' for s, v in splits.items()))
    return {split: self._generate_examples([good[s] for s in sources], root, split)
            for split, sources in splits.items()}

  def _generate_examples(self, pairs: list[w300.Pair], root: pathlib.Path, split: str):
    config = self.builder_config
    return w300.generate(pairs, root, skip=config.skip_bad_examples, name=f'{NAME}/{split}',
                         report_dir=pathlib.Path(self.data_dir),
                         exif_transpose=config.exif_transpose)


def _relative(path: pathlib.Path, root: pathlib.Path) -> str:
  return path.relative_to(root).as_posix()


def _scan(root: pathlib.Path) -> tuple[list[w300.Pair], list[pathlib.Path]]:
  """All Pairs under `root` (recursively) and the images without a `.pts`, in sorted order."""
  pairs, unannotated = [], []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    found, alone = w300.pair_by_stem(pathlib.Path(folder, f) for f in files)
    pairs += found
    unannotated += alone
  return sorted(pairs, key=lambda p: p.pts), sorted(unannotated)


def _list_entries(path: pathlib.Path) -> Iterator[tuple[int, str]]:
  """(line number, entry) of a list file: stripped, blank and '#' lines left out."""
  try:
    text = path.read_bytes().decode('utf-8-sig')
  except OSError as e:
    raise formats.FormatError(path, f'cannot read the list file ({e.strerror or e})') from e
  except UnicodeDecodeError as e:
    raise formats.FormatError(path, f'not a UTF-8 text file (byte {e.start})') from e
  for number, line in enumerate(text.splitlines(), start=1):
    entry = line.strip()
    if entry and not entry.startswith('#'):
      yield number, entry


def _list_splits(root: pathlib.Path, good: dict[str, w300.Pair], *, skipped: set[pathlib.Path]
                 ) -> dict[str, list[str]] | None:
  """The splits the list files give (None without list files); FormatError naming a bad line.

  `skipped`: the paths less suffix of bad pairs already reported (skip_bad_examples); their
  entries are left out quietly, whether or not their image exists.
  """
  present = {split: root / name for split, name in LIST_FILES.items() if (root / name).is_file()}
  if not present:
    return None
  seen: dict[str, tuple[pathlib.Path, int]] = {}  # source -> (list file, line) it first came from.
  splits = {}
  for split, path in present.items():
    sources, listed = [], 0
    for number, entry in _list_entries(path):
      listed += 1
      where = f'line {number}: {entry!r}'
      source = posixpath.normpath(entry)
      if posixpath.isabs(source) or source == '..' or source.startswith('../'):
        raise formats.FormatError(path, f'{where} is not a path relative to the folder {root}')
      if source in seen:
        other, other_number = seen[source]
        also = 'line' if other == path else f'{other.name} line'
        raise formats.FormatError(path, f'{where} is listed twice (also {also} {other_number}); '
                                  'a face belongs to one split')
      seen[source] = (path, number)
      if (root / source).with_suffix('') in skipped:
        continue
      if not (root / source).is_file():
        raise formats.FormatError(path, f'{where} does not exist (looked for {root / source})')
      if source not in good:
        raise formats.FormatError(
            path, f'{where} is not an annotated image: no {w300.PTS_SUFFIX} of its stem beside it'
            if w300.is_image(root / source) else f'{where} is not an image file')
      sources.append(source)
    if not listed:
      raise formats.FormatError(path, 'lists no images (only blank lines and # comments)')
    splits[split] = sources
  unlisted = sorted(set(good) - set(seen))
  if unlisted:
    logging.warning('%s: %d annotated image(s) are in none of %s and are left out: %s', NAME,
                    len(unlisted), ', '.join(p.name for p in present.values()), ', '.join(unlisted))
  return splits
