"""TADS: a value function over quality, task relevance and diversity, refined by meta-learning.

fit (in the learn stage): standardize the pool's features (value.py), start the value
function at the weak-supervision prior, then meta-learn it (meta.py) against the tasks'
train splits through truncated unrolled updates of an embedding proxy on the pool's frozen
reference embeddings (with tads.meta.text='words' its text side is a word-bag tower learned
from the captions, meta.TEXTS). With tads.meta.steps = 0 the prior alone is the selector (the
ablation "no meta-learning"). The state holds the params, the standardizer, the module's
shape, the meta-learning history and the prior's and learned feature weights.

score (in the select stage): V(z) of every sample with the learned params.

tads.gate (column, fraction): a hard filter before the value function, as DataComp's
filter-then-rank baselines and ncl_normsim's negCLIPLoss pass do: only the top `fraction`
of the pool by a features column (clip_score by default; a pattern such as
'relevance_*_target' takes the largest of the columns it matches, there NormSim_inf over
every task's train images) is ranked; the rest score NaN (never selected), and
meta-learning draws its batches from the rows that pass, so the value function learns to
rank among them. fraction None: no gate. then_column / then_fraction: a second pass in
series, keeping the top then_fraction of the pool by another column among the rows the
first passed (relevance first, then a quality column such as clip_score: ncl_normsim's two
filters, with the value function ranking what is left).

tads.dedup ('none' | 'exact' | 'semantic' | 'both'): the duplicate flags that keep a row
out of TADS's subset (score NaN, below every other row: a flagged copy is kept only when
the pool has too few other rows to fill the budget; one copy of each group is never
flagged), as selection.dedup does for every selector of a run. Meta-learning cannot see
duplicates: within a batch a copy of a clean sample trains the proxy as well as the sample,
so the duplicate flags' weights end near 0; only the budget sees that a copy displaces a
new sample.

tads.ensemble K > 1: K value functions meta-learned from K seeds (member 0 from the run's
seed, the one a single function uses), each its own draw of batches, proxy init and value
init; a sample's score is the mean over members of its standardized value (each member's
mean and std over the rows that pass the gate, kept in the state, so a shard scores the
same alone as in the pool). Meta-learning's outcome moves with its seed; the mean of
several is a steadier ranking. Without meta-learning every member would be the prior, so
K is then 1.

On several processes fit runs on each: the standardizer's moments are summed per shard over
the processes (in shard order, so one process gets the same bytes), and the meta-learning
mesh spans every process's devices, each process reading its part of every batch.
"""

import dataclasses
import fnmatch
import functools
import os

from absl import logging
import jax
import numpy as np

from tads_jax import config as config_lib
from tads_jax import distributed
from tads_jax import meta
from tads_jax import selectors
from tads_jax import sharding
from tads_jax import value
from tads_jax.models import words


def meta_config(config) -> tuple[meta.MetaConfig, int]:
  """(config.tads.meta as a MetaConfig, meta steps); a bad value raises naming the config
  field. steps = 0 means no meta-learning (the prior alone); the other fields are still
  checked."""
  fields = dict(config.tads.meta.to_dict())
  steps = fields.get('steps')
  if steps == 0 and not isinstance(steps, bool):
    fields['steps'] = 1
  return meta.config_from(fields, config.seed, 'config.tads.meta'), steps


by_task = meta.history_by_task


def check_config(config) -> None:
  """Every config.tads value that cannot work raises ValueError naming the field."""
  if 'tads' not in config:
    raise ValueError('config.tads: missing block (groups, prior, hidden, meta)')
  t = config.tads
  for field in ('groups', 'prior', 'hidden', 'meta'):
    if field not in t:
      raise ValueError(f'config.tads.{field}: missing field')
  groups = value.check_groups(tuple(t.groups), field='config.tads.groups')
  sided = two_sided(config)
  if sided and 'quality' not in groups:
    raise ValueError(f'config.tads.two_sided: {sided} are quality features; add quality to '
                     'config.tads.groups or leave two_sided empty')
  try:  # the prior, the hidden widths and the two-sided terms, as fit will use them
    _value_function(config, ('clip_score',) + sided)
  except ValueError as e:
    raise _field_error(e) from None
  meta_config(config)
  gate(config)
  ensemble(config)
  dedup(config)


