"""The head-pose estimator's learning-rate schedule: its MAE curves from trained workdirs.

  python experiments/pose_schedule.py constant=/tmp/pose_const wsd=/tmp/pose_wsd \
      cosine=/tmp/repro/pose

Each NAME=WORKDIR is a `configs/pose_resnet50.py:small` run (see docs/learning.md, "The pose
estimator", for the train.py commands). Reads their metrics.jsonl and config.json; writes the
curves to docs/data/pose_schedule.json and docs/figures/pose_schedule.png, and prints the Markdown table
that docs/learning.md shows. Nothing is typed by hand.
"""

import argparse
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
ANGLES = ('yaw', 'pitch', 'roll')


def read_metrics(workdir: pathlib.Path) -> list[dict]:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    raise FileNotFoundError(f'{path} not found: is {workdir} a pose estimator workdir?')
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mae_curve(records: list[dict]) -> list[dict]:
  """[{step, yaw, pitch, roll}] in degrees, from the run's eval lines, oldest first."""
  curve = [{'step': r['step'], **{a: r[f'eval/mae_deg/{a}'] for a in ANGLES}}
           for r in records if 'eval/mae_deg/yaw' in r]
  if not curve:
    raise ValueError('no eval/mae_deg lines: is it a pose estimator run?')
  return curve


def schedule_words(records: list[dict]) -> str:
  """The schedule the run really followed, from its logged rates (config.json keeps only the
  first invocation's: a resumed run may have added a decay)."""
  logged = [(r['step'], r['train/learning_rate']) for r in records if 'train/learning_rate' in r]
  steps, rates = np.array(logged).T
  peak = rates.max()
  top = np.flatnonzero(np.isclose(rates, peak, rtol=1e-3))
  if top[-1] == len(rates) - 1:
    return f'constant {peak:g}'
  warmup = f'warm-up to {peak:g} by step {steps[top[0]]:.0f}, ' if top[0] > 0 else f'{peak:g}, '
  return f'{warmup}decay from step {steps[top[-1]]:.0f} to {rates[-1]:.2g} at {steps[-1]:.0f}'


def table(runs: dict) -> list[str]:
  lines = ['| run | learning rate (as logged) | heads | steps | yaw / pitch / roll MAE deg '
           '| mean |',
           '|---|---|---|---|---|---|']
  for name, run in runs.items():
    last = run['curve'][-1]
    lines.append(f'| {name} | {run["schedule"]} | {run["head_output"]} | {last["step"]} | '
                 + ' / '.join(f'{last[a]:.2f}' for a in ANGLES)
                 + f' | {np.mean([last[a] for a in ANGLES]):.2f} |')
  return lines


def figure(runs: dict, path: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (name, run) in enumerate(runs.items()):
    steps = [c['step'] for c in run['curve']]
    wide = 2 * (len(runs) - 1 - i)  # earlier runs drawn wider: a resumed run shares their start
    ax.plot(steps, [np.mean([c[a] for a in ANGLES]) for c in run['curve']], 'o-', label=name,
            linewidth=1.5 + wide, markersize=5 + wide, alpha=0.8)
  ax.set_xlabel('training step')
  ax.set_ylabel('mean of yaw, pitch, roll MAE (deg), test split')
  ax.set_title('Head-pose estimator (pose_resnet50:small) by schedule')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('runs', nargs='+', help='NAME=WORKDIR')
  parser.add_argument('--data', default=str(ROOT / 'docs' / 'data' / 'pose_schedule.json'))
  parser.add_argument('--figure', default=str(ROOT / 'docs' / 'figures' / 'pose_schedule.png'))
  args = parser.parse_args()
  runs = {}
  for item in args.runs:
    name, sep, workdir = item.partition('=')
    if not sep:
      parser.error(f'{item!r}: expected NAME=WORKDIR')
    workdir = pathlib.Path(workdir)
    config = json.loads((workdir / 'config.json').read_text())
    records = read_metrics(workdir)
    runs[name] = {'workdir': str(workdir), 'schedule': schedule_words(records),
                  'head_output': config.get('pose', {}).get('head_output', 'tanh'),
                  'curve': mae_curve(records)}
  pathlib.Path(args.data).write_text(json.dumps(runs, indent=1))
  figure(runs, pathlib.Path(args.figure))
  print('\n'.join(table(runs)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
