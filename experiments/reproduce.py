"""Tables 1 and 3, Fig. 5 and Fig. 6 on the embedded benchmark: six architectures, their shared
head-pose estimator and the classic peer, trained on the same faces; writes docs/reproduction.md.

  pip install -e '.[peers]'          # dlib-bin, for the ERT peer
  python experiments/reproduce.py --gate_pose_truth    # CPU: the `reproduction` sizes, about 2 h
  python experiments/reproduce.py --seeds 0,1,2        # three seeds: mean and spread
  python experiments/reproduce.py --size full --out /tmp/repro_full   # the paper's sizes (GPU/TPU)

Order of work: (1) the head-pose estimator, trained for `--pose_steps` with its size's schedule
(small: warm-up + cosine decay), its test MAE checked every `--pose_check` steps; (2) each
architecture and seed through `train.py`, all at the same `--size` (equal parameter budgets per
stage: configs/default.py), `--jobs` at a time, the pose-free ones beside the estimator; (3) each
evaluated on the synthetic Table 1 views (frontal, large pose, occluded) and the Table 3 yaw
buckets; (4) dlib's ERT trained on exactly the same train crops, and the mean shape; (5) the
Markdown report, with the paper's figures beside ours and a reading computed from the numbers.
Every workdir stays under --out; a step whose output exists is not redone, so an interrupted
reproduction picks up where it stopped.
"""

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments import pose_schedule  # noqa: E402 (the MAE curve of a pose workdir)
from treemoe_jax.evaluate.reports import column_nme, share_for_mass, view_subset  # noqa: E402

ARCHITECTURES = ('baseline', 'moe', 'softmax_moe', 'tree_moe', 'pose_softmax_moe',
                 'pose_tree_moe')
# Analysis runs beside the six: name -> (config, extra overrides). The oracle gates the experts on
# the *true* head pose: how far a perfect pose estimator would move pose_tree_moe.
ORACLES = {'pose_tree_moe_true_pose': ('pose_tree_moe', ['--config.model.gate_pose=truth'])}
PROTOCOLS = 'synthetic_table1,synthetic_table3'
TABLE1_VIEWS = ('frontal', 'large_pose', 'occluded')
TABLE3_VIEWS = ('yaw_0_30', 'yaw_30_60', 'yaw_60_90', 'mean')

# SPEC "Paper results to reproduce" (NME %): Table 1 on LFPW / HELEN / IBUG / COFW; Table 3 on
# AFLW2000-3D yaw buckets 0-30 / 30-60 / 60-90 and their mean.
PAPER_TABLE1 = {
    'baseline': (3.92, 4.42, 8.89, 5.90), 'moe': (3.79, 4.25, 8.95, 5.87),
    'softmax_moe': (3.74, 4.20, 8.80, 5.84), 'tree_moe': (3.74, 4.20, 8.38, 5.76),
    'pose_softmax_moe': (3.84, 4.27, 7.99, 6.12), 'pose_tree_moe': (3.82, 4.17, 7.50, 5.58)}
PAPER_TABLE3 = {'tree_moe': (2.84, 4.01, 4.93, 3.92), 'pose_tree_moe': (2.78, 3.97, 4.76, 3.84)}
# Section 4.4.2 / Fig. 6: the share of the regressors that holds 90% of the first stage's gate
# mass, tree gate vs softmax gate.
PAPER_FIG6_SHARE = {'tree': 0.20, 'softmax': 0.40}

SIZES = {  # --size -> (config variant, dataset, device note)
    'small': ('reproduction', 'synthetic_faces/default', 'CPU'),
    'full': (None, 'synthetic_faces/default', 'GPU/TPU'),
}


def log(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


def train(config: str, workdir: pathlib.Path, overrides: list[str], logfile: pathlib.Path) -> float:
  """train.py in a subprocess (its own log); wall seconds."""
  start = time.perf_counter()
  command = [sys.executable, str(ROOT / 'train.py'), f'--config={config}', f'--workdir={workdir}',
             *overrides]
  with open(logfile, 'a') as f:
    done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                          env=os.environ | {'PYTHONPATH': str(ROOT)})
  if done.returncode:
    raise RuntimeError(f'{" ".join(command)} failed (exit {done.returncode}); see {logfile}')
  return time.perf_counter() - start


def eval_records(workdir: pathlib.Path) -> list[dict]:
  """The eval lines of a workdir's metrics.jsonl, oldest first."""
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return [r for r in map(json.loads, lines) if any(k.startswith('eval/') for k in r)]


