"""Proxy CLIP training at a fixed samples-seen budget (DataComp's rule).

Two kinds of proxy, one training loop:
  - 'pixels':    the Flax CLIP (tads_jax.models.clip) with a small preset, from scratch on
                 uint8 images [N, S, S, 3] and token ids [N, L];
  - 'embedding': two light heads (linear, or a 2-layer MLP with a residual) over frozen
                 reference CLIP embeddings [N, D]: cheap enough for meta-learning and for
                 evaluating many subsets of a large pool.

    params, history = train(TrainConfig(kind='embedding', samples_seen=200_000),
                            (image_emb, text_emb), workdir='/tmp/run')

The budget is samples seen, not epochs: steps = samples_seen // batch_size whatever the
subset size, and the data iterator cycles through the subset (a uid that subset.npy repeats
r times is r times in each epoch) with a fresh seeded order per epoch. A batch is a pure
function of (rows, batch_size, seed, step), so a run killed after its last checkpoint
resumes to the same parameters as an uninterrupted one.

Optimizer as CLIP / open_clip: AdamW (b2=0.98, eps=1e-6, weight decay on matrices only),
linear warmup then cosine decay to 0, a learnable log temperature clipped to [0, log 100].
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from tads_jax import pipeline
from tads_jax import sharding
from tads_jax.data import subset as subset_lib
from tads_jax.models import clip, preprocess

KINDS = ('embedding', 'pixels')
HEADS = ('linear', 'mlp')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
MAX_LOGIT_SCALE = math.log(100)  # CLIP clips the learned temperature at 100
# Fields that do not change what a run computes: a checkpoint written with other values
# of these may be resumed.
_RESUMABLE_FIELDS = ('checkpoint_every', 'log_every', 'keep_checkpoints')
# TrainConfig fields added later, with the default that leaves them out of to_dict.
_LATER_FIELDS = {'mask_repeats': False}
# Added to the logits of zero-weight samples: exp() of it is exactly 0 in float32, so such
# a sample drops out of every softmax, and unlike -inf it makes no 0 * inf in the gradient.
_NEG = -1e30


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One proxy training run. Every field is checked in __post_init__."""
  kind: str = 'embedding'        # 'embedding' (heads on frozen embeddings) | 'pixels'
  # 'pixels': a clip.PRESETS name and CLIPConfig field overrides (e.g. vocab_size).
  model: str = 'small'
  model_overrides: tuple = ()    # ((field, value), ...) or a dict; stored as sorted pairs
  # 'embedding': head architecture. 'mlp' is x + W2 gelu(W1 x) (starts near the reference
  # space); 'linear' is W x (starts from a random projection).
  head: str = 'mlp'
  head_dim: int = 0              # output width; 0 = the input width ('mlp' needs that)
  head_hidden: int = 1024
  batch_size: int = 256
  samples_seen: int = 200_000    # the budget: steps = samples_seen // batch_size
  lr: float = 5e-4
  warmup: int = 100              # steps of linear warmup before the cosine decay
  weight_decay: float = 0.2      # open_clip's default; only on matrices (ndim >= 2)
  b1: float = 0.9
  b2: float = 0.98               # CLIP's values: 0.98 and 1e-6 keep AdamW stable with
  eps: float = 1e-6              # large contrastive batches
  logit_scale_init: float = math.log(1 / 0.07)
  dtype: str = 'float32'         # matmul compute dtype ('bfloat16' for speed)
  # A data row drawn twice into one batch (a subset that repeats samples) is not its own
  # negative: the loss masks the pairs of a batch that come from the same row.
  mask_repeats: bool = False
  rules: str = 'data_parallel'   # sharding.RULES name
  seed: int = 0                  # params init and data order
  checkpoint_every: int = 1000   # steps; 0 = only at the end
  keep_checkpoints: int = 2
  log_every: int = 100

  def __post_init__(self):
    overrides = self.model_overrides
    if isinstance(overrides, dict):
      overrides = tuple(sorted(overrides.items()))
    object.__setattr__(self, 'model_overrides', tuple(tuple(p) for p in overrides))
    _choice('kind', self.kind, KINDS)
    _choice('head', self.head, HEADS)
    _choice('dtype', self.dtype, tuple(DTYPES))
    sharding.get_rules(self.rules)
    for name in ('batch_size', 'samples_seen', 'head_hidden', 'keep_checkpoints',
                 'log_every'):
      _int(name, getattr(self, name), 1)
    for name in ('head_dim', 'warmup', 'checkpoint_every', 'seed'):
      _int(name, getattr(self, name), 0)
    if self.samples_seen < self.batch_size:
      raise ValueError(f'TrainConfig.samples_seen: {self.samples_seen} is less than one '
                       f'batch of {self.batch_size}')
    if not isinstance(self.mask_repeats, bool):
      raise ValueError(f'TrainConfig.mask_repeats: expected true or false, got '
                       f'{self.mask_repeats!r}')
    for name in ('lr', 'weight_decay', 'eps'):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f'TrainConfig.{name}: expected a finite number >= 0, got {value!r}')
    for name in ('b1', 'b2'):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f'TrainConfig.{name}: expected a number in [0, 1), got {value!r}')
    if not 0 <= self.logit_scale_init <= MAX_LOGIT_SCALE:
      raise ValueError(f'TrainConfig.logit_scale_init: {self.logit_scale_init!r} is outside '
                       f'[0, log(100)]')
    if self.kind == 'pixels':
      self.clip_config()  # raises on a bad preset or override

  @property
  def steps(self) -> int:
    return self.samples_seen // self.batch_size

  def clip_config(self) -> clip.CLIPConfig:
    try:
      return clip.get_config(self.model, logit_scale_init=self.logit_scale_init,
                             **dict(self.model_overrides))
    except TypeError as e:  # an unknown field name
      raise ValueError(f'TrainConfig.model_overrides: {e}') from None

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d['model_overrides'] = [list(p) for p in self.model_overrides]
    # Fields added after runs were fingerprinted are left out at their default, so that the
    # checkpoints and cached results of those runs stay valid.
    for name, default in _LATER_FIELDS.items():
      if d[name] == default:
        del d[name]
    return d