def dedup(config) -> str:
  """config.tads.dedup ('none' when absent): which duplicate flags keep a row out."""
  return selectors.dedup_mode(config.tads.get('dedup', 'none'), 'config.tads.dedup')


def ensemble(config) -> int:
  """config.tads.ensemble (1 when absent): how many value functions are meta-learned."""
  k = config.tads.get('ensemble', 1)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f'config.tads.ensemble: a count of value functions >= 1, got {k!r}')
  return k


def member_seed(seed: int, k: int) -> int:
  """Member k's seed: the run's own for member 0, a derived one for the others."""
  return seed if k == 0 else int(np.random.SeedSequence([seed, 3, k]).generate_state(1)[0])


# The config.tads.gate fields of each pass, in order: '' then 'then_' (column, fraction).
GATE_PASSES = ('', 'then_')


def gate(config) -> tuple:
  """The gate's passes, checked: ((column, fraction),) for config.tads.gate, then
  (then_column, then_fraction) when set, a second filter in series; () when there is no
  gate (block absent or fraction None). Each fraction is a share of the whole pool; each
  pass keeps no more than the one before and at least the budget."""
  block = config.tads.get('gate')
  if block is None or block.get('fraction') is None:
    if block is not None and block.get('then_fraction') is not None:
      raise ValueError('config.tads.gate.then_fraction: a second pass needs the first; '
                       'set config.tads.gate.fraction')
    return ()
  budget = config.get('selection', {}).get('fraction')
  passes, previous = [], 1.0
  for prefix in GATE_PASSES:
    column, fraction = block.get(prefix + 'column'), block.get(prefix + 'fraction')
    if prefix and fraction is None:
      break
    if not isinstance(column, str) or not column:
      raise ValueError(f'config.tads.gate.{prefix}column: a features column name or '
                       f'pattern, got {column!r}')
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
        or not 0 < fraction <= previous:
      raise ValueError(f'config.tads.gate.{prefix}fraction: a share of the pool in '
                       f'(0, {previous:g}] or None, got {fraction!r}')
    if isinstance(budget, (int, float)) and fraction < budget <= 1:  # a bad budget: its own error
      raise ValueError(f'config.tads.gate.{prefix}fraction: {fraction} is below '
                       f'selection.fraction {budget}; the subset could not fill its budget '
                       'from the gate')
    passes.append((column, float(fraction)))
    previous = fraction
  return tuple(passes)


def gate_columns(pattern: str, names, field: str = 'column') -> list:
  """The features columns a gate pass reads: those `pattern` matches (fnmatch; a plain
  name matches itself), in table order; none raises naming the field."""
  matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
  if not matched:
    raise ValueError(f'config.tads.gate.{field}: {pattern!r} matches no features column '
                     f'(have {list(names)})')
  return matched


def gate_values(features, columns) -> np.ndarray:  # -> [N]
  """A gate pass's value per row: the largest of its columns (one column: that column;
  NaN only where all are NaN)."""
  return np.fmax.reduce(value.feature_matrix(features, columns, where='features'), axis=1)


def gate_cut(values: np.ndarray, keep: int) -> float:
  """A gate pass's threshold: the keep-th largest of values [n] (NaN ranks last); a row
  passes at or above it, so ties at the cut all pass."""
  key = np.where(np.isnan(values), -np.inf, np.asarray(values, np.float64))
  k = min(max(1, keep), len(key))
  return float(np.partition(key, len(key) - k)[len(key) - k])


