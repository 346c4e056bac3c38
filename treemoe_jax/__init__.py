"""treemoe-jax: Tree-gated Deep Mixture-of-Experts for pose-robust face alignment, in JAX/Flax.

Layout (imports flow upwards only; `tests/test_import_graph.py` checks it):
  geometry/   conventions: the 68-point markup, mirror, pupils, head pose from landmarks (numpy)
  metrics     NME, failure rate, AUC, CED
  crop        the face crop (JAX): a box in an image -> the model's input, and back
  nn/         the Flax modules: gates, experts, patches, pose, cascade, models, routing
  runs        a trained workdir restored: config, s(0), parameters, model
  bundle      a trained model as plain files; weights/ holds the pretrained one
  train/      the train state, the step, the loop, tasks, schedules, progress, the run's record
  evaluate/   protocols, the evaluation of a workdir, reports and figures
  inference/  the Aligner, export, detectors, photo files and drawing (no TensorFlow)

Axis letters, the same in every module: B batch rows, N faces of a whole set, P landmarks (68),
Q landmarks of another markup (29 for COFW), K cascade stages, L experts of a committee (the
paper's L for the representation layer, L' for the regression layer), A experts a routing runs,
D tree depth, I internal tree nodes (2**D - 1), F features a gate or regressor reads, n features
per landmark, O regression outputs (2P), S face-crop side (150), Z patch side, H, W, C image
height, width, channels, T thresholds of a CED curve. (The renderer, input_pipeline/synthetic.py,
keeps letters of its own for its mesh.)

Submodules load on first use, so `treemoe_jax.geometry` (numpy only) stays light for the
renderer's worker processes, and nothing here imports TensorFlow. The flat module names of
release 0.1 (`treemoe_jax.gates`, `treemoe_jax.aligner`, ...) still import, as aliases of their
new homes.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = '0.2.0'

_SUBPACKAGES = ('bundle', 'crop', 'checkpointing', 'cli', 'evaluate', 'geometry', 'inference',
                'metrics', 'nn', 'parallel', 'runs', 'train', 'xla_options')

# The 0.1 flat modules -> where they live now. SPEC's public names (gates, patches, experts, pose,
# cascade, models, metrics, geometry) keep working through these; the rest for one release.
MOVED = {
    'align_files': 'treemoe_jax.inference.align_files',
    'aligner': 'treemoe_jax.inference.aligner',
    'annotate': 'treemoe_jax.inference.drawing',
    'cascade': 'treemoe_jax.nn.cascade',
    'detect': 'treemoe_jax.inference.detect',
    'experts': 'treemoe_jax.nn.experts',
    'export': 'treemoe_jax.inference.export',
    'gates': 'treemoe_jax.nn.gates',
    'models': 'treemoe_jax.nn.models',
    'patches': 'treemoe_jax.nn.patches',
    'photos': 'treemoe_jax.inference.photos',
    'plots': 'treemoe_jax.evaluate.plots',
    'pose': 'treemoe_jax.nn.pose',
    'pose_fit': 'treemoe_jax.geometry.head_pose',
    'pretrained': 'treemoe_jax.nn.pretrained',
    'progress': 'treemoe_jax.train.progress',
    'protocols': 'treemoe_jax.evaluate.protocols',
    'reports': 'treemoe_jax.evaluate.reports',
    'routing': 'treemoe_jax.nn.routing',
    'schedules': 'treemoe_jax.train.schedules',
    'tasks': 'treemoe_jax.train.tasks',
    'workdirs': 'treemoe_jax.train.record',
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """`import treemoe_jax.gates` gives the module object of `treemoe_jax.nn.gates` (one module,
  two names: patching either patches both)."""

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    prefix, _, name = fullname.rpartition('.')
    if prefix == __name__ and name in MOVED:
      return importlib.util.spec_from_loader(fullname, self)
    return None

  def create_module(self, spec):
    module = importlib.import_module(MOVED[spec.name.rpartition('.')[2]])
    self._own_spec = module.__spec__
    return module

  def exec_module(self, module):
    # Already executed under its own name; the import system set __spec__ to the alias's.
    module.__spec__ = self._own_spec


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
  sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name: str):
  if name in _SUBPACKAGES or name in MOVED:
    return importlib.import_module(f'{__name__}.{name}')
  if name == 'Aligner':
    return importlib.import_module('treemoe_jax.inference.aligner').Aligner
  raise AttributeError(f'module treemoe_jax has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + list(_SUBPACKAGES) + list(MOVED) + ['Aligner'])
