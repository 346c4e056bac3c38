"""The reproduction's comparison at the paper's sizes on one GPU, without TensorFlow.

  python experiments/reproduce_gpu.py --out /tmp/repro_gpu            # full size, one GPU
  python experiments/reproduce_gpu.py --out /tmp/r --variant cpu --num_train 256 \
      --num_per_view 32 --pose_seconds 20 --budget_seconds 240          # a CPU smoke test

`experiments/reproduce.py` trains through train.py and tf.data; machines lent without TensorFlow
(this project's GPU sessions) run this instead, on *the same faces*: the train split and the six
test views of `synthetic_faces/default`, rendered by `input_pipeline.synthetic_splits` (the
builder's own seeds and view predicates; each split's digest is checked against
docs/data/synthetic_default_digests.json, written from the stored dataset by `--write_digests`).
Faces are cropped on the device as the pipeline crops them (`treemoe_jax.crop`), and every run
trains through the package's one loop (`trainer.train_and_evaluate` on `train.data.ArrayData`).

Order of work: the shared head-pose estimator (ResNet-50) alone for `--pose_seconds`; then the
six architectures at once, each in its own process (the GPU is far from busy with one full-size
model at batch 64), for at most `--max_steps`, all stopping at one deadline (`--budget_seconds`
after the start, less the time the evaluation needs), then evaluated on the views.
The report puts the mean shape and dlib's ERT trained on the same faces (`--ert`, from the
CPU reproduction) beside them. Simplified against train.py: no face-box jitter or flips.

Axis legend: N faces, S crop size, P = 68 landmarks, L regressors.
"""

import argparse
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # six processes share one GPU

import numpy as np  # pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCHITECTURES = ('baseline', 'moe', 'softmax_moe', 'tree_moe', 'pose_softmax_moe',
                 'pose_tree_moe')
VIEWS = ('frontal', 'large_pose', 'occluded', 'yaw_0_30', 'yaw_30_60', 'yaw_60_90')
DIGESTS = ROOT / 'docs' / 'data' / 'synthetic_default_digests.json'
ERT = ROOT / 'docs' / 'data' / 'reproduction_ert.json'
EVAL_SECONDS = 50  # reserved before --budget_seconds ends for each worker's evaluation
THREAD_VARIABLES = ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')


def log(message: str) -> None:
  print(f'[{time.strftime("%H:%M:%S")}] {message}', flush=True)


def digest(faces: dict) -> dict[str, str]:
  """Order-free sha256 of a split's images and landmarks (TFDS shuffles on writing)."""
  order = np.lexsort(np.asarray(faces['pose']).T)
  return {k: hashlib.sha256(np.ascontiguousarray(np.asarray(faces[k])[order]).tobytes()
                            ).hexdigest()[:16] for k in ('image', 'landmarks')}


def write_digests() -> None:
  """Digests of the stored synthetic_faces/default splits (needs TensorFlow and the dataset)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import input_pipeline.datasets  # pylint: disable=g-import-not-at-top,unused-import
  out = {}
  for split in ('train', *(f'test_{v}' for v in VIEWS)):
    faces = tfds.as_numpy(tfds.load('synthetic_faces/default', split=split, batch_size=-1))
    out[split] = digest({'image': faces['image'][..., 0], 'landmarks': faces['landmarks'],
                         'pose': faces['pose']})
    log(f'{split}: {out[split]}')
  DIGESTS.write_text(json.dumps(out, indent=1) + '\n')


def render(args) -> dict[str, dict]:
  """{split: faces} of synthetic_faces/default (or smaller, for a smoke test), digests checked."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  from input_pipeline import synthetic_splits  # pylint: disable=g-import-not-at-top
  settings = synthetic_splits.SplitSettings(num_train=args.num_train,
                                            num_per_view=args.num_per_view)
  expected = json.loads(DIGESTS.read_text()) if settings == synthetic_splits.DEFAULT else {}
  # One numpy thread per render process: 16 processes x 16 BLAS threads rendered 5x slower.
  saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
  os.environ.update({k: '1' for k in THREAD_VARIABLES})
  faces = {}
  try:
    with multiprocessing.get_context('spawn').Pool(os.cpu_count()) as pool:
      for split in ('train', *(f'test_{v}' for v in VIEWS)):
        faces[split] = synthetic_splits.render_split(settings, split, pool)
        got = digest(faces[split])
        verdict = ('identical to the stored split' if got == expected.get(split) else
                   f'NOT the stored split ({expected.get(split)})' if split in expected else
                   'no stored digest (not the default sizes)')
        log(f'rendered {split}: {len(faces[split]["image"])} faces, digest {got}: {verdict}')
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  return faces