def _choice(name, value, allowed):
  if value not in allowed:
    raise ValueError(f'TrainConfig.{name}: {value!r} is not one of {", ".join(allowed)}')


def _int(name, value, lowest):
  if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
    raise ValueError(f'TrainConfig.{name}: expected an integer >= {lowest}, got {value!r}')


# ---------------------------------------------------------------------------------------
# Models.


class EmbeddingHead(nn.Module):
  """Maps a frozen reference embedding into the proxy's embedding space."""
  head: str           # 'linear' | 'mlp'
  out_dim: int        # 'linear' only; 'mlp' keeps the input width (residual)
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, emb):  # [B, D] -> [B, out]
    if self.head == 'linear':
      return clip.Dense(self.out_dim, ('embed', 'proj'), use_bias=False, name='proj',
                        dtype=self.dtype)(emb)
    h = clip.Dense(self.hidden, ('embed', 'mlp'), name='fc1', dtype=self.dtype)(emb)
    h = nn.with_logical_constraint(h, ('activation_batch', 'activation_mlp'))  # [B, H]
    h = jax.nn.gelu(h, approximate=False)
    return emb + clip.Dense(emb.shape[-1], ('mlp', 'embed'), name='fc2',
                            dtype=self.dtype)(h)


class EmbeddingCLIP(nn.Module):
  """Image head, text head and a log logit scale: clip.CLIP's interface on embeddings."""
  head: str = 'mlp'
  out_dim: int = 0
  hidden: int = 1024
  logit_scale_init: float = math.log(1 / 0.07)
  dtype: Any = jnp.float32

  def setup(self):
    kw = dict(head=self.head, out_dim=self.out_dim, hidden=self.hidden, dtype=self.dtype)
    self.image = EmbeddingHead(**kw)
    self.text = EmbeddingHead(**kw)
    self.logit_scale = self.param(
        'logit_scale', nn.with_logical_partitioning(
            nn.initializers.constant(self.logit_scale_init), ()), (), jnp.float32)

  def encode_image(self, image_emb):  # [B, D] -> [B, E]
    return self.image(_normalize(image_emb))

  def encode_text(self, text_emb):  # [B, D] -> [B, E]
    return self.text(_normalize(text_emb))

  def __call__(self, image_emb, text_emb):
    return self.encode_image(image_emb), self.encode_text(text_emb), self.logit_scale


