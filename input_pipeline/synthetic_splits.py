"""Which faces each split of `synthetic_faces` holds, without TensorFlow.

The TFDS builder (`input_pipeline/datasets/synthetic_faces.py`) writes these faces to disk; a
machine without TensorFlow (this project's GPU sessions, `experiments/reproduce_gpu.py`) renders
the very same faces from here: same chunk seeds, same render settings, same view predicates.

Axis legend: N faces, P = 68 landmarks.
"""

import collections
from collections.abc import Callable, Iterator
import dataclasses
import multiprocessing
import os
from typing import Any, Protocol

import numpy as np

from input_pipeline import synthetic

Faces = dict[str, np.ndarray]  # render_faces output, every array with a leading face axis N.

OCCLUDED_MIN_POINTS = 5  # An occluder hiding fewer landmarks barely tests robustness to occlusion.
MAX_REJECTION = 50  # A view may render at most this many times its size before giving up.
FEATURES = ('image', 'landmarks', 'visibility', 'occluded', 'pose', 'box')  # what a split stores


def _abs_deg(faces: Faces, axis: int) -> np.ndarray:
  return np.abs(np.rad2deg(faces['pose'][:, axis]))


@dataclasses.dataclass(frozen=True)
class View:
  """A test view: render with `render` overrides of the test settings, keep faces passing `keep`."""
  keep: Callable[[Faces], np.ndarray]  # Faces -> [N] bool
  render: dict[str, Any] = dataclasses.field(default_factory=dict)


def _yaw_bucket(lo: float, hi: float) -> View:
  """|yaw| in [lo, hi) deg; rendering within +-hi deg wastes fewer faces."""
  return View(lambda f: (_abs_deg(f, 0) >= lo) & (_abs_deg(f, 0) < hi),
              {'yaw_range_deg': (-min(hi, 90.0), min(hi, 90.0))})


def _frontal(f: Faces) -> np.ndarray:
  pose_ok = (_abs_deg(f, 0) < 30) & (_abs_deg(f, 1) < 20) & (_abs_deg(f, 2) < 20)
  return pose_ok & ~f['has_occluder']


def _large_pose(f: Faces) -> np.ndarray:
  return (_abs_deg(f, 0) >= 45) | (_abs_deg(f, 1) >= 30) | (_abs_deg(f, 2) >= 30)


def _occluded(f: Faces) -> np.ndarray:
  return f['occluded'].sum(axis=1) >= OCCLUDED_MIN_POINTS


TEST_VIEWS: dict[str, View] = {
    'test_yaw_0_30': _yaw_bucket(0, 30),
    'test_yaw_30_60': _yaw_bucket(30, 60),
    'test_yaw_60_90': _yaw_bucket(60, np.inf),  # |yaw| of exactly 90 deg belongs here.
    'test_frontal': View(_frontal, {'pose_distribution': 'frontal', 'occlusion_fraction': 0.0}),
    'test_large_pose': View(_large_pose),
    'test_occluded': View(_occluded, {'pose_distribution': 'frontal', 'occlusion_fraction': 1.0}),
}
# The same views rendered from their own seeds: where every choice (step counts, losses, gates,
# a peer's options) is made, so that the test views are read only for the final tables.
VALIDATION_VIEWS: dict[str, View] = {
    'validation' + name.removeprefix('test'): view for name, view in TEST_VIEWS.items()}
VIEWS = TEST_VIEWS | VALIDATION_VIEWS
EVAL_SPLITS = ('test', 'validation')

# Seed streams: distinct per split so that no two splits share faces. Appended, never reordered:
# the train and test faces of release 1.1.0 are the same faces.
SPLIT_IDS = {name: i for i, name in enumerate(
    ['train', 'test', *TEST_VIEWS, 'validation', *VALIDATION_VIEWS])}


def view_split(view: str, split: str) -> str:
  """'test_frontal' (or 'test') on the `split` side: 'validation_frontal' for 'validation'."""
  if split not in EVAL_SPLITS:
    raise ValueError(f'unknown evaluation split {split!r}; valid: {", ".join(EVAL_SPLITS)}')
  for prefix in EVAL_SPLITS:
    if view == prefix or view.startswith(prefix + '_'):
      return split + view.removeprefix(prefix)
  raise ValueError(f'{view!r} is not a synthetic_faces evaluation split')


class Settings(Protocol):
  """What fixes a split's faces (the fields of the builder's SyntheticFacesConfig)."""
  num_train: int
  num_test: int
  num_per_view: int
  seed: int
  image_size: int
  train_pose_distribution: str
  occlusion_fraction: float
  chunk_size: int
  processes: int


@dataclasses.dataclass(frozen=True)
class SplitSettings:
  """A TensorFlow-free twin of a builder config; `DEFAULT` is `synthetic_faces/default`."""
  num_train: int = 4000
  num_test: int = 1000
  num_per_view: int = 300
  seed: int = 0
  image_size: int = 256
  train_pose_distribution: str = 'wide'
  occlusion_fraction: float = 0.2
  chunk_size: int = 256
  processes: int = 0  # 0 = one per CPU core


