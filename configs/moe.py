"""The moe architecture (section 3.5).

  python train.py --config configs/moe.py:cpu --workdir /tmp/moe_cpu   # CPU, minutes
  python train.py --config configs/moe.py --workdir /tmp/moe             # accelerators
"""

from configs import default


def get_config(variant: str | None = None):
  return default.get_config('moe', variant)
