"""Head pose from 2D landmarks, and 300W-LP / AFLW2000-3D `Pose_Para` conversion (numpy only).

The paper labels 300W and COFW with poses "inferred from the landmark positions": fit a 3D mean
face to the 2D landmarks. This module fits `geometry.MEAN_FACE_3D`, the renderer's mean face, under
the renderer's camera, so fitted poses and the synthetic set's labels share one convention.

Letters: B faces (the flattened leading axes), P = 68 landmarks.

Pose convention (the renderer's, `input_pipeline/synthetic.py`): model frame x towards the
subject's left, y down, z towards the camera; (yaw, pitch, roll) radians with
  camera = Rz(roll) Rx(pitch) Ry(yaw) @ model,   pixel = t + s * camera (x, y)   (weak perspective)
where Rx, Ry, Rz are the standard right-hand-rule matrices. yaw > 0: the nose turns towards the
image's right; pitch > 0: the nose turns up; roll > 0: the head turns clockwise in the image. A
horizontal flip maps (yaw, pitch, roll) to (-yaw, pitch, -roll).
"""

import numpy as np

from treemoe_jax.geometry import markup as geometry

Array = np.ndarray


def _point_weights() -> Array:
  """The default per-point weights [68]: 0 on the mandible below the mouth corners (jaw 4-12) and
  the lower lip (55-59, 65-67), 1 elsewhere. Opening the mouth swings these points about the jaw's
  hinge, which a rigid mean face reads as pitch (and, at large yaw, as roll); the synthetic
  benchmark (docs/pose_from_landmarks.md) measured the fit without them better at every yaw."""
  w = np.ones(geometry.NUM_LANDMARKS)
  w[4:13] = 0.0
  w[55:60] = 0.0
  w[65:68] = 0.0
  return w


POINT_WEIGHTS = _point_weights()
# How much each self-occluded jaw point counts once the first fit says it faces away (see
# `pose_from_landmarks`). 0 drops it: annotators (300W, 300W-LP's `pts_2d`) put hidden jaw points on
# the visible outline, not where the 3D point projects, so they would pull the fit.
HIDDEN_JAW_WEIGHT = 0.0
# Robust (iteratively reweighted) fit: a point's weight is divided by 1 + (e / c)^2 (Cauchy), e its
# reprojection error in the mean face's units (cm), c this scale.
CAUCHY_SCALE_CM = 0.5
# A jaw point counts as hidden when its outward normal's camera z is below this (about 15 degrees
# beyond the outline, as the renderer's self-occlusion test).
_HIDDEN_NORMAL_Z = -0.25
_MIN_POINTS = 4  # A 3D-to-2D affine camera has 8 unknowns: at least 4 points with weight.
_FLIP_Y = np.diag([1.0, -1.0, 1.0])  # The project's model frame <-> 3DDFA's (y up).


# ---------------------------------------------------------------------------------------------
# Rotations in the project's convention.

def rotation_matrix(pose) -> Array:
  """Rotations [..., 3, 3] model -> camera, Rz(roll) Rx(pitch) Ry(yaw), from (yaw, pitch, roll)."""
  pose = np.asarray(pose, np.float64)
  if pose.shape[-1:] != (3,):
    raise ValueError(f'pose must have shape [..., 3] (yaw, pitch, roll), got {pose.shape}.')
  c, s = np.cos(pose), np.sin(pose)
  one, zero = np.ones(pose.shape[:-1]), np.zeros(pose.shape[:-1])
  mat = lambda *rows: np.stack([np.stack(r, -1) for r in rows], -2)
  ry = mat((c[..., 0], zero, s[..., 0]), (zero, one, zero), (-s[..., 0], zero, c[..., 0]))
  rx = mat((one, zero, zero), (zero, c[..., 1], -s[..., 1]), (zero, s[..., 1], c[..., 1]))
  rz = mat((c[..., 2], -s[..., 2], zero), (s[..., 2], c[..., 2], zero), (zero, zero, one))
  return rz @ rx @ ry


