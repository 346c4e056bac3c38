"""Training (section 3.5): `train_and_evaluate(config, workdir)`, what `train.py` calls.

  trainer    the train state, the data-parallel step, the loop (batches from any iterator)
  tasks      what is trained: the head-pose estimator or the cascade (model, loss, metrics)
  schedules  learning-rate schedules
  progress   log lines, TensorBoard events and metrics.jsonl
  record     the workdir's record (config.json, mean_shape.npy) and the resume rules
"""


def __getattr__(name: str):
  if name == 'train_and_evaluate':  # lazily: `from treemoe_jax.train import record` stays light
    from treemoe_jax.train.trainer import train_and_evaluate  # pylint: disable=g-import-not-at-top
    return train_and_evaluate
  raise AttributeError(f'module treemoe_jax.train has no attribute {name!r}')
