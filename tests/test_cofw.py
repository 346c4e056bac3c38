"""The `cofw` builder on fake COFW / COFW-68 files in the real formats
(tests/fake_real_datasets.py).

Expected values come from the writer (the known pose, the 0-based points it wrote), never from the
builder's own helpers.
"""

import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import formats
from input_pipeline.datasets import cofw
from input_pipeline.datasets import real
from tests import fake_real_datasets as fake
from treemoe_jax.evaluate import protocols

DEG = np.pi / 180


def _prepare(manual_dir, data_dir, config='default') -> tfds.core.DatasetBuilder:
  builder = cofw.Cofw(config=config, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _by_source(builder, split) -> dict[str, dict]:
  """{source: example} of a whole split (TFDS shuffles the order)."""
  examples = tfds.as_numpy(builder.as_dataset(split=split))
  return {e['source'].decode(): e for e in examples}


def _angle_error_deg(a, b) -> np.ndarray:
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  return np.abs(np.degrees(np.arctan2(np.sin(d), np.cos(d))))


def _tight_box(points) -> np.ndarray:
  return np.concatenate([np.min(points, 0), np.max(points, 0)])


@pytest.fixture(scope='module')
def with_68(tmp_path_factory):
  root = tmp_path_factory.mktemp('cofw_manual')
  written = fake.write_cofw(root)
  return written, _prepare(root, tmp_path_factory.mktemp('cofw_data'))


@pytest.fixture(scope='module')
def without_68(tmp_path_factory):
  root = tmp_path_factory.mktemp('cofw_manual_29')
  written = fake.write_cofw(root, cofw68=None)
  return written, _prepare(root, tmp_path_factory.mktemp('cofw_data_29'))


def test_names_configs_and_features(with_68):
  _, builder = with_68
  assert builder.name == 'cofw'
  assert {c.name for c in cofw.Cofw.BUILDER_CONFIGS} >= {'default', 'skip_bad'}
  assert set(builder.info.splits) == {'train', 'test'}
  assert set(builder.info.features) == {
      'image', 'landmarks', 'visibility', 'pose', 'box', 'landmarks_29', 'occluded_29', 'has_68',
      'cofw_box', 'cofw68_box', 'source'}
  assert 'COFW_train_color.mat' in cofw.Cofw.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_test_split_with_cofw68_is_read_exactly(with_68):
  written, builder = with_68
  faces = written['test']
  examples = _by_source(builder, 'test')
  assert sorted(examples) == [f'IsT[{i}]' for i in range(len(faces['poses']))]
  for i in range(len(faces['poses'])):
    e = examples[f'IsT[{i}]']
    assert e['has_68']
    np.testing.assert_array_equal(e['landmarks_29'], faces['landmarks_29'][i])
    np.testing.assert_array_equal(e['occluded_29'], faces['occluded_29'][i])
    np.testing.assert_array_equal(e['cofw_box'], faces['cofw_boxes'][i])
    np.testing.assert_array_equal(e['landmarks'], faces['landmarks_68'][i])
    np.testing.assert_array_equal(e['visibility'], ~faces['occluded_68'][i])
    np.testing.assert_array_equal(e['box'], _tight_box(faces['landmarks_68'][i]))
    np.testing.assert_array_equal(e['cofw68_box'], faces['cofw68_boxes'][i])
    # Pose inferred from the 68 points: the known pose, order (yaw, pitch, roll).
    assert _angle_error_deg(e['pose'], faces['poses'][i]).max() < 0.5
    image = faces['images'][i]
    expected = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image
    np.testing.assert_array_equal(e['image'], expected)  # PNG: lossless.
  assert faces['images'][1].ndim == 2  # The grayscale one was read too.


def test_train_split_has_29_points_and_an_estimate(with_68):
  written, builder = with_68
  faces = written['train']
  examples = _by_source(builder, 'train')
  assert sorted(examples) == [f'IsTr[{i}]' for i in range(len(faces['poses']))]
  mapping = protocols.COFW_29.matrix()
  for i in range(len(faces['poses'])):
    e = examples[f'IsTr[{i}]']
    assert not e['has_68']
    np.testing.assert_array_equal(e['landmarks_29'], faces['landmarks_29'][i])
    np.testing.assert_array_equal(e['occluded_29'], faces['occluded_29'][i])
    np.testing.assert_array_equal(e['box'], _tight_box(faces['landmarks_29'][i]))
    np.testing.assert_array_equal(e['cofw68_box'], np.zeros(4))
    assert e['visibility'].all()
    # The pose of the 29-point fit is the known pose; the 68-point estimate is the mean face there.
    assert _angle_error_deg(e['pose'], faces['poses'][i]).max() < 1.0
    np.testing.assert_allclose(e['landmarks'], faces['projected_68'][i], atol=0.1)
    np.testing.assert_allclose(mapping @ e['landmarks'], faces['landmarks_29'][i], atol=0.1)


def test_without_cofw68_the_test_split_has_no_68_points(without_68):
  written, builder = without_68
  faces = written['test']
  examples = _by_source(builder, 'test')
  assert len(examples) == len(faces['poses'])
  for i in range(len(faces['poses'])):
    e = examples[f'IsT[{i}]']
    assert not e['has_68']
    np.testing.assert_array_equal(e['landmarks_29'], faces['landmarks_29'][i])
    np.testing.assert_array_equal(e['box'], _tight_box(faces['landmarks_29'][i]))
    np.testing.assert_array_equal(e['cofw68_box'], np.zeros(4))
    assert _angle_error_deg(e['pose'], faces['poses'][i]).max() < 1.0


@pytest.mark.parametrize('folder', ['cofw68', 'COFW68', 'cofw68_benchmark', 'COFW68_Data',
                                    'cofw68-benchmark/COFW68_Data'])
def test_cofw68_folder_names(tmp_path, folder):
  (tmp_path / folder / 'test_annotations').mkdir(parents=True)
  assert cofw.find_cofw68(tmp_path) == tmp_path / folder
  assert cofw.find_cofw68(tmp_path / 'elsewhere') is None


def test_missing_files_raise_missing_data_error(tmp_path):
  with pytest.raises(real.MissingDataError, match='cofw'):  # Empty manual dir.
    _prepare(tmp_path / 'nothing', tmp_path / 'data')
  (tmp_path / 'manual' / 'cofw').mkdir(parents=True)
  (tmp_path / 'manual' / 'cofw' / 'COFW_test_color.mat').write_bytes(b'x')
  with pytest.raises(real.MissingDataError, match='COFW_train_color.mat'):
    _prepare(tmp_path / 'manual', tmp_path / 'data')


def test_a_bad_annotation_stops_or_is_skipped(tmp_path):
  written = fake.write_cofw(tmp_path / 'manual', train_poses_deg=((0, 0, 0),))
  bad = written['cofw68_dir'] / 'test_annotations' / '3_points.mat'
  bad.write_bytes(b'MATLAB 5.0 MAT-file, truncated')
  with pytest.raises(formats.FormatError, match='3_points.mat'):
    _prepare(tmp_path / 'manual', tmp_path / 'data')
  builder = _prepare(tmp_path / 'manual', tmp_path / 'data', config='skip_bad')
  examples = _by_source(builder, 'test')
  assert sorted(examples) == ['IsT[0]', 'IsT[1]', 'IsT[3]', 'IsT[4]']
  report = (pathlib.Path(builder.data_dir) / 'bad_examples.txt').read_text()
  assert '3_points.mat' in report and 'cofw/test' in report


def test_a_damaged_cofw_file_names_it(tmp_path):
  written = fake.write_cofw(tmp_path / 'manual', cofw68=None)
  path = written['dir'] / 'COFW_test_color.mat'
  path.write_bytes(path.read_bytes()[:3000])
  for config in ('default', 'skip_bad'):  # A whole file cannot be skipped.
    with pytest.raises(formats.FormatError, match='COFW_test_color.mat'):
      _prepare(tmp_path / 'manual', tmp_path / f'data_{config}', config=config)
