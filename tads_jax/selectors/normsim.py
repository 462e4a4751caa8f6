"""negCLIPLoss and NormSim (Wang et al. 2024, "CLIPLoss and Norm-Based Data Selection
Methods for Multimodal Contrastive Learning"), and their combination.

Followed from the authors' code, ypwang61/negCLIPLoss_NormSim, baselines/vas2.py:

negclipscore (`cal_new_clip_score`, `cs_new_helper`): the pool is cut into random batches
  of `batch_size` (a random permutation split into consecutive slices, the last one
  shorter; the whole pool is one batch when it is smaller). In a batch, with
  s_ij = <f_img(i), f_txt(j)> and temperature tau,
      norm_i = tau/2 * log sum_j exp(s_ij / tau)  +  tau/2 * log sum_j exp(s_ji / tau)
  (image->text and text->image CLIP-loss denominators, the diagonal included), averaged
  over K independent partitions, and negCLIPLoss_i = s_ii - norm_i: the CLIP score minus
  how much the sample looks like the rest of a batch. Their runs: tau = 0.01 (CLIP's
  learned logit scale 100; 0.07 for DFN-P), batch 32768, K = 10 (`average_num`),
  score_type 0 (both normalisers, half each).

normsim (`cal_similarity_scores_norm`): NormSim_p(x) = || (<f_img(x_t), f_img(x)>)_t ||_p
  over the target set, here every task's train-split image embeddings pooled (their
  "target" proxy is the concatenated train features of the downstream tasks). They take
  the plain p-norm (torch.norm, p = 2 or inf), neither squared nor averaged; so do we.
  p = 2 is computed as sqrt(f^T S f) with S = sum_t f_t f_t^T (their VAS form, which
  divides S by the target count and drops the sqrt: the same ranking). p = inf is the
  largest |cosine| to a target: torch.norm(p=inf) takes absolute values, which differs
  from "the max similarity" only where a sample's most negative cosine to a target
  outweighs its largest positive one (CLIP image-image cosines are nearly all positive).

ncl_normsim (`load_uids_with_cs_new`): keep the top `ncl_fraction` of the pool by
  negCLIPLoss, then of those the top `fraction` *of the whole pool* by NormSim; their best
  DataComp-medium row is negCLIPLoss 30% then NormSim_inf(Target) 20% (run2.sh:
  --fraction 0.3 --fraction_vas 0.2 --norm 100). Counts of int(N * fraction) as their
  filter_by_score. With `fraction = None` it returns scores instead (NormSim inside the
  negCLIPLoss top, NaN outside) and the select stage's budget applies.

Where this differs from their code, and why:
  - Their partitions are drawn inside each metadata file (one parquet shard of ~100k
    samples at a time); ours span the whole pool, so a sample's batch mates do not depend
    on how the pool was sharded. The per-batch formula is the same.
  - The normalisers are computed as stable log-sum-exps in row blocks (memory: block x
    batch), where they exponentiate the whole [B, B] matrix in float32 (which overflows for
    cosines above 88.7 * tau; CLIP cosines never get there). Same values otherwise.
  - Random batches come from numpy's generator seeded by config.seed, not torch.randperm.
  - Ties at the cut of the combined filter are broken by pool order (theirs: argpartition).

Memory: the pool's embeddings are read through Inputs.embedding_rows (from disk in the
stages), one negCLIPLoss batch (gathered by index), one NormSim chunk or one CLIP-score
block at a time; besides, per-sample scalars and the targets. Never [N, E].
"""

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from tads_jax import selectors

_CHUNK = 1024          # pool rows per jitted NormSim call
_TARGET_BLOCK = 4096   # target rows per step of the NormSim_inf loop
_ROW_BLOCK = 1024      # batch rows per step of the negCLIPLoss normaliser
_MASKED = -1e30        # a logit that exp() turns into 0 without inf - inf = NaN
_CLIP_BLOCK = 8192     # pool rows per step of the CLIP score (see clip_scores)


# ---------------------------------------------------------------- options

def p_option(config, name: str) -> float:
  """config.<name>.p: 2 or infinity -> 2.0 or np.inf. Numbers (2, 2.0, float('inf')) and
  strings ('2', 'inf') are both taken, as ml_collections keeps a field's first type and a
  command-line override arrives in it."""
  value = selectors.option(config, name, 'p')
  if isinstance(value, str):
    value = value.strip().lower()
    parsed = {'2': 2.0, 'inf': np.inf, 'infinity': np.inf}.get(value)
  elif isinstance(value, (int, float)) and not isinstance(value, bool):
    parsed = float(value) if float(value) in (2.0, np.inf) else None
  else:
    parsed = None
  if parsed is None:
    raise ValueError(f"config.{name}.p: 2 or 'inf' (NormSim_2 or NormSim_inf), got {value!r}")
  return parsed


