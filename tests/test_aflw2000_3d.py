"""The `aflw2000_3d` builder on fake AFLW2000-3D files in the real format
(tests/fake_real_datasets.py): landmarks, pose, |yaw| buckets from Pose_Para or a pose file."""

import logging
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import formats
from input_pipeline.datasets import aflw2000_3d
from input_pipeline.datasets import real
from tests import fake_real_datasets as fake
from treemoe_jax import geometry

BUCKET_SPLITS = ('test_yaw_0_30', 'test_yaw_30_60', 'test_yaw_60_90')


def _prepare(manual_dir, data_dir, config='default') -> tfds.core.DatasetBuilder:
  builder = aflw2000_3d.Aflw20003d(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _by_stem(builder, split='test') -> dict[str, dict]:
  return {e['source'].decode()[:-4]: e for e in tfds.as_numpy(builder.as_dataset(split=split))}


def _bucket(yaw_deg: float) -> int:
  """Table 3's buckets, written out: [0, 30], (30, 60], > 60 by |yaw|."""
  yaw = abs(yaw_deg)
  return 0 if yaw <= 30 else 1 if yaw <= 60 else 2


def _angle_error_deg(a, b) -> np.ndarray:
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  return np.abs(np.degrees(np.arctan2(np.sin(d), np.cos(d))))


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  root = tmp_path_factory.mktemp('aflw_manual')
  return root, fake.write_aflw2000_3d(root)


@pytest.fixture(scope='module')
def default(written, tmp_path_factory):
  return _prepare(written[0], tmp_path_factory.mktemp('aflw_data'))


def test_names_configs_splits_and_features(default):
  assert default.name == 'aflw2000_3d'
  assert {c.name for c in aflw2000_3d.Aflw20003d.BUILDER_CONFIGS} >= {'default', 'skip_bad'}
  assert set(default.info.splits) == {'test', *BUCKET_SPLITS}
  assert set(default.info.features) == {'image', 'landmarks', 'visibility', 'pose', 'box',
                                        'yaw_bucket', 'yaw_deg', 'yaw_source', 'source'}


def test_faces_are_read_exactly(written, default):
  faces = written[1]['faces']
  examples = _by_stem(default)
  assert sorted(examples) == sorted(faces)
  for stem, face in faces.items():
    e = examples[stem]
    np.testing.assert_array_equal(e['landmarks'], face['landmarks'])
    np.testing.assert_array_equal(e['box'], np.concatenate([face['landmarks'].min(0),
                                                            face['landmarks'].max(0)]))
    assert e['visibility'].all()
    assert np.abs(e['image'].astype(int) - face['image']).mean() < 3  # jpg.


def test_pose_from_pose_para_agrees_with_the_landmarks(written, default):
  examples = _by_stem(default)
  for stem, face in written[1]['faces'].items():
    pose = examples[stem]['pose']
    fitted = geometry.pose_from_landmarks(face['landmarks'], hidden_jaw_weight=1.0)
    assert _angle_error_deg(pose, fitted).max() < 0.5, stem
    pitch, yaw, roll = face['pose_para'][:3]
    for ours, theirs in zip(pose, (-yaw, pitch, roll)):  # 3DDFA's yaw is the opposite of ours.
      if abs(theirs) > 0.05:
        assert np.sign(ours) == np.sign(theirs), (stem, pose, face['pose_para'][:3])
      assert _angle_error_deg(ours, theirs) < 20


def test_buckets_from_pose_para(written, default):
  faces = written[1]['faces']
  examples = _by_stem(default)
  expected = {stem: _bucket(face['yaw_deg']) for stem, face in faces.items()}
  assert sorted(expected.values()) == [0, 0, 1, 1, 2, 2]  # The fake set spans every bucket.
  for stem, e in examples.items():
    assert e['yaw_bucket'] == expected[stem], stem
    assert e['yaw_source'].decode() == 'Pose_Para'
    np.testing.assert_allclose(e['yaw_deg'], faces[stem]['yaw_deg'], rtol=1e-6)
  for bucket, split in enumerate(BUCKET_SPLITS):
    members = _by_stem(default, split)
    assert sorted(members) == sorted(s for s, b in expected.items() if b == bucket), split
    for stem, e in members.items():  # The same faces as in `test`.
      np.testing.assert_array_equal(e['landmarks'], examples[stem]['landmarks'])


def test_bucket_edges():
  for yaw, bucket in ((0, 0), (30, 0), (-30, 0), (30.001, 1), (60, 1), (-60.001, 2), (95, 2)):
    assert aflw2000_3d.yaw_bucket(yaw) == bucket == _bucket(yaw), yaw


def test_buckets_from_a_pose_file(written, tmp_path, caplog):
  root, out = written
  yaws = {'image00002': 45.0, 'image00004': -10.0, 'image00006': 20.0, 'image00008': -61.0,
          'image00013': 30.0, 'image00019': 88.5}
  pose_file = fake.write_pose_file(tmp_path / 'aflw_yaw.csv', yaws)
  config = aflw2000_3d.Aflw20003dConfig(name='aflw_yaw', pose_file=str(pose_file))
  with caplog.at_level(logging.INFO):
    builder = _prepare(root, tmp_path / 'data', config=config)
  assert '3 / 1 / 2' in caplog.text  # The bucket counts are logged.
  examples = _by_stem(builder)
  for stem, e in examples.items():
    assert e['yaw_bucket'] == _bucket(yaws[stem]), stem
    assert e['yaw_source'].decode() == 'aflw_yaw.csv'
    assert e['yaw_deg'] == np.float32(yaws[stem])
    np.testing.assert_array_equal(e['landmarks'], out['faces'][stem]['landmarks'])
  assert sorted(_by_stem(builder, 'test_yaw_60_90')) == ['image00008', 'image00019']


def test_a_pose_file_missing_an_image_is_an_error(written, tmp_path):
  root, out = written
  relative = 'poses/partial.csv'  # Relative to the manual dir.
  fake.write_pose_file(root / relative, {stem: 0.0 for stem in sorted(out['faces'])[:-1]})
  config = aflw2000_3d.Aflw20003dConfig(name='partial', pose_file=relative)
  with pytest.raises(formats.FormatError, match=r'partial\.csv.*image00019\.jpg'):
    _prepare(root, tmp_path / 'data', config=config)
  (root / relative).write_text('name,yaw\nimage00002,3\n')
  with pytest.raises(formats.FormatError, match='image and yaw_deg'):
    _prepare(root, tmp_path / 'data', config=config)


def test_missing_folder_raises_missing_data_error(tmp_path):
  with pytest.raises(real.MissingDataError, match='aflw2000_3d'):
    _prepare(tmp_path / 'nothing', tmp_path / 'data')
  (tmp_path / 'manual' / 'AFLW2000').mkdir(parents=True)
  (tmp_path / 'manual' / 'AFLW2000' / 'readme.txt').write_text('x')
  with pytest.raises(real.MissingDataError, match='AFLW2000-3D.zip'):
    _prepare(tmp_path / 'manual', tmp_path / 'data')


def test_bad_files_stop_or_are_skipped(tmp_path):
  out = fake.write_aflw2000_3d(tmp_path / 'manual')
  (out['dir'] / 'image00013.mat').write_bytes(b'MATLAB 5.0 MAT-file')  # Truncated annotation.
  jpg = out['dir'] / 'image00002.jpg'
  jpg.write_bytes(jpg.read_bytes()[:200])  # Truncated image.
  with pytest.raises(formats.FormatError, match='image00013.mat'):
    _prepare(tmp_path / 'manual', tmp_path / 'data')
  builder = _prepare(tmp_path / 'manual', tmp_path / 'data', config='skip_bad')
  assert sorted(_by_stem(builder)) == ['image00004', 'image00006', 'image00008', 'image00019']
  assert sorted(_by_stem(builder, 'test_yaw_0_30')) == ['image00019']
  assert sorted(_by_stem(builder, 'test_yaw_30_60')) == ['image00004']
  report = (pathlib.Path(builder.data_dir) / 'bad_examples.txt').read_text()
  assert 'image00013.mat' in report and 'image00002.jpg' in report
