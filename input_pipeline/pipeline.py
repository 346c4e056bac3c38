"""tf.data input for the cascade: crop, normalise, augment (paper section 3.5), shard per host, batch.

Works on any of the project's TFDS datasets (`input_pipeline.datasets.NAMES`), whose examples hold
image uint8 [H, W, C], landmarks [P, 2], visibility [P], pose [3] and box [4] (the face box).

Letters: B batch (per host), P = 68 landmarks, S crop size (150), H, W, C the stored image.
Coordinates follow SPEC: (x, y), 0-based, pixel centres at integers. A crop window is
(left, top, side): the square [left, left + side] x [top, top + side] in those coordinates, so the
crop's output pixel j covers input [left + j * side / S, left + (j + 1) * side / S]. A crop that
shrinks (side > S) is low-pass filtered (antialiased), so train, eval and inference see faces of
any source size alike.

Batches are dicts: image float32 [B, S, S] in [-1, 1], landmarks float32 [B, P, 2] and init_shape
float32 [B, P, 2] (s(0)) in crop pixels, visibility bool [B, P], pose float32 [B, 3] (yaw, pitch,
roll); eval batches add mask bool [B] (False on padding).
"""

import dataclasses
import math
import re
import uuid

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from input_pipeline import datasets
from treemoe_jax import geometry

Features = dict[str, tf.Tensor]
DatasetLike = str | tfds.core.DatasetBuilder  # 'name' or 'name/config', or a builder instance.

FEATURES = ('image', 'landmarks', 'visibility', 'pose', 'box')  # What every dataset provides.
EVAL_EXTRAS = ('landmarks_29',)  # What some add for evaluation in their own markup (COFW).
# Training reads this many record files at a time, round-robin: with files in a shuffled order,
# a batch mixes many files even when each file stores similar records (a face's views) together.
INTERLEAVED_FILES = 16
# Encoded records in the shuffle buffer (per host, refilled each epoch). 10k covers synthetic_faces
# whole and, after file shuffling, mixes ~10k of 300W-LP's 122k records (~30-60 kB jpgs: ~0.5 GB).
SHUFFLE_BUFFER = 10_000


