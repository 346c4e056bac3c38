"""Command-line errors as sentences, for the thin entry points (train.py, eval.py, align.py).

ml_collections' config flag fails on a mistyped override (`--config.model.nonsense=3`) with a
traceback ending in `AttributeError: "'nonsense'"`, and on a bad variant with a traceback inside a
flag error. `flags_parser` checks the config spec and every override first, and stops with one
line that names the bad key and the valid ones beside it:

  app.run(main, flags_parser=cli.flags_parser)

Everything else goes to absl's usual flag parsing.
"""

from collections.abc import Mapping, Sequence
import difflib
import importlib.util
import os
import re
import sys
import warnings

from absl import app
import ml_collections

from treemoe_jax.runs import RENAMED_FIELDS

Config = ml_collections.ConfigDict


class ConfigError(ValueError):
  """A config spec or override the command line cannot use; the message is the sentence."""


def flag_value(argv: Sequence[str], name: str = 'config') -> str | None:
  """The value of `--name` in argv (`--name=V` or `--name V`; the last wins), as absl reads it."""
  value = None
  for i, arg in enumerate(argv):
    if arg == '--':
      break  # absl stops reading flags here
    match = re.fullmatch(rf'--?{re.escape(name)}(=(.*))?', arg, re.DOTALL)
    if match and match.group(1) is not None:
      value = match.group(2)
    elif match and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def override_paths(argv: Sequence[str], name: str = 'config') -> list[str]:
  """The field paths of `--name.a.b=V`, `--name.a.b V` and `--noname.a.b`, in argv order."""
  paths = []
  for arg in argv:
    if arg == '--':
      break
    match = re.match(rf'--?(?:no)?{re.escape(name)}\.([^=]+)', arg)
    if match:
      paths.append(match.group(1))
  return paths


def load_config(spec: str, name: str = 'config') -> Config:
  """`path.py[:arg]` -> `get_config(arg)`, as ml_collections loads it, or a ConfigError saying why.

  A missing file or a `get_config` that rejects its argument (an unknown variant) is a usage
  error; anything else the config file raises is a bug in it and keeps its traceback.
  """
  path, colon, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ConfigError(f'--{name}={spec}: config file {path!r} does not exist '
                      f'(relative to {os.getcwd()})')
  module_spec = importlib.util.spec_from_file_location(f'_{name}_for_cli', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not callable(getattr(module, 'get_config', None)):
    raise ConfigError(f'--{name}={spec}: {path} defines no get_config()')
  try:
    return module.get_config(*([arg] if colon else []))
  except (TypeError, ValueError) as e:
    raise ConfigError(f'--{name}={spec}: {e}') from e


def _is_group(value) -> bool:
  return isinstance(value, (Config, Mapping))


def missing_field(config: Config, path: str, name: str = 'config') -> str | None:
  """Why `--name.<path>` names no field of `config`, as a sentence; None if the field exists.

  Field names are checked, and an index into a tuple (which ml_collections cannot set); other
  indices (`a.b[0]` into a list) are left to ml_collections.
  """
  holder, where = config, name
  for part in path.split('.'):
    key = part.split('[', 1)[0]
    if not _is_group(holder):
      return (f'unknown config field --{name}.{path}: {where} is {holder!r}, not a group of '
              f'fields, so it has no {key!r}')
    if key not in holder:
      keys = sorted(k for k in holder.keys() if f'{where.partition(".")[2]}.{k}'.lstrip('.')
                    not in RENAMED_FIELDS)  # 0.1's names: aliases, not advertised
      close = difflib.get_close_matches(key, keys, n=1)
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      return (f'unknown config field --{name}.{path}: {where} has no {key!r}{hint}; '
              f'valid: {", ".join(keys)}')
    holder, where = holder[key], f'{where}.{key}'
    if key != part:  # an index: ml_collections cannot set a tuple's items
      if isinstance(holder, tuple):
        return (f'cannot set --{name}.{path}: {where} is a tuple; override it whole, e.g. '
                f'--{where}="{holder}"')
      return None
  return None


def command_line_error(argv: Sequence[str], name: str = 'config') -> str | None:
  """The first problem with argv's config spec or overrides, as a sentence; None if none."""
  spec = flag_value(argv, name)
  if spec is None:
    return None  # no config: absl reports a missing required flag itself
  try:
    config = load_config(spec, name)
  except ConfigError as e:
    return str(e)
  if not _is_group(config):
    return None  # not a ConfigDict: nothing to check the overrides against
  for path in override_paths(argv, name):
    sentence = missing_field(config, path, name)
    if sentence:
      return sentence
    if path in RENAMED_FIELDS:
      warnings.warn(f'--{name}.{path} is now --{name}.{RENAMED_FIELDS[path]}; the old name goes '
                    'in the next release', DeprecationWarning, stacklevel=2)
  return None


def flags_parser(argv: list[str], name: str = 'config') -> list[str]:
  """`app.run`'s flags_parser: one line on stderr and exit 1 for a bad config or override."""
  sentence = command_line_error(argv[1:], name)
  if sentence:
    program = os.path.basename(argv[0]) if argv else 'python'
    sys.stderr.write(f'{program}: {sentence}\n')
    sys.exit(1)
  return app.parse_flags_with_usage(argv)
