"""Evaluation (section 4): `evaluate_workdir(workdir, protocols)`, what `eval.py` calls.

  evaluator  a trained workdir on the paper's protocols: tables, per-face arrays, provenance
  protocols  the protocols as data: which faces, which normaliser, how columns combine
  reports    Markdown tables and runs side by side
  plots      CED curves and the figures of section 4.4
"""


def __getattr__(name: str):
  if name in ('evaluate_workdir', 'compare'):  # lazily: protocols and plots stay light
    from treemoe_jax.evaluate import evaluator  # pylint: disable=g-import-not-at-top
    return getattr(evaluator, name)
  raise AttributeError(f'module treemoe_jax.evaluate has no attribute {name!r}')
