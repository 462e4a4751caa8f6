"""Select: fit the selector, score every sample, apply the budget, write the subset.

Outputs `subset.npy` (DataComp format) and `scores.parquet` (one row per pool sample) in the
workdir.
"""

import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tads_jax import pipeline
from tads_jax import selection
from tads_jax import selectors
from tads_jax.data import subset
from tads_jax.stages import ingest

SUBSET = 'subset.npy'
SCORES = 'scores.parquet'


def run(ctx) -> dict:
  config = ctx.config
  features = ingest.samples(ctx)
  selector = selectors.get(config.selector.name, config)
  fit_summary = selector.fit(features)
  scores = np.asarray(selector.score(features), dtype=np.float64)
  if scores.shape != (features.num_rows,):
    raise ValueError(f'selector {selector.name!r} returned {scores.shape} scores for '
                     f'{features.num_rows} samples')
  uids = features.column('uid').to_pylist()
  counts = selection.topk_counts(scores, uids, config.selection.fraction)
  written = subset.write_subset(ctx.path(SUBSET), uids, counts)

  table = features.append_column('score', pa.array(scores)) \
                  .append_column('times_selected', pa.array(counts))
  tmp = ctx.path(f'{SCORES}.tmp-{os.getpid()}')
  pq.write_table(table, tmp)
  os.replace(tmp, ctx.path(SCORES))
  logging.info('select: %s kept %d of %d samples (%d entries in %s)', selector.name,
               int((counts > 0).sum()), len(uids), len(written), SUBSET)
  return {
      'selector': selector.name,
      'method': config.selection.method,
      'fraction': config.selection.fraction,
      'pool': len(uids),
      'selected_unique': int((counts > 0).sum()),
      'subset_entries': int(len(written)),
      'fit': fit_summary,
  }


STAGE = pipeline.Stage(
    name='select', run=run, inputs=('ingest',),
    config_keys=('seed', 'selector', 'selection'))
