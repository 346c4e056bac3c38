"""Every speed figure of docs/benchmarks.md in one run, with the machine it ran on.

  python benchmarks/run_all.py                                   # CPU defaults (~30 min, 2 cores)
  python benchmarks/run_all.py --numerics_workdir /tmp/reproduction/pose_tree_moe_seed0
  python benchmarks/run_all.py --architectures pose_tree_moe --variants full --no_pipeline

Per architecture, size (`full`, `tiny`) and compute dtype (float32, bfloat16): inference img/s
at each batch size, batch-1 latency, train-step img/s, compile time, XLA's FLOPs per image, and
each rate as a fraction of the jit GEMM rate measured in this process (at the start and at the
end: on shared machines the two differ). Beside them: the plain port (benchmarks/plain_port.py,
float32), the input pipeline and the renderer against the train step's consumption, and with
`--numerics_workdir` the bfloat16 NME against float32 on the synthetic test views. Writes a JSON
(`--json`) and the generated part of docs/benchmarks.md (`--doc`, between its run_all markers).
Absolute times on shared CPUs are noise; the ratios within one run are the figures to read.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks import host_cpu  # pylint: disable=g-import-not-at-top
from benchmarks import plain_port  # pylint: disable=g-import-not-at-top
from benchmarks import train_speed  # pylint: disable=g-import-not-at-top
from configs import default  # pylint: disable=g-import-not-at-top
from treemoe_jax.nn import experts  # pylint: disable=g-import-not-at-top
from treemoe_jax.nn import models  # pylint: disable=g-import-not-at-top
from treemoe_jax import parallel  # pylint: disable=g-import-not-at-top
from treemoe_jax import xla_options  # pylint: disable=g-import-not-at-top

BEGIN, END = '<!-- run_all:begin -->', '<!-- run_all:end -->'


def log(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


def split_lowering(lowering: str) -> tuple[str, str, str]:
  """'auto', 'CNN/MLP' or 'CNN/MLP/FIRST' -> (CNN committee, regressors, CNN first layer):
  experts.CNN_LOWERINGS, MLP_LOWERINGS, FIRST_LAYERS."""
  parts = lowering.split('/') if lowering != 'auto' else []
  if len(parts) not in (0, 2, 3):
    raise ValueError(f"lowering {lowering!r}: 'auto', 'CNN/MLP' or 'CNN/MLP/FIRST'")
  return tuple(parts + ['auto'] * (3 - len(parts)))


def config_for(architecture: str, variant: str, dtype: str, lowering: str = 'auto'):
  """lowering: 'auto', 'CNN/MLP' committee lowerings (experts.CNN_LOWERINGS, MLP_LOWERINGS) or
  'CNN/MLP/FIRST' with the CNNs' first layer (experts.FIRST_LAYERS)."""
  cnn, mlp, first = split_lowering(lowering)
  config = default.get_config(architecture, variant)
  with config.unlocked():
    config.model.dtype = dtype
    config.model.cnn_lowering = cnn
    config.model.mlp_lowering = mlp
    config.model.cnn_first_layer = first
  return config


def other_lowering() -> str:
  """The committee lowerings before they were measured per backend, as 'CNN/MLP': the nn.vmap
  pair ('auto' picks 'merged'/'scan' on CPU, 'blockdiag'/'vmap' on a GPU)."""
  return 'vmap/vmap'


def inputs(batch: int, size: int = 150):
  images = jax.random.uniform(jax.random.key(1), (batch, size, size), minval=-1, maxval=1)
  init = jnp.full((batch, 68, 2), size / 2.0) + jax.random.normal(
      jax.random.key(2), (batch, 68, 2)) * size / 8
  return images, init


