"""`w300`: the 300-W face-alignment benchmark (AFW, HELEN, LFPW, IBUG; optional private test set).

Read from the archives the user downloaded (TFDS manual dir; see `MANUAL_DOWNLOAD_INSTRUCTIONS`),
laid out as
  afw/  helen/{trainset,testset}/  lfpw/{trainset,testset}/  ibug/
  [300W/]01_Indoor/  [300W/]02_Outdoor/      (the private test set: optional)
Every image has a `.pts` of the same stem beside it (LFPW `.png`, the others `.jpg`). Images and
annotations are paired by stem, never by sorted position; images without a `.pts` are ignored and
listed in a log line. A `.pts` without its image is a bad example (see `real`).

Splits (the published sizes; a split of another size is prepared with a logged warning):
  train        afw + lfpw/trainset + helen/trainset    3148
  common       lfpw/testset + helen/testset             554
  challenging  ibug                                     135
  full         common + challenging                     689
  lfpw_test    lfpw/testset                             224
  helen_test   helen/testset                            330
  ibug         ibug                                     135
  private      01_Indoor + 02_Outdoor                   600 (only when present)

Features: those of `real.features` (image uint8 [H, W, 3], landmarks float32 [68, 2] 0-based,
visibility all True, pose inferred from the landmarks, box of the landmarks) plus `source`, the
image's path relative to the data folder ('lfpw/testset/image_0001.png'), which is also the key.

Configs: 'default' stops at the first bad file with a FormatError naming it; 'skip_bad' skips bad
examples and reports them (log, and `bad_examples.txt` beside the prepared data).
"""

from collections.abc import Iterable, Iterator
import dataclasses
import logging
import pathlib

import tensorflow_datasets as tfds

from input_pipeline import formats
from input_pipeline.datasets import real

NAME = 'w300'
HOMEPAGE = 'https://ibug.doc.ic.ac.uk/resources/300-W/'
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')  # Matched case-insensitively.
PTS_SUFFIX = '.pts'

# Folder (relative to the data folder) -> the faces it holds in the published set.
FOLDERS = {'afw': 337, 'helen/trainset': 2000, 'helen/testset': 330, 'lfpw/trainset': 811,
           'lfpw/testset': 224, 'ibug': 135}
