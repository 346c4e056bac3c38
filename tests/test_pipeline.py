"""tf.data pipeline: crop geometry, flips, section 3.5 augmentation, determinism, sharding, eval."""

import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
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


# A split stored in sorted blocks over many files, as 300W-LP stores a face's views side by side:
# record i lives in file i // RECORDS_PER_FILE and carries i as its pitch (which flips keep).
NUM_FILES, RECORDS_PER_FILE = 32, 6
NUM_RECORDS = NUM_FILES * RECORDS_PER_FILE

with tfds.core.registered.skip_registration():  # A test fixture, not a project dataset.

  class SortedBlocks(tfds.core.GeneratorBasedBuilder):
    """Tiny 8x8 records, written in generation order (no TFDS shuffling)."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, disable_shuffling=True, features=tfds.features.FeaturesDict({
              'image': tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
              'landmarks': tfds.features.Tensor(shape=(68, 2), dtype=np.float32),
              'visibility': tfds.features.Tensor(shape=(68,), dtype=np.bool_),
              'pose': tfds.features.Tensor(shape=(3,), dtype=np.float32),
              'box': tfds.features.Tensor(shape=(4,), dtype=np.float32)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {'train': self._generate_examples()}

    def _generate_examples(self):
      rng = np.random.default_rng(0)
      for i in range(NUM_RECORDS):
        box = np.concatenate([rng.uniform(0.5, 2, 2), rng.uniform(5, 6.5, 2)]).astype(np.float32)
        yield i, {'image': rng.integers(0, 256, (8, 8, 1), np.uint8),
                  'landmarks': rng.uniform(box[:2], box[2:], (68, 2)).astype(np.float32),
                  'visibility': np.ones(68, bool), 'pose': np.array([0, i, 0], np.float32),
                  'box': box}


@pytest.fixture(scope='module')
def blocks(tmp_path_factory):
  builder = SortedBlocks(data_dir=str(tmp_path_factory.mktemp('blocks')))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(num_shards=NUM_FILES))
  assert builder.info.splits['train'].num_shards == NUM_FILES
  return builder


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


def _pil_antialiased(image, window, size=S, pad=300):
  """PIL's antialiased bilinear resize of the window, on the image padded with `pad` px of zeros.

  PIL stretches bilinear's triangle kernel to the output pixel spacing when it shrinks; its pixel i
  covers [i, i + 1], ours [i - 0.5, i + 0.5]. The zeros stand for our "outside reads 0" (PIL
  itself refuses boxes past the top-left and renormalises its kernel at the image's edges).
  """
  left, top = (float(v) + pad + 0.5 for v in window[:2])
  side = float(window[2])
  pil = Image.fromarray(np.pad(image, pad).astype(np.float32))  # mode 'F'
  return np.asarray(pil.resize((size, size), Image.BILINEAR,
                               box=(left, top, left + side, top + side)))


@pytest.mark.parametrize('window', [
    (100.3, 80.7, 4.37 * S), (50.5, 60.25, 5.9 * S),  # A 300-1000 px face, shrunk 4-6x.
    (10.2, 300.1, 1.07 * S),  # Barely shrinking: the kernel is ~bilinear's.
    (-80.3, -50.2, 3.1 * S), (900.3, 850.2, 2.1 * S)])  # Partly outside the image.
def test_shrinking_crop_matches_pil_antialiased_resize(window):
  """Shrinking, the crop is PIL's antialiased resize (same kernel, same pixel-centre map).

  White noise, the hardest input: every pixel's weight matters. Float32 against PIL's float64
  weights: measured MAD < 0.003 and max < 0.01 grey levels, so 0.02 / 0.1. Plain bilinear
  sampling, one point per output pixel and no filter, misses by ~tens of levels.
  """
  image = np.random.default_rng(0).uniform(0, 255, (1000, 1000))
  window = np.array(window, np.float32)
  expected = _pil_antialiased(image, window)
  gray = image.astype(np.float32)[..., None]
  for got in (pipeline.crop_image(tf.constant(gray), tf.constant(window), S).numpy(),
              _in_tf_data(lambda i, w: pipeline.crop_image(i, w, S), gray, window)):
    assert np.abs(got[..., 0] - expected).mean() < 0.02
    np.testing.assert_allclose(got[..., 0], expected, atol=0.1)
  if window[2] > 4 * S:  # The two windows inside the image, shrinking 4-6x:
    assert np.abs(_bilinear_reference(image, window, S) - expected).mean() > 10  # Aliased.


@pytest.mark.parametrize('pattern', ['stripes', 'checkerboard'])
def test_one_pixel_pattern_shrinks_to_grey(pattern):
  """A known fact: 1-px black/white detail shrunk 3.3x is far above the output's Nyquist rate.

  A low-pass filter turns it into near-uniform grey 127.5: a triangle kernel of half-width 3.3 px
  leaves the stripes' +-127.5 at most ~6% (measured std 5.3, max 7.5 levels; a checkerboard
  cancels along both axes: std 0.2). Bilinear sampling without a filter aliases them into a
  pattern of std ~74 (stripes: a triangle wave read at drifting phase, ~255 / sqrt(12)) or ~42.
  """
  rows, cols = np.mgrid[:600, :600]
  image = 255.0 * (cols % 2 if pattern == 'stripes' else (rows + cols) % 2)
  window = np.array([10.2, 20.7, 3.3 * S], np.float32)
  for got in (pipeline.crop_image(tf.constant(image[..., None]), tf.constant(window), S).numpy(),
              _in_tf_data(lambda i, w: pipeline.crop_image(i, w, S), image[..., None], window)):
    got = got[..., 0]
    assert abs(got.mean() - 127.5) < 1
    assert got.std() < 0.05 * 255 and np.abs(got - 127.5).max() < 0.1 * 255
  assert _bilinear_reference(image, window, S).std() > 0.15 * 255  # What it replaces.


def test_shrinking_crop_of_a_colour_photo_matches_pil_per_channel():
  """Channels and axes stay apart: a non-square RGB image, each channel against PIL's resize."""
  image = np.random.default_rng(2).uniform(0, 255, (700, 900, 3)).astype(np.float32)
  image[..., 1] *= 0.5  # Channels that differ, so a channel mix-up shows.
  window = np.array([620.4, -40.3, 2.7 * S], np.float32)  # Shrinks 2.7x, crosses two edges.
  got = pipeline.crop_image(tf.constant(image), tf.constant(window), S).numpy()
  for c in range(3):
    expected = _pil_antialiased(image[..., c], window)
    assert np.abs(got[..., c] - expected).mean() < 0.02
    np.testing.assert_allclose(got[..., c], expected, atol=0.1)


