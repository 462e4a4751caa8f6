import numpy as np

from tads_jax import selection


def test_topk_hand_case_with_ties_broken_by_uid():
  scores = np.array([0.5, 0.9, 0.5, 0.1, 0.5])
  uids = ['e', 'a', 'c', 'b', 'd']
  # k = round(0.6 * 5) = 3: 0.9 ('a'), then the 0.5 ties in uid order: 'c', 'd'.
  np.testing.assert_array_equal(selection.topk_counts(scores, uids, 0.6), [0, 1, 1, 0, 1])


def test_topk_is_independent_of_row_order():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 5, 200).astype(float)  # many ties
  uids = [f'{i:032x}' for i in range(200)]
  counts = selection.topk_counts(scores, uids, 0.3)
  perm = rng.permutation(200)
  permuted = selection.topk_counts(scores[perm], [uids[i] for i in perm], 0.3)
  np.testing.assert_array_equal(permuted, counts[perm])
  assert counts.sum() == 60


def test_nan_scores_rank_last():
  counts = selection.topk_counts(np.array([np.nan, 0.0, -1.0]), ['a', 'b', 'c'], 2 / 3)
  np.testing.assert_array_equal(counts, [0, 1, 1])
