"""Training (section 3.5): `train_and_evaluate(config, workdir)`, what `train.py` calls.

  trainer    the train state, the data-parallel step, the loop (batches from any iterator)
  tasks      what is trained: the head-pose estimator or the cascade (model, loss, metrics)
  schedules  learning-rate schedules
  progress   log lines, TensorBoard events and metrics.jsonl
  record     the workdir's record (config.json, mean_shape.npy) and the resume rules
"""

import importlib
import importlib.util
import warnings

_PUBLIC = ('train_and_evaluate',)


def __getattr__(name: str):
  # Lazily, so that `from treemoe_jax.train import <submodule>` stays light.
  if name.startswith('__') or importlib.util.find_spec(f'{__name__}.{name}') is not None:
    raise AttributeError(f'module {__name__} has no attribute {name!r}')
  trainer = importlib.import_module(f'{__name__}.trainer')
  if name in _PUBLIC:
    return getattr(trainer, name)
  if hasattr(trainer, name):  # 0.1's treemoe_jax.train was the module now at .trainer
    warnings.warn(f'treemoe_jax.train.{name} is now treemoe_jax.train.trainer.{name}; '
                  'the old path goes in the next release', DeprecationWarning, stacklevel=2)
    return getattr(trainer, name)
  raise AttributeError(f'module {__name__} has no attribute {name!r}')
