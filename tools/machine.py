"""The machine a benchmark ran on, for the line printed beside every figure."""

import os
import subprocess


def cpu_model() -> str:
  """lscpu's model name and the CPU count, e.g. 'AMD EPYC, 2 CPUs'."""
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return f'unknown CPU, {os.cpu_count()} CPUs'
  fields = dict(line.split(':', 1) for line in out.splitlines() if ':' in line)
  flags = fields.get('Flags', '').split()
  extras = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags]
  model = fields.get('Model name', 'unknown CPU').strip()
  return f'{model}, {os.cpu_count()} CPUs ({", ".join(extras) or "no AVX2"})'