class Timings(dict):
  """{job: wall seconds}, kept in OUT/timings.json.

  `save` merges into the file rather than overwriting it: reproductions run side by side on one
  --out (other architectures or seeds) each add their own jobs' times without dropping the
  others', and each then holds every job's time for its report. `add` is what the trainings
  that run at once (`--jobs`) call from their threads.
  """

  def __init__(self, path: pathlib.Path):
    self.path = path
    super().__init__(self._stored())
    self._seen, self._ours = dict(self), set()
    self._lock = threading.RLock()

  def _stored(self) -> dict:
    return json.loads(self.path.read_text()) if self.path.exists() else {}

  def add(self, job: str, seconds: float) -> None:
    """Adds `seconds` to `job` and saves (a run extended to more steps resumes: the sum)."""
    with self._lock:
      self[job] = self.get(job, 0.0) + seconds
      self.save()

  def save(self) -> None:
    with self._lock:
      self._ours.update(k for k, v in self.items() if self._seen.get(k) != v)
      stored = self._stored() | {k: self[k] for k in self._ours}
      self.path.write_text(json.dumps(stored, indent=1))
      self.update(stored)
      self._seen.update(stored)


def train_pose(out: pathlib.Path, args, timings: Timings) -> dict:
  """One run of `--pose_steps` with the size's schedule (small: warm-up + cosine); the curve,
  and whether its error had stopped falling (its last `--pose_check` steps gained < `--pose_tol`).

  Chunks at a constant rate until the error stopped falling, the previous rule, stopped at 6.5
  degrees of yaw: the decay is worth more than the chunks (docs/learning.md, "The pose estimator").
  """
  workdir = out / 'pose'
  records = eval_records(workdir) if (workdir / 'metrics.jsonl').exists() else []
  if not any(r['step'] >= args.pose_steps for r in records):
    log(f'pose estimator: training to step {args.pose_steps}')
    timings.add('pose', train(
        f'configs/pose_resnet50.py{_variant(args)}', workdir,
        [f'--config.num_train_steps={args.pose_steps}',
         f'--config.eval_every_steps={args.pose_check}',
         f'--config.checkpoint_every_steps={args.pose_check}',
         f'--config.seed={args.pose_seed}', f'--config.dataset={args.dataset}', *args.overrides],
        out / 'pose.log'))
    records = eval_records(workdir)
  curve = [c for c in pose_schedule.mae_curve(records) if c['step'] <= args.pose_steps]
  mean = [np.mean([c[a] for a in pose_schedule.ANGLES]) for c in curve]
  last_gain = 1 - mean[-1] / mean[-2] if len(mean) >= 2 else float('nan')
  log(f'pose estimator at step {curve[-1]["step"]}: MAE deg ' +
      ' '.join(f'{a} {curve[-1][a]:.2f}' for a in pose_schedule.ANGLES) +
      f'; the last {args.pose_check} steps: {100 * last_gain:.1f}% better')
  return {'workdir': str(workdir), 'steps': curve[-1]['step'], 'curve': curve,
          'last_gain': last_gain}


def _pose_schedule(args) -> str:
  """The estimator's learning-rate schedule at this size, in words."""
  from configs import pose_resnet50  # pylint: disable=g-import-not-at-top
  config = pose_resnet50.get_config(SIZES[args.size][0])
  if config.lr_schedule == 'cosine':
    return (f'a {config.warmup_steps}-step warm-up to {config.learning_rate:g}, then a cosine '
            'decay to 0')
  return f'the {config.lr_schedule} schedule at {config.learning_rate:g}'


def _variant(args) -> str:
  variant = SIZES[args.size][0]
  return f':{variant}' if variant else ''


def needs_pose(arch: str) -> bool:
  """Whether `arch` reads the shared estimator (the true-pose oracle is built on one too)."""
  return arch.startswith('pose_')


