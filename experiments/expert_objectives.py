"""Which mixture-of-experts objective the main job trains with, chosen on the validation views.

  python experiments/expert_objectives.py --run paper,weighted,... [--out /tmp/objectives]
  python experiments/expert_objectives.py --collect paper,weighted   # trained under --out
  python experiments/expert_objectives.py --report     # rewrite docs/learning.md's table

Each variant is the README main job (`configs/pose_tree_moe.py:cpu`, 1500 steps) with its
`config.moe` overrides, all reading one head-pose estimator (the first variant's, trained as the
main job trains it), then `eval.py --split validation` with dense, top-2 and greedy routing side
by side (evaluate.routing_report). The records (config overrides, NME per view and routing, the
gates' concentration) go to docs/data/expert_objectives.json; --report writes the table between
its markers in docs/learning.md. Nothing here reads the test views: they are for the final
tables of the chosen default.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOC = ROOT / 'docs' / 'learning.md'
DATA = ROOT / 'docs' / 'data' / 'expert_objectives.json'
VIEWS = ('frontal', 'large_pose', 'occluded', 'yaw_0_30', 'yaw_30_60', 'yaw_60_90')
MARKERS = ('<!-- expert_objectives.py table -->', '<!-- end of expert_objectives.py table -->')

_W = ['--config.moe.expert_loss=weighted']
VARIANTS: dict[str, tuple[str, list[str]]] = {
    'paper': ("the mixture's loss alone (section 3.5)", []),
    'weighted': ('+ each path\'s error weighted by its gate (Jacobs et al. 1991, eq. 1.2), x1',
                 [*_W, '--config.moe.expert_loss_weight=1']),
    'competitive': ('+ the soft minimum over paths (eq. 1.3), scale 1 px, x1',
                    ['--config.moe.expert_loss=competitive', '--config.moe.expert_loss_weight=1',
                     '--config.moe.competition_scale=1']),
    'weighted_entropy': ('weighted x1 + gate entropy x0.3 + load balance x0.1',
                         [*_W, '--config.moe.expert_loss_weight=1',
                          '--config.moe.entropy_weight=0.3', '--config.moe.balance_weight=0.1']),
    'weighted3': ('weighted x3', [*_W, '--config.moe.expert_loss_weight=3']),
    'experts_only': ("weighted x1 and no loss on the mixture itself (Jacobs et al.'s objective "
                     'alone)', [*_W, '--config.moe.expert_loss_weight=1',
                                '--config.moe.mixture_loss_weight=0']),
}


def train(name: str, out: pathlib.Path, data_dir: str, pose: str) -> None:
  workdir = out / name
  overrides = VARIANTS[name][1] + [f'--config.data_dir={data_dir}'] + (
      [f'--config.pose_checkpoint={pose}'] if pose else [])
  with open(out / f'{name}.log', 'a') as log:
    subprocess.run([sys.executable, str(ROOT / 'train.py'), '--workdir', str(workdir),
                    '--config', str(ROOT / 'configs/pose_tree_moe.py:cpu'), *overrides],
                   stdout=log, stderr=subprocess.STDOUT, check=True, cwd=ROOT)


def evaluate(name: str, workdir: pathlib.Path) -> dict:
  """The validation record of one trained variant (evaluated once, kept in workdir/val)."""
  stored = workdir / 'val' / 'results.json'
  if not stored.exists():
    from treemoe_jax.evaluate import evaluator  # pylint: disable=g-import-not-at-top (TF)
    evaluator.evaluate_workdir(workdir, out=workdir / 'val', split='validation', figures=False,
                               compare_routings='auto')
  results = json.loads(stored.read_text())
  report = results['routing_report']
  return {'what': VARIANTS[name][0], 'overrides': VARIANTS[name][1],
          'step': results['provenance']['checkpoint_step'], 'split': 'validation',
          'nme': {r: {v: round(by_view[v], 6) for v in VIEWS} for r, by_view in
                  report['nme'].items()},
          'worst_ratio_to_dense': {r: round(max(by_view[v] for v in VIEWS), 4) for r, by_view in
                                   report['ratio_to_dense'].items()},
          'concentration': report['concentration']}


def table(records: dict) -> list[str]:
  lines = ['| variant | what | dense NME % per view | their mean | greedy / dense (worst view) | '
           'top-2 / dense | regression gate: 90% of the mass on (stage 1, 2) |',
           '|---|---|---|---|---|---|---|']
  for name, r in records.items():
    dense = ' / '.join(f'{100 * r["nme"]["dense"][v]:.2f}' for v in VIEWS)
    share = r['concentration'].get('regression', {}).get('share_for_90', [])
    mean = 100 * sum(r['nme']['dense'][v] for v in VIEWS) / len(VIEWS)
    lines.append(f'| `{name}` | {r["what"]} | {dense} | {mean:.2f} | '
                 f'{r["worst_ratio_to_dense"].get("greedy", float("nan")):.2f}x | '
                 f'{r["worst_ratio_to_dense"].get("topk:2", float("nan")):.2f}x | '
                 + ', '.join(f'{100 * s:.0f}%' for s in share) + ' |')
  return lines


def write_table(records: dict) -> None:
  text = DOC.read_text()
  start, end = text.index(MARKERS[0]), text.index(MARKERS[1])
  DOC.write_text(text[:start] + MARKERS[0] + '\n' + '\n'.join(table(records)) + '\n'
                 + text[end:])


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--run', default='', help=f'comma-separated, of {", ".join(VARIANTS)}')
  parser.add_argument('--out', default='/tmp/objectives')
  parser.add_argument('--data_dir', default='/tmp/tfds')
  parser.add_argument('--collect', default='', help='variants already trained under --out: '
                      'evaluate and record them')
  parser.add_argument('--report', action='store_true', help='rewrite the table from the JSON')
  args = parser.parse_args()
  records = json.loads(DATA.read_text()) if DATA.exists() else {}
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  names = [n for n in args.run.split(',') if n]
  collected = [n for n in args.collect.split(',') if n]
  for name in names + collected:
    if name not in VARIANTS:
      parser.error(f'unknown variant {name!r}; valid: {", ".join(VARIANTS)}')
  pose = ''
  for name in names:
    start = time.perf_counter()
    train(name, out, args.data_dir, pose)
    pose = pose or str(out / name / 'pose')  # the first variant's estimator, for the others
    records[name] = evaluate(name, out / name) | {
        'minutes': round((time.perf_counter() - start) / 60, 1)}
    DATA.write_text(json.dumps(records, indent=1) + '\n')
  for name in collected:
    records[name] = evaluate(name, out / name)
    DATA.write_text(json.dumps(records, indent=1) + '\n')
  write_table({n: records[n] for n in VARIANTS if n in records})
  print('\n'.join(table(records)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
