"""Proxy CLIP training at a fixed samples-seen budget (DataComp's rule).

Two kinds of proxy, one training loop:
  - 'pixels':    the Flax CLIP (tads_jax.models.clip) with a small preset, from scratch on
                 uint8 images [N, S, S, 3] and token ids [N, L];
  - 'embedding': two light heads (linear, or a 2-layer MLP with a residual) over frozen
                 reference CLIP embeddings [N, D] (models/proxy.py): cheap enough for
                 meta-learning and for evaluating many subsets of a large pool.

    params, history = train(TrainConfig(kind='embedding', samples_seen=200_000),
                            (image_emb, text_emb), workdir='/tmp/run')

The budget is samples seen, not epochs: steps = samples_seen // batch_size whatever the
subset size, and the data iterator cycles through the subset (a uid that subset.npy repeats
r times is r times in each epoch) with a fresh seeded order per epoch. A batch is a pure
function of (rows, batch_size, seed, step), so a run killed after its last checkpoint
resumes to the same parameters as an uninterrupted one.

Optimizer as CLIP / open_clip: AdamW (b2=0.98, eps=1e-6, weight decay on matrices only),
linear warmup then cosine decay to 0, a learnable log temperature clipped to [0, log 100].
The loss is losses.weighted_clip_loss; checkpoints, resume and logging are loop.run's,
shared with meta-learning.
"""

import dataclasses
import functools
import hashlib
import itertools
import math
import os
from typing import Any, Callable, Iterator, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tads_jax import checkpoints
from tads_jax import loop
from tads_jax import losses
from tads_jax import sharding
from tads_jax.data import subset as subset_lib
from tads_jax.models import clip, preprocess, proxy

KINDS = ('embedding', 'pixels')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# Fields that do not change what a run computes: a checkpoint written with other values
# of these may be resumed.
_RESUMABLE_FIELDS = ('checkpoint_every', 'log_every', 'keep_checkpoints')
# TrainConfig fields added later, with the default that leaves them out of to_dict.
_LATER_FIELDS = {'mask_repeats': False, 'augment_flip': False, 'augment_shift': 0,
                 'word_loss': 0.0, 'view_loss': 0.0, 'view_shift': 2, 'view_brightness': 10}
# The two-view term's fixed scale: SimCLR's temperature 0.1 (SLIP's).
VIEW_LOGIT_SCALE = math.log(10.0)


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
  # 'pixels': augmentation of each training batch (preprocess.augment), drawn from (seed,
  # step): a left-right mirror with probability 1/2, and a move of up to augment_shift px.
  # A contrastive model trained for many epochs on a small set overfits without it.
  augment_flip: bool = False
  augment_shift: int = 0
  # 'pixels': terms added to the CLIP loss, each a weight (0: off). word_loss:
  # losses.word_classification_loss against the word targets given to train() (each
  # caption's words, models.words.caption_word_targets). view_loss: the CLIP loss between
  # each image and a second view of it (preprocess.second_view: moved up to view_shift px,
  # lit up or down by up to view_brightness grey levels) at VIEW_LOGIT_SCALE, the other
  # images' second views its negatives (SLIP). They teach the image tower what the
  # contrastive loss alone rarely asks of it on a small trusted set: every word of its
  # caption (texture, here), and one picture from another with the same caption words.
  word_loss: float = 0.0
  view_loss: float = 0.0
  view_shift: int = 2
  view_brightness: int = 10
  rules: str = 'data_parallel'   # sharding.RULES name
  seed: int = 0                  # params init and data order
  checkpoint_every: int = 1000   # steps; 0 = only at the end
  keep_checkpoints: int = 2
  log_every: int = 100

  def __post_init__(self):
    overrides = self.model_overrides
    if isinstance(overrides, dict):
      overrides = tuple(sorted(overrides.items()))
    object.__setattr__(self, 'model_overrides',
                       tuple((name, _hashable(value)) for name, value in overrides))
    _choice('kind', self.kind, KINDS)
    _choice('head', self.head, proxy.HEADS)
    _choice('dtype', self.dtype, tuple(DTYPES))
    sharding.get_rules(self.rules)
    for name in ('batch_size', 'samples_seen', 'head_hidden', 'keep_checkpoints',
                 'log_every'):
      _int(name, getattr(self, name), 1)
    for name in ('head_dim', 'warmup', 'checkpoint_every', 'seed', 'augment_shift',
                 'view_shift', 'view_brightness'):
      _int(name, getattr(self, name), 0)
    if self.samples_seen < self.batch_size:
      raise ValueError(f'TrainConfig.samples_seen: {self.samples_seen} is less than one '
                       f'batch of {self.batch_size}')
    for name in ('mask_repeats', 'augment_flip'):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f'TrainConfig.{name}: expected true or false, got '
                         f'{getattr(self, name)!r}')
    for name in ('lr', 'weight_decay', 'eps', 'word_loss', 'view_loss'):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f'TrainConfig.{name}: expected a finite number >= 0, got {value!r}')
    for name in ('b1', 'b2'):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f'TrainConfig.{name}: expected a number in [0, 1), got {value!r}')
    if not 0 <= self.logit_scale_init <= losses.MAX_LOGIT_SCALE:
      raise ValueError(f'TrainConfig.logit_scale_init: {self.logit_scale_init!r} is outside '
                       f'[0, log(100)]')
    if self.kind == 'pixels':
      self.clip_config()  # raises on a bad preset or override
    elif self.word_loss or self.view_loss:
      raise ValueError("TrainConfig.word_loss, view_loss: terms of the 'pixels' proxy; "
                       f'kind is {self.kind!r}')

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