def make_model(cfg: TrainConfig, input_dim: int | None = None) -> nn.Module:
  """The proxy module; 'embedding' proxies need the reference embedding width."""
  dtype = DTYPES[cfg.dtype]
  if cfg.kind == 'pixels':
    return clip.CLIP(cfg.clip_config(), dtype=dtype)
  if input_dim is None:
    raise ValueError('make_model: an embedding proxy needs input_dim')
  out_dim = cfg.head_dim or input_dim
  if cfg.head == 'mlp' and out_dim != input_dim:
    raise ValueError(f'TrainConfig.head_dim: the residual MLP head keeps the input width '
                     f'{input_dim}; got head_dim={cfg.head_dim}')
  return EmbeddingCLIP(cfg.head, out_dim, cfg.head_hidden, cfg.logit_scale_init, dtype)


def init_params(model: nn.Module, cfg: TrainConfig, input_dim: int | None = None):
  """Boxed params (logical axis names inside), from cfg.seed."""
  # rbg keys: init compiles much faster on CPU than with threefry.
  return _init_fn(model, cfg.kind, input_dim)(jax.random.key(cfg.seed, impl='rbg'))


def _init_fn(model, kind, input_dim, out_shardings=None):
  """Jitted rng -> params; unboxed and placed when out_shardings is given."""
  if kind == 'pixels':
    c = model.config
    shapes = ((1, c.image_size, c.image_size, 3), jnp.float32), ((1, c.context_length),
                                                                 jnp.int32)
  else:
    shapes = ((1, input_dim), jnp.float32), ((1, input_dim), jnp.float32)

  def init(rng):
    params = model.init(rng, *(jnp.zeros(*s) for s in shapes))['params']
    return params if out_shardings is None else nn.unbox(params)
  return jax.jit(init, out_shardings=out_shardings)


def _normalize(x):  # [..., D] -> float32 unit rows
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def prepare_images(kind: str, images):
  """Model input from the stored form: uint8 pixels get CLIP's mean/std on device (4x less
  to transfer than float32); embeddings pass through."""
  if kind != 'pixels':
    return images
  mean = jnp.asarray(preprocess.OPENAI_CLIP_MEAN, jnp.float32)
  std = jnp.asarray(preprocess.OPENAI_CLIP_STD, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std  # [B, S, S, 3]


# ---------------------------------------------------------------------------------------
# Loss, schedule, optimizer, step.


def weighted_clip_loss(image_emb, text_emb, logit_scale, weights=None, row_ids=None):
  """CLIP's symmetric contrastive loss with per-sample weights that also weight negatives.

  With L_ij = exp(logit_scale) <u_i, v_j> (u, v unit image and text embeddings) and
  w = weights / sum(weights) (FLYT's NegativeWeightedClipLoss):

      loss = sum_i w_i [CE_i(image->text) + CE_i(text->image)] / 2
      CE_i(image->text) = -log( w_i exp(L_ii) / sum_j w_j exp(L_ij) )
      CE_i(text->image) = -log( w_i exp(L_ii) / sum_j w_j exp(L_ji) )

  i.e. ordinary cross-entropy on logits L_ij + log w_j. Uniform weights shift every logit
  by the same log(1/B), so the loss is exactly standard CLIP's; a zero-weight sample leaves
  every softmax and the sum, so it changes neither the loss nor any gradient. Expanding,
  the loss is sum_i w_i [lse_j(L_ij + log w_j) - L_ii] + H(w), H the entropy of w: that
  term has no params, so it never changes a training step; only a gradient of the loss
  value itself w.r.t. the weights sees it. An all-zero weight vector gives a loss of 0.

  With row_ids ([B] ints, the data row each sample was drawn from), a pair (i, j), i != j,
  of one row is no negative for either: L_ij leaves both softmaxes (exactly as a zero
  weight does), so a sample drawn twice into a batch is not pushed away from its own copy.
  Without repeats in the batch this is the loss above.

  image_emb, text_emb: [B, E] unit rows; logit_scale: [] (log); weights: [B] >= 0 or None;
  row_ids: [B] ints or None.
  """
  dtype = jnp.promote_types(image_emb.dtype, jnp.float32)  # float64 under x64 checks
  logits = jnp.exp(logit_scale) * _dot(image_emb, text_emb, dtype)  # [B, B]
  if weights is None:
    weights = jnp.ones(logits.shape[0], dtype)
  weights = weights.astype(dtype)
  total = jnp.sum(weights)
  w = weights / jnp.where(total > 0, total, 1.0)  # [B], sums to 1
  present = w > 0
  log_w = jnp.where(present, jnp.log(jnp.where(present, w, 1.0)), _NEG)

  if row_ids is not None:  # same row, not the diagonal: symmetric, so it serves both ways
    same = row_ids[:, None] == row_ids[None, :]  # [B, B]
    repeat = same & ~jnp.eye(logits.shape[0], dtype=bool)
    logits = jnp.where(repeat, _NEG, logits)

  def cross_entropy(logits):  # rows are queries, the softmax runs over columns
    shifted = logits + log_w[None, :]
    return jax.nn.logsumexp(shifted, axis=1) - jnp.diagonal(shifted)  # [B]

  per_sample = 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))  # [B]
  return jnp.sum(jnp.where(present, w * jnp.where(present, per_sample, 0.0), 0.0))


