"""Tiny fake datasets written in the real on-disk formats, for the builders' tests.

Each `write_<dataset>(root, ...)` lays files out as the real download does and returns what it
wrote (a `FakeDataset`), so a test can compare what a builder reads with what is on disk. The
values are independent of the readers: `.pts` text is written by hand here (not by
`formats.write_pts`), images by PIL, and landmarks are the 3D mean face projected under a known
head pose with the pose convention's own rotation.

Axis legend: P = 68 landmarks, H x W (x C) image pixels.
"""

import dataclasses
import os
import pathlib

import numpy as np
from PIL import Image

from treemoe_jax import geometry
from treemoe_jax.geometry import head_pose as pose_fit

PathLike = str | os.PathLike
LOSSLESS_SUFFIXES = ('.png', '.bmp')


@dataclasses.dataclass
class FakeFace:
  """One written face."""
  source: str  # The image's path relative to the dataset root, '/'-separated.
  image: np.ndarray  # uint8 [H, W] (grayscale) or [H, W, 3], the pixels handed to PIL.
  landmarks: np.ndarray  # float64 [P, 2]: the numbers in the .pts minus 1 (0-based).
  pose: np.ndarray  # float64 [3] (yaw, pitch, roll): the pose the landmarks were projected under.

  @property
  def lossless(self) -> bool:
    """Whether the file holds `image` exactly (png, bmp) or approximately (jpg)."""
    return pathlib.Path(self.source).suffix.lower() in LOSSLESS_SUFFIXES

  @property
  def rgb(self) -> np.ndarray:
    """The pixels as [H, W, 3] (grayscale repeated), as the builders return them."""
    return np.repeat(self.image[..., None], 3, -1) if self.image.ndim == 2 else self.image


@dataclasses.dataclass
class FakeDataset:
  """What a writer put on disk."""
  root: pathlib.Path
  faces: dict[str, FakeFace]  # By source.
  splits: dict[str, list[str]]  # Split -> sorted sources (what the builder should give).
  ignored: list[str]  # Images written without an annotation (sources).


# --- building blocks ---------------------------------------------------------------------------


def project_face(pose, *, center, scale: float) -> np.ndarray:
  """0-based landmarks [P, 2] of the mean face under `pose` (weak perspective, `scale` px per cm),
  rounded so that the 1-based values have three decimals (written exactly in a .pts)."""
  camera = geometry.MEAN_FACE_3D.astype(np.float64) @ pose_fit.rotation_matrix(pose).T
  one_based = np.round(np.asarray(center, np.float64) + 1.0 + scale * camera[:, :2], 3)
  return one_based - 1.0


def pts_text(landmarks: np.ndarray, *, style: int = 0, n_points: int | None = None) -> str:
  """A .pts file of 0-based landmarks [P, 2] (written 1-based), in one of the whitespace styles
  found in the wild (0: plain; 1: CRLF, tabs, padded header, blank lines)."""
  values = np.asarray(landmarks, np.float64) + 1.0
  count = len(values) if n_points is None else n_points
  if style == 0:
    lines = ['version: 1', f'n_points:  {count}', '{'] + [f'{x:.3f} {y:.3f}' for x, y in values]
    return '\n'.join(lines + ['}']) + '\n'
  lines = ['version:1', f'n_points: {count}  ', '', '{'] + [f'  {x:.3f}\t{y:.3f} '
                                                             for x, y in values]
  return '\r\n'.join(lines + ['}', '', ''])


def write_pts(path: PathLike, landmarks: np.ndarray, *, style: int = 0) -> None:
  pathlib.Path(path).write_text(pts_text(landmarks, style=style), newline='')


