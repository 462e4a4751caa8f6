"""Learn: fit a learning selector before select scores the pool (design section 3).

Only selectors with `learns = True` (tads) fit here; every other selector's fit is cheap
and runs inside select. The stage reads the selector's `Inputs` through the earlier stages'
own readers (`selector_inputs`, which select and evaluate use too), calls its pure `fit`,
and saves the returned state to `learn/state.msgpack`; `read_state` restores it. A long fit
keeps resumable checkpoints in learn/ (Inputs.checkpoints), so a killed run resumes.
"""

import os

import flax.serialization
import numpy as np

from tads_jax import pipeline
from tads_jax import selectors
from tads_jax.stages import embed
from tads_jax.stages import features as features_stage

STATE = 'state.msgpack'


def selector_inputs(ctx, needs, checkpoints: str | None = None) -> selectors.Inputs:
  """The arrays a selector with these `needs` reads, from the workdir's stage outputs."""
  table = features_stage.read_features(ctx)
  image_emb = text_emb = None
  if 'embeddings' in needs:
    uids, image_emb, text_emb, _ = embed.pool_embeddings(ctx)
    if uids != table.column('uid').to_pylist():
      raise ValueError(f"{ctx.stage_dir('embed')}: the embedded pool's uids do not match "
                       'ingest/samples.parquet; rerun the embed stage')
  tasks = ()
  if 'tasks' in needs:
    tasks = tuple(_task_dict(spec, arrays)
                  for spec, arrays in embed.task_embeddings(ctx, 'train'))
  return selectors.Inputs(features=table, image_emb=image_emb, text_emb=text_emb,
                          tasks=tasks, checkpoints=checkpoints)


def _task_dict(spec, arrays) -> dict:
  out = {'name': spec.name, 'kind': spec.kind}
  for key, value in arrays.items():
    out[key] = value.tolist() if key == 'classnames' else (
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
  inputs = selector_inputs(ctx, selector.needs_for(config), checkpoints=ctx.stage_dir('learn'))
  state = selector.fit(config, inputs)
  save_state(ctx.path('learn', STATE), state)
  return {'selector': selector.name, 'state': ctx.path('learn', STATE),
          **selector.summary(state)}


def inputs(config) -> tuple:
  """The features table and, when configured, the embeddings."""
  names = pipeline.stage_names(config)
  return ('ingest',) + tuple(s for s in ('embed', 'features') if s in names)


def config_keys(config) -> tuple:
  """The selector's own block (config.tads for tads) and the fields it declares."""
  return selectors.config_keys(config, ('seed', 'selector', 'mesh.rules'))


STAGE = pipeline.Stage(name='learn', run=run, inputs=inputs, config_keys=config_keys,
                       version=2)