def test_run_ops_on_one_thread_before_and_after_tensorflow_starts():
  """Before any op it sets TensorFlow's intra-op pool to 1; once TensorFlow runs, it changes
  nothing."""
  script = (
      'import sys, tensorflow as tf; from input_pipeline import pipeline\n'
      'if sys.argv[1] == "after": tf.constant(1.0) + 1.0\n'
      'print(pipeline.run_ops_on_one_thread(), '
      'tf.config.threading.get_intra_op_parallelism_threads())\n')
  outputs = [subprocess.run([sys.executable, '-c', script, when], capture_output=True, text=True,
                            check=True, cwd=pathlib.Path(__file__).parents[1]).stdout.split()
             for when in ('before', 'after')]
  assert outputs == [['True', '1'], ['False', '0']]


def test_shrinking_crop_outside_the_image_reads_black():
  image = np.full((250, 200, 1), 200, np.uint8)
  for window in ([-500.0, 50.0, 300.0], [250.0, -40.0, 400.0], [-400.0, -400.0, 301.0]):
    out = pipeline.crop_image(tf.constant(image), tf.constant(window), S).numpy()
    np.testing.assert_array_equal(out, 0)
  # The image's left edge, x = -0.5, is at output x = 36.9; the kernel reaches 1 output px.
  out = pipeline.crop_image(tf.constant(image), tf.constant([-50.0, 20.0, 200.0]), S).numpy()
  assert np.all(out[:, :36] == 0) and np.allclose(out[:, 38:], 200)
  assert np.all((0 < out[:, 37]) & (out[:, 37] < 200))  # Blends in, as bilinear does.


@pytest.mark.parametrize('side', [37.0, 120.5, 150.0])
def test_no_shrink_is_plain_bilinear(side):
  """Up to S px per side the crop is the plain bilinear sampling, antialiasing off."""
  image = np.random.default_rng(1).integers(0, 256, (200, 210, 1)).astype(np.uint8)
  window = np.array([20.3, 11.7, side], np.float32)
  expected = _bilinear_reference(image[..., 0].astype(np.float64), window, S)
  for got in (pipeline.crop_image(tf.constant(image), tf.constant(window), S).numpy(),
              _in_tf_data(lambda i, w: pipeline.crop_image(i, w, S), image, window)):
    np.testing.assert_allclose(got[..., 0], expected, atol=0.02)  # float32 coordinates.


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


# --- Face-box jitter. ---


def _window_reference(box, margin=0.25):
  """Numpy crop windows [N, 3] (left, top, side) of boxes [N, 4]."""
  centre = (box[:, :2] + box[:, 2:]) / 2
  side = np.max(box[:, 2:] - box[:, :2], axis=1) * (1 + 2 * margin)
  return np.concatenate([centre - side[:, None] / 2, side[:, None]], axis=1)


