"""Procedurally rendered, pose-varied grayscale faces with exact 68-point landmarks and head pose.

The project's embedded default data: no download, exact labels, any pose. Each face is a 3D head
(a star-shaped mesh through a 3D 68-point iBUG face plus surface control points), varied in identity
and expression by linear 3D blendshapes that move the mesh and the landmarks together, so the
projected landmarks sit on the rendered surface. The mesh is z-buffered and shaded (wrapped Lambert,
Blinn specular, ambient occlusion) at half resolution; eyes, brows, nostrils, lips and ears are
painted at full resolution from the projected landmarks, depth-tested against the z-buffer;
backgrounds are cluttered, and some faces get a hand, an object or sunglasses in front of them
(COFW-style occlusion flags). Everything is vectorised numpy over a batch of faces.

Letters: N faces, S image size, H = ceil(S / 2) the shading resolution, P = 68 landmarks,
V mesh vertices (R latitude rows x C longitude columns), Q quads, K keypoints, M rows of a group.

Model frame (`geometry.MEAN_FACE_3D`): centimetres, x towards the subject's left (image right in a
frontal view), y down, z towards the camera; the origin is the head's centre of rotation.
Pose (yaw, pitch, roll), radians: camera = Rz(roll) Rx(pitch) Ry(yaw) @ model, so
  yaw > 0: the nose turns towards the image's right (the subject turns to their left),
  pitch > 0: the nose turns up (the subject looks up),
  roll > 0: the head turns clockwise in the image.
A horizontal image flip therefore maps (yaw, pitch, roll) to (-yaw, pitch, -roll).
Projection is weak perspective: pixel = t + f * camera (x, y), depth = f * camera z (larger is
nearer).
Landmarks follow SPEC: (x, y) pixels, 0-based, pixel centres at integers.
"""

import dataclasses
import functools

import numpy as np
import numpy.typing as npt

from treemoe_jax import geometry

Array = np.ndarray
POSE_DISTRIBUTIONS = ('wide', 'frontal')
MEAN_BOX_WIDTH_CM = 14.0  # Width of the mean face's landmark box, frontal.


@dataclasses.dataclass(frozen=True)
class RenderConfig:
  """What to render. Every field has a default; `validate()` explains bad values.

  Pose distributions: 'wide' (300W-LP-like) draws yaw uniformly over `yaw_range_deg` and pitch and
  roll from symmetric Beta(3, 3) laws over their ranges; 'frontal' (300W-like) draws yaw from
  Beta(5, 5) over `yaw_range_deg` clipped to [-60, 60] (about 90% within +-30 degrees) and pitch and
  roll from Beta(5, 5) over two thirds of their ranges.
  """
  image_size: int = 256  # Square uint8 images; a frontal face's landmark box spans box_fraction.
  pose_distribution: str = 'wide'
  yaw_range_deg: tuple[float, float] = (-90.0, 90.0)
  pitch_range_deg: tuple[float, float] = (-45.0, 45.0)
  roll_range_deg: tuple[float, float] = (-35.0, 35.0)
  occlusion_fraction: float = 0.2  # Faces with an external occluder (hand, object, sunglasses).
  box_fraction: tuple[float, float] = (0.45, 0.6)  # Frontal landmark-box width / size, <= 0.65.
  center_jitter: float = 0.04  # Std of the face centre's offset from the image centre / size.
  blur_sigma_px: tuple[float, float] = (0.0, 0.8)
  noise_std: tuple[float, float] = (0.004, 0.03)  # Pixel noise, fraction of the full range.
  gamma: tuple[float, float] = (0.75, 1.35)
  contrast: tuple[float, float] = (0.7, 1.2)
  batch_size: int = 64  # Faces rendered together: memory and speed only.

  def validate(self) -> None:
    """Raises ValueError naming the field and the allowed values."""
    if self.image_size < 32:
      raise ValueError(f'image_size must be >= 32, got {self.image_size}.')
    if self.batch_size < 1:
      raise ValueError(f'batch_size must be positive, got {self.batch_size}.')
    if self.pose_distribution not in POSE_DISTRIBUTIONS:
      raise ValueError(f'Unknown pose_distribution {self.pose_distribution!r}; valid: '
                       f'{", ".join(POSE_DISTRIBUTIONS)}.')
    for name, limit in (('yaw_range_deg', 90.0), ('pitch_range_deg', 90.0),
                        ('roll_range_deg', 180.0)):
      lo, hi = getattr(self, name)
      if not -limit <= lo <= hi <= limit:
        raise ValueError(f'{name} must satisfy -{limit:g} <= low <= high <= {limit:g}, '
                         f'got {(lo, hi)}.')
    if not 0.0 <= self.occlusion_fraction <= 1.0:
      raise ValueError(f'occlusion_fraction must be in [0, 1], got {self.occlusion_fraction}.')
    if self.center_jitter < 0:
      raise ValueError(f'center_jitter must be >= 0, got {self.center_jitter}.')
    for name, lo_limit, hi_limit in (('box_fraction', 1e-3, 0.65), ('blur_sigma_px', 0.0, 0.8),
                                     ('noise_std', 0.0, 0.5), ('gamma', 0.1, 10.0),
                                     ('contrast', 0.0, 10.0)):
      lo, hi = getattr(self, name)
      if not lo_limit <= lo <= hi <= hi_limit:
        raise ValueError(f'{name} must satisfy {lo_limit:g} <= low <= high <= {hi_limit:g}, '
                         f'got {(lo, hi)}.')


def render_faces(num: int, seed: int, config: RenderConfig = RenderConfig()) -> dict[str, Array]:
  """Renders `num` faces; deterministic in (num, seed, config).

  Face i's parameters depend only on (seed, i, config), so a prefix of a larger call describes the
  same faces. Returns
    'image'         uint8   [N, S, S]
    'landmarks'     float32 [N, 68, 2]  (x, y) pixels, the projected 3D points (AFLW2000-3D style)
    'visibility'    bool    [N, 68]     neither self-occluded nor covered by an occluder
    'self_occluded' bool    [N, 68]     surface normal facing away, or hidden behind the head
    'occluded'      bool    [N, 68]     covered by an external occluder
    'has_occluder'  bool    [N]
    'pose'          float32 [N, 3]      (yaw, pitch, roll) radians, conventions in the module doc
    'box'           float32 [N, 4]      (x0, y0, x1, y1) the box of the 68 landmarks
  """
  config.validate()
  if num < 0 or seed < 0:
    raise ValueError(f'num and seed must be >= 0, got num={num}, seed={seed}.')
  chunks = [_render_chunk(np.arange(start, min(start + config.batch_size, num)), seed, config)
            for start in range(0, num, config.batch_size)]
  if not chunks:
    return _empty(config)
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def sample_poses(num: int, seed: int, config: RenderConfig = RenderConfig()) -> Array:
  """The poses float32 [N, 3] that `render_faces(num, seed, config)` renders, without rendering."""
  config.validate()
  poses = [_sample_pose(np.random.default_rng([seed, i]), config) for i in range(num)]
  return np.array(poses, np.float32).reshape(num, 3)


def _smoothstep(x: Array, lo: float, hi: float) -> Array:
  t = np.clip((x - lo) / (hi - lo), 0, 1)
  return t * t * (3 - 2 * t)


def _normalize(v: Array) -> Array:
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _col(a: Array) -> Array:
  """Per-face values [N] as [N, 1, 1] float32, to broadcast over images."""
  return np.asarray(a, np.float32)[:, None, None]


# ---------------------------------------------------------------------------------------------
# The head model: a star-shaped latitude/longitude mesh through the mean face (built once).

# Surface points of the mean head that are not landmarks (cm, model frame; the subject's right side
# and the midline, mirrored to the left). They shape forehead, orbits, nose, cheeks and chin.
_CONTROLS_RIGHT = (
    (0.0, -1.8, 9.2),  # glabella
    (0.0, -4.5, 9.0), (-2.8, -4.5, 8.6), (-5.2, -4.0, 7.0),  # forehead
    (0.0, -7.5, 8.0), (-2.8, -7.5, 7.6), (-5.2, -7.0, 6.2),
    (-6.7, -2.0, 4.5),  # temple
    (-3.1, -1.25, 7.6), (-3.1, 0.0, 7.8), (-3.1, 1.35, 7.45), (-5.3, 0.3, 5.9),  # orbit
    (-0.75, 0.9, 8.95), (-0.95, 2.3, 9.4), (-1.8, 3.5, 8.6), (-1.1, 3.7, 9.8),  # nose
    (-0.5, 3.5, 10.9), (0.0, 4.1, 10.6),
    (-4.8, 2.4, 6.6), (-3.8, 4.4, 7.4), (-5.6, 4.6, 5.2),  # cheek
    (-2.4, 5.3, 8.5), (-3.4, 7.1, 7.6), (-2.6, 8.6, 7.7),  # around the mouth
    (0.0, 5.3, 9.65), (-1.0, 5.45, 9.3),  # philtrum, upper lip skin
    (0.0, 8.9, 8.85), (0.0, 10.1, 9.0), (-1.6, 9.9, 8.5),  # chin
    (-6.3, 4.5, 0.5),  # below the ear
)
_ROWS, _COLS = 60, 76  # Mesh latitude rows (top to neck) and longitude columns (wrapping).
_NECK_RADIUS, _NECK_AXIS_Z, _NECK_END_Y = 5.4, -0.8, 24.0
_SKULL_CENTRE, _SKULL_AXES = np.array([0.0, -2.5, -0.6]), np.array([7.6, 10.2, 9.8])
_LAT_RANGE = (0.03, np.pi - 0.22)  # From the crown to the neck, 25 cm below the eyes.


def _under_jaw() -> Array:
  """Points behind and under jaw points 3-8: the jaw landmarks stay on the frontal outline."""
  return geometry.MEAN_FACE_3D[3:9].astype(np.float64) * [0.93, 1, 1] + [0, 0.1, -2.4]


def _mirrored(points) -> Array:
  """[K, 3] points plus the mirror images of those off the midline."""
  points = np.asarray(points, np.float64)
  off = points[points[:, 0] != 0] * [-1, 1, 1]
  return np.concatenate([points, off])


def _base_radius(directions: Array) -> Array:
  """Distance from the origin along unit `directions` [..., 3] to an ellipsoid skull smoothly
  joined to a vertical neck cylinder: the head before the face is carved in."""
  d = directions
  a = (d / _SKULL_AXES) ** 2
  o = -_SKULL_CENTRE / _SKULL_AXES
  qa, qb, qc = a.sum(-1), 2 * (d / _SKULL_AXES * o).sum(-1), (o ** 2).sum() - 1
  skull = (-qb + np.sqrt(qb ** 2 - 4 * qa * qc)) / (2 * qa)
  ca = d[..., 0] ** 2 + d[..., 2] ** 2
  cb = -2 * _NECK_AXIS_Z * d[..., 2]
  cc = _NECK_AXIS_Z ** 2 - _NECK_RADIUS ** 2
  with np.errstate(divide='ignore', invalid='ignore'):
    cyl = np.where(ca > 1e-9, (-cb + np.sqrt(cb ** 2 - 4 * ca * cc)) / (2 * np.maximum(ca, 1e-9)),
                   np.inf)
    cap = np.where(d[..., 1] > 1e-9, _NECK_END_Y / d[..., 1], np.inf)
  neck = np.minimum(cyl, cap)
  neck = np.where(np.isfinite(neck), neck * _smoothstep(d[..., 1] * neck, 0.0, 6.0), 0.0)
  k = 3.0  # Smooth maximum: no crease where the neck meets the skull.
  return (skull + neck + np.sqrt((skull - neck) ** 2 + k * k)) / 2