@dataclasses.dataclass(frozen=True)
class CropConfig:
  """How a face is cut out: a square around its box, widened so the cascade sees context."""
  size: int = 150
  margin: float = 0.25  # Added on each side, as a fraction of the box's longer side.

  def validate(self) -> None:
    if self.size < 1 or self.margin < 0:
      raise ValueError(f'crop size must be >= 1 and margin >= 0, got {self}')


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Section 3.5: s(0) moved by t ~ N(0, translate_std) px per axis, scaled by s ~ N(1, scale_std).

  Beyond the paper, the face box is jittered before cropping (`jitter_box`), as a detector's box
  would be: the face moves in the crop while s(0) stays the mean shape placed as usual.
  """
  translate_std: float = 10.0  # Crop pixels.
  scale_std: float = 0.1
  flip_prob: float = 0.5
  # Box shift std per axis, as a fraction of the box's longer side, and std of its log-scale.
  # 0.05 is a detector's typical error: ~5 crop px (1/30 of the 1.5x-wide window) and +-5% in
  # size; three sigmas (15% of the side) stay inside the 25% margin, so faces are not cut off.
  box_shift_std: float = 0.05
  box_scale_std: float = 0.05

  def validate(self) -> None:
    stds = (self.translate_std, self.scale_std, self.box_shift_std, self.box_scale_std)
    if min(stds) < 0 or not 0 <= self.flip_prob <= 1:
      raise ValueError(f'stds must be >= 0 and flip_prob in [0, 1], got {self}')


def run_ops_on_one_thread() -> bool:
  """Gives each TensorFlow op one thread; call before TensorFlow runs anything.

  tf.data's parallel map already works on as many images at once as there are cores. Splitting
  each image's small ops (decode, the crop's gathers) across TensorFlow's intra-op pool as well
  costs more in hand-offs than it saves: on 2 cores the training pipeline ran 1.4x faster on one
  thread per op (docs/benchmarks.md, "Data (CPU)"). tf.data's own option
  (threading.max_intra_op_parallelism = 1) did not give that. JAX's threads are its own, so the
  model is untouched. Returns False, changing nothing, when TensorFlow has already started.
  """
  if tf.config.threading.get_intra_op_parallelism_threads() == 1:
    return True
  try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
  except RuntimeError:  # TensorFlow is initialised: its thread pools are fixed.
    return False
  return True


# --- Preprocessing: small functions of one example, usable eagerly and inside tf.data. ---


def crop_window(box: tf.Tensor, margin: float) -> tf.Tensor:
  """(left, top, side) [3]: the square on the box centre, its longer side plus `margin` each side."""
  box = tf.cast(box, tf.float32)
  centre = (box[:2] + box[2:]) / 2
  side = tf.reduce_max(box[2:] - box[:2]) * (1 + 2 * margin)
  side = tf.maximum(side, 1.0)  # A degenerate box still gives an invertible map.
  return tf.concat([centre - side / 2, [side]], axis=0)


def crop_landmarks(landmarks: tf.Tensor, window: tf.Tensor, size: int) -> tf.Tensor:
  """Points [..., P, 2] mapped into the crop: x_out = (x_in - left) * S / side - 0.5."""
  return (landmarks - window[:2]) * (size / window[2]) - 0.5


def _bilinear_crop(image: tf.Tensor, window: tf.Tensor, size: int) -> tf.Tensor:
  """Output pixel j samples input x = left + (j + 0.5) * side / S bilinearly; outside reads 0."""
  hw = tf.cast(tf.shape(image)[:2], tf.float32)
  step = window[2] / size
  first = window[:2] + 0.5 * step  # (x, y) sampled by output pixel 0
  last = window[:2] + (size - 0.5) * step
  # crop_and_resize wants [y0, x0, y1, x1], normalised so that 0 and 1 are the first and last centres.
  norm = tf.concat([first[::-1], last[::-1]], axis=0) / tf.tile(hw - 1, [2])
  crop = tf.image.crop_and_resize(image[None], norm[None], [0], [size, size], method='bilinear')
  return crop[0]


def _triangle_taps(first: tf.Tensor, step: tf.Tensor, size: int, length: tf.Tensor
                   ) -> tuple[tf.Tensor, tf.Tensor]:
  """One axis of the antialiased crop: input indices int32 [S, K] and their weights [S, K].

  Output pixel j is centred on input x_j = first + j * step; its kernel is a triangle of half-width
  `step` input px, so it reaches the K = ceil(2 step) + 1 integers from floor(x_j - step) + 1 on.
  Weights are normalised over all of them, then those outside [0, length) are zeroed: the image
  is extended by zeros. Indices are clipped into the image (their weight is already 0).
  """
  taps = tf.cast(tf.math.ceil(2 * step), tf.int32) + 1
  centres = first + tf.range(size, dtype=tf.float32) * step  # [S]
  index = (tf.floor(centres - step) + 1)[:, None] + tf.range(taps, dtype=tf.float32)  # [S, K]
  weight = tf.maximum(0.0, 1.0 - tf.abs(index - centres[:, None]) / step)
  weight /= tf.reduce_sum(weight, axis=1, keepdims=True)
  inside = (index >= 0) & (index <= tf.cast(length - 1, tf.float32))
  return tf.clip_by_value(tf.cast(index, tf.int32), 0, length - 1), tf.where(inside, weight, 0.0)


# Up to this many taps per output pixel (shrinking up to 3.5x) a crop gathers them all at once
# (10% faster in the training pipeline); beyond, one at a time, so that memory stays bounded.
GATHERED_TAPS = 8


def _resample_rows(image: tf.Tensor, index: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
  """[H, X] (any dtype) -> float32 [S, X]: row j is the `weight` [S, K]-weighted sum of the rows
  `index` [S, K].

  Gathering all K taps at once holds [S, K, X]; shrinking a 4000 px face from a 48 MP photo
  reads K = 81 taps, ~1 GB that way, so past GATHERED_TAPS the taps are summed one at a time.
  """
  taps = tf.shape(index)[1]

  def all_at_once():
    rows = tf.cast(tf.gather(image, index), tf.float32)  # [S, K, X]
    return tf.matmul(weight[:, None, :], rows)[:, 0]  # [S, 1, K] @ [S, K, X]

  def one_at_a_time():
    def add_tap(k, total):
      rows = tf.cast(tf.gather(image, index[:, k]), tf.float32)  # [S, X]
      return k + 1, total + weight[:, k, None] * rows

    total = tf.zeros([tf.shape(index)[0], tf.shape(image)[1]], tf.float32)
    return tf.while_loop(lambda k, _: k < taps, add_tap, (0, total))[1]

  return tf.cond(taps <= GATHERED_TAPS, all_at_once, one_at_a_time)


def _antialiased_crop(image: tf.Tensor, window: tf.Tensor, size: int) -> tf.Tensor:
  """The same pixel-centre map through a low-pass filter: for shrinking (side > S) without aliasing.

  Output pixel j is the weighted mean of the input pixels around x = left + (j + 0.5) * side / S,
  weights a triangle of half-width side / S input px (bilinear's kernel stretched to the output
  spacing, as PIL's and tf.image.resize's antialiased bilinear), the image extended by zeros.
  Separable: rows, then columns, each a weighted sum of K gathered taps. (2-3x faster than
  tf.raw_ops.ScaleAndTranslate, the same kernel, which took most of the pipeline's time.)
  """
  step = window[2] / size
  height, width, channels = tf.unstack(tf.shape(image))
  rows, row_weight = _triangle_taps(window[1] + 0.5 * step, step, size, height)
  cols, col_weight = _triangle_taps(window[0] + 0.5 * step, step, size, width)
  # Only the columns some tap reads (a 150 px window of a big photo reads a small part of it).
  first, stop = tf.reduce_min(cols), tf.reduce_max(cols) + 1
  part = tf.reshape(image[:, first:stop], [height, -1])  # [H, w * C], still the image's dtype
  part = _resample_rows(part, rows, row_weight)  # [S(y), w * C]
  part = tf.reshape(tf.transpose(tf.reshape(part, [size, stop - first, channels]), [1, 0, 2]),
                    [stop - first, size * channels])  # [w, S(y) * C]
  crop = _resample_rows(part, cols - first, col_weight)  # [S(x), S(y) * C]
  return tf.transpose(tf.reshape(crop, [size, size, channels]), [1, 0, 2])


def crop_image(image: tf.Tensor, window: tf.Tensor, size: int) -> tf.Tensor:
  """Crop-resize of [H, W, C] to float32 [S, S, C], same pixel-centre map as the points.

  Output pixel j is centred on input x = left + (j + 0.5) * side / S; outside the image reads 0.
  Up to S px per side it samples there bilinearly; a larger window (a 300-1000 px face shrunk to
  150) goes through a low-pass filter first, which bilinear sampling lacks, so fine detail (hair,
  texture, JPEG noise) does not alias into the crop.
  """
  return tf.ensure_shape(
      tf.cond(window[2] > size, lambda: _antialiased_crop(image, window, size),
              lambda: _bilinear_crop(image, window, size)),
      [size, size, image.shape[-1]])


def to_grayscale(image: tf.Tensor) -> tf.Tensor:
  """[S, S, C] -> [S, S]: the model reads one channel."""
  if image.shape[-1] == 3:
    image = tf.image.rgb_to_grayscale(image)
  return image[..., 0]


def normalize(image: tf.Tensor) -> tf.Tensor:
  """[0, 255] -> [-1, 1], the model's input range."""
  return tf.cast(image, tf.float32) / 127.5 - 1.0


def face_image(image: tf.Tensor, window: tf.Tensor, size: int) -> tf.Tensor:
  """The model's input: [H, W, C] uint8 -> the window's grayscale crop [S, S] in [-1, 1].

  The one crop of training, evaluation and inference on people's photos (treemoe_jax.aligner).
  """
  return normalize(to_grayscale(crop_image(image, window, size)))


def uncrop_landmarks(points, window, size: int):
  """Crop pixels [..., P, 2] back to the image's: the inverse of `crop_landmarks` (numpy or tf)."""
  return (points + 0.5) * (window[2] / size) + window[:2]


def crop_face(features: Features, crop: CropConfig) -> Features:
  """A stored example -> the face crop: image [S, S] in [-1, 1], landmarks in crop pixels."""
  window = crop_window(features['box'], crop.margin)
  image = face_image(features['image'], window, crop.size)
  return {
      'image': image,
      'landmarks': crop_landmarks(tf.cast(features['landmarks'], tf.float32), window, crop.size),
      'visibility': tf.cast(features['visibility'], tf.bool),
      'pose': tf.cast(features['pose'], tf.float32),
  }


def flip(features: Features) -> Features:
  """Mirrors a crop left-right: x -> S-1-x, points and visibility permuted, yaw and roll negated."""
  size = tf.cast(tf.shape(features['image'])[1], tf.float32)
  landmarks = tf.gather(features['landmarks'], geometry.MIRROR_68, axis=-2)
  x = size - 1 - landmarks[..., 0]
  return features | {
      'image': features['image'][:, ::-1],
      'landmarks': tf.stack([x, landmarks[..., 1]], axis=-1),
      'visibility': tf.gather(features['visibility'], geometry.MIRROR_68, axis=-1),
      'pose': features['pose'] * tf.constant([-1.0, 1.0, -1.0]),
  }


def place_shape(shape: tf.Tensor, translation: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
  """Scales [P, 2] about its centroid, then translates it by [2]."""
  centre = tf.reduce_mean(shape, axis=-2, keepdims=True)
  return (shape - centre) * scale + centre + translation


def example_seed(seed: int, position: tf.Tensor) -> tf.Tensor:
  """The stateless seed [2] of the example at `position` of the global stream: nothing else enters."""
  return tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), position)


