"""Time and peak memory of the pool-fitting selectors; prints Markdown rows for BENCHMARKS.md.

Each selector runs in a fresh subprocess on the same synthetic pool, so that the peak
resident set size (resource.getrusage ru_maxrss, which covers numpy and XLA's CPU buffers
alike) is that selector's alone. The pool: N unit image embeddings around `classes` class
directions, each caption the image plus Gaussian noise (renormalized), the `cluster` column
the nearest of 100 pool points (one k-means assignment step), and one classification task
of `classes` classes (50 train images each, 4 prompt templates). Time is fit + score
(the select stage's work), compilation included; the pool is built before the clock starts
and its memory is reported separately (RSS before fit).

  python tools/bench_selectors.py                       # 100,000 x 512, both selectors
  python tools/bench_selectors.py --points 20000 --dim 128 --selectors clipcov
"""

import argparse
import dataclasses
import json
import os
import resource
import shlex
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import machine  # noqa: E402  pylint: disable=wrong-import-position

SELECTORS = ('clip_powered', 'clipcov')


def _command() -> str:
  return 'python ' + ' '.join(shlex.quote(a) for a in sys.argv)


def _load() -> str:
  return '/'.join(f'{v:.1f}' for v in os.getloadavg())


def _maxrss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _pool(n, dim, classes, seed):
  """(Inputs, config) of the synthetic pool and task."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  from tads_jax import selectors  # pylint: disable=g-import-not-at-top
  from tads_jax.scoring import kmeans  # pylint: disable=g-import-not-at-top
  from tads_jax.selectors import clip_powered  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  centres = _unit(rng.standard_normal((classes, dim)))
  image_emb = np.empty((n, dim), np.float32)
  text_emb = np.empty((n, dim), np.float32)
  for start in range(0, n, 65536):  # per coordinate 0.05: cos ~ 0.6 to the centre at 512
    stop = min(start + 65536, n)
    labels = rng.integers(0, classes, stop - start)
    image_emb[start:stop] = _unit(centres[labels] + 0.05 * rng.standard_normal(
        (stop - start, dim), dtype=np.float32) * np.sqrt(512 / dim))
    text_emb[start:stop] = _unit(image_emb[start:stop] + 0.05 * rng.standard_normal(
        (stop - start, dim), dtype=np.float32) * np.sqrt(512 / dim))
  seeds = image_emb[rng.choice(n, 100, replace=False)]
  cluster = np.concatenate([np.asarray(kmeans.assign(image_emb[i:i + 8192], seeds)[0])
                            for i in range(0, n, 8192)])
  train_labels = np.repeat(np.arange(classes), 50)
  task = {'name': 'synthetic', 'kind': 'classification',
          'image_emb': _unit(centres[train_labels] + 0.05 * np.sqrt(512 / dim)
                             * rng.standard_normal((len(train_labels), dim))),
          'labels': train_labels,
          'class_text_emb': _unit(centres[:, None, :] + 0.02 * np.sqrt(512 / dim)
                                  * rng.standard_normal((classes, 4, dim)))}
  features = pa.table({'uid': [f'{i:032x}' for i in range(n)], 'cluster': cluster})
  inputs = selectors.Inputs(features=features, image_emb=image_emb, text_emb=text_emb,
                            tasks=(task,))
  config = ml_collections.ConfigDict({
      'seed': seed, 'selection': {'fraction': 0.36},
      'clip_powered': dataclasses.asdict(clip_powered.Params()),
      'clipcov': {'easiness': 2.0, 'min_cosine': None, 'normalize': True, 'block': 64,
                  'chunk': 1024}})
  return inputs, config


def _worker(args) -> None:
  """One selector in this (fresh) process; prints one JSON line."""
  # Importing the modules registers the selectors (whether or not selectors/__init__
  # imports them yet).
  from tads_jax import selectors  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from tads_jax.selectors import clip_powered, clipcov  # noqa: F401
  inputs, config = _pool(args.points, args.dim, args.classes, args.seed)
  before = _maxrss_mib()
  selector = selectors.get(args.worker)
  selector.check_config(config)
  start = time.perf_counter()
  state = selector.fit(config, inputs)
  counts = selectors.run_selector(selector, config, state, inputs)
  seconds = time.perf_counter() - start
  print(json.dumps({'selector': args.worker, 'seconds': seconds, 'rss_before_mib': before,
                    'peak_rss_mib': _maxrss_mib(), 'kept': int(counts.sum()),
                    'summary': selector.summary(state)}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--points', type=int, default=100_000)
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--classes', type=int, default=10)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--selectors', default=','.join(SELECTORS))
  parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    _worker(args)
    return
  command, cpu = _command(), machine.cpu_model()
  print('| selector | pool | time (s) | peak RSS (MiB) | RSS before fit (MiB) | kept | '
        'machine (load 1/5/15 min at start) | command |')
  print('|---|---|---|---|---|---|---|---|')
  for name in args.selectors.split(','):
    load = _load()
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), '--worker', name, '--points',
         str(args.points), '--dim', str(args.dim), '--classes', str(args.classes), '--seed',
         str(args.seed)], capture_output=True, text=True, check=False)
    if out.returncode:
      sys.stderr.write(out.stderr)
      raise SystemExit(f'{name}: worker failed (exit {out.returncode})')
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f'| {name} | {args.points:,} x {args.dim}, {args.classes} task classes | '
          f'{result["seconds"]:.1f} | {result["peak_rss_mib"]:.0f} | '
          f'{result["rss_before_mib"]:.0f} | {result["kept"]:,} | {cpu} (load {load}) | '
          f'`{command}` |')
    sys.stderr.write(f'{name}: {json.dumps(result["summary"])}\n')


if __name__ == '__main__':
  main()
