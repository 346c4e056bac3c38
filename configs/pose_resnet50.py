"""The head-pose estimator alone (section 3.1): ResNet-50 trunk, separate yaw/pitch/roll heads.

  python train.py --config configs/pose_resnet50.py:cpu --workdir /tmp/pose_cpu   # CPU
  python train.py --config configs/pose_resnet50.py --workdir /tmp/pose             # accelerators
"""

from configs import default


def get_config(variant: str | None = None):
  config = default.get_config('pose_tree_moe', variant)
  with config.unlocked():
    config.task = 'pose'
  # The variant's schedule, as for the cascade (docs/learning.md, "The pose estimator").
  return config
