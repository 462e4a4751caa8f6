"""Writes the synthetic world's ground-truth subsets, to check that a proxy orders them.

A proxy that scores data honestly must put clean on-task data above clean data, clean above
the full pool, the full pool above a random subset of the selection's size, and any of
those above misaligned pairs (issue 13 item 4). This reads a workdir's
ingest/world/ground_truth.parquet and writes one DataComp subset file (uids, each once)
per subset to --out:

  clean_on_task.npy  every clean sample that is on-task
  clean.npy          every clean sample
  full.npy           every pool sample
  random.npy         a uniform --fraction of the pool (numpy seed --seed)
  misaligned.npy     every misaligned sample

  python tools/ground_truth_subsets.py --workdir /tmp/tads --out /tmp/tads/gt_subsets
then each with tools/evaluate_subset.py.
"""

import argparse
import os
import sys

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tads_jax.data import subset as subset_lib  # noqa: E402  pylint: disable=wrong-import-position

NAMES = ('clean_on_task', 'clean', 'full', 'random', 'misaligned')


def ground_truth_masks(noise: np.ndarray, on_task: np.ndarray, fraction: float,
                       seed: int) -> dict:
  """{subset name: bool [N]} from the ground truth's noise type and on_task columns."""
  n = len(noise)
  random = np.zeros(n, bool)
  random[np.random.default_rng(seed).choice(n, int(round(fraction * n)), replace=False)] = True
  clean = noise == 'clean'
  return {'clean_on_task': clean & on_task, 'clean': clean, 'full': np.ones(n, bool),
          'random': random, 'misaligned': noise == 'misaligned'}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a workdir whose ingest made a world')
  parser.add_argument('--out', required=True, help='folder for the subset files')
  parser.add_argument('--fraction', type=float, default=0.36, help='size of random.npy')
  parser.add_argument('--seed', type=int, default=0, help='numpy seed of random.npy')
  args = parser.parse_args(argv)
  path = os.path.join(args.workdir, 'ingest', 'world', 'ground_truth.parquet')
  if not os.path.exists(path):
    parser.error(f'{path}: missing; run the ingest stage on a synthetic pool first')
  if not 0.0 < args.fraction <= 1.0:
    parser.error(f'--fraction: must be in (0, 1], got {args.fraction}')
  gt = pq.read_table(path, columns=['uid', 'noise', 'on_task']).to_pydict()
  masks = ground_truth_masks(np.asarray(gt['noise'], object),
                             np.asarray(gt['on_task'], bool), args.fraction, args.seed)
  os.makedirs(args.out, exist_ok=True)
  uids = np.asarray(gt['uid'], object)
  for name in NAMES:
    subset_lib.write_subset(os.path.join(args.out, f'{name}.npy'), list(uids[masks[name]]))
    print(f'{name}: {int(masks[name].sum())} samples')


if __name__ == '__main__':
  sys.exit(main())