def pose_from_rotation(rotation) -> Array:
  """(yaw, pitch, roll) [..., 3] of rotations [..., 3, 3] = Rz(roll) Rx(pitch) Ry(yaw).

  Row 2 of Rz Rx Ry is (-cos p sin y, sin p, cos p cos y) and column 1 is
  (-sin r cos p, cos r cos p, sin p): pitch in [-pi/2, pi/2], yaw and roll in (-pi, pi].
  """
  r = np.asarray(rotation, np.float64)
  pitch = np.arcsin(np.clip(r[..., 2, 1], -1.0, 1.0))
  yaw = np.arctan2(-r[..., 2, 0], r[..., 2, 2])
  roll = np.arctan2(-r[..., 0, 1], r[..., 1, 1])
  return np.stack([yaw, pitch, roll], -1) + 0.0  # + 0.0: no negative zeros.


def _rodrigues(w: Array) -> Array:
  """exp([w]x) [B, 3, 3] of rotation vectors w [B, 3]."""
  theta = np.linalg.norm(w, axis=-1)[:, None, None]
  k = np.zeros(w.shape[:-1] + (3, 3))
  k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
  k[:, 1, 0], k[:, 2, 0], k[:, 2, 1] = w[:, 2], -w[:, 1], w[:, 0]
  small = theta < 1e-8
  safe = np.where(small, 1.0, theta)
  a = np.where(small, 1.0, np.sin(safe) / safe)
  b = np.where(small, 0.5, (1 - np.cos(safe)) / safe ** 2)
  return np.eye(3) + a * k + b * (k @ k)


# ---------------------------------------------------------------------------------------------
# The weak-perspective fit.

def _jaw_normals(model: Array) -> Array:
  """Outward unit normals [17, 3] of the jaw contour points: horizontal, away from a vertical axis
  through the head's centre, tilted forward as the contour turns to the chin."""
  jaw = model[geometry.JAW].astype(np.float64)
  n = np.stack([jaw[:, 0], np.zeros(len(jaw)), jaw[:, 2] - 1.0], -1)
  return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _check_landmarks(landmarks, num_points: int) -> Array:
  x = np.asarray(landmarks)
  if x.dtype == object or not (np.issubdtype(x.dtype, np.integer)
                               or np.issubdtype(x.dtype, np.floating)):
    raise ValueError(f'landmarks must be a real numeric array, got dtype {x.dtype}.')
  if x.ndim < 2 or x.shape[-2:] != (num_points, 2):
    raise ValueError(f'landmarks must have shape [..., {num_points}, 2] ((x, y) pixels, one row '
                     f'per model point), got {x.shape}.')
  x = x.astype(np.float64)
  bad = ~np.isfinite(x).all(axis=(-2, -1))
  if bad.any():
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f'landmarks must be finite: {int(bad.sum())} face(s) have NaN or inf '
                     f'coordinates (first at leading index {first}). Give missing points any '
                     f'finite value and weight 0.')
  return x


def _check_weights(weights, lead: tuple[int, ...], num_points: int) -> Array:
  if weights is None:
    return np.ones(lead + (num_points,))
  w = np.asarray(weights, np.float64)
  try:
    w = np.broadcast_to(w, lead + (num_points,))
  except ValueError:
    raise ValueError(f'weights must broadcast to {lead + (num_points,)}, got {w.shape}.') from None
  if not np.isfinite(w).all() or (w < 0).any():
    raise ValueError('weights must be finite and >= 0.')
  return w


