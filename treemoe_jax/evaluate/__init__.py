"""Evaluation (section 4): `evaluate_workdir(workdir, protocols)`, what `eval.py` calls.

  evaluator  a trained workdir on the paper's protocols: tables, per-face arrays, provenance
  protocols  the protocols as data: which faces, which normaliser, how columns combine
  reports    Markdown tables and runs side by side
  plots      CED curves and the figures of section 4.4
"""

import importlib
import importlib.util
import warnings

_PUBLIC = ('evaluate_workdir', 'compare')


def __getattr__(name: str):
  # Lazily, so that `from treemoe_jax.evaluate import <submodule>` stays light.
  if name.startswith('__') or importlib.util.find_spec(f'{__name__}.{name}') is not None:
    raise AttributeError(f'module {__name__} has no attribute {name!r}')
  evaluator = importlib.import_module(f'{__name__}.evaluator')
  if name in _PUBLIC:
    return getattr(evaluator, name)
  if hasattr(evaluator, name):  # 0.1's treemoe_jax.evaluate was the module now at .evaluator
    warnings.warn(f'treemoe_jax.evaluate.{name} is now treemoe_jax.evaluate.evaluator.{name}; '
                  'the old path goes in the next release', DeprecationWarning, stacklevel=2)
    return getattr(evaluator, name)
  raise AttributeError(f'module {__name__} has no attribute {name!r}')
