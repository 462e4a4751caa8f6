"""Meta-learning of a per-sample scorer from downstream feedback (FLYT-style, design sec. 5).

The scorer is any Flax module giving one score per pool sample from per-sample pool arrays
(a `Scorer`): TADS's value function V over the standardized features 'z' (value.py), FLYT's
GLU head over the reference embeddings, M-FLYT's linear layer over standardized scores
(selectors/flyt.py). One meta step:
  1. draw a pool batch (a pure function of (seed, step), so a resumed run draws the same);
  2. w = softmax(V(batch) / tau) over the batch;
  3. K differentiable updates of the proxy (proxy.EmbeddingCLIP on frozen reference
     embeddings; with cfg.text='words' its text side is a word-bag tower learned from the
     captions' words) on losses.weighted_clip_loss with weights w, in lax.scan, each step under
     jax.checkpoint when cfg.remat (the backward pass then keeps only the K carries, not
     every step's activations);
  4. outer loss at the unrolled params: sum_t a_t L_t over the tasks (classification:
     cross-entropy of zero-shot logits on a batch of task train images, the classifier
     built from every template (TADS) or from one random template per class drawn anew
     each step (FLYT); retrieval: the CLIP loss on a batch of task train pairs);
  5. jax.grad w.r.t. the scorer's params, AdamW update, then the scorer's constraint if it
     has one (Scorer.constrain: TADS's sign-kept prior);
  6. the proxy keeps training: its params and inner optimizer state become the unrolled
     ones, gradient stopped (FLYT's update_reference_model).

Task weights: a = softmax(rate * L / L0) over tasks, L the tasks' current losses and L0
their losses at the first meta step (both gradient-stopped), so a task whose loss fell
less than the others' (relative to where it started) gets more weight; rate 0 is uniform.

    module = value.make_value_function(names)
    value_params, history = learn(MetaConfig(steps=500), (module, value.init_params(module)),
                                  {'z': z, 'image_emb': image_emb, 'text_emb': text_emb},
                                  tasks, workdir='/tmp/meta')
    # Any other scorer: the module and the pool arrays it reads, in order.
    scorer = Scorer(glu_head, fields=('image_emb', 'text_emb'))
    params, history = learn(MetaConfig(unroll=1), (scorer, params), pool, tasks)
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tads_jax import checkpoints
from tads_jax import config as config_lib
from tads_jax import loop
from tads_jax import losses
from tads_jax import sharding
from tads_jax import train
from tads_jax import value as value_lib
from tads_jax.models import proxy as proxy_lib

INNER_OPTIMIZERS = ('sgd', 'adam')
TASK_KINDS = ('classification', 'retrieval')
# The zero-shot classifier of the outer loss: 'all' = every template's text embedding
# averaged per class (CLIP_benchmark's classifier); 'random' = one template per class drawn
# anew each meta step (FLYT's sample_downstream_texts).
TEMPLATES = ('all', 'random')
# The pool's reference embeddings: the proxy's inputs (with MetaConfig.text 'reference'),
# whatever the scorer reads.
EMBEDDINGS = ('image_emb', 'text_emb')
# The proxy's text input. 'reference': a head on the reference CLIP's text embeddings (pool
# 'text_emb', tasks 'class_text_emb' / 'text_emb'). 'words': each text's word ids
# (models/words.py; pool 'text_ids' [N, L], tasks 'class_text_ids' [C, T, L] / 'text_ids'
# [m, L]) into a word-bag tower learned from scratch (proxy.WordsTower). The reference
# already reads every caption right, so a caption that names the wrong attributes or too
# few costs the 'reference' proxy little; a CLIP trained on the subset learns its text
# side from those captions, and so does the 'words' proxy.
TEXTS = ('reference', 'words')
TEXT_FIELDS = {'reference': {'pool': 'text_emb', 'classification': 'class_text_emb',
                             'retrieval': 'text_emb'},
               'words': {'pool': 'text_ids', 'classification': 'class_text_ids',
                         'retrieval': 'text_ids'}}
# Fields that do not change what a run computes: a checkpoint written with other values
# of these may be resumed.
_RESUMABLE_FIELDS = ('checkpoint_every', 'keep_checkpoints', 'log_every')
# Added to Adam's second moment under the square root: sqrt has an infinite derivative at
# 0, and a parameter whose gradient is exactly 0 would otherwise turn the meta-gradient
# into 0 * inf = NaN (optax's eps_root, for the same reason).
_EPS_ROOT = 1e-30


@dataclasses.dataclass(frozen=True)
class MetaConfig:
  """One meta-learning run. Every field is checked in __post_init__."""
  steps: int = 1000              # meta steps
  batch_size: int = 256          # pool samples per meta step (split over the mesh)
  unroll: int = 4                # K: differentiable proxy updates per meta step
  inner_optimizer: str = 'adam'  # 'sgd' | 'adam', written out so gradients flow through
  inner_lr: float = 1e-3
  inner_b1: float = 0.9          # 'adam' only; CLIP's b2 and eps
  inner_b2: float = 0.98
  inner_eps: float = 1e-6
  # Decoupled weight decay of the inner steps on the proxy's matrices (not biases or the
  # logit scale): p <- p (1 - lr wd) before the step (FLYT's DifferentiableAdamW, 0.2).
  inner_weight_decay: float = 0.0
  tau: float = 1.0               # softmax temperature of the batch weights
  value_lr: float = 1e-3         # AdamW on the value params, warmup then cosine to 0
  value_warmup: int = 0
  value_weight_decay: float = 1e-4
  value_grad_clip: float = 1.0   # global-norm clip of the meta-gradient; 0 = none
  task_weight_rate: float = 1.0  # a = softmax(rate * L / L0); 0 = fixed uniform
  task_batch_size: int = 256     # task train samples per task per meta step (at most n)
  templates: str = 'all'         # the outer classifier, one of TEMPLATES
  # log of a fixed logit scale for the outer (task) losses; None = the proxy's own learned
  # one (FLYT: a separate downstream scale, --downstream_logit_scale 2.65926 = log 1/0.07).
  outer_logit_scale: float | None = None
  head: str = 'linear'           # proxy heads, as train.TrainConfig
  text: str = 'reference'        # the proxy's text input, one of TEXTS
  head_dim: int = 0
  head_hidden: int = 256
  logit_scale_init: float = math.log(1 / 0.07)
  seed: int = 0                  # proxy init and every batch draw
  checkpoint_every: int = 100    # meta steps; 0 = only at the end
  keep_checkpoints: int = 2
  log_every: int = 10
  remat: bool = True             # jax.checkpoint around each inner step

  def __post_init__(self):
    for name in ('steps', 'batch_size', 'unroll', 'task_batch_size', 'head_hidden',
                 'keep_checkpoints', 'log_every'):
      _int(name, getattr(self, name), 1)
    for name in ('value_warmup', 'head_dim', 'seed', 'checkpoint_every'):
      _int(name, getattr(self, name), 0)
    if self.inner_optimizer not in INNER_OPTIMIZERS:
      raise ValueError(f'MetaConfig.inner_optimizer: {self.inner_optimizer!r} is not one '
                       f'of {", ".join(INNER_OPTIMIZERS)}')
    if self.head not in proxy_lib.HEADS:
      raise ValueError(f'MetaConfig.head: {self.head!r} is not one of '
                       f'{", ".join(proxy_lib.HEADS)}')
    for name in ('inner_lr', 'tau', 'value_lr', 'inner_eps'):
      _number(name, getattr(self, name), positive=True)
    for name in ('value_weight_decay', 'value_grad_clip', 'task_weight_rate',
                 'inner_weight_decay'):
      _number(name, getattr(self, name), positive=False)
    if self.text not in TEXTS:
      raise ValueError(f'MetaConfig.text: {self.text!r} is not one of {", ".join(TEXTS)}')
    if self.templates not in TEMPLATES:
      raise ValueError(f'MetaConfig.templates: {self.templates!r} is not one of '
                       f'{", ".join(TEMPLATES)}')
    if self.outer_logit_scale is not None:
      _number('outer_logit_scale', self.outer_logit_scale, positive=False)
    for name in ('inner_b1', 'inner_b2'):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise ValueError(f'MetaConfig.{name}: expected a number in [0, 1), got {value!r}')
    if not isinstance(self.remat, bool):
      raise ValueError(f'MetaConfig.remat: expected a bool, got {self.remat!r}')
    if not 0 <= self.logit_scale_init <= losses.MAX_LOGIT_SCALE:
      raise ValueError(f'MetaConfig.logit_scale_init: {self.logit_scale_init!r} is outside '
                       '[0, log(100)]')

  def proxy_config(self) -> train.TrainConfig:
    """The proxy's architecture as a train.TrainConfig (its other fields are unused)."""
    return train.TrainConfig(kind='embedding', head=self.head, head_dim=self.head_dim,
                             head_hidden=self.head_hidden,
                             logit_scale_init=self.logit_scale_init, seed=self.seed)


