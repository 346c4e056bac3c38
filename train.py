"""Trains a face aligner or head-pose estimator: `treemoe_jax.commands.train`.

  python train.py --config configs/pose_tree_moe.py:tiny --workdir /tmp/ptm [--config.x=y ...]
"""

from treemoe_jax.commands.train import main, run  # noqa: F401 (tests call main)

if __name__ == '__main__':
  run()
