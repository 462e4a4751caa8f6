"""Throughput of the synthetic world generator: pool samples rendered, encoded and written per s.

Each run generates a fresh pool (no trusted set, no tasks, so the figure is the pool's) in a
temporary directory; the median over runs is reported with the range, as a Markdown row for
BENCHMARKS.md together with the command that produced it.

Run: python tools/bench_synthetic.py --num-samples 20000 --repeats 3 --workers 1
"""

import argparse
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time

from tads_jax.data import synthetic


def _cpu_seconds() -> float:
  """User + system time of this process and its reaped children (the workers)."""
  total = 0.0
  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
    usage = resource.getrusage(who)
    total += usage.ru_utime + usage.ru_stime
  return total


def run_once(cfg: synthetic.WorldConfig, workers: int) -> tuple[float, float]:
  """(samples per wall-clock second, samples per CPU second) of one fresh generation.

  The CPU-second rate is what one uncontended core does; on a machine shared with other
  jobs the wall-clock rate drops below it.
  """
  with tempfile.TemporaryDirectory(prefix='bench_synthetic_') as out:
    cpu, start = _cpu_seconds(), time.perf_counter()
    summary = synthetic.generate_world(out, cfg, num_workers=workers)
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    assert summary['shards_written'] == len(summary['paths']['pool'])
  return cfg.num_samples / seconds, cfg.num_samples / cpu


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--num-samples', type=int, default=20_000)
  parser.add_argument('--image-size', type=int, default=64)
  parser.add_argument('--shard-size', type=int, default=1_000)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--repeats', type=int, default=3, help='runs; the median is reported')
  parser.add_argument('--workers', type=int, nargs='+', default=[1],
                      help='process counts to measure, e.g. 1 2')
  args = parser.parse_args(argv)
  if args.repeats < 1 or any(w < 1 for w in args.workers):
    parser.error('--repeats and --workers must be >= 1')
  cfg = synthetic.WorldConfig(seed=args.seed, num_samples=args.num_samples,
                              image_size=args.image_size, shard_size=args.shard_size,
                              trusted_size=0, tasks=())
  command = 'python tools/bench_synthetic.py ' + shlex.join(
      argv if argv is not None else sys.argv[1:])
  machine = f'{os.cpu_count()} cores, Python {platform.python_version()}'
  rows = []
  for workers in args.workers:
    rates, cpu_rates = [], []
    for r in range(args.repeats):
      rate, cpu_rate = run_once(cfg, workers)
      rates.append(rate)
      cpu_rates.append(cpu_rate)
      print(f'workers={workers} run {r + 1}/{args.repeats}: {rate:,.0f} samples/s, '
            f'{cpu_rate:,.0f} samples per CPU-second', file=sys.stderr, flush=True)
    median, cpu_median = statistics.median(rates), statistics.median(cpu_rates)
    print(f'workers={workers}: {median:,.0f} samples/s (median of {args.repeats}; '
          f'min {min(rates):,.0f}, max {max(rates):,.0f}); {cpu_median:,.0f} samples per '
          f'CPU-second; load average {os.getloadavg()[0]:.1f}')
    rows.append(f'| synthetic world: pool render+encode+write | {args.num_samples} samples, '
                f'{args.image_size}px, shards of {args.shard_size}, {workers} process(es) '
                f'| {median:,.0f} samples/s wall (median of {args.repeats}, range '
                f'{min(rates):,.0f}-{max(rates):,.0f}); {cpu_median:,.0f} samples per '
                f'CPU-second | {machine}, load average {os.getloadavg()[0]:.1f} '
                f'| `{command}` |')
  print()
  print('| benchmark | setting | result | machine | command |')
  print('| --- | --- | --- | --- | --- |')
  for row in rows:
    print(row)
  return 0


if __name__ == '__main__':
  sys.exit(main())