def gate_rows(features, passes) -> tuple[np.ndarray, list]:
  """(the rows that pass every gate pass, in pool order; each pass's state): each pass
  keeps the top round(fraction * N) of the rows the one before passed."""
  rows, states = np.arange(features.num_rows), []
  for (column, fraction), prefix in zip(passes, GATE_PASSES):
    read = gate_columns(column, features.column_names, prefix + 'column')
    values = gate_values(features, read)[rows]
    cut = gate_cut(values, int(round(fraction * features.num_rows)))
    rows = rows[values >= cut]
    states.append({'column': column, 'columns': read, 'fraction': fraction, 'cut': cut,
                   'passed': len(rows)})
  return rows, states


def gate_passed(features, state) -> np.ndarray:  # -> [N] bool
  """Which rows of features pass the learned gate (state['gate']), a shard at a time as
  well as whole: every pass's cut, applied to every row."""
  passed = np.ones(features.num_rows, bool)
  for g in [state] + ([state['then']] if state.get('then') else []):
    passed &= gate_values(features, list(g['columns'])) >= g['cut']
  return passed


def value_form(config) -> str:
  """config.tads.value_form ('additive' when absent; value.FORMS)."""
  return config.tads.get('value_form', 'additive')


def two_sided(config) -> tuple:
  """config.tads.two_sided (() when absent): quality features whose |z| V also weighs."""
  sided = config.tads.get('two_sided', ())
  if isinstance(sided, str) or not all(value.feature_group(n) == 'quality'
                                       for n in (sided or ())):
    raise ValueError(f'config.tads.two_sided: a tuple of quality feature names '
                     f'(scoring.registry.OPERATORS), got {sided!r}')
  return tuple(sided or ())


def _value_function(config, names) -> value.ValueFunction:
  t = config.tads
  return value.make_value_function(names, dict(t.prior), tuple(t.hidden),
                                   form=value_form(config), signs=linear_signs(config),
                                   two_sided=two_sided(config))


def _field_error(error: ValueError) -> Exception:
  """A ValueError of value.make_value_function as a ConfigError naming config.tads's field."""
  return config_lib.field_error(error, 'config.tads', renames={
      'group_weights': 'config.tads.prior', 'hidden': 'config.tads.hidden',
      'form': 'config.tads.value_form', 'signs': 'config.tads.linear_signs',
      'two_sided': 'config.tads.two_sided'})


def linear_signs(config) -> str:
  """config.tads.linear_signs ('free' when absent; value.SIGNS)."""
  return config.tads.get('linear_signs', 'free')


def reads_words(config) -> bool:
  """Whether meta-learning's proxy reads the captions' words (tads.meta.text='words')."""
  return ('tads' in config and config.tads.meta.get('steps', 1) != 0
          and config.tads.meta.get('text', 'reference') == 'words')


def columns(config, names) -> tuple:
  """The features columns fit and score read: the value function's inputs, each gate
  pass's columns, the duplicate flags of tads.dedup, and the captions when meta-learning
  reads their words (repeats are dropped by Selector.columns_for)."""
  inputs = value.input_columns(names, tuple(config.tads.groups))
  gated = tuple(c for (column, _), prefix in zip(gate(config), GATE_PASSES)
                for c in gate_columns(column, names, prefix + 'column'))
  return (inputs + gated + selectors.DEDUP[dedup(config)]
          + (('caption',) if reads_words(config) else ()))


def word_inputs(captions, tasks) -> tuple[np.ndarray, list]:
  """(pool text_ids [N, L], tasks with class_text_ids [C, T, L] or text_ids [m, L]): the
  captions and the tasks' texts (every template of every class name; retrieval captions)
  as ids of one vocabulary (models/words.py), for a words proxy (meta.TEXT_FIELDS)."""
  prompts = [[template.format(name) for name in task['classnames']
              for template in task['templates']] if task['kind'] == 'classification'
             else list(task['texts']) for task in tasks]
  vocab = words.vocabulary((p for texts in prompts for p in texts), captions)
  out, task_words = [], 0
  for task, texts in zip(tasks, prompts):
    ids = words.word_ids(texts, vocab)
    if task['kind'] == 'classification':
      out.append(dict(task, class_text_ids=ids.reshape(len(task['classnames']),
                                                       len(task['templates']), -1)))
    else:
      out.append(dict(task, text_ids=ids))
    task_words = max(task_words, int(ids.max(initial=0)))  # the tasks' words come first
  logging.info('learn: tads words proxy, %d words (%d from the tasks)', len(vocab),
               task_words)
  return words.word_ids(captions, vocab), out


