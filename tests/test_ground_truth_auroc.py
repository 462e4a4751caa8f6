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
