"""tf.data pipeline: crop geometry, flips, section 3.5 augmentation, determinism, sharding, eval."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import pipeline
from input_pipeline.datasets import synthetic_faces
from treemoe_jax import geometry

S = 150  # Crop size.
BATCH = 8
CONFIG = synthetic_faces.SyntheticFacesConfig(
    name='pipeline_test', num_train=32, num_test=14, num_per_view=4, image_size=200,
    chunk_size=8)


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  builder = synthetic_faces.SyntheticFaces(
      config=CONFIG, data_dir=str(tmp_path_factory.mktemp('tfds')))
  builder.download_and_prepare()
  return builder


@pytest.fixture(scope='module')
def mean_shape(builder):
  return pipeline.mean_shape(builder)


def _split(builder, split) -> dict[str, np.ndarray]:
  return tfds.as_numpy(builder.as_dataset(split, batch_size=-1))


def _crop_reference(landmarks, box, margin=0.25, size=S):
  """Numpy landmark map [N, P, 2]: square of side max(w, h) * (1 + 2 margin) on the box centre."""
  centre = (box[:, :2] + box[:, 2:]) / 2
  side = np.max(box[:, 2:] - box[:, :2], axis=1) * (1 + 2 * margin)
  left_top = centre - side[:, None] / 2
  return (landmarks - left_top[:, None]) * (size / side)[:, None, None] - 0.5


def _bilinear_reference(image, window, size):
  """Numpy bilinear sampling of [H, W] at x = left + (j + 0.5) * side / size (window inside)."""
  left, top, side = window
  x = left + (np.arange(size) + 0.5) * side / size
  y = top + (np.arange(size) + 0.5) * side / size
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  fx, fy = x - x0, y - y0
  x1, y1 = np.minimum(x0 + 1, image.shape[1] - 1), np.minimum(y0 + 1, image.shape[0] - 1)
  rows = lambda yy: (1 - fx) * image[yy][:, x0] + fx * image[yy][:, x1]
  return (1 - fy)[:, None] * rows(y0) + fy[:, None] * rows(y1)


def _in_tf_data(fn, *args):
  """fn(*args) computed inside a tf.data map: graph mode, as the pipeline runs it."""
  ds = tf.data.Dataset.from_tensors(args).map(fn)
  return next(iter(ds.as_numpy_iterator()))


def _example(builder, split='test_frontal', index=0):
  ex = _split(builder, split)
  return {k: tf.constant(ex[k][index]) for k in pipeline.FEATURES}


# --- Preprocessing functions. ---


def test_crop_image_matches_numpy_bilinear():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (120, 130, 1)).astype(np.uint8)
  window = np.array([20.3, 11.7, 83.9], np.float32)  # Inside the image; not a pixel multiple.
  expected = _bilinear_reference(image[..., 0].astype(np.float64), window, S)
  for got in (pipeline.crop_image(tf.constant(image), tf.constant(window), S).numpy(),
              _in_tf_data(lambda i, w: pipeline.crop_image(i, w, S), image, window)):
    np.testing.assert_allclose(got[..., 0], expected, atol=0.02)  # float32 coordinates.


def test_bright_pixel_stays_at_its_mapped_landmark():
  image = np.zeros((200, 200, 1), np.uint8)
  image[87, 103] = 255  # The pixel centred at (x, y) = (103, 87).
  landmarks = np.zeros((68, 2), np.float32) + [103, 87]
  box = np.array([80.2, 64.9, 141.3, 120.6], np.float32)
  out = pipeline.crop_face(
      {'image': image, 'landmarks': landmarks, 'visibility': np.ones(68, bool),
       'pose': np.zeros(3, np.float32), 'box': box}, pipeline.CropConfig())
  x, y = out['landmarks'][0].numpy()
  weight = out['image'].numpy() + 1  # Zero away from the pixel.
  rows, cols = np.mgrid[:S, :S]
  centroid = (np.sum(weight * cols) / weight.sum(), np.sum(weight * rows) / weight.sum())
  np.testing.assert_allclose(centroid, (x, y), atol=0.1)
  assert np.unravel_index(weight.argmax(), weight.shape) == (round(y), round(x))
  np.testing.assert_allclose(
      out['landmarks'], _crop_reference(landmarks[None], box[None])[0], rtol=1e-5)


def test_crop_outside_the_image_reads_black():
  image = np.full((200, 200, 1), 200, np.uint8)
  window = tf.constant([-50.0, 50.0, 100.0])  # Left half of the crop lies outside.
  out = pipeline.normalize(pipeline.to_grayscale(pipeline.crop_image(image, window, S))).numpy()
  assert np.all(out[:, :74] == -1) and np.allclose(out[:, 76:], 200 / 127.5 - 1)


def test_grayscale_of_rgb():
  rgb = np.zeros((4, 4, 3), np.float32) + [255, 0, 0]
  np.testing.assert_allclose(pipeline.to_grayscale(tf.constant(rgb)), 0.2989 * 255, rtol=1e-3)


def test_preprocessing_same_eagerly_and_in_tf_data(builder, mean_shape):
  example = _example(builder)
  seed = pipeline.example_seed(3, tf.constant(5, tf.int64))

  def prepare(ex, seed):
    crop = pipeline.crop_face(ex, pipeline.CropConfig())
    return pipeline.augment(crop, tf.constant(mean_shape), seed, pipeline.AugmentConfig())

  eager = prepare(example, seed)
  graph = _in_tf_data(prepare, example, seed)
  for key, value in eager.items():
    np.testing.assert_allclose(value.numpy(), graph[key], atol=1e-5, err_msg=key)


def test_flip_twice_is_identity(builder):
  crop = pipeline.crop_face(_example(builder), pipeline.CropConfig())
  twice = pipeline.flip(pipeline.flip(crop))
  in_graph = _in_tf_data(lambda ex: pipeline.flip(pipeline.flip(ex)), crop)
  for key in crop:
    np.testing.assert_allclose(twice[key].numpy(), crop[key].numpy(), atol=1e-4)  # x = 149 - x.
    np.testing.assert_allclose(in_graph[key], crop[key].numpy(), atol=1e-4)


def _sample(image, points):
  """Numpy bilinear values of [H, W] at points [P, 2] (x, y) inside the image."""
  x0, y0 = np.floor(points).astype(int).T
  fx, fy = (points - np.floor(points)).T
  at = lambda dy, dx: image[y0 + dy, x0 + dx]
  return ((1 - fy) * ((1 - fx) * at(0, 0) + fx * at(0, 1)) +
          fy * ((1 - fx) * at(1, 0) + fx * at(1, 1)))


def test_flip_swaps_sides_of_rendered_faces(builder):
  """Rendered frontal faces: mirrored pairs swap sides, the labels follow the anatomy.

  The feature labelled 36 (subject's right eye, image left) moves to the image right, where the
  mirror permutation relabels it 45; so the flipped face is again a valid face with 36 left of 45.
  """
  ds = builder.as_dataset('test_frontal').map(
      lambda ex: pipeline.crop_face(ex, pipeline.CropConfig()))
  for crop in ds.take(8):
    flipped = {k: v.numpy() for k, v in pipeline.flip(crop).items()}
    crop = {k: v.numpy() for k, v in crop.items()}
    lm, new = crop['landmarks'], flipped['landmarks']
    for left, right in [(0, 16), (36, 45), (48, 54)]:
      assert lm[left, 0] < lm[right, 0]  # Subject's right side on the image left.
      assert new[right, 0] == pytest.approx(S - 1 - lm[left, 0], abs=1e-4)  # It went right...
      assert new[left, 0] < new[right, 0]  # ...relabelled, so the flipped face is ordered again.
    np.testing.assert_allclose(new, geometry.flip_landmarks(lm, S), atol=1e-4)
    np.testing.assert_array_equal(flipped['image'], crop['image'][:, ::-1])
    # The image moved with the points: each flipped point sees what its mirror saw.
    np.testing.assert_allclose(_sample(flipped['image'], new),
                               _sample(crop['image'], lm)[geometry.MIRROR_68], atol=1e-4)
    np.testing.assert_array_equal(flipped['visibility'], crop['visibility'][geometry.MIRROR_68])
    np.testing.assert_array_equal(flipped['pose'], crop['pose'] * [-1, 1, -1])


@pytest.mark.parametrize('config', [pipeline.AugmentConfig(),
                                    pipeline.AugmentConfig(translate_std=3, scale_std=0.05)])
def test_augmentation_statistics(config):
  """t and s recovered from many perturbed s(0) have the configured means and spreads; p(flip)."""
  n = 3000
  rng = np.random.default_rng(0)
  mean = (rng.uniform(30, 120, (68, 2))).astype(np.float32)
  crop = {'image': tf.zeros((S, S)), 'landmarks': tf.zeros((68, 2)),
          'visibility': tf.ones(68, tf.bool), 'pose': tf.constant([0.5, 0.1, 0.2])}
  ds = tf.data.Dataset.range(n).map(lambda p: pipeline.augment(
      crop, tf.constant(mean), pipeline.example_seed(0, p), config))
  out = next(iter(ds.batch(n).as_numpy_iterator()))
  centred = mean - mean.mean(0)
  t = out['init_shape'].mean(1) - mean.mean(0)  # [n, 2]
  s = np.einsum('npc,pc->n', out['init_shape'] - out['init_shape'].mean(1, keepdims=True),
                centred) / np.sum(centred**2)
  tol = 4 / np.sqrt(n)  # Four standard errors, in units of the spread.
  np.testing.assert_allclose(t.mean(0), 0, atol=tol * config.translate_std)
  np.testing.assert_allclose(t.std(0), config.translate_std, atol=tol * config.translate_std)
  assert abs(s.mean() - 1) < tol * config.scale_std
  assert abs(s.std() - config.scale_std) < tol * config.scale_std
  assert abs(np.mean(out['pose'][:, 0] < 0) - 0.5) < 4 * 0.5 / np.sqrt(n)


# --- Datasets. ---


def _batches(ds, n):
  return [b for _, b in zip(range(n), ds.as_numpy_iterator())]


def test_train_batches_dtypes_shapes_ranges(builder, mean_shape):
  ds = pipeline.train_dataset(builder, global_batch_size=BATCH, seed=0, mean_shape=mean_shape)
  batch = _batches(ds, 1)[0]
  expected = {'image': (np.float32, (BATCH, S, S)), 'landmarks': (np.float32, (BATCH, 68, 2)),
              'init_shape': (np.float32, (BATCH, 68, 2)), 'visibility': (bool, (BATCH, 68)),
              'pose': (np.float32, (BATCH, 3))}
  assert {k: (v.dtype, v.shape) for k, v in batch.items()} == expected
  assert -1 <= batch['image'].min() < 0 < batch['image'].max() <= 1
  assert np.all(np.abs(batch['pose']) <= np.pi)
  # Faces fill the crop less the margin: points between the margins, give or take.
  assert np.all((batch['landmarks'] > 0.1 * S) & (batch['landmarks'] < 0.9 * S))


def test_same_seed_same_bytes(builder, mean_shape):
  make = lambda seed: pipeline.train_dataset(
      builder, global_batch_size=BATCH, seed=seed, mean_shape=mean_shape)
  a, b, c = _batches(make(0), 3), _batches(make(0), 3), _batches(make(1), 3)
  for x, y in zip(a, b):
    assert all(x[k].tobytes() == y[k].tobytes() for k in x)
  assert a[0]['image'].tobytes() != c[0]['image'].tobytes()


@pytest.mark.parametrize('start_step', [5, 8])  # Mid-epoch and on an epoch boundary (4 steps).
def test_start_step_resumes_the_same_batches(builder, mean_shape, start_step):
  make = lambda start: pipeline.train_dataset(
      builder, global_batch_size=BATCH, seed=7, mean_shape=mean_shape, start_step=start)
  full = _batches(make(0), start_step + 3)
  resumed = _batches(make(start_step), 3)
  for x, y in zip(full[start_step:], resumed):
    assert all(x[k].tobytes() == y[k].tobytes() for k in x)


def test_augmentation_depends_on_seed_and_position_only(builder, mean_shape):
  """Two different splits, same seed: the same s(0) perturbations and flips, position by position."""
  make = lambda split: pipeline.train_dataset(
      builder, split=split, global_batch_size=BATCH, seed=3, mean_shape=mean_shape)
  for x, y in zip(_batches(make('train'), 3), _batches(make('test'), 3)):
    np.testing.assert_array_equal(x['init_shape'], y['init_shape'])
    assert not np.array_equal(x['landmarks'], y['landmarks'])


def test_train_hosts_split_each_global_batch(builder, mean_shape):
  """Two hosts' rows, side by side, are the one-host global batch: same data at any host count."""
  make = lambda host, count: _batches(pipeline.train_dataset(
      builder, global_batch_size=BATCH, seed=0, mean_shape=mean_shape, process_index=host,
      process_count=count, start_step=3), 5)  # crosses an epoch boundary (32 faces, 8 a batch)
  whole, halves = make(0, 1), [make(host, 2) for host in range(2)]
  for step, batch in enumerate(whole):
    assert halves[0][step]['image'].shape[0] == BATCH // 2
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]), batch[key])


