"""Which mixture-of-experts objective the main job trains with, chosen on the validation views.

  python experiments/expert_objectives.py --run paper,weighted,... [--out /tmp/objectives]
  python experiments/expert_objectives.py --collect paper,weighted   # trained under --out
  python experiments/expert_objectives.py --report     # rewrite docs/learning.md's table
  python experiments/expert_objectives.py --size reproduction_64 --run experts_balance,...

`--size reproduction_64` weighs the objectives where the paper's 64 regressors are (tree_moe,
6000 steps, the reproduction's 4000 faces): the choice the reproduction's defaults rest on. Its
records go to docs/data/expert_objectives_reproduction_64.json and its own table.

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

# Every variant pins all of config.moe that it depends on: the defaults move (the mixture's weight
# went from 1 to 0 when `experts_only` was chosen), and a variant must train the same objective
# whenever it runs. _M keeps the mixture's loss beside the path term.
_W = ['--config.moe.expert_loss=weighted']
_M = ['--config.moe.mixture_loss_weight=1']
VARIANTS: dict[str, tuple[str, list[str]]] = {
    'paper': ("the mixture's loss alone (section 3.5)",
              ['--config.moe.expert_loss=none', '--config.moe.expert_loss_weight=0', *_M]),
    'weighted': ('+ each path\'s error weighted by its gate (Jacobs et al. 1991, eq. 1.2), x1',
                 [*_W, '--config.moe.expert_loss_weight=1', *_M]),
    'competitive': ('+ the soft minimum over paths (eq. 1.3), scale 1 px, x1',
                    ['--config.moe.expert_loss=competitive', '--config.moe.expert_loss_weight=1',
                     '--config.moe.competition_scale=1', *_M]),
    'weighted_entropy': ('weighted x1 + gate entropy x0.3 + load balance x0.1',
                         [*_W, '--config.moe.expert_loss_weight=1', *_M,
                          '--config.moe.entropy_weight=0.3', '--config.moe.balance_weight=0.1']),
    'weighted3': ('weighted x3', [*_W, '--config.moe.expert_loss_weight=3', *_M]),
    'experts_only': ("weighted x1 and no loss on the mixture itself (Jacobs et al.'s objective "
                     'alone)', [*_W, '--config.moe.expert_loss_weight=1',
                                '--config.moe.mixture_loss_weight=0']),
}


_EXPERTS_ONLY = [*_W, '--config.moe.expert_loss_weight=1', '--config.moe.mixture_loss_weight=0']
VARIANTS |= {
    'experts_balance': ('experts_only + load balance x0.1 (the batch\'s gate importance evened '
                        'out, Shazeer et al. 2017)', [*_EXPERTS_ONLY, '--config.moe.balance_weight=0.1']),
    'weighted_balance': ('weighted x1 + load balance x0.1',
                         [*_W, '--config.moe.expert_loss_weight=1', *_M,
                          '--config.moe.balance_weight=0.1']),
}


class Size:
  """Where the objectives are weighed: the config, the record file and its table's markers."""

  def __init__(self, config: str, data: pathlib.Path, markers: tuple[str, str],
               data_dir: str | None):
    self.config, self.data, self.markers, self.data_dir = config, data, markers, data_dir


SIZES = {
    'cpu': Size('configs/pose_tree_moe.py:cpu', DATA, MARKERS, None),
    'reproduction_64': Size(
        'configs/tree_moe.py:reproduction_64',
        ROOT / 'docs' / 'data' / 'expert_objectives_reproduction_64.json',
        ('<!-- expert_objectives.py reproduction_64 table -->',
         '<!-- end of expert_objectives.py reproduction_64 table -->'), ''),
}


