"""Face-alignment metrics: NME (paper eq. 12-13), failure rate, CED and AUC.

Axis legend: B images, P = 68 landmarks (iBUG markup, 0-based, SPEC "Conventions"), Q landmarks
of an evaluated subset (e.g. the 29 COFW points), T thresholds of a CED curve.

Every error here is a *fraction* of the normaliser (0.05 means 5 % of the inter-pupil distance),
never a percentage: multiply by 100 only when printing a table.

Evaluation runs on the host, so the public functions are numpy and take numpy or jax arrays alike
(`np.asarray`), validate their input and raise a clear `ValueError` rather than silently returning
NaN. Training wants the same number inside a jitted step: `nme_jax` is the same formula, traced
with `jax.numpy`, with the static checks only (a traced value cannot be tested for NaN or zero).
Both go through one private implementation parameterised by the array namespace.

The CED of errors e_1..e_B is the step function CED(t) = #{i: e_i <= t} / B. Its area from 0 to a
limit L is exact in closed form: the step of e_i contributes (L - e_i) when e_i <= L, so
AUC_L = mean_i(max(L - e_i, 0)) / L, in [0, 1]. No grid, no quadrature error.
"""

from collections.abc import Sequence
import types
from typing import Any

import jax.numpy as jnp
import numpy as np
import numpy.typing as npt

from treemoe_jax import geometry

Array = Any  # a numpy or jax array

NORMALIZERS = ('inter_pupil', 'inter_ocular', 'box')
# Failure thresholds and AUC limits reported by the paper's community (300W, COFW, AFLW2000-3D).
THRESHOLDS = (0.08, 0.10)
# Default CED grid: fine enough that the plotted steps are exact to 1e-4 of the normaliser.
CED_THRESHOLDS = np.linspace(0.0, max(THRESHOLDS), 1001)

_OUTER_RIGHT_EYE_CORNER = int(geometry.RIGHT_EYE[0])  # 36
_OUTER_LEFT_EYE_CORNER = int(geometry.LEFT_EYE[3])  # 45


# --- the formula, once, for either namespace -------------------------------------------------


def _normalizer(gt: Array, kind: str, xp: types.ModuleType) -> Array:
  """Per-image normaliser `[B]` of ground-truth shapes `[B, 68, 2]`."""
  _check_kind(kind)
  if kind == 'inter_pupil':  # eq. 12: distance of the eye centroids (the pupils).
    a = gt[..., geometry.RIGHT_EYE, :].mean(axis=-2)
    b = gt[..., geometry.LEFT_EYE, :].mean(axis=-2)
  elif kind == 'inter_ocular':  # outer eye corners, 36 and 45.
    a = gt[..., _OUTER_RIGHT_EYE_CORNER, :]
    b = gt[..., _OUTER_LEFT_EYE_CORNER, :]
  else:  # 'box', eq. 13: sqrt(w * h) of the ground-truth landmarks' box.
    wh = gt.max(axis=-2) - gt.min(axis=-2)
    return xp.sqrt(wh[..., 0] * wh[..., 1])
  return xp.sqrt(((a - b) ** 2).sum(axis=-1))


def _nme(pred: Array, gt: Array, norm: Array, mask: Array | None, indices: Array | None,
         xp: types.ModuleType) -> Array:
  """Per-image NME `[B]`: mean point-to-point error over the (visible, selected) landmarks.

  `norm` `[B]` comes from all 68 ground-truth points whatever the subset.
  """
  err = xp.sqrt(((pred - gt) ** 2).sum(axis=-1))  # [B, P] pixels
  if indices is not None:
    err = err[:, indices]  # [B, Q]
    mask = None if mask is None else mask[:, indices]
  if mask is None:
    mean_err = err.mean(axis=-1)
  else:
    weights = mask.astype(err.dtype)
    mean_err = (err * weights).sum(axis=-1) / weights.sum(axis=-1)
  return mean_err / norm


# --- validation ------------------------------------------------------------------------------


def _check_kind(kind: str) -> None:
  if kind not in NORMALIZERS:
    raise ValueError(f'unknown normalizer {kind!r}; valid ones are {", ".join(NORMALIZERS)}')


def _check_shape(name: str, x: Array) -> None:
  if x.ndim != 3 or x.shape[1:] != (geometry.NUM_LANDMARKS, 2):
    raise ValueError(
        f'{name} must be [B, {geometry.NUM_LANDMARKS}, 2] (x, y) shapes, got {tuple(x.shape)}')