def jitter_box(box: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
  """A detector-like face box [4] (x0, y0, x1, y1), drawn from `seed` [2].

  Shifted by N(0, box_shift_std * side) px per axis and scaled about its centre by
  exp(N(0, box_scale_std)), side = the box's longer side: log-normal, so growing and shrinking by
  the same factor are equally likely and the box never flips. Zero stds return `box` unchanged.
  """
  box = tf.cast(box, tf.float32)
  shift_seed, scale_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  side = tf.reduce_max(box[2:] - box[:2])
  shift = tf.random.stateless_normal([2], shift_seed) * (config.box_shift_std * side)
  scale = tf.exp(tf.random.stateless_normal([], scale_seed) * config.box_scale_std)
  centre = (box[:2] + box[2:]) / 2
  # Written as box + change, so that a zero change leaves the box bit for bit.
  return box + tf.tile(shift, [2]) + (box - tf.tile(centre, [2])) * (scale - 1)


def augment(features: Features, mean_shape: tf.Tensor, seed: tf.Tensor,
            config: AugmentConfig) -> Features:
  """Section 3.5: a perturbed s(0) and a flip with probability `flip_prob`, all drawn from `seed`."""
  t_seed, s_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  translation = tf.random.stateless_normal([2], t_seed) * config.translate_std
  scale = 1.0 + tf.random.stateless_normal([], s_seed) * config.scale_std
  features = tf.cond(tf.random.stateless_uniform([], flip_seed) < config.flip_prob,
                     lambda: flip(features), lambda: features)
  return features | {'init_shape': place_shape(mean_shape, translation, scale)}


def train_example(features: Features, *, mean_shape: tf.Tensor, seed: tf.Tensor, crop: CropConfig,
                  augmentation: AugmentConfig) -> Features:
  """A decoded stored example -> a training example: jittered box, crop, then `augment`.

  Box and augmentation draw from two halves of `seed` [2], so neither's randomness moves the other.
  """
  box_seed, augment_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  features = features | {'box': jitter_box(features['box'], box_seed, augmentation)}
  return augment(crop_face(features, crop), mean_shape, augment_seed, augmentation)


# --- Datasets. ---


def get_builder(dataset: DatasetLike, *, data_dir: str | None = None,
                manual_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """A prepared builder of one of the project's datasets (rendered or converted here if needed).

  Downloaded datasets (w300, cofw, ...) are converted once from `manual_dir` (default: TFDS's
  DATA_DIR/downloads/manual); afterwards the prepared copy in `data_dir` is read.
  """
  if isinstance(dataset, tfds.core.DatasetBuilder):
    builder = dataset
  else:
    if dataset.split('/')[0] not in datasets.NAMES:
      raise ValueError(f'Unknown dataset {dataset!r}; the project has {", ".join(datasets.NAMES)}.')
    builder = tfds.builder(dataset, data_dir=data_dir)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=config)
  return builder


def _check_split(builder: tfds.core.DatasetBuilder, split: str) -> None:
  name = re.match(r'\w*', split).group()
  if name not in builder.info.splits:
    raise ValueError(f'Unknown split {split!r} of {builder.info.full_name}; valid: '
                     f'{", ".join(sorted(builder.info.splits))}.')


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'global_batch_size {global_batch_size} must be positive and divisible by '
                     f'the process count {process_count}.')
  return global_batch_size // process_count


