"""A trained aligner as a few plain files, small enough to ship inside the package.

  python -m treemoe_jax.bundle --workdir W --out DIR [--dtype bfloat16] [--about TEXT]

`write(workdir, out)` keeps what aligning needs of a trained workdir, without its checkpoints:
  model.json       the run's config, step, `about` (what it was trained on, what it scores),
                   the stored dtype and the sha256 of variables.npz
  mean_shape.npy   s(0) [P, 2] in crop pixels
  variables.npz    every variable by its path ('params/stage0/regression/...'); float leaves in
                   the stored dtype (bfloat16 kept as its uint16 bits: npz has no bfloat16)
  routing_check.json   eval.py's routing comparison, when the run has one
`load(directory)` gives back a `runs.Run` (float32 variables, the model built from the config)
from these files alone: no checkpoint is read, and no TensorFlow imported. The package's own
pretrained model is the bundle in `treemoe_jax/weights/` (`PRETRAINED`), read by
`Aligner.pretrained()`, `align.py` without a model, and `train.py --config.init_from=pretrained`.

Beside `runs.py` (a workdir restored), below `train` and `inference`, which both read bundles.
"""

import argparse
import hashlib
import io
import json
import pathlib
import shutil
import sys

import ml_dtypes
import numpy as np

MODEL_FILE, VARIABLES_FILE, MEAN_SHAPE_FILE = 'model.json', 'variables.npz', 'mean_shape.npy'
CHECK_FILE = 'routing_check.json'  # = routing.CHECK_FILE, copied beside the model
PRETRAINED = pathlib.Path(__file__).resolve().parent / 'weights'
DTYPES = ('float32', 'bfloat16')
FORMAT_VERSION = 1


class BundleError(ValueError):
  """A bundle that is missing, incomplete or damaged; the message is the sentence."""


def flatten(tree: dict, prefix: str = '') -> dict[str, np.ndarray]:
  """{'params': {'a': {'b': x}}} -> {'params/a/b': x}."""
  out = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, dict) or hasattr(value, 'items'):
      out |= flatten(dict(value), f'{path}/')
    else:
      out[path] = np.asarray(value)
  return out


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split('/')
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def _store(value: np.ndarray, dtype: str) -> np.ndarray:
  if dtype == 'bfloat16' and np.issubdtype(value.dtype, np.floating):
    return value.astype(ml_dtypes.bfloat16).view(np.uint16)
  return value


def write(workdir, out, *, dtype: str = 'bfloat16', about: str = '',
          step: int | None = None) -> pathlib.Path:
  """Bundles the newest (or `step`'s) checkpoint of an alignment workdir into `out`."""
  from treemoe_jax import runs  # pylint: disable=g-import-not-at-top (orbax: writing only)
  from treemoe_jax.nn import routing  # pylint: disable=g-import-not-at-top
  if dtype not in DTYPES:
    raise ValueError(f'dtype must be one of {DTYPES}, got {dtype!r}')
  run = runs.load_run(workdir, step)
  if run.model.gate_pose == 'truth':
    raise ValueError(f'{workdir} gates on the true head pose; only estimator-gated models align '
                     'photographs')
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  flat = flatten(run.variables)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **{k: _store(v, dtype) for k, v in flat.items()})
  data = buffer.getvalue()
  (out / VARIABLES_FILE).write_bytes(data)
  np.save(out / MEAN_SHAPE_FILE, np.asarray(run.mean_shape, np.float32))
  check = pathlib.Path(workdir) / routing.CHECK_FILE
  if check.exists():
    shutil.copyfile(check, out / CHECK_FILE)
  elif (out / CHECK_FILE).exists():
    (out / CHECK_FILE).unlink()
  meta = {'format': FORMAT_VERSION, 'dtype': dtype, 'step': run.step, 'about': about,
          'source': str(workdir), 'parameters': int(sum(v.size for v in flat.values())),
          'sha256': hashlib.sha256(data).hexdigest(),
          'config': json.loads(run.config.to_json_best_effort())}
  (out / MODEL_FILE).write_text(json.dumps(meta, indent=1) + '\n')
  return out


def read_meta(directory) -> dict:
  directory = pathlib.Path(directory)
  path = directory / MODEL_FILE
  if not path.exists():
    raise BundleError(f'{directory}: no {MODEL_FILE}: not a model bundle (write one with '
                      'python -m treemoe_jax.bundle --workdir W --out DIR)')
  meta = json.loads(path.read_text())
  if meta.get('format') != FORMAT_VERSION:
    raise BundleError(f'{directory}: bundle format {meta.get("format")!r}, this version reads '
                      f'{FORMAT_VERSION}')
  return meta


def load(directory):
  """The bundle's `runs.Run`: config, model (for inference), float32 variables, step, s(0)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from treemoe_jax import runs  # pylint: disable=g-import-not-at-top
  from treemoe_jax.nn import models  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  meta = read_meta(directory)
  data = (directory / VARIABLES_FILE).read_bytes()
  if hashlib.sha256(data).hexdigest() != meta['sha256']:
    raise BundleError(f'{directory / VARIABLES_FILE}: damaged (its sha256 is not the one '
                      f'{MODEL_FILE} records)')
  with np.load(io.BytesIO(data)) as stored:
    flat = {}
    for key in stored.files:
      value = stored[key]
      if meta['dtype'] == 'bfloat16' and value.dtype == np.uint16:
        value = value.view(ml_dtypes.bfloat16).astype(np.float32)
      flat[key] = value
  config = ml_collections.ConfigDict(runs.canonical(meta['config']))
  return runs.Run(directory, config, models.create(config, inference=True), unflatten(flat),
                  int(meta['step']), np.load(directory / MEAN_SHAPE_FILE))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--workdir', required=True, help='a trained alignment workdir')
  p.add_argument('--out', required=True, help=f'the bundle folder (the package\'s: {PRETRAINED})')
  p.add_argument('--dtype', default='bfloat16', choices=DTYPES)
  p.add_argument('--about', default='', help='what it was trained on and what it scores')
  p.add_argument('--step', type=int, default=None)
  args = p.parse_args(argv)
  out = write(args.workdir, args.out, dtype=args.dtype, about=args.about, step=args.step)
  size = (out / VARIABLES_FILE).stat().st_size
  print(f'{out}: {read_meta(out)["parameters"]:,} parameters, {size / 2**20:.2f} MiB '
        f'({args.dtype})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