def prepare_faces(args, out: pathlib.Path) -> None:
  from experiments import full_size_gpu  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  faces = render(args)
  arrays = {}
  for split, split_faces in faces.items():
    for key, value in full_size_gpu.prepare(split_faces).items():
      arrays[f'{split}/{key}'] = value
  np.savez(out / 'faces.npz', **arrays)
  log(f'rendered and cropped in {time.perf_counter() - start:.0f} s')


def load_faces(out: pathlib.Path) -> dict[str, dict[str, np.ndarray]]:
  faces = {}
  with np.load(out / 'faces.npz') as data:
    for name in data.files:
      split, key = name.split('/')
      faces.setdefault(split, {})[key] = data[name]
  return faces


def _config(architecture: str, args):
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config(architecture, args.variant)
  with config.unlocked():
    config.batch_size = args.batch
  return config


def _train(config, workdir: pathlib.Path, faces: dict, *, max_steps: int, deadline: float
           ) -> float:
  """`config` through the package's one loop on the cropped train faces, until `max_steps` or
  `deadline`; the wall-clock seconds it took (compile included)."""
  import jax  # pylint: disable=g-import-not-at-top
  from treemoe_jax.train import data as data_lib  # pylint: disable=g-import-not-at-top
  from treemoe_jax.train import trainer  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.num_train_steps = max_steps
    config.log_every_steps = 250
    config.eval_every_steps = config.checkpoint_every_steps = max_steps
  data = data_lib.ArrayData(faces['train'], None, batch_size=config.batch_size, seed=config.seed,
                            translate_std=config.augment.translate_std,
                            scale_std=config.augment.scale_std,
                            process_index=jax.process_index(),
                            process_count=jax.process_count())
  start = time.perf_counter()
  trainer.train_and_evaluate(config, str(workdir), data=data, deadline=deadline)
  return time.perf_counter() - start


def _curve(workdir: pathlib.Path) -> list[tuple[int, float]]:
  """(step, loss) at each log step, from the run's metrics.jsonl."""
  rows = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [(r['step'], r['train/loss']) for r in rows if 'train/loss' in r]


def train_pose(args, out: pathlib.Path) -> None:
  """The shared head-pose estimator (workdir OUT/pose), then its MAE per view."""
  import jax  # pylint: disable=g-import-not-at-top
  from treemoe_jax import runs  # pylint: disable=g-import-not-at-top
  from treemoe_jax.train import tasks  # pylint: disable=g-import-not-at-top
  faces = load_faces(out)
  config = _config('pose_tree_moe', args)
  with config.unlocked():
    config.task = 'pose'
  _train(config, out / 'pose', faces, max_steps=10**7,
         deadline=time.time() + args.pose_seconds)
  variables = runs.load_pose_estimator(out / 'pose')
  task = tasks.pose_task(config)
  mae = {}
  predict = jax.jit(lambda v, images: task.model.apply(v, images, train=False)['pose'])
  for view in VIEWS:
    data = faces[f'test_{view}']
    predicted = np.asarray(predict(variables, data['image']))
    error = np.degrees(np.abs(np.asarray(tasks.wrap_angle(predicted - data['pose']))))
    mae[view] = dict(zip(('yaw', 'pitch', 'roll'), error.mean(0).tolist()))
  (results_dir(args) / 'pose.json').write_text(json.dumps(mae, indent=1))
  log('pose estimator MAE deg per view: ' + '; '.join(
      f'{v} ' + '/'.join(f'{x:.1f}' for x in m.values()) for v, m in mae.items()))


