"""How well each feature catches the noise it is meant to catch, on a synthetic world.

Reads a workdir that ran the features and select stages on a synthetic pool
(scores.parquet holds every feature) and the world's ground_truth.parquet, and prints, per
noise type, the AUROC of the operator meant to catch it against clean samples, and the
precision and recall of the duplicate flags. Prints Markdown rows for BENCHMARKS.md.

  python tools/ground_truth_auroc.py --workdir workdir/clip_score
"""

import argparse
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import scipy.stats

# noise type -> (feature, how it flags that noise, score: higher = more likely that noise).
# Chosen by what each operator is for (design section 5), not by which scores best.
CHECKS = {
    'misaligned': ('clip_score', 'low', lambda t: -t['clip_score']),
    'partial': ('clip_score', 'low', lambda t: -t['clip_score']),
    'corrupt_noise': ('sharpness', 'high', lambda t: t['sharpness']),
    'corrupt_blur': ('sharpness', 'low', lambda t: -t['sharpness']),
    'blank': ('contrast', 'low', lambda t: -t['contrast']),
    'extreme_aspect': ('aspect_ratio', 'high', lambda t: t['aspect_ratio']),
    'spam': ('word_repetition', 'high', lambda t: t['word_repetition']),
    'text_in_image': ('clip_score - flipped_clip_score', 'high (T-MARS)',
                      lambda t: t['clip_score'] - t['flipped_clip_score']),
}


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
  """P(score of a positive > score of a negative), ties counting half (Mann-Whitney U)."""
  ranks = scipy.stats.rankdata(np.concatenate([positive, negative]))  # ties: mean rank
  u = ranks[:len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
  return float(u / (len(positive) * len(negative)))


def evaluate(table: dict, noise: np.ndarray, on_task: np.ndarray) -> list[dict]:
  rows = []
  clean = noise == 'clean'
  for kind, (feature, meaning, score) in CHECKS.items():
    if (noise == kind).sum() == 0:
      continue
    s = score(table)
    rows.append({'noise': kind, 'vs': 'clean', 'feature': feature, 'meaning': meaning,
                 'n': int((noise == kind).sum()),
                 'auroc': auroc(s[noise == kind], s[clean])})
  # Off-task: every relevance column alone (a concept can be off one task and on another),
  # then the max over all of them.
  relevance = sorted(c for c in table if c.startswith('relevance_'))
  columns = [(c, table[c]) for c in relevance]
  if relevance:
    columns.append(('max over every relevance column',
                    np.max(np.stack([table[c] for c in relevance]), axis=0)))
  for name, s in columns:
    rows.append({'noise': 'off-task', 'vs': 'on-task (clean only)', 'feature': name,
                 'meaning': 'low', 'n': int((clean & ~on_task).sum()),
                 'auroc': auroc(s[clean & on_task], s[clean & ~on_task])})
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workdir', required=True, help='a workdir that ran features+select')
  parser.add_argument('--ground-truth', default='',
                      help='default: <workdir>/ingest/world/ground_truth.parquet')
  args = parser.parse_args(argv)
  scores = pq.read_table(os.path.join(args.workdir, 'scores.parquet')).to_pydict()
  gt_path = args.ground_truth or os.path.join(args.workdir, 'ingest', 'world',
                                              'ground_truth.parquet')
  gt = pq.read_table(gt_path).to_pydict()
  index = {u: i for i, u in enumerate(gt['uid'])}
  rows = [index[u] for u in scores['uid']]
  noise = np.asarray(gt['noise'], dtype=object)[rows]
  on_task = np.asarray(gt['on_task'], dtype=bool)[rows]
  table = {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()
           if k not in ('uid', 'key', 'shard', 'caption', 'image_format', 'sha256',
                        'uid_source')}
  print('| noise | against | feature | n | AUROC |')
  print('|---|---|---|---|---|')
  for r in evaluate(table, noise, on_task):
    print(f"| {r['noise']} | {r['vs']} | {r['feature']} ({r['meaning']}) | {r['n']} | "
          f"{r['auroc']:.3f} |")
  print()
  print('| flag | ground truth | flagged | true | precision | recall |')
  print('|---|---|---|---|---|---|')
  # A duplicate group is an original and its copies; a flag is right on any member but one.
  dup_of = np.asarray(gt['dup_of'], dtype=object)[rows]
  uids = np.asarray(scores['uid'], dtype=object)
  for flag, kinds in (('exact_duplicate', ('exact_dup',)),
                      ('semantic_duplicate', ('exact_dup', 'near_dup'))):
    if flag not in table:
      continue
    copies = np.isin(noise, kinds)
    originals = np.isin(uids, dup_of[copies])
    flagged = table[flag] > 0
    precision = (flagged & (copies | originals)).sum() / max(flagged.sum(), 1)
    # Per group, all but one member should be flagged: recall = flags in groups / copies.
    recall = min((flagged & (copies | originals)).sum(), copies.sum()) / max(copies.sum(), 1)
    print(f"| {flag} | {' + '.join(kinds)} (and their originals) | {int(flagged.sum())} | "
          f"{int(copies.sum())} copies | {precision:.3f} | {recall:.3f} |")
  print(f'\ncommand: python tools/ground_truth_auroc.py --workdir {args.workdir}')


if __name__ == '__main__':
  sys.exit(main())