def write_bad_pts(path: PathLike, kind: str, *, seed: int = 0) -> None:
  """A damaged .pts: 'points_67' (a well-formed file of 67 points) or 'nan' (one NaN value)."""
  landmarks = project_face((0.0, 0.0, 0.0), center=(40, 40), scale=2.0)
  if kind == 'points_67':
    text = pts_text(landmarks[:67])
  elif kind == 'nan':
    lines = pts_text(landmarks).split('\n')
    row = 3 + np.random.default_rng(seed).integers(68)
    lines[row] = lines[row].split()[0] + ' nan'
    text = '\n'.join(lines)
  else:
    raise ValueError(f'Unknown kind {kind!r}.')
  pathlib.Path(path).write_text(text)


def truncate(path: PathLike, keep: float = 0.5) -> None:
  """Cuts a file to `keep` of its bytes (a download that stopped half way)."""
  data = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(data[:int(len(data) * keep)])


def random_image(rng: np.random.Generator, *, height: int, width: int, gray: bool) -> np.ndarray:
  """uint8 [H, W] or [H, W, 3]: smooth (so jpg keeps it close) plus a little noise."""
  channels = 1 if gray else 3
  base = rng.integers(40, 216, (1, 1, channels))
  ramp = np.linspace(-30, 30, width)[None, :, None] + np.linspace(-20, 20, height)[:, None, None]
  image = np.clip(base + ramp + rng.integers(-3, 4, (height, width, channels)), 0, 255)
  image = image.astype(np.uint8)
  return image[..., 0] if gray else image


def write_face(root: pathlib.Path, source: str, *, rng: np.random.Generator, pose, gray: bool,
               pts_style: int = 0, annotate: bool = True) -> FakeFace:
  """An image at `root/source` (format from its suffix) and, if `annotate`, its .pts beside it."""
  height, width = (int(v) for v in rng.integers(56, 97, 2))
  image = random_image(rng, height=height, width=width, gray=gray)
  path = root / source
  path.parent.mkdir(parents=True, exist_ok=True)
  suffix = path.suffix.lower()
  kwargs = {'quality': 95} if suffix in ('.jpg', '.jpeg') else {}
  Image.fromarray(image).save(path, format={'.jpg': 'JPEG', '.jpeg': 'JPEG', '.png': 'PNG',
                                            '.bmp': 'BMP'}[suffix], **kwargs)
  landmarks = project_face(pose, center=((width - 1) / 2, (height - 1) / 2),
                           scale=min(width, height) / 30)
  if annotate:
    write_pts(path.with_suffix('.pts'), landmarks, style=pts_style)
  return FakeFace(source, image, landmarks, np.asarray(pose, np.float64))


_POSES = ((0.5, 0.1, 0.05), (-0.5, -0.05, 0.0), (0.0, 0.0, 0.0), (0.35, 0.0, -0.1),
          (-0.35, 0.1, 0.1))


# --- 300W ---------------------------------------------------------------------------------------

# Folder -> file names. Stems in mixed order (numeric, zero-padded, with suffixes) so that sorting
# images and annotations separately would pair them wrongly around the unannotated images.
W300_LAYOUT = {
    'afw': ('2_1.jpg', '10_1.jpg'),
    'helen/trainset': ('100032540_1.jpg',),
    'helen/testset': ('2968560214_1.jpg', '30427236_1.jpg'),
    'lfpw/trainset': ('image_0010.png', 'image_0002.png'),
    'lfpw/testset': ('image_0001.png', 'image_0003.png'),
    'ibug': ('image_092_01.jpg', 'image_003_1.jpg'),
}
W300_IGNORED = ('afw/1_extra.jpg', 'lfpw/testset/image_0002a.png')  # Images without a .pts.
W300_SPLITS = {
    'train': ('afw', 'lfpw/trainset', 'helen/trainset'),
    'common': ('lfpw/testset', 'helen/testset'),
    'challenging': ('ibug',),
    'full': ('lfpw/testset', 'helen/testset', 'ibug'),
    'lfpw_test': ('lfpw/testset',),
    'helen_test': ('helen/testset',),
    'ibug': ('ibug',),
}