def _host_split(builder: tfds.core.DatasetBuilder, split: str, process_index: int,
                process_count: int) -> tuple[str, int]:
  """This host's slice of `split` (disjoint across hosts, together all of it) and its size."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  host_split = tfds.split_for_jax_process(
      split, process_index=process_index, process_count=process_count)
  return host_split, builder.info.splits[host_split].num_examples


def _records(builder: tfds.core.DatasetBuilder, split: str, extras: tuple[str, ...] = ()
             ) -> tf.data.Dataset:
  """The common features, image left encoded so that skipped or shuffled records stay cheap."""
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  return ds.map(lambda ex: {k: ex[k] for k in FEATURES + extras})


def _decode(builder: tfds.core.DatasetBuilder, features: Features) -> Features:
  return features | {'image': builder.info.features['image'].decode_example(features['image'])}


def _parse(builder: tfds.core.DatasetBuilder, serialized: tf.Tensor) -> Features:
  """One serialized record -> the common features, image still encoded (as `_records` gives)."""
  features = builder.info.features.deserialize_example(
      serialized, decoders={'image': tfds.decode.SkipDecoding()})
  return {k: features[k] for k in FEATURES}


def _record_files(builder: tfds.core.DatasetBuilder, split: str) -> Features:
  """`split`'s record files (TFDS shards) as tensors [N]: filename, skip, take (a slice reads part)."""
  instructions = builder.info.splits[split].file_instructions
  files = {'filename': tf.constant([i.filename for i in instructions], tf.string),
           'skip': tf.constant([i.skip for i in instructions], tf.int64),
           'take': tf.constant([i.take for i in instructions], tf.int64)}
  if sum(i.take for i in instructions) != builder.info.splits[split].num_examples:
    raise ValueError(f'The files of split {split!r} do not hold its '
                     f'{builder.info.splits[split].num_examples} examples.')
  return files


