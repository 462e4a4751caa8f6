r"""Can pixels alone find the synthetic world's near duplicates? A probe, not a selector.

The world's near duplicate is its original shifted by 1-2 px, a few grey levels brighter or
darker and re-encoded at another JPEG quality. SemDeDup works on CLIP embeddings, where a
caption-trained reference puts every scene with the same caption about as close as a near
copy (BENCHMARKS.md, issue 13 item 1). This probe asks whether pixel signatures do better:
for each signature, the share of near duplicates whose original lies within a distance t
(recall), against the share of all samples that have an unrelated sample (another
duplicate family) within t (what a flag at t would also hit).

  python tools/probe_near_duplicates.py --world workdir/default/ingest/world

Signatures: dHash (horizontal gradient signs of a grey thumbnail, Hamming distance) at
8 x 8 and 16 x 16 bits, and RGB thumbnails at 8 x 8 and 16 x 16 (RMS distance in grey
levels, the mean colour removed or not).
"""

import argparse
import collections
import glob
import os
import sys

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tads_jax.data import webdataset  # noqa: E402  pylint: disable=wrong-import-position


def dhash(image: np.ndarray, bits: int) -> np.ndarray:  # [H, W, 3] -> [bits * bits] bool
  grey = np.asarray(Image.fromarray(image).convert('L').resize((bits + 1, bits),
                                                               Image.BILINEAR), np.float32)
  return (grey[:, 1:] > grey[:, :-1]).ravel()


def thumbnail(image: np.ndarray, side: int, centred: bool) -> np.ndarray:  # -> [3 side^2]
  small = np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR),
                     np.float32).reshape(-1, 3)
  return (small - small.mean(axis=0) if centred else small).ravel()


def nearest(x: np.ndarray, family: np.ndarray, hamming: bool, block: int = 1000):
  """(distance to the nearest sample of the same family, to the nearest of another) [N]."""
  same, other = np.full(len(x), np.inf), np.full(len(x), np.inf)
  xf = x.astype(np.float32)
  squares = (xf ** 2).sum(axis=1)
  for lo in range(0, len(x), block):
    part = xf[lo:lo + block]
    if hamming:  # bits as 0/1: |a - b|^2 summed is the Hamming distance
      d = squares[lo:lo + block, None] + squares[None] - 2 * part @ xf.T
    else:
      d = np.sqrt(np.maximum(squares[lo:lo + block, None] + squares[None] - 2 * part @ xf.T,
                             0) / x.shape[1])
    d[np.arange(len(part)), lo + np.arange(len(part))] = np.inf  # not itself
    kin = family[lo:lo + block, None] == family[None]
    same[lo:lo + block] = np.where(kin, d, np.inf).min(axis=1)
    other[lo:lo + block] = np.where(~kin, d, np.inf).min(axis=1)
  return same, other


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--world', required=True, help='a synthetic world (ingest/world)')
  args = parser.parse_args(argv)
  truth = pq.read_table(os.path.join(args.world, 'ground_truth.parquet'),
                        columns=['uid', 'noise', 'dup_of']).to_pylist()
  images = {}
  for tar in sorted(glob.glob(os.path.join(args.world, 'pool', '*.tar'))):
    for sample in webdataset.iter_shard(tar, collections.Counter(), decode=True):
      images[sample.uid] = sample.image
  rows = [r for r in truth if r['uid'] in images]
  family = np.array([r['dup_of'] or r['uid'] for r in rows])
  near = np.array([r['noise'] == 'near_dup' for r in rows])
  print(f'{len(rows)} samples, {near.sum()} near duplicates\n')
  print('| signature | t | near duplicates within t of their original | samples with an '
        'unrelated one within t |\n|---|---|---|---|')
  signatures = [(f'dHash {b}x{b} (bits)', True, (4, 8, 12, 16) if b == 8 else (16, 32, 48),
                 lambda im, b=b: dhash(im, b)) for b in (8, 16)]
  signatures += [(f'RGB {s}x{s}{" minus mean" if c else ""} (RMS grey levels)', False,
                  (4, 6, 8, 10, 12), lambda im, s=s, c=c: thumbnail(im, s, c))
                 for s in (8, 16) for c in (False, True)]
  for name, hamming, thresholds, signature in signatures:
    x = np.stack([signature(images[r['uid']]) for r in rows])
    same, other = nearest(x, family, hamming)
    for t in thresholds:
      print(f'| {name} | {t} | {np.mean(same[near] <= t):.3f} | {np.mean(other <= t):.3f} |')
  print(f'\ncommand: python tools/probe_near_duplicates.py --world {args.world}')


if __name__ == '__main__':
  main()