def timed_forward(fn, variables, batch: int, min_seconds: float, counted=None,
                  options=None) -> dict:
  """Times `fn` compiled with `options`; its FLOPs are XLA's count of `counted` (the same model
  with no loop over experts: common.countable), taken before optimisation, whatever the backend
  then rewrites."""
  images, init = inputs(batch)
  start = time.perf_counter()
  compiled = jax.jit(fn, compiler_options=options).lower(variables, images, init).compile()
  compile_s = time.perf_counter() - start
  seconds = common.time_call(lambda: compiled(variables, images, init), min_seconds=min_seconds)
  flops = common.lowered_flops(jax.jit(counted or fn).lower(variables, images, init))
  return dict(batch=batch, compile_s=compile_s, seconds=seconds, img_s=batch / seconds,
              gflop_img=flops / batch / 1e9, gflops=flops / seconds / 1e9)


@dataclasses.dataclass(frozen=True)
class ForwardCase:
  """One model set up for timing: its parameters, the compiler options its jit sites use and
  the countable twin whose FLOPs XLA can see (common.countable)."""
  architecture: str
  variant: str
  dtype: str
  lowering: str
  xla: str
  model: object
  counted: object
  variables: object
  options: dict | None

  def forward(self, variables, images, init):
    return self.model.apply(variables, images, init)['shape']

  def counted_forward(self, variables, images, init):
    return self.counted.apply(variables, images, init)['shape']


def forward_case(architecture, variant, dtype, lowering='auto', xla='tuned',
                 abstract=False) -> ForwardCase:
  """xla: 'tuned' compiles with treemoe_jax.xla_options (as evaluation and Aligner do),
  'defaults' with XLA's own options (the before of that change). abstract: parameters as shapes
  only (enough to lower and count FLOPs, nothing to run). The model is built for inference, as
  evaluation and Aligner build it (`models.create(..., inference=True)`)."""
  config = config_for(architecture, variant, dtype, lowering)
  model = models.create(config, inference=True)
  options = (xla_options.inference_options(model.pose_estimator is not None)
             if xla == 'tuned' else None)
  counted = models.create(common.countable(config))
  init = lambda key: models.init(model, key)
  key = jax.random.key(0)
  variables = jax.eval_shape(init, key) if abstract else jax.jit(init)(key)
  return ForwardCase(architecture, variant, dtype, lowering, xla, model, counted, variables,
                     options)


def forward_row(case: ForwardCase, batch: int, min_seconds: float) -> dict:
  row = timed_forward(case.forward, case.variables, batch, min_seconds, case.counted_forward,
                      case.options)
  log(f'forward {case.architecture} {case.variant} {case.dtype} {case.lowering} XLA {case.xla} '
      f'batch {batch}: {row["img_s"]:.1f} img/s, {row["gflops"]:.1f} GFLOP/s')
  return dict(kind='forward', architecture=case.architecture, variant=case.variant,
              dtype=case.dtype, lowering=case.lowering,
              resolved=resolved_lowering(case.lowering, inference=True), xla=case.xla,
              options=case.options, **row)


def plain_port_row(case: ForwardCase, batch: int, min_seconds: float) -> dict:
  """The plain port of `case`'s model on its parameters, compiled with the same options (the
  ratio is the code's, not the compiler's)."""
  row = timed_forward(plain_port.make_forward(case.model), case.variables, batch, min_seconds,
                      options=case.options)
  log(f'plain port {case.architecture} batch {batch}: {row["img_s"]:.1f} img/s')
  return dict(kind='plain_port', architecture=case.architecture, variant=case.variant,
              dtype=case.dtype, **row)


def forward_rows(architecture, variant, dtype, batches, args, lowering='auto',
                 xla='tuned') -> list[dict]:
  """Forward rows at each batch, and the plain port beside the full float32 'auto' model."""
  case = forward_case(architecture, variant, dtype, lowering, xla)
  rows = [forward_row(case, batch, args.min_seconds) for batch in batches]
  if (lowering == 'auto' and xla == 'tuned' and dtype == 'float32' and variant == 'full'
      and args.plain_batches):
    rows += [plain_port_row(case, batch, args.min_seconds) for batch in args.plain_batches]
  return rows


def train_row(architecture, variant, dtype, batch, lowering='auto') -> dict:
  """The data-parallel alignment step on random batches (benchmarks/train_speed.time_step)."""
  row = train_speed.time_step(config_for(architecture, variant, dtype, lowering), batch)
  log(f'train {architecture} {variant} {dtype} {lowering} batch {batch}: '
      f'{row["img_s"]:.1f} img/s')
  return dict(kind='train', architecture=architecture, variant=variant, dtype=dtype,
              lowering=lowering, resolved=resolved_lowering(lowering), batch=batch, **row)