@pytest.mark.parametrize('stds', [{}, {'box_shift_std': 0.1, 'box_scale_std': 0.2}])
def test_jitter_statistics(stds):
  """The crop window moves by N(0, box_shift_std * longer side) per axis, scales by exp(N(0, std))."""
  config = pipeline.AugmentConfig(**stds)
  n = 3000
  box = np.array([50.0, 80.0, 250.0, 230.0], np.float32)  # 200 x 150: the longer side is 200.
  ds = tf.data.Dataset.range(n).map(
      lambda p: pipeline.jitter_box(box, pipeline.example_seed(0, p), config))
  jittered = next(iter(ds.batch(n).as_numpy_iterator())).astype(np.float64)
  for p in range(3):  # Only (seed, position) enters: the same box eagerly, another elsewhere.
    np.testing.assert_allclose(  # To float32 rounding: graph mode may fuse arithmetic.
        pipeline.jitter_box(box, pipeline.example_seed(0, tf.constant(p, tf.int64)), config),
        jittered[p], rtol=1e-6)
  assert len(np.unique(jittered, axis=0)) == n
  window, before = _window_reference(jittered), _window_reference(box[None].astype(np.float64))[0]
  shift = (window[:, :2] + window[:, 2:] / 2 - before[:2] - before[2] / 2) / 200  # [n, 2]
  log_scale = np.log(window[:, 2] / before[2])
  tol = 4 / np.sqrt(n)  # Four standard errors, in units of the spread.
  np.testing.assert_allclose(shift.mean(0), 0, atol=tol * config.box_shift_std)
  np.testing.assert_allclose(shift.std(0), config.box_shift_std, atol=tol * config.box_shift_std)
  assert abs(log_scale.mean()) < tol * config.box_scale_std
  assert abs(log_scale.std() - config.box_scale_std) < tol * config.box_scale_std
  # The box keeps its aspect ratio: both sides scale alike.
  np.testing.assert_allclose(np.log((jittered[:, 3] - jittered[:, 1]) / 150), log_scale, atol=1e-4)


def test_zero_jitter_is_the_unjittered_crop(builder):
  example = _example(builder)
  for position in range(4):
    seed = pipeline.example_seed(3, tf.constant(position, tf.int64))
    box = pipeline.jitter_box(example['box'], seed, pipeline.AugmentConfig(
        box_shift_std=0.0, box_scale_std=0.0))
    np.testing.assert_array_equal(box.numpy(), example['box'].numpy())
    out = pipeline.train_example(example, mean_shape=tf.zeros((68, 2)), seed=seed,
                                 crop=pipeline.CropConfig(),
                                 augmentation=pipeline.AugmentConfig(
                                     box_shift_std=0.0, box_scale_std=0.0, flip_prob=0.0))
    np.testing.assert_array_equal(
        out['image'].numpy(), pipeline.crop_face(example, pipeline.CropConfig())['image'].numpy())
    np.testing.assert_allclose(out['landmarks'], _crop_reference(
        example['landmarks'].numpy()[None], example['box'].numpy()[None])[0], atol=1e-4)


def test_jittered_crop_keeps_landmarks_on_their_image_content():
  """A blob drawn at the (single, shared) landmark: the crop's blob sits on the mapped landmark.

  An 800 px image, box ~400 px: the 600 px window shrinks 4x (antialiased). Flips included.
  """
  x0, y0 = 401.3, 377.6
  rows, cols = np.mgrid[:800, :800]
  blob = 255 * np.exp(-((cols - x0)**2 + (rows - y0)**2) / (2 * 6.0**2))
  example = {'image': tf.constant(np.round(blob)[..., None].astype(np.uint8)),
             'landmarks': tf.constant(np.zeros((68, 2), np.float32) + [x0, y0]),
             'visibility': tf.ones(68, tf.bool), 'pose': tf.zeros(3),
             'box': tf.constant([x0 - 190, y0 - 170, x0 + 210, y0 + 220])}
  config = pipeline.AugmentConfig(box_shift_std=0.1, box_scale_std=0.1)

  def prepare(ex, position):
    return pipeline.train_example(ex, mean_shape=tf.zeros((68, 2)), seed=pipeline.example_seed(
        0, position), crop=pipeline.CropConfig(), augmentation=config)

  n = 4
  eager = [prepare(example, tf.constant(p, tf.int64)) for p in range(n)]
  graph = list(tf.data.Dataset.range(n).map(lambda p: prepare(example, p)).as_numpy_iterator())
  points = []
  for e, g in zip(eager, graph):
    for key in e:  # The same (seed, position): the same example, eagerly and in tf.data.
      np.testing.assert_allclose(e[key].numpy(), g[key], atol=1e-4, err_msg=key)
    image, (x, y) = g['image'], g['landmarks'][0]
    weight = image + 1  # Zero away from the blob.
    centroid = (np.sum(weight * cols[:S, :S]) / weight.sum(),
                np.sum(weight * rows[:S, :S]) / weight.sum())
    np.testing.assert_allclose(centroid, (x, y), atol=0.02)  # Measured < 0.001 px.
    peak = np.unravel_index(image.argmax(), image.shape)
    assert abs(peak[0] - y) <= 1 and abs(peak[1] - x) <= 1
    points.append((x, y))
  assert np.std(points, axis=0).min() > 3  # The jitter moved the face: ~10 px std per axis.


