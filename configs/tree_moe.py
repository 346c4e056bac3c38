"""The tree_moe architecture (section 3.5).

  python train.py --config configs/tree_moe.py:cpu --workdir /tmp/tree_moe_cpu   # CPU, minutes
  python train.py --config configs/tree_moe.py --workdir /tmp/tree_moe             # accelerators
"""

from configs import default


def get_config(variant: str | None = None):
  return default.get_config('tree_moe', variant)
