"""Aligns the faces in people's image files and videos with a trained model.

  python align.py --workdir /tmp/ptm photos/ me.jpg --out /tmp/aligned
  python align.py --workdir /tmp/ptm clip.mp4 --out /tmp/aligned --smoothing 1
  python align.py --workdir /tmp/ptm --camera 0 --out /tmp/aligned --max_frames 300
  python align.py --exported /tmp/ptm_export photos/ --out /tmp/aligned --boxes boxes.json
  python align.py --workdir /tmp/ptm photos/ --out /tmp/aligned --detector opencv --routing topk:2

Faces the --boxes file does not give are found by an offline detector (pip install
'treemoe-jax[detect]'; treemoe_jax/detect.py). Writes OUTDIR/<image>.json and .png per image, and
OUTDIR/landmarks.csv and problems.csv. Exit status 0 when the run completes, even if some images
have no face or cannot be read (they are listed); 1 when a video or camera could not be opened;
2 for bad arguments.

A video (`inference.align_video`) follows one face: each frame's box from the previous frame's
landmarks, the detector where tracking is lost (`inference.video`); OUTDIR/<video>.csv has a row
per frame, OUTDIR/<video>.annotated.mp4 the frames drawn.
"""

import argparse
import os
import re
import sys

from input_pipeline import formats
from treemoe_jax.inference import align_files
from treemoe_jax.inference import align_video
from treemoe_jax.inference import detect
from treemoe_jax.inference import photos
from treemoe_jax.inference import video

_ROUTING = re.compile(r'dense|greedy|topk:[1-9][0-9]*')


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='align.py', description=__doc__.splitlines()[0])
  p.add_argument('inputs', nargs='*', metavar='IMAGE_OR_FOLDER',
                 help='image files, and folders whose image files (not subfolders) are aligned')
  model = p.add_mutually_exclusive_group()
  model.add_argument('--workdir', help='a trained alignment workdir (its newest checkpoint); '
                     'default: the pretrained model that ships with the package')
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
  p.add_argument('--passes', type=int, default=2, choices=(1, 2),
                 help='2 (default): align again in the crop around the first landmarks, less '
                 "dependent on the box's framing; 1 when the boxes are the tight boxes of the "
                 'landmarks (docs/align.md, "Two passes")')
  p.add_argument('--batch', type=int, default=8, help='images per aligner call (default: 8)')
  p.add_argument('--max_pixels', type=int, default=formats.DEFAULT_MAX_PIXELS,
                 help='refuse larger images unread (default: %(default)s)')
  p.add_argument('--no_progress', action='store_true', help='no progress bar')
  clips = p.add_argument_group('video', 'video files (.mp4, .mov, .avi, ...) and cameras')
  clips.add_argument('--camera', type=int, default=None, metavar='INDEX',
                     help='align the frames of this camera (0: the first) until --max_frames '
                     'or Ctrl-C')
  clips.add_argument('--no_tracking', action='store_true',
                     help="search every frame with the detector instead of the last frame's "
                     'landmarks')
  clips.add_argument('--smoothing', type=float, default=0.0, metavar='HZ',
                     help="smooth the landmarks over time (the one-euro filter's cut-off when "
                     'the face is still, Hz; 0: off, the default; docs/align.md measures it)')
  clips.add_argument('--smoothing_beta', type=float, default=20.0,
                     help='how much faster the filter follows a moving face (Hz per box side per '
                     'second; 0: a plain moving average; default 20, with --smoothing 1 the '
                     'filter chosen on a rendered clip: half the jitter for 3%% more NME)')
  clips.add_argument('--max_frames', type=int, default=None, help='stop after this many frames')
  return p


def main(argv=None) -> int:
  p = parser()
  args = p.parse_args(argv)
  model = args.workdir or args.exported
  if model is not None and not os.path.isdir(model):
    p.error(f'{"--workdir" if args.workdir else "--exported"} {model}: no such folder')
  if not _ROUTING.fullmatch(args.routing):
    p.error(f'--routing {args.routing!r}: expected dense, greedy or topk:K (K >= 1)')
  if args.batch < 1 or args.max_pixels < 1:
    p.error('--batch and --max_pixels must be >= 1')
  try:
    video.Smoother(args.smoothing, args.smoothing_beta)
  except ValueError as e:
    p.error(f'--smoothing: {e}')
  if args.max_frames is not None and args.max_frames < 1:
    p.error('--max_frames must be >= 1')
  clips = [given for given in args.inputs if video.is_video(given) and os.path.isfile(given)]
  images = [given for given in args.inputs if given not in clips]
  try:
    paths, skipped = photos.list_images(images) if images or not (
        clips or args.camera is not None) else ([], [])
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
  if any(b is None for b in boxes) or clips or args.camera is not None:
    try:
      detector = detect.make(args.detector, min_score=args.min_score)
    except ImportError as e:
      p.error(str(e))
  try:
    aligner = align_files.load_aligner(workdir=args.workdir, exported=args.exported,
                                       routing=args.routing, passes=args.passes)
  except (FileNotFoundError, ValueError) as e:
    p.error(f'{model}: {e}' if model else str(e))
  if aligner.routing_warning:  # on stderr now, and again under the summary: never silent
    print(f'WARNING: {aligner.routing_warning}', file=sys.stderr)
  if paths:
    results = align_files.run(aligner, paths, args.out, boxes=boxes, detector=detector,
                              detector_name=detector.name if detector else '',
                              batch_size=args.batch, max_pixels=args.max_pixels,
                              progress=not args.no_progress)
    print(align_files.summary(results, args.out))
  sources = clips + ([args.camera] if args.camera is not None else [])
  names = photos.output_names([str(c) if isinstance(c, str) else f'camera{c}' for c in sources])
  failed = 0
  for source, name in zip(sources, names):
    try:
      done = align_video.run(aligner, source, args.out, name=name, detector=detector,
                             tracking=not args.no_tracking, smoothing=args.smoothing,
                             smoothing_beta=args.smoothing_beta,
                             max_frames=args.max_frames, progress=not args.no_progress)
    except video.VideoError as e:  # the next video still runs
      print(f'{e}: skipped', file=sys.stderr)
      failed += 1
      continue
    print(align_video.describe(done, args.out))
  if aligner.routing_warning:
    print(f'WARNING: {aligner.routing_warning}')
  return 1 if failed else 0


def run():
  """The console script `treemoe-align`."""
  sys.exit(main())


if __name__ == '__main__':
  run()
