"""Where the one training loop's batches come from: `ArrayData` (faces in memory, no TensorFlow)
against what a batch source must do, and the loop trained from it in a process where TensorFlow
cannot be imported at all."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from treemoe_jax.train import data as data_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def faces(count: int, size: int = 8) -> dict:
  """Face i's image is filled with the value i, so a batch row says which face it is."""
  rng = np.random.default_rng(0)
  return {'image': np.broadcast_to(np.arange(count, dtype=np.float32)[:, None, None],
                                   (count, size, size)).copy(),
          'landmarks': rng.uniform(0, size, (count, 68, 2)).astype(np.float32),
          'pose': rng.uniform(-1, 1, (count, 3)).astype(np.float32)}


def ids(batch: dict) -> list[int]:
  return [int(v) for v in batch['image'][:, 0, 0]]


def test_each_epoch_visits_every_face_once_and_a_resume_sees_the_same_batches():
  data = data_lib.ArrayData(faces(20), batch_size=5, seed=3)
  mean = data.mean_shape()
  stream = data.train_batches(mean_shape=mean, start_step=0)
  first = [next(stream) for _ in range(8)]  # two epochs of 4 steps
  for epoch in (first[:4], first[4:]):
    assert sorted(i for batch in epoch for i in ids(batch)) == list(range(20))
  assert [ids(b) for b in first[:4]] != [ids(b) for b in first[4:]]  # reshuffled
  resumed = data.train_batches(mean_shape=mean, start_step=5)  # steps 6, 7, 8
  for want in first[5:]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_rows_carry_their_faces_and_s0_is_the_jittered_mean_shape():
  train = faces(12)
  mean = train['landmarks'].mean(0)
  plain = data_lib.ArrayData(train, batch_size=4, seed=0)
  np.testing.assert_allclose(plain.mean_shape(), mean, rtol=1e-6)
  batch = next(plain.train_batches(mean_shape=mean, start_step=0))
  for row, face in enumerate(ids(batch)):
    np.testing.assert_array_equal(batch['landmarks'][row], train['landmarks'][face])
    np.testing.assert_array_equal(batch['pose'][row], train['pose'][face])
    np.testing.assert_allclose(batch['init_shape'][row], mean, atol=1e-5)  # no jitter asked
  jittered = data_lib.ArrayData(train, batch_size=4, seed=0, translate_std=3.0, scale_std=0.1)
  stream = jittered.train_batches(mean_shape=mean, start_step=0)
  moves, scales = [], []
  for _ in range(500):
    init = next(stream)['init_shape']
    moves.append(init.mean(1) - mean.mean(0))  # the centroid moves by the translation
    spread = np.linalg.norm(init - init.mean(1, keepdims=True), axis=-1).mean(1)
    scales.append(spread / np.linalg.norm(mean - mean.mean(0), axis=-1).mean())
  moves, scales = np.concatenate(moves), np.concatenate(scales)
  assert abs(moves.mean()) < 0.15 and abs(moves.std() - 3.0) < 0.15
  assert abs(scales.mean() - 1.0) < 0.01 and abs(scales.std() - 0.1) < 0.01


def test_evaluation_sees_every_face_once_padded_and_split_over_hosts():
  test = faces(11)
  mean = test['landmarks'].mean(0)
  seen = []
  for process in range(2):
    host = data_lib.ArrayData(faces(8), test, batch_size=4, seed=0, process_index=process,
                              process_count=2)
    batches = list(host.eval_batches(mean_shape=mean))
    assert len(batches) == 3  # every host the same count: ceil(11 / 4)
    for batch in batches:
      assert batch['image'].shape == (2, 8, 8) and batch['mask'].dtype == bool
      assert not batch['image'][~batch['mask']].any()  # padding rows are zeros
      seen += [i for i, real in zip(ids(batch), batch['mask']) if real]
      np.testing.assert_allclose(batch['init_shape'], np.broadcast_to(mean, (2, 68, 2)))
  assert sorted(seen) == list(range(11))


def test_bad_sizes_are_refused():
  with pytest.raises(ValueError, match='divisible'):
    data_lib.ArrayData(faces(8), batch_size=5, seed=0, process_count=2)
  with pytest.raises(ValueError, match='training faces'):
    data_lib.ArrayData(faces(3), batch_size=4, seed=0)


def test_the_loop_trains_from_arrays_where_tensorflow_cannot_be_imported(tmp_path):
  # A fresh process in which importing tensorflow (or clu, which needs it) fails: the one loop
  # trains the micro cascade from arrays, saves, evaluates and writes metrics.jsonl.
  code = f'''
import sys
for name in ('tensorflow', 'clu', 'tensorflow_datasets'):
  sys.modules[name] = None  # `import name` raises ImportError; find_spec says it is absent
import numpy as np
from tests.micro import micro_config
from treemoe_jax.train import data as data_lib, trainer
rng = np.random.default_rng(0)
def split(n):
  return {{'image': rng.uniform(-1, 1, (n, 64, 64)).astype(np.float32),
           'landmarks': (32 + rng.normal(0, 8, (n, 68, 2))).astype(np.float32),
           'pose': rng.uniform(-1, 1, (n, 3)).astype(np.float32)}}
config = micro_config('', num_train_steps=4, checkpoint_every_steps=4, eval_every_steps=4,
                      log_every_steps=2)
data = data_lib.ArrayData(split(16), split(10), batch_size=config.batch_size, seed=0)
result = trainer.train_and_evaluate(config, {str(tmp_path)!r}, data=data)
assert sys.modules['tensorflow'] is None and not any(
    m.startswith('tensorflow.') for m in sys.modules)
print('RESULT', result['num_examples'], result['nme/stage0'])
'''
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  line = [l for l in out.stdout.splitlines() if l.startswith('RESULT')][-1].split()
  assert float(line[1]) == 10  # every evaluation face once
  assert np.isfinite(float(line[2]))
  assert (tmp_path / 'checkpoints' / '4').is_dir()
  logged = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in logged if 'train/loss' in r] == [2, 4]
  assert np.load(tmp_path / 'mean_shape.npy').shape == (68, 2)


def test_array_data_places_s0_as_the_tf_pipeline_does():
  # The same translation and scale through both: ArrayData's numpy placement and the pipeline's
  # tf one (`pipeline.place_shape`) give the same s(0).
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  mean = rng.uniform(20, 130, (68, 2)).astype(np.float32)
  shift = rng.normal(0, 3, (5, 2)).astype(np.float32)
  scale = (1 + rng.normal(0, 0.1, 5)).astype(np.float32)
  ours = data_lib.place_shapes(mean, shift, scale)
  for i in range(5):
    theirs = pipeline.place_shape(tf.constant(mean), tf.constant(shift[i]), tf.constant(scale[i]))
    np.testing.assert_allclose(ours[i], theirs.numpy(), atol=1e-4)
