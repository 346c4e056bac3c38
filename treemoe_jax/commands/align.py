"""Aligns the faces in people's image files with a trained model (`inference.align_files`).

  python align.py --workdir /tmp/ptm photos/ me.jpg --out /tmp/aligned
  python align.py --exported /tmp/ptm_export photos/ --out /tmp/aligned --boxes boxes.json
  python align.py --workdir /tmp/ptm photos/ --out /tmp/aligned --detector opencv --routing topk:2

Faces the --boxes file does not give are found by an offline detector (pip install
'treemoe-jax[detect]'; treemoe_jax/detect.py). Writes OUTDIR/<image>.json and .png per image, and
OUTDIR/landmarks.csv and problems.csv. Exit status 0 when the run completes, even if some images
have no face or cannot be read (they are listed); 2 for bad arguments.
"""

import argparse
import os
import re
import sys

from input_pipeline import formats
from treemoe_jax.inference import align_files
from treemoe_jax.inference import detect
from treemoe_jax.inference import photos

_ROUTING = re.compile(r'dense|greedy|topk:[1-9][0-9]*')


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='align.py', description=__doc__.splitlines()[0])
  p.add_argument('inputs', nargs='*', metavar='IMAGE_OR_FOLDER',
                 help='image files, and folders whose image files (not subfolders) are aligned')
  model = p.add_mutually_exclusive_group()
  model.add_argument('--workdir', help='a trained alignment workdir (its newest checkpoint)')
  model.add_argument('--exported', help='a treemoe_jax.export directory, instead of --workdir')
  p.add_argument('--out', required=True, help='output folder (created)')
  p.add_argument('--boxes', help='face boxes: JSON {"file name": [[x0, y0, x1, y1], ...]} or CSV '
                 'file,x0,y0,x1,y1; images it does not name go to the detector')
  p.add_argument('--routing', default='dense', help='dense, topk:K or greedy (default: dense)')
  p.add_argument('--detector', default='auto', choices=('auto', *detect.NAMES),
                 help='face detector for images without boxes (auto: dlib, else opencv)')
  p.add_argument('--min_score', type=float, default=None,
                 help='drop detections scoring below this (default: the detector\'s, '
                 'treemoe_jax/detect.py DEFAULT_MIN_SCORE)')
  p.add_argument('--batch', type=int, default=8, help='images per aligner call (default: 8)')
  p.add_argument('--max_pixels', type=int, default=formats.DEFAULT_MAX_PIXELS,
                 help='refuse larger images unread (default: %(default)s)')
  p.add_argument('--no_progress', action='store_true', help='no progress bar')
  return p


def main(argv=None) -> int:
  p = parser()
  args = p.parse_args(argv)
  model = args.workdir or args.exported
  if model is None:
    p.error('give the model: --workdir DIR (trained) or --exported DIR')
  if not os.path.isdir(model):
    p.error(f'{"--workdir" if args.workdir else "--exported"} {model}: no such folder')
  if not _ROUTING.fullmatch(args.routing):
    p.error(f'--routing {args.routing!r}: expected dense, greedy or topk:K (K >= 1)')
  if args.batch < 1 or args.max_pixels < 1:
    p.error('--batch and --max_pixels must be >= 1')
  try:
    paths, skipped = photos.list_images(args.inputs)
    given = photos.read_boxes(args.boxes) if args.boxes else {}
  except (photos.InputError, photos.BoxesError) as e:
    p.error(str(e))
  if skipped:  # not silent: a folder's file with another extension may be a face
    shown = ', '.join(photos.printable(path.name) for path in skipped[:5])
    print(f'note: {len(skipped)} file(s) in the folders skipped, not images by their extension or '
          f'hidden: {shown}{" ..." if len(skipped) > 5 else ""} (name a file to read it anyway)',
          file=sys.stderr)
  boxes, unmatched = photos.match_boxes(given, paths)
  if unmatched:
    print(f'note: {args.boxes} has boxes for {len(unmatched)} file(s) not among the inputs: '
          f'{", ".join(map(photos.printable, unmatched[:5]))}{" ..." if len(unmatched) > 5 else ""}', file=sys.stderr)
  detector = None
  if any(b is None for b in boxes):
    try:
      detector = detect.make(args.detector, min_score=args.min_score)
    except ImportError as e:
      p.error(str(e))
  try:
    aligner = align_files.load_aligner(workdir=args.workdir, exported=args.exported,
                                       routing=args.routing)
  except (FileNotFoundError, ValueError) as e:
    p.error(f'{model}: {e}')
  if aligner.routing_warning:  # on stderr now, and again under the summary: never silent
    print(f'WARNING: {aligner.routing_warning}', file=sys.stderr)
  results = align_files.run(aligner, paths, args.out, boxes=boxes, detector=detector,
                            detector_name=detector.name if detector else '',
                            batch_size=args.batch, max_pixels=args.max_pixels,
                            progress=not args.no_progress)
  print(align_files.summary(results, args.out))
  if aligner.routing_warning:
    print(f'WARNING: {aligner.routing_warning}')
  return 0


def run():
  """The console script `treemoe-align`."""
  sys.exit(main())


if __name__ == '__main__':
  run()
