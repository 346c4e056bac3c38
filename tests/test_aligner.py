"""Aligner and export: geometry against hand-computed maps and a bright dot, the crop against the
evaluation pipeline's, buckets, and the exported artifact against the model it came from."""

import json
import pathlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow_datasets as tfds

from input_pipeline import pipeline
from treemoe_jax.inference import aligner
from treemoe_jax.evaluate import evaluator as evaluate
from treemoe_jax.inference import export

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 150
MARGIN = 0.25


def window_of(box, margin=MARGIN):
  """The crop window (left, top, side) of SPEC, by hand."""
  x0, y0, x1, y1 = box
  side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
  return (x0 + x1) / 2 - side / 2, (y0 + y1) / 2 - side / 2, side


def brightest_point_forward(images, init_shape):
  """A stand-in model: every landmark at the centroid of what is brighter than the background."""
  images = np.asarray(images)
  weights = np.maximum(images - np.median(images, axis=(1, 2), keepdims=True), 0)  # [n, S, S]
  weights = weights / np.maximum(weights.sum(axis=(1, 2), keepdims=True), 1e-12)
  rows, cols = np.mgrid[:images.shape[1], :images.shape[2]]
  points = np.stack([(weights * cols).sum((1, 2)), (weights * rows).sum((1, 2))], -1)
  shape = np.repeat(points[:, None].astype(np.float32), init_shape.shape[1], 1)
  return {'shape': shape, 'stage_shapes': shape[:, None]}


def test_buckets_cover_every_count_with_few_shapes():
  assert aligner.buckets_for(0, (1, 8, 32)) == []
  assert aligner.buckets_for(1, (1, 8, 32)) == [1]
  assert aligner.buckets_for(5, (1, 8, 32)) == [8]
  assert aligner.buckets_for(40, (1, 8, 32)) == [32, 8]
  assert aligner.buckets_for(65, (1, 8, 32)) == [32, 32, 1]


@pytest.mark.parametrize('image_shape', [(90, 120), (480, 640, 3), (1000, 700)])
@pytest.mark.parametrize('box_shape', [(30, 30), (60, 40), (25, 70)])
def test_landmarks_map_back_to_a_bright_dot(image_shape, box_shape):
  # A 3x3 white dot in a dark image, inside a box of the given size: the crop (the training
  # crop, shrinking or enlarging) and the map back must put the brightest point on the dot.
  height, width = image_shape[:2]
  scale = min(height, width) / 100  # boxes grow with the image: crops shrink and enlarge
  box_w, box_h = box_shape[0] * scale, box_shape[1] * scale
  rng = np.random.default_rng(int(height + box_w))
  x0, y0 = rng.uniform(5, width - box_w - 5), rng.uniform(5, height - box_h - 5)
  box = (x0, y0, x0 + box_w, y0 + box_h)
  dot = np.array([x0 + box_w * rng.uniform(0.2, 0.8), y0 + box_h * rng.uniform(0.2, 0.8)])
  image = np.full(image_shape, 20, np.uint8)
  cx, cy = np.round(dot).astype(int)
  image[cy - 1:cy + 2, cx - 1:cx + 2] = 250
  model = aligner.Aligner(brightest_point_forward, mean_shape=np.zeros((68, 2)),
                          image_size=SIZE, margin=MARGIN, buckets=(1, 4), passes=1)
  (face,) = model.align(image, [box])
  side = window_of(box)[2]
  # The centroid of the dot's crop lands on its centre up to a fraction of a crop pixel.
  np.testing.assert_allclose(face.landmarks[0], (cx, cy), atol=0.5 * side / SIZE + 0.1)
  np.testing.assert_allclose(face.box, box, rtol=1e-6)
  assert face.pose is None and face.score is None