def _check_static(pred: Array, gt: Array, mask: Array | None, indices: Array | None) -> None:
  """Checks that need only shapes, so they hold under `jax.jit` too."""
  _check_shape('pred', pred)
  _check_shape('gt', gt)
  if pred.shape != gt.shape:
    raise ValueError(f'pred {tuple(pred.shape)} and gt {tuple(gt.shape)} differ in shape')
  if mask is not None and tuple(mask.shape) != gt.shape[:2]:
    raise ValueError(f'mask must be [B, {geometry.NUM_LANDMARKS}] = {gt.shape[:2]}, '
                     f'got {tuple(mask.shape)}')
  if indices is not None:
    if indices.ndim != 1 or indices.size == 0:
      raise ValueError(f'indices must be a non-empty 1-D list of landmarks, got {indices!r}')
    if not np.issubdtype(indices.dtype, np.integer):
      raise ValueError(f'indices must be integers, got dtype {indices.dtype}')
    if indices.min() < 0 or indices.max() >= geometry.NUM_LANDMARKS:
      raise ValueError(f'indices must lie in [0, {geometry.NUM_LANDMARKS}), got {indices}')


def _check_finite(name: str, x: np.ndarray) -> None:
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} has {int(np.sum(~np.isfinite(x)))} non-finite (NaN/inf) values')


def _as_errors(errors: npt.ArrayLike) -> np.ndarray:
  """Per-image errors as a validated float64 `[B]`: a NaN would silently count as a success."""
  errors = np.asarray(errors, dtype=np.float64)
  if errors.ndim != 1 or errors.size == 0:
    raise ValueError(f'errors must be a non-empty [B] vector of per-image NMEs, '
                     f'got shape {errors.shape}')
  _check_finite('errors', errors)
  if np.any(errors < 0):
    raise ValueError('errors must be non-negative (they are normalised distances)')
  return errors


def _check_positive(name: str, value: float) -> float:
  value = float(value)
  if not np.isfinite(value) or value <= 0:
    raise ValueError(f'{name} must be a positive number, got {value}')
  return value


# --- public API ------------------------------------------------------------------------------


def normalizer(gt: npt.ArrayLike, kind: str = 'inter_pupil') -> np.ndarray:
  """Per-image normalising distance `[B]` in pixels of ground-truth shapes `[B, 68, 2]`.

  `kind`: 'inter_pupil' (eq. 12, 300W and COFW), 'inter_ocular' (outer eye corners 36 and 45, the
  300W challenge's own choice) or 'box' (eq. 13, sqrt(w * h) of the landmarks' box, AFLW2000-3D,
  whose yaw up to 90 degrees can hide an eye and collapse the eye distances).
  """
  gt = np.asarray(gt, dtype=np.float64)
  _check_shape('gt', gt)
  _check_finite('gt', gt)
  return _normalizer(gt, kind, np)


def nme(pred: npt.ArrayLike, gt: npt.ArrayLike, normalizer: str = 'inter_pupil', *,
        mask: npt.ArrayLike | None = None,
        indices: Sequence[int] | npt.ArrayLike | None = None) -> np.ndarray:
  """Per-image normalised mean error `[B]` (a fraction) of shapes `[B, 68, 2]`.

  Per image: mean over landmarks of ||pred - gt||_2, divided by the normaliser (see
  `normalizer`). Per-image values, not the dataset mean, so that callers can average over any
  subset (yaw buckets, 300W common/challenging) and build CEDs.

  Args:
    pred: predicted shapes `[B, 68, 2]`, pixels.
    gt: ground-truth shapes `[B, 68, 2]`, pixels, same image coordinates as `pred`.
    normalizer: 'inter_pupil' | 'inter_ocular' | 'box'.
    mask: optional `[B, 68]` visibility (bool or non-negative weights): only the landmarks it
      keeps count towards the mean, e.g. to leave out points without a ground truth.
    indices: optional landmark subset `[Q]` (e.g. the 29 COFW points) over which to average. The
      normaliser still comes from all 68 ground-truth points, so a subset without the eyes keeps
      the protocol's scale.

  Raises:
    ValueError: on a shape other than `[B, 68, 2]`, mismatched shapes, non-finite input, an
      unknown normaliser, a zero normaliser, or an image with no landmark left to average.
  """
  _check_kind(normalizer)
  pred = np.asarray(pred, dtype=np.float64)
  gt = np.asarray(gt, dtype=np.float64)
  mask = None if mask is None else np.asarray(mask)
  indices = None if indices is None else np.asarray(indices)
  _check_static(pred, gt, mask, indices)
  _check_finite('pred', pred)
  _check_finite('gt', gt)
  norm = _normalizer(gt, normalizer, np)
  if np.any(norm <= 0):
    raise ValueError(f'the {normalizer} normaliser is zero for images '
                     f'{np.flatnonzero(norm <= 0).tolist()} (degenerate ground truth)')
  if mask is not None:
    mask = mask.astype(np.float64)
    _check_finite('mask', mask)
    if np.any(mask < 0):
      raise ValueError('mask weights must be non-negative')
    kept = mask if indices is None else mask[:, indices]
    if np.any(kept.sum(axis=-1) <= 0):
      raise ValueError(f'images {np.flatnonzero(kept.sum(axis=-1) <= 0).tolist()} have no '
                       'visible landmark to average over')
  return _nme(pred, gt, norm, mask, indices, np)