def train_architectures(out: pathlib.Path, args, pose: concurrent.futures.Future,
                        timings: Timings, pool: concurrent.futures.Executor) -> dict:
  """{(architecture, seed): workdir}, each trained for --steps on `pool` (skipped when done).

  The pose-free runs are queued first, so that they train beside the estimator; a pose-gated run
  waits for `pose` (train_pose's result) to pass its workdir on.
  """
  runs, queue = {}, []
  for seed in args.seeds:
    first = seed == args.seeds[0]
    for arch in ([a for a in args.architectures if first or a in args.seed_architectures]
                 + (list(ORACLES) if args.oracle and first else [])):
      workdir = out / f'{arch}_seed{seed}'
      runs[(arch, seed)] = workdir
      done = (workdir / 'metrics.jsonl').exists() and any(
          r['step'] >= args.steps for r in eval_records(workdir))
      if not done:
        queue.append((arch, seed, workdir))

  def run(arch: str, seed: int, workdir: pathlib.Path) -> None:
    pose_dir = pose.result()['workdir'] if needs_pose(arch) else ''
    config, extra = ORACLES.get(arch, (arch, []))
    log(f'training {arch}, seed {seed}, {args.steps} steps')
    overrides = [f'--config.num_train_steps={args.steps}', f'--config.seed={seed}',
                 f'--config.dataset={args.dataset}', f'--config.pose_checkpoint={pose_dir}',
                 f'--config.eval_every_steps={args.eval_every}',
                 f'--config.checkpoint_every_steps={max(args.steps // 4, 1)}',
                 *extra, *args.overrides]
    timings.add(f'{arch}_seed{seed}', train(f'configs/{config}.py{_variant(args)}', workdir,
                                            overrides, out / f'{arch}_seed{seed}.log'))

  futures = [pool.submit(run, *job) for job in sorted(queue, key=lambda j: needs_pose(j[0]))]
  concurrent.futures.wait(futures)  # a failed run stops none of the others...
  for future in futures:
    future.result()  # ...and raises once they have ended
  return runs


def _evaluated_step(stored: pathlib.Path) -> int:
  """The checkpoint step a results.json scored; -1 when there is none."""
  if not stored.exists():
    return -1
  return json.loads(stored.read_text())['provenance'].get('checkpoint_step', -1)


def evaluate_runs(runs: dict, out: pathlib.Path, timings: dict, steps: int) -> dict:
  """{(architecture, seed): eval.py results} on the Table 1 views and Table 3 buckets.

  A run's stored results are reused only when they score its step `steps` checkpoint; a run
  extended to more steps is evaluated again.
  """
  from treemoe_jax.evaluate import evaluator as evaluate  # pylint: disable=g-import-not-at-top (TF)
  results = {}
  for (arch, seed), workdir in runs.items():
    stored = workdir / 'results.json'
    if _evaluated_step(stored) < steps:
      start = time.perf_counter()
      log(f'evaluating {arch}, seed {seed}')
      # Figures (Fig. 5 and 7, an extra top-1 pass) for the pose-gated models; the others' gate
      # statistics for Fig. 6 come with every evaluation.
      evaluate.evaluate_workdir(workdir, PROTOCOLS, figures=arch.startswith('pose_'))
      timings[f'eval_{arch}_seed{seed}'] = time.perf_counter() - start
    results[(arch, seed)] = json.loads(stored.read_text())
  return results


def ert_peer(out: pathlib.Path, args, timings: dict) -> dict:
  """{'ert': {column: NME}, 'mean_shape': {...}}: dlib's ERT on the same train crops."""
  stored = out / 'ert.json'
  if stored.exists():
    table = json.loads(stored.read_text())
    timings.setdefault('ert_train', table['train_seconds'])
    return table
  from experiments import ert_peer as peer  # pylint: disable=g-import-not-at-top (dlib, TF)
  from treemoe_jax import metrics  # pylint: disable=g-import-not-at-top
  from treemoe_jax.evaluate import protocols  # pylint: disable=g-import-not-at-top
  log(f'ERT: training dlib.train_shape_predictor on the train crops of {args.dataset}')
  images, landmarks = peer.crops(args.dataset, 'train', None)
  start = time.perf_counter()
  predictor = peer.train(images, landmarks, args.threads)
  timings['ert_train'] = time.perf_counter() - start
  mean_shape = landmarks.mean(0)
  table = {'ert': {}, 'mean_shape': {}, 'train_faces': len(images),
           'train_seconds': timings['ert_train'], 'threads': args.threads}
  for protocol in protocols.parse(PROTOCOLS):
    for subset in protocol.subsets:
      dataset = protocols.resolve_dataset(subset.dataset, args.dataset)
      test_images, truth = peer.crops(dataset, subset.split, None)
      ert = metrics.nme(peer.predict(predictor, test_images), truth, subset.normalizer)
      base = metrics.nme(np.broadcast_to(mean_shape, truth.shape), truth, subset.normalizer)
      table['ert'][subset.name] = float(ert.mean())
      table['mean_shape'][subset.name] = float(base.mean())
  for name in ('ert', 'mean_shape'):
    yaw = [table[name][f'yaw_{lo}_{hi}'] for lo, hi in ((0, 30), (30, 60), (60, 90))]
    table[name]['mean'] = float(np.mean(yaw))
  stored.write_text(json.dumps(table, indent=1))
  return table


