"""The conventions every layer shares (SPEC "Conventions"), numpy only.

`markup`: the 68-point iBUG markup, its mirror permutation, pupils and the 3D mean face.
`head_pose`: head pose (yaw, pitch, roll) from 2D landmarks, and 300W-LP `Pose_Para` conversion.
Both are re-exported here, so `geometry.MIRROR_68` and `geometry.pose_from_landmarks` read as one
module.
"""

from treemoe_jax.geometry.head_pose import pose_from_landmarks
from treemoe_jax.geometry.head_pose import pose_from_pose_para
from treemoe_jax.geometry.head_pose import pose_para_from_pose
from treemoe_jax.geometry.markup import INNER_MOUTH, JAW, LEFT_BROW, LEFT_EYE, MEAN_FACE_3D
from treemoe_jax.geometry.markup import MIRROR_68, NOSE_BASE, NOSE_BRIDGE, NUM_LANDMARKS
from treemoe_jax.geometry.markup import OUTER_MOUTH, RIGHT_BROW, RIGHT_EYE
from treemoe_jax.geometry.markup import COFW_29, LandmarkMap, flip_landmarks, pupils