def _hashable(value):
  """Lists (from JSON or the command line) as tuples, at any depth: configs are cache keys."""
  if isinstance(value, (list, tuple)):
    return tuple(_hashable(v) for v in value)
  return value


def _choice(name, value, allowed):
  if value not in allowed:
    raise ValueError(f'TrainConfig.{name}: {value!r} is not one of {", ".join(allowed)}')


def _int(name, value, lowest):
  if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
    raise ValueError(f'TrainConfig.{name}: expected an integer >= {lowest}, got {value!r}')


# ---------------------------------------------------------------------------------------
# Models.


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
  return proxy.EmbeddingCLIP(cfg.head, out_dim, cfg.head_hidden, cfg.logit_scale_init,
                              dtype)


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
  else:  # an EmbeddingCLIP; its text side may read word ids instead of embeddings
    text = ((1, 1), jnp.int32) if getattr(model, 'text_vocab', 0) else ((1, input_dim),
                                                                         jnp.float32)
    shapes = ((1, input_dim), jnp.float32), text

  def init(rng):
    params = model.init(rng, *(jnp.zeros(*s) for s in shapes))['params']
    return params if out_shardings is None else nn.unbox(params)
  return jax.jit(init, out_shardings=out_shardings)


def prepare_images(kind: str, images):
  """Model input from the stored form: uint8 pixels get CLIP's mean/std on device (4x less
  to transfer than float32); embeddings pass through."""
  if kind != 'pixels':
    return images
  mean = jnp.asarray(preprocess.OPENAI_CLIP_MEAN, jnp.float32)
  std = jnp.asarray(preprocess.OPENAI_CLIP_STD, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std  # [B, S, S, 3]


# ---------------------------------------------------------------------------------------
# Schedule, optimizer, step.


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


def make_loss_fn(model: nn.Module, kind: str, word_loss: float = 0.0,
                 view_loss: float = 0.0) -> Callable:
  """(params, images, texts, weights=None, row_ids=None, aux=None) -> the weighted CLIP
  loss of a batch (row_ids: see losses.weighted_clip_loss), plus, with a weight > 0
  (TrainConfig.word_loss, view_loss), the word and two-view terms. aux: {'views': [B, S,
  S, 3] second views} with view_loss; {'word_ids': [V, Lw], 'word_targets': [B, V]} with
  word_loss. The batch and its second views go through the image tower as one batch."""
  def loss_fn(params, images, texts, weights=None, row_ids=None, aux=None):
    aux = aux or {}
    pixels = prepare_images(kind, images)
    if view_loss:
      pixels = jnp.concatenate([pixels, prepare_images(kind, aux['views'])])
    image_emb, text_emb, logit_scale = model.apply({'params': params}, pixels, texts)
    image_emb = losses.normalize(image_emb)
    b = images.shape[0]
    loss = losses.weighted_clip_loss(image_emb[:b], losses.normalize(text_emb),
                                     logit_scale, weights, row_ids)
    if view_loss:
      loss = loss + view_loss * losses.weighted_clip_loss(
          image_emb[:b], image_emb[b:], VIEW_LOGIT_SCALE, weights, row_ids)
    if word_loss:
      word_emb = losses.normalize(model.apply({'params': params}, aux['word_ids'],
                                              method='encode_text'))
      loss = loss + word_loss * losses.word_classification_loss(
          image_emb[:b], word_emb, aux['word_targets'], logit_scale, weights)
    return loss
  return loss_fn


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation,
                    kind: str, mask_repeats: bool = False, word_loss: float = 0.0,
                    view_loss: float = 0.0) -> Callable:
  """Pure step (jit it): (state, images [B, ...], texts [B, ...], weights [B],
  row_ids [B] = None, aux = None) -> (state, {'loss', 'logit_scale'}); the loss is that of
  the params before the update. row_ids (the batch's data rows) are read only with
  mask_repeats; aux feeds the extra terms (make_loss_fn)."""
  if kind not in KINDS:
    raise ValueError(f'kind: {kind!r} is not one of {", ".join(KINDS)}')
  loss_fn = make_loss_fn(model, kind, word_loss, view_loss)

  def train_step(state, images, texts, weights, row_ids=None, aux=None):
    if not mask_repeats:
      row_ids = None
    loss, grads = jax.value_and_grad(loss_fn)(state.params, images, texts, weights,
                                              row_ids, aux)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = dict(optax.apply_updates(state.params, updates))
    params['logit_scale'] = jnp.clip(params['logit_scale'], 0.0, losses.MAX_LOGIT_SCALE)
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


