"""Parameters per cascade stage of the six full-size architectures (paper: ~18M each).

  python -m benchmarks.params

Counts come from the built models (jax.eval_shape: nothing is allocated), split by component.
"""

import jax
import numpy as np

from configs import default
from treemoe_jax.nn import models

COMPONENTS = ('representation', 'representation_gate', 'regression', 'regression_gate')


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def stage_breakdown(architecture: str) -> dict[str, int]:
  model = models.create(default.get_config(architecture))
  params = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))['params']
  stage = params['cascade']['stage0']
  counts = {name: count(stage.get(name, {})) for name in COMPONENTS}
  counts['stage'] = count(stage)
  counts['pose_estimator'] = count(params.get('pose_estimator', {}))
  counts['total'] = count(params)
  return counts


def main() -> None:
  header = ('architecture', 'CNN experts', 'rep. gate', 'regressors', 'reg. gate', 'per stage',
            'pose net', 'total (4 stages)')
  print('| ' + ' | '.join(header) + ' |')
  print('|' + '---|' * len(header))
  for architecture in default.PAPER_SIZES:
    c = stage_breakdown(architecture)
    row = [architecture] + [f'{c[k]:,}' for k in COMPONENTS] + [
        f'{c["stage"]:,} ({c["stage"] / 1e6:.2f}M)', f'{c["pose_estimator"]:,}', f'{c["total"]:,}']
    print('| ' + ' | '.join(row) + ' |')


if __name__ == '__main__':
  main()