def _render(job: tuple[int, int]) -> int:
  from input_pipeline import synthetic  # pylint: disable=g-import-not-at-top
  num, seed = job
  synthetic.render_faces(num, seed, synthetic.RenderConfig(image_size=200))
  return num


def pipeline_rates(batch: int) -> tuple[dict, bool | None]:
  """img/s of the tf.data training pipeline (synthetic_faces/small) and of the renderer, and
  whether TensorFlow's ops ran on one thread each as in train.py (None: no TensorFlow here)."""
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
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  except ImportError:
    return out, None
  tfds.disable_progress_bar()
  one_thread = pipeline.run_ops_on_one_thread()  # as train.py does
  builder = pipeline.get_builder('synthetic_faces/small')
  batches = pipeline.train_dataset(builder, global_batch_size=batch, seed=0,
                                   mean_shape=pipeline.mean_shape(builder)).as_numpy_iterator()
  for _ in range(10):
    next(batches)
  start = time.perf_counter()
  for _ in range(40):
    next(batches)
  out['pipeline_img_s'] = 40 * batch / (time.perf_counter() - start)
  return out, one_thread


def numerics(workdir: str) -> dict:
  """NME per synthetic view of a trained workdir, float32 vs bfloat16, same parameters."""
  from treemoe_jax.evaluate import evaluator as evaluate  # pylint: disable=g-import-not-at-top
  from treemoe_jax import metrics  # pylint: disable=g-import-not-at-top
  run = evaluate.load_run(workdir)
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


def machine() -> dict:
  device = jax.devices()[0]
  return {'device': device.device_kind, 'platform': device.platform,
          'device_count': jax.device_count(), 'cpu_count': os.cpu_count(),
          'processor': platform.processor() or platform.machine(), 'jax': jax.__version__,
          'cpu': host_cpu.describe(), 'date': time.strftime('%Y-%m-%d %H:%M')}


def resolved_lowering(lowering: str, backend: str | None = None, inference: bool = False) -> str:
  """'CNN/MLP' committee lowerings that `lowering` ('auto', 'CNN/MLP' or 'CNN/MLP/FIRST') runs
  on `backend` (in a forward never differentiated if `inference`), with '/FIRST' where the CNNs'
  first layer is not 'conv'."""
  cnn, mlp, first = split_lowering(lowering)
  first = experts.resolve_first_layer(first, backend)
  return (f'{experts.resolve_cnn_lowering(cnn, backend, inference)}/'
          f'{experts.resolve_mlp_lowering(mlp, backend)}' + ('' if first == 'conv' else f'/{first}'))


def _lowering(row: dict, backend: str) -> str:
  """A row's committee lowerings: as recorded when it ran, else 'auto' resolved today."""
  if row.get('resolved') or row.get('lowering', 'auto') != 'auto':
    return row.get('resolved') or row['lowering']
  return resolved_lowering('auto', backend)


def _xla(row: dict) -> str:
  """The compiler options a forward row ran with ('defaults' for rows measured before
  treemoe_jax.xla_options existed)."""
  options = row.get('options')
  if not options:
    return 'defaults'
  return ', '.join(f'{k.removeprefix("xla_cpu_experimental_")}={v or "(none)"}'
                   for k, v in options.items())


