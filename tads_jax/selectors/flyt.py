"""FLYT and M-FLYT (Shechter & Carmon 2025, "Filter Like You Test"; code formll/FLYT).

flyt: a scoring head over the frozen reference embeddings, learned from the tasks'
  gradients. FLYT's ScoringModel (flyt/factory.py): x = [unit image emb, unit text emb]
  [B, 2D] -> GLU layers w2(act(w1 x) * w3 x) (GluFeedForwardModel; hidden width
  hidden_mult * 2D, silu) -> one score per sample. Learning (flyt/train.py,
  train_one_flyt_epoch) is meta.learn with one unrolled step: per pool batch
  w = softmax(scores); the weighted CLIP loss where w also weights the negatives
  (losses.weighted_clip_loss, their NegativeWeightedClipLoss); one differentiable AdamW step
  of the reference proxy (their DifferentiableAdamW: decoupled decay on matrices only);
  the tasks' losses at the updated proxy (classification: cross-entropy with one random
  template per class and a fixed downstream logit scale; retrieval: the CLIP loss), averaged
  over tasks; the exact meta-gradient to the scorer (their JVP trick computes the same
  chain rule); AdamW on the scorer; the proxy keeps the updated params
  (--update_reference_model). score: the head on every pool sample.

mflyt: FLYT's MixingModel, a linear layer over a matrix of per-sample scores of other
  selectors (config.mflyt.inputs), each standardized over the pool (NaN, a selector's
  "never select", first set to that score's lowest value), trained the same way. The input
  scores come from those selectors' own fit and score on the same inputs; their fitted
  states are kept in M-FLYT's state so that score recomputes them. The summary lists the
  learned weight of each input score (their Table 2).

Where this differs from formll/FLYT, and why:
  - The reference model is this project's proxy (proxy.EmbeddingCLIP heads on the frozen
    reference embeddings), as for TADS, not a full pretrained CLIP: pixels are not read
    past the embed stage. The scorer's inputs are those same frozen embeddings (their
    scoring CLIP is frozen too unless --train_full_scoring).
  - The downstream logit scale is fixed (flyt.meta.outer_logit_scale); theirs starts at
    the same value and is moved by an AdamW step at the reference's learning rate.
  - Constant reference learning rate (theirs: open_clip's cosine schedule, --lr 5e-5 for a
    pretrained ViT-B/32; the proxy here starts untrained and takes the TADS proxy's rate).
  - The scorer's AdamW is optax's (b2 0.999, eps 1e-8; theirs b2 0.98, eps 1e-6), warmup
    then cosine as theirs.
  - No mixed precision and no grad scaler (float32 throughout), one process's batch (the
    mesh splits it) instead of all-gathered per-GPU batches.
  - The logit scale of the proxy is clipped to [0, log 100] (theirs [2, log 100]).

Memory: the pool's embeddings are read through Inputs.embedding_rows (from disk in the
stages): meta-learning gathers one batch of rows at a time, scoring reads one chunk of
_CHUNK rows; M-FLYT holds its [N, S] input scores. Never [N, E] (mflyt's input selectors
hold what their own modules say).
"""

import dataclasses
import math
import os

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tads_jax import losses
from tads_jax import meta
from tads_jax import selectors
from tads_jax import sharding
from tads_jax import value

ACTIVATIONS = {'silu': jax.nn.silu, 'relu': jax.nn.relu}
INITS = ('default', 'cosine')
_CHUNK = 65536  # pool rows per jitted scoring call


# ---------------------------------------------------------------------------------------
# Models.