def _shuffled_files(builder: tfds.core.DatasetBuilder, files: Features, seed: tf.Tensor,
                    cycle_length: int) -> tf.data.Dataset:
  """The serialized records of `files` (`_record_files`), in an order drawn from `seed` [2].

  Files are taken in a shuffled order, `cycle_length` of them read round-robin (deterministically):
  neighbours in the stream come from different files, whatever the order records are stored in.
  """
  adapter = tfds.core.file_adapters.ADAPTER_FOR_FORMAT[builder.info.file_format]
  order = tf.random.experimental.stateless_shuffle(tf.range(tf.size(files['filename'])), seed)
  ds = tf.data.Dataset.from_tensor_slices({k: tf.gather(v, order) for k, v in files.items()})
  return ds.interleave(
      lambda f: adapter.make_tf_data(f['filename']).skip(f['skip']).take(f['take']),
      cycle_length=cycle_length, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True)


def train_dataset(dataset: DatasetLike, *, global_batch_size: int, seed: int,
                  mean_shape: np.ndarray, data_dir: str | None = None, split: str = 'train',
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  crop: CropConfig = CropConfig(), augmentation: AugmentConfig = AugmentConfig(),
                  shuffle_buffer: int = SHUFFLE_BUFFER) -> tf.data.Dataset:
  """This host's rows of an infinite stream of global batches, a pure function of (seed, step).

  The global stream is epoch after epoch of the whole split, each shuffled with seeds drawn from
  (seed, epoch): the split's record files in a shuffled order, `INTERLEAVED_FILES` read
  round-robin, then a `shuffle_buffer` of records (stored order, e.g. a face's views side by side,
  does not survive into batches). The example at stream position p = step * B + i is jittered and
  augmented with `example_seed(seed, p)` (`train_example`). Every host walks the same stream of
  *encoded* records and parses, decodes and augments only its own rows [h * B/H, (h + 1) * B/H)
  of each global batch, so the global batch is the same whatever the number of hosts (a run
  resumed on another slice sees the same data), and `start_step=N` yields exactly the batches N,
  N+1, ... of a run from step 0 (reading, not decoding, at most one epoch's records to get there).
  """
  crop.validate()
  augmentation.validate()
  if start_step < 0 or shuffle_buffer < 1:
    raise ValueError(f'start_step must be >= 0 and shuffle_buffer >= 1, got {start_step}, '
                     f'{shuffle_buffer}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index {process_index} not in [0, {process_count}).')
  builder = get_builder(dataset, data_dir=data_dir)
  _check_split(builder, split)
  local = _local_batch_size(global_batch_size, process_count)
  num = builder.info.splits[split].num_examples
  if num == 0:
    raise ValueError(f'Split {split!r} of {builder.info.full_name} is empty.')
  files = _record_files(builder, split)
  first_epoch, skip = divmod(start_step * global_batch_size, num)
  epoch_key = tf.constant([seed, 1], tf.int64)

  def epoch(e: tf.Tensor) -> tf.data.Dataset:
    file_seed, buffer_key = tf.unstack(tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(epoch_key, e), 2))
    buffer_seed = tf.random.stateless_uniform([], buffer_key, minval=None, maxval=None,
                                              dtype=tf.int64)
    records = _shuffled_files(builder, files, file_seed, INTERLEAVED_FILES)
    shuffled = records.shuffle(min(shuffle_buffer, num), seed=buffer_seed)
    return shuffled.enumerate(start=e * num).skip(skip * tf.cast(e == first_epoch, tf.int64))

  mean = tf.constant(mean_shape, tf.float32)

  @tf.autograph.experimental.do_not_convert  # plain tensor code: nothing for AutoGraph to do
  def prepare(position: tf.Tensor, serialized: tf.Tensor) -> Features:
    return train_example(_decode(builder, _parse(builder, serialized)), mean_shape=mean,
                         seed=example_seed(seed, position), crop=crop, augmentation=augmentation)

  rows = slice(process_index * local, (process_index + 1) * local)
  ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch)
  ds = ds.batch(global_batch_size, drop_remainder=True)  # encoded: cheap to batch and drop
  ds = ds.map(lambda position, serialized: (position[rows], serialized[rows]))
  ds = ds.unbatch().map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(dataset: DatasetLike, *, global_batch_size: int, mean_shape: np.ndarray,
                 data_dir: str | None = None, split: str = 'test', process_index: int = 0,
                 process_count: int = 1, crop: CropConfig = CropConfig()) -> tf.data.Dataset:
  """This host's slice of `split` once, in order, s(0) = the mean shape, padded and masked.

  Every host yields the same number of batches (enough for the largest slice), so a global step
  never waits on a host that ran out; padding rows are zeros with mask False.
  """
  crop.validate()
  builder = get_builder(dataset, data_dir=data_dir)
  _check_split(builder, split)
  batch = _local_batch_size(global_batch_size, process_count)
  host_split, num = _host_split(builder, split, process_index, process_count)
  largest = max(_host_split(builder, split, i, process_count)[1] for i in range(process_count))
  num_batches = math.ceil(largest / batch)
  mean = tf.constant(mean_shape, tf.float32)

  # Evaluation-only truth some datasets add in another markup (COFW's 29 points), mapped into
  # the same crop as the 68 points.
  extras = tuple(k for k in EVAL_EXTRAS if k in builder.info.features)

  @tf.autograph.experimental.do_not_convert
  def prepare(features: Features) -> Features:
    cropped = crop_face(_decode(builder, features), crop)
    window = crop_window(features['box'], crop.margin)
    for key in extras:
      cropped[key] = crop_landmarks(tf.cast(features[key], tf.float32), window, crop.size)
    return cropped | {'init_shape': mean, 'mask': tf.constant(True)}

  ds = _records(builder, host_split, extras).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  padding = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_batches * batch - num))
  return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def mean_shape(dataset: DatasetLike, *, data_dir: str | None = None, split: str = 'train',
               crop: CropConfig = CropConfig()) -> np.ndarray:
  """s(0) before placement: the mean of `split`'s landmarks in their face crops, float32 [P, 2].

  Computed once from the whole split (every host gets the same) and cached beside the prepared
  data, so it travels with the dataset and is never hard-coded.
  """
  crop.validate()
  builder = get_builder(dataset, data_dir=data_dir)
  _check_split(builder, split)
  path = builder.data_path / f'mean_shape_{split}_size{crop.size}_margin{crop.margin}.npy'
  if path.exists():
    return np.load(path)
  ds = _records(builder, split).map(lambda ex: crop_landmarks(
      ex['landmarks'], crop_window(ex['box'], crop.margin), crop.size))
  total, count = np.zeros((geometry.NUM_LANDMARKS, 2)), 0
  for shapes in ds.batch(1024).as_numpy_iterator():
    total += shapes.astype(np.float64).sum(axis=0)
    count += len(shapes)
  mean = (total / count).astype(np.float32)
  tmp = path.with_suffix(f'.{uuid.uuid4().hex}.tmp')  # Hosts may race: write, then rename.
  with tmp.open('wb') as f:
    np.save(f, mean)
  tmp.replace(path)
  return mean
