"""`aflw2000_3d`: AFLW2000-3D (Zhu et al., CVPR 2016), the paper's large-pose test set (Table 3).

The first 2000 faces of AFLW re-annotated by 3D fitting. Read from the files the user downloaded
(see `MANUAL_DOWNLOAD_INSTRUCTIONS`) with `formats.read_image` and `formats.read_aflw2000_3d`:
`AFLW2000/imageNNNNN.jpg` + `imageNNNNN.mat` (`pt3d_68`, `Pose_Para`), paired by stem.

Splits:
  test: all faces (2000 in the real set; other counts are logged as a warning);
  test_yaw_0_30, test_yaw_30_60, test_yaw_60_90: the same faces by |yaw| bucket (Table 3's
    columns): [0, 30], (30, 60] and > 60 degrees (3DDFA's benchmark: |yaw| <= 30, 30 < |yaw| <= 60,
    |yaw| > 60). The counts are logged after the test split is written. A bucket without faces
    (never on the real set) has no split: TFDS cannot write an empty one.

Features: the common ones of `real.features` plus
  yaw_bucket int32: 0, 1 or 2, the bucket above;
  yaw_deg float32: the yaw (degrees) the bucket was computed from, as its source gives it;
  yaw_source Text: 'Pose_Para', or the pose file's name;
  source Text: the image's file name (`imageNNNNN.jpg`), also the key.
  landmarks: x, y of `pt3d_68` (3, 68), 0-based (`formats.THREEDDFA_ORIGIN`); visibility all True
    (projected 3D points, none marked hidden); box: their tight box (the protocol's normaliser is
    sqrt(w h) of it); pose: `geometry.pose_from_pose_para(Pose_Para)`, the project's convention.

Which yaw makes the buckets:
  default: `Pose_Para`'s stored yaw (element 1, radians -> degrees, 3DDFA's angle; what head pose
    papers read as AFLW2000's yaw). It gives 1312 / 383 / 305 faces on the real set. (The
    project-convention `pose[0]` decomposes the same rotation in another axis order and can differ
    from it by a few degrees at combined angles.)
  config `pose_file`: a CSV file, absolute or relative to the manual dir, with a header row naming
    the columns `image` and `yaw_deg` (other columns ignored) and one row per face: `image` the
    image's file name or stem (`image00002.jpg` or `image00002`), `yaw_deg` its yaw in degrees
    (only |yaw| matters). AFLW's original yaw labels reproduce the paper's 1306 / 462 / 232. A face
    missing from the file, a duplicate row, or a yaw that is not a finite number is a
    `formats.FormatError` naming the file and the image: it stops the preparation whatever the
    config (the buckets would be wrong).

Bad input: a missing, empty or damaged image or `.mat` (an image without its `.mat` or the reverse)
is a `formats.FormatError` naming it: it stops the preparation by default; the 'skip_bad' config
skips the face and reports it (log and `bad_examples.txt` beside the data).
"""

import collections
import csv
import dataclasses
import logging
import math
import pathlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import formats
from input_pipeline.datasets import real
from treemoe_jax import geometry

