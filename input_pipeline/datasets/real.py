"""What every real-data builder shares: the features, the manual dir, and bad-example handling.

Each real dataset (`w300`, `cofw`, `w300_lp`, `aflw2000_3d`, `face_folder`) is read from files the
user downloaded (TFDS's manual dir) and yields the features of `synthetic_faces`, so one pipeline,
trainer and evaluator serve all of them:
  image uint8 [H, W, 3] (grayscale files repeated to 3 channels; the model reads one),
  landmarks float32 [68, 2] (x, y) 0-based pixel centres (SPEC Conventions),
  visibility bool [68] (False where the annotation marks a point occluded; True otherwise),
  pose float32 [3] (yaw, pitch, roll) radians, the project's convention,
  box float32 [4] (x0, y0, x1, y1): the ground-truth landmarks' tight box (the standard protocol;
    the crop margin is the pipeline's `config.crop_margin`).
Builders may add features of their own (COFW's 29 points, a bucket label, the source file).

Bad input: a missing, empty, truncated or non-image file, a `.pts` with the wrong point count, a
NaN, a `.mat` without its field is one `formats.FormatError` naming the file. By default it
stops the preparation; a builder config with `skip_bad_examples=True` skips such examples instead
and reports their count and names (logged, and written to `bad_examples.txt` beside the data).
"""

import dataclasses
import logging
import os
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import formats
from treemoe_jax import geometry

Example = dict[str, Any]


class MissingDataError(FileNotFoundError):
  """The manual dir lacks what a builder reads: the message says what to download, and where."""


@dataclasses.dataclass(eq=False)
class RealConfig(tfds.core.BuilderConfig):
  """Options every real-data builder takes."""
  skip_bad_examples: bool = False  # True: skip (and report) unreadable examples, else stop.


def features(extra: dict[str, tfds.features.FeatureConnector] | None = None,
             encoding: str = 'jpeg') -> tfds.features.FeaturesDict:
  """The common features (see the module docstring), plus a builder's own."""
  return tfds.features.FeaturesDict({
      'image': tfds.features.Image(shape=(None, None, 3), dtype=np.uint8,
                                   encoding_format=encoding),
      'landmarks': tfds.features.Tensor(shape=(68, 2), dtype=np.float32),
      'visibility': tfds.features.Tensor(shape=(68,), dtype=np.bool_),
      'pose': tfds.features.Tensor(shape=(3,), dtype=np.float32),
      'box': tfds.features.Tensor(shape=(4,), dtype=np.float32),
      **(extra or {}),
  })


def rgb(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 1 or 3] -> [H, W, 3]."""
  return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def example(image: np.ndarray, landmarks: np.ndarray, pose: np.ndarray,
            visibility: np.ndarray | None = None, **extra) -> Example:
  """The common features of one face; the box is the landmarks' own."""
  landmarks = np.asarray(landmarks, np.float32)
  if visibility is None:
    visibility = np.ones(len(landmarks), bool)
  return {'image': rgb(image), 'landmarks': landmarks,
          'visibility': np.asarray(visibility, bool), 'pose': np.asarray(pose, np.float32),
          'box': formats.box_of(landmarks).astype(np.float32), **extra}


def pose_labels(landmarks: np.ndarray) -> np.ndarray:
  """(yaw, pitch, roll) inferred from annotated 2D landmarks, as the paper does for 300W / COFW."""
  return geometry.pose_from_landmarks(np.asarray(landmarks, np.float32)).astype(np.float32)


def manual_dir(dl_manager: tfds.download.DownloadManager, name: str) -> pathlib.Path:
  """TFDS's manual dir; its "missing or empty" AssertionError becomes a MissingDataError."""
  try:
    return pathlib.Path(os.fspath(dl_manager.manual_dir))
  except AssertionError as e:  # TFDS: "Manual directory ... does not exist or is empty" + how-to.
    raise MissingDataError(f'{name}: {e}') from None


def dataset_dir(manual_dir: pathlib.Path | str, name: str, must_contain: tuple[str, ...],
                instructions: str) -> pathlib.Path:
  """The folder holding `must_contain`: `manual_dir/name` or `manual_dir` itself.

  Raises MissingDataError naming what is missing and the instructions for getting it.
  """
  manual_dir = pathlib.Path(manual_dir)
  for candidate in (manual_dir / name, manual_dir):
    if candidate.is_dir() and all((candidate / p).exists() for p in must_contain):
      return candidate
  looked = manual_dir / name if (manual_dir / name).is_dir() else manual_dir
  missing = [p for p in must_contain if not (looked / p).exists()]
  raise MissingDataError(
      f'{name}: {looked} lacks {", ".join(missing)}. Download the data as follows and pass '
      f'the folder as the manual dir (--config.manual_dir=DIR, or TFDS\'s '
      f'~/tensorflow_datasets/downloads/manual/{name}):\n{instructions}')


def guarded(items: list[Any], read: Callable[[Any], tuple[str, Example]], *, skip: bool,
            name: str, report_dir: pathlib.Path | None = None) -> Iterator[tuple[str, Example]]:
  """(key, example) for each item; a FormatError stops, or (skip=True) is counted and named."""
  bad = []
  for item in items:
    try:
      yield read(item)
    except formats.FormatError as e:
      if not skip:
        raise formats.FormatError(e.path, f'{e.problem} (set skip_bad_examples to skip such '
                                          'examples instead)') from e
      bad.append(str(e))
  if bad:
    logging.warning('%s: skipped %d bad example(s):\n%s', name, len(bad), '\n'.join(bad))
    if report_dir is not None:
      report_dir.mkdir(parents=True, exist_ok=True)
      with (report_dir / 'bad_examples.txt').open('a') as f:
        f.write(''.join(f'{name}\t{line}\n' for line in bad))
