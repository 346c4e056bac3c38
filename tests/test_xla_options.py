"""The inference forward's XLA:CPU options: what they pick, that XLA applies them, and that the
forward computes the same numbers with them as with XLA's defaults."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from treemoe_jax.nn import experts
from treemoe_jax.nn import models
from treemoe_jax import xla_options

# Compiling with XLA:CPU's flag and reading its compiled programs needs the CPU backend.
cpu_only = pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU programs')


def test_choice_per_model_and_backend(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  flag = xla_options.YNN_FUSIONS
  assert xla_options.inference_options(True, backend='cpu') == {flag: ''}
  assert xla_options.inference_options(False, backend='cpu') == {
      flag: 'LIBRARY_FUSION_TYPE_ELTWISE'}
  assert xla_options.inference_options(True, backend='gpu') is None
  monkeypatch.setenv('XLA_FLAGS', f'--{flag}=dot')  # the user's own setting wins
  assert xla_options.inference_options(False, backend='cpu') is None


def test_an_unknown_value_falls_back_with_a_warning():  # probed on the CPU device anywhere
  with pytest.warns(UserWarning, match='refused'):
    assert not xla_options._accepted('LIBRARY_FUSION_TYPE_NO_SUCH_THING')


def _compiled_text(fn, options, *args) -> str:
  return jax.jit(fn, compiler_options=options).lower(*args).compile().as_text()


@cpu_only
def test_xla_applies_the_options():
  """The premise of the speed-up (docs/benchmarks.md): by default XLA:CPU hands the convolutions
  to YNNPACK; with no library fusions it keeps them; with elementwise ones a convolution chain
  becomes one YNNPACK graph."""
  cnn = experts.ExpertCNNs(1)  # section 3.5's widths: tiny ones stay in XLA whatever the flag
  crops = jax.random.normal(jax.random.key(0), (1, 4, 32, 32))
  variables = cnn.init(jax.random.key(1), crops)
  flag = xla_options.YNN_FUSIONS
  by_default = _compiled_text(cnn.apply, None, variables, crops)
  no_library = _compiled_text(cnn.apply, {flag: xla_options.NO_LIBRARY}, variables, crops)
  eltwise = _compiled_text(cnn.apply, {flag: xla_options.ELTWISE}, variables, crops)
  assert 'ynn' in by_default
  assert 'ynn' not in no_library and no_library.count('convolution(') == 5
  assert 'ynn_fusion' in eltwise


@cpu_only
@pytest.mark.parametrize('architecture', ['tree_moe', 'pose_tree_moe'])
def test_forward_equals_xla_defaults(architecture):
  config = default.get_config(architecture, 'cpu')
  model = models.create(config)
  variables = models.init(model, jax.random.key(0))
  size = config.model.image_size
  images = jax.random.uniform(jax.random.key(1), (4, size, size), minval=-1, maxval=1)
  init = size / 2 + size / 8 * jax.random.normal(jax.random.key(2), (4, 68, 2))
  options = xla_options.inference_options(model.pose_estimator is not None)
  assert options is not None
  forward = lambda v, x, s: model.apply(v, x, s)
  tuned = jax.jit(forward, compiler_options=options)(variables, images, init)
  plain = jax.jit(forward)(variables, images, init)
  np.testing.assert_allclose(tuned['shape'], plain['shape'], atol=1e-3)
  for kind in ('representation', 'regression'):
    np.testing.assert_allclose(tuned['gates'][kind], plain['gates'][kind], atol=1e-5)
  assert not jnp.allclose(plain['shape'], init)  # the forward moved the landmarks


def test_training_evaluation_compiles_with_the_options_and_matches_defaults(monkeypatch):
  """train.evaluate (the in-loop evaluation) picks its options from the task, like evaluate.py,
  and its metrics equal those compiled with XLA's defaults."""
  import numpy as np  # pylint: disable=g-import-not-at-top,reimported
  import optax  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from treemoe_jax import parallel  # pylint: disable=g-import-not-at-top
  from treemoe_jax.train import tasks  # pylint: disable=g-import-not-at-top
  from treemoe_jax.train import trainer as train  # pylint: disable=g-import-not-at-top
  config = default.get_config('pose_tree_moe', 'cpu')
  with config.unlocked():  # a one-block pose ResNet: the options, not its size, are under test
    config.pose.update(stage_sizes=(1,), base_width=4, head_hidden=8)
  assert tasks.pose_task(config).runs_pose_estimator
  assert not tasks.alignment_task(default.get_config('tree_moe', 'cpu')).runs_pose_estimator
  task = tasks.alignment_task(config)
  assert task.runs_pose_estimator
  mesh = parallel.make_mesh()
  state = train.create_train_state(task, optax.adam(1e-3), mesh, jax.random.key(0))
  batch = common.random_batch(config, 4, np.random.default_rng(0)) | {
      'mask': np.array([True, True, True, False])}
  asked = []
  tuned_options = xla_options.inference_options
  monkeypatch.setattr(xla_options, 'inference_options',
                      lambda runs: asked.append(runs) or tuned_options(runs))
  tuned = train.evaluate(task, state, iter([batch]), mesh)
  assert asked == [True]
  monkeypatch.setattr(xla_options, 'inference_options', lambda runs: None)
  plain = train.evaluate(task, state, iter([batch]), mesh)
  assert tuned.keys() == plain.keys() and tuned['num_examples'] == 3
  for key, value in plain.items():
    np.testing.assert_allclose(tuned[key], value, rtol=1e-4, err_msg=key)