def ncl_options(config, name: str) -> dict:
  """The negCLIPLoss settings of config.<name>: temperature, batch_size, batches."""
  return dict(
      temperature=selectors.number(config, name, 'temperature', low=0.0, low_open=True),
      # a batch of one makes every score 0: the sample is its own whole normaliser
      batch_size=selectors.number(config, name, 'batch_size', low=2, integer=True),
      batches=selectors.number(config, name, 'batches', low=1, integer=True))


# ---------------------------------------------------------------- NormSim

def target_images(inputs: selectors.Inputs, name: str) -> np.ndarray:  # -> [T, E]
  """Every task's train-split image embeddings, pooled."""
  tasks = inputs.task_list(name)
  targets = np.concatenate([np.asarray(t['image_emb'], np.float32) for t in tasks], axis=0)
  if targets.shape[0] == 0:
    raise ValueError(f'selector {name}: the tasks\' train splits hold no images')
  return targets


@jax.jit
def _normsim2_chunk(x, s):  # [c, E], [E, E] -> [c]
  return jnp.sqrt(jnp.maximum(jnp.sum(jnp.dot(x, s) * x, axis=-1), 0.0))


@jax.jit
def _normsim_inf_chunk(x, targets):  # [c, E], [blocks, b, E] -> [c]
  """max_t |<t, x>| over target blocks; zero padding rows give 0, never above the max."""
  def step(best, block):
    sims = jnp.dot(x, block.T, preferred_element_type=jnp.float32)  # [c, b]
    return jnp.maximum(best, jnp.max(jnp.abs(sims), axis=-1)), None
  best, _ = jax.lax.scan(step, jnp.zeros(x.shape[0], jnp.float32), targets)
  return best