def test_train_batches_use_jittered_boxes(blocks):
  """Jitter on: the points are off the unjittered crop's map; zero stds: exactly on it."""
  stored = _split(blocks, 'train')

  def offsets(augmentation):
    ds = pipeline.train_dataset(blocks, global_batch_size=BATCH, seed=0, augmentation=augmentation,
                                mean_shape=np.zeros((68, 2), np.float32))
    batch = _batches(ds, 1)[0]
    index = batch['pose'][:, 1].astype(int)
    expected = _crop_reference(stored['landmarks'][index], stored['box'][index])
    return np.abs(batch['landmarks'] - expected).max(axis=(1, 2))  # [B]

  assert np.all(offsets(pipeline.AugmentConfig(flip_prob=0.0)) > 0.1)
  np.testing.assert_array_less(offsets(pipeline.AugmentConfig(
      box_shift_std=0.0, box_scale_std=0.0, flip_prob=0.0)), 1e-3)


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


# --- Shuffling across files (SortedBlocks: record i stored in file i // RECORDS_PER_FILE). ---

STEPS_PER_EPOCH = NUM_RECORDS // BATCH  # 24


def _stored_indices(batches) -> np.ndarray:
  """The stored index of each row of the stream, in stream order: [steps * B]."""
  return np.concatenate([b['pose'][:, 1] for b in batches]).astype(int)


def test_epochs_mix_files_and_visit_every_record_once(blocks):
  """A small buffer over sorted blocks: each batch still draws from many files, order ~ random.

  Reading files in stored order, a buffer of 4 lets the first batch see only the first 11 records
  (two files), and the stream's rank correlation with the stored order is ~1.
  """
  ds = pipeline.train_dataset(blocks, global_batch_size=BATCH, seed=0, shuffle_buffer=4,
                              mean_shape=np.zeros((68, 2), np.float32))
  epochs = _stored_indices(_batches(ds, 3 * STEPS_PER_EPOCH)).reshape(3, NUM_RECORDS)
  for order in epochs:
    np.testing.assert_array_equal(np.sort(order), np.arange(NUM_RECORDS))  # Each once.
    files = (order // RECORDS_PER_FILE).reshape(STEPS_PER_EPOCH, BATCH)
    assert min(len(set(batch)) for batch in files) >= 4
    # Spearman's rho of stored index vs stream position (both are ranks).
    assert abs(np.corrcoef(order, np.arange(NUM_RECORDS))[0, 1]) < 0.5
  assert len({order.tobytes() for order in epochs}) == 3  # A new order every epoch.


def test_file_shuffled_stream_resumes_and_splits_across_hosts(blocks):
  """Over several files: start_step=N gives batches N, N+1, ... of a run from 0 (mid-epoch and at
  an epoch boundary), and two hosts' rows side by side are the one-host global batch."""
  make = lambda start, host=0, count=1, seed=5: _batches(pipeline.train_dataset(
      blocks, global_batch_size=BATCH, seed=seed, shuffle_buffer=16, start_step=start,
      process_index=host, process_count=count, mean_shape=np.zeros((68, 2), np.float32)), 3)
  full = _batches(pipeline.train_dataset(
      blocks, global_batch_size=BATCH, seed=5, shuffle_buffer=16,
      mean_shape=np.zeros((68, 2), np.float32)), STEPS_PER_EPOCH + 2)
  for start in (7, STEPS_PER_EPOCH):
    for x, y in zip(full[start:], make(start)):
      assert all(x[k].tobytes() == y[k].tobytes() for k in x)
  halves = [make(STEPS_PER_EPOCH - 1, host, 2) for host in range(2)]  # Crosses an epoch.
  for batch, first, second in zip(full[STEPS_PER_EPOCH - 1:], *halves, strict=True):
    assert first['image'].shape[0] == BATCH // 2
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([first[key], second[key]]), batch[key])
  other = _stored_indices(make(0, seed=6))
  assert not np.array_equal(other, _stored_indices(full[:3]))


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
    pipeline.eval_dataset(builder, split='valid', global_batch_size=8, mean_shape=mean_shape)


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