def _dot(a, b, dtype=jnp.float32):  # [B, E] x [C, E] -> [B, C], float32 accumulation
  return jnp.einsum('be,ce->bc', a, b, preferred_element_type=dtype)


def make_schedule(peak_lr: float, warmup: int, total_steps: int, xp=jnp) -> Callable:
  """open_clip's cosine_lr: lr(s) = peak (s+1)/warmup while s < warmup, then
  peak (1 + cos(pi (s - warmup) / (total - warmup))) / 2, which would be 0 at s = total
  (the last update, s = total - 1, is the smallest).
  xp=np gives the same function on the host (for logs, without compiling)."""
  def schedule(step):
    step = xp.asarray(step, xp.float32)
    warm = peak_lr * (step + 1) / max(warmup, 1)
    progress = xp.clip((step - warmup) / max(total_steps - warmup, 1), 0.0, 1.0)
    cosine = 0.5 * peak_lr * (1 + xp.cos(xp.pi * progress))
    return xp.where(step < warmup, warm, cosine)
  return schedule


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """AdamW with decoupled weight decay on matrices only (open_clip excludes biases, norm
  gains and the logit scale)."""
  return optax.adamw(make_schedule(cfg.lr, cfg.warmup, cfg.steps), b1=cfg.b1, b2=cfg.b2,
                     eps=cfg.eps, weight_decay=cfg.weight_decay,
                     mask=lambda params: jax.tree_util.tree_map(lambda p: p.ndim >= 2,
                                                                params))


@flax.struct.dataclass
class TrainState:
  step: jax.Array     # [] int32: steps done
  params: Any
  opt_state: Any


def make_loss_fn(model: nn.Module, kind: str) -> Callable:
  """(params, images, texts, weights=None, row_ids=None) -> the weighted CLIP loss of a
  batch (row_ids: see weighted_clip_loss)."""
  def loss_fn(params, images, texts, weights=None, row_ids=None):
    image_emb, text_emb, logit_scale = model.apply(
        {'params': params}, prepare_images(kind, images), texts)
    return weighted_clip_loss(_normalize(image_emb), _normalize(text_emb), logit_scale,
                              weights, row_ids)
  return loss_fn


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    kind: str, mask_repeats: bool = False) -> Callable:
  """Pure step (jit it): (state, images [B, ...], texts [B, ...], weights [B],
  row_ids [B] = None) -> (state, {'loss', 'logit_scale'}); the loss is that of the params
  before the update. row_ids (the batch's data rows) are read only with mask_repeats."""
  if kind not in KINDS:
    raise ValueError(f'kind: {kind!r} is not one of {", ".join(KINDS)}')
  loss_fn = make_loss_fn(model, kind)

  def train_step(state, images, texts, weights, row_ids=None):
    if not mask_repeats:
      row_ids = None
    loss, grads = jax.value_and_grad(loss_fn)(state.params, images, texts, weights,
                                              row_ids)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = dict(optax.apply_updates(state.params, updates))
    params['logit_scale'] = jnp.clip(params['logit_scale'], 0.0, MAX_LOGIT_SCALE)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {'loss': loss, 'logit_scale': params['logit_scale']}
  return train_step


# ---------------------------------------------------------------------------------------
# Data.


