"""tools/ground_truth_auroc.py: AUROC and flag quality on hand cases."""

import numpy as np

from conftest import load_tool

tool = load_tool('ground_truth_auroc')


def test_auroc_hand_cases():
  assert tool.auroc(np.array([3., 4.]), np.array([1., 2.])) == 1.0
  assert tool.auroc(np.array([1., 2.]), np.array([3., 4.])) == 0.0
  # pairs (pos, neg): (2,1) win, (2,3) loss, (4,1) win, (4,3) win -> 3/4
  assert tool.auroc(np.array([2., 4.]), np.array([1., 3.])) == 0.75
  assert tool.auroc(np.array([1.]), np.array([1.])) == 0.5  # a tie counts half


def test_checks_use_the_intended_direction():
  table = {'clip_score': np.array([0.9, 0.8, 0.1, 0.2]),
           'flipped_clip_score': np.array([0.9, 0.8, 0.1, 0.2])}
  noise = np.array(['clean', 'clean', 'misaligned', 'misaligned'], dtype=object)
  rows = tool.evaluate(table, noise, np.ones(4, bool))
  assert rows == [{'noise': 'misaligned', 'vs': 'clean', 'feature': 'clip_score',
                   'meaning': 'low', 'n': 2, 'auroc': 1.0}]


def test_duplicate_flags_and_which_copies_they_catch_by_hand():
  # Groups: a <- b (exact), c <- d (near, same caption), e <- f (near, paraphrased).
  uids = np.array(list('abcdefg'), dtype=object)
  noise = np.array(['clean', 'exact_dup', 'clean', 'near_dup', 'clean', 'near_dup', 'clean'],
                   dtype=object)
  dup_of = np.array(['', 'a', '', 'c', '', 'e', ''], dtype=object)
  captions = ['x', 'x', 'y', 'y', 'z', 'z again', 'w']
  flags = np.array([0, 1, 1, 0, 0, 0, 1], float)  # b and c right, g wrong, f missed
  rows = tool.duplicate_flags({'semantic_duplicate': flags, 'exact_duplicate': flags},
                              noise, dup_of, uids)
  assert rows[1] == {'flag': 'semantic_duplicate', 'truth': 'exact_dup + near_dup',
                     'flagged': 3, 'copies': 3, 'precision': 2 / 3, 'recall': 2 / 3}
  assert rows[0]['copies'] == 1 and rows[0]['precision'] == 1 / 3  # only b is exact
  assert tool.caught_by_copy_kind(flags > 0, noise, dup_of, uids, captions) == [
      ('exact_dup', 1, 1.0), ('near_dup, same caption', 1, 1.0),
      ('near_dup, paraphrased caption', 1, 0.0)]
