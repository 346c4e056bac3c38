"""benchmarks/gpu_benchmark.py: FLOPs filled in afterwards equal those counted where a row ran.

XLA's GPU cost analysis counts no convolution or matmul FLOPs, so the GPU run's rows are filled
on a CPU from the same computation; here both ends run on the CPU, where the timed row carries
its own count to compare with.
"""

import argparse
import json

import pytest

from benchmarks import common
from benchmarks import gpu_benchmark


@pytest.fixture(scope='module')
def timed_rows():
  case = common.forward_case('tree_moe', 'tiny', 'float32', 'vmap/vmap')
  forward = common.forward_row(case, 2, min_seconds=0)
  train = common.train_row('tree_moe', 'tiny', 'bfloat16', 4)
  return [forward, train]


def test_filled_flops_equal_the_counts_taken_when_timed(timed_rows, tmp_path):
  run = {'machine': common.machine(), 'argv': 'x', 'json': 'x', 'gemm_gflops_start': 1.0,
         'gemm_gflops_bf16': 1.0,
         'rows': [dict(r, gflop_img=0.0, gflops=0.0) for r in timed_rows]}
  path = tmp_path / 'gpu.json'
  path.write_text(json.dumps(run))
  merged = gpu_benchmark.merge_with_flops([str(path)])
  assert [r['kind'] for r in merged['rows']] == ['forward', 'train']
  for filled, timed in zip(merged['rows'], timed_rows):
    assert timed['gflop_img'] > 0
    assert filled['gflop_img'] == pytest.approx(timed['gflop_img'], rel=1e-6)
    assert filled['gflops'] == pytest.approx(filled['gflop_img'] * filled['img_s'], rel=1e-6)
    assert filled['resolved'] == timed['resolved']
  assert merged['rows'][0]['resolved'] == 'vmap/vmap'


def test_rows_without_a_recorded_lowering_take_auto_was(timed_rows, tmp_path):
  row = {k: v for k, v in timed_rows[0].items() if k != 'resolved'}
  run = {'machine': common.machine(), 'argv': 'x', 'rows': [dict(row, lowering='auto')]}
  path = tmp_path / 'old.json'
  path.write_text(json.dumps(run))
  merged = gpu_benchmark.merge_with_flops([str(path)], auto_was='vmap/vmap')
  assert merged['rows'][0]['resolved'] == 'vmap/vmap'
  assert merged['rows'][0]['gflop_img'] == timed_rows[0]['gflop_img']  # kept, not recounted


def test_plan_puts_latency_and_largest_batch_first():
  args = argparse.Namespace(batches='1,8,32,256,1024', architectures='pose_tree_moe,tree_moe',
                            other_lowerings='merged/vmap', variant='tiny', min_seconds=0,
                            train_batch=8)
  names = [name for name, _ in gpu_benchmark.plan(args)]
  assert names[:6] == [f'forward pose_tree_moe bfloat16 batch {b}' for b in (1, 1024, 8, 32, 256)
                       ] + ['train pose_tree_moe bfloat16']
  assert 'plain port pose_tree_moe batch 1024' in names
  assert names[-2:] == ['forward tree_moe bfloat16 merged/vmap batch 1024',
                        'train tree_moe bfloat16 merged/vmap']
  args.other_lowerings = 'merged/vmap,blockdiag/vmap/s2d'
  names = [name for name, _ in gpu_benchmark.plan(args)]
  assert names[-6:] == [  # every lowering's forward, then their training steps
      'forward tree_moe bfloat16 merged/vmap batch 1', 'forward tree_moe bfloat16 merged/vmap batch 1024',
      'forward tree_moe bfloat16 blockdiag/vmap/s2d batch 1',
      'forward tree_moe bfloat16 blockdiag/vmap/s2d batch 1024',
      'train tree_moe bfloat16 merged/vmap', 'train tree_moe bfloat16 blockdiag/vmap/s2d']


def test_out_of_memory_is_said_plainly():
  assert gpu_benchmark.failed(RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying '
                                           'to allocate 9 GiB')) == 'out of memory'
  assert gpu_benchmark.failed(ValueError('bad shape\nmore')) == 'ValueError: bad shape'


def test_plot_writes_a_png(timed_rows, tmp_path):
  rows = [timed_rows[0], dict(timed_rows[0], batch=8, img_s=2 * timed_rows[0]['img_s'])]
  results = {'machine': common.machine(), 'rows': rows}
  path = tmp_path / 'gpu.png'
  gpu_benchmark.plot(results, str(path))
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert path.stat().st_size > 10_000


def test_a_first_layer_lowering_is_named_run_and_counted_as_the_convolution():
  """'CNN/MLP/FIRST' reaches the model; the row records it; its FLOPs are the useful work, the
  same count as the convolution's (the matmul's column of ones is not counted)."""
  assert common.split_lowering('auto') == ('auto', 'auto', 'auto')
  assert common.split_lowering('merged/vmap') == ('merged', 'vmap', 'auto')
  with pytest.raises(ValueError, match='CNN/MLP/FIRST'):
    common.split_lowering('merged')
  assert common.config_for('pose_tree_moe', 'tiny', 'float32',
                           'merged/vmap/matmul').model.representation_first_layer == 'matmul'
  rows = [common.forward_row(common.forward_case('moe', 'tiny', 'float32', lowering),
                             2, min_seconds=0)
          for lowering in ('merged/vmap/matmul', 'merged/vmap/conv')]
  assert [r['resolved'] for r in rows] == ['merged/vmap/matmul', 'merged/vmap']
  assert rows[0]['gflop_img'] == pytest.approx(rows[1]['gflop_img'], rel=1e-9)
