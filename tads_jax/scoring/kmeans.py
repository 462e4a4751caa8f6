"""Spherical k-means in JAX: the diversity clusters, SemDeDup's clusters, retrieval prototypes.

Points and centroids live on the unit sphere and a point goes to the centroid of highest
cosine; the update is the renormalized sum of the cluster's points, which maximizes the
summed cosine for a fixed assignment, so the objective (mean cosine) never decreases.

The assignment matmul is nearly all the cost (2 N D k flops per pass). It runs over fixed
size chunks (the tail padded and masked), so XLA compiles one program and memory holds one
[chunk, k] similarity block at a time. Cluster sums and counts are segment sums (O(N D), not
a one-hot matmul that would double the flops); with a mesh they are psum'd over its 'data'
axis, so every device (or host) ends each iteration with the same centroids.

Most of those flops are wasted after the first iterations: few points change cluster. fit
therefore keeps, per point, an upper bound on its cosine to every centroid but its own
(Hamerly's bound carried to the sphere: a centroid that moved by delta changes any cosine
by at most delta) and recomputes a point's row of similarities only when its exact cosine
to its own centroid no longer beats that bound. The points to recompute are compacted into
fixed-size blocks, so the shapes stay static and only the block count varies. The result
is Lloyd's algorithm exactly (up to float rounding, guarded by a margin), only cheaper;
`prune=False` computes every row every time.

fit_stream runs the same iterations over a source that yields the pool block by block (one
pass per iteration), for pools that do not fit in memory. Given the pool's shard sizes it
sums each shard on its own and then all shards in shard order, through a gather hook, so
that processes that each stream their own shards end every iteration with the centroids one
process streaming them all would get, to the bit.

Empty clusters keep their previous centroid: the rule needs no extra pass over the data and
no collective, and stays deterministic across device counts. (faiss instead splits a large
cluster; with k much smaller than N empty clusters are rare either way.)
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P


@dataclasses.dataclass
class KMeansResult:
  centroids: np.ndarray   # [k, D] float32, unit norm
  assignment: np.ndarray  # [N] int32, index of the centroid of highest cosine
  objective: float        # mean cosine of each point to its centroid, final centroids
  history: list           # mean cosine at each iteration's assignment step
  computed: list          # per pass, the share of points whose similarity row was computed


def normalize(x, eps: float = 1e-12):  # [..., D] -> [..., D]
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=('matmul_dtype',))
def assign(x, centroids, matmul_dtype=jnp.float32):  # [B, D], [k, D] -> [B] int32, [B]
  """Nearest centroid by cosine for one chunk, and that cosine; for streaming the pool
  through fitted centroids."""
  best, best_cos, _ = _top2(_sims_t(x, centroids, matmul_dtype))
  return best, best_cos


def _sims_t(x, centroids, matmul_dtype):  # [B, D], [k, D] -> [k, B] float32
  """Similarities with the centroids as rows. bf16 inputs with float32 accumulation reach
  bf16 matrix units where the CPU has them (AMX on recent Xeons; on a CPU without bf16
  instructions XLA converts and nothing is gained). bf16 rounds the cosines to ~3 digits,
  so near-ties may go either way."""
  return jnp.dot(centroids.astype(matmul_dtype), x.astype(matmul_dtype).T,
                 preferred_element_type=jnp.float32)


def _top2(sims_t):  # [k, B] -> [B] int32, [B] float32, [B] float32
  """Per column: index of the max (the first on ties), the max, and the second largest.

  A loop over the k rows with elementwise updates of three [B] vectors: every step is a
  contiguous SIMD sweep, where a row-wise argmax over [B, k] reduces along the minor axis
  and cost ~15% of the matmul on a 2-core CPU; this costs ~2%.
  """
  k = sims_t.shape[0]

  def step(i, carry):
    best_cos, best, second = carry
    row = sims_t[i]
    gt = row > best_cos
    return (jnp.where(gt, row, best_cos), jnp.where(gt, i, best),
            jnp.where(gt, best_cos, jnp.maximum(second, row)))

  # Started from row 0 (so that, under shard_map, the carry varies over devices as the
  # data does).
  first = sims_t[0]
  init = (first, jnp.zeros_like(first, jnp.int32), first - jnp.inf)
  best_cos, best, second = jax.lax.fori_loop(1, k, step, init, unroll=8)
  return best, best_cos, second


def update_centroids(sums, counts, centroids):  # [k, D], [k], [k, D] -> [k, D]
  """Renormalized cluster sums; a cluster with no point (or whose points cancel) keeps its
  previous centroid."""
  norms = jnp.linalg.norm(sums, axis=-1, keepdims=True)  # [k, 1]
  keep = (counts[:, None] <= 0) | (norms <= 1e-12)
  return jnp.where(keep, centroids, sums / jnp.where(keep, 1.0, norms))


def chunk_stats(x, mask, centroids, matmul_dtype=jnp.float32):
  """One chunk's share of a Lloyd iteration.

  Args: x [B, D] unit rows; mask [B] bool, False on padding; centroids [k, D].
  Returns: sums [k, D], counts [k], cosine_sum [] over valid rows, assignment [B] int32.
  Chunk results add up, so a stage streaming the pool from disk can sum them itself.
  """
  k = centroids.shape[0]
  best, cos = assign(x, centroids, matmul_dtype)
  w = mask.astype(jnp.float32)  # [B]
  sums = jax.ops.segment_sum(x.astype(jnp.float32) * w[:, None], best, num_segments=k)
  counts = jax.ops.segment_sum(w, best, num_segments=k)
  return sums, counts, jnp.sum(cos * w), best


def _others_moved(centroids, previous):  # [k, D], [k, D] -> [k]
  """Per cluster, the largest move among the other centroids: how much the bound on a
  member's cosine to any other centroid loosens."""
  k = centroids.shape[0]
  moved = jnp.linalg.norm(centroids - previous, axis=-1)  # [k]
  top = jax.lax.top_k(moved, min(2, k))[0]
  other = top[1] if k > 1 else jnp.float32(0)
  return jnp.where(moved >= top[0], other, top[0])