def rows_from_subset(subset, uids: Sequence[str]) -> np.ndarray:
  """The epoch's data rows: row i of the data (uid uids[i]) once per time `subset` (a
  subset.npy path or array) lists it, as DataComp's resharder writes copies."""
  array = subset_lib.read_subset(subset) if isinstance(subset, (str, os.PathLike)) else subset
  counts = subset_lib.times_selected(np.asarray(array), list(uids))  # [N]
  rows = np.repeat(np.arange(len(counts)), counts)
  if not len(rows):
    where = subset if isinstance(subset, (str, os.PathLike)) else 'subset'
    raise ValueError(f'{where}: none of the {len(counts)} uids is in the subset')
  return rows


def batch_rows(rows, batch_size: int, seed: int, start_step: int = 0) -> Iterator[np.ndarray]:
  """Yields the [batch_size] data rows of steps start_step, start_step + 1, ...

  The rows are cycled epoch after epoch, each epoch in a fresh order drawn from
  (seed, epoch); a batch may straddle two epochs. A batch depends only on (rows,
  batch_size, seed, step), so a resumed run sees what an uninterrupted one would.
  """
  rows = np.asarray(rows)
  n = len(rows)
  if n == 0:
    raise ValueError('rows: empty; nothing to train on')
  epoch, offset = divmod(start_step * batch_size, n)
  order = rows[np.random.default_rng([seed, epoch]).permutation(n)]
  while True:
    parts, need = [], batch_size
    while need:
      take = min(need, n - offset)
      parts.append(order[offset:offset + take])
      offset, need = offset + take, need - take
      if offset == n:
        epoch, offset = epoch + 1, 0
        order = rows[np.random.default_rng([seed, epoch]).permutation(n)]
    yield np.concatenate(parts)


def _check_data(cfg: TrainConfig, data) -> tuple[int, int | None]:
  """Returns (number of rows, embedding width or None); raises naming the field."""
  if not isinstance(data, (tuple, list)) or len(data) != 2:
    raise ValueError('data: expected a pair (images, texts)')
  images, texts = data
  shape_i, shape_t = np.shape(images), np.shape(texts)
  if cfg.kind == 'embedding':
    for name, shape, x in (('image_emb', shape_i, images), ('text_emb', shape_t, texts)):
      if len(shape) != 2 or not np.issubdtype(np.asarray(x[:0]).dtype, np.floating):
        raise ValueError(f'data.{name}: expected floats of shape [N, D], got '
                         f'{np.asarray(x[:0]).dtype} {shape}')
    if shape_i != shape_t:
      raise ValueError(f'data: image_emb {shape_i} and text_emb {shape_t} differ in shape')
    return shape_i[0], shape_i[1]
  c = cfg.clip_config()
  if (len(shape_i) != 4 or shape_i[1:] != (c.image_size, c.image_size, 3)
      or np.asarray(images[:0]).dtype != np.uint8):
    raise ValueError(f'data.images: expected uint8 [N, {c.image_size}, {c.image_size}, 3] '
                     f'(model {cfg.model!r}), got {np.asarray(images[:0]).dtype} {shape_i}')
  ids = np.asarray(texts)
  if (ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer)
      or ids.shape[1] > c.context_length):
    raise ValueError(f'data.token_ids: expected integers [N, L<={c.context_length}], got '
                     f'{ids.dtype} {ids.shape}')
  if ids.shape[0] != shape_i[0]:
    raise ValueError(f'data: {shape_i[0]} images but {ids.shape[0]} token_ids rows')
  if ids.size and (ids.min() < 0 or ids.max() >= c.vocab_size):
    raise ValueError(f'data.token_ids: ids must be in [0, {c.vocab_size}), got '
                     f'[{ids.min()}, {ids.max()}]')
  if c.eos_token_id != 2:
    missing = np.flatnonzero(~(ids == c.eos_token_id).any(axis=1))
    if len(missing):
      raise ValueError(f'data.token_ids: row {missing[0]} has no end-of-text token '
                       f'{c.eos_token_id} (the text tower pools there)')
  return shape_i[0], None


