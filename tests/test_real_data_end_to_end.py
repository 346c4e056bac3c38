"""The paper's protocols end to end on tiny fake datasets in the real formats, through the CLI.

`train.py --config.dataset=w300` trains on a fake 300-W tree in a manual dir, then
`eval.py --protocol table1,table2,table3` evaluates the run on fake 300-W, COFW (with COFW-68)
and AFLW2000-3D. The numbers are meaningless (a few steps on a dozen faces); the machinery is
the point: every table's every column holds finite numbers for the faces that were written.
"""

import json
import subprocess
import sys

import numpy as np

from tests import fake_datasets
from tests import fake_real_datasets
from tests.micro import ROOT, finish, run_train


def test_train_on_w300_then_tables_1_2_3(tmp_path):
  manual = tmp_path / 'manual'
  w300 = fake_datasets.write_w300(manual / 'w300')
  cofw = fake_real_datasets.write_cofw(manual)
  aflw = fake_real_datasets.write_aflw2000_3d(manual / 'aflw2000_3d')
  data_dir, workdir = tmp_path / 'tfds', tmp_path / 'run'
  out = finish(run_train(workdir, str(data_dir), dataset='w300', manual_dir=str(manual),
                         eval_split='common', num_train_steps=2, log_every_steps=2,
                         checkpoint_every_steps=2, eval_every_steps=2), timeout=600)
  assert 'eval at step 2' in out

  result = subprocess.run(
      [sys.executable, str(ROOT / 'eval.py'), '--workdir', str(workdir), '--manual_dir',
       str(manual), '--protocol', 'table1,table2,table3', '--batch_size', '4'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((workdir / 'results.json').read_text())
  tables = results['protocols']
  assert set(tables) == {'table1', 'table2', 'table3'}
  sizes = {s: len(f) for s, f in w300.splits.items()}
  t1 = tables['table1']['subsets']
  assert t1['lfpw']['num_images'] == sizes['lfpw_test']
  assert t1['helen']['num_images'] == sizes['helen_test']
  assert t1['ibug']['num_images'] == sizes['ibug']
  assert t1['cofw']['num_images'] == len(cofw['test']['images'])
  assert t1['cofw']['landmarks'] == 'cofw29' and t1['lfpw']['normalizer'] == 'inter_pupil'
  t2 = tables['table2']
  assert t2['aggregates']['full']['num_images'] == sizes['full']
  assert t2['subsets']['lfpw_io']['normalizer'] == 'inter_ocular'
  t3 = tables['table3']
  buckets = [t3['subsets'][b]['num_images'] for b in ('yaw_0_30', 'yaw_30_60', 'yaw_60_90')]
  yaws = np.abs([f['yaw_deg'] for f in aflw['faces'].values()])
  assert buckets == [int((yaws <= 30).sum()), int(((yaws > 30) & (yaws <= 60)).sum()),
                     int((yaws > 60).sum())]
  for table in tables.values():
    for row in list(table['subsets'].values()) + list(table['aggregates'].values()):
      assert np.isfinite(row['nme']) and row['nme'] > 0, row
  assert '## table3' in (workdir / 'results.md').read_text()