def fit_weak_perspective(landmarks, *, weights=None, model=None,
                         iterations: int = 6) -> tuple[Array, Array, Array]:
  """Fits pixel = t + s * (R @ model)[:2] to landmarks [..., P, 2] by weighted least squares.

  Start: the weighted affine camera [2, 3] (linear least squares), projected to the closest scaled
  pair of orthonormal rows (SVD), completed to a rotation by their cross product. Then
  Levenberg-Marquardt on the reprojection error over (rotation increment, s); t is the weighted
  centroid offset, optimal for any (R, s).

  Args:
    landmarks: [..., P, 2] pixels.
    weights: optional [..., P] (broadcast), >= 0; 0 ignores a point (it must still be finite).
    model: [P, 3] 3D points in the project's model frame; default `geometry.MEAN_FACE_3D`.
    iterations: Levenberg-Marquardt steps.
  Returns:
    rotation [..., 3, 3] model -> camera, scale [...] pixels per model unit, translation [..., 2]
    (the image position of the model origin).
  """
  model = geometry.MEAN_FACE_3D if model is None else model
  model = np.asarray(model, np.float64)
  num_points = model.shape[0]
  x = _check_landmarks(landmarks, num_points)
  lead = x.shape[:-2]
  w = _check_weights(weights, lead, num_points)
  x, w = x.reshape(-1, num_points, 2), w.reshape(-1, num_points)
  few = (w > 0).sum(-1) < _MIN_POINTS
  if few.any():
    raise ValueError(f'Each face needs at least {_MIN_POINTS} points with positive weight; '
                     f'{int(few.sum())} face(s) have fewer.')
  if len(x) == 0:
    return np.zeros(lead + (3, 3)), np.zeros(lead), np.zeros(lead + (2,))
  rotation, scale, translation = _fit(x, w, model, iterations)
  return (rotation.reshape(lead + (3, 3)), scale.reshape(lead),
          translation.reshape(lead + (2,)))


def _fit(x: Array, w: Array, model: Array, iterations: int) -> tuple[Array, Array, Array]:
  """The fit on flat arrays: x [B, P, 2], w [B, P], model [P, 3]."""
  wn = w / w.sum(-1, keepdims=True)
  x_mean = np.einsum('bp,bpi->bi', wn, x)
  m_mean = wn @ model  # [B, 3]
  xc = x - x_mean[:, None]
  mc = model[None] - m_mean[:, None]  # [B, P, 3]
  spread = np.sqrt(np.einsum('bp,bpi->b', wn, xc ** 2))
  if (spread <= 1e-9 * (1 + np.abs(x_mean).max(-1))).any():
    raise ValueError('landmarks are degenerate: all weighted points of a face coincide.')
  # Normalise pixels so the damping and tolerances are scale-free (the fit is similarity-invariant).
  xc = xc / spread[:, None, None]

  mm = np.einsum('bp,bpi,bpj->bij', wn, mc, mc)
  xm = np.einsum('bp,bpi,bpj->bij', wn, xc, mc)
  affine = xm @ np.linalg.pinv(mm, hermitian=True)  # [B, 2, 3]; pinv: coplanar subsets too.
  u, sv, vt = np.linalg.svd(affine, full_matrices=False)
  rows = u @ vt  # [B, 2, 3] orthonormal rows closest to the affine camera's.
  rot = np.concatenate([rows, np.cross(rows[:, 0], rows[:, 1])[:, None]], 1)
  scale = sv.mean(-1)

  def cost(r, s):
    res = xc - s[:, None, None] * np.einsum('bij,bpj->bpi', r[:, :2], mc)
    return np.einsum('bp,bpi->b', wn, res ** 2)

  damping = np.full(len(x), 1e-3)
  current = cost(rot, scale)
  for _ in range(iterations):
    y = np.einsum('bij,bpj->bpi', rot, mc)  # [B, P, 3] camera frame, centred.
    s = scale[:, None]
    zero = np.zeros_like(y[..., 0])
    # d(s P exp([w]x) y)/d(w, s) at w = 0: the two image rows of s (w x y), then P y.
    jac = np.stack([
        np.stack([zero, s * y[..., 2], -s * y[..., 1], y[..., 0]], -1),
        np.stack([-s * y[..., 2], zero, s * y[..., 0], y[..., 1]], -1)], -2)  # [B, P, 2, 4]
    res = xc - s[..., None] * y[..., :2]
    jtj = np.einsum('bp,bpki,bpkj->bij', wn, jac, jac)
    jtr = np.einsum('bp,bpki,bpk->bi', wn, jac, res)
    diag = np.einsum('bii->bi', jtj)
    lhs = jtj + (damping[:, None] * (diag + 1e-12))[:, :, None] * np.eye(4)
    step = np.linalg.solve(lhs, jtr[..., None])[..., 0]
    new_rot = _rodrigues(step[:, :3]) @ rot
    new_scale = scale + step[:, 3]
    new_cost = cost(new_rot, new_scale)
    better = (new_cost <= current) & (new_scale > 0)
    rot = np.where(better[:, None, None], new_rot, rot)
    scale = np.where(better, new_scale, scale)
    current = np.where(better, new_cost, current)
    damping = np.where(better, damping / 3, damping * 4)
    if np.abs(step).max() < 1e-10:  # Converged (steps are in radians and normalised pixels).
      break
  # Re-orthonormalise (accumulated products drift by rounding only).
  u, _, vt = np.linalg.svd(rot)
  rot = u @ vt
  scale = scale * spread
  translation = x_mean - scale[:, None] * np.einsum('bij,bj->bi', rot[:, :2], m_mean)
  return rot, scale, translation


