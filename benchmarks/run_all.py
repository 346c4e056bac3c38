"""Every speed figure of docs/benchmarks.md in one run, with the machine it ran on.

  python -m benchmarks.run_all                                   # CPU defaults (~30 min, 2 cores)
  python -m benchmarks.run_all --numerics_workdir /tmp/reproduction/pose_tree_moe_seed0
  python -m benchmarks.run_all --architectures pose_tree_moe --variants full --no_pipeline
  python -m benchmarks.run_all --only forward --variants full --batches_full 1,32 --doc ''
  python -m benchmarks.run_all --only train,pose_train --variants full --train_batch_full 8,32,64
  python -m benchmarks.run_all --only pipeline,render --doc ''

Per architecture, size (`full`, `tiny`) and compute dtype (float32, bfloat16): inference img/s
at each batch size, batch-1 latency, train-step img/s, compile time, XLA's FLOPs per image, and
each rate as a fraction of the jit GEMM rate measured in this process (at the start and at the
end: on shared machines the two differ). Beside them: the plain port (benchmarks/plain_port.py,
float32), the input pipeline and the renderer against the train step's consumption, and with
`--numerics_workdir` the bfloat16 NME against float32 on the synthetic test views. Writes a JSON
(`--json`) and the generated part of docs/benchmarks.md (`--doc`, between its run_all markers).
Absolute times on shared CPUs are noise; the ratios within one run are the figures to read.

`--only` picks sections (default: all but pose_train; numerics with --numerics_workdir):
  forward     inference img/s per architecture, size, dtype and batch, with the forward
              compiled as evaluation and Aligner compile it (treemoe_jax/xla_options.py); for
              `--before` architectures also the nn.vmap committees and XLA's default options;
  plain_port  the plain port beside the full-size float32 forward (`--plain_batches`);
  train       the data-parallel training step on random batches (no TensorFlow), at each of
              `--train_batch_full` / `--train_batch_tiny` (a list: a batch sweep);
  pose_train  the pose estimator's own training step (the pose task), same batches;
  render      the synthetic face renderer, one core and all cores;
  pipeline    the tf.data training pipeline (`--pipeline_dataset`, `--data_dir`);
  numerics    bfloat16 against float32 NME of `--numerics_workdir`.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks import common
from configs import default
from treemoe_jax import parallel
from treemoe_jax.nn import models

SECTIONS = ('forward', 'plain_port', 'train', 'pose_train', 'render', 'pipeline', 'numerics')
DEFAULT_SECTIONS = ('forward', 'plain_port', 'train', 'render', 'pipeline')


def _render(job: tuple[int, int]) -> int:
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  num, seed = job
  synthetic.render_faces(num, seed, synthetic.RenderConfig(image_size=200))
  return num


def render_rates() -> dict:
  """img/s of the synthetic face renderer, on one core and in one spawned worker per core (as the
  dataset builder prepares `synthetic_faces`)."""
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  out = {}
  faces = 64
  synthetic.render_faces(4, 0, synthetic.RenderConfig(image_size=200))  # warm the caches
  start = time.perf_counter()
  synthetic.render_faces(faces, 1, synthetic.RenderConfig(image_size=200))
  out['render_img_s_one_process'] = faces / (time.perf_counter() - start)
  import multiprocessing  # pylint: disable=g-import-not-at-top
  processes = os.cpu_count() or 1
  with multiprocessing.get_context('spawn').Pool(processes) as pool:
    pool.map(_render, [(4, i) for i in range(processes)])  # start-up and caches
    start = time.perf_counter()
    pool.map(_render, [(faces, 10 + i) for i in range(processes)])
    out['render_img_s_all_cores'] = processes * faces / (time.perf_counter() - start)
  return out


def pipeline_rate(batch: int, dataset: str = 'synthetic_faces/small', data_dir: str | None = None,
                  warmup: int = 10, steps: int = 40) -> tuple[dict, bool | None]:
  """img/s of the tf.data training pipeline (reads, decodes, crops, augments and batches
  `dataset`, prepared on first use), and whether TensorFlow's ops ran on one thread each as in
  training (None, and no rate: no TensorFlow here)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}, None
  tfds.disable_progress_bar()
  one_thread = pipeline.run_ops_on_one_thread()  # as training does
  builder = pipeline.get_builder(dataset, data_dir=data_dir)
  batches = pipeline.train_dataset(builder, global_batch_size=batch, seed=0,
                                   mean_shape=pipeline.mean_shape(builder)).as_numpy_iterator()
  for _ in range(warmup):
    next(batches)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return {'pipeline_img_s': steps * batch / (time.perf_counter() - start)}, one_thread