def _check_word_targets(cfg: TrainConfig, word_targets, n: int):
  """(word_ids int32 [V, Lw], targets float32 [N, V]) or None; raises naming the field."""
  if not cfg.word_loss:
    if word_targets is not None:
      raise ValueError('word_targets: given, but TrainConfig.word_loss is 0')
    return None
  if word_targets is None or len(word_targets) != 2:
    raise ValueError('word_targets: TrainConfig.word_loss > 0 needs (word_ids, targets)')
  ids, targets = np.asarray(word_targets[0]), np.asarray(word_targets[1], np.float32)
  c = cfg.clip_config()
  if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or not len(ids):
    raise ValueError(f'word_targets.word_ids: expected integers [V, Lw], got {ids.dtype} '
                     f'{ids.shape}')
  if ids.shape[1] > c.context_length or ids.min() < 0 or ids.max() >= c.vocab_size:
    raise ValueError(f'word_targets.word_ids: expected at most {c.context_length} ids per '
                     f'word in [0, {c.vocab_size}), got {ids.shape[1]} in [{ids.min()}, '
                     f'{ids.max()}]')
  if c.eos_token_id != 2 and not (ids == c.eos_token_id).any(axis=1).all():
    raise ValueError(f'word_targets.word_ids: a word has no end-of-text token '
                     f'{c.eos_token_id} (the text tower pools there)')
  if targets.shape != (n, ids.shape[0]) or not np.all(np.isfinite(targets)) or (
      targets < 0).any():
    raise ValueError(f'word_targets.targets: expected finite values >= 0 of shape '
                     f'({n}, {ids.shape[0]}) (data rows x words), got {targets.shape}')
  return ids.astype(np.int32), targets


# ---------------------------------------------------------------------------------------
# Checkpoints.


def _fingerprint(cfg: TrainConfig, n: int, width, rows, weights,
                 word_targets=None) -> dict:
  """What must match for a checkpoint to be resumed."""
  digest = hashlib.sha256(np.ascontiguousarray(rows, np.int64).tobytes())
  if weights is not None:
    digest.update(np.ascontiguousarray(weights, np.float32).tobytes())
  for array in word_targets or ():  # the key name stays, so older checkpoints still match
    digest.update(np.ascontiguousarray(array).tobytes())
  return {'config': checkpoints.config_fields(cfg.to_dict(), _RESUMABLE_FIELDS),
          'num_rows': n, 'width': width, 'rows_and_weights_sha256': digest.hexdigest()}


# ---------------------------------------------------------------------------------------
# The run.


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
  # The extra terms' inputs, a 6th argument only with a term on; per-row ones are split
  # like the batch.
  aux_sh = {}
  if cfg.view_loss:
    aux_sh['views'] = batch_sh
  if cfg.word_loss:
    aux_sh.update(word_ids=repl, word_targets=batch_sh)
  step = jax.jit(make_train_step(model, optimizer, cfg.kind, cfg.mask_repeats,
                                 cfg.word_loss, cfg.view_loss),
                 in_shardings=(state_sh, batch_sh, batch_sh, batch_sh, batch_sh)
                 + ((aux_sh,) if aux_sh else ()),
                 out_shardings=(state_sh, repl), donate_argnums=0)
  init = _init_fn(model, cfg.kind, width, param_sh)
  init_opt = jax.jit(optimizer.init, out_shardings=opt_sh)
  return _Program(rules, model, optimizer, state_sh, init, init_opt, step)


