"""Aligning people's own photographs, without TensorFlow.

  aligner      `Aligner`: from a workdir, an export (or the shipped model); boxes in, faces out
  forward      the image forward: crop, model, landmarks back in the image's pixels
  export       the image forward serialised with `jax.export`, and its loader
  detect       optional offline face detectors (OpenCV, dlib), boxes made like the training boxes
  photos       which files to read, where outputs go, boxes files
  align_files  the loop behind `align.py`
  drawing      the annotated PNG of an aligned photo
"""


def __getattr__(name: str):
  if name == 'Aligner':
    from treemoe_jax.inference.aligner import Aligner  # pylint: disable=g-import-not-at-top
    return Aligner
  raise AttributeError(f'module treemoe_jax.inference has no attribute {name!r}')
