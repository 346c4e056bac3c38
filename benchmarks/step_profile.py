"""Where a training step's time goes, by model part and direction, from a jax.profiler trace.

  python -m benchmarks.step_profile [--architecture pose_tree_moe] [--variant full] [--batch 8]
      [--top_ops 20] [--dtype bfloat16] [--lowering blockdiag/vmap/matmul] [--forward] [--out DIR]

`--forward` profiles the inference forward (as evaluation and Aligner compile it) instead of
the step; `--out` keeps the trace, the compiled HLO and the tables there, to read again later
(`--from_out DIR`). On a GPU only the device's kernel events count, each named by its HLO
instruction (the host's launch events would count twice).

Runs the jitted data-parallel step (random batches, as `run_all --only train`; no TensorFlow)
under jax.profiler with a perfetto trace and sums the time of every XLA op (XLA:CPU traces one
event per thunk) by the model part its HLO metadata names: the pose estimator, each cascade
module (summed over the stages), and what lies outside the model (the loss and the optimizer).
A fusion without metadata of its own (XLA:CPU's library calls for kernel gradients) takes the
part most of its inner instructions name. Ops that run side by side both count, so the parts
can sum to more than the step's wall time.
"""

import argparse
import collections
import glob
import gzip
import itertools
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax

from benchmarks import common

OUTSIDE = 'outside the model (loss, optimizer)'
_SHAPE = r'(?:\([^)]*\)|\S+)'  # an HLO result shape: one array's, or a tuple's in parentheses
# Trace events that are not one XLA op: the runtime's own spans and Python's.
_NOT_OPS = ('ThunkExecutor', '$', 'PjitFunction', 'SlinkyThreadPool', 'PjRt')
_TRANSFORMS = re.compile(r'\b(?:transpose|jvp|jit|vmap|checkpoint|remat|pjit)\(([^()]*)\)')


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the op_name of its metadata; for a fusion without one, the op_name
  most instructions of its called computation carry."""
  own = dict(re.findall(r'^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?op_name="([^"]*)"', hlo_text, re.M))
  calls = dict(re.findall(r'^\s*(?:ROOT )?%?([\w.\-]+) = [^\n]*?calls=%?([\w.\-]+)', hlo_text,
                          re.M))
  inner = {}
  for name, body in re.findall(r'^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}', hlo_text, re.M | re.S):
    names = re.findall(r'op_name="([^"]*)"', body)
    if names:
      inner[name] = collections.Counter(names).most_common(1)[0][0]
  names = {n: inner[c] for n, c in calls.items() if c in inner}
  names.update(own)
  return names


def operands(hlo_text: str) -> dict[str, list[str]]:
  """HLO instruction name -> the instructions it reads, in order."""
  reads = {}
  for name, args in re.findall(r'^\s*(?:ROOT )?%?([\w.\-]+) = ' + _SHAPE + r' [\w\-]+\(([^)]*)\)',
                               hlo_text, re.M):
    reads[name] = re.findall(r'%([\w.\-]+)', args)
  return reads


def by_operand(name: str, names: dict[str, str], reads: dict[str, list[str]],
               model: str = 'FaceAligner') -> str | None:
  """For an op without metadata (a copy or library call XLA inserted): the op_name of the
  nearest op it reads, breadth first, that names a model part."""
  seen, queue = {name}, list(reads.get(name, []))
  while queue:
    current = queue.pop(0)
    if current in seen:
      continue
    seen.add(current)
    if model in names.get(current, ''):
      return names[current]
    queue += reads.get(current, [])
  return None


def part_of(op_name: str | None, model: str = 'FaceAligner') -> tuple[str, str]:
  """(model part, 'forward' or 'backward') of an op_name such as
  'jit(train_step)/transpose(jvp(FaceAligner))/cascade/stage2/representation/conv'."""
  if not op_name:
    return OUTSIDE, 'forward'
  direction = 'backward' if 'transpose(' in op_name else 'forward'
  path = op_name
  while _TRANSFORMS.search(path):
    path = _TRANSFORMS.sub(r'\1', path)
  parts = [p for p in path.split('/') if p]
  if model not in parts:
    return OUTSIDE, direction
  parts = parts[parts.index(model) + 1:]
  parts = [p for p in parts if not re.fullmatch(r'stage\d+', p)]  # summed over the stages
  if parts[:1] == ['cascade'] and len(parts) > 1:
    return f'cascade/{parts[1]}', direction
  return (parts[0] if parts else model), direction


def trace_file(trace_dir: str) -> str:
  files = glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)
  if not files:
    raise FileNotFoundError(f'no perfetto trace under {trace_dir}')
  return files[0]


def trace_events(path: str, keep: str | None = None) -> list[dict]:
  """The complete ('X') events of a perfetto trace (a .trace.json.gz, or the folder jax.profiler
  wrote it under): on an accelerator, those of its device processes only. `keep`: write those
  and the process names there, as a smaller trace that this function reads again."""
  with gzip.open(path if path.endswith('.gz') else trace_file(path)) as f:
    events = json.load(f)['traceEvents']
  ops = device_only([e for e in events if e.get('ph') == 'X'], events)
  if keep:
    names = [e for e in events if e.get('ph') == 'M']
    with gzip.open(keep, 'wt') as f:
      json.dump({'traceEvents': names + ops}, f)
  return ops


def device_only(op_events: list[dict], all_events: list[dict]) -> list[dict]:
  """`op_events` of the processes named '/device:...' (a GPU's or TPU's kernels), or all of them
  where there is none (XLA:CPU runs its ops on host threads)."""
  devices = {e['pid'] for e in all_events
             if e.get('ph') == 'M' and e.get('name') == 'process_name'
             and str(e.get('args', {}).get('name', '')).startswith('/device:')}
  return [e for e in op_events if e['pid'] in devices] if devices else op_events


NO_METADATA = 'no metadata: part of what it reads'


def attribute(events: list[dict], hlo_text: str, model: str = 'FaceAligner'
              ) -> dict[tuple[str, str], float]:
  """Microseconds of the op events by (part, direction).

  An op whose HLO carries no op_name (a layout copy, a library call for a kernel gradient) is
  given the part of the nearest op it reads, and the direction NO_METADATA.
  """
  names, reads = op_names(hlo_text), operands(hlo_text)
  totals = collections.Counter()
  for event in events:
    name = event['name']
    if name.startswith(_NOT_OPS):
      continue
    # XLA:CPU names a thunk's event after its instruction. A device kernel's event may carry the
    # instruction as args['hlo_op'] instead (a GPU's; not yet checked on one).
    name = event.get('args', {}).get('hlo_op', name)
    if name not in reads:
      continue
    if name in names:
      key = part_of(names[name], model)
    else:
      key = (part_of(by_operand(name, names, reads, model), model)[0], NO_METADATA)
    totals[key] += event['dur']
  return dict(totals)


def trace_calls(call: Callable[[], None], steps: int, keep: str | None = None
                ) -> tuple[list[dict], float]:
  """(the op events of `steps` traced calls of `call`, which blocks until its results are ready;
  median wall seconds of one untraced call). `keep`: write the op events there (`trace_events`)."""
  for _ in range(2):  # warm-up
    call()
  walls = []
  for _ in range(steps):
    start = time.perf_counter()
    call()
    walls.append(time.perf_counter() - start)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for _ in range(steps):
        call()
    events = trace_events(trace_dir, keep)
  return events, sorted(walls)[len(walls) // 2]


def trace_step(compiled, state, batches, steps: int, keep: str | None = None
               ) -> tuple[list[dict], float]:
  """(the op events of `steps` traced steps, median wall seconds of one untraced step)."""
  calls = itertools.count()

  def call():
    nonlocal state
    state, metrics = compiled(state, batches[next(calls) % len(batches)])
    jax.block_until_ready(metrics['loss'])

  return trace_calls(call, steps, keep)


def profile_step(compiled, state, batches, steps: int, model: str = 'FaceAligner'
                 ) -> tuple[dict, float]:
  """(µs by (part, direction) over `steps` steps, median wall seconds of one untraced step)."""
  events, wall_s = trace_step(compiled, state, batches, steps)
  return per_step(events, compiled.as_text(), steps, model), wall_s


def per_step(events: list[dict], hlo_text: str, steps: int, model: str = 'FaceAligner'
             ) -> dict:
  """µs per step by (part, direction): `attribute`'s totals over `steps` traced steps."""
  return {k: v / steps for k, v in attribute(events, hlo_text, model).items()}


