"""The expert CNNs with and without their receptive-field crops, alternated in one process.

Finished study, moved from benchmarks/ (issue 33): the crops are on (docs/speed.md says what
they are). Rerun to check the change on new hardware.

  python -m experiments.receptive_crops [--architecture pose_tree_moe] [--dtype bfloat16]
      [--batches 1,256,1024] [--train_batch 256] [--rounds 2] [--json OUT.json]

`experts.receptive_crops` lets the last layers of each expert CNN compute only the outputs the
features depend on (with 32x32 patches: 9 of 16 at the third layer, 1 of 4 at the fourth). The
"uncropped" model is the same code with every crop off: each layer 'SAME' over its whole input,
as before the change. Both are compiled first, then timed in turn, `--rounds` times, so a
machine's drift falls on both. TensorFlow-free (runs on a GPU machine without it).
"""

import argparse
import sys

import jax

from benchmarks import common
from treemoe_jax.nn import experts

CROPPED = experts.receptive_crops


def uncropped(size, kernel_sizes, stride=2):
  del size, stride
  return (None,) * len(kernel_sizes)


VARIANTS = {'cropped': CROPPED, 'uncropped': uncropped}


def compiled_under(crops, lower):
  """`lower()`'s computation traced and compiled with `crops` as the CNNs' crop rule."""
  experts.receptive_crops = crops
  try:
    return lower().compile()
  finally:
    experts.receptive_crops = CROPPED


def forward_rows(args, batch: int) -> list[dict]:
  case = common.forward_case(args.architecture, args.variant, args.dtype)
  images, init = common.inputs(batch)
  fn = jax.jit(case.forward, compiler_options=case.options)
  compiled = {name: compiled_under(crops, lambda: fn.lower(case.variables, images, init))
              for name, crops in VARIANTS.items()}
  rows = []
  for round_ in range(args.rounds):
    for name, c in compiled.items():
      seconds = common.time_call(lambda c=c: c(case.variables, images, init), args.min_seconds)
      rows.append(dict(kind='forward', variant=name, batch=batch, round=round_,
                       seconds=seconds, img_s=batch / seconds))
      common.log(f'forward batch {batch} {name}: {batch / seconds:.1f} img/s')
  return rows


def train_rows(args) -> list[dict]:
  config = common.config_for(args.architecture, args.variant, args.dtype)
  _, state, step, batches = common.setup_step(config, args.train_batch)
  compiled = {name: compiled_under(crops, lambda: step.lower(state, batches[0]))
              for name, crops in VARIANTS.items()}
  rows = []
  for round_ in range(args.rounds):
    for name, c in compiled.items():
      def call(c=c):
        nonlocal state
        state, metrics = c(state, batches[0])
        return metrics['loss']
      seconds = common.time_call(call, args.min_seconds)
      rows.append(dict(kind='train', variant=name, batch=args.train_batch, round=round_,
                       seconds=seconds, img_s=args.train_batch / seconds))
      common.log(f'train batch {args.train_batch} {name}: {args.train_batch / seconds:.1f} img/s')
  return rows


def table(rows: list[dict]) -> str:
  lines = ['| what | batch | uncropped img/s | cropped img/s | cropped / uncropped |',
           '|---|---|---|---|---|']
  keys = sorted({(r['kind'], r['batch']) for r in rows}, key=lambda k: (k[0] != 'forward', k[1]))
  for kind, batch in keys:
    got = {v: [r['img_s'] for r in rows if (r['kind'], r['batch'], r['variant']) == (kind, batch, v)]
           for v in VARIANTS}
    ratio = ', '.join(f'{a / b:.2f}x' for a, b in zip(got['cropped'], got['uncropped']))
    lines.append(f'| {kind} | {batch} | {", ".join(f"{v:.1f}" for v in got["uncropped"])} | '
                 f'{", ".join(f"{v:.1f}" for v in got["cropped"])} | {ratio} |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--architecture', default='pose_tree_moe')
  parser.add_argument('--variant', default='full')
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--batches', default='32', help='forward batches; empty for none')
  parser.add_argument('--train_batch', type=int, default=0, help='0: no training step')
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--min_seconds', type=float, default=2.0)
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  machine = common.machine()
  common.log(f'{machine}; crops {experts.receptive_crops(32, (5, 5, 3, 3, 1))} for 32 px')
  rows = []
  for batch in [int(b) for b in args.batches.split(',') if b]:
    rows += forward_rows(args, batch)
  if args.train_batch:
    rows += train_rows(args)
  if args.json:
    common.write_json(args.json, {'machine': machine, 'argv': ' '.join(sys.argv[1:]),
                                  'rows': rows})
  print(f'\n{args.architecture} {args.variant} {args.dtype}, {machine["device"]}, '
        f'rounds alternated in one process\n')
  print(table(rows))


if __name__ == '__main__':
  main()