def _check_rows_weights(rows, weights, n):
  rows = np.arange(n) if rows is None else np.asarray(rows)
  if rows.ndim != 1 or not len(rows) or not np.issubdtype(rows.dtype, np.integer):
    raise ValueError(f'rows: expected a non-empty 1-d integer array, got {rows.dtype} '
                     f'{rows.shape}')
  if rows.min() < 0 or rows.max() >= n:
    raise ValueError(f'rows: indices must be in [0, {n}), got [{rows.min()}, {rows.max()}]')
  if weights is not None:
    weights = np.asarray(weights, np.float32)
    if weights.shape != (n,):
      raise ValueError(f'weights: expected shape ({n},) (one per data row), got '
                       f'{weights.shape}')
    if not np.all(np.isfinite(weights)) or (weights < 0).any():
      raise ValueError('weights: must be finite and >= 0')
  return rows, weights


# ---------------------------------------------------------------------------------------
# Checkpoints.


def _fingerprint(cfg: TrainConfig, n: int, width, rows, weights) -> dict:
  """What must match for a checkpoint to be resumed."""
  digest = hashlib.sha256(np.ascontiguousarray(rows, np.int64).tobytes())
  if weights is not None:
    digest.update(np.ascontiguousarray(weights, np.float32).tobytes())
  config = {k: v for k, v in cfg.to_dict().items() if k not in _RESUMABLE_FIELDS}
  return {'config': config, 'num_rows': n, 'width': width,
          'rows_and_weights_sha256': digest.hexdigest()}


def check_fingerprint(directory, step, saved, expected, config_name='TrainConfig'):
  """Raises ValueError unless a checkpoint's recorded fingerprint (`saved`) matches this
  run's (`expected`): the same data fields and the same config fields."""
  for key, value in expected.items():
    if key == 'config':
      continue
    if json.loads(json.dumps(value)) != saved.get(key):
      raise ValueError(f'{directory}: the checkpoint at step {step} was written for other '
                       f'data ({key}={saved.get(key)!r}, this run {value!r}); use another '
                       'workdir')
  for key, value in expected['config'].items():
    old = saved.get('config', {}).get(key)
    if old != value:
      raise ValueError(f'{directory}: the checkpoint at step {step} was written with '
                       f'{config_name}.{key}={old!r}, this run has {value!r}; use another '
                       'workdir')


def save_checkpoint(manager, step: int, state, fingerprint: dict, history: dict) -> None:
  """Saves the state with the run's fingerprint and history (a copy: the save finishes in
  the background while history grows)."""
  meta = dict(fingerprint, history={k: list(v) for k, v in history.items()})
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)


def restore_checkpoint(manager, directory: str, state, fingerprint: dict,
                       config_name='TrainConfig'):
  """(step, state, history) of the latest checkpoint, checked against the fingerprint, or
  None when there is none. `state` gives the structure and shardings to restore into."""
  latest = manager.latest_step()
  if latest is None:
    return None
  meta = manager.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  check_fingerprint(directory, latest, meta, fingerprint, config_name)
  state = manager.restore(latest, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(state))))['state']
  return latest, state, {k: list(v) for k, v in meta['history'].items()}


def _checkpoint_manager(directory: str, cfg: TrainConfig) -> ocp.CheckpointManager:
  # The loop decides when to save (every checkpoint_every steps and at the end).
  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_checkpoints, create=True)
  return ocp.CheckpointManager(directory, options=options, item_names=('state', 'meta'))


# ---------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass(frozen=True)
class _Program:
  rules: tuple
  model: nn.Module
  optimizer: optax.GradientTransformation
  state_sharding: TrainState
  init: Callable      # rng -> placed params
  init_opt: Callable  # params -> placed optimizer state
  step: Callable


def _compute_key(cfg: TrainConfig) -> TrainConfig:
  """cfg without the fields that do not change the compiled step."""
  return dataclasses.replace(cfg, seed=0, checkpoint_every=0, keep_checkpoints=1,
                             log_every=1)


