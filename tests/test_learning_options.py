"""The learning-quality options (docs/learning.md): schedule, output init, patch scales."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from treemoe_jax.nn import models
from treemoe_jax.train import trainer as train


def _config(**changes):
  config = default.get_config('tree_moe', 'cpu')
  with config.unlocked():
    for key, value in changes.items():
      target = config
      *path, last = key.split('.')
      for part in path:
        target = target[part]
      target[last] = value
  return config


def test_cosine_schedule_warms_up_then_decays_to_zero():
  config = _config(lr_schedule='cosine', warmup_steps=100, num_train_steps=1100,
                   learning_rate=2e-3)
  schedule = train.learning_rate_schedule(config)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(50)), 1e-3, rtol=1e-6)  # half way up, linearly
  np.testing.assert_allclose(float(schedule(100)), 2e-3, rtol=1e-6)
  # cos decay: lr * (1 + cos(pi * t)) / 2 at fraction t of the 1000 decay steps
  for step in (350, 600, 850):
    t = (step - 100) / 1000
    np.testing.assert_allclose(float(schedule(step)), 2e-3 * (1 + np.cos(np.pi * t)) / 2,
                               rtol=1e-5)
  assert abs(float(schedule(1100))) < 1e-12


def test_constant_schedule_is_the_papers_and_unknown_is_refused():
  schedule = train.learning_rate_schedule(_config(lr_schedule='constant'))
  assert float(schedule(0)) == float(schedule(10_000)) == pytest.approx(1e-3)
  with pytest.raises(ValueError, match='unknown lr_schedule'):
    train.learning_rate_schedule(_config(lr_schedule='linear'))


def test_wsd_schedule_warms_up_holds_then_decays_linearly_to_zero():
  config = _config(lr_schedule='wsd', warmup_steps=100, decay_steps=400, num_train_steps=1500,
                   learning_rate=2e-3)
  schedule = train.learning_rate_schedule(config)
  expected = {0: 0.0, 50: 1e-3, 100: 2e-3, 600: 2e-3, 1099: 2e-3,  # up, then flat until 1100
              1100: 2e-3, 1200: 1.5e-3, 1400: 0.5e-3, 1500: 0.0}  # 2e-3 * (1500 - t) / 400
  for step, rate in expected.items():
    np.testing.assert_allclose(float(schedule(step)), rate, rtol=1e-5, atol=1e-12)
  # Without warm-up or decay it is the constant schedule.
  flat = train.learning_rate_schedule(_config(lr_schedule='wsd', num_train_steps=300))
  assert [float(flat(t)) for t in (0, 150, 299)] == pytest.approx([1e-3] * 3)
  with pytest.raises(ValueError, match='decay_steps'):
    train.learning_rate_schedule(_config(lr_schedule='wsd', warmup_steps=100, decay_steps=950,
                                         num_train_steps=1000))


@pytest.mark.parametrize('architecture', ['baseline', 'tree_moe'])
def test_zero_initialised_regressors_leave_every_stage_at_s0(architecture):
  config = default.get_config(architecture, 'cpu')
  with config.unlocked():
    config.model.regression_output_init = 'zeros'
  model = models.create(config)
  variables = models.init(model, jax.random.key(3))
  images = jax.random.uniform(jax.random.key(1), (2, 150, 150), minval=-1, maxval=1)
  init_shape = jax.random.uniform(jax.random.key(2), (2, 68, 2), minval=40, maxval=110)
  out = jax.jit(model.apply)(variables, images, init_shape)  # compiled: eager is slower here
  for stage_shape in out['stage_shapes']:
    np.testing.assert_array_equal(stage_shape, init_shape)
  # ...and the output layer still learns: its gradient is not zero (the last stage's: the loss
  # below is on the final shape, and stages are trained stage-wise by default).
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({'params': p}, images, init_shape)[
      'shape'] ** 2)))(variables['params'])
  last = f'stage{config.model.num_stages - 1}'
  out_kernel = grads['cascade'][last]['regression']['experts']['out']['kernel']
  assert float(jnp.abs(out_kernel).sum()) > 0


def test_patch_scales_set_the_first_stages():
  model = models.create(_config(**{'model.patch_scales': (2.0,), 'model.num_stages': 3}))
  assert model.patch_scales == (2.0, 1.0, 1.0)
  variables = models.init(model, jax.random.key(0))
  assert model.apply(variables, jnp.zeros((1, 150, 150)), jnp.full((1, 68, 2), 75.0))[
      'shape'].shape == (1, 68, 2)
  assert models.create(_config(**{'model.patch_scales': ()})).patch_scales is None
  with pytest.raises(ValueError, match='patch_scales has 3 entries for 2 stages'):
    models.create(_config(**{'model.patch_scales': (3.0, 2.0, 1.0)}))


def _stage_params(architecture: str, variant: str) -> dict[str, int]:
  model = models.create(default.get_config(architecture, variant))
  params = jax.eval_shape(lambda: models.init(model, jax.random.key(0)))['params']
  stage = params['cascade']['stage0']
  return {part: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(stage[part]))
          for part in ('representation', 'regression')}


@pytest.mark.parametrize('variant', ['reproduction', 'reproduction_64'])
def test_reproduction_variant_gives_every_architecture_the_same_budget_per_stage(variant):
  """Section 3.5: the comparison is fair only at equal parameter budgets (within 10%), with 8
  regressors or with the paper's 64 (narrower) alike."""
  counts = {a: _stage_params(a, variant) for a in
            ('baseline', 'moe', 'softmax_moe', 'tree_moe', 'pose_softmax_moe', 'pose_tree_moe')}
  for part in ('representation', 'regression'):
    values = [c[part] for c in counts.values()]
    assert max(values) <= 1.1 * min(values), (part, counts)
  if variant == 'reproduction_64':
    config = default.get_config('pose_tree_moe', variant).model
    assert (config.num_regression_experts, config.regression_gate_depth) == (64, 6)


