"""The `synthetic_faces` TFDS builder: prepares offline, quickly, deterministically; views are right."""

import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

import input_pipeline.datasets  # Registers the builders.
from input_pipeline import synthetic_splits
from input_pipeline.datasets import synthetic_faces

SIZE = 200
CONFIG = synthetic_faces.SyntheticFacesConfig(
    name='test_builder', num_train=16, num_test=8, num_per_view=6, image_size=SIZE, chunk_size=8)


def _prepare(config, data_dir):
  builder = synthetic_faces.SyntheticFaces(config=config, data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder


def _split(builder, split) -> dict[str, np.ndarray]:
  """A whole split as numpy arrays, each with a leading example axis."""
  return tfds.as_numpy(builder.as_dataset(split, batch_size=-1))


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  start = time.perf_counter()
  builder = _prepare(CONFIG, tmp_path_factory.mktemp('tfds'))
  return builder, time.perf_counter() - start


def test_registered_with_configs():
  assert 'synthetic_faces' in tfds.list_builders(with_community_datasets=False)
  assert {'default', 'small'} <= {c.name for c in synthetic_faces.SyntheticFaces.BUILDER_CONFIGS}
  small = tfds.builder('synthetic_faces/small', data_dir='/nonexistent')  # No data needed yet.
  assert small.builder_config.image_size > 150


def test_prepares_small_dataset_in_seconds(prepared):
  builder, seconds = prepared
  assert seconds < 60  # Loose: a shared 2-core machine; typically a few seconds.
  sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
  assert sizes == {'train': 16, 'test': 8, 'validation': 8,
                   **{view: 6 for view in synthetic_faces.VIEWS}}
  assert {f'validation{v.removeprefix("test")}' for v in synthetic_splits.TEST_VIEWS} == set(
      synthetic_splits.VALIDATION_VIEWS)


def test_features(prepared):
  test = _split(prepared[0], 'test')
  assert test['image'].shape == (8, SIZE, SIZE, 1) and test['image'].dtype == np.uint8
  assert test['image'].std() > 10  # Not blank.
  assert test['landmarks'].shape == (8, 68, 2) and test['landmarks'].dtype == np.float32
  assert test['visibility'].shape == (8, 68) and test['visibility'].dtype == bool
  assert test['pose'].shape == (8, 3) and test['pose'].dtype == np.float32
  lm = test['landmarks']
  np.testing.assert_allclose(test['box'], np.concatenate([lm.min(1), lm.max(1)], -1), atol=1e-4)


def test_views_hold_what_their_names_say(prepared):
  deg = lambda v: np.abs(np.rad2deg(v['pose']))  # [N, 3] |yaw|, |pitch|, |roll|
  views = {name: _split(prepared[0], name) for name in synthetic_faces.VIEWS}
  buckets = {'yaw_0_30': (0, 30), 'yaw_30_60': (30, 60), 'yaw_60_90': (60, 90.001)}
  for side in ('test', 'validation'):  # the validation views hold the same kinds of face
    for name, (lo, hi) in buckets.items():
      yaw = deg(views[f'{side}_{name}'])[:, 0]
      assert np.all((yaw >= lo) & (yaw < hi)), (side, name, yaw)
    frontal = views[f'{side}_frontal']
    assert np.all(deg(frontal) < [30, 20, 20]) and not frontal['occluded'].any()
    assert np.all(np.any(deg(views[f'{side}_large_pose']) >= [45, 30, 30], axis=1))
    occluded = views[f'{side}_occluded']
    assert np.all(occluded['occluded'].sum(1) >= synthetic_faces.OCCLUDED_MIN_POINTS)
    assert not np.any(occluded['visibility'] & occluded['occluded'])  # Hidden: not visible.


def test_release_1_1_splits_keep_their_seed_streams():
  """The validation splits were appended: train, test and the test views of release 1.1.0
  draw from the same seed streams, so they are the same faces."""
  old = ['train', 'test', 'test_yaw_0_30', 'test_yaw_30_60', 'test_yaw_60_90', 'test_frontal',
         'test_large_pose', 'test_occluded']
  assert [synthetic_splits.SPLIT_IDS[s] for s in old] == list(range(8))


def test_view_split_maps_test_views_to_validation():
  assert synthetic_splits.view_split('test_frontal', 'validation') == 'validation_frontal'
  assert synthetic_splits.view_split('test', 'validation') == 'validation'
  assert synthetic_splits.view_split('validation_yaw_0_30', 'test') == 'test_yaw_0_30'
  for bad_view, bad_split in [('train', 'test'), ('testing', 'test'), ('test', 'train')]:
    with pytest.raises(ValueError):
      synthetic_splits.view_split(bad_view, bad_split)


def test_splits_do_not_share_faces(prepared):
  faces = [_split(prepared[0], name)['landmarks'] for name in prepared[0].info.splits]
  keys = [lm.tobytes() for split in faces for lm in split]
  assert len(set(keys)) == len(keys)


def test_same_seed_same_bytes_other_seed_differs(prepared, tmp_path):
  config = synthetic_faces.SyntheticFacesConfig(
      name='seed1', num_train=2, num_test=1, num_per_view=1, seed=1, image_size=160, chunk_size=4)
  a, b = (_split(_prepare(config, tmp_path / d), 'train') for d in 'ab')
  for key in a:
    assert a[key].tobytes() == b[key].tobytes(), key
  other_seed = _split(prepared[0], 'train')['landmarks'][:2]  # Seed 0.
  assert not np.allclose(a['landmarks'], other_seed, atol=1)


@pytest.mark.parametrize('bad', [
    {'num_train': -1}, {'num_test': 0}, {'num_per_view': -5}, {'chunk_size': 0}, {'seed': -1},
    {'image_size': 150}, {'train_pose_distribution': 'sideways'}, {'occlusion_fraction': 1.5},
])
def test_bad_config_raises(bad):
  with pytest.raises(ValueError):
    synthetic_faces.SyntheticFacesConfig(name='bad', **bad)


@pytest.mark.parametrize('split', ['train', 'test_yaw_60_90', 'test_occluded'])
def test_tensorflow_free_render_is_the_stored_split(prepared, split):
  """synthetic_splits (no TensorFlow, for GPU sessions) renders exactly the faces the builder stored."""
  from input_pipeline import synthetic_splits  # pylint: disable=g-import-not-at-top
  stored = _split(prepared[0], split)
  settings = synthetic_splits.split_settings(CONFIG)
  rendered = synthetic_splits.render_split(settings, split)
  # TFDS shuffles a split's examples on writing: pair the faces by their (unique) head pose.
  stored_order, rendered_order = (np.lexsort(f['pose'].T) for f in (stored, rendered))
  np.testing.assert_array_equal(rendered['image'][rendered_order],
                                stored['image'][stored_order, ..., 0])  # PNG is lossless
  for key in ('landmarks', 'visibility', 'occluded', 'pose', 'box'):
    np.testing.assert_array_equal(rendered[key][rendered_order], stored[key][stored_order],
                                  err_msg=key)


def test_tensorflow_free_settings_are_the_builder_configs():
  """SplitSettings mirrors SyntheticFacesConfig field by field, and DEFAULT is 'default'."""
  from input_pipeline import synthetic_splits  # pylint: disable=g-import-not-at-top
  import dataclasses  # pylint: disable=g-import-not-at-top
  fields = {f.name: f.default for f in dataclasses.fields(synthetic_splits.SplitSettings)}
  builder_fields = {f.name: f.default for f in dataclasses.fields(synthetic_faces.SyntheticFacesConfig)
                    if f.name in fields}
  assert builder_fields == fields
  default = next(c for c in synthetic_faces.SyntheticFaces.BUILDER_CONFIGS if c.name == 'default')
  assert {k: getattr(default, k) for k in fields} == dataclasses.asdict(synthetic_splits.DEFAULT)


def test_a_split_stopped_early_leaves_no_chunk_rendering():
  """Once its consumer has its faces, `render_ahead` waits for the chunks still rendering, so that
  the pool is never terminated mid-task (a worker killed while writing its result keeps the
  result queue's lock, and Pool.terminate() then waits forever: the suite hung so once)."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic_splits  # pylint: disable=g-import-not-at-top
  settings = synthetic_splits.split_settings(CONFIG)

  class RecordingPool:
    def __init__(self, pool):
      self.pool, self.results = pool, []

    def apply_async(self, *args):
      self.results.append(self.pool.apply_async(*args))
      return self.results[-1]

  with multiprocessing.get_context('spawn').Pool(2) as pool:
    recording = RecordingPool(pool)
    chunks = synthetic_splits.render_ahead(settings, 'train', 4, recording)
    assert len(next(chunks)['image']) == 4
    assert len(recording.results) >= 2  # the next chunk was already asked for
    chunks.close()
    assert all(result.ready() for result in recording.results)


def test_workers_unpickle_their_settings_without_tensorflow_datasets():
  """The pool's workers get a builder config as a SplitSettings: unpickling the config itself
  imports TensorFlow Datasets in each spawned worker (about 1 s each, for every split)."""
  import pickle  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic_splits  # pylint: disable=g-import-not-at-top
  settings = synthetic_splits.split_settings(CONFIG)
  assert isinstance(settings, synthetic_splits.SplitSettings)
  assert all(getattr(settings, k) == getattr(CONFIG, k)
             for k in synthetic_splits.SplitSettings.__dataclass_fields__)
  load = ('import pickle, sys; pickle.loads(sys.stdin.buffer.read()); '
          'print("tensorflow_datasets" in sys.modules)')
  for obj, imports_tensorflow in ((settings, 'False'), (CONFIG, 'True')):
    out = subprocess.run([sys.executable, '-c', load], input=pickle.dumps(obj),
                         capture_output=True, check=True)
    assert out.stdout.decode().strip() == imports_tensorflow, out.stderr.decode()[-2000:]


def test_faces_are_the_same_rendered_in_this_process_or_in_a_pool(monkeypatch):
  """A split that one chunk holds renders in this process (no pool start-up); a larger one in
  spawned workers. Either way each chunk comes from its own seed: the same faces."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import multiprocessing  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic_splits  # pylint: disable=g-import-not-at-top
  settings = synthetic_splits.SplitSettings(num_train=10, num_test=1, num_per_view=2,
                                            image_size=160, chunk_size=4, processes=2)
  in_process = dataclasses.replace(settings, processes=1)
  for split in ('train', 'test_yaw_60_90'):  # 3 chunks; and a view with rejected faces
    pooled, alone = (synthetic_splits.render_split(s, split) for s in (settings, in_process))
    for key in pooled:
      np.testing.assert_array_equal(pooled[key], alone[key], err_msg=f'{split} {key}')
  # The one-chunk split (1 test face, chunks of 4) starts no pool.
  def no_pool(*args, **kwargs):
    raise AssertionError('a pool was started for a split that one chunk holds')
  monkeypatch.setattr(multiprocessing, 'get_context', no_pool)
  assert len(synthetic_splits.render_split(settings, 'test')['image']) == 1
