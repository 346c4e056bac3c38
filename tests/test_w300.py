"""The `w300` builder reads a tiny 300-W tree written in the real format (`fake_datasets`).

Expected values come from what the fake writer put on disk (the .pts numbers minus 1, the pixels
handed to PIL, the pose the landmarks were projected under), never from the builder's readers.
"""

import contextlib
import logging
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import formats
from input_pipeline.datasets import real
from input_pipeline.datasets import w300
from tests import fake_datasets


def _prepare(manual_dir, data_dir, config='default'):
  builder = w300.W300(data_dir=str(data_dir), config=config)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _examples(builder, split) -> dict[str, dict[str, np.ndarray]]:
  """A split's examples by source."""
  out = {}
  for example in tfds.as_numpy(builder.as_dataset(split=split)):
    source = example['source'].decode()
    assert source not in out, source
    out[source] = example
  return out


@contextlib.contextmanager
def _logged():
  """Collects the root logger's messages (caplog is per test; the prepared fixture is shared)."""
  messages = []
  handler = logging.Handler(logging.INFO)
  handler.emit = lambda record: messages.append(record.getMessage())
  root = logging.getLogger()
  level = root.level
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  try:
    yield messages
  finally:
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """The default config over a fake tree in the manual dir's `w300/` sub-folder, private nested."""
  tmp = tmp_path_factory.mktemp('w300')
  fake = fake_datasets.write_w300(tmp / 'manual' / 'w300', private='nested')
  with _logged() as messages:
    builder = _prepare(tmp / 'manual', tmp / 'data')
  return builder, fake, '\n'.join(messages)


def test_registered_with_configs(tmp_path):
  assert {c.name for c in w300.W300.BUILDER_CONFIGS} == {'default', 'skip_bad'}
  builder = tfds.builder('w300/skip_bad', data_dir=str(tmp_path))  # Nothing prepared yet.
  assert builder.builder_config.skip_bad_examples
  assert 'ibug.doc.ic.ac.uk' in builder.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_split_sizes_and_membership(prepared):
  builder, fake, _ = prepared
  assert set(builder.info.splits) == set(fake.splits) == {
      'train', 'common', 'challenging', 'full', 'lfpw_test', 'helen_test', 'ibug', 'private'}
  assert fake.splits['full'] == sorted(fake.splits['common'] + fake.splits['challenging'])
  for split, sources in fake.splits.items():
    assert builder.info.splits[split].num_examples == len(sources), split
    assert sorted(_examples(builder, split)) == sources, split
  assert fake.splits['private'] == ['300W/01_Indoor/indoor_001.png',
                                    '300W/01_Indoor/indoor_002.png',
                                    '300W/02_Outdoor/outdoor_001.png']


def test_examples_are_what_was_written(prepared):
  builder, fake, _ = prepared
  for split in ('train', 'full', 'private'):
    for source, example in _examples(builder, split).items():
      face = fake.faces[source]
      # Paired by stem: the landmarks and pixels are those written for this very image.
      np.testing.assert_allclose(example['landmarks'], face.landmarks, rtol=0, atol=1e-4,
                                 err_msg=source)
      assert example['landmarks'].dtype == np.float32
      box = np.concatenate([face.landmarks.min(0), face.landmarks.max(0)])
      np.testing.assert_allclose(example['box'], box, rtol=0, atol=1e-4, err_msg=source)
      assert example['visibility'].all()
      assert example['image'].shape == face.rgb.shape and example['image'].dtype == np.uint8
      if face.lossless:
        np.testing.assert_array_equal(example['image'], face.rgb, err_msg=source)
      else:
        error = np.abs(example['image'].astype(int) - face.rgb).mean()
        assert error < 4, (source, error)
      assert np.isfinite(example['pose']).all()
      if abs(face.pose[0]) > 0.2:
        assert np.sign(example['pose'][0]) == np.sign(face.pose[0]), source
      np.testing.assert_allclose(example['pose'], face.pose, rtol=0, atol=0.05, err_msg=source)