def _pass(x, mask, centroids, previous, labels, bound, matmul_dtype, axis_name, prune):
  """One assignment pass over [n_chunks, chunk, D] and the summed statistics.

  labels [n_chunks, chunk] are the assignments to `previous` centroids and bound the upper
  bounds on each point's cosine to any other of them (+inf: unknown). Returns sums [k, D],
  counts [k], summed cosine [], the number of rows computed [], new labels and bounds.
  """
  n_chunks, chunk, d = x.shape
  k = centroids.shape[0]
  x_flat = x.reshape(-1, d)  # [n, D]
  n = x_flat.shape[0]

  # Exact cosine of every point to its own (moved) centroid: O(N D).
  own = jax.lax.map(lambda xs: jnp.sum(xs[0] * centroids[xs[1]], axis=-1), (x, labels))
  own = own.reshape(-1)  # [n]
  labels, bound, valid = labels.reshape(-1), bound.reshape(-1), mask.reshape(-1)
  if prune:
    bound = bound + _others_moved(centroids, previous)[labels]
    stale = valid & (own - bound <= _MARGIN)
  else:
    stale = valid

  count = jnp.sum(stale.astype(jnp.int32))
  order = jnp.nonzero(stale, size=n + chunk, fill_value=n)[0]  # stale rows first, then n

  def block(b, carry):
    labels, own, bound = carry
    rows = jax.lax.dynamic_slice_in_dim(order, b * chunk, chunk)  # [chunk]; n = no row
    xb = x_flat.at[rows].get(mode='fill', fill_value=0)  # [chunk, D]
    best, best_cos, second = _top2(_sims_t(xb, centroids, matmul_dtype))
    return (labels.at[rows].set(best, mode='drop'), own.at[rows].set(best_cos, mode='drop'),
            bound.at[rows].set(second, mode='drop'))

  labels, own, bound = jax.lax.fori_loop(0, (count + chunk - 1) // chunk, block,
                                         (labels, own, bound))
  w = valid.astype(jnp.float32)
  labels_c = labels.reshape(n_chunks, chunk)

  def stats(carry, xs):
    sums, counts = carry
    xc, lc, wc = xs
    return (sums + jax.ops.segment_sum(xc * wc[:, None], lc, num_segments=k),
            counts + jax.ops.segment_sum(wc, lc, num_segments=k)), None

  init = (jnp.zeros((k, d), jnp.float32), jnp.zeros((k,), jnp.float32))
  if axis_name is not None:  # the carry varies across devices until the psum
    init = jax.lax.pcast(init, (axis_name,), to='varying')
  (sums, counts), _ = jax.lax.scan(stats, init, (x, labels_c, w.reshape(n_chunks, chunk)))
  total, computed = jnp.sum(own * w), count.astype(jnp.float32)
  if axis_name is not None:
    sums, counts, total, computed = jax.lax.psum((sums, counts, total, computed), axis_name)
  return sums, counts, total, computed, labels_c, bound.reshape(n_chunks, chunk)