NAME = 'aflw2000_3d'
FOLDER = 'AFLW2000'
NUM_IMAGES = 2000
BUCKET_SPLITS = ('test_yaw_0_30', 'test_yaw_30_60', 'test_yaw_60_90')
BUCKET_EDGES_DEG = (30.0, 60.0)  # Upper edges, inclusive: [0, 30], (30, 60], > 60.
POSE_PARA_SOURCE = 'Pose_Para'

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
AFLW2000-3D (Zhu, Lei, Liu, Shi and Li, CVPR 2016): download AFLW2000-3D.zip from
http://www.cbsr.ia.ac.cn/users/xiangyuzhu/projects/3DDFA/Database/AFLW2000-3D.zip (project page
http://www.cbsr.ia.ac.cn/users/xiangyuzhu/projects/3DDFA/main.htm) and extract it into
<manual_dir>, so that <manual_dir>/AFLW2000/ holds image00002.jpg, image00002.mat, ... (2000 pairs).
(The manual dir itself may also be the AFLW2000 folder.)
"""


@dataclasses.dataclass(eq=False)
class Aflw20003dConfig(real.RealConfig):
  """`pose_file`: optional CSV `image,yaw_deg` whose yaw makes the buckets (module docstring)."""
  pose_file: str | None = None


def yaw_bucket(yaw_deg: float) -> int:
  """0 for |yaw| in [0, 30], 1 for (30, 60], 2 beyond 60 degrees."""
  return int(np.searchsorted(BUCKET_EDGES_DEG, abs(yaw_deg), side='left'))


def read_pose_file(path: pathlib.Path) -> dict[str, float]:
  """{image stem: yaw in degrees} of a CSV with columns `image` and `yaw_deg`."""
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:
      reader = csv.DictReader(f)
      rows, columns = list(reader), list(reader.fieldnames or [])
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise formats.FormatError(path, f'cannot read the pose file ({e})') from None
  if not {'image', 'yaw_deg'} <= set(columns):
    raise formats.FormatError(path, f'expected a header row with columns image and yaw_deg '
                              f'(and one row per face), got columns {columns}')
  yaws = {}
  for line, row in enumerate(rows, start=2):
    image = (row['image'] or '').strip()
    stem = image.removesuffix('.jpg').removesuffix('.mat')
    try:
      yaw = float(row['yaw_deg'])
    except (TypeError, ValueError):
      yaw = math.nan
    if not stem or not math.isfinite(yaw):
      raise formats.FormatError(path, f'line {line}: expected an image name and a finite yaw in '
                                f'degrees, got {row["image"]!r}, {row["yaw_deg"]!r}')
    if stem in yaws:
      raise formats.FormatError(path, f'line {line}: a second row for {image}')
    yaws[stem] = yaw
  return yaws


@dataclasses.dataclass(frozen=True)
class _Face:
  stem: str
  landmarks: np.ndarray
  pose: np.ndarray
  yaw_deg: float
  bucket: int


class Aflw20003d(tfds.core.GeneratorBasedBuilder):
  """AFLW2000-3D: 2000 large-pose faces with 68 projected 3D landmarks and Pose_Para."""

  name = NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      Aflw20003dConfig(name='default', description='Buckets by Pose_Para yaw.'),
      Aflw20003dConfig(name='skip_bad', skip_bad_examples=True,
                       description='As default, skipping (and reporting) faces with bad files.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=real.features({
            'yaw_bucket': tfds.features.Scalar(dtype=np.int32),
            'yaw_deg': tfds.features.Scalar(dtype=np.float32),
            'yaw_source': tfds.features.Text(),
            'source': tfds.features.Text(),
        }),
        homepage='http://www.cbsr.ia.ac.cn/users/xiangyuzhu/projects/3DDFA/main.htm',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = real.manual_dir(dl_manager, NAME)
    if (manual / NAME).is_dir():  # a shared manual dir with a folder per dataset
      manual = manual / NAME
    root = real.dataset_dir(manual, FOLDER, (), MANUAL_DOWNLOAD_INSTRUCTIONS)
    stems = sorted({p.stem for p in root.glob('image*.jpg')} | {p.stem for p in
                                                                root.glob('image*.mat')})
    if not stems:
      raise real.MissingDataError(
          f'{NAME}: {manual} holds no {FOLDER}/imageNNNNN.jpg / .mat files. Download the data as '
          f'follows and pass the folder as the manual dir:\n{MANUAL_DOWNLOAD_INSTRUCTIONS}')
    if len(stems) != NUM_IMAGES:
      logging.warning('%s: found %d faces in %s; the real AFLW2000-3D has %d.', NAME, len(stems),
                      root, NUM_IMAGES)
    config = self.builder_config
    file_yaws, yaw_source = None, POSE_PARA_SOURCE
    if config.pose_file:
      pose_file = manual / config.pose_file  # An absolute pose_file stays as it is.
      file_yaws, yaw_source = read_pose_file(pose_file), pose_file.name
      missing = [stem for stem in stems if stem not in file_yaws]
      if missing:
        raise formats.FormatError(pose_file, f'no yaw for {len(missing)} image(s): '
                                  f'{", ".join(m + ".jpg" for m in missing[:10])}'
                                  f'{", ..." if len(missing) > 10 else ""}')

    def annotate(stem: str) -> tuple[str, _Face]:
      mat = formats.read_aflw2000_3d(root / f'{stem}.mat')
      yaw = file_yaws[stem] if file_yaws is not None else math.degrees(mat['pose_para'][1])
      return stem, _Face(stem, mat['landmarks'], geometry.pose_from_pose_para(mat['pose_para']),
                         yaw, yaw_bucket(yaw))

    report_dir = pathlib.Path(self.data_dir)
    faces = [face for _, face in real.guarded(
        stems, annotate, skip=config.skip_bad_examples, name=f'{NAME} annotations',
        report_dir=report_dir)]
    if not faces:
      raise formats.FormatError(root, 'no face has readable annotations (see the log)')
    splits = {'test': self._generate_examples(root, 'test', faces, yaw_source)}
    for bucket, split in enumerate(BUCKET_SPLITS):
      members = [face for face in faces if face.bucket == bucket]
      if members:  # TFDS cannot write an empty split.
        splits[split] = self._generate_examples(root, split, members, yaw_source)
      else:
        logging.warning('%s: no face in bucket %s by %s: the split is left out.', NAME, split,
                        yaw_source)
    return splits

  def _generate_examples(self, root: pathlib.Path, split: str, faces: list[_Face],
                         yaw_source: str) -> Iterator[tuple[str, real.Example]]:
    def read(face: _Face) -> tuple[str, real.Example]:
      source = f'{face.stem}.jpg'
      image = formats.read_image(root / source)
      return source, real.example(image, face.landmarks, face.pose, yaw_bucket=face.bucket,
                                  yaw_deg=face.yaw_deg, yaw_source=yaw_source, source=source)

    counts = collections.Counter()
    for key, example in real.guarded(faces, read, skip=self.builder_config.skip_bad_examples,
                                     name=f'{NAME}/{split}',
                                     report_dir=pathlib.Path(self.data_dir)):
      counts[example['yaw_bucket']] += 1
      yield key, example
    if split == 'test':
      logging.info('%s: |yaw| buckets [0, 30] / (30, 60] / > 60 deg by %s: %d / %d / %d faces.',
                   NAME, yaw_source, counts[0], counts[1], counts[2])
