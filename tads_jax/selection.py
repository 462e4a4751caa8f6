"""Budget -> subset: how many times each sample is to be seen."""

import numpy as np


def topk_counts(scores: np.ndarray, uids, fraction: float) -> np.ndarray:
  """1 for the round(fraction * N) highest scores, else 0.

  Ties (and NaN scores, which rank last) are broken by uid, so the same scores always give
  the same subset whatever the order of the rows.
  """
  scores = np.asarray(scores, dtype=np.float64)
  n = len(scores)
  k = int(round(fraction * n))
  order_key = np.where(np.isnan(scores), -np.inf, scores)
  order = np.lexsort((np.asarray(uids), -order_key))  # last key is primary
  counts = np.zeros(n, np.int64)
  counts[order[:k]] = 1
  return counts
