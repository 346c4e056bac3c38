"""`synthetic_faces`: the embedded, procedurally rendered face set (prepared locally, no download).

It stands in for 300W / 300W-LP / AFLW2000-3D / COFW on machines that cannot download them, so the
main job and the tests run anywhere. Faces come from `input_pipeline.synthetic.render_faces`.

Splits:
  train: `num_train` faces drawn from `train_pose_distribution` ('wide' by default: yaw over
    [-90, 90] deg like 300W-LP; 'frontal' for a 300W-like set).
  test: `num_test` faces, 'wide', occluders on `occlusion_fraction` of them.
  test_* views: *separately rendered* sets of `num_per_view` faces each (not subsets of `test`),
    like the paper's separate test sets. Each renders from its own pose / occlusion settings and
    keeps only faces whose rendered labels pass its predicate (rejection sampling), so a view holds
    what its name says whatever the config's occlusion fraction, and is never empty:
      test_yaw_0_30, test_yaw_30_60, test_yaw_60_90: |yaw| in [0, 30), [30, 60), [60, 90] deg
        (AFLW2000-3D buckets; equal sizes, so the paper's mean over buckets weighs them equally);
      test_frontal: |yaw| < 30, |pitch| < 20, |roll| < 20 deg and no occluder (300W common);
      test_large_pose: |yaw| >= 45 or |pitch| >= 30 or |roll| >= 30 deg (IBUG);
      test_occluded: frontal-distribution faces, each with an occluder hiding at least
        `OCCLUDED_MIN_POINTS` landmarks (COFW).
  validation, validation_*: the test split and views again, rendered from seeds of their own:
    where choices are made (config.eval_split, experiments), so that the test faces are read
    only for the final tables.
All splits render at most `chunk_size` faces at a time, so memory stays bounded by one chunk.

Features: image uint8 [S, S, 1] (S = image_size > 150), landmarks float32 [68, 2] (x, y) 0-based
pixel centres, visibility bool [68], occluded bool [68] (hidden by an external occluder, COFW-style),
pose float32 [3] (yaw, pitch, roll) radians, box float32 [4] (x0, y0, x1, y1) of the landmarks.
"""

import dataclasses
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import synthetic
from input_pipeline import synthetic_splits
# The splits' faces are defined TensorFlow-free in synthetic_splits; these names stay here too.
from input_pipeline.synthetic_splits import MAX_REJECTION, OCCLUDED_MIN_POINTS, VIEWS, View  # pylint: disable=unused-import


@dataclasses.dataclass(eq=False)
class SyntheticFacesConfig(tfds.core.BuilderConfig):
  """Sizes, seed and rendering knobs of one prepared copy; a custom one is a new instance."""
  num_train: int = 4000
  num_test: int = 1000
  num_per_view: int = 300
  seed: int = 0
  image_size: int = 256
  train_pose_distribution: str = 'wide'
  occlusion_fraction: float = 0.2
  chunk_size: int = 256  # At most this many faces rendered at a time: bounds preparation memory.
  processes: int = 0  # Worker processes rendering chunks ahead; 0 = one per CPU core.

  def __post_init__(self):
    self.validate()

  def validate(self) -> None:
    """Raises ValueError on sizes or rendering values that cannot make a usable dataset."""
    sizes = {k: getattr(self, k) for k in ('num_train', 'num_test', 'num_per_view', 'chunk_size')}
    if min(sizes.values()) < 1:
      raise ValueError(f'Sizes must be >= 1, got {sizes}.')
    if self.seed < 0:
      raise ValueError(f'seed must be >= 0, got {self.seed}.')
    if self.image_size <= 150:
      raise ValueError(f'image_size must exceed the 150 px crop, got {self.image_size}.')
    for split in synthetic_splits.SPLIT_IDS:
      self.render_config(split).validate()

  def num_examples(self, split: str) -> int:
    return synthetic_splits.num_examples(self, split)

  def render_config(self, split: str) -> synthetic.RenderConfig:
    """The renderer's settings for `split`: test and views are wide unless the view says otherwise."""
    return synthetic_splits.render_config(self, split)


class SyntheticFaces(tfds.core.GeneratorBasedBuilder):
  """Rendered faces with exact landmarks, visibility, occlusion and head pose."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'Fixed-size chunks rendered in parallel; faster renderer.',
                   '1.2.0': 'validation split and views (train and test faces unchanged).'}
  BUILDER_CONFIGS = [
      SyntheticFacesConfig(
          name='default',
          description='4000 train / 1000 test / 300 per view faces, 256 px.'),
      SyntheticFacesConfig(
          name='large', num_train=16000,
          description='16000 train / 1000 test / 300 per view faces, 256 px: the default\'s test '
                      'faces, four times its train faces (docs/learning.md: no gain at 2000 steps).'),
      SyntheticFacesConfig(
          name='small', num_train=512, num_test=256, num_per_view=64, image_size=200,
          description='512 train / 256 test / 64 per view faces, 200 px: tests and CPU runs.'),
      SyntheticFacesConfig(
          name='tiny', num_train=64, num_test=32, num_per_view=8, image_size=176,
          description='64 train / 32 test / 8 per view faces, 176 px: training tests.'),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(s, s, 1), dtype=np.uint8, encoding_format='png'),
            'landmarks': tfds.features.Tensor(shape=(68, 2), dtype=np.float32),
            'visibility': tfds.features.Tensor(shape=(68,), dtype=np.bool_),
            'occluded': tfds.features.Tensor(shape=(68,), dtype=np.bool_),
            'pose': tfds.features.Tensor(shape=(3,), dtype=np.float32),
            'box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
        }),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is rendered locally.
    return {split: self._generate_examples(split) for split in synthetic_splits.SPLIT_IDS}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """The split's faces (synthetic_splits.examples), the image with its channel axis."""
    for i, face in enumerate(synthetic_splits.examples(self.builder_config, split)):
      yield i, face | {'image': face['image'][..., None]}
