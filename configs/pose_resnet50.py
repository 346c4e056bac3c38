"""The head-pose estimator alone (section 3.1): ResNet-50 trunk, separate yaw/pitch/roll heads.

  python train.py --config configs/pose_resnet50.py:tiny --workdir /tmp/pose_tiny   # CPU
  python train.py --config configs/pose_resnet50.py --workdir /tmp/pose             # accelerators
"""

from configs import default


def get_config(variant: str | None = None):
  config = default.get_config('pose_tree_moe', variant)
  with config.unlocked():
    config.task = 'pose'
  # The variant's schedule, as for the cascade. `small`'s warm-up + cosine decay over 12000 steps:
  # yaw / pitch / roll MAE 3.9 / 4.4 / 2.8 deg, against 6.5 / 6.0 / 4.0 for section 3.5's constant
  # 1e-3 over 6000 (docs/learning.md, "The pose estimator").
  return config