# Float32 similarities from the matmul and from the row dot differ by ~1e-6; a point is
# skipped only when its own cosine beats the bound by more than this.
_MARGIN = 1e-5


@functools.lru_cache(maxsize=None)
def _lloyd_step(mesh, matmul_dtype, prune):
  """Jitted (x, mask, centroids, previous, labels, bound) ->
  (new centroids, labels, bound, summed cosine, rows computed)."""
  run = functools.partial(_pass, matmul_dtype=matmul_dtype, prune=prune)
  if mesh is None:
    run = functools.partial(run, axis_name=None)
  else:
    run = jax.shard_map(
        functools.partial(run, axis_name='data'), mesh=mesh,
        in_specs=(P('data'), P('data'), P(), P(), P('data'), P('data')),
        out_specs=(P(), P(), P(), P(), P('data'), P('data')))

  def step(x, mask, centroids, previous, labels, bound):
    sums, counts, total, computed, labels, bound = run(x, mask, centroids, previous, labels,
                                                       bound)
    return update_centroids(sums, counts, centroids), labels, bound, total, computed

  return jax.jit(step)


def _random_rows(key, n: int, m: int) -> np.ndarray:  # -> [m] int, sorted
  """m distinct row indices of N drawn uniformly, in increasing order (so that a stream
  can pick them up in one pass)."""
  return np.sort(np.asarray(jax.random.choice(key, n, (m,), replace=False)))


def random_init(x, k: int, key):  # [N, D] -> [k, D]
  """k distinct points drawn uniformly."""
  return normalize(jnp.asarray(np.asarray(x)[_random_rows(key, x.shape[0], k)], jnp.float32))


@functools.partial(jax.jit, static_argnames=('k',))
def kmeans_plus_plus_init(x, k: int, key):  # [N, D] -> [k, D]
  """k-means++ (Arthur & Vassilvitskii 2007) on the sphere: each next centroid is drawn with
  probability proportional to 1 - (best cosine to the centroids so far), which is half the
  squared chord distance, i.e. k-means++'s D^2 sampling.

  k sequential passes over x (O(k N D)): for a large pool pass a sample (fit's init_sample).
  """
  x = normalize(x.astype(jnp.float32))
  n = x.shape[0]
  key, sub = jax.random.split(key)
  first = jax.random.randint(sub, (), 0, n)
  centroids = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(x[first])
  dist = jnp.maximum(1.0 - x @ x[first], 0.0)  # [N]

  def body(i, carry):
    centroids, dist, key = carry
    key, sub = jax.random.split(key)
    logits = jnp.where(dist > 0, jnp.log(jnp.where(dist > 0, dist, 1.0)), -jnp.inf)
    pick = jax.random.categorical(sub, logits)
    centroids = centroids.at[i].set(x[pick])
    dist = jnp.minimum(dist, jnp.maximum(1.0 - x @ x[pick], 0.0))
    return centroids, dist, key

  centroids, _, _ = jax.lax.fori_loop(1, k, body, (centroids, dist, key))
  return centroids


def _data_devices(mesh) -> int:
  if mesh is None:
    return 1
  if 'data' not in mesh.axis_names:
    raise ValueError(f"k-means mesh needs a 'data' axis, got axes {mesh.axis_names}")
  return mesh.shape['data']