def _torch_uniform(fan_in: int):
  """PyTorch nn.Linear's default init for weights and biases: U(-1/sqrt(fan_in), +)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
      key, shape, dtype, -bound, bound)


class GluLayer(nn.Module):
  """w2(act(w1 x) * w3 x) (their GluFeedForwardLayer), biases on, torch's init."""
  hidden: int
  out: int
  activation: str = 'silu'

  @nn.compact
  def __call__(self, x):  # [B, F] -> [B, out]
    fan_in = x.shape[-1]
    dense = lambda width, name, fan: nn.Dense(width, kernel_init=_torch_uniform(fan),
                                             bias_init=_torch_uniform(fan), name=name)
    gate = ACTIVATIONS[self.activation](dense(self.hidden, 'w1', fan_in)(x))  # [B, H]
    return dense(self.out, 'w2', self.hidden)(gate * dense(self.hidden, 'w3', fan_in)(x))


class FlytScorer(nn.Module):
  """FLYT's scoring head over the concatenated unit image and text embeddings."""
  hidden_mult: float = 1.0   # GLU hidden width = hidden_mult * 2D (their hidden_dim_mod)
  layers: int = 1            # GLU layers; all but the last keep the width 2D
  activation: str = 'silu'

  @nn.compact
  def __call__(self, image_emb, text_emb):  # [B, D], [B, D] -> [B]
    x = jnp.concatenate([losses.normalize(image_emb), losses.normalize(text_emb)], axis=-1)
    width = x.shape[-1]  # 2D
    hidden = max(1, int(width * self.hidden_mult))
    for i in range(self.layers - 1):
      x = GluLayer(hidden, width, self.activation, name=f'layer_{i}')(x)
    return GluLayer(hidden, 1, self.activation, name=f'layer_{self.layers - 1}')(x)[:, 0]


class MixingScorer(nn.Module):
  """M-FLYT's MixingModel: one linear layer over S standardized scores (torch's init)."""

  @nn.compact
  def __call__(self, scores):  # [B, S] -> [B]
    fan_in = scores.shape[-1]
    return nn.Dense(1, kernel_init=_torch_uniform(fan_in), bias_init=_torch_uniform(fan_in),
                    name='linear')(scores)[:, 0]


def cosine_init(params, width: int, noise_std: float, seed: int) -> dict:
  """Their init_cosine_similarity (--cos_sim_init) for one GLU layer of hidden 2D on
  x = [u, v]: w1 = diag(+1, -1), w3 maps (u, v) to (v, -u), w2 = ones, so the score is
  sum_i silu(u_i) v_i + silu(-v_i) (-u_i), about <u, v> (silu(x) ~ x / 2) for small
  entries; plus N(0, noise_std) on every weight and bias. width = D."""
  d2 = 2 * width
  w1 = np.diag(np.r_[np.ones(width), -np.ones(width)])
  # torch weight [out, in]: w3[i, i + D] = 1, w3[i + D, i] = -1; flax kernels are [in, out].
  w3 = np.diag(np.ones(width), width) + np.diag(-np.ones(width), -width)
  exact = {'w1': {'kernel': w1.T, 'bias': np.zeros(d2)},
           'w3': {'kernel': w3.T, 'bias': np.zeros(d2)},
           'w2': {'kernel': np.ones((d2, 1)), 'bias': np.zeros(1)}}
  rng = np.random.default_rng([seed, 0xC05])
  layer = params['layer_0']
  out = {}
  for name, leaves in exact.items():
    out[name] = {}
    for leaf, x in leaves.items():
      if x.shape != layer[name][leaf].shape:
        raise ValueError(f'cosine_init: {name}.{leaf} is {layer[name][leaf].shape}, '
                         f'expected {x.shape} (one layer, hidden_mult 1)')
      out[name][leaf] = jnp.asarray(x + noise_std * rng.normal(size=x.shape), jnp.float32)
  return {'layer_0': out}


# ---------------------------------------------------------------------------------------
# Shared helpers.


def _init(module, seed: int, *shapes):
  dummies = [jnp.zeros((1,) + s, jnp.float32) for s in shapes]
  return jax.device_get(module.init(jax.random.key(seed), *dummies)['params'])


