"""The baseline architecture (section 3.5).

  python train.py --config configs/baseline.py:cpu --workdir /tmp/baseline_cpu   # CPU, minutes
  python train.py --config configs/baseline.py --workdir /tmp/baseline             # accelerators
"""

from configs import default


def get_config(variant: str | None = None):
  return default.get_config('baseline', variant)