def numerics(workdir: str) -> dict:
  """NME per synthetic view of a trained workdir, float32 vs bfloat16, same parameters."""
  from treemoe_jax.evaluate import evaluator as evaluate  # pylint: disable=g-import-not-at-top
  from treemoe_jax import metrics  # pylint: disable=g-import-not-at-top
  from treemoe_jax import runs  # pylint: disable=g-import-not-at-top
  run = runs.load_run(workdir)
  mesh = parallel.make_mesh()
  variables = jax.device_put(run.variables, parallel.replicated(mesh))
  result = {'workdir': workdir}
  for dtype in ('float32', 'bfloat16'):
    config = run.config.copy_and_resolve_references()
    with config.unlocked():
      config.model.dtype = dtype
    typed = dataclasses.replace(run, config=config, model=models.create(config, inference=True))
    predict = evaluate.make_predict(typed.model, mesh)
    for view in ('frontal', 'large_pose', 'occluded', 'yaw_0_30', 'yaw_30_60', 'yaw_60_90'):
      arrays = evaluate.predict_split(typed, predict, variables, mesh, run.config.dataset,
                                      f'test_{view}', batch_size=64, data_dir=None)
      result.setdefault(view, {})[dtype] = float(
          metrics.nme(arrays['shape'], arrays['landmarks'], 'box').mean())
  return result


def sections(args) -> set[str]:
  """The sections to run: `--only`, else the defaults, less what `--no_pipeline` drops, plus
  numerics when `--numerics_workdir` is given."""
  if args.only:
    chosen = {s for s in args.only.split(',') if s}
    unknown = chosen - set(SECTIONS)
    if unknown:
      raise SystemExit(f'--only: unknown sections {sorted(unknown)}; choose from {SECTIONS}')
    if 'numerics' in chosen and not args.numerics_workdir:
      raise SystemExit('--only numerics needs --numerics_workdir')
    return chosen
  chosen = set(DEFAULT_SECTIONS)
  if args.no_pipeline:
    chosen -= {'render', 'pipeline'}
  if args.numerics_workdir:
    chosen.add('numerics')
  return chosen


