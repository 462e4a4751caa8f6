"""Learn: fit a learning selector before select scores the pool (design section 3).

Only selectors with `learns = True` (tads) fit here; every other selector's fit is cheap
and runs inside select. The stage reads the selector's `Inputs` through the earlier stages'
own readers (`selector_inputs`, which select and evaluate use too), calls its pure `fit`,
and saves the returned state to `learn/state.msgpack`; `read_state` restores it. A long fit
keeps resumable checkpoints in learn/ (Inputs.checkpoints), so a killed run resumes.

The pool's embeddings reach a selector on disk (embed.EmbeddingFiles), and only the
features columns it declares are read, so memory follows those columns, not the pool's
[N, E] embeddings. With several processes a selector that says it can
(Selector.multiprocess: tads) fits on every process, its meta-learning batches split over
all of them; any other selector fits on the writer alone. The writer saves the state.
"""

import collections
import contextlib
import os

import flax.serialization
import numpy as np

from tads_jax import distributed
from tads_jax import pipeline
from tads_jax import selectors
from tads_jax.data import task_split
from tads_jax.stages import embed
from tads_jax.stages import features as features_stage
from tads_jax.stages import ingest

STATE = 'state.msgpack'


@contextlib.contextmanager
def selector_inputs(ctx, needs, stage: str, checkpoints: str | None = None,
                    columns=None, shard_rows=None):
  """Yields the Inputs a selector with these `needs` reads, from the workdir's stage
  outputs: the features `columns` (None: all). The pool's embeddings stay on disk
  (embed.EmbeddingFiles, its spill files in the directory of `stage`, the stage running the
  selector), removed when the block ends. shard_rows: Inputs.shard_rows."""
  table = features_stage.read_features(ctx, columns)
  source = (embed.EmbeddingFiles(ctx, spill_dir=ctx.stage_dir(stage))
            if 'embeddings' in needs else None)
  try:
    yield selectors.Inputs(features=table, tasks=_tasks(ctx, needs), checkpoints=checkpoints,
                           embedding_source=source, shard_rows=shard_rows)
  finally:
    if source is not None:
      source.close()


def shard_inputs(ctx, needs, columns=None, owned=lambda index: True):
  """(shard index, its Inputs) of one pool shard at a time, for a rowwise selector: the
  shards that kept a sample and that `owned(index)` accepts, in row order. Memory holds one
  shard's features and embeddings."""
  tasks = _tasks(ctx, needs)
  paths = [r['path'] for r in ctx.summary('ingest')['per_source']]
  shards = collections.deque()  # (index, path, uids) of each shard, queued as it is read
  def sizes():
    for index, (path, rows) in enumerate(ingest.rows_by_shard(ctx, paths, ('uid',))):
      if rows['uid']:
        shards.append((index, path, rows['uid']))
        yield len(rows['uid'])
  for table in features_stage.iter_features(ctx, sizes(), columns):
    index, path, uids = shards.popleft()
    if not owned(index):
      continue
    image_emb = text_emb = None
    if 'embeddings' in needs:
      image_emb, text_emb = embed.stored_embeddings(ctx, path, uids)
    yield index, selectors.Inputs(features=table, image_emb=image_emb, text_emb=text_emb,
                                  tasks=tasks)


def _tasks(ctx, needs) -> tuple:
  """Inputs.tasks: the tasks' train splits, only their fit part when
  config.tads.validation_fraction > 0 (embed.task_embeddings), whatever the selector, so
  that no selector or setting sees the validation examples."""
  if 'tasks' not in needs:
    return ()
  return tuple(_task_dict(spec, arrays) for spec, arrays in embed.task_embeddings(ctx, 'train'))


def _task_dict(spec, arrays) -> dict:
  out = {'name': spec.name, 'kind': spec.kind}
  for key, value in arrays.items():
    out[key] = value.tolist() if value.dtype.kind in 'US' else (  # names, prompts, captions
        value.astype(np.float32) if value.dtype == np.float16 else value)
  return out


def save_state(path: str, state: dict) -> None:
  with pipeline.atomic_write(path) as tmp, open(tmp, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(state))


def load_state(path: str) -> dict:
  if not os.path.exists(path):
    raise ValueError(f'{path}: missing; run the learn stage with this selector first')
  with open(path, 'rb') as f:
    try:
      return flax.serialization.msgpack_restore(f.read())
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{path}: not a saved selector state ({e}); rerun learn') from None


def read_state(ctx) -> dict:
  """The state the learn stage saved for config.selector.name."""
  return load_state(ctx.path('learn', STATE))


def run(ctx) -> dict:
  config = ctx.config
  selector = selectors.get(config.selector.name)
  if not selector.learns:
    raise ValueError(f'config.stages: selector {selector.name!r} has nothing to learn; '
                     'remove learn from config.stages')
  if not (selector.multiprocess or distributed.is_writer()):
    return {}  # the writer fits it alone
  columns = selector.columns_for(config, features_stage.column_names(ctx))
  if columns is not None:  # a fit reads no uids: the pool's uid strings stay on disk
    columns = tuple(c for c in columns if c != 'uid')
  shard_rows = tuple(ingest.shard_sizes(ctx)) if selector.multiprocess else None
  with selector_inputs(ctx, selector.needs_for(config), 'learn',
                       checkpoints=ctx.stage_dir('learn'),
                       columns=columns, shard_rows=shard_rows) as inputs:
    state = selector.fit(config, inputs)
  if not distributed.is_writer():
    return {}
  save_state(ctx.path('learn', STATE), state)
  return {'selector': selector.name, 'state': ctx.path('learn', STATE),
          **selector.summary(state)}


def inputs(config) -> tuple:
  """The features table and, when configured, the embeddings."""
  names = pipeline.stage_names(config)
  return ('ingest',) + tuple(s for s in ('embed', 'features') if s in names)


def config_keys(config) -> tuple:
  """The selector's own block (config.tads for tads) and the fields it declares, and the
  validation split when there is one (the tasks a selector reads are then the fit part of
  their train splits, whatever the selector)."""
  return (selectors.config_keys(config, ('seed', 'selector', 'mesh.rules'))
          + task_split.config_keys(config))


STAGE = pipeline.Stage(name='learn', run=run, inputs=inputs, config_keys=config_keys,
                       version=3, multiprocess=True)