@functools.lru_cache(maxsize=8)
def _program(cfg: TrainConfig, width, mesh) -> _Program:
  """Model, optimizer, state layout and jitted step; cached so that runs differing only in
  seed, data or workdir (seeds of a comparison table, resumes) compile once."""
  rules = sharding.get_rules(cfg.rules)
  model = make_model(cfg, width)
  optimizer = make_optimizer(cfg)
  repl = sharding.replicated(mesh)
  abstract = jax.eval_shape(_init_fn(model, cfg.kind, width), jax.random.key(0, impl='rbg'))
  param_sh = sharding.param_shardings(abstract, mesh, rules)
  opt_sh = optax.tree_map_params(
      optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, nn.unbox(abstract)),
      param_sh, transform_non_params=lambda _: repl)
  state_sh = TrainState(step=repl, params=param_sh, opt_state=opt_sh)
  batch_sh = sharding.batch_sharding(mesh)
  step = jax.jit(make_train_step(model, optimizer, cfg.kind, cfg.mask_repeats),
                 in_shardings=(state_sh, batch_sh, batch_sh, batch_sh, batch_sh),
                 out_shardings=(state_sh, repl), donate_argnums=0)
  init = _init_fn(model, cfg.kind, width, param_sh)
  init_opt = jax.jit(optimizer.init, out_shardings=opt_sh)
  return _Program(rules, model, optimizer, state_sh, init, init_opt, step)


def _abstract(tree):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def train(cfg: TrainConfig, data, workdir: str | None = None, mesh=None, weights=None,
          rows=None, stop_after: int | None = None):
  """Trains a proxy; returns (params, history).

  data: 'embedding': (image_emb [N, D], text_emb [N, D]) float;
        'pixels': (images uint8 [N, S, S, 3], token_ids int [N, L]).
  weights: [N] per-sample loss weights (normalized within each batch), default uniform.
  rows: the epoch as data row indices with repeats (rows_from_subset), default each row
    once. workdir: checkpoints go to workdir/checkpoints and a run there resumes from the
    last one. mesh: batches are split over its 'data' axis, params placed by cfg.rules
    (default: one device). stop_after: end this call after that many steps of the run, as
    if killed there (the schedule and data order stay the full run's; the next call with
    the same workdir resumes from the last checkpoint): tests and preemptible jobs.
  history: {'step', 'loss', 'logit_scale', 'lr'} lists, one entry per step (the loss of
    the batch before that step's update, the logit scale after it, the rate it used).

  One process: each batch is gathered on this host and split over the mesh's devices
  (multi-host input, make_array_from_process_local_data, is not done here).
  """
  n, width = _check_data(cfg, data)
  rows, weights = _check_rows_weights(rows, weights, n)
  mesh = mesh if mesh is not None else sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  shards = mesh.shape['data']
  if cfg.batch_size % shards:
    raise ValueError(f'TrainConfig.batch_size: {cfg.batch_size} is not a multiple of the '
                     f"mesh's data axis ({shards} devices)")
  total = cfg.steps
  end = total if stop_after is None else min(total, stop_after)
  program = _program(_compute_key(cfg), width, mesh)
  schedule = make_schedule(cfg.lr, cfg.warmup, total, xp=np)
  batch_sh = sharding.batch_sharding(mesh)
  images, texts = data
  history = {'step': [], 'loss': [], 'logit_scale': [], 'lr': []}

  with jax.set_mesh(mesh), nn.logical_axis_rules(program.rules):
    # rbg keys: init compiles much faster on CPU than with threefry.
    params = program.init(jax.random.key(cfg.seed, impl='rbg'))
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32),
                                           program.state_sharding.step),
                       params=params, opt_state=program.init_opt(params))

    manager, fingerprint = None, None
    if workdir is not None:
      directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
      manager = _checkpoint_manager(directory, cfg)
      fingerprint = _fingerprint(cfg, n, width, rows, weights)
    try:
      restored = None if manager is None else restore_checkpoint(manager, directory, state,
                                                                 fingerprint)
      if restored is not None:
        latest, state, history = restored
        logging.info('%s: resumed at step %d of %d', directory, latest, total)

      start = int(state.step)
      pending = []  # device metrics not yet fetched: one host sync per log or save
      tick, tick_step = time.perf_counter(), start

      def flush():
        if not pending:
          return
        steps = [step for step, _ in pending]
        metrics = jax.device_get([m for _, m in pending])
        history['step'] += steps
        history['loss'] += [float(m['loss']) for m in metrics]
        history['logit_scale'] += [float(m['logit_scale']) for m in metrics]
        # The rate used by the update that ended at `step`.
        history['lr'] += np.asarray(schedule(np.asarray(steps) - 1)).tolist()
        pending.clear()

      batches = batch_rows(rows, cfg.batch_size, cfg.seed, start)
      # A bar on a terminal; off one, the log lines below (they carry the loss too).
      progress = pipeline.Progress('train', end, unit='steps', lines=False, initial=start)
      for step in range(start + 1, end + 1):
        idx = next(batches)  # [B]
        batch_w = np.ones(len(idx), np.float32) if weights is None else weights[idx]
        state, metrics = program.step(
            state, jax.device_put(np.asarray(images[idx]), batch_sh),
            jax.device_put(np.asarray(texts[idx]), batch_sh),
            jax.device_put(batch_w, batch_sh),
            jax.device_put(idx.astype(np.int32), batch_sh))
        pending.append((step, metrics))
        progress.update(1)
        if step % cfg.log_every == 0 or step == end:
          flush()
          progress.postfix(loss=f"{history['loss'][-1]:.4f}")
          rate = (step - tick_step) * cfg.batch_size / (time.perf_counter() - tick)
          logging.info('train step %d/%d loss %.4f logit_scale %.3f %.0f samples/s '
                       'ETA %.0fs', step, total, history['loss'][-1],
                       history['logit_scale'][-1], rate,
                       (total - step) * cfg.batch_size / max(rate, 1e-9))
          tick, tick_step = time.perf_counter(), step
        if manager is not None and (step == total or (
            cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
          flush()
          save_checkpoint(manager, step, state, fingerprint, history)
      flush()
      progress.close()
    finally:
      if manager is not None:
        manager.wait_until_finished()
        manager.close()
  return state.params, history


# ---------------------------------------------------------------------------------------
# Encoders of a trained proxy, for evaluation.


def _batched(fn, params, batch_size, width):
  """numpy [N, ...] -> [N, width] through fn in fixed-size batches (one compilation)."""
  def run(x):
    x = np.asarray(x)
    out = np.zeros((len(x), width), np.float32)
    for lo in range(0, len(x), batch_size):
      chunk = x[lo:lo + batch_size]
      if len(chunk) < batch_size:  # pad the tail, drop it after
        chunk = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + x.shape[1:],
                                                x.dtype)])
      out[lo:lo + batch_size] = np.asarray(fn(params, chunk))[:len(x) - lo]
    return out
  return run