def train(cfg: TrainConfig, data, workdir: str | None = None, mesh=None, weights=None,
          rows=None, stop_after: int | None = None, word_targets=None):
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
  word_targets: with cfg.word_loss, (word_ids [V, Lw] int, the token ids of each word of
    the vocabulary alone, Lw <= the context length; targets [N, V], each data row's
    distribution over the words), e.g. from models.words.caption_word_targets.
  history: {'step', 'loss', 'logit_scale', 'lr'} lists, one entry per step (the loss of
    the batch before that step's update, the logit scale after it, the rate it used).

  One process: each batch is gathered on this host and split over the mesh's devices
  (multi-host input, make_array_from_process_local_data, is not done here).
  """
  n, width = _check_data(cfg, data)
  rows, weights = _check_rows_weights(rows, weights, n)
  word_targets = _check_word_targets(cfg, word_targets, n)
  mesh = mesh if mesh is not None else sharding.make_mesh(1, 1, devices=jax.local_devices()[:1])
  shards = mesh.shape['data']
  if cfg.batch_size % shards:
    raise ValueError(f'TrainConfig.batch_size: {cfg.batch_size} is not a multiple of the '
                     f"mesh's data axis ({shards} devices)")
  total = cfg.steps
  program = _program(_compute_key(cfg), width, mesh)
  schedule = make_schedule(cfg.lr, cfg.warmup, total, xp=np)
  batch_sh = sharding.batch_sharding(mesh)
  images, texts = data

  augmenting = cfg.kind == 'pixels' and (cfg.augment_flip or cfg.augment_shift > 0)

  word_ids = None if word_targets is None else jax.device_put(
      word_targets[0], sharding.replicated(mesh))

  def make_step(start):
    batches = batch_rows(rows, cfg.batch_size, cfg.seed, start)
    steps = itertools.count(start)

    def run_step(state, _):
      idx, step = next(batches), next(steps)  # [B], this step's index
      batch_w = np.ones(len(idx), np.float32) if weights is None else weights[idx]
      batch_images = np.asarray(images[idx])
      # A resumed run draws what an uninterrupted one would: draws are (seed, step)'s.
      if augmenting:
        batch_images = preprocess.augment(
            batch_images, np.random.default_rng([cfg.seed, step, 1]),
            cfg.augment_flip, cfg.augment_shift)
      aux = {}
      if cfg.view_loss:
        aux['views'] = jax.device_put(preprocess.second_view(
            batch_images, np.random.default_rng([cfg.seed, step, 2]), cfg.view_shift,
            cfg.view_brightness), batch_sh)
      if cfg.word_loss:
        aux.update(word_ids=word_ids,
                   word_targets=jax.device_put(word_targets[1][idx], batch_sh))
      return program.step(state, jax.device_put(batch_images, batch_sh),
                          jax.device_put(np.asarray(texts[idx]), batch_sh),
                          jax.device_put(batch_w, batch_sh),
                          jax.device_put(idx.astype(np.int32), batch_sh),
                          *((aux,) if aux else ()))
    return run_step

  def record(history, steps, metrics):
    history['loss'] += [float(m['loss']) for m in metrics]
    history['logit_scale'] += [float(m['logit_scale']) for m in metrics]
    # The rate used by the update that ended at `step`.
    history['lr'] += np.asarray(schedule(np.asarray(steps) - 1)).tolist()

  def describe(history, step, steps_per_second):
    rate = steps_per_second * cfg.batch_size  # samples/s
    return {'loss': f"{history['loss'][-1]:.4f}"}, (
        f"train step {step}/{total} loss {history['loss'][-1]:.4f} logit_scale "
        f"{history['logit_scale'][-1]:.3f} {rate:.0f} samples/s ETA "
        f'{(total - step) * cfg.batch_size / max(rate, 1e-9):.0f}s')

  with jax.set_mesh(mesh), nn.logical_axis_rules(program.rules):
    # rbg keys: init compiles much faster on CPU than with threefry.
    params = program.init(jax.random.key(cfg.seed, impl='rbg'))
    state = TrainState(step=jax.device_put(jnp.zeros((), jnp.int32),
                                           program.state_sharding.step),
                       params=params, opt_state=program.init_opt(params))
    state, history = loop.run(
        cfg, 'train', state, {'step': [], 'loss': [], 'logit_scale': [], 'lr': []},
        make_step, total=total, record=record, describe=describe, workdir=workdir,
        fingerprint=None if workdir is None else _fingerprint(cfg, n, width, rows, weights,
                                                              word_targets),
        stop_after=stop_after)
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
  image_fn = jax.jit(lambda p, x: losses.normalize(model.apply(
      {'params': p}, prepare_images(cfg.kind, x), method='encode_image')))
  text_fn = jax.jit(lambda p, x: losses.normalize(model.apply(
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
