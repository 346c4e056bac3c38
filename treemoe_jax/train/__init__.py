"""Training (section 3.5): `train_and_evaluate(config, workdir)`, what `train.py` calls.

  trainer    the train state, the data-parallel step, the loop (batches from any iterator)
  data       where batches come from: tf.data (TFDSData) or arrays in memory (ArrayData)
  tasks      what is trained: the head-pose estimator or the cascade (model, loss, metrics)
  expert_losses  mixture-of-experts objectives beside the mixture's loss (config.moe)
  schedules  learning-rate schedules
  progress   log lines, TensorBoard events and metrics.jsonl
  record     the workdir's record (config.json, mean_shape.npy) and the resume rules
"""

from treemoe_jax import deprecation

# Lazily: `from treemoe_jax.train import <submodule>` stays light. 0.1's names warn.
__getattr__ = deprecation.package_getattr(__name__, 'trainer', ('train_and_evaluate',))
