"""The `face_folder` builder reads a user's folder of images + .pts written by `fake_datasets`.

Expected values come from what the fake writer put on disk; the seeded split is checked by its
properties (sizes, disjoint, covering, independent of the file system's order), not recomputed.
"""

import logging
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import formats
from input_pipeline.datasets import face_folder
from input_pipeline.datasets import real
from tests import fake_datasets


def _prepare(manual_dir, data_dir, config='default'):
  builder = face_folder.FaceFolder(data_dir=str(data_dir), config=config)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _examples(builder, split) -> dict[str, dict[str, np.ndarray]]:
  out = {}
  for example in tfds.as_numpy(builder.as_dataset(split=split)):
    source = example['source'].decode()
    assert source not in out, source
    out[source] = example
  return out


def _splits(builder) -> dict[str, list[str]]:
  return {split: sorted(_examples(builder, split)) for split in builder.info.splits}


def test_configs():
  assert {c.name for c in face_folder.FaceFolder.BUILDER_CONFIGS} == {'default', 'skip_bad'}
  default = face_folder.FaceFolder.BUILDER_CONFIGS[0]
  assert (default.test_fraction, default.val_fraction, default.seed) == (0.1, 0.0, 0)


@pytest.mark.parametrize('bad', [{'test_fraction': 1.0}, {'test_fraction': -0.1},
                                 {'val_fraction': 1.5}, {'test_fraction': 0.5, 'val_fraction': 0.5},
                                 {'seed': -1}])
def test_bad_config_raises(bad):
  with pytest.raises(ValueError):
    face_folder.FaceFolderConfig(name='bad', **bad)


def test_default_split_and_examples(tmp_path, caplog):
  fake = fake_datasets.write_face_folder(tmp_path / 'faces', num_faces=10)
  with caplog.at_level(logging.WARNING):
    builder = _prepare(tmp_path / 'faces', tmp_path / 'data')
  splits = _splits(builder)
  assert set(splits) == {'train', 'test'}
  assert (len(splits['train']), len(splits['test'])) == (9, 1)  # 10% of 10.
  assert sorted(splits['train'] + splits['test']) == sorted(fake.faces)  # Disjoint, covering.
  for source in fake.ignored:  # Images without a .pts: named in the log, not read.
    assert source in caplog.text
  suffixes = {os.path.splitext(s)[1] for s in fake.faces}
  assert {'.png', '.PNG', '.jpg', '.JPEG', '.bmp'} <= suffixes
  assert {f.image.ndim for f in fake.faces.values()} == {2, 3}
  for split in splits:
    for source, example in _examples(builder, split).items():
      face = fake.faces[source]
      np.testing.assert_allclose(example['landmarks'], face.landmarks, rtol=0, atol=1e-4,
                                 err_msg=source)
      box = np.concatenate([face.landmarks.min(0), face.landmarks.max(0)])
      np.testing.assert_allclose(example['box'], box, rtol=0, atol=1e-4, err_msg=source)
      assert example['image'].shape == face.rgb.shape
      if face.lossless:
        np.testing.assert_array_equal(example['image'], face.rgb, err_msg=source)
      else:
        assert np.abs(example['image'].astype(int) - face.rgb).mean() < 4, source
      assert np.isfinite(example['pose']).all()
      if abs(face.pose[0]) > 0.2:
        assert np.sign(example['pose'][0]) == np.sign(face.pose[0]), source
      np.testing.assert_allclose(example['pose'], face.pose, rtol=0, atol=0.05, err_msg=source)


def test_seeded_split_ignores_file_system_order(tmp_path):
  config = face_folder.FaceFolderConfig(name='thirds', test_fraction=0.3, val_fraction=0.2, seed=1)
  got = []
  for order_seed in (1, 2):  # Same files, written (so listed) in different orders.
    root = tmp_path / f'faces{order_seed}'
    fake = fake_datasets.write_face_folder(root, num_faces=10, order_seed=order_seed)
    got.append(_splits(_prepare(root, tmp_path / f'data{order_seed}', config=config)))
  assert got[0] == got[1]
  splits = got[0]
  assert {k: len(v) for k, v in splits.items()} == {'train': 5, 'test': 3, 'val': 2}
  assert sorted(sum(splits.values(), [])) == sorted(fake.faces)  # Disjoint, covering.
  # The builder draws what the public function draws; another seed draws differently.
  assert face_folder.split_by_fraction(list(fake.faces), test_fraction=0.3, val_fraction=0.2,
                                       seed=1) == splits
  others = [face_folder.split_by_fraction(list(fake.faces), test_fraction=0.3, seed=s)['test']
            for s in range(2, 6)]
  assert any(o != others[0] for o in others)


def test_split_by_fraction_counts():
  sources = [f'f{i}.png' for i in range(7)]
  assert {k: len(v) for k, v in face_folder.split_by_fraction(
      sources, test_fraction=0.01).items()} == {'train': 6, 'test': 1}  # At least one.
  assert set(face_folder.split_by_fraction(sources, test_fraction=0.0)) == {'train'}
  with pytest.raises(ValueError, match='too few'):
    face_folder.split_by_fraction(['only.png'], test_fraction=0.1)


def test_list_files(tmp_path, caplog):
  sources = fake_datasets.face_folder_sources(8)
  lists = {'train': sources[:4], 'test': sources[4:6], 'val': sources[6:7]}  # sources[7] unlisted.
  fake = fake_datasets.write_face_folder(tmp_path / 'faces', num_faces=8, lists=lists)
  config = face_folder.FaceFolderConfig(name='lists', test_fraction=0.5)  # Ignored: lists win.
  with caplog.at_level(logging.WARNING):
    builder = _prepare(tmp_path / 'faces', tmp_path / 'data', config=config)
  assert _splits(builder) == fake.splits
  assert sources[7] in caplog.text  # Annotated but in no list: left out, and said so.