def model_rows(args, want: set[str]) -> list[dict]:
  """The forward, plain port and training rows of every architecture, size and dtype."""
  rows = []
  for variant in args.variants.split(','):
    batches = args.batches_full if variant == 'full' else args.batches_tiny
    train_batches = args.train_batch_full if variant == 'full' else args.train_batch_tiny
    for architecture in args.architectures.split(','):
      for dtype in args.dtypes.split(','):
        full32 = variant == 'full' and dtype == 'float32'
        options = None
        if 'forward' in want or ('plain_port' in want and full32 and args.plain_batches):
          case = common.forward_case(architecture, variant, dtype)
          options = case.options
          if 'forward' in want:
            rows += [common.forward_row(case, b, args.min_seconds) for b in batches]
          if 'plain_port' in want and full32:
            rows += [common.plain_port_row(case, b, args.min_seconds) for b in args.plain_batches]
          del case
        if 'train' in want:
          rows += [common.train_row(architecture, variant, dtype, b) for b in train_batches]
        if full32 and architecture in args.before.split(','):
          # Before/after in the same process: the nn.vmap committees (other_lowering).
          other = common.other_lowering()
          if 'forward' in want:
            rows += common.forward_rows(architecture, variant, dtype, batches, args, other)
            if options:  # XLA's defaults differ from the tuned options (CPU only)
              case = common.forward_case(architecture, variant, dtype, xla='defaults')
              rows += [common.forward_row(case, b, args.min_seconds) for b in batches]
              del case
          if 'train' in want:
            rows += [common.train_row(architecture, variant, dtype, b, other)
                     for b in train_batches]
      if 'pose_train' in want:
        for dtype in args.dtypes.split(','):
          rows += [common.train_row('pose_tree_moe', variant, dtype, b, task_name='pose')
                   for b in train_batches]
  return rows


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ints = lambda s: [int(x) for x in s.split(',') if x]
  parser.add_argument('--only', default='',
                      help=f'comma-separated sections of {",".join(SECTIONS)} (see the top of '
                           'this file); default: all but pose_train')
  parser.add_argument('--architectures', default=','.join(default.PAPER_SIZES))
  parser.add_argument('--variants', default='full,tiny')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--batches_full', type=ints, default=[1, 8, 32])
  parser.add_argument('--batches_tiny', type=ints, default=[1, 8, 32, 256])
  parser.add_argument('--plain_batches', type=ints, default=[1, 32])
  parser.add_argument('--train_batch_full', type=ints, default=[8])
  parser.add_argument('--train_batch_tiny', type=ints, default=[16])
  parser.add_argument('--min_seconds', type=float, default=2.0)
  parser.add_argument('--before', default='pose_tree_moe,tree_moe',
                      help='architectures also measured with the nn.vmap committees, the '
                           'lowering before any was measured per backend (before/after), and '
                           "with XLA's default compiler options")
  parser.add_argument('--no_pipeline', action='store_true', help='no render, no pipeline')
  parser.add_argument('--pipeline_dataset', default='synthetic_faces/small')
  parser.add_argument('--pipeline_batch', type=int, default=0,
                      help="the pipeline's global batch (0: the first --train_batch_tiny)")
  parser.add_argument('--data_dir', default=None, help="the pipeline's TFDS data dir")
  parser.add_argument('--numerics_workdir', default='')
  parser.add_argument('--json', default='docs/data/benchmarks_run_all.json')
  parser.add_argument('--doc', default='docs/benchmarks.md', help="'' writes no doc")
  parser.add_argument('--from_json', default='',
                      help='only rewrite the doc from a JSON this script wrote')
  args = parser.parse_args()
  if args.from_json:
    text = common.markdown(json.loads(pathlib.Path(args.from_json).read_text()))
    print(text)
    if args.doc:
      common.write_doc(pathlib.Path(args.doc), text)
    return 0
  want = sections(args)
  results = {'machine': common.machine(), 'script': '-m benchmarks.run_all',
             'argv': ' '.join(sys.argv[1:]), 'json': args.json,
             'gemm_gflops_start': common.gemm_gflops(),
             'gemm_gflops_bf16': common.gemm_gflops(dtype=jnp.bfloat16), 'rows': []}
  common.log(f'{results["machine"]}; GEMM {results["gemm_gflops_start"]:.1f} GFLOP/s fp32, '
             f'{results["gemm_gflops_bf16"]:.1f} bf16; sections {sorted(want)}')
  results['rows'] = model_rows(args, want)
  if 'render' in want:
    results['pipeline'] = render_rates()
  if 'pipeline' in want:
    rate, results['pipeline_tf_ops_one_thread'] = pipeline_rate(
        args.pipeline_batch or args.train_batch_tiny[0], args.pipeline_dataset, args.data_dir)
    results.setdefault('pipeline', {}).update(rate)
  if 'numerics' in want:
    results['numerics'] = numerics(args.numerics_workdir)
  results['gemm_gflops_end'] = common.gemm_gflops()
  text = common.markdown(results)
  print(text, flush=True)
  if args.json:
    common.write_json(args.json, results)
  if args.doc:
    common.write_doc(pathlib.Path(args.doc), text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