def config_from(block, seed: int, where: str) -> MetaConfig:
  """A MetaConfig from a run config's block (a ConfigDict or dict of MetaConfig fields) and
  the run's seed; a bad value raises ConfigError (a ValueError) naming `where.<field>`."""
  return config_lib.build(MetaConfig, block, where, seed=seed)


def fit_batch_to_pool(cfg: MetaConfig, rows: int, mesh, where: str) -> MetaConfig:
  """cfg with batch_size shrunk to the pool when the pool (after ingest's skips) is smaller
  than a batch, said in the log naming the config field `where`; a multiple of the mesh's
  data axis. An empty pool or one smaller than the data axis raises naming the field."""
  devices = mesh.shape['data'] if mesh is not None else 1
  if cfg.batch_size <= rows:
    return cfg
  batch = rows - rows % devices
  if batch < 1:
    raise ValueError(f'{where}.batch_size: the pool has {rows} rows, fewer than the '
                     f"mesh's {devices} data devices; nothing to meta-learn from")
  logging.warning('%s.batch_size: %d is more than the pool\'s %d rows; using %d', where,
                  cfg.batch_size, rows, batch)
  return dataclasses.replace(cfg, batch_size=batch)


def history_by_task(history: dict) -> dict:
  """learn's history with the per-task lists ([step][task]) turned into
  {task: [per step]}, the form the report plots."""
  out = dict(history)
  names = history['tasks']
  for key in ('task_losses', 'task_weights'):
    rows = history[key]
    out[key] = {name: [row[t] for row in rows] for t, name in enumerate(names)}
  return out


