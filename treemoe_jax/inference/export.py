"""An exported, servable aligner: the whole image forward serialised with `jax.export`.

`export(workdir, out)` writes, for each routing and bucket size n, the forward
`(parameters, image uint8 [H, W, C], channel weights float32 [C], image_hw int32 [2], boxes
float32 [n, 4]) -> {landmarks [n, P, 2], stage_landmarks [n, K, P, 2], pose [n, 3]?}`
(`inference.forward`: the face crop, the model, the map back to the image's pixels) as a
StableHLO artifact, H, W and C symbolic, so it takes a photograph of any size, grey (weights [1])
or RGB (weights `crop.RGB_TO_GRAY`), and its face boxes; image_hw is (H, W) unless the image is
zero-padded beyond its true size. `load(out, routing)` runs it with nothing but JAX and
numpy: no Flax module, no config, no checkpoint library, no TensorFlow.

Layout of the directory:
  aligner.json                 image size, crop margin, buckets, routings, platforms, source run
  mean_shape.npy               s(0) [P, 2] in crop pixels (also inside the artifacts)
  parameters.npz               the variables' leaves in tree order, p0000, p0001, ...
  align_<routing>_b<n>.jaxexport   one serialised jax.export.Exported each
"""

import dataclasses
import functools
import json
import pathlib
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from treemoe_jax import crop
from treemoe_jax import xla_options
from treemoe_jax.inference import forward as forward_lib
from treemoe_jax.nn import routing as routing_lib

META_FILE = 'aligner.json'
FORMAT_VERSION = 2  # 1: crop-level artifacts, cropped by TensorFlow outside


def artifact_name(routing: str, bucket: int) -> str:
  """File name of one artifact: 'topk:4' -> align_topk4_b8.jaxexport (no ':' on disk)."""
  return f'align_{str(routing_lib.parse(routing)).replace(":", "")}_b{bucket}.jaxexport'


def export(workdir: str | pathlib.Path, out: str | pathlib.Path, *,
           routings: Sequence[str] = ('dense',),
           buckets: Sequence[int] = forward_lib.DEFAULT_BUCKETS,
           platforms: Sequence[str] | None = None, step: int | None = None) -> pathlib.Path:
  """Serialise a trained workdir's forward; `platforms` e.g. ('cpu', 'cuda') (default: this one)."""
  from treemoe_jax import runs  # pylint: disable=g-import-not-at-top (Flax, orbax: export only)
  from treemoe_jax.nn import models  # pylint: disable=g-import-not-at-top
  run = runs.load_run(workdir, step)
  if run.model.gate_pose == 'truth':
    raise ValueError(f'{workdir} gates on the true head pose; only estimator-gated models export')
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  leaves, treedef = jax.tree.flatten(run.variables)
  size, margin = run.config.model.image_size, float(run.config.crop_margin)
  leaf_specs = [jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype) for x in leaves]
  height, width, channels = jax.export.symbolic_shape('h, w, c')
  image_spec = jax.ShapeDtypeStruct((height, width, channels), jnp.uint8)
  weights_spec = jax.ShapeDtypeStruct((channels,), jnp.float32)
  hw_spec = jax.ShapeDtypeStruct((2,), jnp.int32)
  for routing in routings:
    apply = models.forward(run.model, routing=routing)

    def whole(params, image, weights, image_hw, boxes, apply=apply):
      variables = jax.tree.unflatten(treedef, params)
      return forward_lib.image_forward(functools.partial(apply, variables),
                                       mean_shape=run.mean_shape, image_size=size,
                                       margin=margin)(image, image_hw, boxes, weights)

    for bucket in buckets:
      exported = jax.export.export(jax.jit(whole), platforms=platforms)(
          leaf_specs, image_spec, weights_spec, hw_spec,
          jax.ShapeDtypeStruct((bucket, 4), jnp.float32))
      (out / artifact_name(routing, bucket)).write_bytes(exported.serialize())
  np.savez(out / 'parameters.npz', **{f'p{i:04d}': np.asarray(x) for i, x in enumerate(leaves)})
  np.save(out / 'mean_shape.npy', run.mean_shape)
  meta = {'format_version': FORMAT_VERSION, 'image_size': size, 'margin': margin,
          'num_landmarks': int(run.mean_shape.shape[0]),
          'buckets': sorted(int(b) for b in buckets),
          'routings': [str(routing_lib.parse(r)) for r in routings],
          'platforms': list(platforms) if platforms else [jax.default_backend()],
          'architecture': run.config.model.architecture, 'workdir': str(workdir),
          'runs_pose_estimator': run.model.pose_estimator is not None,
          'step': run.step,
          # What eval.py measured of the routings against dense (routing.warning_for), if it ran.
          'routing_check': _routing_check(pathlib.Path(workdir))}
  (out / META_FILE).write_text(json.dumps(meta, indent=1))
  return out


def _routing_check(workdir: pathlib.Path) -> dict | None:
  path = workdir / routing_lib.CHECK_FILE
  return json.loads(path.read_text()) if path.exists() else None


@dataclasses.dataclass(frozen=True)
class Loaded:
  """What `Aligner` needs of an export: the image forward (any bucket it holds) and the crop."""
  forward: Callable[[np.ndarray, np.ndarray, np.ndarray], dict]
  mean_shape: np.ndarray
  image_size: int
  margin: float
  buckets: tuple[int, ...]
  routing_warning: str | None = None  # routing.warning_for the exported routing


def load(directory: str | pathlib.Path, routing: str = 'dense') -> Loaded:
  """The exported forward of `routing`; FileNotFoundError/ValueError say what is missing."""
  directory = pathlib.Path(directory)
  meta_path = directory / META_FILE
  if not meta_path.exists():
    raise FileNotFoundError(f'{meta_path} not found: is {directory} a treemoe_jax export?')
  meta = json.loads(meta_path.read_text())
  if meta.get('format_version') != FORMAT_VERSION:
    raise ValueError(f'{directory} has export format {meta.get("format_version")}, this reads '
                     f'{FORMAT_VERSION}: export the workdir again')
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

  weights = {c: crop.channel_weights(c) for c in (1, 3)}  # made once, not per call

  def forward(image: np.ndarray, image_hw: np.ndarray, boxes: np.ndarray) -> dict:
    if boxes.shape[0] not in exported:
      raise ValueError(f'{boxes.shape[0]} faces: the export holds buckets {meta["buckets"]}')
    if image.shape[-1] not in weights:
      raise ValueError(f'images must have 1 or 3 channels, got shape {image.shape}')
    return exported[boxes.shape[0]](params, image, weights[image.shape[-1]], image_hw, boxes)

  return Loaded(forward, np.load(directory / 'mean_shape.npy'), int(meta['image_size']),
                float(meta['margin']), tuple(meta['buckets']),
                routing_lib.warning_for(meta.get('routing_check'), routing, meta.get('step'),
                                        where=f'the export {directory}'))


def main(argv: Sequence[str] | None = None) -> None:
  """treemoe-export --workdir DIR --out EXPORT [--routings dense,greedy] ... (or python -m
  treemoe_jax.inference.export)."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description='Serialise a trained aligner with jax.export.')
  parser.add_argument('--workdir', required=True, help='a trained alignment workdir')
  parser.add_argument('--out', required=True, help='the export folder (created)')
  parser.add_argument('--routings', default='dense',
                      help='comma-separated, e.g. dense,topk:4,greedy')
  parser.add_argument('--buckets', default=','.join(map(str, forward_lib.DEFAULT_BUCKETS)),
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
