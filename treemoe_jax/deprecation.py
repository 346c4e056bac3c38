"""Release 0.1's module attributes, answered for one more release with a DeprecationWarning.

In 0.1, `treemoe_jax.train` and `treemoe_jax.evaluate` were modules; they are packages now, and
their contents live in `train.trainer` and `evaluate.evaluator`.
"""

import importlib
import importlib.util
import warnings


def package_getattr(package: str, module: str, public: tuple[str, ...]):
  """A package's `__getattr__`: `public` names of `package.module` without a warning, its other
  attributes with one. Submodule names are left to the import system, so that
  `from package import submodule` imports nothing else."""

  def __getattr__(name: str):
    if name.startswith('__') or importlib.util.find_spec(f'{package}.{name}') is not None:
      raise AttributeError(f'module {package} has no attribute {name!r}')
    target = importlib.import_module(f'{package}.{module}')
    if name not in public and hasattr(target, name):
      warnings.warn(f'{package}.{name} is now {package}.{module}.{name}; the old path goes in '
                    'the next release', DeprecationWarning, stacklevel=2)
    if name in public or hasattr(target, name):
      return getattr(target, name)
    raise AttributeError(f'module {package} has no attribute {name!r}')

  return __getattr__
