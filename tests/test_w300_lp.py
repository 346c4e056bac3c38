"""The `w300_lp` builder on fake 300W-LP files in the real formats (tests/fake_real_datasets.py).

The fake faces are the mean face under 3DDFA's forward model for known `Pose_Para`s; expected
landmarks (and their mirror images) come from the writer, and the builder's pose is checked
against a fit to the landmarks and against 3DDFA's angle signs.
"""

import logging
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import formats
from input_pipeline.datasets import real
from input_pipeline.datasets import w300_lp
from tests import fake_real_datasets as fake
from treemoe_jax import geometry

FLIP = np.array([-1.0, 1.0, -1.0])


def _prepare(manual_dir, data_dir, config='default') -> tfds.core.DatasetBuilder:
  builder = w300_lp.W300Lp(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _by_source(builder) -> dict[str, dict]:
  return {e['source'].decode(): e for e in tfds.as_numpy(builder.as_dataset(split='train'))}


def _angle_error_deg(a, b) -> np.ndarray:
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  return np.abs(np.degrees(np.arctan2(np.sin(d), np.cos(d))))


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  root = tmp_path_factory.mktemp('w300_lp_manual')
  return root, fake.write_w300_lp(root)


@pytest.fixture(scope='module')
def default(written, tmp_path_factory):
  return _prepare(written[0], tmp_path_factory.mktemp('w300_lp_data'))


@pytest.fixture(scope='module')
def with_flips(written, tmp_path_factory):
  return _prepare(written[0], tmp_path_factory.mktemp('w300_lp_flips'), config='with_flips')


def test_names_configs_and_features(default):
  assert default.name == 'w300_lp'
  assert {c.name for c in w300_lp.W300Lp.BUILDER_CONFIGS} >= {
      'default', 'skip_bad', 'with_flips', 'exclude_300w_test'}
  assert set(default.info.splits) == {'train'}
  assert set(default.info.features) == {'image', 'landmarks', 'visibility', 'pose', 'box',
                                        'subset', 'flipped', 'source'}
  config = w300_lp.W300Lp.builder_configs['default']
  assert (config.landmark_field, config.include_flips, config.exclude_300w_test) == (
      'pts_3d', False, False)
  with pytest.raises(ValueError, match='landmark_field'):
    w300_lp.W300LpConfig(name='bad', landmark_field='pt2d')


def test_unflipped_faces_are_read_exactly(written, default):
  faces = {k: v for k, v in written[1]['faces'].items() if not v['flipped']}
  examples = _by_source(default)
  assert sorted(examples) == sorted(faces)
  for path, face in faces.items():
    e = examples[path]
    np.testing.assert_array_equal(e['landmarks'], face['pts_3d'])  # Not pts_2d, not stale pt2d.
    assert e['visibility'].all()
    np.testing.assert_array_equal(e['box'], np.concatenate([face['pts_3d'].min(0),
                                                            face['pts_3d'].max(0)]))
    assert e['subset'].decode() == face['subset'] and not e['flipped']
    assert np.abs(e['image'].astype(int) - face['image']).mean() < 3  # jpg.


def test_pose_from_pose_para_agrees_with_the_landmarks(written, default):
  examples = _by_source(default)
  for path, face in written[1]['faces'].items():
    if face['flipped']:
      continue
    pose = examples[path]['pose']
    fitted = geometry.pose_from_landmarks(examples[path]['landmarks'], hidden_jaw_weight=1.0)
    assert _angle_error_deg(pose, fitted).max() < 0.5, path  # Exact projections: they agree.
    pitch, yaw, roll = face['pose_para'][:3]
    for ours, theirs in zip(pose, (-yaw, pitch, roll)):  # 3DDFA's yaw is the opposite of ours.
      if abs(theirs) > 0.05:
        assert np.sign(ours) == np.sign(theirs), (path, pose, face['pose_para'][:3])
      assert _angle_error_deg(ours, theirs) < 20


def test_pts_2d_by_config(written, tmp_path):
  config = w300_lp.W300LpConfig(name='pts_2d', landmark_field='pts_2d')
  examples = _by_source(_prepare(written[0], tmp_path, config=config))
  for path, e in examples.items():
    np.testing.assert_array_equal(e['landmarks'], written[1]['faces'][path]['pts_2d'])


def test_flip_landmarks_is_the_standard_mirror():
  np.testing.assert_array_equal(geometry.MIRROR_68, fake.mirror_permutation())
  points = np.random.default_rng(0).uniform(0, 100, (68, 2)).astype(np.float32)
  np.testing.assert_array_equal(geometry.flip_landmarks(points, 120), fake.mirrored(points, 120))


def test_flipped_copies_mirror_landmarks_and_negate_yaw_and_roll(written, with_flips):
  faces = written[1]['faces']
  examples = _by_source(with_flips)
  assert sorted(examples) == sorted(faces)
  assert sum(e['flipped'] for e in examples.values()) == len(faces) // 2
  for path, face in faces.items():
    if not face['flipped']:
      continue
    e = examples[path]
    assert e['flipped'] and e['subset'].decode() == face['subset']
    np.testing.assert_array_equal(e['landmarks'], face['pts_3d'])  # The writer's mirror.
    original = examples[f'{face["subset"]}/{face["stem"]}.jpg']
    np.testing.assert_allclose(e['pose'], original['pose'] * FLIP, atol=1e-7)
    # The flipped pose is what a fit to the mirrored points says.
    fitted = geometry.pose_from_landmarks(e['landmarks'], hidden_jaw_weight=1.0)
    assert _angle_error_deg(e['pose'], fitted).max() < 0.5, path
    assert np.abs(e['image'].astype(int) - face['image']).mean() < 3  # jpg twice.
    assert np.abs(e['image'].astype(int) - face['image'][:, ::-1]).mean() > 10  # Not unflipped.


def test_exclude_300w_test(written, tmp_path):
  config = w300_lp.W300LpConfig(name='no_test_flips', include_flips=True, exclude_300w_test=True)
  examples = _by_source(_prepare(written[0], tmp_path, config=config))
  stems = {path.split('/')[1][:-4] for path in examples}
  assert stems == {'AFW_134212_1_0', 'HELEN_100032540_1_3', 'LFPW_image_train_0003_5'}
  assert len(examples) == 6  # Each with its flipped copy.
  assert all(w300_lp.is_300w_test(s.split('_')[0], s) for s in fake.W300_TEST_STEMS)
  assert len(w300_lp.HELEN_TEST_NAMES) == 330


def test_count_warning(written, caplog, tmp_path):
  with caplog.at_level(logging.WARNING):
    _prepare(written[0], tmp_path)
  assert '61225' in caplog.text


def test_missing_folders_raise_missing_data_error(tmp_path):
  with pytest.raises(real.MissingDataError, match='w300_lp'):
    _prepare(tmp_path / 'nothing', tmp_path / 'data')
  fake.write_w300_lp(tmp_path / 'manual', faces={'AFW/AFW_1_1_0': (0.0, 0.2, 0.0)}, flips=False)
  with pytest.raises(real.MissingDataError, match='AFW_Flip'):
    _prepare(tmp_path / 'manual', tmp_path / 'data', config='with_flips')
  with pytest.raises(real.MissingDataError, match='HELEN, IBUG, LFPW'):
    _prepare(tmp_path / 'manual', tmp_path / 'data')


def test_a_bad_file_stops_or_is_skipped(tmp_path):
  out = fake.write_w300_lp(tmp_path / 'manual', flips=False)
  bad = out['dir'] / 'landmarks' / 'LFPW' / 'LFPW_image_test_0001_0_pts.mat'
  bad.write_bytes(b'')
  with pytest.raises(formats.FormatError, match='LFPW_image_test_0001_0_pts.mat'):
    _prepare(tmp_path / 'manual', tmp_path / 'data')
  builder = _prepare(tmp_path / 'manual', tmp_path / 'data', config='skip_bad')
  assert sorted(_by_source(builder)) == sorted(
      p for p in out['faces'] if p != 'LFPW/LFPW_image_test_0001_0.jpg')
  report = (pathlib.Path(builder.data_dir) / 'bad_examples.txt').read_text()
  assert 'LFPW_image_test_0001_0_pts.mat' in report
