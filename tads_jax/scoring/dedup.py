"""Duplicate flags: semantic near-duplicates inside k-means clusters (SemDeDup) and exact
duplicates by content hash. True means 'drop'; of every group of duplicates the copy of
best quality is kept.

SemDeDup comes in two forms with the same flags: semdedup_flags over embeddings in memory
(or a memmap), and semdedup_flags_stream over a pool read block by block, which sorts the
embeddings by cluster into a scratch file in one pass and reads one cluster at a time."""

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def semdedup_flags(emb, assignment, quality, eps: float, block: int = 256,
                   rows=None) -> np.ndarray:
  """bool [N], True for a near-duplicate to drop.

  Inside each cluster, items are visited by quality, best first (ties by index); an item is
  dropped when its cosine to an item already kept is >= 1 - eps. Comparing with kept items
  only (not with every better item, as SemDeDup's reference code does) keeps the end of a
  chain a ~ b ~ c when c is not itself close to a.

  Duplicates can only be found inside a cluster, so the cost is the sum of squared cluster
  sizes; similarities are computed `block` rows at a time, so memory is block x cluster
  size. Each cluster is padded to a power of two, so a few programs serve every cluster.

  Args:
    emb: [N, D] embeddings (numpy, may be a memmap; rows are normalized here).
    assignment: [N] int cluster ids, e.g. kmeans.fit(...).assignment.
    quality: [N] higher is better (e.g. clip_score); NaN counts as worst.
    eps: similarity slack; SemDeDup uses values around 0.01 - 0.1.
    rows: bool [N], the rows to scan, whole clusters (a process's share of them); the
      others get False. A cluster's flags depend on its rows alone.
  """
  emb = np.asarray(emb) if not hasattr(emb, 'shape') else emb
  order, assignment = _cluster_order(assignment, quality, eps, block, rows)
  if emb.ndim != 2 or emb.shape[0] != assignment.shape[0]:
    raise ValueError(f'semdedup_flags: expected emb [N, D] for assignment [N]; got '
                     f'{emb.shape}, {assignment.shape}')

  def fill(start, end, out):
    out[:] = emb[order[start:end]]
  return _flag_clusters(order, assignment, eps, block, fill, emb.shape[1])


def semdedup_flags_stream(chunks, assignment, quality, eps: float, scratch: str,
                          block: int = 256, rows=None) -> np.ndarray:
  """semdedup_flags for a pool larger than memory, the same flags.

  chunks() returns an iterator over the pool's embeddings in [b, D] blocks (any b), in
  assignment's row order. One pass writes them to `scratch`, a float32 file, sorted by
  cluster and quality, so that each cluster is then read back as one contiguous slice;
  the file is removed at the end. Memory holds one source block and one cluster, never
  [N, D]; the pool's embeddings pass through the file (and the OS page cache) once. The
  file is written and read with pwrite / pread, not mapped: a mapping's pages would count
  in this process's resident memory, up to the whole file.

  rows: bool [N], the rows to scan, whole clusters (a process's share of the clusters);
  only they go to the file, the others get False. Their flags are those of a scan of every
  row: a cluster's flags depend on its rows alone.
  """
  order, assignment = _cluster_order(assignment, quality, eps, block, rows)
  n = assignment.shape[0]
  rank = np.full(n, -1, np.int64)  # [N] position of each row in the scratch file, -1: none
  rank[order] = np.arange(order.shape[0])
  fd, width, seen = os.open(scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644), None, 0
  try:
    for part in chunks():
      part = np.asarray(part, np.float32)
      if part.ndim != 2 or (width is not None and part.shape[1] != width):
        raise ValueError(f'semdedup_flags_stream: blocks must be [b, D] of one width, got '
                         f'{part.shape}')
      if seen + part.shape[0] > n:
        raise ValueError(f'semdedup_flags_stream: the source yields more than the N={n} '
                         'rows of assignment')
      width = part.shape[1]
      positions = rank[seen:seen + part.shape[0]]
      for i in np.flatnonzero(positions >= 0):
        os.pwrite(fd, part[i].tobytes(), int(positions[i]) * width * 4)
      seen += part.shape[0]
    if seen != n:
      raise ValueError(f'semdedup_flags_stream: the source yielded {seen} rows, assignment '
                       f'has N={n}')
    if width is None:
      return np.zeros(0, bool)

    def fill(start, end, out):  # one cluster's rows, contiguous in the file, read into out
      if os.preadv(fd, [out], start * width * 4) != out.nbytes:
        raise ValueError(f'{scratch}: shorter than the rows written to it')
    return _flag_clusters(order, assignment, eps, block, fill, width)
  finally:
    os.close(fd)
    if os.path.exists(scratch):
      os.remove(scratch)


