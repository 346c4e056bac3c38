"""Progress of a training run: a log line per log step, TensorBoard events and metrics.jsonl.

The writer (clu, which imports TensorFlow) is created when a run starts, so that importing the
training machinery stays TF-free; where clu is not installed (a TF-free accelerator machine) the
run logs and writes metrics.jsonl without TensorBoard events.
"""

import json
import logging
import pathlib
import time

import jax
import numpy as np


def _scalars(metrics: dict) -> dict[str, float]:
  return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def _json_ready(metrics: dict) -> dict:
  return {k: (np.asarray(v).round(6).tolist()) for k, v in metrics.items()}


class Progress:
  """A line per log step (step, loss, img/s, ETA) and the same figures as TensorBoard + JSON."""

  def __init__(self, workdir: pathlib.Path, total_steps: int, batch_size: int, first_step: int):
    self.lead = jax.process_index() == 0
    try:
      from clu import metric_writers  # pylint: disable=g-import-not-at-top (imports TensorFlow)
    except ImportError:
      logging.warning('clu is not installed: no TensorBoard events, metrics.jsonl only '
                      "(pip install 'treemoe-jax[train]')")
      self.writer = None
    else:
      self.writer = metric_writers.create_default_writer(str(workdir), just_logging=not self.lead)
    self.jsonl = workdir / 'metrics.jsonl'
    self.total, self.batch = total_steps, batch_size
    self.last_step, self.last_time = first_step, time.perf_counter()

  def log(self, step: int, metrics: dict, kind: str = 'train') -> None:
    now = time.perf_counter()
    extra = {}
    if kind == 'train':
      rate = (step - self.last_step) * self.batch / max(now - self.last_time, 1e-9)
      eta = (self.total - step) * self.batch / max(rate, 1e-9)
      extra = {'img_per_s': rate}
      self.last_step, self.last_time = step, now
      nme = metrics.get(f'nme/stage{_last_stage(metrics)}')
      logging.info('step %d/%d  loss %.4f%s  %.1f img/s  ETA %s', step, self.total,
                   float(metrics['loss']), f'  nme {float(nme):.4f}' if nme is not None else '',
                   rate, _duration(eta))
    else:
      logging.info('%s at step %d: %s', kind, step,
                   '  '.join(f'{k} {v:.4f}' for k, v in sorted(_scalars(metrics).items())))
    prefixed = {f'{kind}/{k}': v for k, v in (metrics | extra).items()}
    if self.writer is not None:
      self.writer.write_scalars(step, _scalars(prefixed))
    if self.lead:
      with self.jsonl.open('a') as f:
        f.write(json.dumps({'step': step, **_json_ready(prefixed)}) + '\n')

  def close(self):
    if self.writer is not None:
      self.writer.flush()
      self.writer.close()


def _last_stage(metrics: dict) -> int:
  stages = [int(k.removeprefix('nme/stage')) for k in metrics if k.startswith('nme/stage')]
  return max(stages) if stages else -1


def _duration(seconds: float) -> str:
  minutes, seconds = divmod(int(seconds), 60)
  return f'{minutes // 60}h{minutes % 60:02d}m' if minutes >= 60 else f'{minutes}m{seconds:02d}s'
