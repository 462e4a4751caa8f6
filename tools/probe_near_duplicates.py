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
levels, the mean colour removed or not). With --clip (a reference CLIP folder, e.g.
<workdir>/encoder/clip) also the reference's image embedding (1 - cosine), the space
SemDeDup works in, and how far each of a near copy's changes alone moves a clean image's
embedding (cosine to the unchanged image, --changed clean samples):

  python tools/probe_near_duplicates.py --world W/ingest/world --clip W/encoder/clip
"""

import argparse
import collections
import glob
import io
import os
import shlex
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


def nearest(x: np.ndarray, family: np.ndarray, hamming: bool, block: int = 1000,
            cosine: bool = False):
  """(distance to the nearest sample of the same family, to the nearest of another) [N].
  cosine: x holds unit rows and the distance is 1 - cosine."""
  same, other = np.full(len(x), np.inf), np.full(len(x), np.inf)
  xf = x.astype(np.float32)
  squares = (xf ** 2).sum(axis=1)
  for lo in range(0, len(x), block):
    part = xf[lo:lo + block]
    if cosine:
      d = 1.0 - part @ xf.T
    elif hamming:  # bits as 0/1: |a - b|^2 summed is the Hamming distance
      d = squares[lo:lo + block, None] + squares[None] - 2 * part @ xf.T
    else:
      d = np.sqrt(np.maximum(squares[lo:lo + block, None] + squares[None] - 2 * part @ xf.T,
                             0) / x.shape[1])
    d[np.arange(len(part)), lo + np.arange(len(part))] = np.inf  # not itself
    kin = family[lo:lo + block, None] == family[None]
    same[lo:lo + block] = np.where(kin, d, np.inf).min(axis=1)
    other[lo:lo + block] = np.where(~kin, d, np.inf).min(axis=1)
  return same, other


def near_copy_changes(image: np.ndarray, rng: np.random.Generator) -> dict:
  """{change: image [S, S, 3]}: each change the world makes to a near copy, alone and all
  together, at the world's sizes (synthetic/pool.py): a move of 1-2 px each way (edge
  pixels fill the strip), 4-10 grey levels lighter or darker (the world lights only the
  object), and a JPEG re-encode at quality 70-85."""
  def move(x):
    dy, dx = rng.choice([-2, -1, 1, 2], 2)
    padded = np.pad(x, ((2, 2), (2, 2), (0, 0)), mode='edge')
    return padded[2 + dy:2 + dy + x.shape[0], 2 + dx:2 + dx + x.shape[1]]

  def light(x):
    lift = int(rng.choice([-1, 1]) * rng.integers(4, 11))
    return np.clip(x.astype(np.int16) + lift, 0, 255).astype(np.uint8)

  def reencode(x):
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, 'JPEG', quality=int(rng.integers(70, 86)))
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert('RGB'))
  return {'moved 1-2 px': move(image), 'lit 4-10 grey levels': light(image),
          'JPEG quality 70-85': reencode(image), 'all three': reencode(light(move(image)))}


def embedding_rows(clip_folder: str, images: dict, rows: list, family: np.ndarray,
                   near: np.ndarray, changed: int) -> None:
  """Prints the embedding signature's rows, then the changes table."""
  from tads_jax.models import api  # pylint: disable=g-import-not-at-top
  clip = api.load_clip(clip_folder)
  x = np.asarray(clip.encode_images([images[r['uid']] for r in rows]), np.float32)
  same, other = nearest(x, family, hamming=False, cosine=True)
  name = 'reference image embedding (1 - cosine)'
  for t in (0.005, 0.01, 0.015, 0.02, 0.03, 0.05):
    print(f'| {name} | {t} | {np.mean(same[near] <= t):.3f} | {np.mean(other <= t):.3f} |')
  cos = lambda d: 1.0 - d  # noqa: E731
  clean = [i for i, r in enumerate(rows) if r['noise'] == 'clean'][:changed]
  print(f'\nCosine, median (10th-90th percentile): a near copy to its original '
        f'{np.median(cos(same[near])):.4f} ({np.percentile(cos(same[near]), 10):.4f}-'
        f'{np.percentile(cos(same[near]), 90):.4f}); a clean sample to its nearest unrelated '
        f'one {np.median(cos(other[clean])):.4f} ({np.percentile(cos(other[clean]), 10):.4f}'
        f'-{np.percentile(cos(other[clean]), 90):.4f}).')
  rng = np.random.default_rng(0)
  versions = [near_copy_changes(images[rows[i]['uid']], rng) for i in clean]
  print(f'\n| change to {len(clean)} clean images | cosine to the unchanged image: median | '
        '10th percentile |\n|---|---|---|')
  for change in versions[0]:
    moved = np.asarray(clip.encode_images([v[change] for v in versions]), np.float32)
    c = (moved * x[clean]).sum(axis=1)
    print(f'| {change} | {np.median(c):.4f} | {np.percentile(c, 10):.4f} |')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--world', required=True, help='a synthetic world (ingest/world)')
  parser.add_argument('--clip', default='', help='a reference CLIP folder: adds its image '
                      'embedding as a signature, and the changes table')
  parser.add_argument('--changed', type=int, default=600,
                      help='clean samples whose embedding each change is measured on')
  args = parser.parse_args(argv)
  truth = pq.read_table(os.path.join(args.world, 'ground_truth.parquet'),
                        columns=['uid', 'noise', 'dup_of']).to_pylist()
  if args.clip and not os.path.isdir(args.clip):
    parser.error(f'--clip: {args.clip}: no such folder')
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
  if args.clip:
    embedding_rows(args.clip, images, rows, family, near, args.changed)
  print(f"\ncommand: python {' '.join(shlex.quote(a) for a in sys.argv)}")


if __name__ == '__main__':
  main()