def _fibonacci_sphere(n: int) -> Array:
  """[n, 3] nearly evenly spread unit vectors."""
  i = np.arange(n) + 0.5
  y = 1 - 2 * i / n
  r, phi = np.sqrt(1 - y * y), np.pi * (1 + 5 ** 0.5) * i
  return np.stack([r * np.sin(phi), y, r * np.cos(phi)], -1)


def _spherical_spline(centres: Array, values: Array, queries: Array) -> Array:
  """Interpolates `values` [K] given at unit vectors `centres` [K, 3] at unit `queries` [..., 3]:
  the polyharmonic r^3 spline with a linear term (smooth, exact at the centres)."""
  k = len(centres)
  kernel = lambda a, b: np.linalg.norm(a[..., :, None, :] - b[None], axis=-1) ** 3
  poly = lambda a: np.concatenate([np.ones(a.shape[:-1] + (1,)), a], -1)
  system = np.block([[kernel(centres, centres), poly(centres)],
                     [poly(centres).T, np.zeros((4, 4))]])
  coef = np.linalg.solve(system, np.concatenate([values, np.zeros(4)]))
  flat = queries.reshape(-1, 3)
  out = kernel(flat, centres) @ coef[:k] + poly(flat) @ coef[k:]
  return out.reshape(queries.shape[:-1])


def _warped_grid(n: int, lo: float, hi: float, density, wrap: bool) -> Array:
  """`n` parameter values in [lo, hi] spaced inversely to `density` (fine where the face is)."""
  t = np.linspace(lo, hi, 4097)
  cdf = np.concatenate([[0], np.cumsum((density(t[1:]) + density(t[:-1])) / 2)])
  targets = np.arange(n) / (n if wrap else n - 1) * cdf[-1]
  return np.interp(targets, cdf, t)


@dataclasses.dataclass(frozen=True)
class _HeadModel:
  """The mean head mesh and its static per-vertex attributes (V = R * C, row-major)."""
  vertices: Array  # [V, 3] model frame, cm
  normals: Array  # [V, 3] outward unit normals: the direction hair thickens the head
  quads: Array  # [Q, 4] vertex indices (r, c), (r, c + 1), (r + 1, c), (r + 1, c + 1)
  quad_top: Array  # [Q] smallest mean model y of each quad's corners: is it under the clothes?
  longitude: Array  # [V] radians around the vertical axis, 0 at the front
  hair_u: Array  # [V] 0 at the front of the head, 1 at the back
  model_y: Array  # [V] mean model y: sets the hairline and where clothes cover the neck
  neck_weight: Array  # [V] 0 on the head, 1 on the neck: blends head and torso rotations
  cavity: Array  # [V] 0..1 concavity: ambient occlusion in eye sockets, nostrils, mouth corners
  uv: Array  # [V, 2] texture coordinates, cm along the surface
  landmark_vertex: Array  # [P] the vertex nearest each mean landmark (for its surface normal)


def _grid_normals(vertices: Array) -> Array:
  """Outward unit normals [..., R, C, 3] of a latitude/longitude vertex grid [..., R, C, 3]."""
  d_lon = np.roll(vertices, -1, axis=-2) - np.roll(vertices, 1, axis=-2)
  d_lat = np.concatenate([vertices[..., 1:2, :, :] - vertices[..., :1, :, :],
                          vertices[..., 2:, :, :] - vertices[..., :-2, :, :],
                          vertices[..., -1:, :, :] - vertices[..., -2:-1, :, :]], axis=-3)
  n = np.cross(d_lon, d_lat)
  return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-9)


@functools.cache
def _head_model() -> _HeadModel:
  """Builds the mean head: base skull + neck, carved through the mean keypoints by a spline."""
  keypoints = np.concatenate([geometry.MEAN_FACE_3D.astype(np.float64),
                              _mirrored(np.concatenate([_CONTROLS_RIGHT, _under_jaw()]))])
  key_dirs = keypoints / np.linalg.norm(keypoints, axis=-1, keepdims=True)
  anchors = _fibonacci_sphere(160)
  far = (anchors @ key_dirs.T).max(-1) < np.cos(0.38)  # Away from the face: keep the base shape.
  centres = np.concatenate([key_dirs, anchors[far]])
  offsets = np.concatenate([np.linalg.norm(keypoints, axis=-1) - _base_radius(key_dirs),
                            np.zeros(far.sum())])

  lat = _warped_grid(_ROWS, *_LAT_RANGE,
                     lambda t: 1 + 2.0 * np.exp(-((t - 1.75) / 0.7) ** 2), wrap=False)
  lon = _warped_grid(_COLS, -np.pi, np.pi, lambda t: 1 + 2.5 * np.exp(-(t / 1.0) ** 2),
                     wrap=True)
  lat_g, lon_g = np.meshgrid(lat, lon, indexing='ij')
  dirs = np.stack([np.sin(lat_g) * np.sin(lon_g), -np.cos(lat_g), np.sin(lat_g) * np.cos(lon_g)],
                  -1)
  radius = _base_radius(dirs) + _spherical_spline(centres, offsets, dirs)
  grid = dirs * radius[..., None]  # [R, C, 3]

  normals = _grid_normals(grid)
  smooth = sum(np.roll(np.roll(grid, dr, 0), dc, 1) for dr in (-2, 0, 2) for dc in (-2, 0, 2)) / 9
  cavity = np.clip(((smooth - grid) * normals).sum(-1) / 0.5, 0, 1)
  cavity[:2] = cavity[-2:] = 0  # The row roll wraps between crown and neck.

  r, c = np.meshgrid(np.arange(_ROWS - 1), np.arange(_COLS), indexing='ij')
  c1 = (c + 1) % _COLS
  quads = np.stack([r * _COLS + c, r * _COLS + c1, (r + 1) * _COLS + c, (r + 1) * _COLS + c1],
                   -1).reshape(-1, 4)
  vertices = grid.reshape(-1, 3)
  dist = np.linalg.norm(vertices[None] - geometry.MEAN_FACE_3D[:, None], axis=-1)
  return _HeadModel(
      vertices=vertices.astype(np.float32),
      normals=normals.reshape(-1, 3).astype(np.float32),
      quads=quads,
      quad_top=vertices[quads, 1].min(-1).astype(np.float32),
      longitude=lon_g.reshape(-1).astype(np.float32),
      hair_u=((1 - np.cos(lon_g)) / 2).reshape(-1).astype(np.float32),
      model_y=vertices[:, 1].astype(np.float32),
      neck_weight=_smoothstep(vertices[:, 1], 12.0, 17.0).astype(np.float32),
      cavity=cavity.reshape(-1).astype(np.float32),
      uv=np.stack([lon_g * 9.0, lat_g * 9.0], -1).reshape(-1, 2).astype(np.float32),
      landmark_vertex=dist.argmin(-1))


# ---------------------------------------------------------------------------------------------
# Rasterisation: quads split into sub-pixel samples, z-buffered with np.maximum.at.

_SAMPLE_SPACING = 1.0  # Max distance between samples along a quad's sides, in pixels.


@functools.cache
def _bilinear_weights(steps_u: int, steps_v: int) -> Array:
  """[steps_v * steps_u, 4] weights of the corners (00, 01, 10, 11) at a grid of cell centres."""
  t, u = np.meshgrid((np.arange(steps_v) + 0.5) / steps_v, (np.arange(steps_u) + 0.5) / steps_u,
                     indexing='ij')
  t, u = t.reshape(-1), u.reshape(-1)
  return np.stack([(1 - t) * (1 - u), (1 - t) * u, t * (1 - u), t * u], -1).astype(np.float32)


