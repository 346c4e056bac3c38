"""Helpers shared by the benchmark scripts (and tests): one place for what several measure with.

- timing and the machine's jit GEMM rate (`time_call`, `gemm_gflops`), XLA's FLOP counts
  (`lowered_flops`, `compiled_flops`, `countable`);
- which machine a run was on (`machine`; the CPU from Linux's /proc and /sys: `describe_cpu`);
- the models set up for timing as run_all measures them: forwards (`forward_case`,
  `forward_row`, `forward_rows`) and the data-parallel training step on random batches
  (`setup_step`, `time_step`, `train_row`; no TensorFlow, so it runs on accelerator machines);
- run_all's report: its JSON (`write_json`) and Markdown (`markdown`, `write_doc`), which
  gpu_benchmark.py writes too.

Run the scripts as modules from the repository root: `python -m benchmarks.<name> --help`.
"""

import dataclasses
import json
import os
import pathlib
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import plain_port
from configs import default
from treemoe_jax import parallel
from treemoe_jax import xla_options
from treemoe_jax.nn import experts
from treemoe_jax.nn import models
from treemoe_jax.train import tasks
from treemoe_jax.train import trainer as train


def log(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


def write_json(path: str | pathlib.Path, data) -> None:
  """`data` as indented JSON at `path` (parent folders made): what every benchmark writes."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(data, indent=1) + '\n')


# --- Timing and FLOPs. ---


def time_call(fn: Callable[[], jax.Array], min_seconds: float = 2.0, min_runs: int = 3) -> float:
  """Median seconds per call of `fn` (already compiled), after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  start = time.perf_counter()
  while len(times) < min_runs or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  times.sort()
  return times[len(times) // 2]


def gemm_gflops(n: int = 2048, dtype=jnp.float32) -> float:
  """GFLOP/s of one jitted n x n matmul in `dtype`: the ceiling model rates are compared to."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  return 2 * n**3 / time_call(lambda: matmul(a, a)) / 1e9


def compiled_flops(compiled) -> float:
  """FLOPs XLA counts for a compiled computation (0 if the backend does not say)."""
  return _flops(compiled.cost_analysis())


def lowered_flops(lowered) -> float:
  """FLOPs XLA counts for a lowered (not yet compiled) computation: tracing cost only."""
  return _flops(lowered.cost_analysis())


def _flops(analysis) -> float:
  if isinstance(analysis, list):  # older JAX returned one dict per device
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get('flops', 0.0))


def countable(config):
  """`config` with every committee lowered so that XLA's cost analysis sees all of its work.

  XLA counts a loop's body once, not once per trip, so a committee computed by `lax.scan` over
  its experts (`regression_lowering='scan'`) would report one expert's FLOPs. The model computed is the
  same; benchmarks time the real lowering and take the FLOPs from this one. The CNN committee's
  'blockdiag' and 'padded' lowerings multiply by zeros (off-diagonal blocks, padded channels):
  they are counted as 'merged', which computes the same function without them (useful work), and
  the first layer as XLA's convolution (`representation_first_layer='matmul'` adds the bias as a matmul row).
  """
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.regression_lowering = 'vmap'
    config.model.representation_first_layer = 'conv'  # 'matmul' multiplies a column of ones too
    if config.model.get('representation_lowering') in ('blockdiag', 'padded'):
      config.model.representation_lowering = 'merged'
  return config


# --- Which CPU a run was on (Linux's /proc/cpuinfo and /sys cache files). ---
#
# Why: the same code's "% of the jit GEMM" moved from 60.6% to 36.6-38.8% between two of this
# project's 2-core machines (docs/benchmarks.md, "CPU B"): an AVX-512 core doubles the GEMM
# rate but not the narrow convolutions' or the memory's. `platform.processor()` says only
# "x86_64", so a figure without this cannot be compared with another. Elsewhere than Linux the
# description is empty, never guessed.

CPUINFO = '/proc/cpuinfo'
CACHES = '/sys/devices/system/cpu/cpu0/cache'

# Vector instruction sets, widest first: (cpuinfo flag, name). x86 'flags', Arm 'Features'.
VECTOR_ISAS = (('avx512f', 'AVX-512'), ('avx2', 'AVX2'), ('avx', 'AVX'), ('sse4_2', 'SSE4.2'),
               ('sve2', 'SVE2'), ('sve', 'SVE'), ('asimd', 'NEON'))
# Matrix or bf16 instructions that a library may use for bf16 or int8 products.
EXTRAS = (('amx_bf16', 'AMX-BF16'), ('avx512_bf16', 'AVX512-BF16'), ('avx512_vnni', 'VNNI'),
          ('bf16', 'BF16'), ('i8mm', 'I8MM'))


def first_processor(cpuinfo_text: str) -> dict[str, str]:
  """The first processor's 'key: value' lines of /proc/cpuinfo (all processors repeat them)."""
  fields = {}
  for line in cpuinfo_text.splitlines():
    if not line.strip():
      if fields:
        break
      continue
    key, sep, value = line.partition(':')
    if sep:
      fields.setdefault(key.strip(), value.strip())
  return fields


def cache_bytes(size: str) -> int:
  """'32768K' / '1M' / '512' (sysfs' cache size) -> bytes."""
  size = size.strip()
  scale = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}.get(size[-1:].upper(), 1)
  return int(size.rstrip('KkMmGg')) * scale


def last_level_cache(caches_dir: str | pathlib.Path = CACHES) -> tuple[int, int] | None:
  """(level, bytes) of cpu0's largest-level cache from sysfs' index*/level and size, or None."""
  best = None
  for index in sorted(pathlib.Path(caches_dir).glob('index*')):
    try:
      level = int((index / 'level').read_text())
      size = cache_bytes((index / 'size').read_text())
    except (OSError, ValueError):
      continue
    if best is None or level > best[0]:
      best = (level, size)
  return best


def describe_cpu(cpuinfo: str | pathlib.Path = CPUINFO, caches_dir: str | pathlib.Path = CACHES
             ) -> dict:
  """{'model', 'vendor', 'family', 'model_number', 'vector', 'extras', 'cache_level',
  'cache_mb'} for the JSON of a benchmark run; {} where /proc/cpuinfo cannot be read."""
  try:
    fields = first_processor(pathlib.Path(cpuinfo).read_text())
  except OSError:
    return {}
  flags = set((fields.get('flags') or fields.get('Features') or '').split())
  arm = 'CPU implementer' in fields
  result = {
      'model': fields.get('model name') or (
          f'Arm implementer {fields["CPU implementer"]} part {fields.get("CPU part", "?")}'
          if arm else 'unknown'),
      'vendor': fields.get('vendor_id', 'Arm' if arm else ''),
      'family': fields.get('cpu family', ''),
      'model_number': fields.get('model', ''),
      'vector': next((name for flag, name in VECTOR_ISAS if flag in flags), 'none found'),
      'extras': [name for flag, name in EXTRAS if flag in flags],
  }
  cache = last_level_cache(caches_dir)
  if cache:
    result['cache_level'], result['cache_mb'] = cache[0], cache[1] / (1 << 20)
  return result


def cpu_summary(cpu: dict) -> str:
  """One line for a report: 'AMD EPYC (AuthenticAMD family 26 model 2; AVX-512, AVX512-BF16;
  L3 32 MB)'; '' for an empty description."""
  if not cpu:
    return ''
  ident = ' '.join(part for part in (
      cpu.get('vendor', ''), cpu.get('family') and f'family {cpu["family"]}',
      cpu.get('model_number') and f'model {cpu["model_number"]}') if part)
  details = [', '.join([cpu['vector']] + list(cpu.get('extras', [])))]
  if 'cache_mb' in cpu:
    details.append(f'L{cpu["cache_level"]} {cpu["cache_mb"]:g} MB')
  return f'{cpu["model"]} ({"; ".join(([ident] if ident else []) + details)})'


# --- Models set up for timing, as run_all measures them. ---


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
  # The tables keep 0.1's 'tiny' label (their JSONs say it); the config is the 'cpu' variant.
  config = default.get_config(architecture, default.DEPRECATED_VARIANTS.get(variant, variant))
  with config.unlocked():
    config.model.dtype = dtype
    config.model.representation_lowering = cnn
    config.model.regression_lowering = mlp
    config.model.representation_first_layer = first
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
  with no loop over experts: countable), taken before optimisation, whatever the backend
  then rewrites."""
  images, init = inputs(batch)
  start = time.perf_counter()
  compiled = jax.jit(fn, compiler_options=options).lower(variables, images, init).compile()
  compile_s = time.perf_counter() - start
  seconds = time_call(lambda: compiled(variables, images, init), min_seconds=min_seconds)
  flops = lowered_flops(jax.jit(counted or fn).lower(variables, images, init))
  return dict(batch=batch, compile_s=compile_s, seconds=seconds, img_s=batch / seconds,
              gflop_img=flops / batch / 1e9, gflops=flops / seconds / 1e9)


@dataclasses.dataclass(frozen=True)
class ForwardCase:
  """One model set up for timing: its parameters, the compiler options its jit sites use and
  the countable twin whose FLOPs XLA can see (countable)."""
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
  counted = models.create(countable(config))
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


def train_row(architecture, variant, dtype, batch, lowering='auto',
              task_name: str = 'alignment') -> dict:
  """The data-parallel step on random batches (time_step): the alignment task, a 'train' row,
  or with task_name='pose' the pose estimator's own step, a 'pose_train' row."""
  row = time_step(config_for(architecture, variant, dtype, lowering), batch, task_name)
  what = 'pose estimator' if task_name == 'pose' else architecture
  log(f'train {what} {variant} {dtype} {lowering} batch {batch}: {row["img_s"]:.1f} img/s')
  return dict(kind='pose_train' if task_name == 'pose' else 'train', architecture=architecture,
              variant=variant, dtype=dtype, lowering=lowering,
              resolved=resolved_lowering(lowering), batch=batch, **row)


