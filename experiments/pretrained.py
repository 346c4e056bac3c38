"""Trains the package's pretrained model on rendered faces only and bundles it into
treemoe_jax/weights/ (what `Aligner.pretrained()` and `align.py` without a model read).

  pip install -e '.[train]'
  python experiments/pretrained.py --workdir /tmp/pretrained          # trains, then bundles
  python experiments/pretrained.py --workdir RUN --trained            # bundles a finished run

The model: `configs/pose_tree_moe.py:reproduction_64` (the reproduction's size: 3 stages, 64
regressors, its pose estimator trained first), seed 0, on the 6000 rendered faces of
`synthetic_faces/default`; about an hour on 2 CPU cores. Then, on the first `--faces` faces of
each rendered validation view, aligned from their true boxes with one pass (as eval.py crops),
the bundle in float32 and in bfloat16: bfloat16 ships when its mean NME is within 1% (relative)
of float32's on every view, float32 otherwise. The bundle's model.json says what it was trained
on and what it scored.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = 'configs/pose_tree_moe.py:reproduction_64'
VIEWS = ('validation_frontal', 'validation_large_pose', 'validation_occluded')
BF16_SLACK = 1.01


def view_faces(view: str, count: int, data_dir=None):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import input_pipeline.datasets  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
  from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top
  builder = pipeline.get_builder('synthetic_faces/default', data_dir=data_dir)
  faces = list(tfds.as_numpy(builder.as_dataset(split=f'{view}[:{count}]')))
  return ([f['image'] for f in faces], np.stack([f['landmarks'] for f in faces]),
          [f['box'] for f in faces])


def view_nme(bundle_dir, faces, mean_shape_only: bool = False) -> dict[str, float]:
  """Mean NME per view of the bundle's model, or of its s(0) alone (placed in the same crop)."""
  from treemoe_jax import metrics  # pylint: disable=g-import-not-at-top
  from treemoe_jax.inference import aligner  # pylint: disable=g-import-not-at-top
  model = aligner.Aligner.from_bundle(bundle_dir, passes=1)
  if mean_shape_only:
    model = aligner.Aligner(lambda images, init: {'shape': init, 'stage_shapes': init[:, None]},
                            mean_shape=model.mean_shape, image_size=model.image_size,
                            margin=model.margin, passes=1)
  out = {}
  for view, (images, landmarks, boxes) in faces.items():
    pred = np.stack([f[0].landmarks for f in model.align_batch(images, [[b] for b in boxes])])
    out[view] = float(metrics.nme(pred, landmarks, 'box').mean())
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--trained', action='store_true', help='the workdir is trained: bundle only')
  p.add_argument('--faces', type=int, default=300, help='per validation view')
  p.add_argument('--out', default=None, help='default: treemoe_jax/weights')
  args = p.parse_args(argv)
  from treemoe_jax import bundle  # pylint: disable=g-import-not-at-top
  from treemoe_jax import runs  # pylint: disable=g-import-not-at-top
  if not args.trained:
    subprocess.run([sys.executable, str(ROOT / 'train.py'), '--config', str(ROOT / CONFIG),
                    '--workdir', args.workdir], check=True, cwd=ROOT)
  config = runs.load_config(args.workdir)
  if config.model.architecture != 'pose_tree_moe' or config.dataset != 'synthetic_faces/default':
    raise SystemExit(f'{args.workdir} is not a {CONFIG} run on synthetic_faces/default')
  faces = {view: view_faces(view, args.faces) for view in VIEWS}
  scratch = pathlib.Path(tempfile.mkdtemp())
  scores = {}
  for dtype in bundle.DTYPES:
    bundle.write(args.workdir, scratch / dtype, dtype=dtype)
    scores[dtype] = view_nme(scratch / dtype, faces)
    print(dtype, {v: f'{100 * e:.3f}%' for v, e in scores[dtype].items()}, flush=True)
  mean_shape = view_nme(scratch / 'float32', faces, mean_shape_only=True)
  print('mean shape', {v: f'{100 * e:.3f}%' for v, e in mean_shape.items()}, flush=True)
  keep = all(scores['bfloat16'][v] <= BF16_SLACK * scores['float32'][v] for v in VIEWS)
  dtype = 'bfloat16' if keep else 'float32'
  nme = ', '.join(f'{v.removeprefix("validation_")} {100 * e:.2f}%'
                  for v, e in scores[dtype].items())
  about = (f'{config.model.architecture}, {CONFIG.split(":")[1]} size, seed {config.seed}, '
           f'{config.num_train_steps} steps, trained only on the rendered faces of '
           f'{config.dataset} (never a real face). Box-normalised NME on the first {args.faces} '
           f'faces of each rendered validation view, true boxes, one pass: {nme}.')
  out = pathlib.Path(args.out) if args.out else bundle.PRETRAINED
  bundle.write(args.workdir, out, dtype=dtype, about=about)
  meta = bundle.read_meta(out)
  meta['validation_nme'] = {'faces_per_view': args.faces, 'float32': scores['float32'],
                            'bfloat16': scores['bfloat16'], 'shipped': dtype,
                            'mean_shape': mean_shape}
  (out / bundle.MODEL_FILE).write_text(json.dumps(meta, indent=1) + '\n')
  size = sum(f.stat().st_size for f in out.iterdir())
  print(f'{out}: {dtype}, {size / 2**20:.2f} MiB\n{about}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