def normsim(image_emb, target_emb, p: float) -> np.ndarray:  # [N, E], [T, E] -> [N]
  """NormSim_p of each pool row against the targets (p = 2.0 or np.inf), in fixed-size
  chunks: memory holds one [chunk, E] block and, for p = inf, one [chunk, block] slab."""
  target_emb = np.asarray(target_emb, np.float32)
  if p == 2.0:
    target = jnp.asarray(target_emb)
    operand = jnp.dot(target.T, target, precision=jax.lax.Precision.HIGHEST)  # [E, E] S
    run = _normsim2_chunk
  elif p == np.inf:
    block = min(_TARGET_BLOCK, -(-target_emb.shape[0] // 8) * 8)
    blocks = -(-target_emb.shape[0] // block)
    padded = np.zeros((blocks * block, target_emb.shape[1]), np.float32)
    padded[:target_emb.shape[0]] = target_emb
    operand = jnp.asarray(padded.reshape(blocks, block, -1))  # [blocks, b, E]
    run = _normsim_inf_chunk
  else:
    raise ValueError(f'normsim: p must be 2 or inf, got {p}')
  return _chunked(run, image_emb, operand)


def _chunked(run, rows, operand) -> np.ndarray:
  n = rows.shape[0]
  out = np.zeros(n, np.float64)
  chunk = min(_CHUNK, max(8, -(-n // 8) * 8))
  for start in range(0, n, chunk):
    part = np.asarray(rows[start:start + chunk], np.float32)  # [c, E]
    m = part.shape[0]
    out[start:start + m] = np.asarray(
        run(jnp.asarray(np.pad(part, ((0, chunk - m), (0, 0)))), operand))[:m]
  return out


# ---------------------------------------------------------------- negCLIPLoss

def random_partitions(seed: int, n: int, k: int) -> Iterable[np.ndarray]:
  """k permutations of range(n) from config.seed; each, cut into consecutive slices of
  batch_size, is one random partition of the pool into batches."""
  rng = np.random.default_rng([seed, 0x9C11])
  for _ in range(k):
    yield rng.permutation(n)


@functools.partial(jax.jit, static_argnames=('block',))
def _batch_normalisers(image_emb, text_emb, valid, temperature, block: int):
  """log sum_j exp(s_ij / tau) over texts (rows) and over images (columns) for one batch.

  image_emb, text_emb [B, E] with B a multiple of block; valid [B] False on padding rows,
  which take part in no sum. Row blocks of [block, B] logits: row sums directly, column
  sums by a running log-sum-exp, so memory is block x B, never B x B.
  """
  b, e = image_emb.shape
  column_mask = jnp.where(valid, 0.0, _MASKED)  # [B]

  def step(carry, xs):
    col_max, col_sum = carry
    rows, rows_valid = xs  # [block, E], [block]
    logits = jnp.dot(rows, text_emb.T, preferred_element_type=jnp.float32) / temperature
    logits = logits + column_mask[None, :]  # [block, B]; padded texts drop out
    row_lse = jax.nn.logsumexp(logits, axis=-1)  # [block]
    logits = jnp.where(rows_valid[:, None], logits, _MASKED)  # padded images drop out
    new_max = jnp.maximum(col_max, jnp.max(logits, axis=0))  # [B]
    col_sum = col_sum * jnp.exp(col_max - new_max) + jnp.sum(jnp.exp(logits - new_max),
                                                             axis=0)
    return (new_max, col_sum), row_lse

  init = (jnp.full((b,), _MASKED, jnp.float32), jnp.zeros((b,), jnp.float32))
  (col_max, col_sum), row_lse = jax.lax.scan(
      step, init, (image_emb.reshape(-1, block, e), valid.reshape(-1, block)))
  return row_lse.reshape(-1), col_max + jnp.log(col_sum)


def negclip_loss(image_emb, text_emb, partitions: Iterable[np.ndarray], batch_size: int,
                 temperature: float) -> np.ndarray:  # [N, E], [N, E] -> [N]
  """negCLIPLoss_i = <img_i, txt_i> - mean over partitions of
  tau/2 (log sum_j exp(s_ij/tau) + log sum_j exp(s_ji/tau)), j over i's batch.

  Each partition is a permutation of range(N) cut into consecutive batches of batch_size
  (the last shorter, padded to the same shape so one program serves every batch).
  image_emb, text_emb: arrays or row gathers (selectors.Inputs.embedding_rows); memory holds
  one batch of rows and per-sample scalars."""
  n = image_emb.shape[0]
  batch = min(batch_size, n)
  block = min(_ROW_BLOCK, -(-batch // 8) * 8)
  padded = -(-batch // block) * block  # rows per batch, a multiple of block
  normaliser = np.zeros(n, np.float64)
  count = 0
  for order in partitions:
    order = np.asarray(order)
    if order.shape != (n,):
      raise ValueError(f'negclip_loss: each partition must be a permutation of {n} rows, '
                       f'got shape {order.shape}')
    for start in range(0, n, batch):
      idx = order[start:start + batch]  # [b]
      m = idx.shape[0]
      pad = ((0, padded - m), (0, 0))
      rows, cols = _batch_normalisers(
          jnp.asarray(np.pad(_rows_at(image_emb, idx), pad)),
          jnp.asarray(np.pad(_rows_at(text_emb, idx), pad)),
          jnp.asarray(np.arange(padded) < m), jnp.float32(temperature), block=block)
      normaliser[idx] += 0.5 * temperature * (np.asarray(rows, np.float64)[:m] +
                                              np.asarray(cols, np.float64)[:m])
    count += 1
  if count == 0:
    raise ValueError('negclip_loss: needs at least one partition')
  return clip_scores(image_emb, text_emb) - normaliser / count


def _rows_at(rows, idx) -> np.ndarray:  # -> [len(idx), E] float32
  return np.asarray(rows[idx], np.float32)


def clip_scores(image_emb, text_emb) -> np.ndarray:  # [N, E], [N, E] -> [N] float64
  """<img_i, txt_i> in blocks of _CLIP_BLOCK rows: a multiple of numpy's 8192-element
  buffer, so each row's float64 sum is added as it is over the whole array (the same bits)
  and memory holds one block."""
  n = image_emb.shape[0]
  out = np.zeros(n, np.float64)
  for start in range(0, n, _CLIP_BLOCK):
    image = np.asarray(image_emb[start:start + _CLIP_BLOCK], np.float32)  # [b, E]
    text = np.asarray(text_emb[start:start + _CLIP_BLOCK], np.float32)
    out[start:start + len(image)] = np.einsum('ne,ne->n', image, text, dtype=np.float64)
  return out


class _Gathered:
  """Rows `idx` of `rows` (an array or a row gather) as an array-like that reads a slice
  of them at a time: NormSim of a subset without holding the subset."""

  def __init__(self, rows, idx):
    self._rows, self._idx = rows, np.asarray(idx, np.int64)
    self.shape = (len(self._idx),) + tuple(rows.shape[1:])

  def __getitem__(self, part: slice) -> np.ndarray:
    return _rows_at(self._rows, self._idx[part])


def negclip_for(config, name: str, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  o = ncl_options(config, name)
  image_emb, text_emb = inputs.embedding_rows(name)  # gathered a batch at a time
  n = image_emb.shape[0]
  # A batch as large as the pool is the pool whatever the permutation: one pass does.
  batches = o['batches'] if o['batch_size'] < n else 1
  partitions = random_partitions(config.seed, n, batches)
  return negclip_loss(image_emb, text_emb, partitions, o['batch_size'], o['temperature'])


# ---------------------------------------------------------------- selectors

def normsim_check(config) -> None:
  p_option(config, 'normsim')


def normsim_score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  del state
  image_emb, _ = inputs.embedding_rows('normsim')  # read a chunk at a time
  return normsim(image_emb, target_images(inputs, 'normsim'), p_option(config, 'normsim'))


def negclip_check(config) -> None:
  ncl_options(config, 'negclipscore')


def negclip_score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  del state
  return negclip_for(config, 'negclipscore', inputs)


COMBINED = 'ncl_normsim'


def fractions(config) -> tuple:
  """(ncl_fraction, fraction or None) of config.ncl_normsim, checked: NormSim keeps at most
  what negCLIPLoss passed it."""
  ncl = selectors.number(config, COMBINED, 'ncl_fraction', low=0.0, high=1.0, low_open=True)
  if selectors.option(config, COMBINED, 'fraction') is None:
    return ncl, None
  final = selectors.number(config, COMBINED, 'fraction', low=0.0, high=ncl, low_open=True)
  return ncl, final


def combined_check(config) -> None:
  ncl, final = fractions(config)
  ncl_options(config, COMBINED)
  p_option(config, COMBINED)
  budget = config.get('selection', {}).get('fraction') if final is None else None
  if budget is not None and budget > ncl:
    raise ValueError(f'config.{COMBINED}.ncl_fraction: {ncl} is below selection.fraction '
                     f'{budget}; with {COMBINED}.fraction = None the subset is the top of '
                     'the negCLIPLoss pass, which would fall short of the budget')


def combined_output(config) -> str:
  return 'scores' if fractions(config)[1] is None else 'counts'


def _top(values, n: int) -> np.ndarray:  # -> indices of the n largest, ties by position
  order = np.lexsort((np.arange(len(values)), -np.asarray(values)))
  return order[:n]


def combined_score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  del state
  ncl_fraction, final = fractions(config)
  n = inputs.num_rows
  passed = np.sort(_top(negclip_for(config, COMBINED, inputs), int(n * ncl_fraction)))
  image_emb, _ = inputs.embedding_rows(COMBINED)  # the passed rows, a chunk at a time
  sims = normsim(_Gathered(image_emb, passed), target_images(inputs, COMBINED),
                 p_option(config, COMBINED))  # [len(passed)]
  if final is None:
    out = np.full(n, np.nan)
    out[passed] = sims
    return out
  counts = np.zeros(n, np.int64)
  counts[passed[_top(sims, int(n * final))]] = 1
  return counts


selectors.register(selectors.Selector(
    name='normsim', score=normsim_score, needs=('embeddings', 'tasks'),
    check_config=normsim_check, columns=(), rowwise=True,
    doc='top fraction by NormSim_p: the p-norm of the image\'s cosines to the tasks\' train '
        'images (Wang et al. 2024)'))

selectors.register(selectors.Selector(
    name='negclipscore', score=negclip_score, needs=('embeddings',),
    check_config=negclip_check, config_fields=('seed',),
    doc='top fraction by negCLIPLoss: CLIP score minus the CLIP-loss normaliser over '
        'random batches (Wang et al. 2024)'))

selectors.register(selectors.Selector(
    name=COMBINED, score=combined_score, needs=('embeddings', 'tasks'),
    output=combined_output, check_config=combined_check, config_fields=('seed',),
    doc='negCLIPLoss top ncl_fraction, then NormSim top fraction of the pool among them '
        '(Wang et al. 2024)'))
