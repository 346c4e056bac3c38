"""The softmax_moe architecture (section 3.5).

  python train.py --config configs/softmax_moe.py:cpu --workdir /tmp/softmax_moe_cpu   # CPU, minutes
  python train.py --config configs/softmax_moe.py --workdir /tmp/softmax_moe             # accelerators
"""

from configs import default


def get_config(variant: str | None = None):
  return default.get_config('softmax_moe', variant)