# --- What the report computes from the results. ---


def summarise(results: dict, architectures, seeds) -> dict:
  """{arch: {column: (mean, std over seeds)}} in NME %, plus per-stage NME and gate shares."""
  table = {}
  for arch in architectures:
    row = {}
    ran = [s for s in seeds if (arch, s) in results]
    for col in TABLE1_VIEWS + TABLE3_VIEWS:
      values = [100 * column_nme(results[(arch, s)], col) for s in ran]
      row[col] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None)
    first = results[(arch, ran[0])]
    subset = first['protocols']['synthetic_table1']['subsets']['large_pose']
    row['stages'] = [100 * v for v in subset['nme_per_stage']]
    row['gate_share'] = {layer: share_for_mass(g['cumulative_mass_stage0'])
                         for layer, g in subset['gates'].items() if g['num_experts'] > 1}
    table[arch] = row
  return table


# (a, b, why): the differences the paper's claims are about, each on every view.
PAIRED = (('pose_tree_moe', 'baseline', 'the pose gate against the single CNN'),
          ('tree_moe', 'baseline', 'a tree-gated committee against the single regressor'),
          ('tree_moe', 'softmax_moe', 'tree gate against softmax gate'),
          ('pose_tree_moe', 'pose_softmax_moe', 'tree against softmax, pose-gated'),
          ('pose_tree_moe', 'tree_moe', 'gating the CNNs on pose'),
          ('pose_tree_moe_true_pose', 'pose_tree_moe', 'the true pose against the estimated one'))
ALL_VIEWS = TABLE1_VIEWS + TABLE3_VIEWS[:3]


def paired_difference(a: dict, b: dict, view: str) -> tuple[float, float]:
  """Mean and standard error (NME % points) of a - b over the same test faces, face by face.

  Both runs score the same faces in the same order (the test splits are read unshuffled), so
  the per-face difference removes the faces' own difficulty from the comparison.
  """
  diff = 100 * (np.asarray(view_subset(a, view)['errors'], np.float64)
                - np.asarray(view_subset(b, view)['errors'], np.float64))
  return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))


def paired_rows(results: dict, seed: int) -> list[str]:
  """One Markdown row per PAIRED comparison that ran: mean ± s.e. of the per-face difference."""
  rows = []
  for a, b, why in PAIRED:
    if (a, seed) in results and (b, seed) in results:
      cells = []
      for view in ALL_VIEWS:
        mean, error = paired_difference(results[(a, seed)], results[(b, seed)], view)
        mark = '**' if abs(mean) >= 2 * error else ''
        shown = f'{mean:+.2f}'.replace('-0.00', '+0.00')
        cells.append(f'{mark}{shown} ± {error:.2f}{mark}')
      rows.append(f'| {a} - {b} ({why}) | ' + ' | '.join(cells) + ' |')
  return rows


def ert_ratio_rows(table: dict, peer: dict) -> list[str]:
  """Each model's NME over ERT's, per view (< 1: the neural model is more precise)."""
  if not peer['ert']:
    return []
  return [f'| {arch} | ' + ' | '.join(f'{row[v][0] / (100 * peer["ert"][v]):.2f}'
                                       for v in ALL_VIEWS) + ' |' for arch, row in table.items()]


def seed_gain_rows(results: dict, seeds, pairs=PAIRED[:1]) -> list[str]:
  """Per seed, how much lower a's NME is than b's (% of b's), per view; then mean ± std.

  The paired differences test one seed's faces; this is the spread between training seeds.
  """
  rows = []
  for a, b, _ in pairs:
    ran = [s for s in seeds if (a, s) in results and (b, s) in results]
    if len(ran) < 2:
      continue
    gains = np.array([[100 * (1 - column_nme(results[(a, s)], v) / column_nme(results[(b, s)], v))
                       for v in ALL_VIEWS] for s in ran])  # [seed, view]
    rows += [f'| {a} vs {b}, seed {s} | ' + ' | '.join(f'{g:+.1f}' for g in gain) + ' |'
             for s, gain in zip(ran, gains)]
    rows.append(f'| {a} vs {b}, mean ± std over {len(ran)} seeds | ' + ' | '.join(
        f'{m:+.1f} ± {d:.1f}' for m, d in zip(gains.mean(0), gains.std(0, ddof=1))) + ' |')
  return rows


