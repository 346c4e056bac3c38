"""treemoe-jax: Tree-gated Deep Mixture-of-Experts for pose-robust face alignment, in JAX/Flax.

The gates, expert committees, patch extraction and cascade are plain Flax modules for use in
other models: `from treemoe_jax import gates, experts, patches, cascade, models`. Submodules load
on first use, so `treemoe_jax.geometry` (numpy only) stays light for the renderer's worker
processes, and nothing here imports TensorFlow.
"""

import importlib

__version__ = '0.1.0'

_SUBMODULES = ('align_files', 'aligner', 'annotate', 'cascade', 'checkpointing', 'cli', 'detect',
               'evaluate', 'experts', 'export', 'gates', 'geometry', 'metrics', 'models',
               'parallel', 'patches', 'photos', 'plots', 'pose', 'pose_fit', 'pretrained',
               'progress', 'protocols', 'reports', 'routing', 'tasks', 'train', 'workdirs')


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f'treemoe_jax.{name}')
  raise AttributeError(f'module treemoe_jax has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_SUBMODULES))
