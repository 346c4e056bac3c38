"""`train.py` with NaN in one host's rows of one step: a process of the multi-host NaN test.

POISON_PROCESS (a process index) and POISON_STEP (1-based) say where; the other host's rows stay
clean, so only a global finiteness check stops both hosts together.
"""

import os
import pathlib
import runpy
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from input_pipeline import pipeline  # pylint: disable=g-import-not-at-top

_original = pipeline.train_dataset


def _poisoned(*args, **kwargs):
  ds = _original(*args, **kwargs)
  if kwargs.get('process_index', 0) != int(os.environ['POISON_PROCESS']):
    return ds
  bad_index = int(os.environ['POISON_STEP']) - 1 - kwargs.get('start_step', 0)

  def poison(index, batch):
    bad = np.float32(np.nan) if index == bad_index else np.float32(0)
    return batch | {'image': batch['image'] + bad}

  return ds.enumerate().map(poison)


pipeline.train_dataset = _poisoned
sys.argv[0] = str(ROOT / 'train.py')
runpy.run_path(str(ROOT / 'train.py'), run_name='__main__')