def apply_chunked(fn, params, arrays, chunk: int = _CHUNK) -> np.ndarray:
  """fn(params, *rows) over every row of `arrays` ([N, ...] each) in jitted chunks of one
  static size (the last one padded), as float64 [N]. The arrays may be row gathers
  (Inputs.embedding_rows): memory holds one chunk."""
  n = arrays[0].shape[0]
  if n == 0:
    return np.zeros(0)
  size = min(chunk, n)
  run = jax.jit(fn)
  out = []
  for start in range(0, n, size):
    parts = [np.asarray(a[start:start + size], np.float32) for a in arrays]
    m = len(parts[0])
    parts = [np.pad(p, [(0, size - m)] + [(0, 0)] * (p.ndim - 1)) for p in parts]
    out.append(np.asarray(run(params, *parts))[:m])
  return np.concatenate(out).astype(np.float64)


def _meta_config(config, name: str) -> meta.MetaConfig:
  block = selectors.option(config, name, 'meta')
  cfg = meta.config_from(block, config.seed, f'config.{name}.meta')
  if cfg.text != 'reference':  # FLYT's proxy is the reference's embeddings, both sides
    raise ValueError(f"config.{name}.meta.text: {cfg.text!r}; {name} reads the reference "
                     "embeddings only ('reference')")
  return cfg


def _learn(config, name: str, scorer: meta.Scorer, params, pool: dict,
           inputs: selectors.Inputs):
  """meta.learn of `scorer` against the tasks' train splits: (params, history by task)."""
  tasks = [dict(task) for task in inputs.task_list(name)]
  layout = sharding.from_config(config)
  cfg = meta.fit_batch_to_pool(_meta_config(config, name), inputs.num_rows, layout.mesh,
                               f'config.{name}.meta')
  params, raw = meta.learn(cfg, (scorer, params), pool, tasks, workdir=inputs.checkpoints,
                           mesh=layout.mesh, rules=layout.rules)
  return jax.device_get(params), meta.history_by_task(raw)


# ---------------------------------------------------------------------------------------
# flyt.


def flyt_module(config) -> FlytScorer:
  """config.flyt's head, checked; ValueError names the field."""
  mult = selectors.number(config, 'flyt', 'hidden_mult', low=0.0, low_open=True)
  layers = selectors.number(config, 'flyt', 'layers', low=1, integer=True)
  activation = selectors.option(config, 'flyt', 'activation')
  if activation not in ACTIVATIONS:
    raise ValueError(f'config.flyt.activation: one of {", ".join(ACTIVATIONS)}, got '
                     f'{activation!r}')
  return FlytScorer(float(mult), layers, activation)


def flyt_check(config) -> None:
  if 'flyt' not in config:
    raise ValueError('config.flyt: missing block (hidden_mult, layers, activation, init, '
                     'noise_std, meta)')
  module = flyt_module(config)
  init = selectors.option(config, 'flyt', 'init')
  if init not in INITS:
    raise ValueError(f'config.flyt.init: one of {", ".join(INITS)}, got {init!r}')
  if init == 'cosine' and (module.layers != 1 or module.hidden_mult != 1):
    raise ValueError("config.flyt.init: 'cosine' needs layers = 1 and hidden_mult = 1 "
                     f'(FLYT\'s cos_sim_init), got {module.layers} and {module.hidden_mult}')
  selectors.number(config, 'flyt', 'noise_std', low=0.0)
  _meta_config(config, 'flyt')


def flyt_scorer(module: FlytScorer) -> meta.Scorer:
  return meta.Scorer(module, meta.EMBEDDINGS, (None, None), 'the reference embeddings')


def flyt_fit(config, inputs: selectors.Inputs) -> dict:
  image_emb, text_emb = inputs.embedding_rows('flyt')  # gathered a batch at a time
  width = image_emb.shape[1]
  module = flyt_module(config)
  params = _init(module, config.seed, (width,), (width,))
  if config.flyt.init == 'cosine':
    params = cosine_init(params, width, config.flyt.noise_std, config.seed)
  params, history = _learn(config, 'flyt', flyt_scorer(module), params,
                           {'image_emb': image_emb, 'text_emb': text_emb}, inputs)
  steps = config.flyt.meta.steps
  logging.info('learn: flyt scoring head over %d-dim embeddings, %d meta steps', width, steps)
  return {'params': params, 'width': width, 'hidden_mult': module.hidden_mult,
          'layers': module.layers, 'activation': module.activation,
          'init': config.flyt.init, 'meta_steps': steps, 'history': history}


