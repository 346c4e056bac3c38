"""Where the learning gap comes from: named training variants, run and written to docs/learning.md.

  python experiments/learning.py --run base,cosine,... [--jobs 2] [--out /tmp/learning]
  python experiments/learning.py --report            # rewrite docs/learning.md from the results

Each variant is `train.py` with config overrides (VARIANTS), trained from scratch in its own
workdir under --out, with the wide synthetic test split evaluated every `eval_every` steps. A
finished variant's learning curve and final per-stage NME go into --out/results.json (kept across
invocations, so variants can be run a few at a time); --report draws the curves and writes the
table. Figures come from real runs only: nothing here is typed by hand.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / 'docs' / 'learning.md'
FIGURE = ROOT / 'docs' / 'figures' / 'learning_variants.png'

# name -> (what it tests, overrides). Every variant trains tree_moe:cpu on
# synthetic_faces/default (4000 wide-pose faces) for --steps at batch 16, from the config as the
# hardening issue left it (_BEFORE pins those values, now no longer the defaults), plus its changes.
_BEFORE = ['--config.dataset=synthetic_faces/default',
           '--config.model.stop_gradient_between_stages=False',
           '--config.augment.translate_std=10', '--config.loss_type=l2',
           '--config.model.patch_scales=()', '--config.model.regression_hidden=32']
_SG = ['--config.model.stop_gradient_between_stages=True']
_COARSE = ['--config.model.patch_scales=(2.0,1.0)']
_JIT3 = ['--config.augment.translate_std=3']
_H128 = ['--config.model.regression_hidden=128']
_DIST = ['--config.loss_type=distance']
_COSINE = ['--config.lr_schedule=cosine', '--config.warmup_steps=100']
VARIANTS: dict[str, tuple[str, list[str]]] = {
    'base': ('the tiny config as the hardening issue left it', []),
    'cosine_zero_init': ('cosine decay + zero-initialised regressor outputs',
                         [*_COSINE, '--config.model.regression_output_init=zeros']),
    'stop_gradient': ('no gradient through the patch positions into the stage before', _SG),
    'init_jitter_3px': ("s(0) moved by N(0, 3 px), not the paper's 10 px", _JIT3),
    'coarse_patches': ('stop_gradient + the first stage cuts its patches at half resolution',
                       [*_SG, *_COARSE]),
    'combined': ('stop_gradient + coarse patches + 3 px jitter', [*_SG, *_COARSE, *_JIT3]),
    'combined_hidden128': ('combined, regressors 4x wider (hidden 128)',
                           [*_SG, *_COARSE, *_JIT3, *_H128]),
    'combined_hidden128_cosine': ('combined_hidden128 with the cosine schedule',
                                  [*_SG, *_COARSE, *_JIT3, *_H128, *_COSINE]),
    'distance_loss': ("combined_hidden128 with the per-landmark distance loss: today's defaults",
                      [*_SG, *_COARSE, *_JIT3, *_H128, *_DIST]),
    'distance_loss_lr2e-3': ('distance_loss at twice the learning rate',
                             [*_SG, *_COARSE, *_JIT3, *_H128, *_DIST,
                              '--config.learning_rate=2e-3']),
    'distance_loss_512_faces': ('distance_loss on synthetic_faces/small: 512 train faces (its '
                                'own 256-face test split)',
                                [*_SG, *_COARSE, *_JIT3, *_H128, *_DIST,
                                 '--config.dataset=synthetic_faces/small']),
    'distance_loss_16000_faces': ('distance_loss on synthetic_faces/large: 16000 train faces, '
                                  'each drawn twice in 2000 steps, near a fresh stream (same '
                                  'test split)',
                                  [*_SG, *_COARSE, *_JIT3, *_H128, *_DIST,
                                   '--config.dataset=synthetic_faces/large']),
}
VARIANTS = {name: ('configs/tree_moe.py:cpu', why, _BEFORE + overrides)
            for name, (why, overrides) in VARIANTS.items()}
# The schedule at the reproduction's length: baseline:small (4000 faces) for --steps 6000, from
# today's defaults with the schedule pinned, and the 2 stages `small` had when they were measured.
_CONSTANT = ['--config.lr_schedule=constant', '--config.learning_rate=1e-3',
             '--config.warmup_steps=0']
_SMALL = {
    'small_constant': ("baseline:small, section 3.5's constant 1e-3", _CONSTANT),
    'small_cosine': ('baseline:small, cosine decay from 1e-3, no warm-up',
                     ['--config.lr_schedule=cosine', '--config.learning_rate=1e-3',
                      '--config.warmup_steps=0']),
    'small_cosine_2e-3': ('baseline:small, 300 warm-up steps to 2e-3, then cosine decay: '
                          "the small config's default", []),
    'small_cosine_2e-3_short': ('small_cosine_2e-3 over fewer steps (--steps 4000)', []),
}
VARIANTS |= {name: ('configs/baseline.py:small', why, ['--config.model.num_stages=2', *overrides])
             for name, (why, overrides) in _SMALL.items()}


def command(name: str, workdir: pathlib.Path, steps: int, eval_every: int) -> list[str]:
  config, _, overrides = VARIANTS[name]
  return [sys.executable, str(ROOT / 'train.py'), f'--config={config}', f'--workdir={workdir}',
          f'--config.num_train_steps={steps}', f'--config.eval_every_steps={eval_every}',
          f'--config.checkpoint_every_steps={steps}', '--config.log_every_steps=250', *overrides]


def run_variant(name: str, out: pathlib.Path, steps: int, eval_every: int) -> dict:
  """Trains one variant from scratch; its eval curve and wall time."""
  workdir = out / name
  if workdir.exists():
    subprocess.run(['rm', '-rf', str(workdir)], check=True)
  start = time.perf_counter()
  with open(out / f'{name}.log', 'w') as log:
    subprocess.run(command(name, workdir, steps, eval_every), check=True, stdout=log,
                   stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ | {'PYTHONPATH': str(ROOT)})
  return collect(name, workdir, steps, time.perf_counter() - start)


def collect(name: str, workdir: pathlib.Path, steps: int, seconds: float) -> dict:
  """A finished variant's record: its eval curve, and the config the workdir recorded."""
  config, why, overrides = VARIANTS[name]
  recorded = json.loads((workdir / 'config.json').read_text())
  if not seconds:  # an ingested run: from its first record to its last
    seconds = (workdir / 'metrics.jsonl').stat().st_mtime - (workdir / 'config.json').stat().st_mtime
  curve = []
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    if 'eval/nme/init' in record:
      stages = sorted(k for k in record if k.startswith('eval/nme/stage'))
      curve.append({'step': record['step'], 'init': record['eval/nme/init'],
                    'stages': [record[k] for k in stages]})
  if not curve or curve[-1]['step'] != steps:
    raise ValueError(f'{workdir} holds no evaluation at step {steps}')
  return {'name': name, 'why': why, 'config': config, 'overrides': overrides, 'steps': steps,
          'seconds': seconds, 'curve': curve, 'recorded_config': recorded}


