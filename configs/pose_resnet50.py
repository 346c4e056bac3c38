"""The head-pose estimator alone (section 3.1): ResNet-50 trunk, separate yaw/pitch/roll heads.

  python train.py --config configs/pose_resnet50.py:tiny --workdir /tmp/pose_tiny   # CPU
  python train.py --config configs/pose_resnet50.py --workdir /tmp/pose             # accelerators
"""

from configs import default


def get_config(variant: str | None = None):
  config = default.get_config('pose_tree_moe', variant)
  with config.unlocked():
    config.task = 'pose'
  # Section 3.5's constant rate at every size: experiments/reproduce.py trains the estimator in
  # chunks until its error stops falling, and a decaying schedule would restart at each chunk.
  config.learning_rate = 1e-3
  config.lr_schedule = 'constant'
  config.warmup_steps = 0
  return config
