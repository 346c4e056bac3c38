"""Tiny fake copies of the real datasets, in their real on-disk formats, for tests.

Each `write_*` writes files the way the real dataset ships them (SPEC "Real dataset formats") under
`root` (use it as the TFDS manual dir) and returns what it wrote: per face the 0-based values the
builders should produce, so tests compare against numbers computed here, never by the code under
test.

Faces are `geometry.MEAN_FACE_3D` seen under a KNOWN pose:
  COFW / COFW-68: the project's camera (pixel = t + s (Rz(roll) Rx(pitch) Ry(yaw) X)[:2], right-
    hand-rule matrices, written out below), the 29 points mapped from the 68 with
    `protocols.COFW_29`;
  300W-LP / AFLW2000-3D: 3DDFA's forward model for a `Pose_Para` (RotationMatrix.m's R = R_x R_y
    R_z, written out below; the mean face in the Basel model's frame, micrometres, y up;
    v = s R X + t; image y = height - 1 - v_y, 0-based).
Coordinates are rounded to 1/64 pixel so that the files' 1-based values and the 0-based values
are exact in float32 (the readers' shift is then exact too).

Files: MATLAB v7.3 (HDF5 with MATLAB's 512-byte header, cell arrays as object references,
arrays transposed) via h5py for COFW; MAT 5 via `scipy.io.savemat` for COFW-68, 300W-LP and
AFLW2000-3D; jpgs via PIL.
"""

import pathlib

import h5py
import numpy as np
from PIL import Image
import scipy.io

from input_pipeline import formats
from treemoe_jax import geometry
from treemoe_jax.evaluate import protocols

MEAN = geometry.MEAN_FACE_3D.astype(np.float64)
DEG = np.pi / 180

