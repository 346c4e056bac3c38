"""The Aligner end to end on a photograph: the JAX crop inside the jitted forward against the
earlier path (TensorFlow's eager crop per face, then the jitted model), side by side in one run.

  python -m benchmarks.aligner_speed [--workdir DIR] [--photo 1600x1200] [--json out.json]

Without --workdir, a pose_tree_moe:cpu run with freshly initialised parameters is written to a
temporary folder (speed does not depend on training). The earlier path is rebuilt here from its
pieces (`input_pipeline.pipeline.crop_window` / `face_image` eagerly, `models.forward` jitted at
one face, the landmarks mapped back), so its figure is measured on the same machine, in the same
process, on the same photograph and box. Both return the same landmarks (checked).
"""

import argparse
import pathlib
import statistics
import tempfile
import time

import jax
import numpy as np

from benchmarks import common
from treemoe_jax import checkpointing
from treemoe_jax import crop
from treemoe_jax import runs
from treemoe_jax.inference import aligner as aligner_lib
from treemoe_jax.nn import models


def initialised_workdir(directory: pathlib.Path) -> pathlib.Path:
  """A workdir of configs/pose_tree_moe.py:cpu with initialised (untrained) parameters."""
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config('pose_tree_moe', 'cpu')
  model = models.create(config)
  variables = models.init(model, jax.random.key(0))
  directory.mkdir(parents=True, exist_ok=True)
  (directory / runs.CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
  size = config.model.image_size
  mean = np.stack(np.meshgrid(np.linspace(0.3, 0.7, 17), np.linspace(0.3, 0.7, 4)), -1)
  np.save(directory / runs.MEAN_SHAPE_FILE, (mean.reshape(-1, 2)[:68] * size).astype(np.float32))
  mngr = checkpointing.manager(str(directory / runs.CHECKPOINTS), asynchronous=False)
  checkpointing.save(mngr, 1, dict(variables) | {'step': 1}, {'step': 1})
  mngr.wait_until_finished()
  mngr.close()
  return directory


def earlier_aligner(run: runs.Run):
  """The Aligner before the JAX crop: TensorFlow's eager crop per face, then the jitted model."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  apply = jax.jit(models.forward(run.model))
  size, margin = run.config.model.image_size, run.config.crop_margin

  def align(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    window = pipeline.crop_window(tf.constant(box), margin)
    face = pipeline.face_image(tf.constant(image), window, size).numpy()
    rows = apply(run.variables, face[None], run.mean_shape[None].astype(np.float32))
    return pipeline.uncrop_landmarks(np.asarray(rows['shape'][0]), window.numpy(), size)

  return align


def timed(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', help='a trained alignment workdir (default: initialised)')
  parser.add_argument('--photo', default='1600x1200', help='WIDTHxHEIGHT of the photograph')
  parser.add_argument('--face', type=float, default=500, help='face box side in pixels')
  parser.add_argument('--repeats', type=int, default=30)
  parser.add_argument('--json', help='write the figures here')
  args = parser.parse_args(argv)
  workdir = pathlib.Path(args.workdir) if args.workdir else initialised_workdir(
      pathlib.Path(tempfile.mkdtemp(prefix='aligner_speed_')))
  width, height = (int(v) for v in args.photo.split('x'))
  rng = np.random.default_rng(0)
  photo = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  x0, y0 = width * 0.4, height * 0.3
  box = np.array([x0, y0, x0 + args.face, y0 + args.face * 1.1], np.float32)

  run = runs.load_run(workdir)
  earlier = earlier_aligner(run)
  now = aligner_lib.Aligner.from_workdir(workdir, buckets=(1,))
  old_points = earlier(photo, box)  # compiles
  new_points = now.align(photo, [box])[0].landmarks  # compiles
  common.log(f'largest landmark difference, earlier vs now: '
             f'{np.abs(old_points - new_points).max():.2e} px')
  np.testing.assert_allclose(new_points, old_points, atol=1e-2)
  crop_only = jax.jit(lambda image, window: crop.face_image(image, window, 150))
  window = crop.crop_window(box, run.config.crop_margin)
  jax.block_until_ready(crop_only(photo, window))
  old_times, new_times, crop_times = [], [], []
  for _ in range(args.repeats):  # interleaved, so that both see the same machine state
    old_times += timed(lambda: earlier(photo, box), 1)
    new_times += timed(lambda: now.align(photo, [box]), 1)
    crop_times += timed(lambda: jax.block_until_ready(crop_only(photo, window)), 1)
  old_ms, new_ms = 1e3 * statistics.median(old_times), 1e3 * statistics.median(new_times)
  result = {'photo': args.photo, 'face_px': args.face, 'workdir': str(workdir),
            'max_landmark_difference_px': float(np.abs(old_points - new_points).max()),
            'architecture': run.config.model.architecture, 'repeats': args.repeats,
            'earlier_ms': old_ms, 'now_ms': new_ms, 'speedup': old_ms / new_ms,
            'jax_crop_ms': 1e3 * statistics.median(crop_times),
            'machine': common.machine()}
  print(f'Aligner on a {args.photo} photo, one {args.face:.0f} px face, '
        f'{run.config.model.architecture} ({common.cpu_summary(result["machine"]["cpu"])}):\n'
        f'  earlier (TensorFlow eager crop + jitted model): {old_ms:.1f} ms\n'
        f'  now (JAX crop inside the jitted forward):       {new_ms:.1f} ms'
        f'  ({old_ms / new_ms:.1f}x faster; the crop alone {result["jax_crop_ms"]:.1f} ms)')
  if args.json:
    common.write_json(args.json, result)
  return 0


if __name__ == '__main__':
  raise SystemExit(main())