def _cluster_order(assignment, quality, eps: float, block: int, rows=None):
  """Checked arguments -> (order: the rows to scan (all, or those of the bool mask
  `rows`) by cluster, best quality first, ties by index; assignment [N])."""
  assignment = np.asarray(assignment)
  quality = np.asarray(quality, np.float64)
  n = assignment.shape[0] if assignment.ndim == 1 else -1
  if n < 0 or quality.shape != (n,):
    raise ValueError(f'semdedup_flags: expected assignment [N] and quality [N]; got '
                     f'{assignment.shape}, {quality.shape}')
  if not 0 <= eps < 2:
    raise ValueError(f'semdedup_flags: eps must be in [0, 2), got {eps}')
  if block < 1 or block & (block - 1):
    raise ValueError(f'semdedup_flags: block must be a power of two, got {block}')
  quality = np.where(np.isnan(quality), -np.inf, quality)
  order = np.lexsort((np.arange(n), -quality, assignment))
  if rows is not None:
    rows = np.asarray(rows)
    if rows.shape != (n,) or rows.dtype != bool:
      raise ValueError(f'semdedup_flags: rows must be bool [{n}], got {rows.dtype} '
                       f'{rows.shape}')
    order = order[rows[order]]
  return order, assignment


def _flag_clusters(order, assignment, eps: float, block: int, fill, width: int) -> np.ndarray:
  """The greedy scan cluster by cluster; fill(start, end, out) writes the embeddings of
  order[start:end], one cluster best first, into out [end - start, width] float32. The
  flags cover assignment's N rows; rows not in order stay False.

  The cluster is read straight into its padded block, which the jitted scan takes as a
  numpy array (on CPU no device copy is made), so memory holds the block and its
  normalized copy.
  """
  clusters = assignment[order]
  starts = np.flatnonzero(np.r_[order.shape[0] > 0, np.diff(clusters) != 0])
  ends = np.r_[starts[1:], order.shape[0]]
  flags = np.zeros(assignment.shape[0], bool)
  threshold = np.float32(1.0 - eps)
  for start, end in zip(starts, ends):
    size = end - start
    if size < 2:
      continue
    padded = max(8, 1 << int(size - 1).bit_length())  # next power of two
    cluster = np.zeros((padded, width), np.float32)  # [padded, D], rows best first
    fill(start, end, cluster[:size])
    dup = _cluster_duplicates(cluster, np.int32(size), threshold, min(block, padded))
    flags[order[start:end]] = np.asarray(dup)[:size]
    del cluster, dup  # before the next cluster's block is made
  return flags


@functools.partial(jax.jit, static_argnames=('rows',))
def _cluster_duplicates(emb, n_valid, threshold, rows: int):  # [M, D] -> bool [M]
  """Greedy kept-set scan of one cluster whose rows are sorted best first."""
  emb = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
  size = emb.shape[0]
  col = jnp.arange(size)

  def block_step(b, kept):  # kept: bool [M], decided for every row before this block
    start = b * rows
    row = start + jnp.arange(rows)  # [rows]
    block = jax.lax.dynamic_slice_in_dim(emb, start, rows)  # [rows, D]
    sims = jnp.dot(block, emb.T, preferred_element_type=jnp.float32)  # [rows, M]
    close = (sims >= threshold) & (col[None, :] < row[:, None])  # to an earlier row
    # Earlier blocks only matter through their kept rows; rows of this block are undecided.
    matters = close & (kept | (col >= start))[None, :]

    def sequential(kept):
      def row_step(r, kept):
        i = start + r
        dup = jnp.any(close[r] & kept)
        return kept.at[i].set((i < n_valid) & ~dup)
      return jax.lax.fori_loop(0, rows, row_step, kept)

    def all_kept(kept):
      return jax.lax.dynamic_update_slice_in_dim(kept, row < n_valid, start, axis=0)

    return jax.lax.cond(jnp.any(matters), sequential, all_kept, kept)

  kept = jax.lax.fori_loop(0, size // rows, block_step, jnp.zeros(size, bool))
  return ~kept & (col < n_valid)


def exact_duplicate_flags(hashes: Sequence[str | None], quality) -> np.ndarray:
  """bool [N], True for every copy of a content hash (sha256 of the file, or an image hash)
  but the one of best quality (ties: the first). A missing hash (None or '') never makes a
  duplicate: nothing is known about that sample's content."""
  known = np.array([bool(h) for h in hashes], bool)
  keys = np.array([h if h else '' for h in hashes], dtype=object)
  _, group = np.unique(keys.astype(str), return_inverse=True)
  return duplicate_flags(group, known, quality)


def duplicate_flags(group, known, quality) -> np.ndarray:
  """exact_duplicate_flags from group ids [N] (equal ids: equal content, any numbering) and
  known [N] (False: no hash), so that a caller can group a pool's hashes without a str per
  sample."""
  group = np.asarray(group)
  n = len(group)
  quality = np.asarray(quality, np.float64)
  if quality.shape != (n,):
    raise ValueError(f'exact_duplicate_flags: quality must be [{n}], got {quality.shape}')
  quality = np.where(np.isnan(quality), -np.inf, quality)
  order = np.lexsort((np.arange(n), -quality, group))
  first = np.r_[True, group[order][1:] != group[order][:-1]]
  flags = np.zeros(n, bool)
  flags[order[~first]] = True
  return flags & known