def _int(name, value, lowest):
  if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
    raise ValueError(f'MetaConfig.{name}: expected an integer >= {lowest}, got {value!r}')


def _number(name, value, positive):
  ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
        and math.isfinite(value) and (value > 0 if positive else value >= 0))
  if not ok:
    raise ValueError(f'MetaConfig.{name}: expected a finite number '
                     f'{"> 0" if positive else ">= 0"}, got {value!r}')


# ---------------------------------------------------------------------------------------
# Tasks.


def check_tasks(tasks: Sequence[Mapping], width: int, text: str = 'reference') -> list[dict]:
  """Validated feedback sets as float32/int32 numpy, each with 'kind' and 'name'.

  classification: image_emb [n, D], labels [n] in [0, C), class_text_emb [C, T, D];
  retrieval: image_emb [n, D], text_emb [m, D], text_image [m] in [0, n).
  With text='words' the texts are word ids instead (TEXT_FIELDS): class_text_ids
  [C, T, L], text_ids [m, L], integers >= 0.
  The kind is read from 'kind' when given, else from the keys.
  """
  if not isinstance(tasks, (list, tuple)) or not tasks:
    raise ValueError('tasks: expected a non-empty list of feedback sets')
  out = []
  for t, task in enumerate(tasks):
    name = str(task.get('name', f'task{t}'))
    where = f'tasks[{t}] ({name})'
    kind = task.get('kind', 'classification' if 'labels' in task else
                    'retrieval' if 'text_image' in task else None)
    if kind not in TASK_KINDS:
      raise ValueError(f'{where}.kind: {kind!r} is not one of {", ".join(TASK_KINDS)} (give '
                       "'kind', or 'labels' / 'text_image')")
    text_field = TEXT_FIELDS[text][kind]
    fields = (('image_emb', 'labels', text_field) if kind == 'classification' else
              ('image_emb', text_field, 'text_image'))
    arrays = {}
    for field in fields:
      if field not in task:
        raise ValueError(f'{where}: field {field!r} is missing')
      arrays[field] = np.asarray(task[field])
    for field in fields:
      array = arrays[field]
      if field in ('labels', 'text_image'):
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
          raise ValueError(f'{where}.{field}: expected integers [n], got {array.dtype} '
                           f'{array.shape}')
        continue
      if field.endswith('_ids'):
        ndim = 3 if kind == 'classification' else 2
        if (array.ndim != ndim or not array.size or not np.issubdtype(array.dtype, np.integer)
            or array.min() < 0):
          raise ValueError(f'{where}.{field}: expected word ids (integers >= 0) of shape '
                           f'{"[C, T, L]" if ndim == 3 else "[m, L]"}, got {array.dtype} '
                           f'{array.shape}')
        arrays[field] = array.astype(np.int32)
        continue
      ndim = 3 if field == 'class_text_emb' else 2
      if (array.ndim != ndim or array.shape[-1] != width or not len(array)
          or not np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f'{where}.{field}: expected floats of shape '
                         f'{"[C, T, D]" if ndim == 3 else "[n, D]"} with D={width} (the '
                         f'pool embedding width), got {array.dtype} {array.shape}')
      if not np.all(np.isfinite(array)):
        raise ValueError(f'{where}.{field}: contains NaN or inf')
      arrays[field] = array.astype(np.float32)
    n = len(arrays['image_emb'])
    if kind == 'classification':
      labels, classes = arrays['labels'], len(arrays[text_field])
      if len(labels) != n:
        raise ValueError(f'{where}.labels: {len(labels)} labels for {n} images')
      if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f'{where}.labels: must be in [0, {classes}), got '
                         f'[{labels.min()}, {labels.max()}]')
      arrays['labels'] = labels.astype(np.int32)
    else:
      index = arrays['text_image']
      if len(index) != len(arrays[text_field]) or not len(index):
        raise ValueError(f'{where}.text_image: {len(index)} entries for '
                         f'{len(arrays[text_field])} texts')
      if index.min() < 0 or index.max() >= n:
        raise ValueError(f'{where}.text_image: must be in [0, {n}), got '
                         f'[{index.min()}, {index.max()}]')
      arrays['text_image'] = index.astype(np.int32)
    out.append(dict(arrays, kind=kind, name=name))
  return out


def classification_loss(proxy: nn.Module, params, batch, logit_scale=None) -> jax.Array:
  """Cross-entropy of the proxy's zero-shot logits (CLIP_benchmark's classifier: the
  normalized text embeddings of the batch's templates averaged per class, renormalized;
  logits = exp(logit_scale) * image @ classes). logit_scale: a fixed log scale, or None
  for the proxy's own. The prompts are batch['class_text_emb'] [C, T, D] or, for a words
  proxy, batch['class_text_ids'] [C, T, L]."""
  prompts = batch[_text_key(batch, 'classification')]
  classes, templates = prompts.shape[:2]
  image = losses.normalize(proxy.apply({'params': params}, batch['image_emb'],
                                       method='encode_image'))  # [b, E]
  text = losses.normalize(proxy.apply({'params': params},
                                      prompts.reshape((classes * templates,)
                                                      + prompts.shape[2:]),
                                      method='encode_text'))  # [C * T, E]
  prototypes = losses.normalize(jnp.mean(text.reshape(classes, templates, -1), axis=1))  # [C, E]
  scale = params['logit_scale'] if logit_scale is None else logit_scale
  logits = jnp.exp(scale) * image @ prototypes.T  # [b, C]
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.take_along_axis(log_p, batch['labels'][:, None], axis=1))


