"""benchmarks/common.py's host description: the CPU named from files in Linux's /proc and /sys
formats."""

import pathlib

from benchmarks import common

# Two processors of an AMD Zen 5 as a 2-core VM reports them (this project's CI machines).
ZEN5 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 sse4_2 avx avx2 fma avx512f avx512dq avx512_bf16 avx512_vnni
bugs\t\t: sysret_ss_attrs

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC other
flags\t\t: fpu sse
"""
SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 avx512f avx512_bf16 avx512_vnni amx_bf16 amx_tile amx_int8
"""
BROADWELL = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 79
model name\t: Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz
flags\t\t: fpu sse4_2 avx avx2 fma
"""
GRACE = """processor\t: 0
BogoMIPS\t: 2000.00
Features\t: fp asimd evtstrm aes sha2 crc32 atomics sve sve2 bf16 i8mm
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd4f
"""


def write_caches(root: pathlib.Path, caches: list[tuple[int, str]]) -> pathlib.Path:
  root.mkdir(parents=True, exist_ok=True)
  for i, (level, size) in enumerate(caches):
    index = root / f'index{i}'
    index.mkdir(parents=True)
    (index / 'level').write_text(f'{level}\n')
    (index / 'size').write_text(f'{size}\n')
  return root


def describe(tmp_path: pathlib.Path, cpuinfo: str, caches=()) -> dict:
  tmp_path.mkdir(parents=True, exist_ok=True)
  path = tmp_path / 'cpuinfo'
  path.write_text(cpuinfo)
  return common.describe_cpu(path, write_caches(tmp_path / 'cache', list(caches)))


def test_first_processor_only_and_the_widest_vector_set(tmp_path):
  cpu = describe(tmp_path, ZEN5, [(1, '48K'), (1, '32K'), (2, '1024K'), (3, '32768K')])
  assert cpu == {'model': 'AMD EPYC', 'vendor': 'AuthenticAMD', 'family': '26',
                 'model_number': '2', 'vector': 'AVX-512', 'extras': ['AVX512-BF16', 'VNNI'],
                 'cache_level': 3, 'cache_mb': 32.0}
  assert common.cpu_summary(cpu) == (
      'AMD EPYC (AuthenticAMD family 26 model 2; AVX-512, AVX512-BF16, VNNI; L3 32 MB)')


def test_other_processors(tmp_path):
  spr = describe(tmp_path / 'a', SAPPHIRE_RAPIDS)
  assert (spr['vector'], spr['extras']) == ('AVX-512', ['AMX-BF16', 'AVX512-BF16', 'VNNI'])
  assert 'cache_mb' not in spr  # no cache files: not guessed
  old = describe(tmp_path / 'b', BROADWELL, [(2, '256K'), (3, '35840K')])
  assert (old['vector'], old['extras'], old['cache_mb']) == ('AVX2', [], 35.0)
  grace = describe(tmp_path / 'c', GRACE, [(1, '64K'), (2, '1M'), (3, '114M')])
  assert grace['model'] == 'Arm implementer 0x41 part 0xd4f'
  assert (grace['vendor'], grace['vector'], grace['extras']) == ('Arm', 'SVE2', ['BF16', 'I8MM'])
  assert common.cpu_summary(grace) == (
      'Arm implementer 0x41 part 0xd4f (Arm; SVE2, BF16, I8MM; L3 114 MB)')


def test_cache_sizes_in_sysfs_units():
  assert common.cache_bytes('32768K') == 32 * 1024 * 1024
  assert common.cache_bytes('1M') == 1024 * 1024
  assert common.cache_bytes('512\n') == 512


def test_no_proc_files_no_description(tmp_path):
  assert common.describe_cpu(tmp_path / 'absent', tmp_path / 'absent_too') == {}
  assert common.cpu_summary({}) == ''


def test_run_all_names_the_cpu_in_its_json_and_its_table(tmp_path):
  machine = common.machine()
  assert machine['cpu'] == common.describe_cpu()
  cpu = describe(tmp_path, ZEN5, [(3, '32768K')])
  results = {'machine': dict(machine, cpu=cpu, cpu_count=2), 'argv': 'x', 'json': 'x',
             'rows': [], 'gemm_gflops_start': 1.0, 'gemm_gflops_end': 1.0,
             'gemm_gflops_bf16': 1.0}
  header = common.markdown(results).splitlines()[0]
  assert '(2 CPU cores; AMD EPYC (AuthenticAMD family 26 model 2; AVX-512' in header
  old = {k: v for k, v in results['machine'].items() if k != 'cpu'}  # a JSON from before
  assert '(2 CPU cores), jax' in common.markdown(dict(results, machine=old)).splitlines()[0]
