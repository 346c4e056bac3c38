"""Aligns the faces in people's image files: `treemoe_jax.commands.align`.

  python align.py --workdir /tmp/ptm photos/ me.jpg --out /tmp/aligned
  python align.py --exported /tmp/ptm_export photos/ --out /tmp/aligned --boxes boxes.json
  python align.py --workdir /tmp/ptm photos/ --out /tmp/aligned --detector opencv --routing topk:2
"""

from treemoe_jax.commands.align import main, run  # noqa: F401 (tests call main)

if __name__ == '__main__':
  run()