def pose_error_rows(results: dict, seed: int) -> list[str]:
  """The shared estimator's mean absolute error (deg) per view, as the pose-gated runs saw it."""
  for arch in ('pose_tree_moe', 'pose_softmax_moe'):
    if (arch, seed) in results:
      cells = []
      for view in ALL_VIEWS:
        mae = view_subset(results[(arch, seed)], view).get('pose_mae_deg')
        cells.append(' / '.join(f'{mae[k]:.1f}' for k in ('yaw', 'pitch', 'roll')) if mae else '-')
      return ['| yaw / pitch / roll MAE deg | ' + ' | '.join(cells) + ' |']
  return []


def _cell(value: tuple[float, float | None]) -> str:
  mean, std = value
  return f'{mean:.2f}' + (f' ± {std:.2f}' if std is not None else '')


def reading(table: dict, peer: dict) -> list[str]:
  """Plain sentences, each computed from the numbers: what held and what did not."""
  lines = []

  def verdict(ok: bool) -> str:
    return '**held**' if ok else '**did not hold**'

  views = TABLE1_VIEWS + ('yaw_0_30', 'yaw_30_60', 'yaw_60_90')
  if not peer['ert']:
    lines.append('- The ERT peer did not run (`--no_ert`): no comparison with it.')
    beaten = {}
  else:
    beaten = {a: [v for v in views if table[a][v][0] >= peer['ert'][v] * 100] for a in table
              if a in ARCHITECTURES}
  all_beat = not any(beaten.values())
  if peer['ert']:
    lines.append(f'- Every neural architecture beats ERT on every view: {verdict(all_beat)}.' + (
      '' if all_beat else ' Not beaten: ' + '; '.join(
          f'{a} on {", ".join(v)}' for a, v in beaten.items() if v) + '.'))
  pairs = [('tree_moe', 'softmax_moe'), ('pose_tree_moe', 'pose_softmax_moe')]
  for tree, soft in pairs:
    if tree in table and soft in table:
      wins = [v for v in views if table[tree][v][0] < table[soft][v][0]]
      lines.append(f'- Tree gate beats softmax gate ({tree} vs {soft}): {verdict(len(wins) >= 4)};'
                   f' the tree is ahead on {len(wins)} of {len(views)} views '
                   f'({", ".join(wins) or "none"}).')
  if 'pose_tree_moe' in table and 'baseline' in table:
    for view in ('yaw_60_90', 'occluded'):
      ours, base = table['pose_tree_moe'][view][0], table['baseline'][view][0]
      gain = 1 - ours / base
      lines.append(f'- pose_tree_moe ahead of baseline by >= 10% on {view}: {verdict(gain >= 0.10)}'
                   f' ({base:.2f} -> {ours:.2f}, {100 * gain:+.1f}%; the paper: IBUG 8.89 -> 7.50, '
                   '+15.6%, COFW 5.90 -> 5.58, +5.4%).')
  if 'pose_tree_moe_true_pose' in table and 'pose_tree_moe' in table:
    ours, oracle = table['pose_tree_moe'], table['pose_tree_moe_true_pose']
    lines.append('- Gating on the true head pose instead of the estimated one moves pose_tree_moe '
                 'from ' + ', '.join(f'{ours[v][0]:.2f} to {oracle[v][0]:.2f} on {v}'
                                     for v in ('yaw_60_90', 'occluded', 'frontal')) +
                 ': what a perfect pose estimator would be worth here.')
  for layer in ('regression', 'representation'):
    shares = {a: table[a]['gate_share'].get(layer) for a in table if a in ARCHITECTURES}
    tree = [s for a, s in shares.items() if s is not None and 'tree' in a]
    soft = [s for a, s in shares.items() if s is not None and 'softmax' in a]
    if tree and soft:
      lines.append(f'- Tree gates concentrate the {layer} mass on fewer experts than softmax '
                   f'gates: {verdict(max(tree) < min(soft))} (90% of the mass on '
                   f'{", ".join(f"{100 * s:.0f}%" for s in tree)} of the experts for tree gates, '
                   f'{", ".join(f"{100 * s:.0f}%" for s in soft)} for softmax; the paper: 20% vs '
                   '40% of the regressors).')
  return lines


