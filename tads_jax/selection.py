"""Budget -> subset: how many times each sample is to be seen.

Three methods, all deterministic for a given (scores, uids, seed) whatever the row order,
all usable with any selector's scores:
  - topk:     each of the round(fraction * N) best samples once;
  - soft_cap: FLYT's Soft Cap Sampling: round(fraction * N) entries drawn batch by batch
              from softmax(scores / temperature) without replacement inside a batch, the
              logits of what was drawn lowered by a repetition penalty each time, so good
              samples repeat (a few times) and the budget still spreads over many samples;
  - hard_cap: FLYT's Hard Cap Sampling: round(fraction * N) entries drawn with replacement
              from softmax(scores / temperature), no sample more than `cap` times.
"""

import numpy as np
import pyarrow.compute as pc

from tads_jax import selectors
from tads_jax.data import subset

METHODS = ('topk', 'soft_cap', 'hard_cap')


def topk_counts(scores: np.ndarray, uids, fraction: float, eligible=None) -> np.ndarray:
  """1 for the round(fraction * N) highest scores, else 0.

  Ties (and NaN scores, which rank last) are broken by uid, so the same scores always give
  the same subset whatever the order of the rows. Rows where `eligible` [N] is False are
  never selected (the subset is smaller when fewer than the budget are eligible).

  The cut is the k-th largest score (a partition, not a sort); only the rows tied with it
  have their uids read, so `uids` (a list, an array or a pyarrow column) is never
  converted whole.
  """
  scores = np.asarray(scores, dtype=np.float64)
  n = len(scores)
  k = int(round(fraction * n))
  key = np.where(np.isnan(scores), -np.inf, scores)  # [N]
  if eligible is not None:  # an ineligible row is below every eligible one, and never kept
    eligible = np.asarray(eligible, bool)
    key[~eligible] = np.nan
  counts = np.zeros(n, np.int64)
  m = n if eligible is None else int(eligible.sum())
  if k >= m:
    counts[slice(None) if eligible is None else eligible] = 1
    return counts
  if k == 0:
    return counts
  candidates = key if eligible is None else key[eligible]
  cut = np.partition(candidates, m - k)[m - k]  # the k-th largest eligible key
  del candidates
  above = np.flatnonzero(key > cut)  # NaN (ineligible) compares False
  tied = np.flatnonzero(key == cut)
  tied_uids = subset.take(uids, tied)
  tied_uids = np.asarray(tied_uids.to_pylist() if subset.is_arrow(tied_uids) else tied_uids)
  counts[above] = 1
  counts[tied[np.argsort(tied_uids, kind='stable')[:k - len(above)]]] = 1
  return counts


def uid_order(uids) -> np.ndarray:  # -> [N] int64
  """Row indices in uid order (a pyarrow column is sorted without making N str objects)."""
  if subset.is_arrow(uids):
    return pc.sort_indices(uids).to_numpy().astype(np.int64)
  return np.argsort(np.asarray(uids), kind='stable')


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
  order = uid_order(uids)  # canonical row order
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