def write_w300(root: PathLike, *, private: str | None = None, seed: int = 0) -> FakeDataset:
  """A tiny 300-W tree: afw/, helen/{trainset,testset}/, lfpw/{trainset,testset}/, ibug/.

  LFPW png, the rest jpg; grayscale and RGB images of different sizes; two .pts whitespace styles;
  a few images without a .pts (ignored). `private`: None, 'nested' (300W/01_Indoor,
  300W/02_Outdoor) or 'root' (01_Indoor, 02_Outdoor directly under `root`).
  """
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  faces, folders = {}, {}
  layout = dict(W300_LAYOUT)
  if private is not None:
    parent = {'nested': '300W/', 'root': ''}[private]
    layout[f'{parent}01_Indoor'] = ('indoor_001.png', 'indoor_002.png')
    layout[f'{parent}02_Outdoor'] = ('outdoor_001.png',)
  i = 0
  for folder, names in layout.items():
    folders[folder] = []
    for name in names:
      source = f'{folder}/{name}'
      faces[source] = write_face(root, source, rng=rng, pose=_POSES[i % len(_POSES)],
                                 gray=i % 3 == 1, pts_style=i % 2)
      folders[folder].append(source)
      i += 1
  for source in W300_IGNORED:
    write_face(root, source, rng=rng, pose=_POSES[0], gray=False, annotate=False)
  splits = {split: sorted(s for f in members for s in folders[f])
            for split, members in W300_SPLITS.items()}
  if private is not None:
    splits['private'] = sorted(s for f in folders if f.endswith(('01_Indoor', '02_Outdoor'))
                               for s in folders[f])
  return FakeDataset(root, faces, splits, sorted(W300_IGNORED))


# --- a user's own folder -------------------------------------------------------------------------

_FOLDER_SUFFIXES = ('.jpg', '.png', '.JPEG', '.bmp', '.PNG')


def face_folder_sources(num_faces: int) -> list[str]:
  """The image paths `write_face_folder` writes: sub-folders, mixed names and suffix cases."""
  folders = ('', 'session_b/', 'a/deep/er/')
  return [f'{folders[i % 3]}person{(i * 7) % num_faces}_{i}{_FOLDER_SUFFIXES[i % 5]}'
          for i in range(num_faces)]


def write_face_folder(root: PathLike, *, num_faces: int = 10, order_seed: int | None = None,
                      lists: dict[str, list[str]] | None = None, seed: int = 0) -> FakeDataset:
  """A folder of `num_faces` annotated images (`face_folder_sources`) plus two without a .pts.

  `order_seed`: write the files in a shuffled order (the same contents), so a test can check that
  the file system's listing order does not matter. `lists`: {'train': [...], 'test': [...], ...}
  written as train.txt / test.txt / val.txt, with a comment, blank lines, a './' entry and CRLF.
  Returned splits: `lists` when given, else empty (the seeded split is the builder's to draw).
  """
  root = pathlib.Path(root)
  sources = face_folder_sources(num_faces)
  rng = np.random.default_rng(seed)
  # Draw every face's settings first, so the contents do not depend on the writing order.
  settings = [(s, int(rng.integers(2**31)), _POSES[i % len(_POSES)], i % 2 == 0)
              for i, s in enumerate(sources)]
  if order_seed is not None:
    settings = [settings[i] for i in np.random.default_rng(order_seed).permutation(len(settings))]
  faces = {}
  for source, face_seed, pose, gray in settings:
    faces[source] = write_face(root, source, rng=np.random.default_rng(face_seed), pose=pose,
                               gray=gray, pts_style=face_seed % 2)
  ignored = ['unannotated.jpg', 'session_b/person0_no_pts.png']
  for source in ignored:
    write_face(root, source, rng=rng, pose=_POSES[0], gray=True, annotate=False)
  splits = {}
  for split, entries in (lists or {}).items():
    lines = [f'# {split} faces', '']
    lines += [f'./{e}' if k == 0 else e for k, e in enumerate(entries)]
    (root / f'{split}.txt').write_text('\r\n'.join(lines + ['']), newline='')
    splits[split] = sorted(entries)
  return FakeDataset(root, dict(sorted(faces.items())), splits, sorted(ignored))