def nme_jax(pred: Array, gt: Array, normalizer: str = 'inter_pupil', *,
            mask: Array | None = None, indices: Sequence[int] | None = None) -> Array:
  """`nme` in `jax.numpy`, traceable inside `jax.jit` (e.g. as a training-step metric).

  Same formula and arguments as `nme`; `normalizer` and `indices` must be static. Only shape
  checks run: a zero normaliser or an image with nothing visible gives inf/NaN instead of an
  error, and the sqrt has no useful gradient at zero error (a metric, not a loss).
  """
  _check_kind(normalizer)
  pred, gt = jnp.asarray(pred), jnp.asarray(gt)
  mask = None if mask is None else jnp.asarray(mask)
  indices = None if indices is None else np.asarray(indices)
  _check_static(pred, gt, mask, indices)
  return _nme(pred, gt, _normalizer(gt, normalizer, jnp), mask, indices, jnp)


def failure_rate(errors: npt.ArrayLike, threshold: float) -> float:
  """Fraction of images whose NME is strictly above `threshold` (usually 0.08 or 0.10)."""
  errors = _as_errors(errors)
  threshold = _check_positive('threshold', threshold)
  return float(np.mean(errors > threshold))


def ced(errors: npt.ArrayLike,
        thresholds: npt.ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Cumulative error distribution: `(thresholds [T], fraction of images with NME <= t [T])`.

  `thresholds` defaults to `CED_THRESHOLDS` (0 to 0.10 in steps of 1e-4), one common grid so that
  curves of several models plot on the same axis; pass your own for another range.
  """
  errors = np.sort(_as_errors(errors))
  thresholds = CED_THRESHOLDS if thresholds is None else np.asarray(thresholds, np.float64)
  if thresholds.ndim != 1:
    raise ValueError(f'thresholds must be a [T] vector, got shape {thresholds.shape}')
  # searchsorted(..., 'right') counts the errors <= t: exact at every step, O((B + T) log B).
  return thresholds, np.searchsorted(errors, thresholds, side='right') / errors.size


def auc(errors: npt.ArrayLike, limit: float) -> float:
  """Area under the CED from 0 to `limit`, divided by `limit`: in [0, 1], higher is better.

  Exact: each image whose error e <= limit adds (limit - e) to the area of the step function
  (module docstring), so AUC = mean(max(1 - e / limit, 0)) (1 exactly when every error is 0).
  """
  errors = _as_errors(errors)
  limit = _check_positive('limit', limit)
  return float(np.mean(np.maximum(1.0 - errors / limit, 0.0)))


def summary(errors: npt.ArrayLike, thresholds: Sequence[float] = THRESHOLDS) -> dict[str, float]:
  """The standard table row for per-image errors: mean NME, and FR and AUC at each threshold.

  Keys: 'num_images', 'nme', then 'fr@0.08', 'auc@0.08', 'fr@0.10', 'auc@0.10' (by default);
  all values fractions, JSON-ready Python numbers.
  """
  errors = _as_errors(errors)
  row = {'num_images': int(errors.size), 'nme': float(errors.mean())}
  for t in thresholds:
    row[f'fr@{t:.2f}'] = failure_rate(errors, t)
    row[f'auc@{t:.2f}'] = auc(errors, t)
  return row