def peer_rows(peer: dict, views) -> list[str]:
  """The mean-shape and ERT rows of a table (those that ran), NME %."""
  labels = {'mean_shape': 'mean shape (no learning)', 'ert': 'dlib ERT (same train crops)'}
  return [f'| {label} | ' + ' | '.join(f'{100 * peer[name][v]:.2f}' for v in views) + ' | |'
          for name, label in labels.items() if peer[name]]


def write_report(path: pathlib.Path, args, table: dict, peer: dict, pose: dict, timings: dict,
                 out: pathlib.Path, results: dict) -> None:
  seeds = ', '.join(map(str, args.seeds))
  lines = [
      '# Reproduction on the embedded benchmark',
      '',
      'Written by `python experiments/reproduce.py ' + ' '.join(sys.argv[1:]) + '` '
      f'({time.strftime("%Y-%m-%d")}; size `{args.size}`, seeds {seeds}, {args.steps} steps per '
      f'architecture, train set `{args.dataset}:train` = {peer["train_faces"]} wide-pose faces). '
      'Every number below comes from that run; rerun the command to reproduce it.',
      '',
      'NME in % of the face box side (`sqrt(w*h)` of the ground-truth box), on the synthetic test '
      'views: *frontal* stands for LFPW/HELEN, *large pose* for IBUG, *occluded* for COFW, the '
      '|yaw| buckets for AFLW2000-3D. The paper trained on 300W (Table 1) and 300W-LP (Table 3); '
      'its numbers are beside ours for their *pattern* (which method wins where), not their '
      'level: the faces differ.',
      '',
      '## Table 1 analogue',
      '',
      '| method | frontal | large pose | occluded | paper: LFPW / HELEN / IBUG / COFW |',
      '|---|---|---|---|---|',
  ]
  lines += peer_rows(peer, TABLE1_VIEWS)
  for arch, row in table.items():
    paper = ' / '.join(f'{v:.2f}' for v in PAPER_TABLE1.get(arch, ()))
    lines.append(f'| {arch} | ' + ' | '.join(_cell(row[v]) for v in TABLE1_VIEWS) + f' | {paper} |')
  lines += ['', '## Table 3 analogue', '',
            '| method | yaw 0-30 | yaw 30-60 | yaw 60-90 | mean | paper (AFLW2000-3D) |',
            '|---|---|---|---|---|---|']
  lines += peer_rows(peer, TABLE3_VIEWS)
  for arch, row in table.items():
    paper = ' / '.join(f'{v:.2f}' for v in PAPER_TABLE3[arch]) if arch in PAPER_TABLE3 else ''
    lines.append(f'| {arch} | ' + ' | '.join(_cell(row[v]) for v in TABLE3_VIEWS) + f' | {paper} |')
  if len(args.seeds) > 1:
    several = [a for a in table if sum((a, s) in results for s in args.seeds) > 1]
    lines += ['', f'Mean ± standard deviation over seeds {seeds} for {", ".join(several)}; the '
              f'other rows ran seed {args.seeds[0]} only.']
  header = ' | '.join(v.replace('_', ' ') for v in ALL_VIEWS)
  ratios = ert_ratio_rows(table, peer)
  if ratios:
    lines += ['', '## Against the classic peer', '',
              "Each model's NME divided by ERT's on the same view (below 1: the neural model is "
              'more precise).', '', f'| method | {header} |', '|---|' + '---|' * len(ALL_VIEWS),
              *ratios]
  seed = args.seeds[0]
  lines += ['', f'## Paired differences (seed {seed})', '',
            'NME % points, a - b, mean ± standard error of the per-face difference over the same '
            'test faces (negative: a is better); in bold where the mean is at least two standard '
            'errors from zero.', '', f'| a - b | {header} |', '|---|' + '---|' * len(ALL_VIEWS),
            *paired_rows(results, seed)]
  gains = seed_gain_rows(results, args.seeds)
  if gains:
    lines += ['', '## Across training seeds', '',
              "How much lower a's NME is than b's, in % of b's, per seed (positive: a is better), "
              'then the mean and standard deviation over seeds.', '', f'| a vs b | {header} |',
              '|---|' + '---|' * len(ALL_VIEWS), *gains]
  pose_rows = pose_error_rows(results, seed)
  if pose_rows:
    lines += ['', '## The estimated head pose the gates read, per view', '',
              'Mean absolute error of the shared estimator on each test view (as the pose-gated '
              'runs read it).', '', f'| | {header} |', '|---|' + '---|' * len(ALL_VIEWS),
              *pose_rows]
  notes = path.parent / 'reproduction_notes.md'  # the why, in words, kept beside the figures
  lines += ['', '## What held', '', *reading(table, peer), '',
            *([notes.read_text().strip(), ''] if notes.exists() else []),
            '## Learning curves', '',
            'NME of the last stage on the wide test split (1000 faces) during training, first '
            'seed.', '', '![learning curves](figures/reproduction_curves.png)', '',
            '## Per-stage NME (large pose view, first seed)', '',
            '| method | ' + ' | '.join(f'stage {k + 1}' for k in range(
                len(next(iter(table.values()))['stages']))) + ' |',
            '|---|' + '---|' * len(next(iter(table.values()))['stages'])]
  for arch, row in table.items():
    lines.append(f'| {arch} | ' + ' | '.join(f'{v:.2f}' for v in row['stages']) + ' |')
  lines += ['', '## Fig. 6 analogue: how concentrated the gates are', '',
            'Share of the experts that holds 90% of the first stage\'s gate mass (faces of the '
            'large-pose view; the paper: tree 20%, softmax 40% of the 64 regressors).', '',
            '| method | regression gate | representation gate |', '|---|---|---|']
  for arch, row in table.items():
    share = row['gate_share']
    lines.append(f'| {arch} | ' + ' | '.join(
        f'{100 * share[k]:.0f}%' if k in share else '-' for k in ('regression', 'representation'))
        + ' |')
  lines += ['', '![Fig. 6 analogue](figures/reproduction_fig6_gate_mass.png)', '',
            '## Fig. 5 analogue', '',
            'Test faces placed by their estimated head pose, coloured by the first-stage '
            'representation expert with the largest gate weight (pose_tree_moe, first seed).', '',
            '![Fig. 5 analogue](figures/reproduction_fig5_pose_space.png)', '']
  if pose['curve']:
    lines += ['## The shared head-pose estimator', '',
              f'Trained for {pose["steps"]} steps with {_pose_schedule(args)} '
              f'(configs/pose_resnet50.py); mean absolute error on the test split. Its last '
              f'{args.pose_check} steps made it {100 * pose["last_gain"]:.1f}% better: '
              + ('it had stopped falling.' if pose['last_gain'] < args.pose_tol else
                 f'more than {100 * args.pose_tol:.0f}%, so it was **still falling**.'), '',
              '| step | yaw MAE deg | pitch | roll |', '|---|---|---|---|']
    lines += [f'| {c["step"]} | {c["yaw"]:.2f} | {c["pitch"]:.2f} | {c["roll"]:.2f} |'
              for c in pose['curve']] + ['']
  lines += ['## Wall times', '', '| job | minutes |', '|---|---|']
  for job, seconds in timings.items():
    lines.append(f'| {job} | {seconds / 60:.1f} |')
  lines.append(f'| **total** | {sum(timings.values()) / 60:.1f} |')
  overlap = (f' Up to {args.jobs} trainings ran at a time (`--jobs`), so the rows overlap and '
             'the total is more than the wall time.' if args.jobs > 1 else '')
  lines += ['', f'Machine: {os.cpu_count()} CPU cores; workdirs under `{out}`.{overlap}', '']
  path.write_text('\n'.join(lines))


