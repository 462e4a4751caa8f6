"""DataComp's CLIP-score baseline: keep the pairs whose image and caption agree most."""

import numpy as np
import pyarrow as pa

from tads_jax import selectors

COLUMN = 'clip_score'


@selectors.register('clip_score')
class ClipScoreSelector(selectors.Selector):
  """Score = the reference CLIP's image-caption cosine (the features stage's clip_score);
  top-k on it is DataComp's CLIP-score filter at the configured fraction."""

  def score(self, features: pa.Table) -> np.ndarray:
    if COLUMN not in features.column_names:
      raise ValueError(f'selector clip_score: the features have no {COLUMN!r} column '
                       f'(columns: {features.column_names}); add the features stage to '
                       f"config.stages with {COLUMN!r} in config.features.operators")
    # NaN (no score) ranks last in selection.topk_counts.
    return features.column(COLUMN).to_numpy(zero_copy_only=False).astype(np.float64)
