"""Select: score every sample with the configured selector, apply the budget, write the subset.

Outputs `subset.npy` (DataComp format) and `scores.parquet` (one row per pool sample) in the
workdir. A learning selector's state comes from the learn stage; any other selector is
fitted here (its fit is cheap or empty). The selector sees ingest/samples.parquet joined
with features/features.parquet when the features stage is configured, and the embeddings
it declares it needs (stages/learn.selector_inputs).
"""

import logging

import pyarrow as pa
import pyarrow.parquet as pq

from tads_jax import pipeline
from tads_jax import selection
from tads_jax import selectors
from tads_jax.data import subset
from tads_jax.stages import learn

SUBSET = 'subset.npy'
SCORES = 'scores.parquet'


def run(ctx) -> dict:
  config = ctx.config
  selector = selectors.get(config.selector.name)
  if selector.learns:
    state = learn.read_state(ctx)
    inputs = learn.selector_inputs(ctx, selector.score_needs_for(config))
  else:
    inputs = learn.selector_inputs(ctx, selector.needs_for(config))
    state = selector.fit(config, inputs)
  if not inputs.num_rows:
    raise ValueError(f"{ctx.path('ingest')}: the pool has no usable sample (every sample "
                     'was skipped; see the ingest summary)')
  scores, counts = selection.select(config, selector, state, inputs)
  uids = inputs.uids
  written = subset.write_subset(ctx.path(SUBSET), uids, counts)

  table = inputs.features.append_column('score', pa.array(scores)) \
                         .append_column('times_selected', pa.array(counts))
  with pipeline.atomic_write(ctx.path(SCORES)) as tmp:
    pq.write_table(table, tmp)
  logging.info('select: %s kept %d of %d samples (%d entries in %s)', selector.name,
               int((counts > 0).sum()), len(uids), len(written), SUBSET)
  return {
      'selector': selector.name,
      'output': selector.output_for(config),
      'method': config.selection.method,
      'fraction': config.selection.fraction,
      'dedup': selection.dedup_mode(config),
      'pool': len(uids),
      'selected_unique': int((counts > 0).sum()),
      'subset_entries': int(len(written)),
      'fit': {} if selector.learns else selector.summary(state),
  }


def read_scores(ctx, columns=None) -> pa.Table:
  """scores.parquet, the per-sample table this stage wrote."""
  return pq.read_table(ctx.path(SCORES), columns=columns)


def inputs(config) -> tuple:
  """The features and embeddings when configured, and what the learn stage fitted."""
  names = pipeline.stage_names(config)
  return ('ingest',) + tuple(s for s in ('embed', 'features', 'learn') if s in names)


def config_keys(config) -> tuple:
  return selectors.config_keys(config, ('seed', 'selector', 'selection'))


STAGE = pipeline.Stage(name='select', run=run, inputs=inputs, config_keys=config_keys,
                       version=2)
