"""The picture of an aligned photograph: its landmarks, face boxes and head-pose axes, as a PNG.

Drawn with matplotlib's object API (a `Figure` and its Agg canvas, no pyplot), so that drawing
changes no process-wide backend. Head-pose axes follow `treemoe_jax.pose_fit`: camera =
Rz(roll) Rx(pitch) Ry(yaw) @ model, the model frame's x towards the subject's left, y down, z
towards the camera, weak perspective, so a model axis appears in the image as the (x, y) rows of
its column of the rotation. They start at the nose tip (landmark 30) and are half the box's side
long: x red (the subject's left), y green (down the face), z blue (out of the face; it shrinks to a
point for a face looking at the camera, and points where the nose turns).

Letters: N faces, P = 68 landmarks.
"""

from collections.abc import Sequence
import os
from typing import Protocol

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
import numpy as np

from treemoe_jax.geometry import head_pose as pose_fit

NOSE_TIP = 30  # iBUG 68-point index (treemoe_jax.geometry: nose base 31-35 below it).
AXIS_COLOURS = ('tab:red', 'tab:green', 'tab:blue')  # Model x, y, z.
_LONG_SIDE_PX = (640, 1600)  # The picture's longer side: small crops drawn larger, photos smaller.


class FaceLike(Protocol):
  """What is drawn of a face (`aligner.Face` is one): image pixels, pose radians or None."""
  landmarks: np.ndarray  # [P, 2]
  box: np.ndarray  # [4] x0, y0, x1, y1
  pose: np.ndarray | None  # [3] yaw, pitch, roll
  score: float | None


def pose_axes(pose, origin, length: float) -> np.ndarray:
  """Image end points [3, 2] of the model's x, y, z axes, `length` px long before projection,
  drawn from `origin` [2], for a head pose (yaw, pitch, roll) radians."""
  rotation = pose_fit.rotation_matrix(np.asarray(pose, np.float64))  # [3, 3], columns = axes
  return np.asarray(origin, np.float64) + length * rotation[:2].T


def draw(path: str | os.PathLike, image: np.ndarray, faces: Sequence[FaceLike], *,
         note: str = '') -> None:
  """Writes the PNG of `image` (uint8 [H, W], [H, W, 1] or [H, W, 3]) with `faces` drawn on it,
  and `note` (e.g. 'no face found') in its top-left corner."""
  pixels = np.asarray(image)
  if pixels.ndim == 3 and pixels.shape[2] == 1:
    pixels = pixels[..., 0]
  height, width = pixels.shape[:2]
  long_side = float(np.clip(max(height, width), *_LONG_SIDE_PX))
  zoom = long_side / max(height, width)  # Picture pixels per image pixel.
  dpi = 100
  # At least one picture pixel a side: an image over 1600:1 would otherwise have a side of none,
  # which matplotlib cannot save.
  fig = Figure(figsize=(max(width * zoom, 1) / dpi, max(height * zoom, 1) / dpi), dpi=dpi)
  ax = fig.add_axes((0, 0, 1, 1))
  ax.imshow(pixels, cmap='gray' if pixels.ndim == 2 else None, vmin=0, vmax=255,
            interpolation='nearest' if zoom > 1 else 'antialiased')
  ax.set_axis_off()
  ax.set_xlim(-0.5, width - 0.5)
  ax.set_ylim(height - 0.5, -0.5)
  line = max(1.0, long_side / 600) * 72 / dpi  # Points.
  for i, face in enumerate(faces):
    box = np.asarray(face.box, np.float64)
    side = float(np.sqrt(np.prod(box[2:] - box[:2])))
    dot = float(np.clip(side * zoom / 45, 2, 8)) * 72 / dpi  # Marker diameter, points.
    ax.add_patch(Rectangle(box[:2], *(box[2:] - box[:2]), fill=False, ec='yellow', lw=line))
    label = f'#{i}' + (f' {face.score:.2f}' if face.score is not None else '')
    ax.text(box[0], box[1], label, color='yellow', fontsize=max(7.0, long_side / 90),
            va='bottom', ha='left')
    points = np.asarray(face.landmarks, np.float64)
    ax.scatter(points[:, 0], points[:, 1], s=dot**2, c='cyan', edgecolors='black',
               linewidths=dot / 8, zorder=3)
    if face.pose is not None:
      origin = points[NOSE_TIP]
      for end, colour in zip(pose_axes(face.pose, origin, side / 2), AXIS_COLOURS):
        ax.plot([origin[0], end[0]], [origin[1], end[1]], color=colour, lw=2 * line,
                solid_capstyle='round', zorder=4)
  if note:
    ax.text(0.01, 0.99, note, transform=ax.transAxes, color='white', fontsize=max(8.0,
            long_side / 70), va='top', ha='left', bbox={'facecolor': 'black', 'alpha': 0.6})
  fig.savefig(path, dpi=dpi, format='png')
