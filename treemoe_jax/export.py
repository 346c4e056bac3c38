"""An exported, servable aligner: the jitted forward serialised with `jax.export`.

`export(workdir, out)` writes, for each routing and bucket size, the forward
`(parameters, images [n, S, S], s(0) [n, P, 2]) -> {shape, stage_shapes, pose?}` as a StableHLO
artifact, plus the parameters, the mean shape and the crop settings. `load(out, routing)` runs it
with nothing but JAX and numpy: no Flax module, no config, no checkpoint library
(`Aligner.from_export` wraps it with the training crop).

Layout of the directory:
  aligner.json                 image size, crop margin, buckets, routings, platforms, source run
  mean_shape.npy               s(0) [P, 2] in crop pixels
  parameters.npz               the variables' leaves in tree order, p0000, p0001, ...
  forward_<routing>_b<n>.jaxexport   one serialised jax.export.Exported each
"""

import dataclasses
import json
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from treemoe_jax import aligner as aligner_lib
from treemoe_jax import routing as routing_lib
from treemoe_jax import xla_options

META_FILE = 'aligner.json'
FORMAT_VERSION = 1


def artifact_name(routing: str, bucket: int) -> str:
  """File name of one artifact: 'topk:4' -> forward_topk4_b8.jaxexport (no ':' on disk)."""
  return f'forward_{str(routing_lib.parse(routing)).replace(":", "")}_b{bucket}.jaxexport'


def export(workdir: str | pathlib.Path, out: str | pathlib.Path, *,
           routings: Sequence[str] = ('dense',),
           buckets: Sequence[int] = aligner_lib.DEFAULT_BUCKETS,
           platforms: Sequence[str] | None = None, step: int | None = None) -> pathlib.Path:
  """Serialise a trained workdir's forward; `platforms` e.g. ('cpu', 'cuda') (default: this one)."""
  from treemoe_jax import evaluate  # pylint: disable=g-import-not-at-top
  run = evaluate.load_run(workdir, step)
  if run.model.gate_pose == 'truth':
    raise ValueError(f'{workdir} gates on the true head pose; only estimator-gated models export')
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  leaves, treedef = jax.tree.flatten(run.variables)
  size, points = run.config.model.image_size, run.mean_shape.shape[0]
  leaf_specs = [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) for x in leaves]
  for routing in routings:
    forward = aligner_lib.model_forward(run.model, routing)
    flat = jax.jit(lambda params, images, init: forward(
        jax.tree.unflatten(treedef, params), images, init))
    for bucket in buckets:
      exported = jax.export.export(flat, platforms=platforms)(
          leaf_specs, jax.ShapeDtypeStruct((bucket, size, size), jnp.float32),
          jax.ShapeDtypeStruct((bucket, points, 2), jnp.float32))
      (out / artifact_name(routing, bucket)).write_bytes(exported.serialize())
  np.savez(out / 'parameters.npz', **{f'p{i:04d}': np.asarray(x) for i, x in enumerate(leaves)})
  np.save(out / 'mean_shape.npy', run.mean_shape)
  meta = {'format_version': FORMAT_VERSION, 'image_size': size,
          'margin': float(run.config.crop_margin), 'num_landmarks': points,
          'buckets': sorted(int(b) for b in buckets),
          'routings': [str(routing_lib.parse(r)) for r in routings],
          'platforms': list(platforms) if platforms else [jax.default_backend()],
          'architecture': run.config.model.architecture, 'workdir': str(workdir),
          'runs_pose_estimator': run.model.pose_estimator is not None,
          'step': run.step}
  (out / META_FILE).write_text(json.dumps(meta, indent=1))
  return out


@dataclasses.dataclass(frozen=True)
class Loaded:
  """What `Aligner` needs of an export: the forward (any bucket size it holds) and the crop."""
  forward: Callable[[np.ndarray, np.ndarray], dict]
  mean_shape: np.ndarray
  image_size: int
  margin: float
  buckets: tuple[int, ...]


def load(directory: str | pathlib.Path, routing: str = 'dense') -> Loaded:
  """The exported forward of `routing`; FileNotFoundError/ValueError say what is missing."""
  directory = pathlib.Path(directory)
  meta_path = directory / META_FILE
  if not meta_path.exists():
    raise FileNotFoundError(f'{meta_path} not found: is {directory} a treemoe_jax export?')
  meta = json.loads(meta_path.read_text())
  if meta.get('format_version') != FORMAT_VERSION:
    raise ValueError(f'{directory} has export format {meta.get("format_version")}, this reads '
                     f'{FORMAT_VERSION}')
  routing = str(routing_lib.parse(routing))
  if routing not in meta['routings']:
    raise ValueError(f'{directory} holds routings {meta["routings"]}, not {routing!r}: export it '
                     'with --routings')
  with np.load(directory / 'parameters.npz') as npz:
    params = [jnp.asarray(npz[f'p{i:04d}']) for i in range(len(npz.files))]
  # Exports older than the key: True, the setting never measured slower than XLA's defaults.
  options = xla_options.inference_options(meta.get('runs_pose_estimator', True))
  exported = {b: jax.jit(jax.export.deserialize(bytearray(
      (directory / artifact_name(routing, b)).read_bytes())).call, compiler_options=options)
              for b in meta['buckets']}

  def forward(images: np.ndarray, init_shape: np.ndarray) -> dict:
    if images.shape[0] not in exported:
      raise ValueError(f'{images.shape[0]} faces: the export holds buckets {meta["buckets"]}')
    return exported[images.shape[0]](params, images, init_shape)

  return Loaded(forward, np.load(directory / 'mean_shape.npy'), int(meta['image_size']),
                float(meta['margin']), tuple(meta['buckets']))


def main(argv: Sequence[str] | None = None) -> None:
  """python -m treemoe_jax.export --workdir DIR --out EXPORT [--routings dense,greedy] ..."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description='Serialise a trained aligner with jax.export.')
  parser.add_argument('--workdir', required=True, help='a trained alignment workdir')
  parser.add_argument('--out', required=True, help='the export folder (created)')
  parser.add_argument('--routings', default='dense',
                      help='comma-separated, e.g. dense,topk:4,greedy')
  parser.add_argument('--buckets', default=','.join(map(str, aligner_lib.DEFAULT_BUCKETS)),
                      help='comma-separated face counts per call, e.g. 1,8,32')
  parser.add_argument('--platforms', default=None, help='e.g. cpu,cuda (default: this machine)')
  args = parser.parse_args(argv)
  try:
    routings = [str(routing_lib.parse(r)) for r in args.routings.split(',')]
    buckets = [int(b) for b in args.buckets.split(',')]
    if min(buckets) < 1:
      raise ValueError(f'--buckets must be positive face counts, got {args.buckets}')
  except ValueError as e:
    parser.error(str(e))
  if not pathlib.Path(args.workdir).is_dir():
    parser.error(f'--workdir {args.workdir}: no such folder')
  out = export(args.workdir, args.out, routings=routings, buckets=buckets,
               platforms=args.platforms.split(',') if args.platforms else None)
  print(f'exported {len(routings)} routing(s) x {len(buckets)} bucket(s) to {out}')


if __name__ == '__main__':
  main()