def retrieval_loss(proxy: nn.Module, params, batch, logit_scale=None) -> jax.Array:
  """The (unweighted) CLIP loss on a batch of task train pairs (logit_scale as in
  classification_loss)."""
  image, text, own_scale = proxy.apply({'params': params}, batch['image_emb'],
                                       batch[_text_key(batch, 'retrieval')])
  scale = own_scale if logit_scale is None else logit_scale
  return losses.weighted_clip_loss(losses.normalize(image), losses.normalize(text), scale)


TASK_LOSSES = {'classification': classification_loss, 'retrieval': retrieval_loss}


def _text_key(arrays: Mapping, kind: str) -> str:
  """The key of a task's (or its batch's) texts: word ids when it has them."""
  words = TEXT_FIELDS['words'][kind]
  return words if words in arrays else TEXT_FIELDS['reference'][kind]


def task_weights(rate: float, losses, losses0):
  """a = softmax(rate * L / L0) over tasks ([T] each); rate 0 gives uniform weights."""
  return jax.nn.softmax(rate * losses / jnp.maximum(losses0, 1e-12))


# ---------------------------------------------------------------------------------------
# Differentiable inner optimizers.


def inner_init(cfg: MetaConfig, params) -> dict:
  state = {'count': jnp.zeros((), jnp.int32)}
  if cfg.inner_optimizer == 'adam':
    state['mu'] = jax.tree_util.tree_map(jnp.zeros_like, params)
    state['nu'] = jax.tree_util.tree_map(jnp.zeros_like, params)
  return state


def inner_update(cfg: MetaConfig, params, grads, state):
  """One SGD or Adam step written with jnp ops, so jax.grad differentiates through it
  (including Adam's moments), after the decoupled weight decay of cfg.inner_weight_decay
  on the matrices (AdamW as optax.adamw and FLYT's DifferentiableAdamW). The logit scale
  is clipped to [0, log 100] as in train."""
  count = state['count'] + 1
  if cfg.inner_weight_decay:
    decay = 1 - cfg.inner_lr * cfg.inner_weight_decay
    params = jax.tree_util.tree_map(lambda p: p * decay if p.ndim >= 2 else p, params)
  if cfg.inner_optimizer == 'sgd':
    new = jax.tree_util.tree_map(lambda p, g: p - cfg.inner_lr * g, params, grads)
    new_state = {'count': count}
  else:
    b1, b2 = cfg.inner_b1, cfg.inner_b2
    mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state['mu'], grads)
    nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state['nu'], grads)
    t = count.astype(jnp.float32)
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t  # bias corrections

    def step(p, m, v):
      m_hat = m / c1.astype(p.dtype)
      v_hat = v / c2.astype(p.dtype)
      return p - cfg.inner_lr * m_hat / (jnp.sqrt(v_hat + _EPS_ROOT) + cfg.inner_eps)
    new = jax.tree_util.tree_map(step, params, mu, nu)
    new_state = {'count': count, 'mu': mu, 'nu': nu}
  new = dict(new)
  new['logit_scale'] = jnp.clip(new['logit_scale'], 0.0, losses.MAX_LOGIT_SCALE)
  return new, new_state


# ---------------------------------------------------------------------------------------
# The scorer.


@dataclasses.dataclass(frozen=True)
class Scorer:
  """What meta-learning trains: a Flax module whose __call__ takes per-sample pool arrays
  (the pool fields `fields`, in order, each [B, ...]) and returns one score per sample [B].

  widths: each field's last dimension, checked against the pool (None: any); `what` names
  the input in error messages.
  """
  module: nn.Module
  fields: tuple[str, ...] = ('z',)
  widths: tuple[int | None, ...] = (None,)
  what: str = "the scorer's input"

  def __post_init__(self):
    if not self.fields or len(self.widths) != len(self.fields):
      raise ValueError(f'Scorer: {len(self.widths)} widths for fields {self.fields}')

  def __call__(self, params, batch):  # -> [B]
    return self.module.apply({'params': params}, *(batch[f] for f in self.fields))

  def constrain(self, params):
    """The params after the module's own constraint, when it has one (a `constrain(params)
    -> params` method, e.g. value.ValueFunction's signs), applied after every update."""
    constrain = getattr(self.module, 'constrain', None)
    return params if constrain is None else constrain(params)


def as_scorer(module) -> Scorer:
  """A Scorer as is; a value.ValueFunction as the scorer of the features 'z'."""
  if isinstance(module, Scorer):
    return module
  if isinstance(module, value_lib.ValueFunction):
    return Scorer(module, ('z',), (len(module.names),), "the value function's features")
  raise ValueError(f'scorer: expected a meta.Scorer or a value.ValueFunction, got '
                   f'{type(module).__name__}')


