"""`cofw`: Caltech Occluded Faces in the Wild (Burgos-Artizzu et al., ICCV 2013), 29 points.

Read from the files the user downloaded (see `MANUAL_DOWNLOAD_INSTRUCTIONS`) with
`formats.read_cofw` (MATLAB v7.3) and, optionally, COFW-68's test annotations (Ghiasi and Fowlkes,
`formats.read_cofw68_points` / `read_cofw68_boxes`).

Splits: `train` (`COFW_train_color.mat`: `IsTr`, `phisTr`, `bboxesTr`) and `test`
(`COFW_test_color.mat`: 507 faces). The paper tests on COFW only: the protocol maps predicted 68
points to COFW's 29 (`treemoe_jax.geometry.COFW_29`) and compares them with `landmarks_29`.

Features: the common ones of `real.features` plus
  landmarks_29 float32 [29, 2]: COFW's points, 0-based (the file's 1-based MATLAB pixels - 1);
  occluded_29 bool [29]: COFW's occlusion flags (1 = occluded in the file);
  has_68 bool: whether `landmarks` / `visibility` are real 68-point annotations (COFW-68);
  cofw_box float32 [4]: COFW's own face box (`bboxes`), 0-based (x0, y0, x1, y1);
  cofw68_box float32 [4]: COFW-68's box (`cofw68_test_bboxes.mat`), all zeros where that file is
    absent and on the train split;
  source Text: 'IsTr[i]' / 'IsT[i]', i the 0-based index into the file's cell array (COFW-68's
    annotation of test face i is `test_annotations/{i + 1}_points.mat`). Also the example's key.

The common features, by case:
  has_68 True (test split, COFW-68 present): `landmarks` = COFW-68's `Points` - 1, `visibility` =
    not `Occ`, `box` = the 68 points' tight box, `pose` = `real.pose_labels` of the 68 points (the
    paper's "inferred from the landmark positions").
  has_68 False (train split, or no COFW-68): there is no 68-point ground truth. `landmarks` is a
    least-squares *estimate*, for cropping only and never for a metric: the mean face
    (`geometry.MEAN_FACE_3D`) under the weak-perspective camera fitted to the 29 points (through
    the 68 -> 29 map `markup.COFW_29`), plus the minimum-norm correction that makes the map of
    the estimate agree with the 29 points in the least-squares sense. `visibility` is all True
    (nothing is known per 68-point landmark; use `occluded_29`), `box` = the 29 points' tight box,
    `pose` = the rotation of that same fit (`pose_fit.fit_weak_perspective` of the mapped mean
    face, weights 0 on the points the 68-point markup lacks or that move with the jaw: 5, 7 (lower
    brow mid-points), 26, 27 (lower lip), 28 (chin)).

Bad input: the two COFW files are read whole, so a damaged one always stops the preparation with a
`formats.FormatError` naming it. A bad COFW-68 annotation file (or a face whose points cannot be
fitted) stops it too by default; the 'skip_bad' config skips that face and reports it (log and
`bad_examples.txt` beside the data).
"""

import logging
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import formats
from input_pipeline.datasets import real
from treemoe_jax import geometry
from treemoe_jax.geometry import head_pose as pose_fit
from treemoe_jax.geometry import markup

NAME = 'cofw'
FILES = {'train': 'COFW_train_color.mat', 'test': 'COFW_test_color.mat'}
NUM_TEST = 507  # COFW's test set; COFW-68 annotates these faces.
# Folder names accepted for COFW-68 (the benchmark repository's own is COFW68_Data), each looked
# for in the COFW folder; a clone of the repository (cofw68-benchmark/COFW68_Data) works too.
COFW68_DIRS = ('cofw68', 'COFW68', 'COFW68_Data', 'cofw68_benchmark', 'cofw68-benchmark',
               'cofw68-benchmark/COFW68_Data', 'cofw68_benchmark/COFW68_Data')
COFW68_BOXES = 'cofw68_test_bboxes.mat'

# The 68 -> 29 map as a matrix [29, 68], and the 29-point mean face it induces.
_MAP = markup.COFW_29.matrix()
_MEAN_29 = _MAP @ geometry.MEAN_FACE_3D.astype(np.float64)
# 29-point fit weights: 0 for 5, 7 (the lower brow mid-points, which the 68-point markup lacks: the
# map's stand-ins for them lie elsewhere on the mean face) and for the points that move with the
# mandible, 26-28 (pose_fit.POINT_WEIGHTS leaves those out of 68-point fits).
_WEIGHTS_29 = np.ones(29)
_WEIGHTS_29[[5, 7, 26, 27, 28]] = 0.0

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
COFW (Burgos-Artizzu, Perona and Dollar, "Robust face landmark estimation under occlusion",
ICCV 2013): download COFW_color.zip from the authors' page (http://www.vision.caltech.edu/xpburgos/
ICCV13/, now in Caltech's data repository https://data.caltech.edu, "Caltech Occluded Faces in the
Wild") and put COFW_train_color.mat and COFW_test_color.mat (MATLAB v7.3 files) in
<manual_dir>/cofw/ (or in <manual_dir> itself).

