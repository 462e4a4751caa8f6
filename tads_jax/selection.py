"""Budget -> subset: how many times each sample is to be seen.

Two methods, both deterministic for a given (scores, uids, seed) whatever the row order:
  - topk:     each of the round(fraction * N) best samples once;
  - soft_cap: FLYT's Soft Cap Sampling: round(fraction * N) entries drawn batch by batch
              from softmax(scores / temperature) without replacement inside a batch, the
              logits of what was drawn lowered by a repetition penalty each time, so good
              samples repeat (a few times) and the budget still spreads over many samples.
"""

import numpy as np

METHODS = ('topk', 'soft_cap')


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


def soft_cap_counts(scores: np.ndarray, uids, fraction: float, *, batch_size: int,
                    penalty: float, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
  """Times each sample is drawn by Soft Cap Sampling into a budget of round(fraction * N)
  entries (the same number of training entries as topk at that fraction).

  Repeat until the budget is filled: draw min(batch_size, budget left) distinct samples
  from softmax(logits) (Gumbel-top-k: the top of logits + Gumbel noise is a draw without
  replacement), add one to their counts, subtract `penalty` from their logits. logits start
  at scores / temperature; NaN scores are never drawn. Rows are processed in uid order with
  noise from `seed`, so the result does not depend on the row order.
  """
  scores = np.asarray(scores, dtype=np.float64)
  n = len(scores)
  if batch_size < 1:
    raise ValueError(f'soft cap sampling: batch_size must be >= 1, got {batch_size}')
  if penalty < 0 or temperature <= 0:
    raise ValueError(f'soft cap sampling: needs penalty >= 0 and temperature > 0, got '
                     f'penalty={penalty}, temperature={temperature}')
  order = np.argsort(np.asarray(uids), kind='stable')  # canonical row order
  logits = scores[order] / temperature  # [N]
  drawable = ~np.isnan(logits)
  logits = np.where(drawable, logits, -np.inf)
  budget = int(round(fraction * n))
  batch_size = min(batch_size, int(drawable.sum()))
  counts = np.zeros(n, np.int64)
  rng = np.random.default_rng([seed, 0x50F7CA9])
  left = budget if batch_size else 0
  while left > 0:
    b = min(batch_size, left)
    keys = logits + rng.gumbel(size=n)  # [N]; -inf stays -inf
    drawn = np.argpartition(-keys, b - 1)[:b]
    counts[drawn] += 1
    logits[drawn] -= penalty
    left -= b
  out = np.zeros(n, np.int64)
  out[order] = counts
  return out


def counts_for(method: str, scores, uids, fraction: float, options=None, seed: int = 0):
  """The configured method's counts; options: the soft_cap settings (batch_size, penalty,
  temperature)."""
  if method == 'topk':
    return topk_counts(scores, uids, fraction)
  if method == 'soft_cap':
    options = dict(options or {})
    return soft_cap_counts(scores, uids, fraction, seed=seed, **options)
  raise ValueError(f'selection method {method!r} is not one of {", ".join(METHODS)}')
