"""The import graph flows one way: no cycles, and the model and inference layers never reach
training, evaluation or TensorFlow (issue 33). Read from the source with `ast`, every import
counted, at module level or inside a function, so a lazy import cannot hide an edge."""

import ast
import pathlib
import subprocess
import sys

import pytest

import treemoe_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('treemoe_jax', 'input_pipeline', 'benchmarks', 'experiments', 'configs')


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts.pop()
  return '.'.join(parts)


def project_modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob('*.py')}


def imports_of(path: pathlib.Path, name: str, modules: dict) -> set[str]:
  """The project modules `path` imports. `from a.b import c` names a.b.c where that is a module,
  else a.b."""
  package = name if path.name == '__init__.py' else name.rpartition('.')[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1]
                        + ([base] if base else []))
      for alias in node.names:
        found.add(f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base)
  # A dotted module imports its parent packages too (their __init__ runs).
  closed = set()
  for target in found:
    parts = target.split('.')
    closed |= {'.'.join(parts[:i]) for i in range(1, len(parts) + 1)}
  return {m for m in closed if m in modules and m != name}


def graph() -> dict[str, set[str]]:
  modules = project_modules()
  return {name: imports_of(path, name, modules) for name, path in modules.items()}


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    for nxt in edges[todo.pop()]:
      if nxt not in seen:
        seen.add(nxt)
        todo.append(nxt)
  return seen


def strip_parents(edges: dict[str, set[str]]) -> dict[str, set[str]]:
  """Edges to a module's own ancestors (a package __init__ that only documents) are not cycles."""
  return {m: {t for t in ts if not m.startswith(t + '.')} for m, ts in edges.items()}


def test_the_graph_reader_sees_known_edges():
  edges = graph()
  assert 'treemoe_jax.nn.gates' in edges['treemoe_jax.nn.cascade']
  assert 'treemoe_jax.geometry.markup' in edges['treemoe_jax.geometry.head_pose']
  assert 'treemoe_jax.runs' in edges['treemoe_jax.inference.aligner']  # a lazy import counts


def test_no_cycles_among_the_projects_modules():
  edges = strip_parents(graph())
  cycles = sorted(m for m in edges if m in reachable(edges, m))
  assert not cycles, f'modules on an import cycle: {cycles}'


@pytest.mark.parametrize('layer', ['treemoe_jax.nn', 'treemoe_jax.inference', 'treemoe_jax.crop',
                                   'treemoe_jax.runs', 'treemoe_jax.geometry'])
def test_model_and_inference_import_neither_training_nor_evaluation(layer):
  edges = graph()
  starts = [m for m in edges if m == layer or m.startswith(layer + '.')]
  reached = set().union(*(reachable(edges, m) for m in starts))
  # The data layer's file readers (PIL, scipy, h5py) are allowed; its TensorFlow parts are not.
  allowed = ('input_pipeline', 'input_pipeline.formats')
  bad = sorted(m for m in reached if m not in allowed and m.startswith((
      'treemoe_jax.train', 'treemoe_jax.evaluate', 'input_pipeline', 'benchmarks', 'experiments')))
  assert not bad, f'{layer} reaches {bad}'


def test_lower_layers_do_not_import_upper_ones():
  edges = graph()
  bottom = ('treemoe_jax.geometry', 'treemoe_jax.metrics', 'treemoe_jax.crop')
  for module, targets in edges.items():
    if module.startswith(bottom):
      assert all(t.startswith(bottom) or t == 'treemoe_jax' for t in targets), (module, targets)
    if module.startswith('input_pipeline'):
      assert not any(t.startswith(('treemoe_jax.train', 'treemoe_jax.evaluate',
                                   'treemoe_jax.inference')) for t in targets), (module, targets)
    if module.startswith('benchmarks'):
      assert not any(t.startswith('experiments') for t in targets), (module, targets)


# Every 0.1 flat name (treemoe_jax.MOVED), so that nothing added to the package, a folder of the
# same name included (a namespace package found before the alias), shadows one.
MOVED_PAIRS = [(f'treemoe_jax.{old}', new) for old, new in sorted(treemoe_jax.MOVED.items())]


def test_the_old_flat_paths_still_import_the_same_module():
  # One fresh process (an import is cached per process): each old path, then its new home.
  lines = ['import importlib, sys']
  for old, new in MOVED_PAIRS:
    lines += [f'a = importlib.import_module({old!r}); b = importlib.import_module({new!r})',
              f'assert a is b and sys.modules[{old!r}] is b and b.__spec__.name == {new!r}, {old!r}',
              f'exec("from {old} import *")']
  subprocess.run([sys.executable, '-c', '\n'.join(lines)], check=True, cwd=ROOT)


def test_spec_public_names_import_from_their_old_paths():
  code = ('from treemoe_jax.gates import tree_leaf_probs, TreeGate, SoftmaxGate, UniformGate\n'
          'from treemoe_jax.patches import extract_patches\n'
          'from treemoe_jax.experts import ExpertMLPs, ExpertCNNs\n'
          'from treemoe_jax.metrics import nme, failure_rate, auc, ced\n'
          'from treemoe_jax.geometry import MIRROR_68, pose_from_landmarks, MEAN_FACE_3D\n'
          'from treemoe_jax import Aligner, models, cascade, pose\n'
          'assert callable(models.create) and hasattr(Aligner, "from_export")\n'
          'import sys; assert "tensorflow" not in sys.modules\n')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)