@pytest.mark.parametrize('case', ['missing', 'no_pts', 'twice'])
def test_bad_list_entry_names_list_and_line(tmp_path, case):
  sources = fake_datasets.face_folder_sources(4)
  entry = {'missing': 'nope/absent.jpg', 'no_pts': 'unannotated.jpg', 'twice': sources[0]}[case]
  lists = {'train': sources[:2], 'test': [sources[2], entry]}
  fake_datasets.write_face_folder(tmp_path / 'faces', num_faces=4, lists=lists)
  with pytest.raises(formats.FormatError) as info:
    _prepare(tmp_path / 'faces', tmp_path / 'data')
  message = str(info.value)
  assert message.startswith(str(tmp_path / 'faces' / 'test.txt')), message
  assert 'line 4' in message and entry in message, message  # Comment, blank, first entry, it.


BAD = {  # kind -> (how to damage the face's files)
    'truncated_image': lambda image: fake_datasets.truncate(image),
    'points_67': lambda image: fake_datasets.write_bad_pts(image.with_suffix('.pts'), 'points_67'),
    'nan': lambda image: fake_datasets.write_bad_pts(image.with_suffix('.pts'), 'nan'),
    'orphan_pts': lambda image: image.unlink(),
}


def _damaged(root, lists=None):
  """A folder whose faces 0..3 are damaged in each of the BAD ways; returns (fake, {bad file})."""
  fake = fake_datasets.write_face_folder(root, num_faces=10, lists=lists)
  sources = fake_datasets.face_folder_sources(10)
  bad = {}
  for source, (kind, damage) in zip(sources[1:5], sorted(BAD.items())):
    damage(root / source)
    bad[source] = source if kind == 'truncated_image' else os.path.splitext(source)[0] + '.pts'
  return fake, bad


@pytest.mark.parametrize('kind', sorted(BAD))
def test_bad_file_stops_with_its_name(tmp_path, kind):
  fake_datasets.write_face_folder(tmp_path / 'faces', num_faces=3)
  source = fake_datasets.face_folder_sources(3)[1]
  BAD[kind](tmp_path / 'faces' / source)
  name = source if kind == 'truncated_image' else os.path.splitext(source)[0] + '.pts'
  config = face_folder.FaceFolderConfig(name='all_train', test_fraction=0.0)  # One split.
  with pytest.raises(formats.FormatError) as info:
    _prepare(tmp_path / 'faces', tmp_path / 'data', config=config)
  assert str(info.value).startswith(str(tmp_path / 'faces' / name)), str(info.value)


def test_skip_bad_skips_and_reports(tmp_path, caplog):
  sources = fake_datasets.face_folder_sources(10)
  lists = {'train': sources[:7], 'test': sources[7:]}
  fake, bad = _damaged(tmp_path / 'faces', lists=lists)
  with caplog.at_level(logging.WARNING):
    builder = _prepare(tmp_path / 'faces', tmp_path / 'data', config='skip_bad')
  assert _splits(builder) == {split: sorted(set(s) - set(bad)) for split, s in fake.splits.items()}
  report = (builder.data_path / 'bad_examples.txt').read_text()
  for name in bad.values():
    assert name in caplog.text and name in report, name


def test_skip_bad_seeded_split_is_drawn_over_good_faces(tmp_path):
  fake, bad = _damaged(tmp_path / 'faces')
  config = face_folder.FaceFolderConfig(name='skip', skip_bad_examples=True, test_fraction=0.2)
  splits = _splits(_prepare(tmp_path / 'faces', tmp_path / 'data', config=config))
  # The orphan .pts (no image: no face) is left out before the draw, the unreadable files after
  # it, so skipping a damaged file never moves another face to another split.
  orphan = fake_datasets.face_folder_sources(10)[2]
  assert bad[orphan].endswith('.pts')
  drawn = face_folder.split_by_fraction(sorted(set(fake.faces) - {orphan}), test_fraction=0.2)
  assert splits == {split: sorted(set(s) - set(bad)) for split, s in drawn.items()}


def test_missing_folder_and_empty_folder(tmp_path):
  with pytest.raises(real.MissingDataError, match='.pts'):
    _prepare(tmp_path / 'nowhere', tmp_path / 'data')
  fake_datasets.write_face_folder(tmp_path / 'faces', num_faces=0)  # Only unannotated images.
  with pytest.raises(real.MissingDataError, match='no image with a .pts'):
    _prepare(tmp_path / 'faces', tmp_path / 'data')


def test_empty_list_file_and_all_bad_split_are_errors(tmp_path):
  sources = fake_datasets.face_folder_sources(3)
  fake_datasets.write_face_folder(tmp_path / 'a', num_faces=3,
                                  lists={'train': sources[:2], 'test': []})
  with pytest.raises(formats.FormatError, match='lists no images') as info:
    _prepare(tmp_path / 'a', tmp_path / 'data_a')
  assert str(info.value).startswith(str(tmp_path / 'a' / 'test.txt'))
  # TFDS cannot write an empty split: a split whose every face is bad stops with a clear error.
  fake_datasets.write_face_folder(tmp_path / 'b', num_faces=3,
                                  lists={'train': sources[:2], 'test': sources[2:]})
  fake_datasets.truncate(tmp_path / 'b' / sources[2])
  with pytest.raises(ValueError, match='face_folder/test: no example left'):
    _prepare(tmp_path / 'b', tmp_path / 'data_b', config='skip_bad')