SPLITS = {
    'train': ('afw', 'lfpw/trainset', 'helen/trainset'),
    'common': ('lfpw/testset', 'helen/testset'),
    'challenging': ('ibug',),
    'full': ('lfpw/testset', 'helen/testset', 'ibug'),
    'lfpw_test': ('lfpw/testset',),
    'helen_test': ('helen/testset',),
    'ibug': ('ibug',),
}
PRIVATE_FOLDERS = ('01_Indoor', '02_Outdoor')
PRIVATE_PARENT = '300W'  # The private archive extracts to 300W/01_Indoor, 300W/02_Outdoor.
PUBLISHED_SIZES = {**{split: sum(FOLDERS[f] for f in folders) for split, folders in SPLITS.items()},
                   'private': 600}

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the 300-W images and annotations from {HOMEPAGE} (free registration): the AFW, HELEN,
LFPW and IBUG archives, and optionally the private 300-W test set (indoor + outdoor, 600 faces).
Extract them into the manual dir, or its sub-folder `{NAME}/`, so that it holds
  afw/*.jpg + *.pts
  helen/trainset/, helen/testset/      (*.jpg + *.pts)
  lfpw/trainset/, lfpw/testset/        (*.png + *.pts)
  ibug/                                (*.jpg + *.pts)
  300W/01_Indoor/, 300W/02_Outdoor/    (optional: *.png + *.pts; 01_Indoor/ and 02_Outdoor/
                                        directly in the folder work too)
Each image's `.pts` (68 points) has the same name stem and sits beside it.
"""

CITATION = """\
@article{sagonas2016300,
  title={300 Faces In-The-Wild Challenge: database and results},
  author={Sagonas, Christos and Antonakos, Epameinondas and Tzimiropoulos, Georgios and
          Zafeiriou, Stefanos and Pantic, Maja},
  journal={Image and Vision Computing},
  volume={47},
  pages={3--18},
  year={2016}
}"""


# --- pairing images with their .pts (shared with `face_folder`) -------------------------------


@dataclasses.dataclass(frozen=True)
class Pair:
  """A `.pts` file and the images of the same stem in its folder (exactly one when well formed)."""
  pts: pathlib.Path
  images: tuple[pathlib.Path, ...]

  @property
  def image(self) -> pathlib.Path:
    """The one image; FormatError (naming the `.pts`) when there is none or several."""
    if not self.images:
      raise formats.FormatError(
          self.pts, f'no image of the same stem beside it (expected {self.pts.stem} with one of '
          f'{", ".join(IMAGE_SUFFIXES)}): an annotation without its image')
    if len(self.images) > 1:
      raise formats.FormatError(
          self.pts, 'several images share its stem, so which one it annotates is ambiguous: '
          f'{", ".join(p.name for p in self.images)}')
    return self.images[0]


def is_image(path: pathlib.Path) -> bool:
  return path.suffix.lower() in IMAGE_SUFFIXES


def pair_by_stem(files: Iterable[pathlib.Path]) -> tuple[list[Pair], list[pathlib.Path]]:
  """Files of one folder -> (a Pair per `.pts`, sorted; the images without a `.pts`, sorted).

  Stems match exactly (case-sensitive, like the file system); suffixes case-insensitively. Files
  whose name starts with '.' (macOS `._x.jpg` resource forks, `.DS_Store`) are not data.
  """
  pts, images = {}, {}
  for path in files:
    if path.name.startswith('.'):
      continue
    if path.suffix.lower() == PTS_SUFFIX:
      pts[path.stem] = path
    elif is_image(path):
      images.setdefault(path.stem, []).append(path)
  pairs = [Pair(pts[stem], tuple(sorted(images.get(stem, ())))) for stem in sorted(pts)]
  unannotated = sorted(p for stem, paths in images.items() if stem not in pts for p in paths)
  return pairs, unannotated


def read_pair(pair: Pair, root: pathlib.Path, *, exif_transpose: bool = False
              ) -> tuple[str, real.Example]:
  """(source, example) of one annotated image; FormatError naming the file at fault."""
  image_path = pair.image
  landmarks = formats.read_pts(pair.pts, num_points=68)
  image = formats.read_image(image_path, exif_transpose=exif_transpose)
  try:
    pose = real.pose_labels(landmarks)
  except ValueError as e:  # Degenerate points (e.g. all equal) fit no head pose.
    raise formats.FormatError(pair.pts, f'cannot infer a head pose from these landmarks ({e})'
                              ) from e
  source = image_path.relative_to(root).as_posix()
  return source, real.example(image, landmarks, pose=pose, source=source)


def generate(pairs: list[Pair], root: pathlib.Path, *, skip: bool, name: str,
             report_dir: pathlib.Path, exif_transpose: bool = False
             ) -> Iterator[tuple[str, real.Example]]:
  """`read_pair` over `pairs` through `real.guarded`; an error if no example is left.

  (TFDS cannot write an empty split: without this, a split whose every file is bad and skipped
  would end in TFDS's bare "No examples were yielded".)
  """
  count = 0
  for key, example in real.guarded(
      pairs, lambda pair: read_pair(pair, root, exif_transpose=exif_transpose), skip=skip,
      name=name, report_dir=report_dir):
    count += 1
    yield key, example
  if not count:
    raise ValueError(f'{name}: no example left to prepare: all {len(pairs)} were bad and skipped '
                     '(named in the log above and in bad_examples.txt); a split cannot be empty.')


# --- the builder ------------------------------------------------------------------------------


class W300(tfds.core.GeneratorBasedBuilder):
  """300-W: 68-point landmarks of faces in the wild, with head poses fitted to them."""

  name = NAME

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      real.RealConfig(name='default', description='Stops at the first bad file.'),
      real.RealConfig(name='skip_bad', skip_bad_examples=True,
                      description='Skips bad files and reports them (bad_examples.txt).'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=real.features({'source': tfds.features.Text()}, encoding='png'),
        homepage=HOMEPAGE,
        citation=CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = real.dataset_dir(real.manual_dir(dl_manager, NAME), NAME, tuple(FOLDERS),
                            MANUAL_DOWNLOAD_INSTRUCTIONS)
    folders = {folder: _scan(root, folder) for folder in FOLDERS}
    private = _private_folders(root)
    folders.update({folder: _scan(root, folder) for folder in private})
    splits = dict(SPLITS) | ({'private': private} if private else {})
    generators = {}
    for split, members in splits.items():
      pairs = [pair for folder in members for pair in folders[folder]]
      if len(pairs) != PUBLISHED_SIZES[split]:
        logging.warning('%s: split %s has %d annotated images (.pts files); the published set '
                        'has %d.', NAME, split, len(pairs), PUBLISHED_SIZES[split])
      generators[split] = self._generate_examples(pairs, root, split)
    return generators

  def _generate_examples(self, pairs: list[Pair], root: pathlib.Path, split: str):
    return generate(pairs, root, skip=self.builder_config.skip_bad_examples,
                    name=f'{NAME}/{split}', report_dir=pathlib.Path(self.data_dir))


def _scan(root: pathlib.Path, folder: str) -> list[Pair]:
  """The Pairs of `root/folder` (not recursive), logging its images without a `.pts`."""
  pairs, unannotated = pair_by_stem(p for p in (root / folder).iterdir() if p.is_file())
  if unannotated:
    logging.warning('%s: ignoring %d image(s) in %s without a .pts beside them: %s', NAME,
                    len(unannotated), folder, ', '.join(p.name for p in unannotated))
  if not pairs:
    raise real.MissingDataError(f'{NAME}: {root / folder} holds no .pts annotations. '
                                f'Download the data as follows:\n{MANUAL_DOWNLOAD_INSTRUCTIONS}')
  return pairs


def _private_folders(root: pathlib.Path) -> tuple[str, ...]:
  """The private test set's folders relative to `root` (`300W/01_Indoor`, ...), or ()."""
  for parent in (root / PRIVATE_PARENT, root):
    found = tuple((parent / f).relative_to(root).as_posix() for f in PRIVATE_FOLDERS
                  if (parent / f).is_dir())
    if found:
      return found
  return ()