def markdown(results: dict) -> str:
  rate = {'float32': results['gemm_gflops_start'], 'bfloat16': results['gemm_gflops_bf16']}
  gemm = rate['float32']
  m = results['machine']
  backend = m.get('platform', 'cpu')
  script = results.get('script', 'benchmarks/run_all.py')
  n = results.get('gemm_n', 2048)
  lines = [f'Generated by `python {script} {results["argv"]}` on {m["date"]}: '
           f'{m["device"]} x{m["device_count"]} ({m["cpu_count"]} CPU cores'
           f'{"; " + host_cpu.summary(m["cpu"]) if m.get("cpu") else ""}), jax {m["jax"]}. '
           f'jit GEMM {n}^3 fp32: {gemm:.1f} GFLOP/s at the start, '
           f'{results.get("gemm_gflops_end", float("nan")):.1f} at the end, '
           f'bf16 {results["gemm_gflops_bf16"]:.1f}; '
           f'"% GEMM" is against the fp32 start rate for float32 rows and the bf16 rate for '
           f'bfloat16 rows. JSON: '
           f'`{results["json"]}`.', '',
           '| architecture | size | dtype | CNN/MLP lowering | XLA:CPU options | batch | '
           'compile s | GFLOP/img | img/s | ms per batch | % GEMM | plain port img/s | vs plain |',
           '|---' * 13 + '|']
  rows = results['rows']
  plain = {(r['architecture'], r['batch']): r for r in rows if r['kind'] == 'plain_port'}
  for r in rows:
    if r['kind'] != 'forward':
      continue
    port = plain.get((r['architecture'], r['batch'])) if (
        r['variant'] == 'full' and r['dtype'] == 'float32') else None
    lines.append(
        f'| {r["architecture"]} | {r["variant"]} | {r["dtype"]} | {_lowering(r, backend)} | '
        f'{_xla(r)} | {r["batch"]} | '
        f'{r["compile_s"]:.1f} | {r["gflop_img"]:.2f} | {r["img_s"]:.1f} | '
        f'{1e3 * r["seconds"]:.1f} | {100 * r["gflops"] / rate[r["dtype"]]:.1f} | '
        + (f'{port["img_s"]:.1f} | {r["img_s"] / port["img_s"]:.1f}x |' if port else '| |'))
  lines += ['', 'Training step (alignment, random batches, the data-parallel jitted step):', '',
            '| architecture | size | dtype | CNN/MLP lowering | batch | compile s | GFLOP/img | img/s | '
            '% GEMM |', '|---' * 9 + '|']
  for r in rows:
    if r['kind'] == 'train':
      lines.append(f'| {r["architecture"]} | {r["variant"]} | {r["dtype"]} | '
                   f'{_lowering(r, backend)} | {r["batch"]} | '
                   f'{r["compile_s"]:.1f} | {r["gflop_img"]:.2f} | {r["img_s"]:.1f} | '
                   f'{100 * r["gflops"] / rate[r["dtype"]]:.1f} |')
  feed = results.get('pipeline')
  if feed:
    lines += ['', 'Input against consumption: each source\'s img/s over the fastest training step of '
              'each size (the most any run at that size consumes; >= 1 keeps the step fed):', '',
              '| source | img/s | ' + ' | '.join(f'vs fastest {v} step' for v in variants(rows))
              + ' |', '|---' * (2 + len(variants(rows))) + '|']
    for name, rate in feed.items():
      ratios = []
      for variant in variants(rows):
        fastest = max((r for r in rows if r['kind'] == 'train' and r['variant'] == variant),
                      key=lambda r: r['img_s'])
        ratios.append(f'{rate / fastest["img_s"]:.1f}x ({fastest["architecture"]} '
                      f'{fastest["dtype"]}, {fastest["img_s"]:.0f} img/s)')
      lines.append(f'| {name.replace("_img_s", "").replace("_", " ")} | {rate:.0f} | '
                   + ' | '.join(ratios) + ' |')
    one_thread = results.get('pipeline_tf_ops_one_thread')
    if one_thread is not None:
      lines += ['', 'The pipeline ran TensorFlow\'s ops on one thread each, as train.py runs them '
                f'(`pipeline.run_ops_on_one_thread`): {"yes" if one_thread else "no"}.']
  num = results.get('numerics')
  if num:
    lines += ['', f'bfloat16 against float32, NME % on the synthetic views (`{num["workdir"]}`, '
              'same parameters):', '', '| view | float32 | bfloat16 | relative |', '|---|---|---|---|']
    for view, v in num.items():
      if view != 'workdir':
        lines.append(f'| {view} | {100 * v["float32"]:.3f} | {100 * v["bfloat16"]:.3f} | '
                     f'{100 * (v["bfloat16"] / v["float32"] - 1):+.2f}% |')
  return '\n'.join(lines)