@pytest.mark.parametrize('process_count,global_batch', [(1, 8), (3, 6)])
def test_eval_covers_every_example_once(builder, mean_shape, process_count, global_batch):
  split = 'test'  # 14 faces: 5 + 5 + 4 over three hosts.
  rows, num_batches = [], set()
  for host in range(process_count):
    ds = pipeline.eval_dataset(builder, split=split, global_batch_size=global_batch,
                               mean_shape=mean_shape, process_index=host,
                               process_count=process_count)
    batches = list(ds.as_numpy_iterator())
    num_batches.add(len(batches))
    for b in batches:
      assert b['mask'].dtype == bool and b['image'].shape[0] == global_batch // process_count
      np.testing.assert_array_equal(b['init_shape'][b['mask']], np.broadcast_to(
          mean_shape, b['init_shape'][b['mask']].shape))
      assert not b['image'][~b['mask']].any()
      rows.extend(b['landmarks'][b['mask']])
  assert len(num_batches) == 1  # Every host runs the same number of steps.
  test = _split(builder, split)
  expected = _crop_reference(test['landmarks'], test['box'])
  assert len(rows) == len(expected) == 14
  for lm in expected:
    assert sum(np.allclose(lm, row, atol=1e-3) for row in rows) == 1


def test_mean_shape_is_numpy_mean_of_train_crops(builder, mean_shape, tmp_path):
  train = _split(builder, 'train')
  expected = _crop_reference(train['landmarks'].astype(np.float64), train['box']).mean(0)
  np.testing.assert_allclose(mean_shape, expected, atol=1e-3)
  assert mean_shape.dtype == np.float32 and mean_shape.shape == (68, 2)
  assert list(builder.data_path.glob('mean_shape_train_*.npy'))  # Stored with the dataset.
  np.testing.assert_array_equal(pipeline.mean_shape(builder), mean_shape)  # From the cache.
  wider = pipeline.mean_shape(builder, crop=pipeline.CropConfig(margin=0.5))
  expected_wider = _crop_reference(train['landmarks'], train['box'], margin=0.5).mean(0)
  np.testing.assert_allclose(wider, expected_wider, atol=1e-3)


# --- Errors. ---


def test_unknown_split_lists_valid_ones(builder, mean_shape):
  with pytest.raises(ValueError, match='test_yaw_30_60'):
    pipeline.eval_dataset(builder, split='validation', global_batch_size=8, mean_shape=mean_shape)


def test_unknown_dataset():
  with pytest.raises(ValueError, match='synthetic_faces'):
    pipeline.get_builder('mnist')


@pytest.mark.parametrize('kwargs', [
    {'global_batch_size': 6, 'process_count': 4},  # Not divisible.
    {'global_batch_size': -8},
    {'global_batch_size': 0},
    {'global_batch_size': 8, 'start_step': -1},
    {'global_batch_size': 8, 'process_index': 2, 'process_count': 2},
    {'global_batch_size': 8, 'crop': pipeline.CropConfig(margin=-0.1)},
    {'global_batch_size': 8, 'augmentation': pipeline.AugmentConfig(scale_std=-1)},
])
def test_bad_sizes_raise(builder, mean_shape, kwargs):
  with pytest.raises(ValueError):
    pipeline.train_dataset(builder, seed=0, mean_shape=mean_shape, **kwargs)