def encoders(cfg: TrainConfig, params, reference=None, tokenizer=None,
             batch_size: int = 256):
  """(encode_images, encode_texts) of a trained proxy, each returning [N, E] unit rows.

  'embedding': with `reference` (an object with encode_images(images) and
  encode_texts(texts) giving [N, D] embeddings, e.g. models.api.LoadedCLIP) the functions
  take task images and caption strings; without it, they take reference embeddings [N, D].
  'pixels': images are uint8 [N, S, S, 3]; texts are strings when `tokenizer` (strings ->
  [N, L] ids, e.g. models.tokenizer.CLIPTextTokenizer) is given, else token ids [N, L].
  """
  if cfg.kind == 'embedding':
    head = params['image']['proj' if cfg.head == 'linear' else 'fc1']['kernel']  # [D, .]
    width = int(np.shape(head)[0])
    model = make_model(cfg, width)
    out_width = int(np.shape(head)[1]) if cfg.head == 'linear' else width
  else:
    model = make_model(cfg)
    out_width = cfg.clip_config().embed_dim
  image_fn = jax.jit(lambda p, x: _normalize(model.apply(
      {'params': p}, prepare_images(cfg.kind, x), method='encode_image')))
  text_fn = jax.jit(lambda p, x: _normalize(model.apply(
      {'params': p}, x, method='encode_text')))
  params = jax.device_put(params)
  encode_image = _batched(image_fn, params, batch_size, out_width)
  encode_text = _batched(text_fn, params, batch_size, out_width)

  if cfg.kind == 'embedding':
    if reference is None:
      return encode_image, encode_text
    return (lambda images: encode_image(reference.encode_images(images)),
            lambda texts: encode_text(reference.encode_texts(list(texts))))
  vocab = cfg.clip_config().vocab_size

  def encode_texts(texts):
    ids = np.asarray(tokenizer(list(texts)) if tokenizer is not None else texts)
    if ids.size and ids.max() >= vocab:
      raise ValueError(f'token ids up to {ids.max()}, but the proxy has a vocabulary of '
                       f'{vocab} (TrainConfig.model_overrides vocab_size)')
    return encode_text(ids.astype(np.int32))
  return encode_image, encode_texts