def _describe(scorer: Scorer) -> dict:
  """The scorer's architecture, for checkpoint fingerprints."""
  module = scorer.module
  if isinstance(module, value_lib.ValueFunction):
    arch = {'names': list(module.names), 'prior': list(module.prior),
            'hidden': list(module.hidden)}
    if module.form != 'additive':  # the additive form's fingerprint as before the field
      arch['form'] = module.form
    if module.signs != 'free':  # likewise
      arch['signs'] = module.signs
    if module.two_sided:  # likewise
      arch['two_sided'] = list(module.two_sided)
  else:
    arch = {f.name: repr(getattr(module, f.name)) for f in dataclasses.fields(module)
            if f.name not in ('parent', 'name')}
  return {'module': type(module).__name__, 'arch': arch, 'fields': list(scorer.fields)}


# ---------------------------------------------------------------------------------------
# The outer loss and the meta step.


def make_outer_loss(cfg: MetaConfig, scorer: Scorer | value_lib.ValueFunction,
                    proxy: nn.Module, kinds: Sequence[str]) -> Callable:
  """(scorer_params, proxy_params, inner_state, losses0 [T], pool_batch, task_batches) ->
  (outer loss, aux). losses0 entries <= 0 mean 'not set yet': the current losses are used
  (so the first step's task weights are uniform). aux holds the task losses and weights,
  the unrolled proxy params and inner state, the inner losses [K] and batch weights [B]."""
  scorer = as_scorer(scorer)
  inner_loss = train.make_loss_fn(proxy, 'embedding')
  kinds = tuple(kinds)
  outer_scale = cfg.outer_logit_scale
  pool_text = TEXT_FIELDS[cfg.text]['pool']

  def outer_loss(value_params, proxy_params, inner_state, losses0, pool_batch, task_batches):
    scores = scorer(value_params, pool_batch)  # [B]
    weights = jax.nn.softmax(scores / cfg.tau)  # [B]

    # The batch and its weights are closed over, not carried: the backward pass of scan
    # keeps every step's carry, and these do not change across steps.
    def inner_step(carry, _):
      params, state = carry
      loss, grads = jax.value_and_grad(inner_loss)(
          params, pool_batch['image_emb'], pool_batch[pool_text], weights)
      return inner_update(cfg, params, grads, state), loss

    body = jax.checkpoint(inner_step) if cfg.remat else inner_step
    (params, state), inner_losses = jax.lax.scan(body, (proxy_params, inner_state), None,
                                                 length=cfg.unroll)  # [K]
    scale = None if outer_scale is None else jnp.asarray(outer_scale, jnp.float32)
    losses = jnp.stack([TASK_LOSSES[kind](proxy, params, batch, scale)
                        for kind, batch in zip(kinds, task_batches)])  # [T]
    fixed = jax.lax.stop_gradient(losses)
    losses0 = jnp.where(losses0 > 0, losses0, fixed)
    a = task_weights(cfg.task_weight_rate, fixed, losses0)  # [T]
    aux = {'task_losses': losses, 'task_weights': a, 'losses0': losses0,
           'proxy_params': params, 'inner_state': state, 'inner_losses': inner_losses,
           'weights': weights, 'scores': scores}
    return jnp.sum(a * losses), aux

  return outer_loss


@flax.struct.dataclass
class MetaState:
  step: jax.Array        # [] int32: meta steps done
  value_params: Any
  value_opt_state: Any
  proxy_params: Any      # the proxy keeps training across meta steps
  inner_state: Any       # its inner optimizer state
  losses0: jax.Array     # [T] task losses at the first meta step (0 before it)


def make_value_optimizer(cfg: MetaConfig) -> optax.GradientTransformation:
  """AdamW (warmup then cosine to 0, train.make_schedule) with decay on every weight but
  the biases, after an optional global-norm clip of the meta-gradient."""
  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], 'key', None) != 'bias', params)
  adamw = optax.adamw(train.make_schedule(cfg.value_lr, cfg.value_warmup, cfg.steps),
                      weight_decay=cfg.value_weight_decay, mask=decay_mask)
  if cfg.value_grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.value_grad_clip), adamw)
  return adamw


def make_meta_step(cfg: MetaConfig, scorer: Scorer | value_lib.ValueFunction,
                   proxy: nn.Module, kinds: Sequence[str],
                   optimizer: optax.GradientTransformation):
  """Pure step (jit it): (state, pool_batch {the scorer's fields, 'image_emb' [B, D] and
  'text_emb' [B, D] or, with cfg.text='words', 'text_ids' [B, L]}, task_batches [one dict
  per task]) -> (state, metrics)."""
  scorer = as_scorer(scorer)
  outer_loss = make_outer_loss(cfg, scorer, proxy, kinds)

  def meta_step(state: MetaState, pool_batch, task_batches):
    grads, aux = jax.grad(outer_loss, has_aux=True)(
        state.value_params, state.proxy_params, state.inner_state, state.losses0,
        pool_batch, task_batches)
    updates, opt_state = optimizer.update(grads, state.value_opt_state, state.value_params)
    value_params = scorer.constrain(optax.apply_updates(state.value_params, updates))
    w = aux['weights']
    entropy = -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0))
    metrics = {
        'outer_loss': jnp.sum(aux['task_weights'] * aux['task_losses']),
        'task_losses': aux['task_losses'], 'task_weights': aux['task_weights'],
        'inner_loss': jnp.mean(aux['inner_losses']),
        # 1 = uniform weights over the batch, 0 = all on one sample.
        'weight_entropy': entropy / math.log(w.shape[0]) if w.shape[0] > 1 else entropy,
        'value_std': jnp.std(aux['scores']),
        'value_grad_norm': optax.tree.norm(grads),
        'logit_scale': aux['proxy_params']['logit_scale'],
    }
    new_state = state.replace(
        step=state.step + 1, value_params=value_params, value_opt_state=opt_state,
        proxy_params=jax.lax.stop_gradient(aux['proxy_params']),
        inner_state=jax.lax.stop_gradient(aux['inner_state']), losses0=aux['losses0'])
    return new_state, metrics

  return meta_step


