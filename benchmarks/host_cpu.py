"""Which CPU a benchmark ran on: model, vector instructions, last-level cache.

Why: the same code's "% of the jit GEMM" moved from 60.6% to 36.6-38.8% between two of this
project's 2-core machines (docs/benchmarks.md, "A second CPU"): an AVX-512 core doubles the GEMM
rate but not the narrow convolutions' or the memory's. `platform.processor()` says only
"x86_64", so a figure without this cannot be compared with another. Read from Linux's
/proc/cpuinfo and /sys cache files; elsewhere the description is empty, never guessed.
"""

import pathlib

CPUINFO = '/proc/cpuinfo'
CACHES = '/sys/devices/system/cpu/cpu0/cache'

# Vector instruction sets, widest first: (cpuinfo flag, name). x86 'flags', Arm 'Features'.
VECTOR_ISAS = (('avx512f', 'AVX-512'), ('avx2', 'AVX2'), ('avx', 'AVX'), ('sse4_2', 'SSE4.2'),
               ('sve2', 'SVE2'), ('sve', 'SVE'), ('asimd', 'NEON'))
# Matrix or bf16 instructions that a library may use for bf16 or int8 products.
EXTRAS = (('amx_bf16', 'AMX-BF16'), ('avx512_bf16', 'AVX512-BF16'), ('avx512_vnni', 'VNNI'),
          ('bf16', 'BF16'), ('i8mm', 'I8MM'))


def first_processor(cpuinfo_text: str) -> dict[str, str]:
  """The first processor's 'key: value' lines of /proc/cpuinfo (all processors repeat them)."""
  fields = {}
  for line in cpuinfo_text.splitlines():
    if not line.strip():
      if fields:
        break
      continue
    key, sep, value = line.partition(':')
    if sep:
      fields.setdefault(key.strip(), value.strip())
  return fields


def cache_bytes(size: str) -> int:
  """'32768K' / '1M' / '512' (sysfs' cache size) -> bytes."""
  size = size.strip()
  scale = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30}.get(size[-1:].upper(), 1)
  return int(size.rstrip('KkMmGg')) * scale


def last_level_cache(caches_dir: str | pathlib.Path = CACHES) -> tuple[int, int] | None:
  """(level, bytes) of cpu0's largest-level cache from sysfs' index*/level and size, or None."""
  best = None
  for index in sorted(pathlib.Path(caches_dir).glob('index*')):
    try:
      level = int((index / 'level').read_text())
      size = cache_bytes((index / 'size').read_text())
    except (OSError, ValueError):
      continue
    if best is None or level > best[0]:
      best = (level, size)
  return best


def describe(cpuinfo: str | pathlib.Path = CPUINFO, caches_dir: str | pathlib.Path = CACHES
             ) -> dict:
  """{'model', 'vendor', 'family', 'model_number', 'vector', 'extras', 'cache_level',
  'cache_mb'} for the JSON of a benchmark run; {} where /proc/cpuinfo cannot be read."""
  try:
    fields = first_processor(pathlib.Path(cpuinfo).read_text())
  except OSError:
    return {}
  flags = set((fields.get('flags') or fields.get('Features') or '').split())
  arm = 'CPU implementer' in fields
  result = {
      'model': fields.get('model name') or (
          f'Arm implementer {fields["CPU implementer"]} part {fields.get("CPU part", "?")}'
          if arm else 'unknown'),
      'vendor': fields.get('vendor_id', 'Arm' if arm else ''),
      'family': fields.get('cpu family', ''),
      'model_number': fields.get('model', ''),
      'vector': next((name for flag, name in VECTOR_ISAS if flag in flags), 'none found'),
      'extras': [name for flag, name in EXTRAS if flag in flags],
  }
  cache = last_level_cache(caches_dir)
  if cache:
    result['cache_level'], result['cache_mb'] = cache[0], cache[1] / (1 << 20)
  return result


def summary(cpu: dict) -> str:
  """One line for a report: 'AMD EPYC (AuthenticAMD family 26 model 2; AVX-512, AVX512-BF16;
  L3 32 MB)'; '' for an empty description."""
  if not cpu:
    return ''
  ident = ' '.join(part for part in (
      cpu.get('vendor', ''), cpu.get('family') and f'family {cpu["family"]}',
      cpu.get('model_number') and f'model {cpu["model_number"]}') if part)
  details = [', '.join([cpu['vector']] + list(cpu.get('extras', [])))]
  if 'cache_mb' in cpu:
    details.append(f'L{cpu["cache_level"]} {cpu["cache_mb"]:g} MB')
  return f'{cpu["model"]} ({"; ".join(([ident] if ident else []) + details)})'