START, END = '<!-- learning.py table -->', '<!-- end of learning.py table -->'


def replace_table(text: str, table: str) -> str:
  """`text` with what lies between the START and END markers replaced by `table`."""
  head, rest = text.split(START, 1)
  _, tail = rest.split(END, 1)
  return f'{head}{START}\n{table}{END}{tail}'


def report(results: dict) -> str:
  """docs/learning.md's table and figure from every stored result."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(results) + 1.2))
  lines = ['| variant | what it tests | steps | NME % per stage (last = output) | s(0) NME % | '
           'wall |', '|---|---|---|---|---|---|']
  names = list(results)
  for row, name in enumerate(names):
    r = results[name]
    last = r['curve'][-1]
    stages = ' / '.join(f'{100 * v:.2f}' for v in last['stages'])
    lines.append(f'| `{name}` | {r["why"]} | {r["steps"]} | {stages} | {100 * last["init"]:.1f} | '
                 f'{r["seconds"] / 60:.1f} min |')
    for k, value in enumerate(last['stages']):  # every stage's bar, the output's in front
      ax.barh(row, 100 * value, color=f'C{k}', label=f'after stage {k + 1}' if row == 0 else None)
    ax.text(100 * last['stages'][-1], row, f' {100 * last["stages"][-1]:.2f}', va='center',
            fontsize=8)
  ax.set_yticks(range(len(names)), names, fontsize=8)
  ax.invert_yaxis()
  ax.set_xlabel('NME % (box) on the wide test split after the last step')
  ax.set_title('variants (tree_moe:cpu from the hardening config; small_*: baseline:small)')
  ax.grid(alpha=0.3, axis='x')
  ax.legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  fig.savefig(FIGURE, dpi=110)
  plt.close(fig)
  return '\n'.join(lines) + '\n'


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--run', default='', help='comma-separated variants: ' + ', '.join(VARIANTS))
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--eval_every', type=int, default=500)
  parser.add_argument('--jobs', type=int, default=2, help='variants trained at once')
  parser.add_argument('--out', default='/tmp/learning')
  parser.add_argument('--report', action='store_true')
  parser.add_argument('--ingest', default='', help='NAME=WORKDIR,...: record variants already '
                      'trained by `command` (same overrides, any eval cadence) without retraining')
  parser.add_argument('--seconds', default='', help='NAME=SECONDS,... wall times of --ingest runs')
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  store = out / 'results.json'
  results = json.loads(store.read_text()) if store.exists() else {}
  names = [n for n in args.run.split(',') if n]
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    parser.error(f'unknown variants {unknown}; valid: {", ".join(VARIANTS)}')
  seconds = dict(item.split('=') for item in args.seconds.split(',') if item)
  for item in filter(None, args.ingest.split(',')):
    name, workdir = item.split('=')
    results[name] = collect(name, pathlib.Path(workdir), args.steps, float(seconds.get(name, 0)))
    store.write_text(json.dumps(results, indent=1))
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    futures = {pool.submit(run_variant, n, out, args.steps, args.eval_every): n for n in names}
    for future in concurrent.futures.as_completed(futures):
      r = future.result()
      results[r['name']] = r
      store.write_text(json.dumps(results, indent=1))
      print(f'{r["name"]}: NME % per stage {[round(100 * v, 2) for v in r["curve"][-1]["stages"]]}'
            f' in {r["seconds"] / 60:.1f} min', flush=True)
  if args.report or names or args.ingest:
    table = report(results)
    text = DOC.read_text() if DOC.exists() else f'# Learning\n\n{START}\n{END}\n'
    DOC.write_text(replace_table(text, table))
    print(table)
  return 0


if __name__ == '__main__':
  sys.exit(main())