def test_the_64_regressor_size_adds_load_balance_to_the_path_objective():
  """The objective chosen at 64 regressors on validation: the path objective of the smaller
  sizes with the load-balance term; nothing else of config.moe differs."""
  at_64 = default.get_config('tree_moe', 'reproduction_64').moe.to_dict()
  at_8 = default.get_config('tree_moe', 'reproduction').moe.to_dict()
  assert at_64 == at_8 | {'balance_weight': 0.1}
  assert at_8['balance_weight'] == 0 and at_8['mixture_loss_weight'] == 0
  assert default.get_config('tree_moe', 'full').moe.balance_weight == 0


def test_legacy_pose_heads_are_read_through_tanh(tmp_path):
  """A pose workdir from before the wrapped heads (no pose.head_output in its config.json) is
  read through pi * tanh, by the estimator built from it and by cascades gated on it."""
  import json  # pylint: disable=g-import-not-at-top
  from treemoe_jax.nn import pose as pose_lib  # pylint: disable=g-import-not-at-top
  from treemoe_jax.train import record as workdirs  # pylint: disable=g-import-not-at-top
  pose_config = default.get_config('pose_tree_moe', 'cpu')
  record = json.loads(pose_config.to_json_best_effort())
  del record['pose']['head_output']
  (tmp_path / workdirs.CONFIG_FILE).write_text(json.dumps(record))
  legacy = workdirs.load_config(tmp_path)
  assert models.create_pose_estimator(legacy.pose).head_output == 'tanh'
  config = _config(pose_checkpoint=str(tmp_path))
  config.model.architecture = 'pose_tree_moe'
  adopted = train.with_pose_heads_of(config)
  assert adopted.pose.head_output == 'tanh' and config.pose.head_output == 'wrap'
  # The two outputs, against their formulas.
  phi = jnp.array([[0.5, -2.0, 3.0]])
  kernel = jnp.array([[1.0], [2.0], [0.5]])  # out = 0.5 - 4 + 1.5 = -2.0
  params = {'params': {'out': {'kernel': kernel, 'bias': jnp.zeros(1)}}}
  tanh = pose_lib.AngleHead(hidden_features=0, output='tanh').apply(params, phi)
  wrap = pose_lib.AngleHead(hidden_features=0, output='wrap').apply(params, phi)
  np.testing.assert_allclose(tanh, [[np.pi * np.tanh(-2.0)]], rtol=1e-6)
  np.testing.assert_allclose(wrap, [[-2.0]], rtol=1e-6)


def test_true_pose_gate_reads_the_given_pose_and_builds_no_estimator():
  config = default.get_config('pose_tree_moe', 'cpu')
  config.model.gate_pose = 'truth'
  model = models.create(config)
  assert model.pose_estimator is None
  variables = models.init(model, jax.random.key(0))
  assert 'pose_estimator' not in variables['params']
  images, init_shape = jnp.zeros((2, 150, 150)), jnp.full((2, 68, 2), 75.0)
  pose = jnp.array([[0.0, 0.0, 0.0], [1.2, -0.3, 0.2]])
  apply = jax.jit(lambda p: model.apply(variables, images, init_shape, pose=p))  # eager is slower
  out = apply(pose)
  np.testing.assert_array_equal(out['pose'], pose)
  # The representation gate is a function of the pose alone: the two faces (same image) differ.
  gates = np.asarray(out['gates']['representation'][0])
  assert not np.allclose(gates[0], gates[1])
  swapped = apply(pose[::-1])
  np.testing.assert_allclose(swapped['gates']['representation'][0], gates[::-1], rtol=1e-6)
  with pytest.raises(ValueError, match='pass pose'):
    model.apply(variables, images, init_shape)
