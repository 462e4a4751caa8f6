"""TADS: a value function over quality, task relevance and diversity, refined by meta-learning.

learn (the learn stage): standardize the pool's features (value.py), start the value
function at the weak-supervision prior, then meta-learn it (meta.py) against the tasks'
train splits through truncated unrolled updates of an embedding proxy on the pool's frozen
reference embeddings. With tads.meta.steps = 0 the prior alone is the selector (the
ablation "no meta-learning"). Writes learn/value.msgpack (params), learn/value.json (the
standardizer and the module's shape), learn/history.json (per meta step).

score (the select stage): V(z) of every sample with the learned params.
"""

import json
import os

from absl import logging
import flax.serialization
import jax
import numpy as np
import pyarrow as pa

from tads_jax import meta
from tads_jax import pipeline
from tads_jax import selectors
from tads_jax import sharding
from tads_jax import value

PARAMS = 'value.msgpack'
MODEL = 'value.json'
HISTORY = 'history.json'


def meta_config(config) -> tuple[meta.MetaConfig, int]:
  """(config.tads.meta as a MetaConfig, meta steps); a bad value raises naming the config
  field. steps = 0 means no meta-learning (the prior alone); the other fields are still
  checked."""
  fields = dict(config.tads.meta.to_dict())
  fields['seed'] = config.seed
  steps = fields.get('steps')
  if steps == 0 and not isinstance(steps, bool):
    fields['steps'] = 1
  try:
    return meta.MetaConfig(**fields), steps
  except TypeError as e:
    raise ValueError(f'config.tads.meta: {e}') from None
  except ValueError as e:
    raise ValueError(str(e).replace('MetaConfig.', 'config.tads.meta.')) from None


def by_task(history: dict) -> dict:
  """meta.learn's history with the per-task lists ([step][task]) turned into
  {task: [per step]}, the form the report plots."""
  out = dict(history)
  names = history['tasks']
  for key in ('task_losses', 'task_weights'):
    rows = history[key]
    out[key] = {name: [row[t] for row in rows] for t, name in enumerate(names)}
  return out


@selectors.register('tads')
class TadsSelector(selectors.Selector):
  """Scores = the learned value function of each sample's standardized features."""
  learns = True

  def __init__(self, config):
    super().__init__(config)
    self.module = None
    self.params = None
    self.standardizer = None

  @staticmethod
  def check_config(config) -> None:
    """Every config.tads value that cannot work raises ValueError naming the field."""
    if 'tads' not in config:
      raise ValueError('config.tads: missing block (groups, prior, hidden, meta)')
    t = config.tads
    for field in ('groups', 'prior', 'hidden', 'meta'):
      if field not in t:
        raise ValueError(f'config.tads.{field}: missing field')
    value.check_groups(tuple(t.groups), field='config.tads.groups')
    try:  # the prior's group weights and the hidden widths, as learn will use them
      value.make_value_function(['clip_score'], dict(t.prior), tuple(t.hidden))
    except ValueError as e:
      raise ValueError(f'config.tads.{e}'.replace('tads.group_weights', 'tads.prior')) \
          from None
    meta_config(config)

  # ---- learn stage -------------------------------------------------------------------

  def learn(self, ctx, features: pa.Table) -> dict:
    # Imported here: the stages import selectors, so a module-level import would cycle.
    from tads_jax.stages import evaluate  # pylint: disable=g-import-not-at-top
    t = self.config.tads
    directory = ctx.stage_dir('learn')
    names = value.input_columns(features.column_names, tuple(t.groups))
    x = value.feature_matrix(features, names, where='features')  # [N, F]
    standardizer = value.Standardizer.fit(x, names)
    z = standardizer.transform(x)  # [N, F]
    module = value.make_value_function(names, dict(t.prior), tuple(t.hidden))
    params = value.init_params(module, self.config.seed)
    prior = value.feature_weights(module, params, z)

    cfg, steps = meta_config(self.config)
    history = {}
    if steps:
      uids, image_emb, text_emb, _ = evaluate.pool_embeddings(ctx)
      if uids != features.column('uid').to_pylist():
        raise ValueError(f"{ctx.stage_dir('embed')}: the embedded pool's uids do not match "
                         'ingest/samples.parquet; rerun the embed stage')
      tasks = [dict(arrays, name=spec.name, kind=spec.kind)
               for spec, arrays in evaluate.task_embeddings(ctx, 'train')]
      if not tasks:
        raise ValueError('config.tasks: TADS meta-learning needs at least one task with a '
                         'train split (or set config.tads.meta.steps=0 for the prior alone)')
      params, raw = meta.learn(
          cfg, (module, params), {'z': z, 'image_emb': image_emb, 'text_emb': text_emb},
          tasks, workdir=directory, mesh=sharding.mesh_from_config(self.config))
      history = by_task(raw)
    learned = value.feature_weights(module, params, z)

    with open(os.path.join(directory, PARAMS), 'wb') as f:
      f.write(flax.serialization.to_bytes(jax.device_get(params)))
    pipeline.write_json_atomic(os.path.join(directory, MODEL), {
        'standardizer': standardizer.to_dict(), 'prior': list(module.prior),
        'hidden': list(module.hidden)})
    pipeline.write_json_atomic(os.path.join(directory, HISTORY), history)
    weights = [{'feature': n, 'group': value.feature_group(n),
                'prior': prior[n]['effective'], 'learned': learned[n]['effective'],
                'linear': learned[n]['linear']} for n in names]
    logging.info('learn: tads value function over %d features, %d meta steps', len(names),
                 steps)
    return {'selector': 'tads', 'features': len(names), 'groups': list(t.groups),
            'meta_steps': steps, 'history': os.path.join(directory, HISTORY),
            'feature_weights': weights}

  # ---- select stage ------------------------------------------------------------------

  def restore(self, directory: str) -> None:
    """Loads what `learn` wrote in `directory` (the workdir's learn/)."""
    model_path, params_path = (os.path.join(directory, MODEL),
                               os.path.join(directory, PARAMS))
    for path in (model_path, params_path):
      if not os.path.exists(path):
        raise ValueError(f'{path}: missing; run the learn stage with selector tads first')
    with open(model_path) as f:
      model = json.load(f)
    self.standardizer = value.Standardizer.from_dict(model['standardizer'],
                                                     where=f'{model_path}: standardizer')
    self.module = value.ValueFunction(self.standardizer.names, tuple(model['prior']),
                                      tuple(model['hidden']))
    template = value.init_params(self.module)
    with open(params_path, 'rb') as f:
      try:
        self.params = flax.serialization.from_bytes(template, f.read())
      except (ValueError, KeyError) as e:
        raise ValueError(f'{params_path}: does not hold this value function ({e})') from None

  def score(self, features: pa.Table) -> np.ndarray:
    if self.params is None:
      raise ValueError('selector tads: no learned value function; the select stage restores '
                       'it from the learn stage (add learn to config.stages)')
    x = value.feature_matrix(features, self.standardizer.names, where='features')
    z = self.standardizer.transform(x)  # [N, F]
    apply = jax.jit(lambda p, z: self.module.apply({'params': p}, z))
    chunk = 65536
    out = [np.asarray(apply(self.params, z[i:i + chunk])) for i in range(0, len(z), chunk)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
