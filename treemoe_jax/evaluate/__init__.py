"""Evaluation (section 4): `evaluate_workdir(workdir, protocols)`, what `eval.py` calls.

  evaluator  a trained workdir on the paper's protocols: tables, per-face arrays, provenance
  protocols  the protocols as data: which faces, which normaliser, how columns combine
  reports    Markdown tables and runs side by side
  routing_report  dense, top-k and greedy side by side, the gates' concentration, the flags
  plots      CED curves and the figures of section 4.4
"""

from treemoe_jax import deprecation

# Lazily: `from treemoe_jax.evaluate import <submodule>` stays light. 0.1's names warn.
__getattr__ = deprecation.package_getattr(__name__, 'evaluator', ('evaluate_workdir', 'compare'))