def hard_cap_counts(scores: np.ndarray, uids, fraction: float, *, batch_size: int, cap: int,
                    temperature: float = 1.0, seed: int = 0) -> np.ndarray:
  """Times each sample is drawn by Hard Cap Sampling into a budget of round(fraction * N)
  entries, no sample more than `cap` times (FLYT's hard_cap_sampling, examples.ipynb).

  p = softmax(scores / temperature), fixed. Repeat until the budget is filled: draw
  min(batch_size, budget left) samples with replacement from p restricted to the samples
  still under the cap (renormalized); go through the draws in order and keep each one
  whose sample is still under the cap, until the budget is filled. NaN scores are never
  drawn. When fewer than budget / cap samples can be drawn, each is kept `cap` times and
  the subset is smaller than the budget (as topk's when few rows are eligible). Rows are
  processed in uid order with noise from `seed`, so the result does not depend on the row
  order.
  """
  scores = np.asarray(scores, dtype=np.float64)
  n = len(scores)
  if batch_size < 1 or cap < 1:
    raise ValueError(f'hard cap sampling: needs batch_size >= 1 and cap >= 1, got '
                     f'batch_size={batch_size}, cap={cap}')
  if temperature <= 0:
    raise ValueError(f'hard cap sampling: needs temperature > 0, got {temperature}')
  order = uid_order(uids)  # canonical row order
  logits = scores[order] / temperature  # [N]
  drawable = ~np.isnan(logits)
  counts = np.zeros(n, np.int64)
  left = int(round(fraction * n))
  if left >= cap * int(drawable.sum()):  # everything drawable at the cap
    counts[drawable] = cap
    left = 0
  rng = np.random.default_rng([seed, 0x4CA9])
  while left > 0:
    open_ = drawable & (counts < cap)
    # softmax over the samples under the cap: FLYT's probs * mask, renormalized, computed
    # from the logits so that tiny probabilities do not all underflow to 0.
    shifted = np.where(open_, logits - logits[open_].max(), -np.inf)
    p = np.exp(shifted)
    p /= p.sum()
    draws = rng.choice(n, size=min(batch_size, left), replace=True, p=p)  # [b]
    # A draw is kept while its sample is under the cap: the k-th draw of a sample in this
    # batch (k = 0, 1, ...) is kept when counts + k < cap.
    ranks = np.empty(len(draws), np.int64)
    by_sample = np.argsort(draws, kind='stable')
    sorted_draws = draws[by_sample]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_draws)) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(draws)]))
    ranks[by_sample] = np.arange(len(draws)) - first
    kept = draws[counts[draws] + ranks < cap][:left]
    np.add.at(counts, kept, 1)
    left -= len(kept)
  out = np.zeros(n, np.int64)
  out[order] = counts
  return out


def counts_for(method: str, scores, uids, fraction: float, options=None, seed: int = 0,
               eligible=None):
  """The configured method's counts; options: that method's settings (soft_cap:
  batch_size, penalty, temperature; hard_cap: batch_size, cap, temperature). Rows where
  `eligible` is False are never selected."""
  if method == 'topk':
    return topk_counts(scores, uids, fraction, eligible)
  if method in ('soft_cap', 'hard_cap'):
    options = dict(options or {})
    scores = np.asarray(scores, dtype=np.float64)
    if eligible is not None:  # NaN is never drawn
      scores = np.where(np.asarray(eligible, bool), scores, np.nan)
    sample = soft_cap_counts if method == 'soft_cap' else hard_cap_counts
    return sample(scores, uids, fraction, seed=seed, **options)
  raise ValueError(f'selection method {method!r} is not one of {", ".join(METHODS)}')


def dedup_mode(config) -> str:
  """config.selection.dedup ('none' when absent), checked."""
  return selectors.dedup_mode(config.selection.get('dedup', 'none'), 'config.selection.dedup')


def select(config, selector: selectors.Selector, state, inputs: selectors.Inputs):
  """(values [N], counts [N]) of `selector` under config.selection: its scores turned into
  a subset at selection.fraction (top-k, soft or hard cap sampling), or a filter's own counts;
  either way duplicates excluded by selection.dedup are never selected."""
  values = selectors.run_selector(selector, config, state, inputs)
  eligible = selectors.eligible_rows(inputs.features, dedup_mode(config))
  return values.astype(np.float64), counts_of(config, selector, values,
                                              inputs.features.column('uid'), eligible)


def counts_of(config, selector: selectors.Selector, values, uids, eligible) -> np.ndarray:
  """The counts [N] of a selector's values (run_selector's) under config.selection."""
  if selector.output_for(config) == 'counts':
    return values if eligible is None else np.where(eligible, values, 0)
  s = config.selection
  return counts_for(s.method, values, uids, s.fraction, s.get(s.method), seed=config.seed,
                    eligible=eligible)
