"""Evaluates trained workdirs on the paper's protocols: `treemoe_jax.commands.evaluate`.

  python eval.py --workdir /tmp/ptm                                # results.json/.md + figures
  python eval.py --workdir /tmp/ptm --protocol synthetic_table2    # another table
  python eval.py --workdir /tmp/ptm --workdir /tmp/psm --out /tmp/cmp   # runs side by side
"""

from treemoe_jax.commands.evaluate import main, run  # noqa: F401 (tests call main)

if __name__ == '__main__':
  run()