def op_kinds(events: list[dict], hlo_text: str) -> list[dict]:
  """The ops' time by kind: instructions of one name but for their number ('transpose_copy_fusion'
  from 'transpose_copy_fusion.107') and one result shape, summed; the largest first. Why: the
  same op repeats per expert and per stage, and only their sum shows what to change."""
  shapes = _shapes(hlo_text)
  kinds = {}
  for event in events:
    name = event.get('args', {}).get('hlo_op', event['name'])
    if name not in shapes:
      continue
    key = (re.sub(r'\.\d+$', '', name), shapes[name])
    kind = kinds.setdefault(key, {'op': key[0], 'shape': key[1], 'count': 0, 'us': 0.0})
    kind['count'] += 1
    kind['us'] += event['dur']
  return sorted(kinds.values(), key=lambda k: -k['us'])


def markdown(us_by_part: dict, wall_s: float) -> str:
  total = sum(us_by_part.values())
  lines = [f'step wall time {1e3 * wall_s:.1f} ms; XLA ops {total / 1e3:.1f} ms', '',
           '| part | direction | ms per step | % of the ops |', '|---|---|---|---|']
  small = 0.0
  for (part, direction), us in sorted(us_by_part.items(), key=lambda kv: -kv[1]):
    if us < 0.001 * total:
      small += us
      continue
    lines.append(f'| {part} | {direction} | {us / 1e3:.1f} | {100 * us / total:.1f} |')
  if small:
    lines.append(f'| the other parts, each < 0.1% | | {small / 1e3:.1f} | '
                 f'{100 * small / total:.1f} |')
  return '\n'.join(lines)


