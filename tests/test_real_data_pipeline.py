"""Real-format files through builder *and* pipeline: the crop's landmarks are the written ones.

The reference is a numpy transcription of the documented crop map (SPEC: pixel centres at
integers; the window is the ground-truth box's square, widened by the margin): for every face
written as a user's folder, the pipeline's landmarks must be exactly where numpy puts the numbers
of its `.pts` file (minus 1), and its pose label must carry the written head pose's yaw sign.
"""

import numpy as np

from input_pipeline import pipeline
from tests import fake_datasets
from tests import fake_real_datasets

SIZE, MARGIN = 150, 0.25


def _crop_map(landmarks: np.ndarray) -> np.ndarray:
  lo, hi = landmarks.min(0), landmarks.max(0)
  side = (hi - lo).max() * (1 + 2 * MARGIN)
  left_top = (lo + hi) / 2 - side / 2
  return (landmarks - left_top) * SIZE / side - 0.5


def test_face_folder_through_the_pipeline(tmp_path):
  written = fake_datasets.write_face_folder(tmp_path / 'faces', num_faces=6)
  builder = pipeline.get_builder('face_folder', data_dir=str(tmp_path / 'tfds'),
                                 manual_dir=str(tmp_path / 'faces'))
  faces = list(written.faces.values())
  expected = np.stack([_crop_map(f.landmarks) for f in faces])  # [N, 68, 2]
  seen = []
  for split in builder.info.splits:
    n = builder.info.splits[split].num_examples
    ds = pipeline.eval_dataset(builder, global_batch_size=n, mean_shape=np.zeros((68, 2)),
                               split=split, crop=pipeline.CropConfig(SIZE, MARGIN))
    for batch in ds.as_numpy_iterator():
      for landmarks, pose in zip(batch['landmarks'][batch['mask']], batch['pose'][batch['mask']]):
        distance = np.abs(expected - landmarks).max(axis=(1, 2))
        match = int(distance.argmin())
        assert distance[match] < 1e-3, distance.min()
        yaw = faces[match].pose[0]
        assert abs(yaw) < 0.05 or np.sign(pose[0]) == np.sign(yaw), (pose, yaw)
        seen.append(match)
  assert sorted(seen) == list(range(len(faces)))  # each face once, over the splits


def test_w300_lp_through_the_pipeline(tmp_path):
  written = fake_real_datasets.write_w300_lp(tmp_path / 'manual')
  builder = pipeline.get_builder('w300_lp', data_dir=str(tmp_path / 'tfds'),
                                 manual_dir=str(tmp_path / 'manual'))
  faces = [f for f in written['faces'].values() if not f['flipped']]  # the default: no flips
  expected = np.stack([_crop_map(f['pts_3d']) for f in faces])
  n = builder.info.splits['train'].num_examples
  assert n == len(faces)
  ds = pipeline.eval_dataset(builder, global_batch_size=n, mean_shape=np.zeros((68, 2)),
                             split='train', crop=pipeline.CropConfig(SIZE, MARGIN))
  seen = []
  for batch in ds.as_numpy_iterator():
    for landmarks in batch['landmarks'][batch['mask']]:
      distance = np.abs(expected - landmarks).max(axis=(1, 2))
      assert distance.min() < 1e-3, distance.min()
      seen.append(int(distance.argmin()))
  assert sorted(seen) == list(range(len(faces)))
