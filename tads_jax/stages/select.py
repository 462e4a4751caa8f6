"""Select: fit the selector, score every sample, apply the budget, write the subset.

Outputs `subset.npy` (DataComp format) and `scores.parquet` (one row per pool sample) in the
workdir. The selector sees ingest/samples.parquet joined by uid with features/features.parquet
when the features stage is configured and has finished in the workdir.
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
from tads_jax.stages import features as features_stage
from tads_jax.stages import ingest

SUBSET = 'subset.npy'
SCORES = 'scores.parquet'


def run(ctx) -> dict:
  config = ctx.config
  features = features_table(ctx)
  selector = selectors.get(config.selector.name, config)
  if selector.learns:
    selector.restore(ctx.stage_dir('learn'))
  fit_summary = selector.fit(features)
  scores = np.asarray(selector.score(features), dtype=np.float64)
  if scores.shape != (features.num_rows,):
    raise ValueError(f'selector {selector.name!r} returned {scores.shape} scores for '
                     f'{features.num_rows} samples')
  uids = features.column('uid').to_pylist()
  counts = selection.counts_for(config.selection.method, scores, uids,
                                config.selection.fraction,
                                config.selection.get('soft_cap'), seed=config.seed)
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


def features_table(ctx) -> pa.Table:
  """samples.parquet, with every features column joined on by uid when there are any.

  The width and height operators repeat ingest's columns of the same name (they read
  them), so a features column whose name samples.parquet has is not joined twice.
  """
  table = ingest.samples(ctx)
  path = features_stage.features_path(ctx)
  if path is None:
    return table
  extra = pq.read_table(path)
  extra = extra.select(['uid'] + [c for c in extra.column_names
                                  if c not in table.column_names])
  uids = table.column('uid').to_pylist()
  index = {u: i for i, u in enumerate(extra.column('uid').to_pylist())}
  missing = [u for u in uids if u not in index]
  if missing or extra.num_rows != len(uids):
    raise ValueError(f"{path}: field 'uid' does not match ingest/samples.parquet "
                     f'({len(missing)} uids missing, {extra.num_rows} rows for {len(uids)} '
                     'samples); rerun the features stage')
  extra = extra.take(pa.array([index[u] for u in uids], pa.int64()))
  for name in extra.column_names:
    if name != 'uid':
      table = table.append_column(name, extra.column(name))
  return table


def inputs(config) -> tuple:
  """The selector sees the features when the features stage is configured, and what the
  learn stage fitted when that is."""
  names = pipeline.stage_names(config)
  return ('ingest',) + tuple(s for s in ('features', 'learn') if s in names)


def learn_inputs(config) -> tuple:
  """What the learn stage reads: the features table and the embeddings."""
  names = pipeline.stage_names(config)
  return ('ingest',) + tuple(s for s in ('embed', 'features') if s in names)


STAGE = pipeline.Stage(name='select', run=run, inputs=inputs,
                       config_keys=('seed', 'selector', 'selection'))
