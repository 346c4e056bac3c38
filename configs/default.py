"""Shared fields of every experiment, and the paper's sizes of the six architectures.

Full size (section 3.5, ~18M parameters per cascade stage) is an accelerator job:
  python train.py --config configs/pose_tree_moe.py --workdir /tmp/ptm
The `cpu` variant keeps the same code at small widths, few experts and two stages, so that it
runs on a CPU in minutes (the README main job); `reproduction` is the CPU reproduction's size:
  python train.py --config configs/pose_tree_moe.py:cpu --workdir /tmp/ptm_cpu
"""

import warnings

import ml_collections

# Section 3.5 / SPEC's table: what each architecture is at full size. Gate kinds follow from
# the name (treemoe_jax.nn.models.GATES); these are the sizes.
_SINGLE_CNN = dict(representation_features=(20, 40, 80, 160, 30), num_representation_experts=1)
_POSE_CNNS = dict(representation_features=(7, 14, 28, 56, 30), num_representation_experts=8,
                  representation_gate_depth=3)
_REGRESSORS = dict(num_regression_experts=64, regression_hidden=128, regression_gate_depth=6)
PAPER_SIZES = {
    'baseline': dict(**_SINGLE_CNN, num_regression_experts=1, regression_hidden=8192),
    'moe': dict(**_SINGLE_CNN, **_REGRESSORS),
    'softmax_moe': dict(**_SINGLE_CNN, **_REGRESSORS),
    'tree_moe': dict(**_SINGLE_CNN, **_REGRESSORS),
    'pose_softmax_moe': dict(**_POSE_CNNS, **_REGRESSORS),
    'pose_tree_moe': dict(**_POSE_CNNS, **_REGRESSORS),
}

# The same code at CPU scale: 2 stages, 16x16 patches, 8 features per landmark, 4 pose experts,
# 8 regressors of 128 hidden units (docs/learning.md).
_TINY_CNN = dict(representation_features=(8, 8, 16, 16, 8))
TINY_SIZES = {
    'baseline': dict(**_TINY_CNN, num_representation_experts=1, num_regression_experts=1,
                     regression_hidden=1024),
    'pose': dict(**_TINY_CNN, num_representation_experts=4, representation_gate_depth=2,
                 num_regression_experts=8, regression_hidden=128, regression_gate_depth=3),
    'single_cnn': dict(**_TINY_CNN, num_representation_experts=1, num_regression_experts=8,
                       regression_hidden=128, regression_gate_depth=3),
}

# The reproduction's CPU size (experiments/reproduce.py): every architecture at the same parameter
# budget per stage, as section 3.5 insists (docs/reproduction.md).
_SMALL_SINGLE_CNN = dict(representation_features=(8, 8, 16, 16, 8), num_representation_experts=1)
_SMALL_POSE_CNNS = dict(representation_features=(4, 4, 8, 8, 8), num_representation_experts=4,
                        representation_gate_depth=2)
_SMALL_REGRESSORS = dict(num_regression_experts=8, regression_hidden=128, regression_gate_depth=3)
SMALL_SIZES = {
    'baseline': dict(**_SMALL_SINGLE_CNN, num_regression_experts=1, regression_hidden=1024),
    'pose': dict(**_SMALL_POSE_CNNS, **_SMALL_REGRESSORS),
    'single_cnn': dict(**_SMALL_SINGLE_CNN, **_SMALL_REGRESSORS),
}

# The reproduction's size with the paper's 64 regressors under depth-6 trees, each 16 hidden units
# wide: 64 x 16 = 8 x 128 = 1024 hidden units, the same budget as `reproduction` and its baseline.
# Fig. 6 and tree against softmax are claims about 64 experts (section 4.4.2).
_SMALL_64_REGRESSORS = dict(num_regression_experts=64, regression_hidden=16,
                            regression_gate_depth=6)
SMALL_64_SIZES = {
    'baseline': SMALL_SIZES['baseline'],
    'pose': dict(**_SMALL_POSE_CNNS, **_SMALL_64_REGRESSORS),
    'single_cnn': dict(**_SMALL_SINGLE_CNN, **_SMALL_64_REGRESSORS),
}

VARIANTS = ('full', 'reproduction', 'reproduction_64', 'cpu')
# Release 0.1's names, read for one more release with a warning: they collided with the
# synthetic_faces dataset configs ('tiny' trained on synthetic_faces/small).
DEPRECATED_VARIANTS = {'tiny': 'cpu', 'small': 'reproduction'}
# Release 0.1's config field names, still settable (--config.model.cnn_features=...) as aliases
# of the renamed fields (treemoe_jax.runs.RENAMED_FIELDS): setting either sets both.
DEPRECATED_FIELDS = {
    'cnn_features': 'representation_features',
    'num_cnn_experts': 'num_representation_experts',
    'cnn_kernel_sizes': 'representation_kernel_sizes',
    'cnn_conv_impl': 'representation_conv_impl',
    'cnn_lowering': 'representation_lowering',
    'cnn_first_layer': 'representation_first_layer',
    'mlp_lowering': 'regression_lowering',
}