def fit(x, k: int, iters: int, key, chunk: int = 2048, init: str = 'kmeans++', mesh=None,
        matmul_dtype=jnp.float32, init_centroids=None, init_sample: int | None = None,
        prune: bool = True, callback=None) -> KMeansResult:
  """Spherical k-means: `iters` Lloyd updates, then one assignment pass with the final
  centroids, so that assignment and objective describe the centroids returned.

  Args:
    x: [N, D] embeddings (numpy or jax); rows are L2-normalized here.
    k: number of clusters, at most N.
    iters: Lloyd iterations.
    key: jax PRNG key for the initialization.
    chunk: rows per assignment block; the last block is padded and masked.
    init: 'kmeans++' or 'random'; ignored when init_centroids [k, D] is given.
    mesh: optional jax Mesh with a 'data' axis: rows are split over it, sums and counts
      psum'd. Without one, everything runs on the default device.
    matmul_dtype: jnp.float32 or jnp.bfloat16 (inputs only; accumulation is float32).
    init_sample: run k-means++ on this many random points instead of all of them.
    prune: skip the similarity rows that the bounds prove unchanged (same result).
    callback: called after each pass as callback(pass_index, mean_cosine, share_computed),
      for progress reports; passes 0..iters-1 update the centroids, pass iters only assigns.
  """
  if x.ndim != 2:
    raise ValueError(f'k-means input must be [N, D], got shape {x.shape}')
  n, d = x.shape
  if not 1 <= k <= n:
    raise ValueError(f'k-means: need 1 <= k <= N, got k={k}, N={n}')
  if iters < 0 or chunk < 1:
    raise ValueError(f'k-means: iters must be >= 0 and chunk >= 1, got {iters}, {chunk}')

  centroids = _init_centroids(lambda idx: x if idx is None else np.asarray(x)[idx], n, d, k,
                              key, init, init_centroids, init_sample)
  x_chunks, mask = _pad_chunks(x, chunk, _data_devices(mesh), mesh)
  step = _lloyd_step(mesh, matmul_dtype, prune)
  labels = jnp.zeros(mask.shape, jnp.int32)
  bound = jnp.full(mask.shape, jnp.inf, jnp.float32)  # unknown: the first pass computes all
  if mesh is not None:
    centroids = jax.device_put(centroids, NamedSharding(mesh, P()))
    labels, bound = (jax.device_put(a, NamedSharding(mesh, P('data'))) for a in (labels, bound))
  previous = centroids
  history, computed = [], []
  for i in range(iters + 1):  # the last pass only assigns, to the final centroids
    new, labels, bound, total, rows = step(x_chunks, mask, centroids, previous, labels, bound)
    history.append(float(total) / n)
    computed.append(float(rows) / n)
    if callback is not None:
      callback(i, history[-1], computed[-1])
    previous, centroids = centroids, new
  return KMeansResult(centroids=np.asarray(previous),
                      assignment=np.asarray(labels).reshape(-1)[:n].astype(np.int32),
                      objective=history.pop(), history=history, computed=computed)


def _init_centroids(take, n: int, d: int | None, k: int, key, init: str, init_centroids,
                    init_sample: int | None):
  """[k, D] unit starting centroids, shared by fit and fit_stream so that both start from
  the same points for the same key; take(idx) returns the rows at sorted indices idx, or
  every row for idx=None."""
  if init_centroids is not None:
    centroids = normalize(jnp.asarray(init_centroids, jnp.float32))
    if centroids.ndim != 2 or centroids.shape[0] != k or (d is not None and
                                                         centroids.shape[1] != d):
      raise ValueError(f'init_centroids must be [{k}, {d or "D"}], got {centroids.shape}')
    return centroids
  if init == 'random':
    return normalize(jnp.asarray(take(_random_rows(key, n, k)), jnp.float32))
  if init == 'kmeans++':
    key, sub = jax.random.split(key)
    idx = None
    if init_sample is not None and init_sample < n:
      if init_sample < k:
        raise ValueError(f'k-means: init_sample={init_sample} is smaller than k={k}')
      idx = _random_rows(sub, n, init_sample)
    return kmeans_plus_plus_init(jnp.asarray(take(idx)), k, key)
  raise ValueError(f"k-means init must be 'kmeans++' or 'random', got {init!r}")