def pose_from_landmarks(landmarks, *, weights=None, hidden_jaw_weight: float = HIDDEN_JAW_WEIGHT,
                        cauchy_scale: float | None = CAUCHY_SCALE_CM, robust_iterations: int = 4,
                        iterations: int = 6) -> Array:
  """Head pose (yaw, pitch, roll) [..., 3], radians, of 68-point landmarks [..., 68, 2] (pixels).

  Fits the project's 3D mean face (`geometry.MEAN_FACE_3D`) under a weak-perspective camera (see
  `fit_weak_perspective`) and reads the angles in the renderer's convention (module docstring).
  Invariant to image translation and scale. Steps:
    1. a weighted fit with `weights` (default `POINT_WEIGHTS`: mandible and lower lip left out);
    2. jaw contour points (0-16) that this fit turns away from the camera are scaled by
       `hidden_jaw_weight` (default 0). Datasets mark hidden jaw points on the visible outline
       (300W, COFW, 300W-LP's `pts_2d`: contour-snapped), where the 3D point does not project.
       Pass 1.0 for landmarks that are projected 3D points (AFLW2000-3D's `pt3d_68`, the synthetic
       set), where those points are right and help;
    3. `robust_iterations` reweighted fits (Cauchy weights with scale `cauchy_scale` cm, None to
       skip), so a few wrong points (outliers, expressions) lose their pull; then the final fit.

  Args:
    landmarks: [..., 68, 2] (x, y) pixels, finite.
    weights: per-point weights [..., 68] (broadcast), >= 0, replacing `POINT_WEIGHTS`; 0 ignores a
      point (e.g. `visibility * POINT_WEIGHTS`, or all ones to use every point). At least 4
      points per face need positive weight.
    hidden_jaw_weight: in [0, 1], multiplies the weight of jaw points found facing away.
    cauchy_scale: robust scale (cm on the mean face), or None for a plain least-squares fit.
    robust_iterations: reweighting rounds when `cauchy_scale` is set.
    iterations: Levenberg-Marquardt steps per fit.
  Returns:
    float32 [..., 3] (yaw, pitch, roll) radians; pitch in [-pi/2, pi/2].
  Raises:
    ValueError: wrong shape or dtype, NaN or inf, negative weights, degenerate points, or fewer
      than 4 usable points.
  """
  model = geometry.MEAN_FACE_3D.astype(np.float64)
  x = _check_landmarks(landmarks, geometry.NUM_LANDMARKS)
  lead = x.shape[:-2]
  w = _check_weights(POINT_WEIGHTS if weights is None else weights, lead, geometry.NUM_LANDMARKS)
  if not 0.0 <= hidden_jaw_weight <= 1.0:
    raise ValueError(f'hidden_jaw_weight must be in [0, 1], got {hidden_jaw_weight}.')
  if cauchy_scale is not None and not cauchy_scale > 0:
    raise ValueError(f'cauchy_scale must be > 0 or None, got {cauchy_scale}.')
  x, w = x.reshape(-1, geometry.NUM_LANDMARKS, 2), w.reshape(-1, geometry.NUM_LANDMARKS)
  fit = lambda weights: fit_weak_perspective(x, weights=weights, model=model,
                                             iterations=iterations)
  rot, scale, shift = fit(w)
  if hidden_jaw_weight < 1.0 and len(x):
    normal_z = rot[:, 2, :] @ _jaw_normals(model).T  # [B, 17]
    jaw = np.where(normal_z < _HIDDEN_NORMAL_Z, hidden_jaw_weight, 1.0)
    base = w * np.concatenate([jaw, np.ones((len(x), geometry.NUM_LANDMARKS - 17))], -1)
    # Keep the caller's weights where dropping hidden points would leave too few (only when the
    # caller's weights had already removed most non-jaw points).
    w = np.where(((base > 0).sum(-1) >= _MIN_POINTS)[:, None], base, w)
    rot, scale, shift = fit(w)
  if cauchy_scale is not None and len(x):
    for _ in range(robust_iterations):
      projected = scale[:, None, None] * np.einsum('bij,pj->bpi', rot[:, :2], model)
      error_cm = np.linalg.norm(x - shift[:, None] - projected, axis=-1) / scale[:, None]
      rot, scale, shift = fit(w / (1.0 + (error_cm / cauchy_scale) ** 2))
  return pose_from_rotation(rot).reshape(lead + (3,)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# 300W-LP / AFLW2000-3D `Pose_Para`.

def ddfa_rotation_matrix(pitch, yaw, roll) -> Array:
  """3DDFA's rotation [..., 3, 3] of `Pose_Para` angles, as 3DDFA's MATLAB `RotationMatrix.m`
  and face3d's `angle2matrix_3ddfa` write it: R = R_x R_y R_z with
  R_x = [[1, 0, 0], [0, c, s], [0, -s, c]], R_y = [[c, 0, -s], [0, 1, 0], [s, 0, c]],
  R_z = [[c, s, 0], [-s, c, 0], [0, 0, 1]] (each the transpose of the right-hand-rule matrix)."""
  x, y, z = (np.asarray(a, np.float64) for a in (pitch, yaw, roll))
  x, y, z = np.broadcast_arrays(x, y, z)
  one, zero = np.ones(x.shape), np.zeros(x.shape)
  mat = lambda *rows: np.stack([np.stack(r, -1) for r in rows], -2)
  cx, sx, cy, sy, cz, sz = np.cos(x), np.sin(x), np.cos(y), np.sin(y), np.cos(z), np.sin(z)
  rx = mat((one, zero, zero), (zero, cx, sx), (zero, -sx, cx))
  ry = mat((cy, zero, -sy), (zero, one, zero), (sy, zero, cy))
  rz = mat((cz, sz, zero), (-sz, cz, zero), (zero, zero, one))
  return rx @ ry @ rz


def _check_last(a, n: int, name: str, what: str) -> Array:
  a = np.asarray(a)
  if a.dtype == object or not (np.issubdtype(a.dtype, np.integer)
                               or np.issubdtype(a.dtype, np.floating)):
    raise ValueError(f'{name} must be a real numeric array, got dtype {a.dtype}.')
  if a.ndim < 1 or a.shape[-1] != n:
    raise ValueError(f'{name} must have shape [..., {n}] ({what}), got {a.shape}.')
  a = a.astype(np.float64)
  if not np.isfinite(a).all():
    raise ValueError(f'{name} must be finite (no NaN or inf).')
  return a


def pose_from_pose_para(pose_para) -> Array:
  """(yaw, pitch, roll) [..., 3] in the project's convention from `Pose_Para` [..., 7].

  300W-LP and AFLW2000-3D store `Pose_Para` = [pitch, yaw, roll, tx, ty, tz, scale] (radians),
  fitted with 3DDFA's forward model (github.com/yfeng95/face3d: `examples/
  8_generate_posmap_300WLP.py` reads s = Pose_Para[6], angles = Pose_Para[:3], t = Pose_Para[3:6];
  `MorphabelModel.transform_3ddfa`): v = scale * R @ X + t, R = `ddfa_rotation_matrix(pitch, yaw,
  roll)` = R_x R_y R_z (3DDFA `RotationMatrix.m`, face3d `mesh/transform.py:angle2matrix_3ddfa`),
  X in the Basel Face Model's frame (x towards the subject's left, y up, z towards the camera),
  orthographic projection, then image y = height - 1 - v_y. With F = diag(1, -1, 1) (our model
  frame has y down, so X = F X_ours, and the image flip is F on the camera side), the image is
  scale * F R F @ X_ours + const: our camera rotation is F R F = Rx(pitch) Ry(-yaw) Rz(roll)
  (right-hand-rule matrices), read back as Rz Rx Ry angles. For small angles that is
  (yaw, pitch, roll)_ours ~ (-yaw, pitch, roll)_3DDFA: 3DDFA's positive yaw turns the nose
  towards the image's left, ours towards its right; pitch (nose up) and roll (clockwise in the
  image) agree. The translation and scale are ignored. A `(1, 7)` array as stored gives `(1, 3)`.
  """
  p = _check_last(pose_para, 7, 'pose_para', '[pitch, yaw, roll, tx, ty, tz, scale]')
  r = ddfa_rotation_matrix(p[..., 0], p[..., 1], p[..., 2])
  return pose_from_rotation(_FLIP_Y @ r @ _FLIP_Y).astype(np.float32)


def pose_para_from_pose(pose, *, translation=(0.0, 0.0, 0.0), scale=1.0) -> Array:
  """`Pose_Para` [..., 7] = [pitch, yaw, roll, tx, ty, tz, scale] (3DDFA's angles) of poses
  (yaw, pitch, roll) [..., 3] in the project's convention: the inverse of `pose_from_pose_para`.

  3DDFA's R = F Rz Rx Ry F (ours, conjugated by F = diag(1, -1, 1)); R^T = Rz(roll) Ry(yaw)
  Rx(pitch) in right-hand-rule matrices, whose angles are yaw = -asin(M[2, 0]),
  pitch = atan2(M[2, 1], M[2, 2]), roll = atan2(M[1, 0], M[0, 0]) for M = R^T (face3d's
  `matrix2angle`). `translation` [..., 3] and `scale` [...] fill the last four entries.
  """
  pose = _check_last(pose, 3, 'pose', '(yaw, pitch, roll) radians')
  m = np.swapaxes(_FLIP_Y @ rotation_matrix(pose) @ _FLIP_Y, -1, -2)
  yaw = -np.arcsin(np.clip(m[..., 2, 0], -1.0, 1.0))
  pitch = np.arctan2(m[..., 2, 1], m[..., 2, 2])
  roll = np.arctan2(m[..., 1, 0], m[..., 0, 0])
  lead = pose.shape[:-1]
  t = np.broadcast_to(np.asarray(translation, np.float64), lead + (3,))
  s = np.broadcast_to(np.asarray(scale, np.float64), lead)
  return np.concatenate([np.stack([pitch, yaw, roll], -1), t, s[..., None]],
                        -1).astype(np.float32)
