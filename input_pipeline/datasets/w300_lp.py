"""`w300_lp`: 300W-LP (Zhu et al., "Face alignment across large poses: a 3D solution", CVPR 2016).

300W's faces re-rendered at large yaw by 3D fitting (3DDFA), the paper's training set for Table 3
(tested on `aflw2000_3d`). Read from the files the user downloaded (see
`MANUAL_DOWNLOAD_INSTRUCTIONS`) with `formats.read_image`, `formats.read_pose_para` and
`formats.read_300w_lp_landmarks`.

Layout: `300W_LP/{AFW,HELEN,IBUG,LFPW}/<stem>.jpg` + `<stem>.mat` (`Pose_Para`), the mirrored
copies `300W_LP/{AFW,...}_Flip/<stem>.jpg` (same basenames: examples are keyed by their path), and
`300W_LP/landmarks/<SUBSET>/<stem>_pts.mat`. Stems are `<SUBSET>_<300W image name>_<k>`, k the
rendered view (0 = the original pose).

Split `train`: 61,225 faces (AFW 5207, HELEN 37676, IBUG 1786, LFPW 16556), 122,450 with flips;
other counts are logged as a warning.

Features: the common ones of `real.features` plus `subset` (Text: AFW, HELEN, IBUG or LFPW),
`flipped` (bool) and `source` (Text: the image's path relative to `300W_LP/`, also the key).
  landmarks: `pts_3d` of `landmarks/<SUBSET>/<stem>_pts.mat` (the projected 3D landmarks, the 3D
    protocol's ground truth), or `pts_2d` (contour-snapped) with config `landmark_field='pts_2d'`;
    0-based (`formats.THREEDDFA_ORIGIN`). Never the image `.mat`'s `pt2d`: it is stale for the
    rotated views (k > 0).
  visibility: all True (300W-LP marks no occlusion).
  pose: `geometry.pose_from_pose_para(Pose_Para)`, converted to the project's convention.
  box: the landmarks' tight box.
Flipped copies (config `include_flips`, the 'with_flips' config) have no landmark files: their
landmarks are the unflipped image's mirrored, `geometry.flip_landmarks(landmarks, width)` (x ->
W - 1 - x, points permuted by `geometry.MIRROR_68`), and their pose is the unflipped pose with yaw
and roll negated (what a horizontal flip does in the project's convention). The `_Flip` folders'
own `.mat` files are not read; only their images are.

300W-LP holds views of 300W *test* images, which must stay out of training when testing on 300W.
Config `exclude_300w_test=True` (the 'exclude_300w_test' config) drops, flipped or not:
  IBUG: every image (300W's IBUG set is the challenging test set, 135 images);
  LFPW: stems `LFPW_image_test_*` (300W's `lfpw/testset/image_NNNN.png`; the train set's views are
    `LFPW_image_train_*`);
  HELEN: stems `HELEN_<name>_<k>` whose name is one of the 330 images of 300W's
    `helen/testset/` (`HELEN_TEST_NAMES`, the file names of that folder);
  AFW: nothing (300W uses AFW for training only).

Bad input: a missing, empty or damaged image, `.mat` or landmark file is a `formats.FormatError`
naming it: it stops the preparation by default; the 'skip_bad' config skips the face and reports it
(log and `bad_examples.txt` beside the data).
"""

import dataclasses
import logging
import pathlib
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import formats
from input_pipeline.datasets import real
from treemoe_jax import geometry

NAME = 'w300_lp'
FOLDER = '300W_LP'
SUBSETS = ('AFW', 'HELEN', 'IBUG', 'LFPW')
NUM_IMAGES = 61_225  # Without the flipped copies.
LANDMARK_FIELDS = ('pts_3d', 'pts_2d')
_FLIP = np.array([-1.0, 1.0, -1.0], np.float32)  # (yaw, pitch, roll) of a mirrored face.