def needs(config) -> tuple:
  """Meta-learning reads the pool and task embeddings; the prior alone only features."""
  steps = config.tads.meta.get('steps', 1) if 'tads' in config else 1
  return ('features',) if steps == 0 else ('features', 'embeddings', 'tasks')


def fit(config, inputs: selectors.Inputs) -> dict:
  t = config.tads
  names = value.input_columns(inputs.features.column_names, tuple(t.groups))
  x = value.feature_matrix(inputs.features, names, where='features')  # [N, F]
  standardizer = _standardizer(x, names, inputs)
  z = standardizer.transform(x, out=x)  # [N, F], in place: one copy of the features
  try:
    module = _value_function(config, names)
  except ValueError as e:  # a two-sided feature the features stage did not compute
    raise _field_error(e) from None
  params = value.init_params(module, config.seed)
  prior = value.feature_weights(module, params, z)
  passes = gate(config)
  rows, gate_state = None, {}
  if passes:
    rows, states = gate_rows(inputs.features, passes)
    gate_state = dict(states[0], then=states[1] if len(states) > 1 else None)
    for g in states:
      logging.info('learn: tads gate %s >= %.4f passes %d of %d rows', g['column'], g['cut'],
                   g['passed'], len(z))

  cfg, steps = meta_config(config)
  history, members = {}, []
  if steps:
    image_emb, text_emb = inputs.embedding_rows('tads')  # gathered a batch at a time
    tasks = [dict(task) for task in inputs.task_list('tads')]
    pool = {'z': z, 'image_emb': image_emb, 'text_emb': text_emb}
    if cfg.text == 'words':
      pool['text_ids'], tasks = word_inputs(
          [str(c) for c in inputs.column('caption', 'tads')], tasks)
    # Fitted on every process (shard_rows given): a mesh over every process's devices,
    # the meta batches split over all of them; else this process's devices alone.
    layout = sharding.from_config(
        config, devices=None if inputs.shard_rows is None else jax.devices())
    cfg = meta.fit_batch_to_pool(cfg, len(z) if rows is None else len(rows), layout.mesh,
                                 'config.tads.meta')
    for k in range(ensemble(config)):
      seed = member_seed(config.seed, k)
      start = params if k == 0 else value.init_params(module, seed)
      checkpoints = inputs.checkpoints
      if k and checkpoints is not None:  # each member resumes from its own checkpoints
        checkpoints = os.path.join(checkpoints, f'member_{k}')
      learned_params, raw = meta.learn(
          dataclasses.replace(cfg, seed=seed), (module, start), pool, tasks,
          workdir=checkpoints, mesh=layout.mesh, rules=layout.rules, rows=rows)
      members.append(jax.device_get(learned_params))
      if k == 0:
        history = by_task(raw)
  else:
    members = [jax.device_get(params)]
  # Per feature, the members' mean of mean dV/dz (each member on its own scale).
  learned = [value.feature_weights(module, p, z) for p in members]
  groups = {n: value.feature_group(n) for n in names}
  groups.update({value.two_sided_term(n): 'quality' for n in module.two_sided})
  weights = [{'feature': n, 'group': group, 'prior': prior[n]['effective'],
              'learned': float(np.mean([w[n]['effective'] for w in learned])),
              'linear': float(np.mean([w[n]['linear'] for w in learned]))}
             for n, group in groups.items()]
  logging.info('learn: tads %d value function(s) over %d features, %d meta steps',
               len(members), len(names), steps)
  state = {'params': members[0], 'standardizer': standardizer.to_dict(),
           'prior': list(module.prior), 'hidden': list(module.hidden), 'form': module.form,
           'signs': module.signs, 'two_sided': list(module.two_sided),
           'meta_steps': steps, 'groups': list(t.groups), 'history': history,
           'feature_weights': weights, 'gate': gate_state, 'dedup': dedup(config)}
  if len(members) > 1:
    gated = z if rows is None else z[rows]  # [R, F]: the moments are over the rows ranked
    values = np.stack([_values(module, p, gated) for p in members])
    state['ensemble'] = {'params': {str(k): p for k, p in enumerate(members) if k},
                         'mean': values.mean(axis=1).tolist(),
                         'std': values.std(axis=1).tolist()}
  return state