def make_proxy(cfg: MetaConfig, width: int, vocab: int = 0) -> nn.Module:
  """The proxy; vocab > 0 (cfg.text='words'): its text side is a word-bag tower over ids
  in [0, vocab)."""
  proxy = train.make_model(cfg.proxy_config(), width)
  return proxy.clone(text_vocab=vocab) if cfg.text == 'words' else proxy


def init_state(cfg: MetaConfig, value_params, proxy: nn.Module, width: int,
               num_tasks: int, optimizer: optax.GradientTransformation) -> MetaState:
  """The state before the first meta step (host arrays; the proxy from cfg.seed)."""
  proxy_params = nn.unbox(train.init_params(proxy, cfg.proxy_config(), width))
  return MetaState(step=jnp.zeros((), jnp.int32), value_params=value_params,
                   value_opt_state=optimizer.init(value_params), proxy_params=proxy_params,
                   inner_state=inner_init(cfg, proxy_params),
                   losses0=jnp.zeros((num_tasks,), jnp.float32))


# ---------------------------------------------------------------------------------------
# Batches.


def _task_seed(seed: int, t: int) -> int:
  return int(np.random.SeedSequence([seed, 1, t]).generate_state(1)[0])


def _task_batch_size(cfg: MetaConfig, task) -> int:
  n = len(task['labels'] if task['kind'] == 'classification' else task['text_image'])
  return min(cfg.task_batch_size, n)


def random_templates(class_text_emb, seed: int, t: int, step: int) -> np.ndarray:
  """[C, 1, ...]: one template's text embedding (or word ids) per class, drawn from (seed,
  task t, meta step) (FLYT's random.choices(templates, k=len(classnames)), made
  resumable)."""
  classes, templates = class_text_emb.shape[:2]
  pick = np.random.default_rng([seed, 2, t, step]).integers(0, templates, classes)  # [C]
  return class_text_emb[np.arange(classes), pick][:, None]


def task_batch(task, rows, class_text_emb=None) -> dict:
  """A feedback batch from a task's row indices (images for classification, texts for
  retrieval: each with the image it describes)."""
  key = _text_key(task, task['kind'])
  if task['kind'] == 'classification':
    return {'image_emb': task['image_emb'][rows], 'labels': task['labels'][rows],
            key: task[key] if class_text_emb is None else class_text_emb}
  return {'image_emb': task['image_emb'][task['text_image'][rows]], key: task[key][rows]}


# ---------------------------------------------------------------------------------------
# Checkpoints.


def _fingerprint(cfg, scorer: Scorer, value_params, pool, tasks, rows) -> dict:
  """What must match for a checkpoint to be resumed. The pool's embeddings enter by shape
  only (hashing gigabytes on every start is not worth it); the scorer's other inputs (z),
  the rows batches come from, the tasks and the starting scorer by content."""
  text = TEXT_FIELDS[cfg.text]['pool']
  inputs = {f'{field}_sha256': checkpoints.digest(pool[field]) for field in scorer.fields
            if field not in EMBEDDINGS}
  if cfg.text == 'words':
    inputs[f'{text}_sha256'] = checkpoints.digest(pool[text])
  if len(rows) != np.shape(pool['image_emb'])[0]:  # part of the pool (absent: all, as before)
    inputs['rows_sha256'] = checkpoints.digest(rows)
  return {
      'config': checkpoints.config_fields(dataclasses.asdict(cfg), _RESUMABLE_FIELDS),
      'scorer': _describe(scorer),
      'value_params_sha256': checkpoints.digest(*jax.tree_util.tree_leaves(
          jax.device_get(value_params))),
      'pool': dict(inputs, image_emb=list(pool['image_emb'].shape),
                   **{text: list(np.shape(pool[text]))}),
      'tasks_sha256': checkpoints.digest(*[task[k] for task in tasks for k in sorted(task)
                                           if k not in ('kind', 'name')]),
  }


# ---------------------------------------------------------------------------------------
# The run.


@dataclasses.dataclass(frozen=True)
class _Program:
  proxy: nn.Module
  optimizer: optax.GradientTransformation
  state_sharding: MetaState
  step: Callable


def _compute_key(cfg: MetaConfig) -> MetaConfig:
  """cfg without the fields that do not change the compiled step."""
  return dataclasses.replace(cfg, seed=0, checkpoint_every=0, keep_checkpoints=1,
                             log_every=1)