def variants(rows: list[dict]) -> list[str]:
  return list(dict.fromkeys(r['variant'] for r in rows if r['kind'] == 'train'))


def write_doc(path: pathlib.Path, text: str) -> None:
  """Replaces the part of `path` between the run_all markers (appends them if absent)."""
  old = path.read_text() if path.exists() else '# Benchmarks\n'
  block = f'{BEGIN}\n{text}\n{END}'
  if BEGIN in old and END in old:
    new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
  else:
    new = old.rstrip('\n') + '\n\n## All figures in one run (`benchmarks/run_all.py`)\n\n' + block + '\n'
  path.write_text(new)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ints = lambda s: [int(x) for x in s.split(',') if x]
  parser.add_argument('--architectures', default=','.join(default.PAPER_SIZES))
  parser.add_argument('--variants', default='full,tiny')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--batches_full', type=ints, default=[1, 8, 32])
  parser.add_argument('--batches_tiny', type=ints, default=[1, 8, 32, 256])
  parser.add_argument('--plain_batches', type=ints, default=[1, 32])
  parser.add_argument('--train_batch_full', type=int, default=8)
  parser.add_argument('--train_batch_tiny', type=int, default=16)
  parser.add_argument('--min_seconds', type=float, default=2.0)
  parser.add_argument('--before', default='pose_tree_moe,tree_moe',
                      help='architectures also measured with the nn.vmap committees, the '
                           'lowering before any was measured per backend (before/after)')
  parser.add_argument('--no_pipeline', action='store_true')
  parser.add_argument('--numerics_workdir', default='')
  parser.add_argument('--json', default='docs/data/benchmarks_run_all.json')
  parser.add_argument('--doc', default='docs/benchmarks.md', help="'' writes no doc")
  parser.add_argument('--from_json', default='',
                      help='only rewrite the doc from a JSON this script wrote')
  args = parser.parse_args()
  if args.from_json:
    text = markdown(json.loads(pathlib.Path(args.from_json).read_text()))
    print(text)
    if args.doc:
      write_doc(pathlib.Path(args.doc), text)
    return 0
  results = {'machine': machine(), 'argv': ' '.join(sys.argv[1:]), 'json': args.json,
             'gemm_gflops_start': common.gemm_gflops(),
             'gemm_gflops_bf16': common.gemm_gflops(dtype=jnp.bfloat16), 'rows': []}
  log(f'{results["machine"]}; GEMM {results["gemm_gflops_start"]:.1f} GFLOP/s fp32, '
      f'{results["gemm_gflops_bf16"]:.1f} bf16')
  for variant in args.variants.split(','):
    batches = args.batches_full if variant == 'full' else args.batches_tiny
    for architecture in args.architectures.split(','):
      for dtype in args.dtypes.split(','):
        tuned = forward_rows(architecture, variant, dtype, batches, args)
        results['rows'] += tuned
        batch = args.train_batch_full if variant == 'full' else args.train_batch_tiny
        results['rows'].append(train_row(architecture, variant, dtype, batch))
        if variant == 'full' and dtype == 'float32' and architecture in args.before.split(','):
          # Before/after in the same process: the nn.vmap committees (other_lowering).
          other = other_lowering()
          results['rows'] += forward_rows(architecture, variant, dtype, batches, args, other)
          if tuned[0]['options']:  # XLA's defaults differ from the tuned options (CPU only)
            results['rows'] += forward_rows(architecture, variant, dtype, batches, args,
                                            xla='defaults')
          results['rows'].append(train_row(architecture, variant, dtype, batch, other))
  if not args.no_pipeline:
    results['pipeline'], results['pipeline_tf_ops_one_thread'] = pipeline_rates(
        args.train_batch_tiny)
  if args.numerics_workdir:
    results['numerics'] = numerics(args.numerics_workdir)
  results['gemm_gflops_end'] = common.gemm_gflops()
  text = markdown(results)
  print(text, flush=True)
  if args.json:
    pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1) + '\n')
  if args.doc:
    write_doc(pathlib.Path(args.doc), text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