Optional, for 68-point ground truth on the test split (COFW-68, Ghiasi and Fowlkes, CVPR 2014):
copy the folder COFW68_Data of https://github.com/golnazghiasi/cofw68-benchmark (it holds
test_annotations/{1..507}_points.mat and cofw68_test_bboxes.mat) into the same folder. Accepted
folder names: COFW68_Data, cofw68, COFW68, cofw68_benchmark, or a clone of the repository
(cofw68-benchmark/COFW68_Data). Without it the test split has has_68 = False.
"""


def find_cofw68(root: pathlib.Path) -> pathlib.Path | None:
  """The COFW-68 folder (holding `test_annotations/`) inside the COFW folder, or None."""
  for name in COFW68_DIRS:
    if (root / name / 'test_annotations').is_dir():
      return root / name
  return None


def fit_29(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(pose (yaw, pitch, roll) [3], 68-point estimate [68, 2]) from COFW's 29 points [29, 2].

  The mean face under the weak-perspective camera fitted to the 29 points (through `_MAP`), then
  the minimum-norm correction x += pinv(MAP) (y - MAP x): MAP x matches y in the least-squares
  sense (exactly, unless two COFW points have the same 68-point sources). ValueError when the
  points cannot be fitted (degenerate).
  """
  rotation, scale, shift = pose_fit.fit_weak_perspective(points, weights=_WEIGHTS_29,
                                                         model=_MEAN_29)
  pose = pose_fit.pose_from_rotation(rotation).astype(np.float32)
  mean = geometry.MEAN_FACE_3D.astype(np.float64)
  base = shift + scale * mean @ rotation[:2].T
  estimate = base + np.linalg.pinv(_MAP) @ (points - _MAP @ base)
  return pose, estimate.astype(np.float32)


class Cofw(tfds.core.GeneratorBasedBuilder):
  """COFW: 29 points with occlusion flags; COFW-68's 68 points on the test split when present."""

  name = NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      real.RealConfig(name='default', description='Stops at the first bad file.'),
      real.RealConfig(name='skip_bad', skip_bad_examples=True,
                      description='Skips (and reports) faces whose files are bad.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=real.features({
            'landmarks_29': tfds.features.Tensor(shape=(29, 2), dtype=np.float32),
            'occluded_29': tfds.features.Tensor(shape=(29,), dtype=np.bool_),
            'has_68': tfds.features.Scalar(dtype=np.bool_),
            'cofw_box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
            'cofw68_box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
            'source': tfds.features.Text(),
        }, encoding='png'),  # Lossless: the pixels come from the .mat, not from a jpg.
        homepage='http://www.vision.caltech.edu/xpburgos/ICCV13/',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = real.dataset_dir(real.manual_dir(dl_manager, NAME), NAME, tuple(FILES.values()),
                            MANUAL_DOWNLOAD_INSTRUCTIONS)
    cofw68 = find_cofw68(root)
    if cofw68 is None:
      logging.info('%s: no COFW-68 folder (%s) in %s: the test split has has_68 = False.', NAME,
                   ', '.join(COFW68_DIRS), root)
    return {split: self._generate_examples(root, split, cofw68 if split == 'test' else None)
            for split in FILES}

  def _generate_examples(self, root: pathlib.Path, split: str, cofw68: pathlib.Path | None
                         ) -> Iterator[tuple[str, real.Example]]:
    data = formats.read_cofw(root / FILES[split])  # A bad file stops here, whatever the config.
    if data['split'] != split:
      raise formats.FormatError(root / FILES[split], f'holds the {data["split"]} variables, '
                                f'expected the {split} ones')
    num = len(data['images'])
    if split == 'test' and num != NUM_TEST:
      logging.warning('%s: %s holds %d faces; COFW\'s test set has %d.', NAME, FILES[split], num,
                      NUM_TEST)
    boxes68 = None
    if cofw68 is not None and (cofw68 / COFW68_BOXES).exists():
      boxes68 = formats.read_cofw68_boxes(cofw68 / COFW68_BOXES)
      if len(boxes68) != num:
        raise formats.FormatError(cofw68 / COFW68_BOXES, f'holds {len(boxes68)} boxes for the '
                                  f'{num} faces of {FILES[split]}')
    variable = 'IsT' if split == 'test' else 'IsTr'

    def read(i: int) -> tuple[str, real.Example]:
      source = f'{variable}[{i}]'
      points29 = data['landmarks'][i]
      extra: dict[str, Any] = {
          'landmarks_29': points29, 'occluded_29': data['occluded'][i],
          'cofw_box': data['boxes'][i], 'source': source,
          'cofw68_box': boxes68[i] if boxes68 is not None else np.zeros(4, np.float32)}
      if cofw68 is not None:
        points68, occluded68 = formats.read_cofw68_points(
            cofw68 / 'test_annotations' / f'{i + 1}_points.mat')
        try:
          pose = real.pose_labels(points68)
        except ValueError as e:
          raise formats.FormatError(cofw68 / 'test_annotations' / f'{i + 1}_points.mat',
                                    f'no pose fits these points ({e})') from None
        return source, real.example(data['images'][i], points68, pose, visibility=~occluded68,
                                    has_68=True, **extra)
      try:
        pose, estimate = fit_29(points29)
      except ValueError as e:
        raise formats.FormatError(root / FILES[split],
                                  f'{source}: no pose fits its 29 points ({e})') from None
      example = real.example(data['images'][i], estimate, pose, has_68=False, **extra)
      example['box'] = formats.box_of(points29)
      return source, example

    yield from real.guarded(list(range(num)), read, skip=self.builder_config.skip_bad_examples,
                            name=f'{NAME}/{split}', report_dir=pathlib.Path(self.data_dir))