def _standardizer(x, names, inputs: selectors.Inputs) -> value.Standardizer:
  """The Standardizer of the pool's features x [N, F]; given the pool's shards (the
  stages), its moments are summed per shard over this process's shards and then over the
  processes, in shard order."""
  if inputs.shard_rows is None:
    return value.Standardizer.fit(x, names)
  owned = lambda: ((index, x[rows]) for index, rows in inputs.owned_shards())
  return value.Standardizer.fit_parts(owned, names, distributed.gather_by_shard)


def summary(state) -> dict:
  return {'features': len(state['feature_weights']), 'groups': list(state['groups']),
          'meta_steps': int(state['meta_steps']), 'history': state['history'],
          'feature_weights': state['feature_weights'], 'gate': state.get('gate'),
          'ensemble': len(state['ensemble']['mean']) if state.get('ensemble') else 1,
          'dedup': state.get('dedup', 'none')}


def score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  del config
  standardizer = value.Standardizer.from_dict(state['standardizer'],
                                              where='learn state: standardizer')
  module = value.ValueFunction(standardizer.names, tuple(state['prior']),
                               tuple(state['hidden']), state.get('form', 'additive'),
                               state.get('signs', 'free'),
                               tuple(state.get('two_sided', ())))
  x = value.feature_matrix(inputs.features, standardizer.names, where='features')
  z = standardizer.transform(x)  # [N, F]
  e = state.get('ensemble')
  if e:  # the mean of the members' standardized values
    members = [state['params']] + [e['params'][str(k)] for k in range(1, len(e['mean']))]
    scores = np.mean([(_values(module, p, z) - mean) / max(std, 1e-12)
                      for p, mean, std in zip(members, e['mean'], e['std'])], axis=0)
  else:
    scores = _values(module, state['params'], z)
  if state.get('gate'):  # below the gate (or NaN there): NaN, never selected
    scores[~gate_passed(inputs.features, state['gate'])] = np.nan
  eligible = selectors.eligible_rows(inputs.features, state.get('dedup', 'none'),
                                     field='config.tads.dedup')
  if eligible is not None:  # a flagged copy: NaN, below every row that is not flagged
    scores[~eligible] = np.nan
  return scores


def _values(module, params, z) -> np.ndarray:  # [N, F] -> [N] float64
  """V(z) per row, in fixed-size blocks (the tail padded): one program, and a row's value
  the same bits whether the pool is scored whole or a shard at a time."""
  out = []
  for i in range(0, len(z), _SCORE_ROWS):
    block = z[i:i + _SCORE_ROWS]
    padded = np.pad(block, ((0, _SCORE_ROWS - len(block)), (0, 0)))
    out.append(np.asarray(_apply(module, params, padded))[:len(block)])
  return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


_SCORE_ROWS = 4096


@functools.partial(jax.jit, static_argnums=0)
def _apply(module, params, z):  # [B, F] -> [B]
  return module.apply({'params': params}, z)


selectors.register(selectors.Selector(
    name='tads', fit=fit, score=score, needs=needs, score_needs=('features',), learns=True,
    columns=columns,
    rowwise=True, multiprocess=True,
    check_config=check_config, summary=summary, config_fields=('seed',),
    doc='TADS: a value function over quality, task relevance and diversity, meta-learned '
        'through unrolled proxy updates against the tasks (this project)'))