def flyt_score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  del config
  image_emb, text_emb = inputs.embedding_rows('flyt')  # read a chunk at a time
  if image_emb.shape[1] != int(state['width']):
    raise ValueError(f'learn state: the flyt head was learned on {int(state["width"])}-dim '
                     f'embeddings, the pool has {image_emb.shape[1]}; rerun learn')
  module = FlytScorer(float(state['hidden_mult']), int(state['layers']),
                      str(state['activation']))
  scorer = flyt_scorer(module)
  return apply_chunked(lambda p, i, t: scorer(p, {'image_emb': i, 'text_emb': t}),
                       state['params'], [image_emb, text_emb])


def flyt_summary(state) -> dict:
  leaves = jax.tree_util.tree_leaves(state['params'])
  return {'width': int(state['width']), 'hidden_mult': float(state['hidden_mult']),
          'layers': int(state['layers']), 'activation': str(state['activation']),
          'init': str(state['init']), 'parameters': int(sum(np.size(x) for x in leaves)),
          'meta_steps': int(state['meta_steps']), 'history': state['history']}


selectors.register(selectors.Selector(
    name='flyt', fit=flyt_fit, score=flyt_score, needs=('embeddings', 'tasks'),
    score_needs=('embeddings',), learns=True, check_config=flyt_check,
    summary=flyt_summary, config_fields=('seed',),
    doc='FLYT: a GLU scoring head over the reference embeddings, meta-learned through one '
        'AdamW step of the proxy against the tasks (Shechter & Carmon 2025)'))


# ---------------------------------------------------------------------------------------
# mflyt.


def input_names(config) -> tuple:
  """config.mflyt.inputs as a tuple of registered score selectors, checked."""
  names = selectors.option(config, 'mflyt', 'inputs')
  if isinstance(names, str):
    names = tuple(n.strip() for n in names.split(',') if n.strip())
  if not isinstance(names, (tuple, list)) or not names or not all(
      isinstance(n, str) for n in names):
    raise ValueError(f'config.mflyt.inputs: expected a non-empty list of selector names, got '
                     f'{names!r}')
  if len(set(names)) != len(names):
    raise ValueError(f'config.mflyt.inputs: {list(names)} lists a selector twice')
  for name in names:
    if name == 'mflyt':
      raise ValueError('config.mflyt.inputs: mflyt cannot mix its own score')
    try:
      selector = selectors.get(name)
    except ValueError as e:
      raise ValueError(f'config.mflyt.inputs: {e}') from None
    if selector.output_for(config) != 'scores':
      raise ValueError(f'config.mflyt.inputs: {name!r} is configured as a filter (it returns '
                       'counts, not scores); configure it to score or leave it out')
  return tuple(names)


def mflyt_config_fields(config) -> tuple:
  """The seed and every input selector's own settings: a change there changes the mix."""
  try:
    names = input_names(config)
  except ValueError:  # check_config reports it
    names = ()
  fields = ['seed']
  for name in names:
    fields += list(selectors.get(name).config_fields_for(config))
  return tuple(dict.fromkeys(fields))


def _union(*groups) -> tuple:
  return tuple(need for need in selectors.NEEDS if any(need in g for g in groups))


def mflyt_needs(config) -> tuple:
  """The pool and task embeddings (meta-learning) and whatever the inputs need."""
  try:
    names = input_names(config)
  except ValueError:  # check_config reports it
    names = ()
  return _union(('embeddings', 'tasks'),
                *(selectors.get(n).needs_for(config) for n in names))


def mflyt_score_needs(config) -> tuple:
  try:
    names = input_names(config)
  except ValueError:
    names = ()
  return _union(*(selectors.get(n).score_needs_for(config) for n in names))