def forward_call(architecture: str, variant: str, dtype: str, batch: int, lowering: str = 'auto'):
  """(the inference forward compiled as run_all times it, a call of it that blocks)."""
  case = common.forward_case(architecture, variant, dtype, lowering)
  images, init = common.inputs(batch)
  compiled = jax.jit(case.forward, compiler_options=case.options).lower(
      case.variables, images, init).compile()
  return compiled, lambda: jax.block_until_ready(compiled(case.variables, images, init))


def report(events: list[dict], hlo_text: str, wall_s: float, steps: int, top_ops: int,
           title: str) -> str:
  lines = [title, markdown(per_step(events, hlo_text, steps), wall_s)]
  if top_ops:
    lines += [f'\nThe {top_ops} largest op kinds (per call; ops of a kind may run side by side)\n',
              '| op | result shape | ops per call | ms per call |', '|---|---|---|---|']
    lines += [f'| {kind["op"]} | {kind["shape"]} | {kind["count"] / steps:.0f} | '
              f'{kind["us"] / steps / 1e3:.2f} |' for kind in op_kinds(events, hlo_text)[:top_ops]]
    counted = _shapes(hlo_text)
    unnamed = collections.Counter()
    for event in events:
      if event['name'].startswith(_NOT_OPS):
        continue
      if event.get('args', {}).get('hlo_op', event['name']) not in counted:
        unnamed[event['name'][:80]] += event['dur']
    if unnamed:
      lines += ['\nEvents not named by an HLO instruction of this module (largest 10)\n',
                '| event | ms per call |', '|---|---|']
      lines += [f'| {name} | {us / steps / 1e3:.2f} |' for name, us in unnamed.most_common(10)]
  return '\n'.join(lines)


def _shapes(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> its result shape without layouts ('f32[8,4]', or a tuple's
  '(bf16[8,4], u8[0])', as a GPU's library calls return)."""
  found = re.findall(r'^\s*(?:ROOT )?%?([\w.\-]+) = (' + _SHAPE + ')', hlo_text, re.M)
  return {name: re.sub(r'\{[^}]*\}', '', shape) for name, shape in found}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--architecture', default='pose_tree_moe')
  parser.add_argument('--variant', default='full')
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--dtype', default='float32', help="the model's computation")
  parser.add_argument('--lowering', default='auto',
                      help="committee lowerings: 'auto', 'CNN/MLP' or 'CNN/MLP/FIRST' (run_all)")
  parser.add_argument('--forward', action='store_true',
                      help='the inference forward instead of the training step')
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--top_ops', type=int, default=0,
                      help='also list the N op kinds that take most time')
  parser.add_argument('--out', default='', help='keep the trace, HLO and tables in this folder')
  parser.add_argument('--from_out', default='', help='report a kept --out folder again')
  args = parser.parse_args()
  if args.from_out:
    saved = Path(args.from_out)
    meta = json.loads((saved / 'profile.json').read_text())
    hlo_text = gzip.decompress((saved / 'hlo.txt.gz').read_bytes()).decode()
    events = trace_events(str(saved / 'trace.json.gz'))
    print(report(events, hlo_text, meta['wall_s'], meta['steps'], args.top_ops, meta['title']))
    return
  what = 'forward' if args.forward else 'training step'
  resolved = common.resolved_lowering(args.lowering, inference=args.forward)
  title = (f'{args.architecture} {args.variant} {args.dtype} {what} ({resolved}), batch '
           f'{args.batch}, {jax.devices()[0].device_kind} ({os.cpu_count()} CPU cores)')
  out = Path(args.out) if args.out else None
  if out:
    out.mkdir(parents=True, exist_ok=True)
  keep = str(out / 'trace.json.gz') if out else None
  if args.forward:
    compiled, call = forward_call(args.architecture, args.variant, args.dtype, args.batch,
                                  args.lowering)
    events, wall_s = trace_calls(call, args.steps, keep)
  else:
    config = common.config_for(args.architecture, args.variant, args.dtype, args.lowering)
    _, state, step, batches = common.setup_step(config, args.batch)
    compiled = step.lower(state, batches[0]).compile()
    events, wall_s = trace_step(compiled, state, batches, args.steps, keep)
  hlo_text = compiled.as_text()
  text = report(events, hlo_text, wall_s, args.steps, args.top_ops, title)
  print(text)
  if out:
    (out / 'hlo.txt.gz').write_bytes(gzip.compress(hlo_text.encode()))
    (out / 'profile.json').write_text(json.dumps(
        {'title': title, 'wall_s': wall_s, 'steps': args.steps, 'argv': sys.argv[1:]}) + '\n')
    (out / 'profile.md').write_text(text + '\n')


if __name__ == '__main__':
  main()