def train(name: str, out: pathlib.Path, data_dir: str, pose: str,
          config: str = 'configs/pose_tree_moe.py:cpu') -> None:
  workdir = out / name
  overrides = VARIANTS[name][1] + [f'--config.data_dir={data_dir}'] + (
      [f'--config.pose_checkpoint={pose}'] if pose else [])
  with open(out / f'{name}.log', 'a') as log:
    subprocess.run([sys.executable, str(ROOT / 'train.py'), '--workdir', str(workdir),
                    '--config', str(ROOT / config), *overrides],
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


def diagnose(workdir: pathlib.Path, split: str = 'validation') -> dict:
  """Why experts do (not) specialise, per stage, on the wide validation split: each path's own
  displacement against the mixture's (their mean lengths, px, and the mean distance between a
  path and the mixture, px), and the gates' entropy over training (from metrics.jsonl: entropy
  falls as the gate logits grow)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from treemoe_jax import parallel  # pylint: disable=g-import-not-at-top
  from treemoe_jax import runs  # pylint: disable=g-import-not-at-top
  from treemoe_jax.evaluate import evaluator  # pylint: disable=g-import-not-at-top (TF)
  run = runs.load_run(workdir)
  mesh = parallel.make_mesh()

  @jax.jit
  def paths_of(variables, batch):
    out = run.model.apply(variables, batch['image'], batch['init_shape'], paths=True)
    starts = jax.numpy.concatenate([batch['init_shape'][None], out['stage_shapes'][:-1]])
    mixture = out['stage_shapes'] - starts  # [K, B, P, 2]
    own = out['paths']['shapes'] - starts[:, :, None, None]  # [K, B, L, M, P, 2]
    weights = out['paths']['representation'][..., None] * out['paths']['regression']
    return {'mixture': mixture, 'own': own, 'weights': weights, 'mask': batch['mask']}

  sums = None
  for batch in evaluator._global_batches(run, mesh, run.config.dataset, split,  # pylint: disable=protected-access
                                         batch_size=64, data_dir=run.config.data_dir or None):
    got = jax.device_get(paths_of(run.variables, batch))
    keep = np.asarray(got['mask'], bool)
    length = lambda d: np.linalg.norm(d, axis=-1).mean(-1)  # mean over landmarks, px
    mixture = length(got['mixture'][:, keep])  # [K, N]
    own = length(got['own'][:, keep])  # [K, N, L, M]
    apart = length(got['own'][:, keep] - got['mixture'][:, keep][:, :, None, None])
    weights = got['weights'][:, keep]
    part = {'mixture': mixture.sum(1), 'own': (weights * own).sum((2, 3)).sum(1),
            'apart': (weights * apart).sum((2, 3)).sum(1), 'count': keep.sum()}
    sums = part if sums is None else {k: sums[k] + part[k] for k in sums}
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  entropy = {r['step']: {k.removeprefix('train/gate_entropy/'): round(v, 3) for k, v in r.items()
                         if k.startswith('train/gate_entropy/')}
             for r in records if any(k.startswith('train/gate_entropy/') for k in r)}
  steps = sorted(entropy)
  return {'mixture_displacement_px': (sums['mixture'] / sums['count']).round(3).tolist(),
          'path_displacement_px': (sums['own'] / sums['count']).round(3).tolist(),
          'path_to_mixture_px': (sums['apart'] / sums['count']).round(3).tolist(),
          'gate_entropy_by_step': {s: entropy[s] for s in (steps[0], steps[len(steps) // 3],
                                                           steps[2 * len(steps) // 3], steps[-1])}}


def diagnosis_table(records: dict) -> list[str]:
  lines = ['| variant | stage | mixture displacement px | a path\'s own, gate-weighted | a path '
           'to the mixture | regression gate entropy, nats, over training (steps) |',
           '|---|---|---|---|---|---|']
  for name, r in records.items():
    d = r.get('diagnosis')
    if not d:
      continue
    for k, mixture in enumerate(d['mixture_displacement_px']):
      entropy = ' > '.join(f'{v[f"stage{k}/regression"]:.2f}'
                           for v in d['gate_entropy_by_step'].values())
      lines.append(f'| `{name}` | {k + 1} | {mixture:.2f} | {d["path_displacement_px"][k]:.2f} | '
                   f'{d["path_to_mixture_px"][k]:.2f} | {entropy} '
                   f'({", ".join(map(str, d["gate_entropy_by_step"]))}) |')
  return lines


def table(records: dict) -> list[str]:
  in_use = any('experts_in_use' in r['concentration'].get('regression', {})
               for r in records.values())
  lines = ['| variant | what | dense NME % per view | their mean | greedy / dense (worst view) | '
           'top-2 / dense | regression gate: 90% of the mass on (per stage) |'
           + (' regressors in use (per stage) |' if in_use else ''),
           '|---|---|---|---|---|---|---|' + ('---|' if in_use else '')]
  for name, r in records.items():
    dense = ' / '.join(f'{100 * r["nme"]["dense"][v]:.2f}' for v in VIEWS)
    regression = r['concentration'].get('regression', {})
    share = regression.get('share_for_90', [])
    mean = 100 * sum(r['nme']['dense'][v] for v in VIEWS) / len(VIEWS)
    used = ''
    if in_use:
      used = (' ' + ', '.join(f'{u:.1f}' for u in regression['experts_in_use']) + ' |'
              if 'experts_in_use' in regression else ' - |')
    lines.append(f'| `{name}` | {r["what"]} | {dense} | {mean:.2f} | '
                 f'{r["worst_ratio_to_dense"].get("greedy", float("nan")):.2f}x | '
                 f'{r["worst_ratio_to_dense"].get("topk:2", float("nan")):.2f}x | '
                 + ', '.join(f'{100 * s:.0f}%' for s in share) + ' |' + used)
  return lines


def write_table(records: dict, markers: tuple[str, str] = MARKERS) -> None:
  text = DOC.read_text()
  if markers[0] not in text:
    return
  start, end = text.index(markers[0]), text.index(markers[1])
  diagnosis = diagnosis_table(records)
  body = table(records) + (['', 'Why, per stage, on the wide validation split (`--diagnose`):', '',
                             *diagnosis] if len(diagnosis) > 2 else [])
  DOC.write_text(text[:start] + markers[0] + '\n' + '\n'.join(body) + '\n' + text[end:])


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--run', default='', help=f'comma-separated, of {", ".join(VARIANTS)}')
  parser.add_argument('--out', default='/tmp/objectives')
  parser.add_argument('--data_dir', default='/tmp/tfds')
  parser.add_argument('--collect', default='', help='variants already trained under --out: '
                      'evaluate and record them')
  parser.add_argument('--diagnose', default='', help='variants trained under --out: measure '
                      "their paths' displacements against the mixture's (diagnose)")
  parser.add_argument('--report', action='store_true', help='rewrite the table from the JSON')
  parser.add_argument('--size', default='cpu', choices=tuple(SIZES),
                      help="cpu: the README main job's; reproduction_64: the reproduction's")
  args = parser.parse_args()
  size = SIZES[args.size]
  data = size.data
  if size.data_dir is not None:
    args.data_dir = size.data_dir
  records = json.loads(data.read_text()) if data.exists() else {}
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
    train(name, out, args.data_dir, pose, size.config)
    if args.size == 'cpu':
      pose = pose or str(out / name / 'pose')  # the first variant's estimator, for the others
    records[name] = evaluate(name, out / name) | {
        'minutes': round((time.perf_counter() - start) / 60, 1)}
    data.write_text(json.dumps(records, indent=1) + '\n')
  for name in collected:
    records[name] = evaluate(name, out / name)
    data.write_text(json.dumps(records, indent=1) + '\n')
  for name in [n for n in args.diagnose.split(',') if n]:
    records[name]['diagnosis'] = diagnose(out / name)
    data.write_text(json.dumps(records, indent=1) + '\n')
  write_table({n: records[n] for n in VARIANTS if n in records}, size.markers)
  print('\n'.join(table(records)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