def curves_figure(runs: dict, seed: int, path: pathlib.Path) -> None:
  """Test-split NME against training steps for every run of `seed`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for (arch, s), workdir in runs.items():
    if s != seed:
      continue
    points = [(r['step'], 100 * r[max(k for k in r if k.startswith('eval/nme/stage'))])
              for r in eval_records(workdir)]
    ax.plot(*zip(*points), marker='o', label=arch)
  ax.set_xlabel('training step (batch 16)')
  ax.set_ylabel('NME % (box), wide test split')
  ax.set_title(f'Learning curves, seed {seed}')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def gate_figure(results: dict, architectures, seed: int, path: pathlib.Path) -> None:
  from treemoe_jax.evaluate import plots  # pylint: disable=g-import-not-at-top
  curves = {}
  for arch in architectures:
    subset = results[(arch, seed)]['protocols']['synthetic_table1']['subsets']['large_pose']
    if arch != 'moe':  # the uniform gate is the dashed line
      curves[arch] = {layer: g['cumulative_mass_stage0'] for layer, g in subset['gates'].items()}
  if not any(len(c) > 1 for layers in curves.values() for c in layers.values()):
    return  # only single-expert layers ran (e.g. --architectures baseline): nothing to rank
  plots.gate_mass(path, curves, title='Fig. 6 analogue: top experts\' share of the gate, stage 1, '
                                      'large-pose view')


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--size', choices=tuple(SIZES), default='small')
  parser.add_argument('--seeds', default='0', help='comma-separated, e.g. 0,1,2')
  parser.add_argument('--architectures', default=','.join(ARCHITECTURES))
  parser.add_argument('--seed_architectures', default=None, help='those trained on the seeds '
                      'after the first (default: all of --architectures)')
  parser.add_argument('--steps', type=int, default=None, help='per architecture (default: the '
                      "config's num_train_steps)")
  parser.add_argument('--eval_every', type=int, default=1000, help='learning-curve points')
  parser.add_argument('--gate_pose_truth', '--oracle', dest='oracle', action='store_true',
                      help="also pose_tree_moe with gate_pose='truth': gated on the true head "
                      'pose (first seed; --oracle: its 0.1 name)')
  parser.add_argument('--pose_steps', type=int, default=12_000)
  parser.add_argument('--pose_check', type=int, default=1000, help='steps between its evals')
  parser.add_argument('--pose_tol', type=float, default=0.05, help='a last check better than '
                      'this fraction: the report says the error was still falling')
  parser.add_argument('--pose_seed', type=int, default=0)
  parser.add_argument('--threads', type=int, default=os.cpu_count(), help='ERT training threads')
  parser.add_argument('--dataset', default=None)
  parser.add_argument('--out', default='/tmp/reproduction')
  parser.add_argument('--doc', default=str(ROOT / 'docs' / 'reproduction.md'))
  parser.add_argument('--no_ert', action='store_true', help='skip the peer (no dlib installed)')
  parser.add_argument('--jobs', type=int, default=None, help='trainings at once (default: 2 at '
                      'the CPU size, where two share 2 cores at 1.4x the throughput of one; 1 at '
                      'full size, one accelerator)')
  parser.add_argument('overrides', nargs='*', help='extra --config.x=y for every train.py run')
  args = parser.parse_args()
  args.seeds = [int(s) for s in args.seeds.split(',')]
  args.architectures = [a for a in args.architectures.split(',') if a]
  args.seed_architectures = (args.architectures if args.seed_architectures is None
                             else [a for a in args.seed_architectures.split(',') if a])
  args.dataset = args.dataset or SIZES[args.size][1]
  args.jobs = args.jobs or (2 if args.size == 'small' else 1)
  if args.steps is None:
    from configs import default  # pylint: disable=g-import-not-at-top
    args.steps = default.get_config('tree_moe', SIZES[args.size][0]).num_train_steps
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  timings = Timings(out / 'timings.json')

  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    if any(needs_pose(a) for a in args.architectures):
      pose_future = pool.submit(train_pose, out, args, timings)
    else:
      pose_future = concurrent.futures.Future()
      pose_future.set_result({'steps': 0, 'curve': [], 'last_gain': float('nan')})
    runs = train_architectures(out, args, pose_future, timings, pool)
    pose = pose_future.result()
  timings.save()
  results = evaluate_runs(runs, out, timings, args.steps)
  timings.save()
  peer = ({'ert': {}, 'mean_shape': {}, 'train_faces': 0} if args.no_ert
          else ert_peer(out, args, timings))
  timings.save()
  names = args.architectures + [n for n in ORACLES if (n, args.seeds[0]) in results]
  table = summarise(results, names, args.seeds)
  doc = pathlib.Path(args.doc)
  figures = doc.parent / 'figures'
  figures.mkdir(parents=True, exist_ok=True)
  gate_figure(results, args.architectures, args.seeds[0], figures /
              'reproduction_fig6_gate_mass.png')
  curves_figure(runs, args.seeds[0], figures / 'reproduction_curves.png')
  fig5 = runs.get(('pose_tree_moe', args.seeds[0]), None)
  if fig5 is not None and (fig5 / 'fig5_pose_space.png').exists():
    shutil.copy(fig5 / 'fig5_pose_space.png', figures / 'reproduction_fig5_pose_space.png')
  write_report(doc, args, table, peer, pose, timings, out, results)
  log(f'wrote {doc}')
  print(doc.read_text())
  return 0


if __name__ == '__main__':
  sys.exit(main())