DEFAULT = SplitSettings()


def num_examples(settings: Settings, split: str) -> int:
  return {'train': settings.num_train, 'test': settings.num_test,
          'validation': settings.num_test}.get(split, settings.num_per_view)


def render_config(settings: Settings, split: str) -> synthetic.RenderConfig:
  """The renderer's settings for `split`: test and views are wide unless the view says otherwise."""
  pose = settings.train_pose_distribution if split == 'train' else 'wide'
  config = synthetic.RenderConfig(image_size=settings.image_size, pose_distribution=pose,
                                  occlusion_fraction=settings.occlusion_fraction)
  return dataclasses.replace(config, **VIEWS[split].render) if split in VIEWS else config


def chunk_seed(seed: int, split: str, chunk: int) -> int:
  """Independent seed per (dataset seed, split, chunk): re-rendering a chunk gives the same faces."""
  return int(np.random.SeedSequence([seed, SPLIT_IDS[split], chunk]).generate_state(1)[0])


def chunk_size(settings: Settings, split: str) -> int:
  """Faces per chunk; views reject some faces, so they render 4x their size when it is small."""
  oversample = 4 if split in VIEWS else 1
  return min(settings.chunk_size, oversample * num_examples(settings, split))


def render_chunk(settings: Settings, split: str, size: int, chunk: int) -> Faces:
  return synthetic.render_faces(size, seed=chunk_seed(settings.seed, split, chunk),
                                config=render_config(settings, split))


def split_settings(settings: Settings) -> SplitSettings:
  """`settings` as a SplitSettings, what the worker processes unpickle: a builder config would
  make each spawned worker import TensorFlow Datasets to unpickle it (about 1 s per worker)."""
  return SplitSettings(**{f.name: getattr(settings, f.name)
                          for f in dataclasses.fields(SplitSettings)})


def render_ahead(settings: Settings, split: str, size: int, pool=None) -> Iterator[Faces]:
  """Chunks 0, 1, 2, ... of `split` in order, each worker process rendering one ahead.

  Spawned (not forked) workers: a parent with TensorFlow's or JAX's threads would be copied
  mid-flight by a fork. They import only numpy and the renderer (~0.2 s): they get the settings
  as a SplitSettings. `pool`: a multiprocessing pool to render in (one for many splits saves its
  start-up each time). Without one, a split that one chunk is expected to hold renders in this
  process: a pool would render that chunk on one worker, after its start-up (0.3-0.5 s a split;
  the 8 splits of a 13-face set took 4.0-6.6 s so, 0.2-0.3 s in this process).
  """
  settings = split_settings(settings)
  processes = settings.processes or os.cpu_count() or 1
  if pool is None and (processes == 1 or num_examples(settings, split) <= size):
    chunk = 0
    while True:
      yield render_chunk(settings, split, size, chunk)
      chunk += 1
  if pool is None:
    own_pool = multiprocessing.get_context('spawn').Pool(processes)
    try:
      yield from render_ahead(settings, split, size, own_pool)
    finally:  # close and join, not `with`'s terminate: see below
      own_pool.close()
      own_pool.join()
    return
  pending, chunk = collections.deque(), 0
  try:
    while True:
      while len(pending) < processes:
        pending.append(pool.apply_async(render_chunk, (settings, split, size, chunk)))
        chunk += 1
      yield pending.popleft().get()
  finally:
    # The consumer stops once it has its faces, with chunks still rendering. Wait for them, so
    # that no pool is terminated mid-task: a worker killed while writing its result keeps the
    # result queue's lock, and Pool.terminate() then waits on it forever (a test suite hung so).
    for result in pending:
      result.wait()


def examples(settings: Settings, split: str, pool=None) -> Iterator[dict[str, np.ndarray]]:
  """The split's faces in order, one dict of FEATURES each (image [S, S] uint8).

  Chunk c holds `chunk_size` faces from its own seed, so the faces do not depend on how many
  worker processes render them; a view keeps the faces its predicate passes until it has its size.
  """
  num = num_examples(settings, split)
  keep = VIEWS[split].keep if split in VIEWS else lambda f: np.ones(len(f['image']), bool)
  size = chunk_size(settings, split)
  count, rendered = 0, 0
  for faces in render_ahead(settings, split, size, pool):
    if rendered >= MAX_REJECTION * num:
      raise ValueError(f'{split}: only {count} of {rendered} rendered faces passed its predicate; '
                       f'its render settings rarely produce such faces.')
    for i in np.flatnonzero(keep(faces))[:num - count]:
      yield {k: faces[k][i] for k in FEATURES}
      count += 1
    rendered += size
    if count == num:
      return


def render_split(settings: Settings, split: str, pool=None) -> Faces:
  """A whole split as arrays with a leading face axis N, exactly the faces the builder stores."""
  faces = list(examples(settings, split, pool))
  return {k: np.stack([f[k] for f in faces]) for k in FEATURES}