def model_config(architecture: str) -> ml_collections.ConfigDict:
  """The full-size `config.model` of one architecture."""
  if architecture not in PAPER_SIZES:
    raise ValueError(f'unknown architecture {architecture!r}; valid: {", ".join(PAPER_SIZES)}')
  model = ml_collections.ConfigDict(dict(
      architecture=architecture,
      image_size=150,
      num_landmarks=68,
      patch_size=32,
      num_stages=4,
      representation_kernel_sizes=(5, 5, 3, 3, 1),
      representation_conv_impl='im2col',  # or 'xla' (nn.Conv): the same outputs, another speed
      # How the CNN committee is computed: 'auto' (per backend, measured), 'vmap' or 'merged'.
      representation_lowering='auto',
      # Its first layer in the merged lowerings: 'auto' (per backend, measured), 'conv', 'matmul'.
      representation_first_layer='auto',
      # How the 64-regressor committee is computed: 'auto' (per backend, measured), 'vmap', 'scan'.
      regression_lowering='auto',
      # 'bfloat16': the committees and the pose estimator compute in bf16; parameters, patch
      # coordinates, gates, displacements and the loss stay float32 (docs/benchmarks.md).
      dtype='float32',
      representation_gate_depth=3,
      regression_gate_depth=6,
      # Each stage trained on s(k) as data, no gradient into the stage before (docs/learning.md).
      stop_gradient_between_stages=True,
      # The gate reads a *trained*, frozen head-pose estimator (section 3.1; docs/learning.md).
      freeze_pose=True,
      gate_pose='estimator',  # or 'truth': gate on the true head pose (an oracle, for analysis)
      regression_output_init='lecun',
      # For the first stages, how many times smaller the image their patches are cut from is (a
      # patch spans patch_size * scale px); later stages and () = 1, the paper's fixed patches.
      patch_scales=(),  # 'zeros': each fresh stage starts as the identity
  ))
  model.update(PAPER_SIZES[architecture])
  return model


def pose_config() -> ml_collections.ConfigDict:
  """The head-pose estimator: ResNet-50 trunk, three separate heads (section 3.1)."""
  # head_output 'wrap': angles wrapped into [-pi, pi] (pose.AngleHead says why not pi * tanh).
  return ml_collections.ConfigDict(dict(stage_sizes=(3, 4, 6, 3), base_width=64, head_hidden=256,
                                        head_output='wrap'))


def _training(config: ml_collections.ConfigDict) -> None:
  """Section 3.5: L2 on landmark positions, Adam at 1e-3, the paper's augmentation."""
  config.dataset = 'synthetic_faces/default'  # any project TFDS dataset, 'name/builder_config'
  config.data_dir = ''  # '' = TFDS's default (~/tensorflow_datasets)
  # Where downloaded datasets (w300, cofw, w300_lp, aflw2000_3d, face_folder) are read from, once,
  # to prepare them ('' = TFDS's DATA_DIR/downloads/manual); see README "Real datasets".
  config.manual_dir = ''
  config.train_split = 'train'
  # Evaluated during training, and where choices are made: the test faces are for the final
  # tables only (eval.py --split test). A dataset without one: --config.eval_split=test.
  config.eval_split = 'validation'
  config.eval_protocol = 'synthetic_table1,synthetic_table3'  # eval.py's tables (protocols.py)
  config.batch_size = 64  # global, over all devices and hosts
  config.num_train_steps = 60_000
  config.learning_rate = 1e-3
  config.lr_schedule = 'constant'  # 'cosine': warm-up, then cosine decay to 0; 'wsd' (train.py)
  config.warmup_steps = 0
  config.decay_steps = 0  # 'wsd' only: the last steps, where the rate falls linearly to 0
  config.loss_stages = 'all'  # 'all': every stage's shape regressed to the truth; 'last'
  # 'distance': each landmark's Euclidean error; 'l2': section 3.5's squared error
  # (docs/learning.md).
  config.loss_type = 'distance'

  # Mixture-of-experts objectives (treemoe_jax/train/expert_losses.py): each expert path's own
  # error weighted by its gate (Jacobs et al. 1991), no loss on the mixture itself: chosen on the
  # validation views (docs/learning.md), where the paper's mixture loss alone left greedy routing
  # 9.6x dense. The paper's: expert_loss='none', expert_loss_weight=0, mixture_loss_weight=1.
  config.moe = ml_collections.ConfigDict(dict(
      expert_loss='weighted', expert_loss_weight=1.0, mixture_loss_weight=0.0,
      competition_scale=1.0, balance_weight=0.0, entropy_weight=0.0))

  config.nme_normalizer = 'box'  # for the logged NME: 'box' suits every pose; 'inter_pupil'
  # s(0) moved by N(0, translate_std) px and scaled by N(1, scale_std) (section 3.5; 3 px, not the
  # paper's 10: docs/learning.md); beyond the paper, the face box jittered like a detector's
  # (pipeline.AugmentConfig). Eval never jitters.
  config.augment = ml_collections.ConfigDict(dict(translate_std=3.0, scale_std=0.1,
                                                   flip_prob=0.5, box_shift_std=0.05,
                                                   box_scale_std=0.05))
  # Encoded training records in the shuffle buffer, after each epoch's files are shuffled.
  config.shuffle_buffer = 10_000
  config.crop_margin = 0.25  # face box widened by this fraction on each side before resizing
  config.log_every_steps = 50
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 1_000
  config.keep_checkpoints = 3
  # Pose-gated models: a trained pose estimator's workdir ('' = train one first, into
  # WORKDIR/pose, for pose_train_steps), and ImageNet ResNet-50 weights (Keras .h5) for its trunk.
  config.pose_checkpoint = ''
  # Start from a trained model's weights (and s(0)) instead of at random, to fine-tune it:
  # 'pretrained' (the package's, README "Pretrained model") or a bundle folder
  # (treemoe_jax/bundle.py). Its model and pose sizes must be this config's.
  config.init_from = ''
  config.pose_train_steps = 20_000
  config.resnet50_weights = ''


