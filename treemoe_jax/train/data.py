"""Where a run's batches come from: the one training loop takes any `Data`.

`TFDSData(config)` is what `train.py` uses: the tf.data pipeline over a TFDS dataset
(`input_pipeline.pipeline`: crop, box jitter, flips, s(0) jitter), TensorFlow imported when it
is made. `ArrayData` serves faces already cropped and held in memory as numpy arrays, with no
TensorFlow: the accelerator scripts (`experiments/full_size_gpu.py`, `reproduce_gpu.py`) render
and crop faces on the device, then train through the same loop.

Batches are dicts of host numpy arrays, this process's rows of the global batch: image float32
[B, S, S] in [-1, 1], landmarks and init_shape float32 [B, P, 2] in crop pixels, pose float32
[B, 3]; evaluation batches add mask bool [B] (False on padding rows).
"""

from collections.abc import Iterator
from typing import Protocol

import numpy as np


class Data(Protocol):
  """A run's data: its s(0), endless training batches from a step on, evaluation batches."""

  def mean_shape(self) -> np.ndarray:
    """s(0) before placement [P, 2] in crop pixels, learned from the training faces."""

  def train_batches(self, *, mean_shape: np.ndarray, start_step: int) -> Iterator[dict]:
    """The batches of steps start_step + 1, start_step + 2, ... (the same on a resume)."""

  def eval_batches(self, *, mean_shape: np.ndarray) -> Iterator[dict]:
    """Every evaluation face once, padded to whole batches and masked."""


class TFDSData:
  """A TFDS dataset through tf.data, as `config` names it (dataset, splits, crop, augment)."""

  def __init__(self, config):
    from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top (TensorFlow)
    import jax  # pylint: disable=g-import-not-at-top
    self._pipeline, self._config = pipeline, config
    self._common = dict(
        dataset=config.dataset, data_dir=config.data_dir or None,
        process_index=jax.process_index(), process_count=jax.process_count(),
        crop=pipeline.CropConfig(size=config.model.image_size, margin=config.crop_margin))
    builder = pipeline.get_builder(config.dataset, data_dir=config.data_dir or None,
                                   manual_dir=config.get('manual_dir') or None)  # prepared once
    for role, split in (('train_split', config.train_split), ('eval_split', config.eval_split)):
      if split not in builder.info.splits:
        raise ValueError(f'config.{role}={split!r}: {config.dataset} has the splits '
                         f'{", ".join(builder.info.splits)}; choose with --config.{role}=...')

  def mean_shape(self) -> np.ndarray:
    common = self._common
    return self._pipeline.mean_shape(common['dataset'], data_dir=common['data_dir'],
                                     split=self._config.train_split, crop=common['crop'])

  def train_batches(self, *, mean_shape: np.ndarray, start_step: int) -> Iterator[dict]:
    config = self._config
    return self._pipeline.train_dataset(
        global_batch_size=config.batch_size, seed=config.seed, mean_shape=mean_shape,
        start_step=start_step, augmentation=self._pipeline.AugmentConfig(**config.augment),
        shuffle_buffer=config.shuffle_buffer, split=config.train_split,
        **self._common).as_numpy_iterator()

  def eval_batches(self, *, mean_shape: np.ndarray) -> Iterator[dict]:
    return self._pipeline.eval_dataset(
        global_batch_size=self._config.batch_size, mean_shape=mean_shape,
        split=self._config.eval_split, **self._common).as_numpy_iterator()


def place_shapes(mean_shape: np.ndarray, translation: np.ndarray, scale: np.ndarray
                 ) -> np.ndarray:
  """s(0) [B, P, 2]: the mean shape scaled about its centroid by scale [B], then moved by
  translation [B, 2] (section 3.5's jitter; `input_pipeline.pipeline.place_shape` in tf)."""
  centre = mean_shape.mean(0)
  return ((mean_shape - centre) * scale[:, None, None] + centre
          + translation[:, None, :]).astype(np.float32)


class ArrayData:
  """Cropped faces in memory: {'image' [N, S, S], 'landmarks' [N, P, 2], 'pose' [N, 3]}.

  Training batches are drawn without replacement epoch by epoch from `seed`, each face's s(0)
  jittered as `augment` says (translate_std px, scale_std); no box jitter or flips (the faces
  are cropped already). A batch depends only on (seed, step), so a resumed run sees the same.
  """

  def __init__(self, train: dict, evaluation: dict | None = None, *, batch_size: int, seed: int,
               translate_std: float = 0.0, scale_std: float = 0.0, process_index: int = 0,
               process_count: int = 1):
    if batch_size % process_count:
      raise ValueError(f'batch_size {batch_size} is not divisible by {process_count} processes')
    if len(train['image']) < batch_size:
      raise ValueError(f'{len(train["image"])} training faces for a batch of {batch_size}')
    self.train, self.evaluation = train, evaluation
    self.batch_size, self.seed = batch_size, seed
    self.translate_std, self.scale_std = translate_std, scale_std
    self._rows = slice(process_index * batch_size // process_count,
                       (process_index + 1) * batch_size // process_count)

  def mean_shape(self) -> np.ndarray:
    return np.asarray(self.train['landmarks'], np.float32).mean(0)

  def _step_rows(self, step: int) -> np.ndarray:
    """The global batch of 1-based `step`: rows of its epoch's permutation."""
    per_epoch = len(self.train['image']) // self.batch_size
    epoch, index = divmod(step - 1, per_epoch)
    order = np.random.default_rng([self.seed, epoch]).permutation(len(self.train['image']))
    return order[index * self.batch_size:(index + 1) * self.batch_size]

  def train_batches(self, *, mean_shape: np.ndarray, start_step: int) -> Iterator[dict]:
    mean_shape = np.asarray(mean_shape, np.float32)
    step = start_step
    while True:
      step += 1
      rng = np.random.default_rng([self.seed, step, 1])
      shift = rng.normal(0, self.translate_std, (self.batch_size, 2))
      scale = 1 + rng.normal(0, self.scale_std, self.batch_size)
      rows = self._step_rows(step)[self._rows]
      yield {'image': self.train['image'][rows], 'landmarks': self.train['landmarks'][rows],
             'pose': self.train['pose'][rows],
             'init_shape': place_shapes(mean_shape, shift, scale)[self._rows]}

  def eval_batches(self, *, mean_shape: np.ndarray) -> Iterator[dict]:
    if self.evaluation is None:
      return
    faces = self.evaluation
    count = len(faces['image'])
    local = self._rows.stop - self._rows.start
    init = np.broadcast_to(np.asarray(mean_shape, np.float32), faces['landmarks'].shape[1:])
    for start in range(0, count, self.batch_size):
      rows = np.arange(start, start + self.batch_size)[self._rows]
      real = rows < count
      take = np.where(real, rows, 0)
      yield {'image': np.where(real[:, None, None], faces['image'][take], 0).astype(np.float32),
             'landmarks': faces['landmarks'][take].astype(np.float32),
             'pose': faces['pose'][take].astype(np.float32),
             'init_shape': np.broadcast_to(init, (local,) + init.shape).copy(),
             'mask': real}
