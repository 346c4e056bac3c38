"""Landmark conventions of the 68-point iBUG markup (SPEC "Conventions").

Coordinates are `(x, y)` pixels, 0-based, pixel centres at integers. Indices are 0-based:
jaw 0-16, brows 17-26, nose 27-35, eyes 36-47 (36-41 the subject's right eye), mouth 48-67.
"""

import dataclasses

import numpy as np

NUM_LANDMARKS = 68

JAW = np.arange(0, 17)
RIGHT_BROW, LEFT_BROW = np.arange(17, 22), np.arange(22, 27)
NOSE_BRIDGE, NOSE_BASE = np.arange(27, 31), np.arange(31, 36)
RIGHT_EYE, LEFT_EYE = np.arange(36, 42), np.arange(42, 48)
OUTER_MOUTH, INNER_MOUTH = np.arange(48, 60), np.arange(60, 68)


def _mirror_68() -> np.ndarray:
  """The flipped index of each point: a horizontal flip swaps the face's sides."""
  pairs = [(i, 16 - i) for i in range(8)]  # jaw
  pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
  pairs += [(31, 35), (32, 34)]  # nostrils
  pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
  pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lip
  pairs += [(60, 64), (61, 63), (65, 67)]  # inner lip
  mirror = np.arange(NUM_LANDMARKS)
  for a, b in pairs:
    mirror[a], mirror[b] = b, a
  return mirror


MIRROR_68 = _mirror_68()


def flip_landmarks(landmarks: np.ndarray, width: int) -> np.ndarray:
  """Landmarks `[..., 68, 2]` of an image flipped left-right: x -> W-1-x, points mirrored."""
  flipped = np.asarray(landmarks)[..., MIRROR_68, :].copy()
  flipped[..., 0] = width - 1 - flipped[..., 0]
  return flipped


def pupils(landmarks):
  """Pupil centres `[..., 2, 2]` (subject's right, left): centroids of 36-41 and 42-47."""
  right = landmarks[..., 36:42, :].mean(axis=-2)
  left = landmarks[..., 42:48, :].mean(axis=-2)
  return np.stack([right, left], axis=-2)


# The mean face in 3D: centimetres, in a head-centred model frame with x towards the subject's LEFT
# (image right in a frontal view), y down and z towards the camera (so a frontal view projects
# (x, y) straight onto the image; the frame is left-handed). The origin is the head's centre of
# rotation, midway between the ears at eye level. Designed from adult facial proportions
# (inter-pupil 6.2, mouth width 5.2, nasion to menton 12); the subject's right side is listed and
# the left side mirrored. Midline points (x = 0) are 8, 27-30, 33, 51, 57, 62, 66.
_MEAN_FACE_RIGHT = {
    0: (-7.0, 1.0, 2.0), 1: (-6.9, 2.9, 2.2), 2: (-6.6, 4.7, 2.7), 3: (-6.1, 6.4, 3.4),
    4: (-5.3, 8.0, 4.5), 5: (-4.2, 9.4, 5.8), 6: (-2.9, 10.5, 7.0), 7: (-1.5, 11.2, 7.8),
    8: (0.0, 11.4, 8.1),
    17: (-5.4, -1.5, 6.3), 18: (-4.6, -2.2, 7.4), 19: (-3.5, -2.5, 8.1), 20: (-2.4, -2.4, 8.6),
    21: (-1.3, -2.1, 8.9),
    27: (0.0, -0.6, 8.8), 28: (0.0, 0.8, 9.4), 29: (0.0, 2.1, 10.2), 30: (0.0, 3.4, 11.2),
    31: (-1.5, 4.1, 8.9), 32: (-0.8, 4.35, 9.5), 33: (0.0, 4.5, 9.8),
    36: (-4.5, 0.15, 6.7), 37: (-3.7, -0.4, 7.3), 38: (-2.6, -0.45, 7.5), 39: (-1.7, 0.1, 7.3),
    40: (-2.6, 0.45, 7.4), 41: (-3.7, 0.45, 7.2),
    48: (-2.6, 7.0, 7.9), 49: (-1.7, 6.3, 8.8), 50: (-0.6, 6.0, 9.35), 51: (0.0, 6.1, 9.45),
    57: (0.0, 8.0, 9.3), 58: (-0.8, 7.9, 9.2), 59: (-1.75, 7.6, 8.8),
    60: (-2.35, 7.0, 8.2), 61: (-0.8, 6.8, 9.1), 62: (0.0, 6.85, 9.25), 66: (0.0, 6.95, 9.2),
    67: (-0.8, 6.95, 9.05),
}


def _mean_face_3d() -> np.ndarray:
  face = np.zeros((NUM_LANDMARKS, 3))
  for i, (x, y, z) in _MEAN_FACE_RIGHT.items():
    face[i] = x, y, z
    face[MIRROR_68[i]] = -x, y, z
  return face.astype(np.float32)


MEAN_FACE_3D = _mean_face_3d()


@dataclasses.dataclass(frozen=True)
class LandmarkMap:
  """Another markup's Q points as means of our 68 (each row: the 0-based iBUG points averaged).

  `pupils` are the indices, in the Q-point markup, of the two pupils: the inter-pupil normaliser
  of ground truth given in that markup.
  """
  name: str
  sources: tuple[tuple[int, ...], ...]
  pupils: tuple[int, int]

  @property
  def num_points(self) -> int:
    return len(self.sources)

  def matrix(self) -> np.ndarray:
    """[Q, 68]: rows summing to 1, so `matrix @ shape68` is the shape in this markup."""
    out = np.zeros((self.num_points, NUM_LANDMARKS))
    for q, points in enumerate(self.sources):
      out[q, list(points)] = 1.0 / len(points)
    return out


# COFW's 29 points (Burgos-Artizzu et al. 2013) from the 68-point markup: the published fixed
# mapping of hpm-detection-code `utility/Mapping68kToCofw29.m` (Ghiasi and Fowlkes; SPEC), each
# COFW point the mean of these 0-based iBUG points. The paper maps with a linear regression learned
# on COFW-68, whose weights are not published; this table is its fixed core.
COFW_29 = LandmarkMap('cofw29', sources=(
    (17,), (26,),  # 0-1 brow outer corners
    (21,), (22,),  # 2-3 brow inner corners
    (19,), (17, 21),  # 4-5 right brow top, bottom mid-points
    (24,), (22, 26),  # 6-7 left brow top, bottom mid-points
    (36,), (45,),  # 8-9 eye outer corners
    (39,), (42,),  # 10-11 eye inner corners
    (37, 38), (40, 41),  # 12-13 right eye upper, lower lid
    (43, 44), (46, 47),  # 14-15 left eye upper, lower lid
    tuple(RIGHT_EYE), tuple(LEFT_EYE),  # 16-17 pupils (eq. 12's centres)
    (31,), (35,),  # 18-19 nose wings
    (30,), (33,),  # 20-21 nose tip, subnasale
    (48, 60), (54, 64),  # 22-23 mouth corners
    (50, 51, 52), (62,),  # 24-25 upper lip top, bottom
    (66,), (56, 57, 58),  # 26-27 lower lip top, bottom
    (7, 8, 9),  # 28 chin
), pupils=(16, 17))
