"""Budget -> subset: how many times each sample is to be seen.

Two methods, both deterministic for a given (scores, uids, seed) whatever the row order:
  - topk:     each of the round(fraction * N) best samples once;
  - soft_cap: FLYT's Soft Cap Sampling: round(fraction * N) entries drawn batch by batch
              from softmax(scores / temperature) without replacement inside a batch, the
              logits of what was drawn lowered by a repetition penalty each time, so good
              samples repeat (a few times) and the budget still spreads over many samples.
"""

import numpy as np

from tads_jax import selectors

METHODS = ('topk', 'soft_cap')
# selection.dedup: which duplicate flags of the features stage exclude a sample. Of each
# group of duplicates the features stage flags all copies but one, so one is always left.
DEDUP = {'none': (), 'exact': ('exact_duplicate',), 'semantic': ('semantic_duplicate',),
         'both': ('exact_duplicate', 'semantic_duplicate')}


def topk_counts(scores: np.ndarray, uids, fraction: float, eligible=None) -> np.ndarray:
  """1 for the round(fraction * N) highest scores, else 0.

  Ties (and NaN scores, which rank last) are broken by uid, so the same scores always give
  the same subset whatever the order of the rows. Rows where `eligible` [N] is False are
  never selected (the subset is smaller when fewer than the budget are eligible).
  """
  scores = np.asarray(scores, dtype=np.float64)
  n = len(scores)
  k = int(round(fraction * n))
  order_key = np.where(np.isnan(scores), -np.inf, scores)
  order = np.lexsort((np.asarray(uids), -order_key))  # last key is primary
  if eligible is not None:
    order = order[np.asarray(eligible, bool)[order]]
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


def counts_for(method: str, scores, uids, fraction: float, options=None, seed: int = 0,
               eligible=None):
  """The configured method's counts; options: the soft_cap settings (batch_size, penalty,
  temperature). Rows where `eligible` is False are never selected."""
  if method == 'topk':
    return topk_counts(scores, uids, fraction, eligible)
  if method == 'soft_cap':
    options = dict(options or {})
    scores = np.asarray(scores, dtype=np.float64)
    if eligible is not None:  # NaN is never drawn
      scores = np.where(np.asarray(eligible, bool), scores, np.nan)
    return soft_cap_counts(scores, uids, fraction, seed=seed, **options)
  raise ValueError(f'selection method {method!r} is not one of {", ".join(METHODS)}')


def dedup_mode(config) -> str:
  """config.selection.dedup ('none' when absent), checked."""
  mode = config.selection.get('dedup', 'none')
  if mode not in DEDUP:
    raise ValueError(f'config.selection.dedup: one of {", ".join(DEDUP)}, got {mode!r}')
  return mode


def eligible_rows(features, mode: str) -> np.ndarray | None:
  """bool [N]: rows no duplicate flag of `mode` excludes (None: every row)."""
  columns = DEDUP[mode]
  if not columns:
    return None
  keep = np.ones(features.num_rows, bool)
  for column in columns:
    if column not in features.column_names:
      raise ValueError(f'config.selection.dedup: {mode!r} needs the features column '
                       f'{column!r}; add the features stage to config.stages')
    keep &= ~features.column(column).to_numpy(zero_copy_only=False).astype(bool)
  return keep


def select(config, selector: selectors.Selector, state, inputs: selectors.Inputs):
  """(values [N], counts [N]) of `selector` under config.selection: its scores turned into
  a subset at selection.fraction (top-k or soft cap sampling), or a filter's own counts;
  either way duplicates excluded by selection.dedup are never selected."""
  values = selectors.run_selector(selector, config, state, inputs)
  eligible = eligible_rows(inputs.features, dedup_mode(config))
  if selector.output_for(config) == 'counts':
    counts = values if eligible is None else np.where(eligible, values, 0)
    return values.astype(np.float64), counts
  s = config.selection
  counts = counts_for(s.method, values, inputs.uids, s.fraction, s.get('soft_cap'),
                      seed=config.seed, eligible=eligible)
  return values, counts