def worker(architecture: str, args, out: pathlib.Path) -> None:
  """One architecture: train until --max_steps or the deadline, evaluate every view."""
  import jax  # pylint: disable=g-import-not-at-top
  from treemoe_jax import metrics  # pylint: disable=g-import-not-at-top
  from treemoe_jax import runs  # pylint: disable=g-import-not-at-top
  from treemoe_jax.evaluate import evaluator  # pylint: disable=g-import-not-at-top
  from treemoe_jax.nn import models  # pylint: disable=g-import-not-at-top
  faces = load_faces(out)
  config = _config(architecture, args)
  if architecture.startswith('pose_'):
    with config.unlocked():
      config.pose_checkpoint = str(out / 'pose')
  workdir = out / architecture
  seconds = _train(config, workdir, faces, max_steps=args.max_steps, deadline=args.deadline)
  run = runs.load_run(workdir)
  log(f'{architecture}: {run.step} steps, {run.step * config.batch_size / max(seconds, 1e-9):.0f} '
      f'img/s over {seconds:.0f} s, compile included')
  apply = jax.jit(models.forward(run.model))
  result = {'architecture': architecture, 'steps': run.step, 'batch': config.batch_size,
            'train_seconds': seconds, 'curve': _curve(workdir), 'nme': {},
            'mean_shape_nme': {}, 'stage_nme': {}}
  regression_gates = []
  for view in VIEWS:
    data = faces[f'test_{view}']
    init = np.broadcast_to(run.mean_shape, data['landmarks'].shape).astype(np.float32)
    rows = apply(run.variables, data['image'], init)  # one shape for every view: one compile
    stages = np.moveaxis(np.asarray(rows['stage_shapes']), 1, 0)  # [K, N, P, 2]
    regression_gates.append(np.asarray(rows['gates_regression'])[:, 0])  # [N, L] first stage
    result['nme'][view] = float(metrics.nme(stages[-1], data['landmarks'], 'box').mean())
    result['mean_shape_nme'][view] = float(metrics.nme(init, data['landmarks'], 'box').mean())
    result['stage_nme'][view] = [float(metrics.nme(s, data['landmarks'], 'box').mean())
                                 for s in stages]
  result['cumulative_gate_mass_stage0'] = evaluator.cumulative_gate_mass(
      np.concatenate(regression_gates)).tolist()
  (results_dir(args) / f'{architecture}.json').write_text(json.dumps(result, indent=1))
  log(f'{architecture}: NME % ' + ' '.join(f'{v} {100 * x:.2f}' for v, x in result['nme'].items()))


def results_dir(args) -> pathlib.Path:
  return pathlib.Path(args.results_dir or args.out)


def report(args) -> str:
  """The Markdown table: mean shape, ERT (same faces, CPU run), the six architectures."""
  from treemoe_jax.evaluate.reports import share_for_mass  # pylint: disable=g-import-not-at-top
  out = results_dir(args)
  results = {a: json.loads((out / f'{a}.json').read_text()) for a in ARCHITECTURES
             if (out / f'{a}.json').exists()}
  rows = []
  if results:
    first = next(iter(results.values()))
    rows.append(('mean shape', first['mean_shape_nme'], ''))
  same_faces = (args.num_train, args.num_per_view) == (4000, 300)  # the ERT's faces
  if same_faces and args.ert and pathlib.Path(args.ert).exists():
    rows.append(('ERT (dlib, same train faces, CPU)', json.loads(
        pathlib.Path(args.ert).read_text())['ert'], ''))
  for arch, r in results.items():
    note = (f'{r["steps"]} steps x {r["batch"]}, {r["train_seconds"]:.0f} s; 90% of gate mass '
            f'on {100 * share_for_mass(r["cumulative_gate_mass_stage0"]):.0f}% of regressors')
    rows.append((arch, r['nme'], note))
  lines = ['| model | ' + ' | '.join(VIEWS) + ' | training |', '|---' * (len(VIEWS) + 2) + '|']
  for name, nme, note in rows:
    lines.append(f'| {name} | ' + ' | '.join(f'{100 * nme[v]:.2f}' for v in VIEWS) +
                 f' | {note} |')
  ert = rows[1][1] if len(rows) > 1 and rows[1][0].startswith('ERT') else None
  if ert:
    lines.append('')
    for arch, r in results.items():
      worse = [v for v in VIEWS if r['nme'][v] >= ert[v]]
      lines.append(f'- {arch} vs ERT: ' + ('ahead on every view' if not worse else
                                           f'behind or level on {", ".join(worse)}') +
                   ' (ratio ' + ', '.join(f'{r["nme"][v] / ert[v]:.2f}' for v in VIEWS) + ')')
  pose = out / 'pose.json'
  if pose.exists():
    lines.append('- head-pose estimator MAE deg (yaw/pitch/roll): ' + '; '.join(
        f'{v} ' + '/'.join(f'{x:.1f}' for x in m.values())
        for v, m in json.loads(pose.read_text()).items()))
  return '\n'.join(lines)