def test_grayscale_and_rgb_sources_both_present(prepared):
  _, fake, _ = prepared  # Guards the fixture: the checks above covered both kinds and formats.
  faces = fake.faces.values()
  assert {f.image.ndim for f in faces} == {2, 3}
  assert {os.path.splitext(f.source)[1] for f in faces} == {'.png', '.jpg'}
  assert len({f.image.shape[:2] for f in faces}) > 3


def test_logs_ignored_images_and_unpublished_sizes(prepared):
  _, fake, log = prepared
  for source in fake.ignored:  # Images without a .pts: named, not read.
    assert os.path.basename(source) in log, source
  assert 'split train has 5' in log and '3148' in log
  assert 'split challenging has 2' in log and '135' in log


def test_missing_manual_dir_says_what_to_download(tmp_path):
  with pytest.raises(real.MissingDataError, match='ibug.doc.ic.ac.uk'):
    _prepare(tmp_path / 'nowhere', tmp_path / 'data')


def test_missing_sub_folder_is_named(tmp_path):
  fake_datasets.write_w300(tmp_path / 'manual')
  (tmp_path / 'manual' / 'ibug').rename(tmp_path / 'elsewhere')
  with pytest.raises(real.MissingDataError, match='ibug') as info:
    _prepare(tmp_path / 'manual', tmp_path / 'data')
  assert 'ibug.doc.ic.ac.uk' in str(info.value)


BAD = {  # kind -> (file to damage, how)
    'truncated_image': ('afw/10_1.jpg', fake_datasets.truncate),
    'points_67': ('afw/2_1.pts', lambda p: fake_datasets.write_bad_pts(p, 'points_67')),
    'nan': ('helen/trainset/100032540_1.pts', lambda p: fake_datasets.write_bad_pts(p, 'nan')),
}


@pytest.mark.parametrize('kind', sorted(BAD))
def test_bad_file_stops_with_its_name(tmp_path, kind):
  fake_datasets.write_w300(tmp_path / 'manual')
  name, damage = BAD[kind]
  damage(tmp_path / 'manual' / name)
  with pytest.raises(formats.FormatError) as info:
    _prepare(tmp_path / 'manual', tmp_path / 'data')
  assert str(info.value).startswith(str(tmp_path / 'manual' / name)), str(info.value)
  assert 'skip_bad_examples' in str(info.value)


def test_skip_bad_skips_and_reports(tmp_path, caplog):
  """All bad kinds at once, plus an annotation without its image; private set at the root."""
  fake = fake_datasets.write_w300(tmp_path / 'manual', private='root')
  bad = {'lfpw/testset/image_0003.png': 'truncated_image', 'afw/2_1.jpg': 'points_67',
         'ibug/image_003_1.jpg': 'nan'}
  for source, kind in bad.items():
    name = source if kind == 'truncated_image' else os.path.splitext(source)[0] + '.pts'
    BAD[kind][1](tmp_path / 'manual' / name)
  orphan = 'helen/testset/30427236_1.jpg'
  (tmp_path / 'manual' / orphan).unlink()
  bad[orphan] = 'orphan'
  with caplog.at_level(logging.WARNING):
    builder = _prepare(tmp_path / 'manual', tmp_path / 'data', config='skip_bad')
  for split, sources in fake.splits.items():
    kept = sorted(set(sources) - set(bad))
    assert sorted(_examples(builder, split)) == kept, split
  assert fake.splits['private'] == ['01_Indoor/indoor_001.png', '01_Indoor/indoor_002.png',
                                    '02_Outdoor/outdoor_001.png']
  report = (builder.data_path / 'bad_examples.txt').read_text()
  for source in bad:
    stem = os.path.splitext(source)[0]
    assert stem in caplog.text, source
    assert stem in report, source
  assert 'no image of the same stem' in report
  assert 'w300/common' in report and 'w300/train' in report


def test_no_private_split_without_private_folders(tmp_path):
  fake = fake_datasets.write_w300(tmp_path / 'manual')
  builder = _prepare(tmp_path / 'manual', tmp_path / 'data')
  assert set(builder.info.splits) == set(fake.splits) and 'private' not in fake.splits