def fit_stream(chunks, n: int, k: int, iters: int, key, chunk: int = 2048,
               init: str = 'kmeans++', matmul_dtype=jnp.float32, init_centroids=None,
               init_sample: int = 65536, prune: bool = True, callback=None,
               shard_rows=None, gather=None, processes: int = 1) -> KMeansResult:
  """fit for a pool larger than memory: each Lloyd iteration is one pass over a source that
  yields the rows block by block (e.g. one block per shard, read from disk).

  Memory holds one source block, two `chunk`-row blocks of work and per-point scalars
  (label, bound), never [N, D]. Rows whose bounds prove their label unchanged are summed
  as they stream by; the others wait in a `chunk`-row buffer for their similarity rows, so
  pruning saves the matmul here as it does in fit. The initialization takes one more pass:
  k-means++ on init_sample rows drawn uniformly (every row when N <= init_sample), or k
  random rows, the same rows fit picks for the same key. From the same starting centroids
  the result is fit's up to float rounding (sums are added in another order).

  Args (the others as in fit):
    chunks: callable returning a fresh iterator over [b, D] arrays (any b; rows are
      normalized here), the same N rows in the same order on every call.
    n: the number of rows the source yields.
    init_sample: k-means++ runs on at most this many rows, held in memory.
    shard_rows: for a pool split over processes (distributed.py): the row count of every
      shard of the pool, in shard order (they add up to n). chunks() then yields
      (shard index, [rows, D]) for this process's shards only, each shard whole.
      Statistics are summed per shard, then over all shards in shard order, so that the
      centroids do not depend on how the shards are split: two processes get the bytes one
      process gets. (Those differ from a run without shard_rows by float rounding: the
      sums are added in another order.)
      The assignment then covers this process's rows, in the order its source yields them.
    gather: with shard_rows, gather({shard index: value}) -> every process's shard values
      in shard order (distributed.gather_by_shard); by default this process's alone.
    processes: with shard_rows, how the shards are split: process p owns the shards whose
      index % processes == p (distributed.owns). Each pass gathers one round of shards
      (one per process) at a time and adds their statistics to the running sum in shard
      order, so memory holds `processes` shards' [k, D] sums, not every shard's.
  """
  if iters < 0 or chunk < 1:
    raise ValueError(f'k-means: iters must be >= 0 and chunk >= 1, got {iters}, {chunk}')
  if not 1 <= k <= n:
    raise ValueError(f'k-means: need 1 <= k <= N, got k={k}, N={n}')
  if shard_rows is not None or gather is not None:
    return _fit_shards(chunks, n, k, iters, key, chunk, init, matmul_dtype, init_centroids,
                       init_sample, prune, callback, shard_rows, gather, processes)
  centroids = _init_centroids(lambda idx: _take_rows(chunks, n, idx), n, None, k, key, init,
                              init_centroids, init_sample)
  chunk = min(chunk, -(-n // 8) * 8)  # a small pool does not pad to a big block
  labels = np.zeros(n, np.int32)              # [N] label of each point (previous centroids)
  bound = np.full(n, np.inf, np.float32)      # [N] bound on its cosine to any other one
  previous = centroids
  history, computed = [], []
  for i in range(iters + 1):  # the last pass only assigns, to the final centroids
    sums, counts, total, rows = _stream_pass(chunks, n, centroids, previous, labels, bound,
                                             chunk, matmul_dtype, prune)
    history.append(total / n)
    computed.append(rows / n)
    if callback is not None:
      callback(i, history[-1], computed[-1])
    previous, centroids = centroids, update_centroids(sums, counts, centroids)
  return KMeansResult(centroids=np.asarray(previous), assignment=labels,
                      objective=history.pop(), history=history, computed=computed)


def _fit_shards(chunks, n, k, iters, key, chunk, init, matmul_dtype, init_centroids,
                init_sample, prune, callback, shard_rows, gather, processes) -> KMeansResult:
  """fit_stream over shards that may be split between processes (its shard_rows, gather).

  Each shard's pass starts from zero sums and resolves its own stale rows, so a shard's
  statistics depend only on its rows and the centroids, wherever it is computed.
  """
  if shard_rows is None:
    raise ValueError('k-means: gather needs shard_rows, the row count of every shard')
  shard_rows = [int(r) for r in shard_rows]
  if min(shard_rows, default=0) < 0 or sum(shard_rows) != n:
    raise ValueError(f'k-means: shard_rows must be >= 0 and add up to N={n}, got '
                     f'{len(shard_rows)} shards of {sum(shard_rows)} rows')
  if gather is None:
    gather = lambda per_shard: [per_shard[i] for i in sorted(per_shard)]  # noqa: E731
  starts = np.cumsum([0] + shard_rows)

  def shards():  # (index, [rows, D] float32) of this process's shards, checked
    last = -1
    for index, part in chunks():
      part = np.asarray(part, np.float32)
      if not last < index < len(shard_rows):
        raise ValueError(f'k-means source: shard index {index} out of range [0, '
                         f'{len(shard_rows)}), repeated or out of order')
      if part.ndim != 2 or part.shape[0] != shard_rows[index]:
        raise ValueError(f'k-means source: shard {index} must be [{shard_rows[index]}, D], '
                         f'got {part.shape}')
      last = index
      yield index, part

  def take(idx):  # sorted global row indices (None: all) -> [m, D], gathered in row order
    picked = {}
    for index, part in shards():
      if idx is None:
        picked[index] = part
      else:
        lo, hi = np.searchsorted(idx, [starts[index], starts[index + 1]])
        picked[index] = part[idx[lo:hi] - starts[index]]
    rows = np.concatenate(gather(picked))
    expected = n if idx is None else len(idx)
    if rows.shape[0] != expected:
      raise ValueError(f'k-means source: the processes yielded {rows.shape[0]} of the '
                       f'{expected} rows asked for; a shard is missing')
    return rows

  centroids = _init_centroids(take, n, None, k, key, init, init_centroids, init_sample)
  chunk = min(chunk, -(-n // 8) * 8)  # as fit_stream, from the pool's N on every process
  labels, bound = {}, {}  # per shard of this process: [rows] labels and bounds
  previous = centroids
  history, computed = [], []
  if not isinstance(processes, int) or processes < 1:
    raise ValueError(f'k-means: processes must be a positive integer, got {processes!r}')
  rounds = -(-len(shard_rows) // processes)
  for i in range(iters + 1):  # the last pass only assigns, to the final centroids
    sums = counts = None
    total = rows_computed = pool_rows = 0.0
    order, source = [], shards()
    pending = next(source, None)
    for r in range(rounds):  # one collective per round, every process in every round
      stats = {}
      while pending is not None and pending[0] // processes == r:
        index, part = pending
        rows = part.shape[0]
        labels.setdefault(index, np.zeros(rows, np.int32))
        bound.setdefault(index, np.full(rows, np.inf, np.float32))
        s, c, t, done = _stream_pass(lambda part=part: iter([part]), rows, centroids,
                                     previous, labels[index], bound[index], chunk,
                                     matmul_dtype, prune)
        stats[index] = (np.asarray(s), np.asarray(c),  # [k, D], [k] float32
                        np.array([t, done, rows], np.float64))
        order.append(index)
        pending = next(source, None)
      for part in gather(stats):  # this round's shards, in shard order, on every process
        sums = part[0] if sums is None else sums + part[0]
        counts = part[1] if counts is None else counts + part[1]
        total, rows_computed = total + part[2][0], rows_computed + part[2][1]
        pool_rows += part[2][2]
    if pending is not None:
      raise ValueError(f'k-means source: shard {pending[0]} is past the {len(shard_rows)} '
                       'shards of shard_rows, or out of order')
    if pool_rows != n:
      raise ValueError(f'k-means source: the processes yielded {int(pool_rows)} rows, expected '
                       f'N={n}; a shard is missing')
    history.append(float(total) / n)
    computed.append(float(rows_computed) / n)
    if callback is not None:
      callback(i, history[-1], computed[-1])
    previous, centroids = centroids, update_centroids(jnp.asarray(sums), jnp.asarray(counts),
                                                      centroids)
  assignment = np.concatenate([np.zeros(0, np.int32)] + [labels[i] for i in order])
  return KMeansResult(centroids=np.asarray(previous), assignment=assignment,
                      objective=history.pop(), history=history, computed=computed)


def _source_parts(chunks, n: int, d: int | None):
  """(start, [b, D] float32) for each block of the source, checking the widths and that it
  yields N rows."""
  seen = 0
  for part in chunks():
    part = np.asarray(part, np.float32)
    if part.ndim != 2 or (d is not None and part.shape[1] != d):
      raise ValueError(f'k-means source: blocks must be [b, {d or "D"}], got {part.shape}')
    d = part.shape[1]
    if seen + part.shape[0] > n:
      raise ValueError(f'k-means source: yielded more than the N={n} rows expected')
    yield seen, part
    seen += part.shape[0]
  if seen != n:
    raise ValueError(f'k-means source: yielded {seen} rows, expected N={n}')


def _source_blocks(chunks, n: int, d: int, rows: int):
  """(start, x [rows, D] float32, count) over the source re-cut into blocks of `rows` rows
  (static shapes for jit), the last one padded with zeros."""
  parts, have, start = [], 0, 0
  for _, part in _source_parts(chunks, n, d):
    while part.shape[0]:
      taken = min(rows - have, part.shape[0])
      parts.append(part[:taken])
      have, part = have + taken, part[taken:]
      if have == rows:
        yield start, np.concatenate(parts), rows
        parts, have, start = [], 0, start + rows
  if have:
    yield start, np.pad(np.concatenate(parts), ((0, rows - have), (0, 0))), have


def _take_rows(chunks, n: int, idx):  # sorted [m] or None (all) -> [m, D] float32
  """The source's rows at indices idx, in one pass."""
  parts = []  # the source yields N >= k >= 1 rows, or _source_parts raises
  for start, part in _source_parts(chunks, n, None):
    if idx is None:
      parts.append(part)
    else:
      lo, hi = np.searchsorted(idx, [start, start + part.shape[0]])
      parts.append(part[idx[lo:hi] - start])
  return np.concatenate(parts)


def _stream_pass(chunks, n, centroids, previous, labels, bound, chunk, matmul_dtype, prune):
  """One Lloyd pass over the source. labels and bound (numpy [N]) are updated in place.
  Returns sums [k, D], counts [k], the summed cosine and the number of rows computed."""
  k, d = centroids.shape
  others = _others_moved(centroids, previous)  # [k]
  sums, counts = jnp.zeros((k, d), jnp.float32), jnp.zeros((k,), jnp.float32)
  total, computed = jnp.float32(0), 0
  waiting_x, waiting_rows = [], []  # stale rows, until a block of `chunk` is full

  def resolve(x, rows):  # x [m, D] unit rows, m <= chunk; rows [m] their indices
    nonlocal sums, counts, total
    m = rows.shape[0]
    best, second, sums, counts, cos = _resolve_block(
        np.pad(x, ((0, chunk - m), (0, 0))), m, centroids, sums, counts,
        matmul_dtype=matmul_dtype)
    labels[rows] = np.asarray(best)[:m]
    bound[rows] = np.asarray(second)[:m]
    total = total + cos

  for start, x, count in _source_blocks(chunks, n, d, chunk):
    end = start + count
    x, stale, settled_bound, sums, counts, cos = _settle_block(
        x, count, centroids, others, np.pad(labels[start:end], (0, chunk - count)),
        np.pad(bound[start:end], (0, chunk - count)), sums, counts, prune=prune)
    total = total + cos
    bound[start:end] = np.asarray(settled_bound)[:count]
    stale = np.flatnonzero(np.asarray(stale)[:count])
    computed += stale.size
    if stale.size:
      waiting_x.append(np.asarray(x)[stale])
      waiting_rows.append(start + stale)
    while sum(r.size for r in waiting_rows) >= chunk:
      x_all, rows_all = np.concatenate(waiting_x), np.concatenate(waiting_rows)
      resolve(x_all[:chunk], rows_all[:chunk])
      waiting_x, waiting_rows = [x_all[chunk:]], [rows_all[chunk:]]
  if waiting_rows and sum(r.size for r in waiting_rows):
    resolve(np.concatenate(waiting_x), np.concatenate(waiting_rows))
  return sums, counts, float(total), computed


@functools.partial(jax.jit, static_argnames=('prune',))
def _settle_block(x, count, centroids, others_moved, labels, bound, sums, counts, prune):
  """A block's rows whose label the bounds prove unchanged are added to the sums; the
  others come back flagged stale, for full similarity rows. x [B, D] (normalized here),
  the first `count` rows valid; labels, bound [B]."""
  k = centroids.shape[0]
  x = normalize(x)
  valid = jnp.arange(x.shape[0]) < count  # [B]
  own = jnp.sum(x * centroids[labels], axis=-1)  # [B] exact cosine to its own centroid
  if prune:
    bound = bound + others_moved[labels]
    stale = valid & (own - bound <= _MARGIN)
  else:
    stale = valid
  w = (valid & ~stale).astype(jnp.float32)
  sums = sums + jax.ops.segment_sum(x * w[:, None], labels, num_segments=k)
  counts = counts + jax.ops.segment_sum(w, labels, num_segments=k)
  return x, stale, bound, sums, counts, jnp.sum(own * w)


@functools.partial(jax.jit, static_argnames=('matmul_dtype',))
def _resolve_block(x, count, centroids, sums, counts, matmul_dtype):
  """Full similarity rows for a block of stale rows (the first `count` valid): labels [B],
  bounds (second best cosine) [B], and the sums with these rows added."""
  k = centroids.shape[0]
  best, best_cos, second = _top2(_sims_t(x, centroids, matmul_dtype))
  w = (jnp.arange(x.shape[0]) < count).astype(jnp.float32)
  sums = sums + jax.ops.segment_sum(x * w[:, None], best, num_segments=k)
  counts = counts + jax.ops.segment_sum(w, best, num_segments=k)
  return best, second, sums, counts, jnp.sum(best_cos * w)


def _pad_chunks(x, chunk: int, devices: int, mesh):
  """[N, D] -> unit rows [devices * n_chunks, chunk, D] and mask [devices * n_chunks, chunk];
  padding goes at the end, so device i holds a contiguous block of rows."""
  n, d = x.shape
  per_device = -(-n // devices)
  chunk = min(chunk, -(-per_device // 8) * 8)  # a small input does not pad to a big chunk
  n_chunks = -(-per_device // chunk)
  return _prepare(n, d, devices * n_chunks, chunk, mesh)(x)


@functools.lru_cache(maxsize=None)
def _prepare(n, d, rows, chunk, mesh):
  sharding = None if mesh is None else NamedSharding(mesh, P('data'))

  @functools.partial(jax.jit, out_shardings=(sharding, sharding) if sharding else None)
  def prepare(x):
    x = normalize(x.astype(jnp.float32))
    x = jnp.pad(x, ((0, rows * chunk - n), (0, 0))).reshape(rows, chunk, d)
    mask = (jnp.arange(rows * chunk) < n).reshape(rows, chunk)
    return x, mask

  return prepare


def cluster_weights(assignment, k: int, alpha: float, counts=None):  # [N] -> [N] float32
  """(|C| / N) ** -alpha for each point's cluster C: points of small clusters weigh more, so
  dense regions of the pool do not dominate the selection (alpha = 0 turns it off).

  `counts` [k] are the global cluster sizes when `assignment` is only one chunk of the pool
  (a streaming stage, or one host of many); by default they are counted from `assignment`.
  """
  assignment = np.asarray(assignment)
  if assignment.size and (assignment.min() < 0 or assignment.max() >= k):
    raise ValueError(f'cluster_weights: assignment must lie in [0, {k}), got '
                     f'[{assignment.min()}, {assignment.max()}]')
  if counts is None:
    counts = np.bincount(assignment, minlength=k)
  counts = np.asarray(counts, np.float64)
  if counts.shape != (k,):
    raise ValueError(f'cluster_weights: counts must be [{k}], got {counts.shape}')
  share = counts[assignment] / counts.sum()
  if np.any(share <= 0):
    raise ValueError('cluster_weights: a point belongs to a cluster whose count is 0')
  return (share ** -alpha).astype(np.float32)