# The standard 68-point mirror pairs (0-based), written out here so that tests do not take the
# expected flip from `geometry.MIRROR_68`, the code under test.
MIRROR_PAIRS = ([(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
                + [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47),
                   (41, 46), (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63),
                   (65, 67)])


def mirror_permutation() -> np.ndarray:
  mirror = np.arange(68)
  for a, b in MIRROR_PAIRS:
    mirror[a], mirror[b] = b, a
  return mirror


def mirrored(landmarks: np.ndarray, width: int) -> np.ndarray:
  """Landmarks [68, 2] of the left-right flipped image: x -> W - 1 - x, sides swapped."""
  out = np.asarray(landmarks)[mirror_permutation()].copy()
  out[:, 0] = width - 1 - out[:, 0]
  return out


def _quantize(points: np.ndarray) -> np.ndarray:
  return (np.round(np.asarray(points, np.float64) * 64) / 64).astype(np.float32)


def project(pose, *, scale: float, shift) -> np.ndarray:
  """MEAN_FACE_3D under the project's camera for (yaw, pitch, roll): [68, 2] 0-based pixels."""
  yaw, pitch, roll = pose
  c, s = np.cos, np.sin
  ry = np.array([[c(yaw), 0, s(yaw)], [0, 1, 0], [-s(yaw), 0, c(yaw)]])
  rx = np.array([[1, 0, 0], [0, c(pitch), -s(pitch)], [0, s(pitch), c(pitch)]])
  rz = np.array([[c(roll), -s(roll), 0], [s(roll), c(roll), 0], [0, 0, 1]])
  return _quantize(np.asarray(shift) + scale * MEAN @ (rz @ rx @ ry)[:2].T)


def ddfa_rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
  """3DDFA's RotationMatrix.m (angle_x = pitch, angle_y = yaw, angle_z = roll), as written there."""
  c, s = np.cos, np.sin
  r_x = np.array([[1, 0, 0], [0, c(pitch), s(pitch)], [0, -s(pitch), c(pitch)]])
  r_y = np.array([[c(yaw), 0, -s(yaw)], [0, 1, 0], [s(yaw), 0, c(yaw)]])
  r_z = np.array([[c(roll), s(roll), 0], [-s(roll), c(roll), 0], [0, 0, 1]])
  return r_x @ r_y @ r_z


def ddfa_project(pose_para, height: int) -> np.ndarray:
  """[3, 68] (x, y 0-based image pixels; z) of the mean face under 3DDFA's forward model."""
  pitch, yaw, roll, tx, ty, tz, scale = np.asarray(pose_para, np.float64)
  vertex = (MEAN * [1e4, -1e4, 1e4]).T  # BFM frame: x to the subject's left, y up, micrometres.
  v = scale * ddfa_rotation(pitch, yaw, roll) @ vertex + np.array([[tx], [ty], [tz]])
  return np.stack([v[0], height - 1 - v[1], v[2]])


def _image(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
  """A smooth random picture (jpg-friendly): a gradient plus a few blobs."""
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([30 + 40 * k + 100 * x / width + 50 * y / height for k in range(channels)], -1)
  for _ in range(3):
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    base += 60 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 200.0)[..., None]
  image = np.clip(base, 0, 255).astype(np.uint8)
  return image[..., 0] if channels == 1 else image


def _write_jpg(path: pathlib.Path, image: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(image).save(path, quality=95)


def _savemat(path: pathlib.Path, variables: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(path, variables, do_compression=False)


# ---------------------------------------------------------------------------------------------
# COFW (MATLAB v7.3) and COFW-68.

COFW_TEST_POSES_DEG = ((0, 0, 0), (25, -10, 8), (-40, 15, -12), (10, 5, 20), (-15, -20, 5))
COFW_TRAIN_POSES_DEG = ((30, 10, -5), (-20, 0, 10), (5, -15, 0))


def _matlab_v73_header() -> bytes:
  """The 512-byte user block MATLAB writes before the HDF5 data of a v7.3 file."""
  text = (b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 '
          b'HDF5 schema 1.00 .')
  return text.ljust(116, b' ') + b'\0' * 8 + b'\x00\x02' + b'IM'


def write_cofw_mat(path: pathlib.Path, split: str, images: list[np.ndarray], phis: np.ndarray,
                   bboxes: np.ndarray) -> None:
  """A COFW v7.3 file as MATLAB writes it: images (cell, N x 1) [H, W, 3] or [H, W] uint8, phis
  N x 87 (1-based x, y, occlusion), bboxes N x 4 [x y w h] (1-based)."""
  names = {'train': ('IsTr', 'phisTr', 'bboxesTr'), 'test': ('IsT', 'phisT', 'bboxesT')}[split]
  path.parent.mkdir(parents=True, exist_ok=True)
  with h5py.File(path, 'w', userblock_size=512) as f:
    refs = f.create_group('#refs#')
    references = []
    for i, image in enumerate(images):
      dataset = refs.create_dataset(f'i{i}', data=np.asarray(image, np.uint8).T)  # (3, W, H)
      dataset.attrs['MATLAB_class'] = np.bytes_('uint8')
      references.append(dataset.ref)
    cell = f.create_dataset(names[0], shape=(1, len(images)), dtype=h5py.ref_dtype)
    cell[0, :] = references
    cell.attrs['MATLAB_class'] = np.bytes_('cell')
    for name, values in ((names[1], phis), (names[2], bboxes)):
      dataset = f.create_dataset(name, data=np.asarray(values, np.float64).T)  # N x K -> (K, N)
      dataset.attrs['MATLAB_class'] = np.bytes_('double')
  with open(path, 'r+b') as f:
    f.write(_matlab_v73_header())


def write_cofw(root, *, cofw68: str | None = 'COFW68_Data', cofw68_boxes: bool = True,
               test_poses_deg=COFW_TEST_POSES_DEG, train_poses_deg=COFW_TRAIN_POSES_DEG,
               seed: int = 0) -> dict:
  """`root/cofw/COFW_{train,test}_color.mat` and, unless `cofw68` is None, COFW-68's test
  annotations in `root/cofw/<cofw68>/` (and its box file if `cofw68_boxes`).

  Test image 0 is RGB, test image 1 grayscale (stored 2-D), the rest RGB. Returns
  {'dir': the COFW folder, 'train': faces, 'test': faces, 'cofw68_dir': folder or None}, faces a
  dict of lists / arrays: 'images' ([H, W, 3] or [H, W] uint8, as stored), 'poses' [N, 3]
  (yaw, pitch, roll radians, the project's convention), 'landmarks_29' [N, 29, 2] 0-based,
  'occluded_29' [N, 29] bool, 'cofw_boxes' [N, 4] 0-based (x0, y0, x1, y1), 'projected_68'
  [N, 68, 2] (the 68-point face the 29 points were mapped from; in no file for the train split);
  the test split also COFW-68's 'landmarks_68' [N, 68, 2] 0-based (= 'projected_68'),
  'occluded_68' [N, 68] bool and 'cofw68_boxes' [N, 4] (written only if `cofw68` is set).
  """
  rng = np.random.default_rng(seed)
  folder = pathlib.Path(root) / 'cofw'
  mapping = protocols.COFW_29.matrix()
  out = {'dir': folder, 'cofw68_dir': folder / cofw68 if cofw68 else None}
  for split, poses in (('train', train_poses_deg), ('test', test_poses_deg)):
    n = len(poses)
    faces = {'images': [], 'poses': np.asarray(poses, np.float64) * DEG}
    lm68, lm29 = [], []
    for i, pose in enumerate(faces['poses']):
      height, width = 96 + 4 * i, 104 + 2 * i
      channels = 1 if (split == 'test' and i == 1) else 3
      faces['images'].append(_image(rng, height, width, channels))
      points68 = project(pose, scale=3.5, shift=(width / 2, height / 2 - 15))
      lm68.append(points68)
      lm29.append(_quantize(mapping @ points68.astype(np.float64)))
    faces['landmarks_68'] = np.stack(lm68)
    faces['landmarks_29'] = np.stack(lm29)
    faces['occluded_29'] = rng.random((n, 29)) < 0.3
    faces['occluded_68'] = rng.random((n, 68)) < 0.3
    corner = _quantize(faces['landmarks_29'].min(1) - rng.uniform(2, 6, (n, 2)))
    size = _quantize(rng.uniform(50, 60, (n, 2)))
    faces['cofw_boxes'] = np.concatenate([corner, corner + size], -1)
    origin = formats.COFW_ORIGIN
    phis = np.concatenate([faces['landmarks_29'][..., 0] + origin,
                           faces['landmarks_29'][..., 1] + origin,
                           faces['occluded_29'].astype(np.float64)], -1)  # N x 87
    write_cofw_mat(folder / f'COFW_{split}_color.mat', split, faces['images'], phis,
                   np.concatenate([corner + origin, size], -1))
    faces['projected_68'] = faces['landmarks_68']
    if split == 'train':
      for key in ('landmarks_68', 'occluded_68'):
        del faces[key]  # COFW-68 annotates the test set only.
    else:
      corner68 = _quantize(faces['landmarks_68'].min(1) - rng.uniform(1, 4, (n, 2)))
      size68 = _quantize(rng.uniform(55, 65, (n, 2)))
      faces['cofw68_boxes'] = np.concatenate([corner68, corner68 + size68], -1)
      if cofw68:
        for i in range(n):
          _savemat(folder / cofw68 / 'test_annotations' / f'{i + 1}_points.mat', {
              'Points': faces['landmarks_68'][i].astype(np.float64) + origin,
              'Occ': faces['occluded_68'][i][None].astype(np.float64)})
        if cofw68_boxes:
          _savemat(folder / cofw68 / 'cofw68_test_bboxes.mat',
                   {'bboxes': np.concatenate([corner68 + origin, size68], -1).astype(np.float64)})
    out[split] = faces
  return out


# ---------------------------------------------------------------------------------------------
# 300W-LP and AFLW2000-3D (MAT 5).

# stem -> Pose_Para angles (pitch, yaw, roll), radians, 3DDFA's convention.
W300_LP_FACES = {
    'AFW/AFW_134212_1_0': (0.1, 0.4, -0.1),
    'HELEN/HELEN_100032540_1_3': (-0.2, -0.8, 0.15),  # A HELEN training image.
    'HELEN/HELEN_296814969_3_0': (0.05, 0.2, 0.05),  # A 300W helen/testset image.
    'IBUG/IBUG_image_003_1_2': (0.3, 1.1, 0.2),
    'LFPW/LFPW_image_test_0001_0': (-0.1, 0.6, 0.0),
    'LFPW/LFPW_image_train_0003_5': (0.25, -1.2, -0.2),
}
W300_TEST_STEMS = ('HELEN_296814969_3_0', 'IBUG_image_003_1_2', 'LFPW_image_test_0001_0')
SIZE_3D = 120  # 300W-LP / AFLW2000-3D images are 450 x 450; small ones keep the tests fast.
_SCALE_3D, _SHIFT_3D = 4e-4, (60.0, 77.0, 0.0)  # About 4 px per cm of the mean face.


def _pose_para(angles, shift=_SHIFT_3D, scale=_SCALE_3D) -> np.ndarray:
  return np.array([*angles, *shift, scale], np.float32)


def write_w300_lp(root, *, faces: dict | None = None, flips: bool = True, seed: int = 0) -> dict:
  """`root/300W_LP/` with `<SUBSET>/<stem>.jpg + .mat`, `landmarks/<SUBSET>/<stem>_pts.mat` and
  (if `flips`) `<SUBSET>_Flip/<stem>.jpg + .mat` for `faces` ({'SUBSET/stem': (pitch, yaw, roll)},
  default `W300_LP_FACES`).

  `pts_3d` is the mean face under 3DDFA's model for the face's `Pose_Para`; `pts_2d` is `pts_3d`
  with the jaw moved 1.5 px outwards (contour snapping, and distinguishable from it); the image
  `.mat`'s `pt2d` is stale (the frontal view's points), as in the real rotated views.
  Returns {'dir': the 300W_LP folder, 'faces': {path relative to it: face}}, face a dict:
  'subset', 'stem', 'flipped', 'image' (uint8 [H, W, 3] before jpg compression), 'pose_para'
  [7] (the unflipped file's), 'pts_3d' and 'pts_2d' [68, 2] 0-based as the builder should give
  them (mirrored for flipped copies), 'width'.
  """
  rng = np.random.default_rng(seed)
  folder = pathlib.Path(root) / '300W_LP'
  origin = formats.THREEDDFA_ORIGIN
  out = {}
  for name, angles in (W300_LP_FACES if faces is None else faces).items():
    subset, stem = name.split('/')
    pose_para = _pose_para(angles)
    pts_3d = _quantize(ddfa_project(pose_para, SIZE_3D)[:2].T)
    pts_2d = pts_3d.copy()
    pts_2d[:17, 0] += np.where(pts_3d[:17, 0] < pts_3d[27, 0], -1.5, 1.5)
    stale = _quantize(ddfa_project(_pose_para((0.0, 0.0, 0.0)), SIZE_3D)[:2])  # (2, 68)
    image = _image(rng, SIZE_3D, SIZE_3D)
    mat = {'Pose_Para': pose_para[None], 'pt2d': stale.astype(np.float64) + origin,
           'Shape_Para': rng.normal(size=(199, 1)), 'Exp_Para': rng.normal(size=(29, 1)),
           'roi': np.array([[10.0, 10.0, 110.0, 110.0]])}
    _write_jpg(folder / subset / f'{stem}.jpg', image)
    _savemat(folder / subset / f'{stem}.mat', mat)
    _savemat(folder / 'landmarks' / subset / f'{stem}_pts.mat',
             {'pts_2d': pts_2d.astype(np.float64) + origin,
              'pts_3d': pts_3d.astype(np.float64) + origin})
    face = {'subset': subset, 'stem': stem, 'flipped': False, 'image': image,
            'pose_para': pose_para, 'pts_3d': pts_3d, 'pts_2d': pts_2d, 'width': SIZE_3D}
    out[f'{subset}/{stem}.jpg'] = face
    if flips:
      flipped = np.ascontiguousarray(image[:, ::-1])
      _write_jpg(folder / f'{subset}_Flip' / f'{stem}.jpg', flipped)
      _savemat(folder / f'{subset}_Flip' / f'{stem}.mat', mat)  # Not read by the builder.
      out[f'{subset}_Flip/{stem}.jpg'] = {
          **face, 'flipped': True, 'image': flipped,
          'pts_3d': mirrored(pts_3d, SIZE_3D), 'pts_2d': mirrored(pts_2d, SIZE_3D)}
  return {'dir': folder, 'faces': out}


# stem -> Pose_Para angles (pitch, yaw, roll), radians; |yaw| 17, 40, 69, 74, 52, 29 degrees.
AFLW2000_FACES = {
    'image00002': (0.1, 0.3, 0.05),
    'image00004': (-0.2, -0.7, 0.1),
    'image00006': (0.1, 1.2, -0.1),
    'image00008': (0.0, -1.3, 0.0),
    'image00013': (0.3, 0.9, 0.2),
    'image00019': (-0.1, -0.5, -0.15),
}


def write_aflw2000_3d(root, *, faces: dict | None = None, seed: int = 0) -> dict:
  """`root/AFLW2000/imageNNNNN.jpg + .mat` for `faces` ({stem: (pitch, yaw, roll)}, default
  `AFLW2000_FACES`): `pt3d_68` (3, 68) = the mean face under 3DDFA's model (x, y 1-based, z),
  `Pose_Para` (1, 7) float32, `pt2d` (2, 21) with -1 for missing points, `roi`.

  Returns {'dir': the AFLW2000 folder, 'faces': {stem: face}}, face a dict: 'image' (uint8
  [H, W, 3] before jpg compression), 'pose_para' [7], 'landmarks' [68, 2] 0-based, 'yaw_deg'
  (Pose_Para's yaw in degrees).
  """
  rng = np.random.default_rng(seed)
  folder = pathlib.Path(root) / 'AFLW2000'
  origin = formats.THREEDDFA_ORIGIN
  out = {}
  for stem, angles in (AFLW2000_FACES if faces is None else faces).items():
    pose_para = _pose_para(angles)
    pt3d = ddfa_project(pose_para, SIZE_3D)
    landmarks = _quantize(pt3d[:2].T)
    pt2d = np.full((2, 21), -1.0)
    pt2d[:, :10] = landmarks[17:27].T + origin
    image = _image(rng, SIZE_3D, SIZE_3D)
    _write_jpg(folder / f'{stem}.jpg', image)
    _savemat(folder / f'{stem}.mat', {
        'pt3d_68': np.concatenate([landmarks.T.astype(np.float64) + origin, pt3d[2:]]),
        'Pose_Para': pose_para[None], 'pt2d': pt2d, 'roi': np.array([[5.0, 5.0, 115.0, 115.0]]),
        'Shape_Para': rng.normal(size=(199, 1)), 'Exp_Para': rng.normal(size=(29, 1))})
    out[stem] = {'image': image, 'pose_para': pose_para, 'landmarks': landmarks,
                 'yaw_deg': float(np.degrees(pose_para[1]))}
  return {'dir': folder, 'faces': out}


def write_pose_file(path, yaws_deg: dict) -> pathlib.Path:
  """A pose file for `aflw2000_3d`'s `pose_file`: CSV `image,yaw_deg`, one row per image."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  rows = ''.join(f'{stem}.jpg,{yaw}\n' for stem, yaw in yaws_deg.items())
  path.write_text('image,yaw_deg\n' + rows)
  return path