def _spawn(architecture: str, args, out: pathlib.Path) -> subprocess.Popen:
  command = [sys.executable, __file__, '--worker', architecture, '--out', str(out),
             f'--variant={args.variant}', f'--batch={args.batch}',
             f'--max_steps={args.max_steps}', f'--deadline={args.deadline}',
             f'--results_dir={results_dir(args)}']
  logfile = open(out / f'{architecture}.log', 'w')  # pylint: disable=consider-using-with
  path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))
  return subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT,
                          env=os.environ | {'PYTHONPATH': path, 'PYTHONUNBUFFERED': '1'})


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default='/tmp/repro_gpu')
  parser.add_argument('--variant', default='full', help="the configs' size; 'cpu' on a CPU")
  parser.add_argument('--num_train', type=int, default=4000)
  parser.add_argument('--num_per_view', type=int, default=300)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--pose_seconds', type=float, default=45)
  parser.add_argument('--budget_seconds', type=float, default=600,
                      help='wall seconds for everything: training stops EVAL_SECONDS before')
  parser.add_argument('--max_steps', type=int, default=3000)
  parser.add_argument('--ert', default=str(ERT))
  parser.add_argument('--results_dir', default='',
                      help='where the JSON results go (default --out; faces and logs stay there)')
  parser.add_argument('--report_only', action='store_true', help='print the table of --results_dir')
  parser.add_argument('--worker', help=argparse.SUPPRESS)
  parser.add_argument('--deadline', type=float, default=0.0, help=argparse.SUPPRESS)
  parser.add_argument('--write_digests', action='store_true')
  args = parser.parse_args()
  if args.write_digests:
    write_digests()
    return 0
  if args.report_only:
    print(report(args))
    return 0
  out = pathlib.Path(args.out)
  if args.worker:
    worker(args.worker, args, out)
    return 0
  start = time.time()
  out.mkdir(parents=True, exist_ok=True)
  results_dir(args).mkdir(parents=True, exist_ok=True)
  import jax  # pylint: disable=g-import-not-at-top
  log(f'device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}, '
      f'{os.cpu_count()} CPU cores')
  prepare_faces(args, out)
  # The pose estimator first, alone on the device: on the H100, with four architectures
  # compiling and training beside it, its 30 s took 3.7 min and left the pose-gated models no
  # time (docs/reproduction_gpu.md). Then all six at once, for the same wall time.
  train_pose(args, out)
  args.deadline = start + args.budget_seconds - EVAL_SECONDS
  log(f'six architectures until {time.strftime("%H:%M:%S", time.localtime(args.deadline))}, '
      f'then evaluated')
  running, failed = {a: _spawn(a, args, out) for a in ARCHITECTURES}, []
  while running:  # each worker's last lines as it finishes: a cut-off run still shows them
    for arch, process in list(running.items()):
      if process.poll() is not None:
        del running[arch]
        if process.returncode:
          failed.append(arch)
        tail = (out / f'{arch}.log').read_text().splitlines()[-3:]
        print(f'--- {arch} (exit {process.returncode}):\n' + '\n'.join(tail), flush=True)
    time.sleep(1)
  print(report(args), flush=True)
  if failed:
    log(f'failed: {", ".join(failed)}')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
