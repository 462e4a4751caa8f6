"""ClipCov (Joshi et al., AISTATS 2024, "Data-Efficient Contrastive Language-Image
Pretraining: Prioritizing Data Quality over Quantity"): keep, class by class, the pairs that
best preserve the image-caption cross-covariance of the pool, preferring easy pairs.

The paper shows that a subset whose image-caption cross-covariance is close to the full
data's generalizes provably well; the subset maximizes, within each class V_c (the
reference CLIP's zero-shot class of each image),

  F_c(S) = 1/|V_c| [ sum_{i in S} sum_{j in V_c} (S_ij + S_ji)
                     - 1/2 sum_{i, j in S} (S_ij + S_ji) ]  +  lambda sum_{i in S} cos_ii

with S_ij = max(cos(image_i, caption_j), 0) (the authors' code thresholds the cosines at 0)
and cos_ii the pair's own cosine (its "easiness"). The first term favours pairs central to
their class, the second penalizes pairs similar to what is already kept; with S >= 0 each
F_c is monotone submodular, so greedy selection is within 1 - 1/e of the optimum. (The
form is design.md's; the weights are the authors' notebook's: the body of the paper could
not be read where this was written.)

Here the classes are all task classes (the classification tasks' prompt-ensemble
prototypes, relevance.class_prototypes); an image whose best cosine is below
clipcov.min_cosine joins a partition of its own (the far partition). The budget
k = round(selection.fraction * N) is split across partitions in proportion to their sizes
(largest remainders, so the parts sum to k).

Greedy without an N x N matrix: the modular term sum_j (S_ij + S_ji) (the row sums plus
the column sums of S) is computed in [chunk, chunk] blocks, each block of S once;
afterwards every sample's marginal gain is kept exact by subtracting (S_ip + S_pi) / |V_c|
for each picked p, which needs only the picked items' rows. Picks go
in blocks: take the `block` + 1 largest gains; among the first `block` candidates pick
greedily with their exact mutual similarities ([block, block]), as long as the best
candidate's updated gain is at least the (block + 1)-th gain, which bounds every other
sample's gain from above (gains only decrease). So each block's picks are exactly what
one-at-a-time greedy would pick (up to ties), and the update of all gains is one
[n, D] x [D, block] product per block.

Differences from the authors' code (github.com/BigML-CS-UCLA/clipcov-data-efficient-clip,
clip_core.ipynb; its precomputed score files are not published, so this is as far as the
notebook shows), and why:
  - The notebook orders all classes' samples in one global ranking and rescores a class
    after every 200 picks in it (a stale, approximate greedy); here the budget is split by
    class in proportion to class size (design.md, issue 11), and the greedy is exact.
  - Its score also adds a similarity to the class label's text (weight 1/2) and subtracts
    the sample's cross-modal similarities to the class centres, terms the objective above
    does not have; they are left out. At each rescoring it also subtracts class-wide
    constants (the summed raw scores of everything selected in the class so far, and of
    the label term), which shift a whole class in the global ranking and would do nothing
    under per-class budgets. The easiness weight lambda = 2 and the 1/|V_c| normalization
    are the notebook's ("obj-sumcross-2easiness" subsets; deductions divided by the class
    size), as is the easiness being the unclipped cosine.
  - Its classes are ImageNet-1k zero-shot classes of OpenAI CLIP ("proxy partition"),
    with no far partition (min_cosine = None keeps that: every image joins its best class).

Memory: the pool's embeddings are read through Inputs.embedding_rows (from disk in the
stages): the zero-shot partition one chunk of rows at a time, then the greedy one partition
at a time (its rows gathered into one buffer of the largest partition's padded size); the
rest is per-sample scalars. Never [N, E], but the largest partition's rows.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tads_jax import selectors
from tads_jax.scoring import relevance

NAME = 'clipcov'
FAR = -1  # partition id of samples far from every class
# The zero-shot classifier of a task ([C, T, E] -> [C, E]), compiled once per shape.
_class_prototypes = jax.jit(relevance.class_prototypes)


def check_config(config) -> None:
  """Every config.clipcov value that cannot work raises ValueError naming the field."""
  if NAME not in config:
    raise ValueError(f'config.{NAME}: missing block (easiness, min_cosine, normalize, '
                     'block, chunk)')
  selectors.number(config, NAME, 'easiness', low=0.0)
  min_cosine(config)
  normalize = selectors.option(config, NAME, 'normalize')
  if not isinstance(normalize, bool):
    raise ValueError(f'config.{NAME}.normalize: expected True or False, got {normalize!r}')
  selectors.number(config, NAME, 'block', low=1, integer=True)
  selectors.number(config, NAME, 'chunk', low=8, integer=True)
  fraction = config.selection.fraction
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
      or not 0 <= fraction <= 1:
    raise ValueError(f'config.selection.fraction: must be in [0, 1] for {NAME}, got '
                     f'{fraction!r}')


def min_cosine(config):
  """config.clipcov.min_cosine: None (every image joins its best class) or a cosine."""
  if selectors.option(config, NAME, 'min_cosine') is None:
    return None
  return selectors.number(config, NAME, 'min_cosine', low=-1.0, high=1.0)


# ---------------------------------------------------------------------------------------
# Partition and budget.


@jax.jit
def _zero_shot(image_emb, prototypes):  # [B, E], [C, E] -> [B] int32, [B]
  sims = jnp.dot(image_emb, prototypes.T, preferred_element_type=jnp.float32)
  return jnp.argmax(sims, axis=1).astype(jnp.int32), jnp.max(sims, axis=1)


def partition(image_emb: np.ndarray, prototypes: np.ndarray, threshold=None,
              chunk: int = 8192) -> np.ndarray:  # [N, E], [C, E] -> [N] int32 in [-1, C)
  """Each image's zero-shot class (highest cosine to a class prototype); FAR (-1) where
  that cosine is below `threshold` (None: never). image_emb may be a row gather
  (Inputs.embedding_rows): memory holds one chunk."""
  prototypes = np.asarray(prototypes, np.float32)
  n = image_emb.shape[0]
  out = np.empty(n, np.int32)
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    block = np.pad(np.asarray(image_emb[start:stop], np.float32),
                   ((0, chunk - (stop - start)), (0, 0)))  # [chunk, E]
    best, cos = _zero_shot(block, prototypes)
    best, cos = np.asarray(best)[:stop - start], np.asarray(cos)[:stop - start]
    out[start:stop] = best if threshold is None else np.where(cos < threshold, FAR, best)
  return out


def split_budget(sizes: np.ndarray, k: int) -> np.ndarray:
  """k split in proportion to sizes: floors, then one more for the largest remainders
  (ties to the earlier part); the parts sum to k and none exceeds its size."""
  sizes = np.asarray(sizes, np.int64)
  total = int(sizes.sum())
  if not total:
    return np.zeros_like(sizes)
  exact = sizes * k / total
  parts = np.floor(exact).astype(np.int64)
  order = np.lexsort((np.arange(len(sizes)), -(exact - parts)))
  parts[order[:k - int(parts.sum())]] += 1
  return np.minimum(parts, sizes)


# ---------------------------------------------------------------------------------------
# Greedy within one partition.


def _pad_size(n: int, chunk: int) -> tuple[int, int]:
  """(padded size, row block) for partitions of up to n items: row blocks of min(chunk, n
  rounded up to a power of two, at least 8), the size a multiple of them."""
  rows = min(chunk, max(8, 1 << (max(n, 1) - 1).bit_length()))
  return -(-max(n, 1) // rows) * rows, rows


def _clip_dot(a, b):  # [A, E], [B, E] -> [A, B] max(cos, 0)
  return jnp.maximum(jnp.dot(a, b.T, preferred_element_type=jnp.float32), 0.0)


def _over_rows(fn, n_valid, rows, size):
  """[size] with fn(r0) [rows] written at r0 = 0, rows, ... for the row blocks holding the
  first n_valid rows (the rest 0): work in proportion to n_valid, not to the padding."""
  def body(r, out):
    return jax.lax.dynamic_update_slice_in_dim(out, fn(r * rows), r * rows, 0)
  return jax.lax.fori_loop(0, (n_valid + rows - 1) // rows, body,
                           jnp.zeros((size,), jnp.float32))


@functools.partial(jax.jit, static_argnames=('n_pad', 'block', 'rows'))
def _greedy(image_all, text_all, start, n_valid, budget, norm, easiness, n_pad, block, rows):
  """Exact greedy maximization of F_c over rows start .. start + n_valid of image_all and
  text_all ([M, E] unit rows, M >= start + n_pad + rows so that no slice is clipped).
  Returns the pick order [n_pad]: the position in the greedy sequence, n_pad where not
  picked."""
  image_emb = jax.lax.dynamic_slice_in_dim(image_all, start, n_pad + rows)  # [n_pad+rows, E]
  text_emb = jax.lax.dynamic_slice_in_dim(text_all, start, n_pad + rows)
  size = n_pad + rows
  width = min(block, n_pad)
  valid = jnp.arange(size) < n_valid

  def modular():
    """m_i = sum over valid j of S_ij + S_ji: the row sums plus the column sums of S, from
    each [rows, rows] block of S computed once (upper and lower triangle alike)."""
    n_blocks = (n_valid + rows - 1) // rows

    def row_block(r, acc):
      image_r = jax.lax.dynamic_slice_in_dim(image_emb, r * rows, rows)
      in_r = (r * rows + jnp.arange(rows)) < n_valid

      def col_block(c, carry):
        acc, row_sums = carry
        text_c = jax.lax.dynamic_slice_in_dim(text_emb, c * rows, rows)
        in_c = (c * rows + jnp.arange(rows)) < n_valid
        sim = jnp.where(in_r[:, None] & in_c[None, :], _clip_dot(image_r, text_c), 0.0)
        col_sums = jax.lax.dynamic_slice_in_dim(acc, c * rows, rows) + sim.sum(axis=0)
        acc = jax.lax.dynamic_update_slice_in_dim(acc, col_sums, c * rows, 0)
        return acc, row_sums + sim.sum(axis=1)

      acc, row_sums = jax.lax.fori_loop(0, n_blocks, col_block,
                                        (acc, jnp.zeros((rows,), jnp.float32)))
      row_sums = jax.lax.dynamic_slice_in_dim(acc, r * rows, rows) + row_sums
      return jax.lax.dynamic_update_slice_in_dim(acc, row_sums, r * rows, 0)

    return jax.lax.fori_loop(0, n_blocks, row_block, jnp.zeros((size,), jnp.float32))

  cos_ii = jnp.sum(image_emb * text_emb, axis=1)  # [size]
  # Marginal gain of i on the empty set: (m_i - S_ii) / norm + lambda cos_ii.
  gains = (modular() - jnp.maximum(cos_ii, 0.0)) / norm \
      + easiness * cos_ii
  gains = jnp.where(valid, gains, -jnp.inf)
  order = jnp.full((size,), n_pad, jnp.int32)

  def cond(state):
    _, _, count, progressed = state
    return (count < budget) & progressed  # no progress: no finite gain left (NaN input)

  def round_(state):
    gains, order, count, _ = state
    top, cand = jax.lax.top_k(gains, width + 1)
    bound = top[width]  # >= the gain of every sample outside the candidates
    cand = cand[:width]
    image_c, text_c = image_emb[cand], text_emb[cand]  # [width, E]
    pair = _clip_dot(image_c, text_c)
    pair = pair + pair.T  # [a, b] = S_ab + S_ba

    def pick(t, carry):
      cand_gains, taken, position, count, open_ = carry
      a = jnp.argmax(cand_gains)
      best = cand_gains[a]
      ok = open_ & (count < budget) & jnp.isfinite(best) & ((t == 0) | (best >= bound))
      cand_gains = jnp.where(ok, cand_gains - pair[:, a] / norm, cand_gains)
      cand_gains = cand_gains.at[a].set(jnp.where(ok, -jnp.inf, cand_gains[a]))
      taken = taken.at[a].set(taken[a] | ok)
      position = position.at[a].set(jnp.where(ok, count, position[a]))
      return cand_gains, taken, position, count + ok, ok

    init = (top[:width], jnp.zeros((width,), bool), jnp.zeros((width,), jnp.int32), count,
            jnp.bool_(True))
    _, taken, position, new_count, _ = jax.lax.fori_loop(0, width, pick, init)
    weight = taken.astype(jnp.float32)

    def drop(r0):  # sum over the taken p of S_ip + S_pi, rows r0 .. r0 + rows
      image_r = jax.lax.dynamic_slice_in_dim(image_emb, r0, rows)
      text_r = jax.lax.dynamic_slice_in_dim(text_emb, r0, rows)
      return (_clip_dot(image_r, text_c) + _clip_dot(text_r, image_c)) @ weight

    gains = gains - _over_rows(drop, n_valid, rows, size) / norm
    gains = gains.at[cand].set(jnp.where(taken, -jnp.inf, gains[cand]))
    order = order.at[cand].set(jnp.where(taken, position, order[cand]))
    return gains, order, new_count, new_count > count

  _, order, _, _ = jax.lax.while_loop(cond, round_, (gains, order, jnp.int32(0),
                                                      jnp.bool_(True)))
  return order[:n_pad]


def _greedy_sorted(image_all, text_all, start, size, budget, easiness, normalize, block,
                   n_pad, rows) -> np.ndarray:
  """Indices (relative to start) picked in one partition of the padded sorted arrays, in
  pick order."""
  if budget <= 0:
    return np.zeros(0, np.int64)
  order = np.asarray(_greedy(image_all, text_all, start, size, min(budget, size),
                             jnp.float32(size if normalize else 1), jnp.float32(easiness),
                             n_pad=n_pad, block=block, rows=rows))[:size]
  idx = np.flatnonzero(order < n_pad)
  return idx[np.argsort(order[idx], kind='stable')]


def greedy(image_emb: np.ndarray, text_emb: np.ndarray, budget: int, easiness: float = 2.0,
           normalize: bool = True, block: int = 64, chunk: int = 1024) -> np.ndarray:
  """Indices of the `budget` items picked greedily for F_c on one partition ([n, E] unit
  rows each), in pick order."""
  n = len(image_emb)
  n_pad, rows = _pad_size(n, chunk)
  pad = ((0, n_pad + rows - n), (0, 0))
  return _greedy_sorted(np.pad(np.asarray(image_emb, np.float32), pad),
                        np.pad(np.asarray(text_emb, np.float32), pad), 0, n, int(budget),
                        easiness, normalize, block, n_pad, rows)


def objective(image_emb: np.ndarray, text_emb: np.ndarray, subset, easiness: float = 2.0,
              normalize: bool = True) -> float:
  """F_c(subset) on one partition (numpy, float64; builds the n x n matrix: for checks)."""
  image_emb = np.asarray(image_emb, np.float64)
  text_emb = np.asarray(text_emb, np.float64)
  n = image_emb.shape[0]
  sim = np.maximum(image_emb @ text_emb.T, 0.0)  # S_ij
  both = sim + sim.T
  subset = np.asarray(subset, np.int64)
  norm = n if normalize else 1
  cross = both[subset].sum() - 0.5 * both[np.ix_(subset, subset)].sum()
  return float(cross / norm + easiness * np.sum(image_emb[subset] * text_emb[subset]))


# ---------------------------------------------------------------------------------------
# The selector.


def class_prototypes(tasks) -> np.ndarray:  # -> [sum of classes, E]
  return np.concatenate([np.asarray(_class_prototypes(t['class_text_emb']))
                         for t in tasks])


def fit(config, inputs: selectors.Inputs) -> dict:
  check_config(config)
  own = config[NAME]
  image_emb, text_emb = inputs.embedding_rows(NAME)  # read a chunk, then a partition
  prototypes = class_prototypes(inputs.task_list(NAME, 'classification'))
  parts = partition(image_emb, prototypes, min_cosine(config))
  n = inputs.num_rows
  k = int(min(max(round(config.selection.fraction * n), 0), n))
  ids, sizes = np.unique(parts, return_counts=True)
  budgets = split_budget(sizes, k)
  order = np.argsort(parts, kind='stable')  # rows by partition, pool order within one
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  # Each partition in one zero-padded buffer of the largest partition's padded size: one
  # compiled greedy serves every partition, and memory holds one partition.
  n_pad, rows = _pad_size(int(sizes.max()) if n else 1, int(own.chunk))
  image_part = np.zeros((n_pad + rows, image_emb.shape[1]), np.float32)  # [n_pad+rows, E]
  text_part = np.zeros_like(image_part)
  counts = np.zeros(n, np.int64)
  for start, size, part_budget in zip(starts, sizes, budgets):
    if part_budget <= 0:
      continue
    members = order[start:start + size]  # [size], pool rows of this partition
    image_part[:size] = np.asarray(image_emb[members], np.float32)
    text_part[:size] = np.asarray(text_emb[members], np.float32)
    image_part[size:] = text_part[size:] = 0.0
    keep = _greedy_sorted(image_part, text_part, 0, int(size), int(part_budget),
                          float(own.easiness), bool(own.normalize), int(own.block), n_pad,
                          rows)
    counts[members[keep]] = 1
  return {'partition': parts, 'counts': counts, 'k': k,
          'partition_ids': ids.astype(np.int64), 'partition_sizes': sizes.astype(np.int64),
          'partition_budgets': budgets.astype(np.int64)}


def score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N] int64
  del config
  return selectors.fitted_counts(NAME, state, inputs)


def summary(state) -> dict:
  ids = np.asarray(state['partition_ids'])
  sizes = np.asarray(state['partition_sizes'])
  return {'kept': int(np.asarray(state['counts']).sum()), 'k': int(state['k']),
          'partitions': int(len(ids)),
          'far': int(sizes[ids == FAR].sum()) if (ids == FAR).any() else 0,
          'largest_partition': int(sizes.max()) if sizes.size else 0}


selectors.register(selectors.Selector(
    name=NAME, fit=fit, score=score, needs=('embeddings', 'tasks'), output='counts',
    check_config=check_config, summary=summary, config_fields=('selection',),
    doc='per zero-shot task class, greedy pairs preserving the image-caption '
        'cross-covariance, plus easy pairs (Joshi et al., AISTATS 2024)'))