@functools.lru_cache(maxsize=8)
def _program(cfg: MetaConfig, scorer: Scorer, width: int, kinds: tuple, mesh,
             rules: tuple, vocab: int = 0) -> _Program:
  """Proxy, optimizer, state layout and the jitted meta step; cached so that runs that
  differ only in seed, data or workdir (resumes, seeds of a table) compile once."""
  proxy = make_proxy(cfg, width, vocab)
  optimizer = make_value_optimizer(cfg)
  repl = sharding.replicated(mesh)
  boxed = jax.eval_shape(lambda: train.init_params(proxy, cfg.proxy_config(), width))
  proxy_sh = sharding.param_shardings(boxed, mesh, rules)
  inner_sh = {'count': repl}
  if cfg.inner_optimizer == 'adam':
    inner_sh.update(mu=proxy_sh, nu=proxy_sh)
  state_sh = MetaState(step=repl, value_params=repl, value_opt_state=repl,
                       proxy_params=proxy_sh, inner_state=inner_sh, losses0=repl)
  batch_sh = sharding.batch_sharding(mesh)
  step = jax.jit(make_meta_step(cfg, scorer, proxy, kinds, optimizer),
                 in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl),
                 donate_argnums=0)
  return _Program(proxy, optimizer, state_sh, step)


def _rows(pool, field):
  """(shape, dtype) of pool[field] without reading it all."""
  return np.shape(pool[field]), np.asarray(pool[field][:0]).dtype


def _check_pool(pool, scorer: Scorer, text: str = 'reference') -> tuple[int, int, int]:
  """(N, D, V): the pool's rows, reference embedding width and, with text='words', the
  word vocabulary its ids reach into (max id + 1; else 0); raises naming the field."""
  words = text == 'words'
  own = tuple(f for f in scorer.fields if f not in EMBEDDINGS)  # e.g. 'z'
  # The reference embeddings the proxy or the scorer reads.
  embeddings = tuple(f for f in EMBEDDINGS
                     if f == 'image_emb' or not words or f in scorer.fields)
  for field in own + embeddings + (('text_ids',) if words else ()):
    if field not in pool:
      raise ValueError(f'pool: field {field!r} is missing')
  n = None
  for field, width in zip(scorer.fields, scorer.widths):
    if field in EMBEDDINGS:
      continue
    shape, dtype = _rows(pool, field)
    if (len(shape) != 2 or not np.issubdtype(dtype, np.floating)
        or (width is not None and shape[1] != width) or (n is not None and shape[0] != n)):
      raise ValueError(f'pool.{field}: expected floats [{"N" if n is None else n}, '
                       f'{width or "F"}] ({scorer.what}), got {dtype} {shape}')
    n = shape[0]
  image = np.shape(pool['image_emb'])
  n = image[0] if n is None and len(image) == 2 else n
  for field in embeddings:
    shape, dtype = _rows(pool, field)
    if len(shape) != 2 or shape[0] != n or not np.issubdtype(dtype, np.floating):
      raise ValueError(f'pool.{field}: expected floats [{n}, D], got {dtype} {shape}')
  if 'text_emb' in embeddings and np.shape(pool['text_emb']) != image:
    raise ValueError(f'pool: image_emb {image} and text_emb {np.shape(pool["text_emb"])} '
                     'differ in shape')
  vocab = 0
  if words:
    ids = np.asarray(pool['text_ids'])
    if ids.ndim != 2 or len(ids) != n or not np.issubdtype(ids.dtype, np.integer) or (
        ids.size and ids.min() < 0):
      raise ValueError(f'pool.text_ids: expected word ids (integers >= 0) [{n}, L], got '
                       f'{ids.dtype} {ids.shape}')
    vocab = int(ids.max(initial=0)) + 1
  if n == 0:
    raise ValueError('pool: no rows')
  return n, image[1], vocab