# The 330 images of 300W's `helen/testset/` (part of 300W's common test set), by file name without
# the extension (as listed in the `helen/testset/` rows of PIPNet's
# `data/300w/face_landmarks_300w_valid_common.csv`); 300W-LP names their views `HELEN_<name>_<k>`.
HELEN_TEST_NAMES = frozenset("""
    296814969_3 2968560214_1 2968784797_1 296961468_1 2970690152_2 2971848745_1 2973812451_1
    2973812613_1 297461011_1 2975463532_1 2977452543_1 2978322154_1 2978322154_2 2980607773_1
    2981942448_1 2982058191_1 2983130985_1 2983659912_1 2983659920_1 2983659924_1 2984236559_1
    2984431316_1 2984478058_1 2985256877_1 2985256907_1 2986008801_1 2986046144_1 298620293_1
    2988554491_1 2988554491_2 2988557119_1 2988905072_1 2990717111_1 299189676_1 2993039649_1
    2993129254_1 2993871777_1 299527853_1 2996372177_1 2998446585_1 2998572157_1 2998572157_2
    3000401944_1 3000819872_1 3002247460_1 3002247464_1 3002568151_2 3002568151_3 3004312424_1
    3004338997_1 3005087184_1 3005381551_1 3006104548_1 3006823882_1 3006930100_1 3008360513_1
    300840911_1 300852540_1 3010358801_1 3012878684_1 301384259_1 3014505740_1 3016219064_1
    3017468498_1 3020509517_1 302142529_1 302142585_1 302142598_1 302148352_1 3022230063_1
    3023336098_1 3023909862_1 3025229116_1 3026147764_1 3026829129_1 3029583659_1 3029583859_1
    3030012395_1 3034068134_1 3035040633_1 3035557812_1 3035796193_1 3036412907_1 3036412907_2
    3036412907_3 3036412907_4 3036412907_5 3036476835_1 3036934213_1 3037891920_1 3038488195_1
    3038704879_2 3038732539_1 3038747613_1 3038768709_1 3039319098_1 3039563250_1 3039565724_1
    3039925276_1 3040240981_1 3041080378_1 3042655945_1 3042677096_1 3042677096_2 30427236_1
    30427236_2 3045005984_1 3045921676_1 3048153244_1 3048914345_1 3049194263_1 3049915594_1
    3050267766_1 3051471764_1 3051542838_1 3051765471_1 3051765471_2 3051975799_1 3052055699_1
    3052055699_2 3052817324_1 3052865023_1 3052865023_2 3052865023_3 3052865023_4 3052865023_5
    3053981414_1 30542618_1 305612849_1 3057282922_1 3057639344_1 3058776532_1 305917477_1
    305917477_2 3059898359_1 3059898383_1 3059914145_1 3059914145_2 3059914159_1 3059991197_1
    3059991217_1 3059991227_1 3059991235_1 3060400828_1 3061006494_1 3061668030_1 3065355522_1
    3066109411_1 3066644361_1 3067126321_1 3070875477_1 3071120472_1 3071550860_1 3071735588_1
    3073619793_1 307494478_1 3075293468_1 3075293468_2 3077501407_1 3077637317_1 3078135517_1
    3078332786_1 3079176108_1 3080573833_1 3080740886_1 3081187199_1 3081510905_1 3082881316_1
    308315761_1 308315761_2 308315761_3 3083968872_1 3084206931_1 3084329562_1 30844800_1
    313525679_1 3138240967_1 3138241291_1 313914487_1 3139620200_1 3141909424_1 3144473012_2
    3151235633_1 3152114098_1 315336719_1 3154364424_1 3155317888_1 3156458544_1 3159679449_1
    3160369021_1 3160584865_1 3160586857_1 3160850636_1 3160852076_1 3161007246_1 3161408082_1
    3163645286_1 3166166183_1 3166167569_1 3166944042_1 3166977555_1 3166996956_1 3166997470_1
    31681454_1 3168247070_1 3173028919_2 3173901928_1 3175828165_1 3176867704_1 3179042789_1
    3179878396_1 3180195675_1 3181052163_1 318440234_1 3186478027_1 3187466455_1 3187824420_1
    3187824420_2 3187824420_3 3191256033_1 3193158927_1 3193845284_1 3195123827_1 3197527888_1
    3198058669_1 3198136331_1 3201388986_1 3201451573_1 3202279106_1 3203248403_1 3203334240_1
    3207706370_2 3209573417_2 3210193974_1 3211099008_1 3211768569_1 3212378179_1 3213087169_2
    3213105453_1 3213107975_2 3213143311_1 3213153149_1 3213155161_2 3213167447_1 3213211241_1
    3213214947_2 3213215243_1 3213221051_1 3213221949_1 3213224447_1 3213229323_1 3213231361_1
    3213264433_1 3213270807_1 3213270807_2 3213270807_4 3213274513_1 3213507763_1 3213802370_1
    3213825562_1 3213949024_1 3213978420_1 3214010220_1 3214010220_3 3214021244_1 3214022978_1
    3214066418_2 3214097106_1 3214097106_2 3214115970_1 3214115970_3 3214120096_1 3214120096_4
    3214120096_5 3215987812_1 3217491791_1 3217492469_1 3217614198_1 3218864820_1 3218988613_1
    3218989431_1 3218990939_1 3218991897_1 3219692565_1 3219821966_1 3219850974_1 3220050079_1
    3220050079_2 3220402975_1 3222261569_1 3222262589_1 3223115234_1 3223164362_10 3226773050_1
    3227182502_1 3227200268_1 3227203804_1 3227323913_1 3230011778_1 3231797341_1 3233580660_1
    3234996955_1 3234997069_1 3236428731_1 3238436027_1 323855036_4 3239006545_1 3239209193_1
    3239637522_1 3241092906_1 3241295295_1 3243018729_1 3243602421_1 3247339235_1 3247810519_1
    3248183827_1 3248846504_1 3249818146_1 3251963224_1 3252000476_1 3252851380_1 3253427659_1
    3255054809_1 3255410296_1 325564774_1 3260548295_1 3260548295_2 3261640996_1 3262777136_1
    3266693323_1
""".split())

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
300W-LP (Zhu, Lei, Liu, Shi and Li, CVPR 2016): download 300W-LP.zip from the 3DDFA project page
http://www.cbsr.ia.ac.cn/users/xiangyuzhu/projects/3DDFA/main.htm (300W-LP:
http://www.cbsr.ia.ac.cn/users/xiangyuzhu/projects/3DDFA/Database/300W-LP/main.htm) and extract it
into <manual_dir>, so that <manual_dir>/300W_LP/ holds AFW, HELEN, IBUG, LFPW (images + .mat), their
AFW_Flip, HELEN_Flip, IBUG_Flip, LFPW_Flip copies and landmarks/{AFW,HELEN,IBUG,LFPW}/*_pts.mat.
(The manual dir itself may also be the 300W_LP folder.)
"""


@dataclasses.dataclass(eq=False)
class W300LpConfig(real.RealConfig):
  """Which landmarks, whether to add the flipped copies, whether to drop 300W test views."""
  landmark_field: str = 'pts_3d'  # 'pts_3d' (3D protocol ground truth) or 'pts_2d'.
  include_flips: bool = False
  exclude_300w_test: bool = False

  def __post_init__(self):
    if self.landmark_field not in LANDMARK_FIELDS:
      raise ValueError(f'landmark_field must be one of {LANDMARK_FIELDS}, got '
                       f'{self.landmark_field!r}')


def is_300w_test(subset: str, stem: str) -> bool:
  """Whether 300W-LP image `stem` of `subset` is a view of a 300W test image (module docstring)."""
  if subset == 'IBUG':
    return True
  if subset == 'LFPW':
    return stem.startswith('LFPW_image_test_')
  if subset == 'HELEN':
    return stem.removeprefix('HELEN_').rsplit('_', 1)[0] in HELEN_TEST_NAMES
  return False


@dataclasses.dataclass(frozen=True)
class _Item:
  subset: str
  stem: str
  flipped: bool

  @property
  def path(self) -> str:
    return f'{self.subset}{"_Flip" if self.flipped else ""}/{self.stem}.jpg'


class W300Lp(tfds.core.GeneratorBasedBuilder):
  """300W-LP: large-pose renderings of 300W with 68 landmarks and Pose_Para head poses."""

  name = NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [
      W300LpConfig(name='default', description='61,225 faces, pts_3d landmarks, no flips.'),
      W300LpConfig(name='skip_bad', skip_bad_examples=True,
                   description='As default, skipping (and reporting) faces with bad files.'),
      W300LpConfig(name='with_flips', include_flips=True,
                   description='With the flipped copies: 122,450 faces.'),
      W300LpConfig(name='exclude_300w_test', exclude_300w_test=True,
                   description='Without the views of 300W test images (IBUG, LFPW and HELEN '
                   'test): for training before testing on 300W.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=real.features({
            'subset': tfds.features.Text(),
            'flipped': tfds.features.Scalar(dtype=np.bool_),
            'source': tfds.features.Text(),
        }),
        homepage='http://www.cbsr.ia.ac.cn/users/xiangyuzhu/projects/3DDFA/main.htm',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    folders = SUBSETS + (tuple(f'{s}_Flip' for s in SUBSETS) if config.include_flips else ())
    manual = real.manual_dir(dl_manager, NAME)
    if (manual / NAME).is_dir():  # a shared manual dir with a folder per dataset
      manual = manual / NAME
    root = real.dataset_dir(manual, FOLDER, folders + ('landmarks',),
                            MANUAL_DOWNLOAD_INSTRUCTIONS)
    return {'train': self._generate_examples(root)}

  def _items(self, root: pathlib.Path) -> list[_Item]:
    """The images to read, sorted; logs counts that differ from the real set's."""
    config = self.builder_config
    stems = {(subset, flipped): sorted(p.stem for p in (root / folder).glob('*.jpg'))
             for subset in SUBSETS
             for flipped, folder in ((False, subset), (True, f'{subset}_Flip'))
             if not flipped or config.include_flips}
    found = sum(len(v) for (_, flipped), v in stems.items() if not flipped)
    if found != NUM_IMAGES:
      logging.warning('%s: found %d images in %s/{%s}; the real 300W-LP has %d.', NAME, found,
                      root, ','.join(SUBSETS), NUM_IMAGES)
    if config.include_flips:
      flips = sum(len(v) for (_, flipped), v in stems.items() if flipped)
      if flips != found:
        logging.warning('%s: found %d flipped images for %d images.', NAME, flips, found)
    items = [_Item(subset, stem, flipped) for (subset, flipped), names in stems.items()
             for stem in names]
    if config.exclude_300w_test:
      kept = [item for item in items if not is_300w_test(item.subset, item.stem)]
      logging.info('%s: dropped %d views of 300W test images, kept %d.', NAME,
                   len(items) - len(kept), len(kept))
      items = kept
    return items

  def _generate_examples(self, root: pathlib.Path) -> Iterator[tuple[str, real.Example]]:
    field = self.builder_config.landmark_field

    def read(item: _Item) -> tuple[str, real.Example]:
      image = formats.read_image(root / item.path)
      pose_para = formats.read_pose_para(root / item.subset / f'{item.stem}.mat')
      landmarks = formats.read_300w_lp_landmarks(
          root / 'landmarks' / item.subset / f'{item.stem}_pts.mat', field)
      pose = geometry.pose_from_pose_para(pose_para)
      if item.flipped:
        landmarks = geometry.flip_landmarks(landmarks, image.shape[1])
        pose = pose * _FLIP
      return item.path, real.example(image, landmarks, pose, subset=item.subset,
                                     flipped=item.flipped, source=item.path)

    yield from real.guarded(self._items(root), read,
                            skip=self.builder_config.skip_bad_examples, name=f'{NAME}/train',
                            report_dir=pathlib.Path(self.data_dir))