def test_crop_points_map_back_by_the_windows_formula():
  crop_points = np.random.default_rng(0).uniform(0, SIZE, (68, 2)).astype(np.float32)

  def constant_forward(images, init_shape):
    shape = np.broadcast_to(crop_points, (images.shape[0], 68, 2))
    return {'shape': shape, 'stage_shapes': shape[:, None]}

  boxes = [(10, 20, 110, 80), (0.5, 3.25, 40.5, 90.0), (200, 100, 900, 600)]
  model = aligner.Aligner(constant_forward, mean_shape=np.zeros((68, 2)), image_size=SIZE,
                          margin=MARGIN, passes=1)
  faces = model.align(np.zeros((700, 1000, 3), np.uint8), boxes, return_stages=True)
  for face, box in zip(faces, boxes):
    left, top, side = window_of(box)
    expected = (crop_points + 0.5) * side / SIZE + (left, top)
    np.testing.assert_allclose(face.landmarks, expected, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(face.stage_landmarks[0], expected, rtol=1e-5, atol=1e-3)


def test_a_second_pass_recrops_around_the_first_pass_landmarks_by_hand():
  crop_points = np.random.default_rng(2).uniform(20, SIZE - 20, (68, 2)).astype(np.float32)

  def constant_forward(images, init_shape):
    shape = np.broadcast_to(crop_points, (images.shape[0], 68, 2))
    return {'shape': shape, 'stage_shapes': shape[:, None]}

  def through(box):  # the landmarks a window of `box` gives, by the windows formula
    left, top, side = window_of(box)
    return (crop_points.astype(np.float64) + 0.5) * side / SIZE + (left, top)

  box = (100.0, 80.0, 260.0, 220.0)
  model = aligner.Aligner(constant_forward, mean_shape=np.zeros((68, 2)), image_size=SIZE,
                          margin=MARGIN, passes=2)
  first = through(box)
  second = through((*first.min(0), *first.max(0)))
  (face,) = model.align(np.zeros((400, 500), np.uint8), [box])
  np.testing.assert_allclose(face.landmarks, second, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(face.box, box)  # the box given, not the second crop's
  (face,) = model.align(np.zeros((400, 500), np.uint8), [box], passes=1)
  np.testing.assert_allclose(face.landmarks, first, rtol=1e-5, atol=1e-3)
  with pytest.raises(ValueError, match='passes must be 1 or 2'):
    model.align(np.zeros((400, 500), np.uint8), [box], passes=3)


def test_a_face_whose_first_landmarks_give_no_box_keeps_its_first_pass():
  def point_forward(images, init_shape):  # every landmark on one point: a box of no size
    shape = np.full((images.shape[0], 68, 2), 75.0, np.float32)
    return {'shape': shape, 'stage_shapes': shape[:, None]}

  model = aligner.Aligner(point_forward, mean_shape=np.zeros((68, 2)), image_size=SIZE,
                          margin=MARGIN, passes=2)
  box = (10.0, 10.0, 60.0, 60.0)
  (face,) = model.align(np.zeros((100, 100), np.uint8), [box])
  left, top, side = window_of(box)
  np.testing.assert_allclose(face.landmarks[0], (75.5 * side / SIZE + left, 75.5 * side / SIZE +
                                                 top), rtol=1e-5)


def test_faces_of_many_images_share_bucketed_calls():
  sizes = []

  def recording_forward(images, init_shape):
    sizes.append(images.shape[0])
    return brightest_point_forward(images, init_shape)

  model = aligner.Aligner(recording_forward, mean_shape=np.zeros((68, 2)), image_size=SIZE,
                          margin=MARGIN, buckets=(1, 4), passes=1)
  images = [np.zeros((50, 60), np.uint8), np.zeros((80, 80, 3), np.uint8),
            np.zeros((40, 40), np.uint8)]
  boxes = [[(5, 5, 30, 30)] * 3, [], [(1, 1, 20, 20)] * 3]  # 6 faces, one image with none
  faces = model.align_batch(images, boxes)
  assert [len(f) for f in faces] == [3, 0, 3]
  assert sizes == [4, 4]


def test_bad_inputs_are_refused_in_a_sentence():
  model = aligner.Aligner(brightest_point_forward, mean_shape=np.zeros((68, 2)),
                          image_size=SIZE, margin=MARGIN)
  with pytest.raises(TypeError, match='uint8'):
    model.align(np.zeros((50, 50), np.float32), [(1, 1, 20, 20)])
  with pytest.raises(ValueError, match=r'\[H, W, 3\]'):
    model.align(np.zeros((50, 50, 4), np.uint8), [(1, 1, 20, 20)])
  with pytest.raises(ValueError, match='x1 > x0'):
    model.align(np.zeros((50, 50), np.uint8), [(20, 1, 10, 20)])
  with pytest.raises(ValueError, match='finite'):
    model.align(np.zeros((50, 50), np.uint8), [(1, np.nan, 10, 20)])
  with pytest.raises(ValueError, match='boxes for'):
    model.align_batch([np.zeros((50, 50), np.uint8)], [[], []])
  # Before: 1e39 became inf in float32 and NaN landmarks came back as a face.
  with pytest.raises(ValueError, match=r'beyond \+-2\*\*24 px'):
    model.align(np.zeros((50, 50), np.uint8), [(0, 0, 1e39, 1e39)])
  with pytest.raises(ValueError, match='box 0 of image 0: box .* lies outside the 50x40 image'):
    model.align(np.zeros((40, 50), np.uint8), [(60, 0, 80, 20)])
  with pytest.raises(ValueError, match=r'box 1 of image 0: .* is 2e\+04x the 50x40 image'):
    model.align(np.zeros((40, 50), np.uint8), [(1, 1, 20, 20), (0, 0, 1e6, 1e6)])


@pytest.mark.parametrize('image_shape', [(1, 60), (60, 1), (1, 1), (2, 4000, 3)])
def test_images_one_pixel_thin_map_back_by_the_windows_formula(image_shape):
  # Once a division by zero in the crop; the crop of a 1-px image is that row or column padded.
  crop_points = np.random.default_rng(1).uniform(0, SIZE, (68, 2)).astype(np.float32)
  seen = []

  def constant_forward(images, init_shape):
    seen.append(np.asarray(images))
    shape = np.broadcast_to(crop_points, (images.shape[0], 68, 2))
    return {'shape': shape, 'stage_shapes': shape[:, None]}

  box = (0.0, 0.0, 1.0, 1.0)
  model = aligner.Aligner(constant_forward, mean_shape=np.zeros((68, 2)), image_size=SIZE,
                          margin=MARGIN, passes=1)
  (face,) = model.align(np.full(image_shape, 200, np.uint8), [box])
  left, top, side = window_of(box)
  np.testing.assert_allclose(face.landmarks, (crop_points + 0.5) * side / SIZE + (left, top),
                             rtol=1e-5, atol=1e-4)
  assert np.isfinite(seen[0]).all()


# --- A trained (micro) workdir: the same crop as evaluation, and its export. ---


@pytest.fixture(scope='module')
def data_dir(micro_data_dir) -> str:
  return micro_data_dir


@pytest.fixture(scope='module')
def workdir(micro_runs) -> pathlib.Path:
  return micro_runs['pose_tree_moe']  # conftest.py: shared with test_evaluate.py


def _raw_test_faces(data_dir, count=5):
  builder = pipeline.get_builder('synthetic_faces/tiny', data_dir=data_dir)
  return list(tfds.as_numpy(builder.as_dataset('test').take(count)))


def test_workdir_aligner_matches_the_evaluation_crop(workdir, data_dir):
  run = evaluate.load_run(workdir)
  size = run.config.model.image_size
  examples = _raw_test_faces(data_dir)
  crop = pipeline.CropConfig(size=size, margin=run.config.crop_margin)
  batch = next(pipeline.eval_dataset('synthetic_faces/tiny', global_batch_size=len(examples),
                                     mean_shape=run.mean_shape, data_dir=data_dir,
                                     crop=crop).as_numpy_iterator())
  out = run.model.apply(run.variables, batch['image'], batch['init_shape'])
  model = aligner.Aligner.from_workdir(workdir, buckets=(1, 8), passes=1)  # the one crop
  faces = model.align_batch([e['image'] for e in examples], [[e['box']] for e in examples])
  for n, (example, (face,)) in enumerate(zip(examples, faces)):
    left, top, side = window_of(example['box'], run.config.crop_margin)
    expected = (np.asarray(out['shape'][n]) + 0.5) * side / size + (left, top)
    np.testing.assert_allclose(face.landmarks, expected, atol=1e-2)
    np.testing.assert_allclose(face.pose, np.asarray(out['pose'][n]), atol=1e-4)


def test_export_reloads_without_the_model_and_gives_the_same_landmarks(workdir, data_dir,
                                                                        tmp_path):
  before = sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*'))
  out = tmp_path / 'export'  # through the command line users run
  export.main(['--workdir', str(workdir), '--out', str(out), '--routings', 'dense,greedy',
               '--buckets', '8'])
  # The workdir's model gates on its pose estimator: the export says so, for xla_options.
  assert json.loads((out / export.META_FILE).read_text())['runs_pose_estimator']
  examples = _raw_test_faces(data_dir)
  images, boxes = [e['image'] for e in examples], [[e['box']] for e in examples]
  for routing in ('dense', 'greedy'):
    # Nobody ran eval.py's routing comparison on this run: greedy says so, dense says nothing.
    with warnings.catch_warnings(record=True) as said:
      warnings.simplefilter('always')
      direct = aligner.Aligner.from_workdir(workdir, routing=routing, buckets=(8,))
      exported = aligner.Aligner.from_export(out, routing=routing)
    assert [str(w.message).split(' for ')[0] for w in said] == (
        ['greedy routing has not been measured against dense'] * 2 if routing == 'greedy'
        else [])
    for (a,), (b,) in zip(direct.align_batch(images, boxes), exported.align_batch(images, boxes)):
      np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)
      np.testing.assert_allclose(a.pose, b.pose, atol=1e-5)
  with pytest.raises(ValueError, match='holds routings'):
    aligner.Aligner.from_export(out, routing='topk:2')
  # In a fresh process, aligning from the export never imports Flax (the model's classes) nor
  # TensorFlow; from the workdir, never TensorFlow. The exported artifact takes the image itself.
  np.save(tmp_path / 'image.npy', images[0])
  np.save(tmp_path / 'box.npy', boxes[0][0])
  dense = aligner.Aligner.from_workdir(workdir, buckets=(8,)).align(images[0], boxes[0])
  dense = dense[0].landmarks[0]
  for make, absent in ((f'Aligner.from_export({str(out)!r})', ('flax', 'tensorflow')),
                       (f'Aligner.from_workdir({str(workdir)!r})', ('tensorflow',))):
    code = (f'import sys, numpy as np\nfrom treemoe_jax import Aligner\n'
            f'a = {make}\n'
            f'faces = a.align(np.load({str(tmp_path / "image.npy")!r}), '
            f'[np.load({str(tmp_path / "box.npy")!r})])\n'
            f'for name in {absent!r}:\n'
            f'  assert name not in sys.modules, name + " imported"\n'
            f'print(faces[0].landmarks[0].tolist())')
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    np.testing.assert_allclose(json.loads(result.stdout.strip().splitlines()[-1]), dense,
                               atol=1e-3)
  # Restoring, exporting and aligning read the workdir only: nothing created or removed in it.
  assert sorted(str(p.relative_to(workdir)) for p in workdir.rglob('*')) == before


def test_a_bundle_aligns_as_its_workdir_and_ships_as_the_pretrained_model(workdir, data_dir,
                                                                          tmp_path, monkeypatch):
  from treemoe_jax import bundle  # pylint: disable=g-import-not-at-top
  import align  # pylint: disable=g-import-not-at-top
  examples = _raw_test_faces(data_dir, count=3)
  images, boxes = [e['image'] for e in examples], [[e['box']] for e in examples]
  direct = aligner.Aligner.from_workdir(workdir, buckets=(8,))
  expected = direct.align_batch(images, boxes)
  run = evaluate.load_run(workdir)
  for dtype, atol in (('float32', 1e-3), ('bfloat16', None)):
    out = bundle.write(workdir, tmp_path / dtype, dtype=dtype, about='micro test run')
    loaded = bundle.load(out)
    flat, stored = bundle.flatten(run.variables), bundle.flatten(loaded.variables)
    assert flat.keys() == stored.keys()
    for key, value in flat.items():
      if dtype == 'float32':
        np.testing.assert_array_equal(stored[key], value)
      else:  # bfloat16 keeps 8 bits of mantissa: within 2**-8 of each weight
        np.testing.assert_allclose(stored[key], value, rtol=2**-8, atol=1e-30)
    assert loaded.step == run.step and loaded.config.model == run.config.model
    faces = aligner.Aligner.from_bundle(out, buckets=(8,)).align_batch(images, boxes)
    for (a,), (b,) in zip(expected, faces):
      if atol is not None:
        np.testing.assert_allclose(b.landmarks, a.landmarks, atol=atol)
      else:  # bfloat16 weights move no landmark by over 2% of the face box
        side = float(np.max(a.box[2:] - a.box[:2]))
        assert np.abs(b.landmarks - a.landmarks).max() < 0.02 * side
  meta = bundle.read_meta(tmp_path / 'bfloat16')
  assert meta['about'] == 'micro test run' and meta['dtype'] == 'bfloat16'
  assert (tmp_path / 'bfloat16' / bundle.VARIABLES_FILE).stat().st_size < (
      tmp_path / 'float32' / bundle.VARIABLES_FILE).stat().st_size
  # A damaged file is refused, not loaded.
  damaged = tmp_path / 'damaged'
  bundle.write(workdir, damaged, dtype='float32')
  data = bytearray((damaged / bundle.VARIABLES_FILE).read_bytes())
  data[len(data) // 2] ^= 0xFF
  (damaged / bundle.VARIABLES_FILE).write_bytes(bytes(data))
  with pytest.raises(bundle.BundleError, match='damaged'):
    bundle.load(damaged)
  # The package's pretrained model: none -> a sentence; a bundle there -> align.py's default.
  monkeypatch.setattr(bundle, 'PRETRAINED', tmp_path / 'empty')
  with pytest.raises(FileNotFoundError, match='no pretrained model'):
    aligner.Aligner.pretrained()
  monkeypatch.setattr(bundle, 'PRETRAINED', tmp_path / 'float32')
  photo = tmp_path / 'face.png'
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(images[0][..., 0]).save(photo)
  (tmp_path / 'boxes.json').write_text(json.dumps({'face.png': [boxes[0][0].tolist()]}))
  assert align.main([str(photo), '--out', str(tmp_path / 'out'), '--boxes',
                     str(tmp_path / 'boxes.json'), '--no_progress']) == 0
  record = json.loads((tmp_path / 'out' / 'face.png.json').read_text())
  np.testing.assert_allclose(record['faces'][0]['landmarks'], expected[0][0].landmarks, atol=1e-3)
  # `from treemoe_jax import Aligner; Aligner.pretrained()` in a fresh process: no TensorFlow.
  np.save(tmp_path / 'image.npy', images[0])
  code = (f'import sys, numpy as np\nfrom treemoe_jax import Aligner\n'
          f'from treemoe_jax import bundle\n'
          f'bundle.PRETRAINED = __import__("pathlib").Path({str(tmp_path / "float32")!r})\n'
          f'faces = Aligner.pretrained().align(np.load({str(tmp_path / "image.npy")!r}), '
          f'[{boxes[0][0].tolist()!r}])\n'
          f'assert "tensorflow" not in sys.modules\n'
          f'print(faces[0].landmarks[0].tolist())')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  np.testing.assert_allclose(json.loads(result.stdout.strip().splitlines()[-1]),
                             expected[0][0].landmarks[0], atol=1e-3)


def test_init_from_a_bundle_starts_training_at_its_weights_and_its_mean_shape(workdir, data_dir,
                                                                              tmp_path):
  from tests.micro import micro_config  # pylint: disable=g-import-not-at-top
  from treemoe_jax import bundle  # pylint: disable=g-import-not-at-top
  from treemoe_jax.train import trainer  # pylint: disable=g-import-not-at-top
  source = bundle.write(workdir, tmp_path / 'bundle', dtype='float32')
  pose_sizes = {  # conftest.py's micro pose_tree_moe
      'model.architecture': 'pose_tree_moe', 'model.num_representation_experts': 4,
      'model.representation_gate_depth': 2, 'pose.stage_sizes': (1,), 'pose.base_width': 4,
      'pose.head_hidden': 8}
  # Learning rate 0: one step leaves every parameter where the bundle put it.
  config = micro_config(data_dir, num_train_steps=1, checkpoint_every_steps=1,
                        eval_every_steps=1, log_every_steps=1, learning_rate=0.0,
                        init_from=str(source), **pose_sizes)
  trainer.train_and_evaluate(config, str(tmp_path / 'tuned'))
  assert not (tmp_path / 'tuned' / 'pose').exists()  # the bundle's estimator, none trained
  tuned, start = evaluate.load_run(tmp_path / 'tuned'), bundle.load(source)
  for key, value in bundle.flatten(start.variables['params']).items():
    np.testing.assert_array_equal(bundle.flatten(tuned.variables['params'])[key], value)
  np.testing.assert_array_equal(tuned.mean_shape, start.mean_shape)
  # Another model's sizes are refused before anything trains, each difference named.
  other = micro_config(data_dir, init_from=str(source), **(pose_sizes | {
      'model.regression_hidden': 16}))
  with pytest.raises(ValueError, match=r"model.regression_hidden: 8 \(the bundle\) -> 16"):
    trainer.train_and_evaluate(other, str(tmp_path / 'other'))


def test_align_py_end_to_end_on_a_trained_workdir(workdir, data_dir, tmp_path):
  # The real model through the command line: two faces from a boxes file, a corrupt and an empty
  # file reported, outputs inside OUTDIR, landmarks equal to the Aligner's.
  import align  # pylint: disable=g-import-not-at-top (the script at the repository root)
  from PIL import Image  # pylint: disable=g-import-not-at-top
  photos = tmp_path / 'photos'
  photos.mkdir()
  examples = _raw_test_faces(data_dir, count=2)
  for n, example in enumerate(examples):
    Image.fromarray(example['image'][..., 0]).save(photos / f'face{n}.png')
  (photos / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  (photos / 'empty.png').write_bytes(b'')
  boxes = {f'face{n}.png': [e['box'].tolist()] for n, e in enumerate(examples)}
  (tmp_path / 'boxes.json').write_text(json.dumps(boxes))
  out = tmp_path / 'out'
  assert align.main(['--workdir', str(workdir), str(photos), '--out', str(out), '--boxes',
                     str(tmp_path / 'boxes.json'), '--no_progress']) == 0
  direct = aligner.Aligner.from_workdir(workdir, buckets=(8,))
  for n, example in enumerate(examples):
    record = json.loads((out / f'face{n}.png.json').read_text())
    assert record['status'] == 'ok' and len(record['faces']) == 1
    (expected,) = direct.align(example['image'], [example['box']])
    np.testing.assert_allclose(record['faces'][0]['landmarks'], expected.landmarks, atol=1e-3)
    assert (out / f'face{n}.png.png').stat().st_size > 1000
  problems = (out / 'problems.csv').read_text()
  assert 'corrupt.jpg' in problems and 'empty.png' in problems
  assert len((out / 'landmarks.csv').read_text().strip().splitlines()) == 1 + len(examples)
  assert all(p.resolve().is_relative_to(out.resolve()) for p in out.rglob('*'))