def machine() -> dict:
  device = jax.devices()[0]
  return {'device': device.device_kind, 'platform': device.platform,
          'device_count': jax.device_count(), 'cpu_count': os.cpu_count(),
          'processor': platform.processor() or platform.machine(), 'jax': jax.__version__,
          'cpu': describe_cpu(), 'date': time.strftime('%Y-%m-%d %H:%M')}


def resolved_lowering(lowering: str, backend: str | None = None, inference: bool = False) -> str:
  """'CNN/MLP' committee lowerings that `lowering` ('auto', 'CNN/MLP' or 'CNN/MLP/FIRST') runs
  on `backend` (in a forward never differentiated if `inference`), with '/FIRST' where the CNNs'
  first layer is not 'conv'."""
  cnn, mlp, first = split_lowering(lowering)
  first = experts.resolve_first_layer(first, backend)
  return (f'{experts.resolve_cnn_lowering(cnn, backend, inference)}/'
          f'{experts.resolve_mlp_lowering(mlp, backend)}' + ('' if first == 'conv' else f'/{first}'))


# --- run_all's report: the Markdown of a run's JSON (gpu_benchmark.py writes the same). ---

BEGIN, END = '<!-- run_all:begin -->', '<!-- run_all:end -->'


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
  script = results.get('script', 'benchmarks/run_all.py')  # JSONs from before `-m` lack it
  n = results.get('gemm_n', 2048)
  lines = [f'Generated by `python {script} {results["argv"]}` on {m["date"]}: '
           f'{m["device"]} x{m["device_count"]} ({m["cpu_count"]} CPU cores'
           f'{"; " + cpu_summary(m["cpu"]) if m.get("cpu") else ""}), jax {m["jax"]}. '
           f'jit GEMM {n}^3 fp32: {gemm:.1f} GFLOP/s at the start, '
           f'{results.get("gemm_gflops_end", float("nan")):.1f} at the end, '
           f'bf16 {results["gemm_gflops_bf16"]:.1f}; '
           f'"% GEMM" is against the fp32 start rate for float32 rows and the bf16 rate for '
           f'bfloat16 rows. JSON: '
           f'`{results["json"]}`.']
  rows = results['rows']
  if any(r['kind'] == 'forward' for r in rows):
    lines += ['', '| architecture | size | dtype | CNN/MLP lowering | XLA:CPU options | batch | '
              'compile s | GFLOP/img | img/s | ms per batch | % GEMM | plain port img/s | '
              'vs plain |', '|---' * 13 + '|']
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
  if any(r['kind'] in ('train', 'pose_train') for r in rows):
    lines += ['', 'Training step (alignment, random batches, the data-parallel jitted step):', '',
              '| architecture | size | dtype | CNN/MLP lowering | batch | compile s | GFLOP/img | '
              'img/s | % GEMM |', '|---' * 9 + '|']
  for r in rows:
    if r['kind'] in ('train', 'pose_train'):
      pose_only = r['kind'] == 'pose_train'
      lines.append(f'| {"pose estimator alone" if pose_only else r["architecture"]} | '
                   f'{r["variant"]} | {r["dtype"]} | '
                   f'{"-" if pose_only else _lowering(r, backend)} | {r["batch"]} | '
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
    title = '## All figures in one run (`python -m benchmarks.run_all`)'
    new = old.rstrip('\n') + f'\n\n{title}\n\n{block}\n'
  path.write_text(new)


# --- The data-parallel training step on random batches. ---


def random_batch(config, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
  size = config.model.image_size
  landmarks = rng.uniform(0.2 * size, 0.8 * size, (batch, 68, 2)).astype(np.float32)
  return {'image': rng.uniform(-1, 1, (batch, size, size)).astype(np.float32),
          'landmarks': landmarks,
          'init_shape': (landmarks + rng.normal(0, 5, landmarks.shape)).astype(np.float32),
          'pose': rng.uniform(-1, 1, (batch, 3)).astype(np.float32)}


def make_task(config, task_name: str = 'alignment') -> tasks.Task:
  return tasks.pose_task(config) if task_name == 'pose' else tasks.alignment_task(config)


def setup_step(config, batch: int, task_name: str = 'alignment', num_batches: int = 2):
  """(mesh, state, jitted step, random global batches) of the data-parallel training step."""
  task = make_task(config, task_name)
  mesh = parallel.make_mesh()
  state = train.create_train_state(task, optax.adam(1e-3), mesh, jax.random.key(0))
  rng = np.random.default_rng(0)
  batches = [parallel.global_batch(random_batch(config, batch, rng), task.batch_keys, mesh)
             for _ in range(num_batches)]
  return mesh, state, train.make_train_step(task, mesh), batches


def step_flops(config, task_name: str, mesh, state, batch) -> float:
  """XLA's count of one step with every expert counted (countable), before
  optimisation: a scanned committee's compiled loop would count one expert."""
  counted = make_task(countable(config), task_name)
  return lowered_flops(train.make_train_step(counted, mesh).lower(state, batch))


def time_step(config, batch: int, task_name: str = 'alignment') -> dict:
  """Compile time, median seconds of 3 steps after a warm-up, and XLA's FLOPs of one step."""
  mesh, state, step, batches = setup_step(config, batch, task_name)
  start = time.perf_counter()
  compiled = step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - start
  state, metrics = compiled(state, batches[0])  # warm-up
  jax.block_until_ready(metrics['loss'])
  times = []
  for i in range(3):
    start = time.perf_counter()
    state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready(metrics['loss'])
    times.append(time.perf_counter() - start)
  seconds = float(np.median(times))
  flops = step_flops(config, task_name, mesh, state, batches[0])
  return dict(compile_s=compile_s, seconds=seconds, img_s=batch / seconds,
              gflop_img=flops / batch / 1e9, gflops=flops / seconds / 1e9)