def mflyt_check(config) -> None:
  if 'mflyt' not in config:
    raise ValueError('config.mflyt: missing block (inputs, meta)')
  for name in input_names(config):
    selectors.get(name).check_config(config)
  _meta_config(config, 'mflyt')


def _input_scores(config, names, states, inputs) -> np.ndarray:  # -> [N, S]
  columns = [selectors.run_selector(selectors.get(n), config, states[n], inputs)
             for n in names]
  return np.stack(columns, axis=1) if columns else np.zeros((inputs.num_rows, 0))


def _fill_missing(x, fill) -> np.ndarray:
  """NaN (a selector's 'never select') -> that column's fill value (its lowest score)."""
  return np.where(np.isnan(x), np.asarray(fill, np.float64)[None, :], x)


def mflyt_scorer(width: int) -> meta.Scorer:
  return meta.Scorer(MixingScorer(), ('z',), (width,), 'the standardized input scores')


def mflyt_fit(config, inputs: selectors.Inputs) -> dict:
  names = input_names(config)
  states = {}
  for name in names:
    selector = selectors.get(name)
    own = inputs
    if selector.learns and inputs.checkpoints is not None:  # its own resumable directory
      own = dataclasses.replace(inputs, checkpoints=os.path.join(inputs.checkpoints,
                                                                 'inputs', name))
    states[name] = selector.fit(config, own)
  x = _input_scores(config, names, states, inputs)  # [N, S]
  with np.errstate(invalid='ignore'):
    fill = [float(np.nanmin(c)) if np.isfinite(c).any() else 0.0 for c in x.T]
  x = _fill_missing(x, fill)
  standardizer = value.Standardizer.fit(x, names)
  z = standardizer.transform(x)  # [N, S]
  image_emb, text_emb = inputs.embedding_rows('mflyt')  # gathered a batch at a time
  params = _init(MixingScorer(), config.seed, (len(names),))
  params, history = _learn(config, 'mflyt', mflyt_scorer(len(names)), params,
                           {'z': z, 'image_emb': image_emb, 'text_emb': text_emb}, inputs)
  kernel = np.asarray(params['linear']['kernel'])[:, 0]  # [S]
  logging.info('learn: mflyt weights %s', dict(zip(names, kernel.round(4).tolist())))
  return {'params': params, 'inputs': list(names), 'input_states': states,
          'fill': fill, 'standardizer': standardizer.to_dict(),
          'meta_steps': config.mflyt.meta.steps, 'history': history,
          'weights': [{'input': n, 'weight': float(w)} for n, w in zip(names, kernel)],
          'bias': float(np.asarray(params['linear']['bias'])[0])}


def mflyt_score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  names = tuple(str(n) for n in state['inputs'])
  standardizer = value.Standardizer.from_dict(state['standardizer'],
                                              where='learn state: standardizer')
  x = _fill_missing(_input_scores(config, names, state['input_states'], inputs),
                    state['fill'])
  z = standardizer.transform(x)  # [N, S]
  scorer = mflyt_scorer(len(names))
  return apply_chunked(lambda p, z: scorer(p, {'z': z}), state['params'], [z])


def mflyt_summary(state) -> dict:
  return {'inputs': [str(n) for n in state['inputs']],
          'weights': state['weights'], 'bias': float(state['bias']),
          'meta_steps': int(state['meta_steps']), 'history': state['history']}


selectors.register(selectors.Selector(
    name='mflyt', fit=mflyt_fit, score=mflyt_score, needs=mflyt_needs,
    score_needs=mflyt_score_needs, learns=True, check_config=mflyt_check,
    summary=mflyt_summary,
    # The default inputs' blocks: a changed input setting reruns learn and select.
    config_fields=mflyt_config_fields,
    doc='M-FLYT: a linear layer over standardized scores of other selectors '
        '(mflyt.inputs), meta-learned as FLYT (Shechter & Carmon 2025)'))
