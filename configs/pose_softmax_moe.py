"""The pose_softmax_moe architecture (section 3.5).

  python train.py --config configs/pose_softmax_moe.py:cpu --workdir /tmp/pose_softmax_moe_cpu   # CPU, minutes
  python train.py --config configs/pose_softmax_moe.py --workdir /tmp/pose_softmax_moe             # accelerators
"""

from configs import default


def get_config(variant: str | None = None):
  return default.get_config('pose_softmax_moe', variant)
