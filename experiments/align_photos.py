"""The README's photographs: align.py on the two real photos available offline, as a montage.

  python experiments/align_photos.py --workdir WORKDIR [--out docs/figures/align_photos.png]

Writes scikit-image's `astronaut` and matplotlib's `grace_hopper` to a temporary folder, runs
`align.py` on them (the face detector, then the model), and puts each annotated PNG side by side,
cropped to twice its first face's box so that the 68 landmarks can be seen.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_photos(folder: pathlib.Path) -> None:
  import matplotlib.cbook  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  Image.fromarray(skimage.data.astronaut()).save(folder / 'astronaut.png')
  with matplotlib.cbook.get_sample_data('grace_hopper.jpg') as f:
    (folder / 'grace_hopper.jpg').write_bytes(f.read())


def face_view(annotated: pathlib.Path, record: dict, height: int = 420) -> Image.Image:
  """The annotated image cut to twice the first face's box (the whole image if none)."""
  image = Image.open(annotated).convert('RGB')
  if record['faces']:
    x0, y0, x1, y1 = record['faces'][0]['box']
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
    # The PNG may be drawn at another size than the photo: scale the box with it.
    scale = image.width / record['image_size'][0]  # [width, height]
    image = image.crop(tuple(int(round(v * scale)) for v in
                             (cx - half, cy - half, cx + half, cy + half)))
  return image.resize((round(image.width * height / image.height), height))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='a trained (pose-gated) alignment workdir')
  parser.add_argument('--out', default=str(ROOT / 'docs/figures/align_photos.png'))
  parser.add_argument('--routing', default='dense')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    photos, aligned = pathlib.Path(tmp, 'photos'), pathlib.Path(tmp, 'aligned')
    photos.mkdir()
    write_photos(photos)
    subprocess.run([sys.executable, str(ROOT / 'align.py'), '--workdir', args.workdir,
                    str(photos), '--out', str(aligned), '--routing', args.routing,
                    '--no_progress'], check=True, cwd=ROOT)
    views = []
    for name in ('astronaut.png', 'grace_hopper.jpg'):
      record = json.loads((aligned / f'{name}.json').read_text())
      views.append(face_view(aligned / f'{name}.png', record))
      print(name, record['status'], [(f['score'], f['pose_degrees'])
                                     for f in record['faces']])
  montage = Image.new('RGB', (sum(v.width for v in views) + 10 * (len(views) - 1),
                              views[0].height), 'white')
  x = 0
  for view in views:
    montage.paste(view, (x, 0))
    x += view.width + 10
  montage.save(args.out)
  print(f'wrote {args.out} ({np.array(montage).shape[1]} x {montage.height})')


if __name__ == '__main__':
  main()
