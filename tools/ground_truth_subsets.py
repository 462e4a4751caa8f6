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

The clean on-task set is the subset a selector tries to recover, but it need not be the
best subset at the budget. To ask whether a selection bar (say, a lead of twice the seed
std over the best selector) can be cleared by any subset at all, the tool also writes
subsets at exactly the budget, round(--fraction x pool), built from the ground truth:

  clean_on_task_filled_off_task.npy  clean on-task, filled with random clean off-task
  clean_on_task_filled_copies.npy    clean on-task, filled with random exact and near
                                     copies of on-task samples (a copy repeats its
                                     original's content, as the world's copies do)
  <name>_cleaned.npy                 for each --clean SUBSET: its members that are neither
                                     clean on-task nor on-task copies, swapped for random
                                     clean on-task samples outside it (same size)

(a filled subset that cannot be made, e.g. when the clean on-task set alone exceeds the
budget, is not written, and the tool says why).

  python tools/ground_truth_subsets.py --workdir /tmp/tads --out /tmp/tads/gt_subsets \
      [--clean /tmp/tads/evaluate/baselines/ncl_normsim/subset.npy]
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


def on_task_copies(noise: np.ndarray, on_task: np.ndarray) -> np.ndarray:
  """bool [N]: the exact and near copies of on-task samples (a copy repeats its original's
  content), which the filled and cleaned subsets count as good samples."""
  return np.isin(noise, ('exact_dup', 'near_dup')) & on_task


def ground_truth_masks(noise: np.ndarray, on_task: np.ndarray, fraction: float,
                       seed: int) -> dict:
  """{subset name: bool [N]} from the ground truth's noise type and on_task columns."""
  n = len(noise)
  random = np.zeros(n, bool)
  random[np.random.default_rng(seed).choice(n, int(round(fraction * n)), replace=False)] = True
  clean = noise == 'clean'
  return {'clean_on_task': clean & on_task, 'clean': clean, 'full': np.ones(n, bool),
          'random': random, 'misaligned': noise == 'misaligned'}


def filled_masks(noise: np.ndarray, on_task: np.ndarray, fraction: float,
                 seed: int) -> tuple[dict, list]:
  """({name: bool [N]}, [why a subset was not made]): the clean on-task samples, each set
  filled to round(fraction x N) with random samples of one kind (numpy seed `seed`)."""
  n = len(noise)
  budget = int(round(fraction * n))
  best = (noise == 'clean') & on_task
  room = budget - int(best.sum())
  if room < 0:
    return {}, [f'the {int(best.sum())} clean on-task samples exceed the budget {budget}']
  fillers = {'clean_on_task_filled_off_task': (noise == 'clean') & ~on_task,
             'clean_on_task_filled_copies': on_task_copies(noise, on_task)}
  out, missing = {}, []
  for name, pool in fillers.items():
    rows = np.flatnonzero(pool)
    if len(rows) < room:
      missing.append(f'{name}: {len(rows)} samples to fill {room} places with')
      continue
    mask = best.copy()
    mask[np.random.default_rng(seed).choice(rows, room, replace=False)] = True
    out[name] = mask
  return out, missing


def cleaned_mask(chosen: np.ndarray, noise: np.ndarray, on_task: np.ndarray,
                 seed: int) -> np.ndarray:
  """bool [N]: the rows `chosen` (bool [N]) with every member that is neither clean on-task
  nor an on-task copy swapped for a random clean on-task row outside `chosen`."""
  best = (noise == 'clean') & on_task
  good = best | on_task_copies(noise, on_task)
  bad = chosen & ~good
  spare = np.flatnonzero(best & ~chosen)
  if len(spare) < bad.sum():
    raise ValueError(f'{int(bad.sum())} members to swap, {len(spare)} clean on-task '
                     'samples outside the subset')
  mask = chosen & good
  mask[np.random.default_rng(seed).choice(spare, int(bad.sum()), replace=False)] = True
  return mask


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a workdir whose ingest made a world')
  parser.add_argument('--out', required=True, help='folder for the subset files')
  parser.add_argument('--fraction', type=float, default=0.36,
                      help='the budget: the size of random.npy and of the filled subsets')
  parser.add_argument('--seed', type=int, default=0,
                      help='numpy seed of random.npy and of the filled and cleaned subsets')
  parser.add_argument('--clean', action='append', default=[], metavar='SUBSET',
                      help="a selector's subset file to write cleaned (repeatable)")
  args = parser.parse_args(argv)
  path = os.path.join(args.workdir, 'ingest', 'world', 'ground_truth.parquet')
  if not os.path.exists(path):
    parser.error(f'{path}: missing; run the ingest stage on a synthetic pool first')
  if not 0.0 < args.fraction <= 1.0:
    parser.error(f'--fraction: must be in (0, 1], got {args.fraction}')
  gt = pq.read_table(path, columns=['uid', 'noise', 'on_task']).to_pydict()
  uids = np.asarray(gt['uid'], object)
  noise, on_task = np.asarray(gt['noise'], object), np.asarray(gt['on_task'], bool)
  masks = ground_truth_masks(noise, on_task, args.fraction, args.seed)
  filled, missing = filled_masks(noise, on_task, args.fraction, args.seed)
  masks.update(filled)
  for why in missing:
    print(f'not written: {why}')
  for path in args.clean:
    chosen = subset_lib.times_selected(subset_lib.read_subset(path), uids) > 0
    name = os.path.splitext(os.path.basename(path))[0]
    if name == 'subset':  # an evaluate baseline's folder names the selector
      name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    masks[f'{name}_cleaned'] = cleaned_mask(chosen, noise, on_task, args.seed)
  os.makedirs(args.out, exist_ok=True)
  for name, mask in masks.items():
    subset_lib.write_subset(os.path.join(args.out, f'{name}.npy'), list(uids[mask]))
    print(f'{name}: {int(mask.sum())} samples')


if __name__ == '__main__':
  sys.exit(main())
