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


def duplicate_flags(table: dict, noise, dup_of, uids) -> list[dict]:
  """Precision and recall of each duplicate flag against the world's copies. A duplicate
  group is an original and its copies; a flag is right on any member, and all but one
  member of a group should be flagged: recall = flags inside groups / copies."""
  out = []
  for flag, kinds in (('exact_duplicate', ('exact_dup',)),
                      ('semantic_duplicate', ('exact_dup', 'near_dup'))):
    if flag not in table:
      continue
    copies = np.isin(noise, kinds)
    originals = np.isin(uids, dup_of[copies])
    flagged = table[flag] > 0
    right = int((flagged & (copies | originals)).sum())
    out.append({'flag': flag, 'truth': ' + '.join(kinds), 'flagged': int(flagged.sum()),
                'copies': int(copies.sum()), 'precision': right / max(flagged.sum(), 1),
                'recall': min(right, copies.sum()) / max(copies.sum(), 1)})
  return out


def caught_by_copy_kind(flagged, noise, dup_of, uids, captions) -> list[tuple]:
  """(kind, copies, share caught) for exact copies, near copies that kept their
  original's caption, and near copies whose caption was paraphrased: a copy is caught when
  it or its original is flagged. Tells which copies a flag misses."""
  where = {u: i for i, u in enumerate(uids)}
  kinds = {'exact_dup': [], 'near_dup, same caption': [], 'near_dup, paraphrased caption': []}
  for i in np.flatnonzero(np.isin(noise, ('exact_dup', 'near_dup'))):
    j = where.get(dup_of[i])
    if j is None:  # the original is not in the table
      continue
    kind = ('exact_dup' if noise[i] == 'exact_dup' else 'near_dup, same caption'
            if captions[i] == captions[j] else 'near_dup, paraphrased caption')
    kinds[kind].append(bool(flagged[i] or flagged[j]))
  return [(kind, len(hits), float(np.mean(hits))) for kind, hits in kinds.items() if hits]


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
  dup_of = np.asarray(gt['dup_of'], dtype=object)[rows]
  uids = np.asarray(scores['uid'], dtype=object)
  for r in duplicate_flags(table, noise, dup_of, uids):
    print(f"| {r['flag']} | {r['truth']} (and their originals) | {r['flagged']} | "
          f"{r['copies']} copies | {r['precision']:.3f} | {r['recall']:.3f} |")
  if 'semantic_duplicate' in table:
    print('\n| semantic_duplicate on | copies | caught (the copy or its original flagged) |')
    print('|---|---|---|')
    for kind, n, caught in caught_by_copy_kind(table['semantic_duplicate'] > 0, noise,
                                               dup_of, uids, scores['caption']):
      print(f'| {kind} | {n} | {caught:.3f} |')
  print(f'\ncommand: python tools/ground_truth_auroc.py --workdir {args.workdir}')


if __name__ == '__main__':
  sys.exit(main())
