"""DataComp's CLIP-score baseline: keep the pairs whose image and caption agree most.

DataComp (baselines.py, `load_uids_with_clip_score`) keeps either the top fraction of the
pool by CLIP score, the threshold taken over the whole pool, or every sample at or above a
fixed threshold. Here the score is the features stage's `clip_score` (the reference CLIP's
image-caption cosine). `config.clip_score.threshold = None` is the fraction form (the
select stage's top-k at selection.fraction); a number is the threshold form, a filter that
keeps what passes whatever the fraction.
"""

import numpy as np

from tads_jax import selectors

COLUMN = 'clip_score'


def threshold(config):
  """config.clip_score.threshold: None or a cosine in [-1, 1]."""
  value = selectors.block(config, 'clip_score').get('threshold')
  if value is None:
    return None
  return selectors.number(config, 'clip_score', 'threshold', low=-1.0, high=1.0)


def check_config(config) -> None:
  threshold(config)


def output(config) -> str:
  return 'scores' if threshold(config) is None else 'counts'


def score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  del state
  values = inputs.column(COLUMN, 'clip_score').astype(np.float64)  # NaN ranks last
  cut = threshold(config)
  if cut is None:
    return values
  return (values >= cut).astype(np.int64)


selectors.register(selectors.Selector(
    name='clip_score', score=score, needs=('features',), output=output,
    check_config=check_config, columns=(COLUMN,), rowwise=True,
    doc='top fraction of the pool by reference CLIP image-caption cosine, or every sample '
        'at or above `clip_score.threshold` (DataComp)'))