def learn(cfg: MetaConfig, value_module_and_params, pool: Mapping, tasks: Sequence[Mapping],
          workdir: str | None = None, mesh=None, rules='data_parallel',
          log: Callable[[str], None] | None = None, stop_after: int | None = None,
          rows: np.ndarray | None = None):
  """Meta-learns a scorer (the value function, FLYT's head, ...); returns (its params,
  history).

  value_module_and_params: (a Scorer or a value.ValueFunction, its params) to start from.
  pool: {'image_emb', 'text_emb': [N, D] frozen reference embeddings (float16 or float32),
    and every other field the scorer reads, e.g. 'z': [N, F] float32 standardized
    features}; each batch is gathered on this host. With cfg.text='words', 'text_ids'
    [N, L] (models/words.word_ids) in place of 'text_emb'.
  tasks: feedback sets (check_tasks); their embeddings are in the pool's reference space,
    their word ids (cfg.text='words') from the pool's vocabulary.
  workdir: orbax checkpoints in workdir/checkpoints every cfg.checkpoint_every steps and at
    the end; a run there resumes from the last one and ends where an uninterrupted run
    would.
  mesh: the pool batch is split over its 'data' axis (default one device); on a mesh over
    several processes (jax.devices()) each process gathers only its devices' rows, and
    every process gets the same params.
  rules: a sharding.RULES name or table placing the proxy's params and activations on the
    mesh; callers pass sharding.from_config(config).rules, so that config.mesh.rules means
    the same here as in the other stages. The scorer's params are replicated whatever the
    rules.
  log: gets a progress line every cfg.log_every steps (default absl).
  stop_after: end after that many meta steps, as if killed there (tests, preemption).
  rows: the pool rows batches are drawn from (int indices; default every row): a selector
    that ranks only part of the pool (TADS's gate) meta-learns on that part.
  history: per meta step lists 'step', 'outer_loss', 'task_losses' [T], 'task_weights' [T],
    'inner_loss' (mean of the K inner losses), 'weight_entropy' (of w over the batch / log B),
    'value_std', 'value_grad_norm', 'logit_scale'; and 'tasks' (the task names).
  """
  log = log or logging.info
  scorer, value_params = value_module_and_params
  scorer = as_scorer(scorer)
  n, width, vocab = _check_pool(pool, scorer, cfg.text)
  tasks = check_tasks(tasks, width, cfg.text)
  if cfg.text == 'words':  # the tasks' ids come from the same vocabulary as the pool's
    vocab = max([vocab] + [int(task[_text_key(task, task['kind'])].max()) + 1
                           for task in tasks])
  mesh = mesh if mesh is not None else sharding.make_mesh(1, 1, devices=jax.local_devices()[:1])
  if cfg.batch_size % mesh.shape['data']:
    raise ValueError(f'MetaConfig.batch_size: {cfg.batch_size} is not a multiple of the '
                     f"mesh's data axis ({mesh.shape['data']} devices)")
  rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
  if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= n)):
    raise ValueError(f'rows: {rows.shape} indices, not a list of rows of the pool\'s {n}')
  if cfg.batch_size > len(rows):
    raise ValueError(f'MetaConfig.batch_size: {cfg.batch_size} is more than the pool\'s '
                     f'{len(rows)} rows' + ('' if len(rows) == n else ' meta-learned on'))
  try:
    one = {f: jax.ShapeDtypeStruct((1,) + np.shape(pool[f])[1:], jnp.float32)
           for f in scorer.fields}
    out = jax.eval_shape(scorer, value_params, one)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'value_module_and_params: the params do not fit the module: {e}') \
        from None
  if out.shape != (1,):
    raise ValueError(f'value_module_and_params: the scorer returns {out.shape} for one '
                     'sample; expected one score per sample')
  kinds = tuple(task['kind'] for task in tasks)
  rules = sharding.get_rules(rules, where='rules')  # hashable: a key of _program's cache
  program = _program(_compute_key(cfg), scorer, width, kinds, mesh, rules, vocab)
  names = [task['name'] for task in tasks]
  batch_sh, repl = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  # This process's part of each pool batch: on a mesh over several processes each reads
  # only the rows its devices hold.
  local = sharding.local_batch_rows(batch_sh, cfg.batch_size)
  proxy_fields = ('image_emb', TEXT_FIELDS[cfg.text]['pool'])
  kept_dtype = EMBEDDINGS + proxy_fields  # gathered as stored (float16 embeddings, int ids)

  def make_step(start):
    pool_rows = train.batch_rows(rows, cfg.batch_size, cfg.seed, start)
    task_rows = [train.batch_rows(np.arange(len(task['labels'] if task['kind'] ==
                                                'classification' else task['text_image'])),
                                  _task_batch_size(cfg, task), _task_seed(cfg.seed, t), start)
                 for t, task in enumerate(tasks)]
    fixed_class_text = [jax.device_put(task[_text_key(task, 'classification')], repl)
                        if task['kind'] == 'classification' and cfg.templates == 'all'
                        else None for task in tasks]

    def run_step(state, step):
      idx = next(pool_rows)[local]  # [B / processes]
      pool_batch = {field: np.asarray(pool[field][idx], None if field in kept_dtype
                                      else np.float32)
                    for field in dict.fromkeys(scorer.fields + proxy_fields)}
      class_text = fixed_class_text
      if cfg.templates == 'random':
        class_text = [random_templates(task[_text_key(task, 'classification')], cfg.seed,
                                       t, step)
                      if task['kind'] == 'classification' else None
                      for t, task in enumerate(tasks)]
      feedback = [task_batch(task, next(rows), ct)
                  for task, rows, ct in zip(tasks, task_rows, class_text)]
      return program.step(state, sharding.global_batch(batch_sh, pool_batch, cfg.batch_size),
                          feedback)
    return run_step

  def record(history, steps, metrics):
    del steps
    for key in history:
      if key in ('tasks', 'step'):
        continue
      history[key] += [np.asarray(m[key]).tolist() for m in metrics]

  def describe(history, step, steps_per_second):
    per_task = ' '.join(f'{name}={loss:.4f}' for name, loss in
                        zip(names, history['task_losses'][-1]))
    return {'outer': f'{history["outer_loss"][-1]:.4f}'}, (
        f'meta step {step}/{cfg.steps} outer {history["outer_loss"][-1]:.4f} '
        f'[{per_task}] weight entropy {history["weight_entropy"][-1]:.3f} '
        f'{steps_per_second:.2f} steps/s ETA '
        f'{(cfg.steps - step) / max(steps_per_second, 1e-9):.0f}s')

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.device_put(
        init_state(cfg, jax.device_get(value_params), program.proxy, width, len(tasks),
                   program.optimizer), program.state_sharding)
    history = {'tasks': names, 'step': [], 'outer_loss': [], 'task_losses': [],
               'task_weights': [], 'inner_loss': [], 'weight_entropy': [], 'value_std': [],
               'value_grad_norm': [], 'logit_scale': []}
    state, history = loop.run(
        cfg, 'meta', state, history, make_step, total=cfg.steps, record=record,
        describe=describe, workdir=workdir,
        fingerprint=(None if workdir is None else
                     _fingerprint(cfg, scorer, value_params, pool, tasks, rows)),
        stop_after=stop_after, log=log)
  return jax.device_get(state.value_params), history
