"""Select: score every sample with the configured selector, apply the budget, write the subset.

Outputs `subset.npy` (DataComp format) and `scores.parquet` (one row per pool sample) in the
workdir. A learning selector's state comes from the learn stage; any other selector is
fitted here (its fit is cheap or empty). The selector sees ingest/samples.parquet joined
with features/features.parquet when the features stage is configured (the columns it
declares), and the embeddings it declares it needs (stages/learn.selector_inputs). A
rowwise selector (clip_score, normsim, tads) scores one shard at a time; then memory holds
per-sample scalars (scores, counts, the cut) and one shard, never the pool's table or
embeddings; scores.parquet is written a slice at a time.
"""

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tads_jax import distributed
from tads_jax import pipeline
from tads_jax import selection
from tads_jax import selectors
from tads_jax.data import subset
from tads_jax.data import task_split
from tads_jax.stages import features as features_stage
from tads_jax.stages import ingest
from tads_jax.stages import learn

SUBSET = 'subset.npy'
SCORES = 'scores.parquet'


def run(ctx) -> dict:
  config = ctx.config
  selector = selectors.get(config.selector.name)
  if not features_stage.ingest_rows(ctx):
    raise ValueError(f"{ctx.path('ingest')}: the pool has no usable sample (every sample "
                     'was skipped; see the ingest summary)')
  needs = selector.score_needs_for(config) if selector.learns else selector.needs_for(config)
  columns = selector.columns_for(config, features_stage.column_names(ctx))
  if selector.rowwise:  # one shard at a time, each process its own
    state = learn.read_state(ctx) if selector.learns else selector.fit(config, None)
    per_shard = {index: selectors.run_selector(selector, config, state, inputs)
                 for index, inputs in learn.shard_inputs(ctx, needs, columns,
                                                         owned=distributed.owns)}
    values = np.concatenate([np.zeros(0)] + distributed.gather_by_shard(per_shard))
  elif selector.multiprocess or distributed.is_writer():
    # The whole pool at once: on every process when the selector splits it by shard
    # (semdedup), else on the writer alone.
    shard_rows = tuple(ingest.shard_sizes(ctx)) if selector.multiprocess else None
    with learn.selector_inputs(ctx, needs, 'select', columns=columns,
                               shard_rows=shard_rows) as inputs:
      state = learn.read_state(ctx) if selector.learns else selector.fit(config, inputs)
      values = selectors.run_selector(selector, config, state, inputs)
  if not distributed.is_writer():
    return {}
  mode = selection.dedup_mode(config)
  table = features_stage.read_features(ctx, ('uid',) + selectors.DEDUP[mode])
  counts = selection.counts_of(config, selector, values, table.column('uid'),
                               selectors.eligible_rows(table, mode))
  written = subset.write_subset(ctx.path(SUBSET), table.column('uid'), counts)
  _write_scores(ctx, values.astype(np.float64), counts)
  logging.info('select: %s kept %d of %d samples (%d entries in %s)', selector.name,
               int((counts > 0).sum()), len(counts), len(written), SUBSET)
  return {
      'selector': selector.name,
      'output': selector.output_for(config),
      'method': config.selection.method,
      'fraction': config.selection.fraction,
      'dedup': mode,
      'pool': len(counts),
      'selected_unique': int((counts > 0).sum()),
      'subset_entries': int(len(written)),
      'fit': {} if selector.learns else selector.summary(state),
  }


def _write_scores(ctx, scores: np.ndarray, counts: np.ndarray) -> None:
  """scores.parquet: the features table with 'score' and 'times_selected', written a
  slice of rows at a time."""
  starts = range(0, len(scores), pipeline.ROW_GROUP)
  sizes = [min(pipeline.ROW_GROUP, len(scores) - start) for start in starts]

  def tables():
    for start, table in zip(starts, features_stage.iter_features(ctx, sizes)):
      end = start + table.num_rows
      yield table.append_column('score', pa.array(scores[start:end])) \
                 .append_column('times_selected', pa.array(counts[start:end]))
  with pipeline.atomic_write(ctx.path(SCORES)) as tmp:
    for _ in pipeline.write_row_stream(tables(), tmp):
      pass


def read_scores(ctx, columns=None) -> pa.Table:
  """scores.parquet, the per-sample table this stage wrote."""
  return pq.read_table(ctx.path(SCORES), columns=columns)


def inputs(config) -> tuple:
  """The features and embeddings when configured, and what the learn stage fitted."""
  names = pipeline.stage_names(config)
  return ('ingest',) + tuple(s for s in ('embed', 'features', 'learn') if s in names)


def config_keys(config) -> tuple:
  """The selector's fields, the selection rules, and the validation split when there is
  one (a selector fitted here reads the tasks' fit part)."""
  return (selectors.config_keys(config, ('seed', 'selector', 'selection'))
          + task_split.config_keys(config))


STAGE = pipeline.Stage(name='select', run=run, inputs=inputs, config_keys=config_keys,
                       version=3, multiprocess=True)
