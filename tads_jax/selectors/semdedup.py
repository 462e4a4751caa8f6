"""SemDeDup (Abbas et al. 2023): drop semantic near-duplicates inside k-means clusters.

As facebookresearch/SemDeDup does for LAION: spherical k-means on the pool's image
embeddings (clustering/clustering.py: faiss.Kmeans(spherical=True), random init, niter),
each sample assigned to the centroid of highest cosine; inside each cluster the samples
are visited in SemDeDup's "keep hard" order, farthest from the centroid first
(clustering/sort_clusters.py sorts by cosine distance 1 - cos descending when keep_hard,
ties in pool order), and a sample is dropped when its cosine to one visited before it is
above 1 - eps. A filter: it keeps what it keeps whatever selection.fraction.

fit learns the centroids (the state); score assigns the pool to them and runs the scan.

Where this differs from their code, and why:
  - The scan is dedup.semdedup_flags, shared with the features stage: a sample is dropped
    when close to a *kept* sample. Their semdedup.py drops it when close to *any* earlier
    sample (max of the upper-triangular similarity column), so of a chain a ~ b ~ c with
    a, c apart they also drop c, whose only near neighbour b was itself dropped; here c
    stays. The two agree whenever no dropped sample is the only close neighbour of a later
    one.
  - Threshold: cosine >= 1 - eps drops (their `M > 1 - eps`); only exact ties differ.
  - k-means: our JAX spherical Lloyd iterations (scoring/kmeans.py) on every point, where
    faiss trains on at most 256 points per centroid by default and splits empty clusters;
    k is capped at the pool size, as the features stage caps its k. The iterations stream
    the pool block by block (kmeans.fit_stream; k-means++ starts from at most 65,536
    sampled points), so memory holds one block, never [N, E].
"""

import jax
import jax.numpy as jnp
import numpy as np

from tads_jax import distributed
from tads_jax import selectors
from tads_jax.scoring import dedup
from tads_jax.scoring import kmeans

NAME = 'semdedup'
INITS = ('random', 'kmeans++')
_CHUNK = 4096  # pool rows per jitted assignment call
_BLOCK = 65536  # pool rows read at a time by each k-means pass


def options(config) -> dict:
  """config.semdedup, checked: k, iters, eps, init."""
  init = selectors.option(config, NAME, 'init')
  if init not in INITS:
    raise ValueError(f'config.{NAME}.init: one of {", ".join(INITS)}, got {init!r}')
  return dict(
      k=selectors.number(config, NAME, 'k', low=1, integer=True),
      iters=selectors.number(config, NAME, 'iters', low=0, integer=True),
      # cosine >= 1 - eps is a duplicate; eps >= 2 would make every pair one
      eps=selectors.number(config, NAME, 'eps', low=0.0, high=1.0),
      init=init)


def check_config(config) -> None:
  options(config)


def fit(config, inputs: selectors.Inputs) -> dict:
  """Spherical k-means on the pool's image embeddings: {'centroids' [k, E]}. Given the
  pool's shards (Inputs.shard_rows, the stages) each process streams the shards it owns
  and the sums are added per shard in shard order, the same on one process or several."""
  o = options(config)
  n = inputs.num_rows
  k = min(o['k'], n)
  key = jax.random.PRNGKey(config.seed)
  if inputs.shard_rows is not None:
    result = kmeans.fit_stream(lambda: _owned_blocks(inputs), n, k, o['iters'], key,
                               init=o['init'], shard_rows=inputs.shard_rows,
                               gather=distributed.gather_by_shard,
                               processes=distributed.process_count())
    return {'centroids': np.asarray(result.centroids, np.float32), 'k': k,
            'objective': float(result.objective)}
  image_emb, _ = inputs.embedding_rows(NAME)
  blocks = lambda: (image_emb[start:start + _BLOCK] for start in range(0, n, _BLOCK))
  result = kmeans.fit_stream(blocks, n, k, o['iters'], key, init=o['init'])
  return {'centroids': np.asarray(result.centroids, np.float32), 'k': k,
          'objective': float(result.objective)}


def assign(image_emb, centroids) -> tuple[np.ndarray, np.ndarray]:
  """(cluster [N] int32, cosine to its centroid [N] float32), in fixed-size chunks so that
  one program serves the whole pool and memory holds one [chunk, k] block."""
  n = image_emb.shape[0]
  centroids = jnp.asarray(centroids, jnp.float32)
  cluster = np.zeros(n, np.int32)
  cosine = np.zeros(n, np.float32)
  chunk = min(_CHUNK, max(8, -(-n // 8) * 8))
  for start in range(0, n, chunk):
    rows = np.asarray(image_emb[start:start + chunk], np.float32)  # [c, E]
    padded = np.pad(rows, ((0, chunk - rows.shape[0]), (0, 0)))
    best, best_cos = kmeans.assign(kmeans.normalize(jnp.asarray(padded)), centroids)
    cluster[start:start + rows.shape[0]] = np.asarray(best)[:rows.shape[0]]
    cosine[start:start + rows.shape[0]] = np.asarray(best_cos)[:rows.shape[0]]
  return cluster, cosine


def score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N] int64
  """1 for the samples SemDeDup keeps, 0 for the near-duplicates it drops. Given the
  pool's shards, each process assigns the shards it owns and scans the clusters whose id %
  process_count is its index; the assignments and flags are gathered."""
  eps = options(config)['eps']
  image_emb, _ = inputs.embedding_rows(NAME)  # read a chunk, then a cluster, at a time
  mine = None
  if inputs.shard_rows is None:
    cluster, cosine = assign(image_emb, state['centroids'])
  else:
    parts = distributed.gather_by_shard({index: assign(image, state['centroids'])
                                         for index, image in _owned_blocks(inputs)})
    cluster = np.concatenate([np.zeros(0, np.int32)] + [c for c, _ in parts])
    cosine = np.concatenate([np.zeros(0, np.float32)] + [c for _, c in parts])
    mine = cluster % distributed.process_count() == distributed.process_index()
  # keep_hard: visit the sample farthest from its centroid first (largest 1 - cos).
  duplicate = dedup.semdedup_flags(image_emb, cluster, 1.0 - cosine.astype(np.float64), eps,
                                   rows=mine)
  if mine is not None:
    duplicate = distributed.all_sum(duplicate.view(np.uint8)) > 0
  return (~duplicate).astype(np.int64)


def _owned_blocks(inputs: selectors.Inputs):
  """(shard index, image_emb [rows, E] float32) of each non-empty shard this process owns,
  sliced from the row source (in the stages a float16 copy read by pread: every k-means
  pass reads it again, without parsing a shard file)."""
  image_emb, _ = inputs.embedding_rows(NAME)
  for index, rows in inputs.owned_shards():
    yield index, np.asarray(image_emb[rows], np.float32)


def summary(state) -> dict:
  return {'k': int(state['k']), 'objective': float(state['objective'])}


selectors.register(selectors.Selector(
    name=NAME, score=score, fit=fit, needs=('embeddings',), output='counts', columns=(),
    check_config=check_config, summary=summary, config_fields=('seed',), multiprocess=True,
    doc='drops image near-duplicates (cosine >= 1 - eps) inside spherical k-means clusters, '
        'keeping the one farthest from the centroid (SemDeDup)'))