def _rasterize(data: Array, quads: Array, keep: Array, size: int,
               static: Array | None = None) -> tuple[Array, Array]:
  """Z-buffers a batch of quad meshes: each quad becomes a grid of samples finer than a pixel.

  Args:
    data: [N, V, D] per vertex: x, y (pixels of the size x size target), depth (larger = nearer),
      then D - 3 attributes to interpolate.
    quads: [Q, 4] vertex indices; keep: [N, Q] which quads to draw (e.g. front-facing).
    static: [V, E] more attributes, the same for every face (read from a small, cached table).
  Returns:
    depth [N, size, size] (-inf where nothing was drawn) and attributes [D - 3 + E, N, size,
    size].
  """
  n, v, d = data.shape
  flat = data.reshape(n * v, d).astype(np.float32)  # The depth test compares float32 samples.
  face, quad = np.nonzero(keep)
  vertex = (face[:, None] * v + quads[quad]).T  # [4, M] corner vertices, a row per corner.
  x, y = flat[:, 0][vertex], flat[:, 1][vertex]
  seen = ((np.maximum(np.maximum(x[0], x[1]), np.maximum(x[2], x[3])) > -1)
          & (np.minimum(np.minimum(x[0], x[1]), np.minimum(x[2], x[3])) < size)
          & (np.maximum(np.maximum(y[0], y[1]), np.maximum(y[2], y[3])) > -1)
          & (np.minimum(np.minimum(y[0], y[1]), np.minimum(y[2], y[3])) < size))
  side = lambda a, b: np.hypot(x[a] - x[b], y[a] - y[b])
  steps_u = np.clip(np.ceil(np.maximum(side(1, 0), side(3, 2)) / _SAMPLE_SPACING), 1, 32)
  steps_v = np.clip(np.ceil(np.maximum(side(2, 0), side(3, 1)) / _SAMPLE_SPACING), 1, 32)
  key = (steps_u * 64 + steps_v).astype(np.int32)[seen]
  order = np.argsort(key, kind='stable')
  key, vertex = key[order], vertex[:, seen][:, order]
  face = face[seen][order].astype(np.int32)
  x, y, z = [flat[:, c][vertex] for c in range(3)]  # [4, M] each, grouped by sample pattern.
  bounds = np.flatnonzero(np.diff(key, prepend=-1, append=-1))
  # Pass 1: positions and depths of all samples, z-buffered; pass 2: attributes of the winners.
  # A sample is kept as its pixel, depth and row (offset + sample * G + member in its group).
  zbuf = np.full(n * size * size, -np.inf, np.float32)
  patterns, pixels, depths, rows = [], [], [], []
  offset = 0
  for start, stop in zip(bounds[:-1], bounds[1:]):
    weights = _bilinear_weights(key[start] // 64, key[start] % 64)  # [S, 4]
    lerp = lambda c: sum(weights[:, j, None] * c[j, None, start:stop] for j in range(4))
    sx, sy = lerp(x), lerp(y)  # [S, G]
    inside = (sx >= -0.5) & (sx < size - 0.5) & (sy >= -0.5) & (sy < size - 0.5)
    sample, member = np.nonzero(inside)
    sx, sy = sx[sample, member], sy[sample, member]
    pixels.append((face[start + member] * size + (sy + 0.5).astype(np.int32)) * size
                  + (sx + 0.5).astype(np.int32))
    depths.append(lerp(z)[sample, member])
    rows.append(offset + sample * (stop - start) + member)
    patterns.append(weights)
    offset += weights.shape[0] * (stop - start)
  pix, depth, row = np.concatenate(pixels), np.concatenate(depths), np.concatenate(rows)
  np.maximum.at(zbuf, pix, depth)
  # Each drawn pixel takes the attributes of its last sample (in row order) at the winning depth.
  owner = np.zeros(zbuf.shape, np.int64)
  won = np.flatnonzero(depth >= zbuf[pix])
  owner[pix[won]] = row[won]
  drawn = np.flatnonzero(zbuf > -np.inf)
  owner = owner[drawn]
  group_first = np.cumsum([0] + [w.shape[0] * (b - a) for w, a, b in
                                 zip(patterns, bounds[:-1], bounds[1:])])
  group = np.searchsorted(group_first, owner, side='right') - 1
  members = np.diff(bounds)[group]
  local = owner - group_first[group]
  weight_first = np.cumsum([0] + [w.shape[0] for w in patterns])
  pattern = weight_first[group] + local // members
  weights = [w[pattern] for w in np.concatenate(patterns).T]  # 4 x [W]
  slot = bounds[group] + local % members
  corners = [c[slot] for c in vertex]  # 4 x [W]
  columns = list(flat[:, 3:].T.copy())  # 1-D gathers: much faster than 2-D.
  if static is not None:
    columns += list(np.asarray(static, np.float32).T.copy())
    local = [c % v for c in corners]
  attrs = np.zeros((len(columns), n * size * size), np.float32)
  for k, (values, out) in enumerate(zip(columns, attrs)):
    index = corners if k < d - 3 else local
    out[drawn] = sum(w * values[c] for w, c in zip(weights, index))
  return zbuf.reshape(n, size, size), attrs.reshape(len(columns), n, size, size)


# ---------------------------------------------------------------------------------------------
# Shape variation: linear 3D blendshapes over the mesh, the landmarks and feature anchors.

# Feature anchors that deform with the face (model frame, cm): eyeball centres, nostrils, ears.
_EYE_CENTRES = np.array([[-3.1, 0.02, 7.15], [3.1, 0.02, 7.15]])
_NOSTRILS = np.array([[-0.72, 4.2, 9.45], [0.72, 4.2, 9.45]])
_EARS = np.array([[-7.7, 0.3, -0.9], [7.7, 0.3, -0.9]])
_ANCHORS = np.concatenate([_EYE_CENTRES, _NOSTRILS, _EARS])  # [6, 3]
_JAW_PIVOT = np.array([0.8, -0.5])  # (y, z) of the jaw's hinge axis (parallel to x).
_STOMION_Y = 6.9  # Height of the lips' meeting line on the mean face.


def _mode_fields(p: Array) -> dict[str, Array]:
  """Displacement fields [M, 3] at points `p` [M, 3] (mean head), one per blendshape, unit size."""
  x, y, z = p[:, 0], p[:, 1], p[:, 2]
  ax, sx, zero = np.abs(x), np.sign(x), np.zeros_like(x)

  def bump(centre, sigma):
    d = (np.stack([ax, y, z], -1) - centre) / np.asarray(sigma, np.float64)
    return np.exp(-0.5 * (d * d).sum(-1))

  vec = lambda dx, dy, dz: np.stack([dx + zero, dy + zero, dz + zero], -1)
  right = _smoothstep(-x, -0.3, 0.3)  # 1 on the subject's right side, 0 on the left.
  eye, brow = bump((3.1, 0, 7.4), 1.3), bump((3.4, -2.3, 8.1), 1.4) * _smoothstep(-y, 0.3, 1.5)
  nose, nose_base = bump((0, 2.5, 9.8), (1.5, 2.2, 2.0)), bump((0, 3.9, 9.4), 1.2)
  mouth = bump((0, 7.0, 9.0), (1.9, 1.1, 1.5))
  smile = (vec(0.45 * sx, -0.5, -0.3) * bump((2.5, 7.0, 8.0), 0.9)[:, None]
           + vec(0, -0.3, 0.2) * bump((4.0, 4.5, 7.0), 1.5)[:, None])
  lid = 0.8 * bump((3.15, -0.45, 7.4), (0.8, 0.5, 0.8)) * _smoothstep(-y, -0.1, 0.2)
  # The jaw hinges about _JAW_PIVOT: the lips part sharply between the mouth corners and the skin
  # stretches smoothly beyond them; the neck below and the head behind stay put.
  sharpness = 0.03 + 0.8 * _smoothstep(ax, 2.0, 3.6)
  jaw = (1 / (1 + np.exp(-(y - _STOMION_Y) / sharpness)) * (1 - _smoothstep(y, 12.5, 16.0))
         * _smoothstep(z, -1.0, 2.0))
  dy, dz = y - _JAW_PIVOT[0], z - _JAW_PIVOT[1]
  return {
      'width': vec(x, 0, 0), 'height': vec(0, y, 0), 'depth': vec(0, 0, z),
      'lower_face': vec(0, (y - 1) * _smoothstep(y, 1, 4), 0),
      'jaw_width': vec(x * _smoothstep(y, 3, 9) * _smoothstep(z, -3, 1), 0, 0),
      'chin_forward': vec(0, 0, bump((0, 10, 8.7), 1.8)),
      'chin_length': vec(0, bump((0, 10, 8.7), 2.0), 0),
      'cheeks': vec(sx, 0, 0.5) * bump((4.6, 4.2, 6.2), 2.0)[:, None],
      'eye_spacing': vec(sx * eye, 0, 0),
      'eye_size': vec(x - 3.1 * sx, y, 0) * bump((3.1, 0, 7.4), 1.0)[:, None],
      'eye_height': vec(0, eye, 0),
      'eye_tilt': vec(0, (ax - 3.1) * eye, 0),
      'nose_length': vec(0, (y + 0.6) * nose * _smoothstep(y, -0.6, 0.5), 0),
      'nose_width': vec(x * nose_base, 0, 0),
      'nose_projection': vec(0, 0, (z - 8.6) * nose * _smoothstep(z, 8.6, 9.2)),
      'mouth_width': vec(x * mouth, 0, 0),
      'mouth_height': vec(0, mouth, 0),
      'lip_thickness': vec(0, (y - _STOMION_Y) * mouth, 0),
      'jaw_open_cos': vec(0, jaw * dy, jaw * dz),  # Coefficient cos(angle) - 1.
      'jaw_open_sin': vec(0, jaw * dz, -jaw * dy),  # Coefficient sin(angle).
      'smile_right': smile * right[:, None], 'smile_left': smile * (1 - right)[:, None],
      'brow_right': vec(0, -brow * right, 0), 'brow_left': vec(0, -brow * (1 - right), 0),
      'lid_right': vec(0, lid * right, 0), 'lid_left': vec(0, lid * (1 - right), 0),
  }


# Standard deviations of the identity blendshapes (cm per unit field; global ones are fractions).
_IDENTITY_STD = {
    'width': 0.05, 'height': 0.04, 'depth': 0.04, 'lower_face': 0.06, 'jaw_width': 0.07,
    'chin_forward': 0.35, 'chin_length': 0.3, 'cheeks': 0.25, 'eye_spacing': 0.22,
    'eye_size': 0.1, 'eye_height': 0.2, 'eye_tilt': 0.08, 'nose_length': 0.08, 'nose_width': 0.12,
    'nose_projection': 0.15, 'mouth_width': 0.09, 'mouth_height': 0.2, 'lip_thickness': 0.2,
}
_MODE_NAMES = tuple(_mode_fields(np.zeros((1, 3))))


@functools.cache
def _shape_basis() -> tuple[Array, Array]:
  """Mean points and blendshapes over [mesh vertices; 68 landmarks; anchors]: [V + 74, 3] and
  [modes, (V + 74) * 3], so a face's points are one matrix product away."""
  points = np.concatenate([_head_model().vertices, geometry.MEAN_FACE_3D, _ANCHORS]).astype(
      np.float64)
  fields = _mode_fields(points)
  basis = np.stack([fields[k].reshape(-1) for k in _MODE_NAMES])
  return points.astype(np.float32), basis.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Random parameters: one generator per face, so face i depends only on (seed, i, config).

_OCCLUDER_KINDS = ('hand', 'object', 'sunglasses')


def _beta_in(rng: np.random.Generator, a: float, lo: float, hi: float) -> float:
  return lo + (hi - lo) * rng.beta(a, a)


def _sample_pose(rng: np.random.Generator, config: RenderConfig) -> Array:
  """(yaw, pitch, roll) radians from the configured distribution (see RenderConfig)."""
  (ylo, yhi), (plo, phi), (rlo, rhi) = (config.yaw_range_deg, config.pitch_range_deg,
                                        config.roll_range_deg)
  if config.pose_distribution == 'wide':
    yaw = rng.uniform(ylo, yhi)
    pitch, roll = _beta_in(rng, 3, plo, phi), _beta_in(rng, 3, rlo, rhi)
  else:
    flo, fhi = max(ylo, -60.0), min(yhi, 60.0)
    yaw = _beta_in(rng, 5, *((flo, fhi) if flo <= fhi else (ylo, yhi)))
    shrink = lambda lo, hi: ((5 * lo + hi) / 6, (lo + 5 * hi) / 6)  # The middle two thirds.
    pitch, roll = _beta_in(rng, 5, *shrink(plo, phi)), _beta_in(rng, 5, *shrink(rlo, rhi))
  return np.radians([yaw, pitch, roll])


def _sample_face(rng: np.random.Generator, config: RenderConfig) -> dict[str, Array]:
  """Every random number of one face, always drawn in the same order."""
  u = rng.uniform
  pose = _sample_pose(rng, config)
  coef = dict.fromkeys(_MODE_NAMES, 0.0)
  for name, std in _IDENTITY_STD.items():
    coef[name] = std * rng.standard_normal()
  jaw = u(0.02, 0.3) if u() < 0.45 else 0.0
  coef['jaw_open_cos'], coef['jaw_open_sin'] = np.cos(jaw) - 1, np.sin(jaw)
  smile = u(0.2, 1.0) if u() < 0.5 else 0.0
  coef['smile_right'], coef['smile_left'] = smile * u(0.8, 1.2), smile * u(0.8, 1.2)
  brow = np.clip(rng.normal(0.05, 0.3), -0.5, 1.0)
  coef['brow_right'], coef['brow_left'] = brow + rng.normal(0, 0.08), brow + rng.normal(0, 0.08)
  lid = u(0.0, 0.3) + 0.2 * smile
  coef['lid_right'], coef['lid_left'] = lid + u(0, 0.08), lid + u(0, 0.08)
  hair_kind = u()  # Dark, brown, fair or grey.
  hair_tone = (u(0.04, 0.16) if hair_kind < 0.55 else u(0.16, 0.35) if hair_kind < 0.8
               else u(0.4, 0.75))
  light_az, light_el = np.radians(u(-75, 75)), np.radians(u(-15, 65))
  gaze_follow = u(0.0, 0.8)
  return {
      'pose': pose,
      'coef': np.array([coef[k] for k in _MODE_NAMES]),
      'box_fraction': u(*config.box_fraction),
      'centre': np.array([0.5, 0.53]) + config.center_jitter * rng.standard_normal(2),
      'gaze': np.clip([-gaze_follow * pose[0] + rng.normal(0, 0.12),
                       -gaze_follow * pose[1] + rng.normal(0, 0.08)], -0.45, 0.35),
      # Appearance of skin, hair, eyes, lips.
      'skin': u(0.35, 0.85), 'skin_texture': u(0.03, 0.12), 'hair_tone': hair_tone,
      'hairline': u(-1.0, 1.8) if u() > 0.07 else 9.0,  # cm above the mean hairline; 9 = bald.
      'hair_softness': u(0.3, 1.0), 'hair_thickness': u(0.3, 2.2),
      'hairline_wave': np.concatenate([rng.normal(0, [0.6, 0.5, 0.3]), u(0, 2 * np.pi, 3)]),
      'long_hair': float(u() < 0.35), 'long_hair_length': u(5.0, 14.0),
      'ears_hidden': float(u() < 0.25),
      'brow_tone': u(0.6, 1.1), 'brow_width': u(0.7, 1.3), 'brow_density': u(0.55, 0.95),
      'iris_tone': u(0.08, 0.45), 'sclera': u(0.62, 0.85), 'pupil': u(0.3, 0.5),
      'lip_tone': u(0.62, 0.86), 'teeth': u(0.55, 0.85),
      # Light: a key light from the camera's side of the face, a fill light, a specular sheen.
      'light': np.array([np.sin(light_az) * np.cos(light_el), -np.sin(light_el),
                         np.cos(light_az) * np.cos(light_el)]),
      'key': u(0.5, 1.0), 'ambient': u(0.15, 0.45), 'fill': u(0.0, 0.25),
      'specular': u(0.0, 0.15), 'shininess': u(8, 30),
      # Body and background.
      'collar': u(13.5, 16.0), 'torso_tone': u(0.05, 0.9), 'torso_width': u(16.0, 22.0),
      'background': u(0.05, 0.95), 'background_gradient': rng.normal(0, 0.2, 2),
      'background_noise': u(0.0, 0.3), 'shapes': np.stack([
          rng.integers(0, 3, 8), u(0, 1, 8), u(0, 1, 8), u(0.03, 0.4, 8), u(0.03, 0.4, 8),
          u(0, np.pi, 8), u(0, 1, 8), u(0.3, 1.0, 8)], -1),
      'texture_offset': rng.integers(0, 4096, 4),
      # External occluder (drawn for has_occluder only, but always sampled).
      'has_occluder': float(u() < config.occlusion_fraction),
      'occluder_kind': rng.choice(len(_OCCLUDER_KINDS), p=[0.45, 0.35, 0.2]),
      'occluder_centre': np.array([u(-0.4, 0.4), u(-0.35, 0.5)]),
      'occluder_size': u(0.2, 0.36), 'occluder_angle': u(0, 2 * np.pi),
      'occluder_tone': u(0.1, 0.9), 'occluder_texture': rng.integers(0, 4),
      'occluder_frequency': u(0.05, 0.3), 'occluder_contrast': u(0.05, 0.3),
      'occluder_aspect': u(0.35, 1.0), 'occluder_flip': rng.choice([-1.0, 1.0]),
      # Camera and film.
      'blur': u(*config.blur_sigma_px), 'noise': u(*config.noise_std),
      'gamma': np.exp(u(*np.log(config.gamma))), 'contrast': u(*config.contrast),
      'brightness': rng.normal(0, 0.05),
  }


# ---------------------------------------------------------------------------------------------
# Textures and small image helpers.

_TEXTURE_SIZE = 512


@functools.cache
def _textures() -> dict[str, Array]:
  """Fixed noise textures [T, T] with zero mean and unit std, read at per-face offsets."""
  rng = np.random.default_rng(7)
  freq = np.fft.fftfreq(_TEXTURE_SIZE)
  fy, fx = np.meshgrid(freq, freq, indexing='ij')
  radial = np.sqrt(fx ** 2 + fy ** 2) + 1e-3

  def filtered(gain: Array) -> Array:
    t = np.fft.ifft2(np.fft.fft2(rng.standard_normal(gain.shape)) * gain).real
    return ((t - t.mean()) / t.std()).astype(np.float32)

  return {
      'white': rng.standard_normal((_TEXTURE_SIZE, _TEXTURE_SIZE)).astype(np.float32),
      'smooth': filtered(radial ** -1.5 * (radial < 0.2)),  # Fractal: skin blotches, clutter.
      'hair': filtered(np.exp(-(fy / 0.012) ** 2 - (fx / 0.2) ** 2)),  # Streaks along axis 0.
  }


def _texture(name: str, rows: Array, cols: Array) -> Array:
  """Texture values at integer-rounded (row, col) texel coordinates, wrapping around."""
  t = _textures()[name].reshape(-1)
  mask = _TEXTURE_SIZE - 1  # A power of two: `& mask` is a cheap non-negative modulo.
  r = np.rint(rows).astype(np.int64) & mask
  c = np.rint(cols).astype(np.int64) & mask
  return t[r * _TEXTURE_SIZE + c]


@functools.cache
def _tiled(name: str, reps: int) -> Array:
  return np.tile(_textures()[name], (reps, reps))


def _texture_crops(name: str, offsets: Array, size: int) -> Array:
  """[N, size, size] windows of a texture at per-face integer `offsets` [N, 2]."""
  tiled = _tiled(name, 1 + -(-size // _TEXTURE_SIZE))
  return np.stack([tiled[r:r + size, c:c + size] for r, c in offsets % _TEXTURE_SIZE])


def _upsample2(x: Array) -> Array:
  """Bilinear 2x upsampling [N, A, B] -> [N, 2A, 2B] with pixel centres aligned (SPEC)."""
  def along(a: Array, axis: int) -> Array:
    a = np.moveaxis(a, axis, 0)  # Views throughout: the results are written in place.
    out = np.empty((2 * len(a),) + a.shape[1:], a.dtype)
    quarter, rest = 0.25 * a, 0.75 * a
    even, odd = out[0::2], out[1::2]
    np.add(quarter[:1], rest[:1], out=even[:1])  # The edge's outer neighbour is itself.
    np.add(quarter[:-1], rest[1:], out=even[1:])
    np.add(rest[:-1], quarter[1:], out=odd[:-1])
    np.add(rest[-1:], quarter[-1:], out=odd[-1:])
    return np.moveaxis(out, 0, axis)
  return np.ascontiguousarray(along(along(x, 1), 2))


def _rotation(angles: Array) -> Array:
  """[N, 3, 3] rotations Rz(roll) Rx(pitch) Ry(yaw) from (yaw, pitch, roll) [N, 3]."""
  c, s = np.cos(angles), np.sin(angles)
  one, zero = np.ones(len(angles)), np.zeros(len(angles))
  ry = np.stack([c[:, 0], zero, s[:, 0], zero, one, zero, -s[:, 0], zero, c[:, 0]], -1)
  rx = np.stack([one, zero, zero, zero, c[:, 1], -s[:, 1], zero, s[:, 1], c[:, 1]], -1)
  rz = np.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], -1)
  return (rz.reshape(-1, 3, 3) @ rx.reshape(-1, 3, 3) @ ry.reshape(-1, 3, 3)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# One batch of faces.

_VISIBILITY_TOLERANCE_CM = 1.0  # A landmark this far behind the drawn surface is hidden.


@dataclasses.dataclass(frozen=True)
class _Scene:
  """A batch's geometry in image space: pixels of the S x S image, depth in pixels (larger is
  nearer)."""
  rotation: Array  # [N, 3, 3] model -> camera for the head
  scale: Array  # [N] f, pixels per cm
  landmarks: Array  # [N, P, 3] x, y, depth
  anchors: Array  # [N, 6, 3] eyeballs, nostrils, ears: x, y, depth
  vertices: Array  # [N, V, 3] x, y, depth
  normals: Array  # [N, V, 3] camera frame
  hair: Array  # [N, V] signed depth inside the hairline, cm (see _hair_cover)
  torso_rotation: Array  # [N, 3, 3]
  offset: Array  # [N, 2] image position of the model origin: pixel = offset + f * camera xy


# The mean hairline: model y (cm) against |longitude| (radians): forehead, receding temples,
# sideburns in front of the ear, around the ear, down to the nape.
_HAIRLINE = (np.radians([0, 35, 60, 75, 92, 110, 135, 180]),
             np.array([-7.0, -6.3, -3.0, 1.0, -1.8, -1.2, 3.0, 4.5]))


def _hair(model: _HeadModel, p: dict[str, Array]) -> tuple[Array, Array]:
  """Signed depth inside the hairline and hair thickness (cm) [N, V]: the hairline drops from the
  forehead to the nape, wavy per face; hair is thin at the hairline, fuller and uneven inside."""
  hairline = np.interp(np.abs(model.longitude), *_HAIRLINE)
  wave = p['hairline_wave'].astype(np.float32)  # float32: the sines are the costly part.
  wave = sum(wave[:, k, None] * np.sin((k + 1) * model.longitude + wave[:, k + 3, None])
             for k in range(3))
  depth = hairline[None] - model.model_y[None] - p['hairline'][:, None] + wave
  long = p['long_hair'][:, None] * p['long_hair_length'][:, None] * model.hair_u[None] ** 1.5
  depth = depth + long * _smoothstep(model.hair_u, 0.2, 0.4)[None]
  alpha = _hair_cover(depth, p['hair_softness'][:, None])
  off = p['texture_offset'][:, None]
  lumps = _texture('smooth', model.uv[None, :, 1] * 2 + off[..., 0],
                   model.uv[None, :, 0] * 2 + off[..., 1])
  thickness = (p['hair_thickness'][:, None] * _smoothstep(depth, 0.0, 5.0)
               * (0.4 + 0.6 * _smoothstep(-model.model_y, -2.0, 8.0))[None]  # Fuller on top.
               * np.clip(1 + 0.3 * lumps, 0.4, 1.6))
  return depth.astype(np.float32), (alpha * thickness).astype(np.float32)


def _hair_cover(depth: Array, softness: Array) -> Array:
  """Hair coverage 0..1 from the signed depth (cm) inside the hairline."""
  return np.clip(depth / softness + 0.5, 0, 1)


def _scene(p: dict[str, Array], size: int) -> _Scene:
  """Deforms, rotates and places the faces so a frontal one's box spans `box_fraction` of `size`."""
  model = _head_model()
  mean, basis = _shape_basis()
  n, v = len(p['coef']), len(model.vertices)
  # einsum, not BLAS: a face's points do not depend on the rest of the batch.
  points = mean + np.einsum('nm,mk->nk', p['coef'].astype(np.float32), basis).reshape(n, -1, 3)
  hair, thickness = _hair(model, p)
  vertices = points[:, :v] + thickness[..., None] * model.normals
  normals = _grid_normals(vertices.reshape(n, _ROWS, _COLS, 3)).reshape(n, v, 3)
  rot = _rotation(p['pose'])
  torso = _rotation(p['pose'] * [0.15, 0.1, 0.4])
  w = model.neck_weight[None, :, None]
  cam_v = (1 - w) * (vertices @ rot.transpose(0, 2, 1)) + w * (vertices @ torso.transpose(0, 2, 1))
  cam_n = _normalize((1 - w) * (normals @ rot.transpose(0, 2, 1))
                     + w * (normals @ torso.transpose(0, 2, 1)))
  cam_p = points[:, v:] @ rot.transpose(0, 2, 1)  # Landmarks and anchors.
  f = (size * p['box_fraction'] / MEAN_BOX_WIDTH_CM).astype(np.float32)
  xy = cam_p[:, :geometry.NUM_LANDMARKS, :2] * f[:, None, None]
  lo, hi = xy.min(1), xy.max(1)
  t = size * p['centre'] - (lo + hi) / 2
  t = np.clip(t, 1 - lo, size - 2 - hi)  # Keep every landmark inside the image.
  place = lambda c: np.concatenate([c[..., :2] * f[:, None, None] + t[:, None].astype(np.float32),
                                    c[..., 2:] * f[:, None, None]], -1)
  cam_p = place(cam_p)
  return _Scene(rotation=rot, scale=f, landmarks=cam_p[:, :geometry.NUM_LANDMARKS],
                anchors=cam_p[:, geometry.NUM_LANDMARKS:], vertices=place(cam_v),
                normals=cam_n, hair=hair, torso_rotation=torso, offset=t.astype(np.float32))


def _vertex_shading(scene: _Scene, p: dict[str, Array]) -> tuple[Array, Array]:
  """Per-vertex diffuse light factor and specular intensity [N, V]."""
  model = _head_model()
  light = p['light'].astype(np.float32)[:, None]
  fill_dir = _normalize(light * [-1, 0.3, 1])
  n = scene.normals
  dot = lambda d: n[..., 0] * d[..., 0] + n[..., 1] * d[..., 1] + n[..., 2] * d[..., 2]
  wrap = lambda d: np.clip((dot(d) + 0.25) / 1.25, 0, 1)
  cav = model.cavity[None]
  col = lambda k: p[k][:, None].astype(np.float32)
  lit = (col('ambient') * (1 - 0.7 * cav) + col('key') * wrap(light) * (1 - 0.3 * cav)
         + col('fill') * wrap(fill_dir))
  half = _normalize(light + [0, 0, 1])
  spec = col('specular') * np.clip(dot(half), 0, 1) ** col('shininess') * (1 - cav)
  return lit, spec


def _fill_holes(depth: Array, attrs: Array) -> tuple[Array, Array]:
  """Fills single undrawn pixels between drawn left/right or up/down neighbours (in place);
  attrs [D, N, h, h]."""
  flat_depth, flat_attrs = depth.reshape(-1), attrs.reshape(len(attrs), -1)
  drawn = np.isfinite(depth)
  for axis, step in ((2, 1), (1, depth.shape[2])):  # Neighbours are `step` apart when flat.
    hole = ~drawn & np.roll(drawn, 1, axis) & np.roll(drawn, -1, axis)
    border = [slice(None)] * 3
    for edge in (0, -1):  # No neighbours across the image border.
      border[axis] = edge
      hole[tuple(border)] = False
    i = np.flatnonzero(hole)
    flat_depth[i] = np.maximum(flat_depth[i - step], flat_depth[i + step])
    flat_attrs[:, i] = (flat_attrs[:, i - step] + flat_attrs[:, i + step]) / 2
    drawn.reshape(-1)[i] = True
  return depth, attrs


def _render_head(scene: _Scene, p: dict[str, Array], h: int) -> tuple[Array, Array, Array, Array]:
  """Z-buffers the heads at the h x h shading resolution.

  Returns depth [N, h, h] (-inf off the head), lit colour, light factor and the surface's mean-model
  y (where clothes cover the neck), each [N, h, h].
  """
  model = _head_model()
  lit, spec = _vertex_shading(scene, p)
  xy = (scene.vertices[..., :2] - 0.5) / 2  # Full-resolution pixels -> shading pixels.
  data = np.concatenate([xy, scene.vertices[..., 2:], lit[..., None], spec[..., None],
                         scene.hair[..., None]], -1)
  facing = scene.normals[..., 2] > -0.05
  keep = ((facing[:, model.quads[:, 0]] | facing[:, model.quads[:, 1]]  # Front-facing and
           | facing[:, model.quads[:, 2]] | facing[:, model.quads[:, 3]])  # above the clothes.
          & (model.quad_top[None] < p['collar'][:, None] + 2.0))
  static = np.concatenate([model.uv, model.model_y[:, None]], -1)
  depth, attrs = _fill_holes(*_rasterize(data, model.quads, keep, h, static))
  lit, spec, hair, u, v, model_y = attrs
  hair = _hair_cover(hair, _col(p['hair_softness']))
  off = p['texture_offset'][:, None, None]
  skin = _texture('smooth', v * 4 + off[..., 0], u * 4 + off[..., 1])
  strands = _texture('hair', v * 1.5 + off[..., 2], u * 6 + off[..., 3])
  albedo = (_col(p['skin']) * (1 - hair) * (1 + _col(p['skin_texture']) * skin)
            + _col(p['hair_tone']) * hair * (1 + 0.12 * strands + 0.15 * skin))
  return depth, albedo * lit + spec * (1 - 0.6 * hair), lit, model_y


def _rounded_mask(x: Array, y: Array, centre: Array, axes: Array, angle: Array) -> Array:
  """1 inside a rounded box (|u|^4 + |v|^4 < 1), with a soft 1-pixel edge. x, y: pixel grids;
  centre, axes [N, 1, 1, 2] and angle [N, 1, 1] per face."""
  centre, axes = centre.astype(np.float32), axes.astype(np.float32)
  c, s = np.cos(angle), np.sin(angle)
  dx, dy = x - centre[..., 0], y - centre[..., 1]
  u, v = (c * dx + s * dy) / axes[..., 0], (-s * dx + c * dy) / axes[..., 1]
  r = np.sqrt(np.sqrt((u * u) ** 2 + (v * v) ** 2))
  return np.clip((1 - r) * np.minimum(axes[..., 0], axes[..., 1]) + 0.5, 0, 1)


def _background(scene: _Scene, p: dict[str, Array], h: int) -> Array:
  """[N, h, h] clutter, out of focus (drawn at h / 2), and long hair falling behind the head."""
  b = (h + 1) // 2
  yy, xx = (np.mgrid[:b, :b].astype(np.float32) + 0.5) / b
  grad = p['background_gradient']
  bg = (_col(p['background']) + _col(grad[:, 0]) * (xx - 0.5) + _col(grad[:, 1]) * (yy - 0.5)
        + _col(p['background_noise']) * 0.3 * _texture_crops('smooth', p['texture_offset'][:, :2],
                                                                b))
  for shape in np.moveaxis(p['shapes'], 1, 0):  # [N, 8] parameters of one shape per face.
    kind, cx, cy, sx, sy, angle, level, alpha = map(_col, shape.T)
    sx, sy = np.where(kind == 2, 4 * sx, sx), np.where(kind == 2, 0.15 * sy, sy)  # Bars.
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * (xx - cx) + s * (yy - cy)) / sx, (-s * (xx - cx) + c * (yy - cy)) / sy
    r = np.where(kind == 1, np.sqrt(u * u + v * v), np.maximum(np.abs(u), np.abs(v)))
    mask = np.clip((1 - r) * np.minimum(sx, sy) * b + 0.5, 0, 1)  # Ellipse, rectangle or bar.
    bg = bg + alpha * mask * (level - bg)
  bg = _upsample2(bg)[:, :h, :h]
  f = scene.scale / 2
  yy, xx = np.mgrid[:h, :h].astype(np.float32)
  centre = (np.einsum('nij,j->ni', scene.rotation, [0.0, 3.0, -3.5])[:, :2] * f[:, None]
            + (scene.offset - 0.5) / 2)
  axes = np.stack([8.5 * f, (9.0 + p['long_hair_length'] / 2) * f], -1)
  m = np.flatnonzero(p['long_hair'] > 0)  # The other faces have no hair behind them.
  if not len(m):
    return bg
  hair = _rounded_mask(xx, yy, centre[m, None, None], axes[m, None, None], _col(p['pose'][m, 2]))
  strands = _texture_crops('hair', p['texture_offset'][m, 2:], h)
  tone = p['hair_tone'][m] * (p['ambient'][m] + 0.5 * p['key'][m])
  hair_colour = _col(tone) * (1 + 0.2 * strands)
  bg[m] += hair * (hair_colour - bg[m])
  return bg


def _dress(base: Array, scene: _Scene, p: dict[str, Array], depth: Array, model_y: Array) -> Array:
  """Shoulders in clothes over the background and over the neck below the collar [N, h, h]."""
  n, h = base.shape[:2]
  f = scene.scale / 2
  yy, xx = np.mgrid[:h, :h].astype(np.float32)
  shoulders = np.stack([np.zeros(n), p['collar'] + 10.0, np.full(n, -1.5)], -1)
  centre = (np.einsum('nij,nj->ni', scene.torso_rotation, shoulders)[:, :2] * f[:, None]
            + (scene.offset - 0.5) / 2).astype(np.float32)
  axes = np.stack([p['torso_width'] * f, 11.0 * f], -1)
  torso = _rounded_mask(xx, yy, centre[:, None, None], axes[:, None, None],
                        _col(p['pose'][:, 2] * 0.4))
  torso = torso * np.where(np.isfinite(depth), _smoothstep(model_y - _col(p['collar']), 0, 0.3), 1)
  shade = 0.75 + 0.25 * np.clip(_col(p['light'][:, 0]) * (xx - centre[:, 0, None, None])
                                / _col(axes[:, 0]), -1, 1)
  return base + torso * (_col(p['torso_tone']) * shade - base)


def _antialias(image: Array, drawn: Array) -> Array:
  """Softens the head's silhouette [N, h, h]: pixels on either side of it get a 3 x 3 mean."""
  edge = np.zeros_like(drawn)
  for axis in (1, 2):
    for shift in (1, -1):
      edge |= drawn != np.roll(drawn, shift, axis)
  blurred = image.copy()
  for axis in (1, 2):
    blurred = (np.roll(blurred, 1, axis) + blurred + np.roll(blurred, -1, axis)) / 3
  return np.where(edge, blurred, image)


def _landmark_self_occlusion(scene: _Scene, depth: Array) -> Array:
  """[N, P] True where the surface faces away or something nearer covers the landmark.

  Points on the outline (jaw points of a frontal face) count as facing up to 15 degrees beyond it,
  and the depth test reads the farthest surface around the point, so grazing surfaces next to it
  do not hide it.
  """
  model = _head_model()
  facing = scene.normals[:, model.landmark_vertex, 2] > -0.25
  far = depth
  for axis in (1, 2):  # Minimum over a 3 x 3 neighbourhood; undrawn pixels are -inf.
    far = np.minimum(far, np.minimum(np.roll(far, 1, axis), np.roll(far, -1, axis)))
  h = depth.shape[-1]
  ix = np.clip(np.rint((scene.landmarks[..., 0] - 0.5) / 2).astype(int), 0, h - 1)
  iy = np.clip(np.rint((scene.landmarks[..., 1] - 0.5) / 2).astype(int), 0, h - 1)
  surface = far[np.arange(len(depth))[:, None], iy, ix]
  hidden = surface > scene.landmarks[..., 2] + _VISIBILITY_TOLERANCE_CM * scene.scale[:, None]
  return ~facing | hidden


def _finish(image: Array, p: dict[str, Array]) -> Array:
  """Camera and film: blur, sensor noise, gamma, contrast, brightness; float [N, S, S] -> uint8."""
  n, s = image.shape[:2]
  col = lambda k: p[k].astype(np.float32)[:, None, None]
  a = col('blur') ** 2 / 2  # [a, 1 - 2a, a] along each axis: variance 2a = sigma^2.
  image = image.copy()
  for axis in (1, 2):  # In place, with one temporary: these are full-size float arrays.
    lo, mid, hi = [(slice(None),) * axis + (slice(start, stop),)
                   for start, stop in ((None, -2), (1, -1), (2, None))]
    change = image[lo] + image[hi]
    change -= 2 * image[mid]
    change *= a
    image[mid] += change
  offsets = p['texture_offset'][:, 1:3] * 7
  image += col('noise') * _texture_crops('white', offsets, s)
  image *= 1023
  image += 0.5
  np.clip(image, 0, 1023, out=image)
  levels = image.astype(np.int32)
  levels += 1024 * np.arange(n, dtype=np.int32)[:, None, None]  # Rows of the stacked tables.
  x = np.linspace(0, 1, 1024, dtype=np.float32)[None] ** p['gamma'][:, None].astype(np.float32)
  lut = (x - 0.5) * p['contrast'][:, None] + 0.5 + p['brightness'][:, None]
  lut = np.clip(np.rint(lut * 255), 0, 255).astype(np.uint8)
  return lut.reshape(-1)[levels]


def _empty(config: RenderConfig) -> dict[str, Array]:
  s, pts = config.image_size, geometry.NUM_LANDMARKS
  flags = np.zeros((0, pts), bool)
  return {'image': np.zeros((0, s, s), np.uint8), 'landmarks': np.zeros((0, pts, 2), np.float32),
          'visibility': flags, 'self_occluded': flags, 'occluded': flags,
          'has_occluder': np.zeros(0, bool), 'pose': np.zeros((0, 3), np.float32),
          'box': np.zeros((0, 4), np.float32)}


def render_sequence(poses: npt.ArrayLike, seed: int = 0, centres: npt.ArrayLike | None = None,
                    config: RenderConfig = RenderConfig()) -> dict[str, Array]:
  """One face, face 0 of `seed`, rendered at each of `poses` [T, 3] (yaw, pitch, roll radians):
  the frames of a video of one head turning. `centres` [T, 2] moves it (the landmark box's
  centre, fractions of the image's width and height; default: where the face was drawn).

  Identity, expression, light, background and film are the same in every frame; only the pose
  (and place) change. Returns `render_faces`' arrays, one row per frame.
  """
  config.validate()
  poses = np.asarray(poses, np.float64).reshape(-1, 3)
  if not np.isfinite(poses).all() or seed < 0:
    raise ValueError(f'poses must be finite [T, 3] radians and seed >= 0, got seed={seed}')
  face = _sample_face(np.random.default_rng([seed, 0]), config)
  centres = (np.broadcast_to(face['centre'], (len(poses), 2)) if centres is None
             else np.asarray(centres, np.float64).reshape(len(poses), 2))
  frames = [dict(face, pose=pose, centre=centre) for pose, centre in zip(poses, centres)]
  chunks = [_render_params(frames[start:start + config.batch_size], config)
            for start in range(0, len(frames), config.batch_size)]
  if not chunks:
    return _empty(config)
  return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _render_chunk(index: Array, seed: int, config: RenderConfig) -> dict[str, Array]:
  """Renders faces `index` of `seed` together."""
  return _render_params([_sample_face(np.random.default_rng([seed, int(i)]), config)
                         for i in index], config)


def _render_params(faces: list[dict[str, Array]], config: RenderConfig) -> dict[str, Array]:
  """Renders the faces of these parameters (`_sample_face`'s) together."""
  p = {k: np.stack([f[k] for f in faces]) for k in faces[0]}
  s = config.image_size
  h = (s + 1) // 2
  scene = _scene(p, s)
  depth, colour, lit, model_y = _render_head(scene, p, h)
  base = _antialias(np.where(np.isfinite(depth), colour, _background(scene, p, h)),
                    np.isfinite(depth))
  base = _dress(base, scene, p, depth, model_y)
  image = np.ascontiguousarray(_upsample2(base)[:, :s, :s])  # Painted in place, through views.
  image = _Painter(image, scene, p, depth, lit).paint()
  self_occluded = _landmark_self_occlusion(scene, depth)
  occluded = _occlude(image, scene, p, depth)
  has_occluder = p['has_occluder'] > 0.5
  landmarks = scene.landmarks[..., :2]
  return {
      'image': _finish(image, p),
      'landmarks': landmarks.astype(np.float32),
      'visibility': ~self_occluded & ~occluded,
      'self_occluded': self_occluded,
      'occluded': occluded,
      'has_occluder': has_occluder,
      'pose': p['pose'].astype(np.float32),
      'box': np.concatenate([landmarks.min(1), landmarks.max(1)], -1).astype(np.float32),
  }


# ---------------------------------------------------------------------------------------------
# 2D painting at full resolution: features from the projected landmarks, depth-tested.


@dataclasses.dataclass(frozen=True)
class _Patch:
  """Pixel windows of the full-resolution images, one per row M (all of one size h x w)."""
  face: Array  # [M, 1, 1] index into the batch
  y: Array  # [M, h, 1] integer rows
  x: Array  # [M, 1, w] integer columns
  size: int  # S, the images' size

  @functools.cached_property
  def flat(self) -> Array:
    """[M, h, w] indices into the flattened [N, S, S] images."""
    return (self.face * self.size + self.y) * self.size + self.x

  @property
  def fx(self) -> Array:
    return self.x.astype(np.float32)

  @property
  def fy(self) -> Array:
    return self.y.astype(np.float32)


def _patches(face: Array, lo: Array, hi: Array, size: int, margin: float = 2.0) -> _Patch:
  """Windows covering the boxes [lo, hi] [M, 2] (x, y) plus `margin` pixels."""
  extent = np.minimum(np.ceil((hi - lo).max(0) + 2 * margin).astype(int) + 1, size)
  start = np.clip(np.floor(lo - margin).astype(int), 0, size - extent)
  return _Patch(face[:, None, None], (start[:, 1, None] + np.arange(extent[1]))[:, :, None],
                (start[:, 0, None] + np.arange(extent[0]))[:, None, :], size)


def _read(buffer: Array, patch: _Patch) -> Array:
  """Shading-resolution values [N, H, H] at the patch pixels (nearest): [M, h, w]."""
  return buffer[patch.face, patch.y // 2, patch.x // 2]


def _blend(image: Array, patch: _Patch, alpha: Array, value: Array) -> None:
  """image <- image + alpha * (value - image) inside the patch. Rows must be different faces."""
  flat = image.reshape(-1)
  region = flat[patch.flat]
  flat[patch.flat] = region + alpha * (value - region)


def _catmull_rom(points: Array, sub: int, closed: bool) -> Array:
  """A smooth curve [M, K * sub (+1 if open), 2] through control points [M, K, 2]."""
  if closed:
    p = np.concatenate([points[:, -1:], points, points[:, :2]], 1)
  else:
    p = np.concatenate([2 * points[:, :1] - points[:, 1:2], points,
                        2 * points[:, -1:] - points[:, -2:-1]], 1)
  t = np.arange(sub, dtype=np.float32)[:, None] / sub
  basis = 0.5 * np.concatenate([-t ** 3 + 2 * t ** 2 - t, 3 * t ** 3 - 5 * t ** 2 + 2,
                                -3 * t ** 3 + 4 * t ** 2 + t, t ** 3 - t ** 2], 1)  # [sub, 4]
  segments = p.shape[1] - 3
  windows = np.stack([p[:, i:i + segments] for i in range(4)], 2)  # [M, segments, 4, 2]
  curve = np.einsum('sj,mkjc->mksc', basis, windows).reshape(len(points), -1, 2)
  return curve if closed else np.concatenate([curve, points[:, -1:]], 1)


def _segment_distance(x: Array, y: Array, start: Array, end: Array,
                      squared: bool = False) -> tuple[Array, Array]:
  """Distances [E, M, h, w] from pixels (x [M, 1, w], y [M, h, 1]) to segments [M, E, 2] and the
  positions (0..1) of the nearest points along them. Segments lead: reductions over them are fast.
  In-place arithmetic: these are the painter's largest arrays."""
  ax, ay = start[..., 0].T[..., None, None], start[..., 1].T[..., None, None]  # [E, M, 1, 1]
  ex, ey = end[..., 0].T[..., None, None] - ax, end[..., 1].T[..., None, None] - ay
  dx, dy = x - ax, y - ay
  t = dx * ex + dy * ey
  t /= ex * ex + ey * ey + 1e-6
  np.clip(t, 0, 1, out=t)
  dist, across = t * ex, t * ey
  np.subtract(dx, dist, out=dist)
  np.subtract(dy, across, out=across)
  dist *= dist
  across *= across
  dist += across
  return (dist if squared else np.sqrt(dist, out=dist)), t


def _polygon_sdf(x: Array, y: Array, polygon: Array,
                 edges: bool = True) -> tuple[Array, Array | None, Array | None]:
  """Signed distance [M, h, w] to closed polygons [M, K, 2] (negative inside), and (if `edges`)
  the distances and positions [K, M, h, w] along its edges (for strokes along parts of it)."""
  end = np.roll(polygon, -1, 1)
  ax, ay = polygon[..., 0].T[..., None, None], polygon[..., 1].T[..., None, None]
  bx, by = end[..., 0].T[..., None, None], end[..., 1].T[..., None, None]
  spans = (ay > y) != (by > y)  # [K, M, h, 1]: edges crossing the pixel row.
  cross_x = np.where(spans, ax + (y - ay) * (bx - ax) / np.where(by == ay, 1e-6, by - ay), -np.inf)
  if not edges:  # One edge at a time: [M, h, w] arrays that stay in cache.
    least, inside = None, np.zeros(np.broadcast_shapes(x.shape, y.shape), bool)
    for k in range(polygon.shape[1]):
      dist, _ = _segment_distance(x, y, polygon[:, k:k + 1], end[:, k:k + 1], squared=True)
      least = dist[0] if least is None else np.minimum(least, dist[0], out=least)
      inside ^= x < cross_x[k]
    d = np.sqrt(least)
    return np.where(inside, -d, d), None, None
  dist, t = _segment_distance(x, y, polygon, end, squared=True)
  inside = np.bitwise_xor.reduce(x < cross_x, 0)
  d = np.sqrt(dist.min(0))  # The square root is monotonic: the same as the least distance.
  return np.where(inside, -d, d), np.sqrt(dist, out=dist), t


def _stroke(dist: Array, t: Array, radius: Array, feather: float = 1.0) -> Array:
  """Coverage [M, h, w] of a polyline of K points drawn with radius [M, K] (pixels) and an edge
  `feather` pixels wide, from `_segment_distance` to its K - 1 segments."""
  radius = radius.astype(np.float32).T[..., None, None]  # [K, M, 1, 1]
  r = radius[:-1] + t * (radius[1:] - radius[:-1])
  return np.clip((r - dist).max(0) / feather + 0.5, 0, 1)


def _polyline(x: Array, y: Array, line: Array) -> tuple[Array, Array]:
  """`_segment_distance` to the segments of an open polyline [M, K, 2]."""
  return _segment_distance(x, y, line[:, :-1], line[:, 1:])


def _disc(x: Array, y: Array, centre: Array, a: Array, b: Array) -> tuple[Array, Array, Array]:
  """In-plane coordinates (alpha, beta) [M, h, w] of pixels on a projected 3D disc with centre
  [M, 2] and projected semi-axes a, b [M, 2], and its coverage with a 1-pixel soft edge."""
  det = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
  det = np.where(np.abs(det) < 1e-3, 1e-3, det)[:, None, None]
  dx, dy = x - centre[:, 0, None, None], y - centre[:, 1, None, None]
  alpha = (b[:, 1, None, None] * dx - b[:, 0, None, None] * dy) / det
  beta = (-a[:, 1, None, None] * dx + a[:, 0, None, None] * dy) / det
  longest = np.maximum(np.linalg.norm(a, axis=-1), np.linalg.norm(b, axis=-1))[:, None, None]
  cover = np.clip((1 - np.sqrt(alpha ** 2 + beta ** 2)) * np.abs(det) / longest + 0.5, 0, 1)
  return alpha, beta, cover


def _model_vectors(scene: _Scene, vectors: Array) -> Array:
  """Model-frame vectors (cm) [N, K, 3] or [K, 3] -> image-space vectors (pixels) [N, K, 3]."""
  vectors = np.broadcast_to(vectors, (len(scene.scale),) + np.shape(vectors)[-2:])
  return np.einsum('nij,nkj->nki', scene.rotation, vectors).astype(np.float32) * \
      scene.scale[:, None, None]


class _Painter:
  """Paints depth-tested features onto the upsampled images of one batch."""

  def __init__(self, image: Array, scene: _Scene, p: dict[str, Array], depth: Array, lit: Array):
    self.image, self.scene, self.p, self.depth, self.lit = image, scene, p, depth, lit
    self.faces = np.arange(len(image))

  def patch(self, points: Array, margin: float) -> _Patch:
    return _patches(self.faces, points.min(1), points.max(1), self.image.shape[-1], margin)

  def visible(self, patch: _Patch, depth: Array, tolerance_cm: float) -> Array:
    """1 where nothing is drawn nearer than `depth` (pixels; [M] or [M, h, w]) + tolerance."""
    if np.ndim(depth) == 1:
      depth = depth[:, None, None]
    tol = tolerance_cm * self.scene.scale[:, None, None]
    return (_read(self.depth, patch) <= depth + tol).astype(np.float32)

  def col(self, key: str) -> Array:
    return _col(self.p[key])

  def ears(self) -> None:
    """Each ear: a disc on the side of the head, facing sideways and a little forward."""
    light = self.p['light'].astype(np.float32)
    for side, sign in ((0, -1.0), (1, 1.0)):
      normal = _normalize(np.array([sign * 0.85, 0.0, 0.5]))
      back = _normalize(np.cross(normal, [0.0, 1.0, 0.0]))
      vectors = _model_vectors(self.scene, np.stack([[0.0, 3.0, 0.0], 1.75 * back, normal]))
      a, b, n = vectors[:, 0], vectors[:, 1], vectors[:, 2] / self.scene.scale[:, None]
      centre = self.scene.anchors[:, 4 + side]
      corners = centre[:, None, :2] + np.stack([a[:, :2] + b[:, :2], a[:, :2] - b[:, :2]], 1)
      patch = self.patch(np.concatenate([corners, 2 * centre[:, None, :2] - corners], 1), 2)
      alpha, beta, cover = _disc(patch.fx, patch.fy, centre[:, :2], a[:, :2], b[:, :2])
      depth = centre[:, 2, None, None] + alpha * a[:, 2, None, None] + beta * b[:, 2, None, None]
      facing = _col(_smoothstep(n[:, 2], -0.1, 0.15))
      frontal = _col(_smoothstep(n[:, 2], 0.2, 0.7))  # Details show when the ear faces us.
      shade = self.col('ambient') + self.col('key') * _col(
          np.clip(((n * light).sum(-1) + 0.5) / 1.5, 0, 1))
      rho = np.sqrt(alpha ** 2 + beta ** 2)
      concha = np.hypot((alpha - 0.15) / 0.45, (beta + 0.25) / 0.32)  # Hollow before the canal.
      rim = np.exp(-((rho - 0.78) / 0.07) ** 2) * (beta > -0.3)  # Groove inside the helix.
      detail = 1 - frontal * (0.4 * _smoothstep(1 - concha, 0, 0.5) + 0.2 * rim)
      value = self.col('skin') * 0.92 * shade * detail
      alpha_ = cover * facing * self.visible(patch, depth, 0.8) * (1 - self.col('ears_hidden'))
      _blend(self.image, patch, alpha_, value)

  def brows(self) -> None:
    """Tapered strokes just below the brow landmarks (iBUG marks the brow's upper half)."""
    f = self.scene.scale[:, None]
    down = _model_vectors(self.scene, np.array([[0.0, 0.22, 0.0]]))[:, 0, :2]
    tone = np.minimum(self.p['hair_tone'] * self.p['brow_tone'], self.p['skin'] * 0.45)
    for first, inner_last in ((17, True), (22, False)):
      points = self.scene.landmarks[:, first:first + 5]
      line = _catmull_rom(points[..., :2] + down[:, None], 2, closed=False)
      s = np.linspace(0, 1, line.shape[1], dtype=np.float32)
      width = 0.16 + 0.26 * (s if inner_last else 1 - s)  # Half-width, cm: thick at the inner end.
      patch = self.patch(line, 0.5 * f.max() + 2)
      hairs = _texture('white', patch.y + self.p['texture_offset'][:, :1, None],
                       patch.x + self.p['texture_offset'][:, 1:2, None])
      radius = width * f * self.p['brow_width'][:, None]
      cover = _stroke(*_polyline(patch.fx, patch.fy, line), radius, feather=1.8)
      alpha = (cover * self.col('brow_density') * np.clip(0.85 + 0.15 * hairs, 0, 1)
               * self.visible(patch, points[..., 2].mean(1), 0.6))
      _blend(self.image, patch, alpha, _col(tone) * _read(self.lit, patch))

  def eyes(self) -> None:
    """Sclera inside the lid contour, a projected iris disc with pupil and glint, lashes, crease."""
    f = self.scene.scale[:, None, None]
    gaze_yaw, gaze_pitch = self.p['gaze'][:, 0], self.p['gaze'][:, 1]
    gaze = np.stack([np.sin(gaze_yaw) * np.cos(gaze_pitch), -np.sin(gaze_pitch),
                     np.cos(gaze_yaw) * np.cos(gaze_pitch)], -1)[:, None]  # [N, 1, 3] model
    across = _normalize(np.cross([0.0, 1.0, 0.0], gaze))
    down = np.cross(gaze, across)
    iris = _model_vectors(self.scene, np.concatenate([0.55 * gaze, 0.58 * across, 0.58 * down], 1))
    crease = _model_vectors(self.scene, np.array([[0.0, -0.42, 0.05]]))[:, 0, :2]
    light = self.p['light'][:, :2].astype(np.float32)
    for side, first in ((0, 36), (1, 42)):
      points = self.scene.landmarks[:, first:first + 6]
      loop = _catmull_rom(points[..., :2], 3, closed=True)
      upper = loop[:, :10]  # Corner to corner along the upper lid: the loop's first 9 edges.
      patch = self.patch(np.concatenate([loop, loop + crease[:, None]], 1), 3)
      x, y = patch.fx, patch.fy
      visible = self.visible(patch, points[..., 2].mean(1), 0.6)
      lit = _read(self.lit, patch)
      sd, dist, t = _polygon_sdf(x, y, loop)
      centre = self.scene.anchors[:, side] + iris[:, 0]
      alpha, beta, cover = _disc(x, y, centre[:, :2], iris[:, 1, :2], iris[:, 2, :2])
      rho = np.sqrt(alpha ** 2 + beta ** 2)
      iris_value = self.col('iris_tone') * (1.2 - 0.6 * _smoothstep(rho, 0.7, 1.0))
      iris_value = np.where(rho < self.col('pupil'), 0.03, iris_value)
      glint = np.hypot(alpha - 0.35 * _col(light[:, 0]), beta - 0.35 * _col(light[:, 1]))
      sclera = self.col('sclera') * (1 - 0.4 * np.clip(1 + sd / (0.1 * f), 0, 1))
      value = (sclera + cover * (iris_value - sclera)) * lit
      value = np.where(glint < 0.12, 0.95, value)
      _blend(self.image, patch, np.clip(0.5 - sd, 0, 1) * visible, value)
      s = np.linspace(0, 1, upper.shape[1], dtype=np.float32)
      outer = (1 - s) if side == 0 else s  # 36 and 45 are the outer corners.
      lash = _stroke(dist[:9], t[:9], (0.04 + 0.08 * outer)[None] * f[:, 0])
      _blend(self.image, patch, 0.9 * lash * visible, 0.06)
      thin = np.broadcast_to(0.025 * f[:, 0], upper.shape[:2])
      _blend(self.image, patch, 0.35 * _stroke(dist[9:], t[9:], thin) * visible,
             0.25 * lit)
      fold = _stroke(*_polyline(x, y, upper[:, ::2] + crease[:, None]), thin[:, ::2] * 1.2)
      _blend(self.image, patch, 0.25 * fold * visible, 0.1 * lit)

  def nostrils(self) -> None:
    """Dark ellipses under the nose tip, facing down and forward: widest when looking up."""
    normal = _normalize(np.array([0.0, 0.85, 0.53]))
    vectors = _model_vectors(self.scene, np.stack([[0.45, 0.0, 0.0],
                                                   0.32 * np.cross(normal, [1.0, 0.0, 0.0]),
                                                   normal]))
    a, b = vectors[:, 0, :2], vectors[:, 1, :2]
    facing = _col(_smoothstep(vectors[:, 2, 2] / self.scene.scale, 0.0, 0.3))
    for side in (0, 1):
      centre = self.scene.anchors[:, 2 + side]
      patch = self.patch(centre[:, None, :2] + np.stack([a + b, -a - b, a - b, b - a], 1), 2)
      _, _, cover = _disc(patch.fx, patch.fy, centre[:, :2], a, b)
      alpha = 0.7 * cover * facing * self.visible(patch, centre[:, 2], 0.5)
      _blend(self.image, patch, alpha, 0.12 * _read(self.lit, patch))

  def mouth(self) -> None:
    """Lips inside the outer contour (soft edges, a sheen on the lower lip, shadow where they
    meet), then a dark mouth with teeth inside the inner contour and a lip line."""
    f = self.scene.scale[:, None, None]
    points = self.scene.landmarks[:, 48:68]
    depth = points[..., 2].mean(1)
    outer = _catmull_rom(points[:, :12, :2], 2, closed=True)
    inner = _catmull_rom(points[:, 12:, :2], 2, closed=True)
    patch = self.patch(outer, 3)
    x, y = patch.fx, patch.fy
    lips = np.clip(0.2 - _polygon_sdf(x, y, outer, edges=False)[0] / (0.08 * f + 1), 0, 1)
    middle = (points[:, 14, :2] + points[:, 18, :2]) / 2  # Between 62 and 66.
    lower = points[:, 9, :2] * 0.6 + points[:, 18, :2] * 0.4  # Between 57 and 66.
    width2 = ((points[:, 6, :2] - points[:, 0, :2]) ** 2).sum(-1)  # Corner to corner, squared.
    meet = np.hypot((x - _col(middle[:, 0])) / 3, y - _col(middle[:, 1]))
    shine = np.exp(-((x - _col(lower[:, 0])) ** 2 + 2 * (y - _col(lower[:, 1])) ** 2)
                   / _col(0.015 * width2 + 1))
    value = (self.col('skin') * self.col('lip_tone') * _read(self.lit, patch)
             * (1 - 0.25 * np.exp(-meet / (0.12 * f + 0.5)))  # Shadow where the lips meet.
             + 0.2 * self.col('key') * shine)
    _blend(self.image, patch, 0.8 * lips * self.visible(patch, depth, 0.8), value)
    patch = self.patch(inner, 3)
    x, y = patch.fx, patch.fy
    lit, visible = _read(self.lit, patch), self.visible(patch, depth, 0.8)
    sd, dist, t = _polygon_sdf(x, y, inner)
    dist, t = dist[:8], t[:8]  # The upper inner lip, 60 to 64.
    teeth = np.clip((0.3 * f - dist.min(0)) / 2, 0, 1)
    mouth = np.clip(0.5 - sd, 0, 1)
    _blend(self.image, patch, mouth * visible, 0.05 + teeth * (self.col('teeth') * lit - 0.05))
    line = _stroke(dist, t, np.broadcast_to(0.06 * f[:, 0], (len(f), 9)), feather=1.5)
    _blend(self.image, patch, 0.85 * line * visible, 0.05 * lit)

  def paint(self) -> Array:
    self.ears()
    self.brows()
    self.eyes()
    self.nostrils()
    self.mouth()
    return self.image


# ---------------------------------------------------------------------------------------------
# External occluders (COFW-style): a hand, a textured object or sunglasses in front of the face.

# A right hand in units of its size, fingers up: palm ellipse, then capsules (x0, y0, x1, y1, r).
_PALM = (0.0, 0.0, 0.55, 0.62)  # centre x, y, semi-axes
_FINGERS = np.array([
    (-0.38, -0.4, -0.47, -1.1, 0.14), (-0.13, -0.45, -0.16, -1.38, 0.145),
    (0.13, -0.45, 0.15, -1.33, 0.145), (0.38, -0.4, 0.47, -1.02, 0.135),
    (0.45, 0.1, 0.95, -0.25, 0.16),  # Thumb.
])


def _capsule_sdf(x: Array, y: Array, a: Array, b: Array, radius: Array) -> Array:
  """Signed distance to capsules from a to b (each [..., 2]) with `radius`, broadcasting."""
  ex, ey = b[..., 0] - a[..., 0], b[..., 1] - a[..., 1]
  t = np.clip(((x - a[..., 0]) * ex + (y - a[..., 1]) * ey) / (ex * ex + ey * ey + 1e-9), 0, 1)
  return np.hypot(x - a[..., 0] - t * ex, y - a[..., 1] - t * ey) - radius


def _local(x: Array, y: Array, q: dict[str, Array]) -> tuple[Array, Array]:
  """Pixel coordinates in an occluder's frame: centred, rotated, in units of its size."""
  c, s = np.cos(q['angle']), np.sin(q['angle'])
  dx, dy = x - q['cx'], y - q['cy']
  return (c * dx + s * dy) / q['size'] * q['flip'], (-s * dx + c * dy) / q['size']


def _hand(x: Array, y: Array, q: dict[str, Array]) -> tuple[Array, Array]:
  """Signed distance (pixels) to a hand and the darkening of its creases, same shape as x + y."""
  u, v = _local(x, y, q)
  palm = (np.hypot((u - _PALM[0]) / _PALM[2], (v - _PALM[1]) / _PALM[3]) - 1) * _PALM[2]
  fingers = [_capsule_sdf(u, v, np.array(f[:2]), np.array(f[2:4]), f[4]) for f in _FINGERS]
  sdf = np.minimum(palm, np.min(fingers, axis=0)) * q['size']
  crease = np.max([np.exp(-(d * q['size'] / 1.2) ** 2) for d in fingers], axis=0)
  return sdf, crease * (palm > 0) * (sdf < -1.0)  # Lines between the fingers.


def _object(x: Array, y: Array, q: dict[str, Array]) -> tuple[Array, Array]:
  """Signed distance (pixels) to a rounded rectangle and its surface texture."""
  u, v = _local(x, y, q)
  half = np.stack([np.ones_like(q['aspect']), q['aspect']], -1) * 0.9
  r = 0.15 * q['aspect']
  du, dv = np.abs(u) - half[..., 0] + r, np.abs(v) - half[..., 1] + r
  outside = np.hypot(np.maximum(du, 0), np.maximum(dv, 0))
  sdf = (outside + np.minimum(np.maximum(du, dv), 0) - r) * q['size']
  phase_u, phase_v = 2 * np.pi * q['frequency'] * q['size'] * np.stack([u, v])
  texture = np.select([q['texture'] == 1, q['texture'] == 2, q['texture'] == 3],
                      [np.sin(phase_u), np.sign(np.sin(phase_u) * np.sin(phase_v)),
                       _texture('smooth', v * q['size'] * 0.5, u * q['size'] * 0.5)], 0.0)
  return sdf, texture


def _sunglasses(x: Array, y: Array, q: dict[str, Array]) -> tuple[Array, Array]:
  """Signed distance (pixels) to two lenses over the eyes and the bridge between them, and how
  deep inside a lens each pixel is (0 at the rim, 1 at the centre: a reflection gradient)."""
  eye_r, eye_l = q['eyes'][..., 0, :], q['eyes'][..., 1, :]
  across = eye_l - eye_r
  width = np.hypot(across[..., 0], across[..., 1]) + 1e-6
  c, s = across[..., 0] / width, across[..., 1] / width
  # Lens half-width: 0.32 of the eye distance, but never thinner than a fraction of its height.
  half_w = np.maximum(0.32 * width, 0.25 * q['lens'])
  sdfs = []
  for centre in (eye_r, eye_l):
    dx, dy = x - centre[..., 0], y - centre[..., 1]
    u, v = (c * dx + s * dy) / half_w, (-s * dx + c * dy) / q['lens']
    sdfs.append((np.hypot(u, v) - 1) * np.minimum(half_w, q['lens']))
  bridge = _capsule_sdf(x, y, eye_r + 0.3 * across, eye_l - 0.3 * across, 0.04 * q['lens'] + 1)
  lenses = np.minimum(*sdfs)
  return np.minimum(lenses, bridge), np.clip(-lenses / q['lens'], 0, 1)


_OCCLUDER_SHAPES = {'hand': _hand, 'object': _object, 'sunglasses': _sunglasses}


def _occlude(image: Array, scene: _Scene, p: dict[str, Array], depth: Array) -> Array:
  """Draws the occluders of faces with `has_occluder`; returns the landmarks they cover [N, P]."""
  landmarks = scene.landmarks
  occluded = np.zeros(landmarks.shape[:2], bool)
  rows = np.flatnonzero(p['has_occluder'] > 0.5)
  for kind_id, kind in enumerate(_OCCLUDER_KINDS):
    m = rows[p['occluder_kind'][rows] == kind_id]
    if not len(m):
      continue
    lo, hi = landmarks[m, :, :2].min(1), landmarks[m, :, :2].max(1)
    box = (hi - lo).max(-1)
    centre = (lo + hi) / 2 + p['occluder_centre'][m] * (hi - lo)
    f = scene.scale[m]
    q = {'cx': centre[:, 0], 'cy': centre[:, 1], 'angle': p['occluder_angle'][m],
         'size': p['occluder_size'][m] * box * (1.0 if kind == 'hand' else 1.3),
         'flip': p['occluder_flip'][m], 'aspect': p['occluder_aspect'][m],
         'frequency': p['occluder_frequency'][m], 'texture': p['occluder_texture'][m],
         'lens': 1.15 * f, 'eyes': scene.anchors[m, :2, :2]}
    if kind == 'sunglasses':
      reach = np.abs(q['eyes'] - q['eyes'].mean(1, keepdims=True)).max(1) * 1.8 + q['lens'][:, None]
      centre = q['eyes'].mean(1)
    else:
      reach = np.repeat(1.5 * q['size'][:, None], 2, 1)
      q['angle'] = q['angle'] if kind == 'object' else 0.6 * np.sin(q['angle'])  # Fingers up-ish.
    patch = _patches(m, centre - reach, centre + reach, image.shape[-1])
    shape = _OCCLUDER_SHAPES[kind]
    grid = {k: np.asarray(v, np.float32).reshape((len(m), 1, 1) + np.shape(v)[1:])
            for k, v in q.items()}  # Per-row parameters broadcast over [M, h, w] pixels.
    sdf, detail = shape(patch.fx, patch.fy, grid)
    cover = np.clip(0.5 - sdf, 0, 1)
    light = p['light'][m].astype(np.float32)
    shade = 0.8 + 0.2 * np.clip(((patch.fx - grid['cx']) * light[:, 0, None, None]
                                 + (patch.fy - grid['cy']) * light[:, 1, None, None])
                                / grid['size'], -1, 1)
    tone = _col(p['occluder_tone'][m])
    lens_depth = scene.anchors[m, :2, 2].max(1) + 1.5 * f
    if kind == 'hand':
      value = _col(p['skin'][m]) * (0.8 + 0.4 * tone) * shade * (1 - 0.3 * detail)
    elif kind == 'object':
      edge = np.exp(-(sdf / 1.5) ** 2)
      value = tone * shade * (1 + _col(p['occluder_contrast'][m]) * detail) * (1 - 0.3 * edge)
    else:
      value = 0.25 * tone * (0.8 + 0.6 * detail) * shade
      cover = cover * (_read(depth, patch) <= _col(lens_depth))
    _blend(image, patch, cover, value)
    lx, ly = landmarks[m, None, :, 0], landmarks[m, None, :, 1]  # [M, 1, P]
    sdf, _ = shape(lx, ly, grid)
    covered = sdf[:, 0] < 0
    if kind == 'sunglasses':
      h = depth.shape[-1]
      ix = np.clip(np.rint((landmarks[m, :, 0] - 0.5) / 2).astype(int), 0, h - 1)
      iy = np.clip(np.rint((landmarks[m, :, 1] - 0.5) / 2).astype(int), 0, h - 1)
      covered &= depth[m[:, None], iy, ix] <= lens_depth[:, None]
    occluded[m] = covered
  return occluded