def _cpu(config: ml_collections.ConfigDict) -> None:
  config.model.update(TINY_SIZES[_size_kind(config.model.architecture)])
  config.model.num_stages = 2
  config.model.patch_size = 16  # a quarter of the CNN work: the CPU main job's budget
  config.model.patch_scales = (2.0,)  # the first stage sees 32 px (docs/learning.md)
  config.pose.update(dict(stage_sizes=(1, 1, 1, 1), base_width=8, head_hidden=32))
  config.dataset = 'synthetic_faces/small'
  config.batch_size = 16
  # Steps that fit the README main job in about ten CPU minutes (docs/learning.md).
  config.num_train_steps = 1500
  config.pose_train_steps = 1000
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 250


def _reproduction(config: ml_collections.ConfigDict) -> None:
  """cpu's patches and pose estimator; a third stage, equal budgets, more faces, longer
  (docs/learning.md, docs/reproduction.md)."""
  _cpu(config)
  config.model.update(SMALL_SIZES[_size_kind(config.model.architecture)])
  config.model.num_stages = 3
  config.dataset = 'synthetic_faces/default'
  config.num_train_steps = 6000
  config.learning_rate = 2e-3  # a warm-up to twice section 3.5's rate, then a cosine decay
  config.lr_schedule = 'cosine'
  config.warmup_steps = 300
  config.pose_train_steps = 3000
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 500


def _reproduction_64(config: ml_collections.ConfigDict) -> None:
  """`reproduction` with 64 narrow regressors per stage (SMALL_64_SIZES)."""
  _reproduction(config)
  config.model.update(SMALL_64_SIZES[_size_kind(config.model.architecture)])
  # With 64 regressors the path objective alone committed the faces to a handful of them (6, 3
  # and 6 in use of 64 at the three stages); evening out the batch's gate importance spreads them
  # over 33-56 and keeps greedy within 1.10x of dense: chosen on the validation views among the
  # objectives that keep greedy within 1.10x, the lowest mean dense NME (docs/learning.md, "Few
  # regressors in use"). `full` has 64 regressors too but was not measured: it keeps the default.
  config.moe.balance_weight = 0.1


def _size_kind(architecture: str) -> str:
  return ('baseline' if architecture == 'baseline' else
          'pose' if architecture.startswith('pose_') else 'single_cnn')


def get_config(architecture: str = 'pose_tree_moe', variant: str | None = None
               ) -> ml_collections.ConfigDict:
  """The experiment config of `architecture` at `variant` size ('full', 'reproduction',
  'reproduction_64' or 'cpu')."""
  variant = variant or 'full'
  if variant in DEPRECATED_VARIANTS:
    warnings.warn(f'size variant {variant!r} is now {DEPRECATED_VARIANTS[variant]!r}; the old '
                  'name goes in the next release', DeprecationWarning, stacklevel=2)
    variant = DEPRECATED_VARIANTS[variant]
  if variant not in VARIANTS:
    raise ValueError(f'unknown variant {variant!r}; valid: {", ".join(VARIANTS)}')
  config = ml_collections.ConfigDict()
  config.variant = variant
  config.task = 'alignment'  # or 'pose': train the head-pose estimator alone
  config.seed = 0
  config.model = model_config(architecture)
  config.pose = pose_config()
  _training(config)
  if variant == 'cpu':
    _cpu(config)
  elif variant == 'reproduction':
    _reproduction(config)
  elif variant == 'reproduction_64':
    _reproduction_64(config)
  for old, new in DEPRECATED_FIELDS.items():
    config.model[old] = config.model.get_ref(new)
  config.lock()
  return config
