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


def _soft_cap(scores, uids=None, fraction=0.5, **kw):
  uids = uids if uids is not None else [f'{i:032x}' for i in range(len(scores))]
  kw = dict(dict(batch_size=4, penalty=0.15, temperature=1.0, seed=0), **kw)
  return selection.soft_cap_counts(np.asarray(scores, float), uids, fraction, **kw)


def test_soft_cap_fills_the_budget_with_distinct_samples_per_batch():
  rng = np.random.default_rng(1)
  counts = _soft_cap(rng.normal(size=100), fraction=0.37, batch_size=8)
  assert counts.sum() == 37  # round(0.37 * 100) entries, as topk would have
  # 5 batches (8, 8, 8, 8, 5): a sample is drawn at most once per batch.
  assert counts.max() <= 5


def test_soft_cap_with_a_huge_penalty_is_sampling_without_replacement():
  # After one draw a sample's logit is -1e9: it cannot be drawn again while others remain.
  counts = _soft_cap(np.zeros(10), fraction=1.0, batch_size=3, penalty=1e9)
  np.testing.assert_array_equal(counts, np.ones(10))


def test_soft_cap_without_penalty_follows_softmax_frequencies():
  # Batches of 1 from softmax(logits) with no penalty: i.i.d. categorical draws. Two groups
  # whose logits differ by log(3) get 3:1 of the draws.
  scores = np.r_[np.full(5, np.log(3.0)), np.zeros(5)]
  counts = _soft_cap(scores, fraction=2000.0, batch_size=1, penalty=0.0)
  share = counts[:5].sum() / counts.sum()
  assert abs(share - 0.75) < 0.02, share  # 20,000 draws: std of the share ~0.003


def test_soft_cap_penalty_caps_repeats_of_the_best_sample():
  # One sample far ahead: without a penalty it is drawn in every batch; with a penalty of
  # 1 per draw its logit falls to the others' after 5 draws, so it repeats ~5-6 times.
  scores = np.r_[5.0, np.zeros(99)]
  no_cap = _soft_cap(scores, fraction=0.5, batch_size=5, penalty=0.0)
  capped = _soft_cap(scores, fraction=0.5, batch_size=5, penalty=1.0)
  assert no_cap[0] == 10  # 50 entries in 10 batches
  assert 4 <= capped[0] <= 8


def test_soft_cap_is_independent_of_row_order_and_seeded():
  rng = np.random.default_rng(2)
  scores = rng.normal(size=50)
  uids = [f'{i:032x}' for i in range(50)]
  counts = _soft_cap(scores, uids, fraction=0.6, batch_size=7)
  perm = rng.permutation(50)
  permuted = _soft_cap(scores[perm], [uids[i] for i in perm], fraction=0.6, batch_size=7)
  np.testing.assert_array_equal(permuted, counts[perm])
  assert not np.array_equal(_soft_cap(scores, uids, fraction=0.6, batch_size=7, seed=1),
                            counts)


def test_soft_cap_never_draws_nan_scores():
  scores = np.r_[np.nan, np.nan, np.zeros(4)]
  counts = _soft_cap(scores, fraction=2.0, batch_size=8, penalty=0.1)
  assert counts[:2].sum() == 0 and counts.sum() == 12
