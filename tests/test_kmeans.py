import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tads_jax.scoring import kmeans


def _unit(x):
  x = np.asarray(x, np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _blobs(rng, n_per, centres, spread):
  labels = np.repeat(np.arange(len(centres)), n_per)
  return _unit(centres[labels] + spread * rng.normal(size=(len(labels), centres.shape[1]))), labels


def _numpy_lloyd(x, centroids):
  """Independent reference: one spherical Lloyd step."""
  assign = np.argmax(x @ centroids.T, axis=1)
  new = centroids.copy()
  for c in range(len(centroids)):
    if np.any(assign == c):
      s = x[assign == c].sum(axis=0)
      new[c] = s / np.linalg.norm(s)
  return new


def test_two_separated_blobs():
  rng = np.random.default_rng(0)
  centres = np.zeros((2, 8), np.float32)
  centres[0, 0] = centres[1, 1] = 1.0
  x, labels = _blobs(rng, 50, centres, 0.1)
  result = kmeans.fit(x, 2, 10, jax.random.key(0), chunk=16)
  # Same partition as the blobs, whichever cluster got which id.
  assert len(set(zip(labels, result.assignment))) == 2
  for c in range(2):
    members = x[result.assignment == c]
    mean = members.sum(axis=0)
    np.testing.assert_allclose(result.centroids[c], mean / np.linalg.norm(mean), atol=1e-5)
  expected = np.mean(np.sum(x * result.centroids[result.assignment], axis=1))
  np.testing.assert_allclose(result.objective, expected, rtol=1e-5)


def test_objective_never_decreases_and_assignment_is_argmax():
  rng = np.random.default_rng(1)
  x = _unit(rng.normal(size=(500, 12)))
  calls = []
  result = kmeans.fit(x, 7, 15, jax.random.key(1), chunk=64, init='random',
                      callback=lambda *a: calls.append(a))
  history = np.array(result.history + [result.objective])
  assert [c[0] for c in calls] == list(range(16))
  np.testing.assert_allclose([c[1] for c in calls], history)
  assert np.all(np.diff(history) >= -1e-6), history
  assert history[-1] > history[0]
  np.testing.assert_array_equal(result.assignment, np.argmax(x @ result.centroids.T, axis=1))


def test_one_iteration_matches_numpy_and_chunking_does_not_matter():
  rng = np.random.default_rng(2)
  x = _unit(rng.normal(size=(203, 10)))  # 203 rows: the last chunk is padded
  init = _unit(rng.normal(size=(5, 10)))
  expected = _numpy_lloyd(x, init)
  for chunk in (7, 64, 1000):
    result = kmeans.fit(x, 5, 1, jax.random.key(0), chunk=chunk, init_centroids=init)
    np.testing.assert_allclose(result.centroids, expected, atol=1e-5)


def test_bounds_skip_rows_without_changing_the_result():
  rng = np.random.default_rng(7)
  centres = _unit(rng.normal(size=(6, 16)))
  x, _ = _blobs(rng, 60, centres, 0.15)
  init = x[rng.choice(len(x), 6, replace=False)]
  pruned = kmeans.fit(x, 6, 8, jax.random.key(0), chunk=32, init_centroids=init)
  full = kmeans.fit(x, 6, 8, jax.random.key(0), chunk=32, init_centroids=init, prune=False)
  np.testing.assert_array_equal(pruned.assignment, full.assignment)
  np.testing.assert_allclose(pruned.centroids, full.centroids, atol=1e-6)
  np.testing.assert_allclose(pruned.history, full.history, rtol=1e-6)
  assert full.computed == [1.0] * 9
  assert pruned.computed[0] == 1.0 and min(pruned.computed) < 0.5


def test_empty_cluster_keeps_its_centroid():
  rng = np.random.default_rng(3)
  x = _unit(np.abs(rng.normal(size=(100, 4))))  # all in the positive orthant
  far = _unit(-np.ones(4))  # no point is closest to it
  init = np.stack([_unit(np.ones(4)), _unit([1, 0, 0, 0]), far])
  result = kmeans.fit(x, 3, 5, jax.random.key(0), init_centroids=init)
  assert not np.any(result.assignment == 2)
  np.testing.assert_allclose(result.centroids[2], far, atol=1e-6)


def test_inits_pick_distinct_data_points():
  rng = np.random.default_rng(4)
  centres = _unit(np.eye(6, dtype=np.float32)[:3])
  x, labels = _blobs(rng, 40, centres, 1e-3)
  plus = np.asarray(kmeans.kmeans_plus_plus_init(x, 3, jax.random.key(5)))
  rand = np.asarray(kmeans.random_init(x, 3, jax.random.key(5)))
  for picked in (plus, rand):
    rows = [np.flatnonzero(np.all(np.abs(x - p) < 1e-6, axis=1)) for p in picked]
    assert all(len(r) == 1 for r in rows)
    assert len({int(r[0]) for r in rows}) == 3
  # k-means++ seeds one centroid in each tight blob.
  rows = [np.flatnonzero(np.all(np.abs(x - p) < 1e-6, axis=1))[0] for p in plus]
  assert sorted(labels[rows]) == [0, 1, 2]


def test_bf16_matmul_agrees_on_separated_data():
  rng = np.random.default_rng(5)
  centres = _unit(np.eye(16, dtype=np.float32)[:4])
  x, labels = _blobs(rng, 30, centres, 0.05)
  init = centres
  f32 = kmeans.fit(x, 4, 3, jax.random.key(0), init_centroids=init)
  bf16 = kmeans.fit(x, 4, 3, jax.random.key(0), init_centroids=init, matmul_dtype=jnp.bfloat16)
  np.testing.assert_array_equal(f32.assignment, labels)
  np.testing.assert_array_equal(bf16.assignment, labels)
  np.testing.assert_allclose(bf16.centroids, f32.centroids, atol=1e-5)  # float32 update


def test_assign_streams_chunks():
  rng = np.random.default_rng(6)
  x, centroids = _unit(rng.normal(size=(20, 8))), _unit(rng.normal(size=(3, 8)))
  best, cos = kmeans.assign(x, centroids)
  sims = x @ centroids.T
  np.testing.assert_array_equal(best, np.argmax(sims, axis=1))
  np.testing.assert_allclose(cos, sims.max(axis=1), atol=1e-6)


def test_cluster_weights_hand_case():
  assignment = np.array([0, 0, 0, 1])
  np.testing.assert_allclose(kmeans.cluster_weights(assignment, 2, 1.0), [4 / 3] * 3 + [4.0],
                             rtol=1e-6)
  np.testing.assert_allclose(kmeans.cluster_weights(assignment, 2, 0.5), [(0.75) ** -0.5] * 3
                             + [2.0], rtol=1e-6)
  np.testing.assert_array_equal(kmeans.cluster_weights(assignment, 2, 0.0), np.ones(4))
  # A chunk weighted by the pool's global counts: cluster 1 holds 1 of 4 points.
  np.testing.assert_allclose(kmeans.cluster_weights([1], 2, 1.0, counts=[3, 1]), [4.0])
  with pytest.raises(ValueError, match='assignment'):
    kmeans.cluster_weights([2], 2, 1.0)


def test_bad_arguments():
  x = np.ones((3, 4), np.float32)
  with pytest.raises(ValueError, match='k <= N'):
    kmeans.fit(x, 4, 1, jax.random.key(0))
  with pytest.raises(ValueError, match='init'):
    kmeans.fit(x, 2, 1, jax.random.key(0), init='farthest')
  with pytest.raises(ValueError, match=r'\[N, D\]'):
    kmeans.fit(x[0], 2, 1, jax.random.key(0))


def _source(x, sizes):
  """A callable streaming x in blocks of the given sizes (an empty one included), counting
  its passes."""
  assert sum(sizes) == len(x)
  calls = []

  def chunks():
    calls.append(1)
    start = 0
    for size in sizes:
      yield x[start:start + size]
      start += size
  return chunks, calls


def _mixed_blobs(seed=8, n=1003, d=16, k=6):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(k, d))
  return _unit(centres[rng.integers(0, k, n)] + 0.5 * rng.normal(size=(n, d)))


@pytest.mark.parametrize('prune', [True, False])
def test_stream_matches_fit_from_the_same_centroids(prune):
  x = _mixed_blobs()
  init = x[:6] + 0.1  # not data points, not normalized: both paths normalize
  chunks, calls = _source(x, [50, 3, 0, 200, 750])  # 750 > chunk: a source block is re-cut
  memory = kmeans.fit(x, 6, 8, jax.random.key(0), chunk=64, init_centroids=init, prune=prune)
  stream = kmeans.fit_stream(chunks, len(x), 6, 8, jax.random.key(0), chunk=64,
                             init_centroids=init, prune=prune)
  assert len(calls) == 9  # one pass per Lloyd iteration and one to assign
  np.testing.assert_array_equal(stream.assignment, memory.assignment)
  np.testing.assert_allclose(stream.centroids, memory.centroids, atol=1e-6)
  np.testing.assert_allclose(stream.history, memory.history, rtol=1e-6)
  np.testing.assert_allclose(stream.objective, memory.objective, rtol=1e-6)
  assert stream.computed[0] == 1.0
  if prune:  # the bounds skip rows in the stream as they do in memory
    np.testing.assert_allclose(stream.computed, memory.computed, atol=0.01)
    assert min(stream.computed) < 0.5
  else:
    assert stream.computed == [1.0] * 9
  # And the stream's own fixed point: the assignment is the argmax to its centroids.
  np.testing.assert_array_equal(stream.assignment, np.argmax(x @ stream.centroids.T, axis=1))


@pytest.mark.parametrize('init, init_sample', [('kmeans++', 100), ('kmeans++', 5000),
                                               ('random', 5000)])
def test_stream_starts_from_the_rows_fit_picks(init, init_sample):
  x = _mixed_blobs(seed=9)
  chunks, calls = _source(x, [400, 603])
  memory = kmeans.fit(x, 6, 0, jax.random.key(4), init=init,
                      init_sample=init_sample if init_sample < len(x) else None)
  stream = kmeans.fit_stream(chunks, len(x), 6, 0, jax.random.key(4), init=init,
                             init_sample=init_sample)
  assert len(calls) == 2  # one pass to pick the rows, one to assign
  np.testing.assert_allclose(stream.centroids, memory.centroids, atol=1e-6)
  np.testing.assert_array_equal(stream.assignment, memory.assignment)
  # The starting centroids are data points.
  for c in stream.centroids:
    assert np.min(np.linalg.norm(x - c, axis=1)) < 1e-6


def test_stream_checks_its_source():
  x = _mixed_blobs(n=40)
  with pytest.raises(ValueError, match='yielded 30 rows, expected N=40'):
    kmeans.fit_stream(_source(x[:30], [30])[0], 40, 3, 1, jax.random.key(0))
  with pytest.raises(ValueError, match='more than the N=30'):
    kmeans.fit_stream(_source(x, [40])[0], 30, 3, 1, jax.random.key(0))
  with pytest.raises(ValueError, match=r'blocks must be \[b, 16\]'):
    kmeans.fit_stream(_source([x[:20], x[20:, :8]], [1, 1])[0], 40, 3, 1, jax.random.key(0),
                      init_centroids=x[:3])
  with pytest.raises(ValueError, match='k <= N'):
    kmeans.fit_stream(_source(x, [40])[0], 40, 41, 1, jax.random.key(0))


def _generated_pool(n, d, block=512, seed=0):
  """A source that draws its blocks on demand (seeded by position), so the pool itself is
  never in memory."""
  centres = np.random.default_rng(seed).normal(size=(8, d))

  def chunks():
    for start in range(0, n, block):
      rng = np.random.default_rng([seed, start])
      rows = min(block, n - start)
      yield _unit(centres[rng.integers(0, 8, rows)] + rng.normal(size=(rows, d)))
  return chunks


def _traced_peak(fn) -> int:
  """Peak bytes traced while fn runs (numpy reports its buffers to tracemalloc)."""
  tracemalloc.start()
  try:
    fn()
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def test_stream_memory_does_not_grow_with_the_pool():
  d, n = 128, 4096
  key = jax.random.key(0)
  stream = lambda m: kmeans.fit_stream(_generated_pool(m, d), m, 8, 2, key, chunk=256,
                                       init_sample=1024)
  memory = lambda m: kmeans.fit(np.concatenate(list(_generated_pool(m, d)())), 8, 2, key,
                                chunk=256, init_sample=1024)
  stream(n), stream(4 * n)  # compile outside the measurement
  extra = 3 * n * d * 4  # the [N, E] float32 bytes the larger pool adds
  stream_peaks = [_traced_peak(lambda: stream(m)) for m in (n, 4 * n)]
  memory_peaks = [_traced_peak(lambda: memory(m)) for m in (n, 4 * n)]
  print(f'k-means peak bytes, N={n} and 4N, D={d}: stream {stream_peaks}, in memory '
        f'{memory_peaks}; [3N, D] float32 = {extra}')
  assert stream_peaks[1] - stream_peaks[0] < 0.1 * extra
  assert memory_peaks[1] - memory_peaks[0] > extra  # the measure sees a pool in memory


def check_eight_devices_match_one_device():
  assert jax.device_count() >= 8, jax.devices()
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(5, 16))
  x = centres[rng.integers(0, 5, 1003)] + 0.3 * rng.normal(size=(1003, 16))
  x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  mesh = jax.make_mesh((8,), ('data',), devices=jax.devices()[:8])
  one = kmeans.fit(x, 5, 6, jax.random.key(0), chunk=32)
  eight = kmeans.fit(x, 5, 6, jax.random.key(0), chunk=32, mesh=mesh)
  assert np.array_equal(one.assignment, eight.assignment)
  assert float(np.abs(one.centroids - eight.centroids).max()) < 1e-5
  np.testing.assert_allclose(one.objective, eight.objective, rtol=1e-6)
  np.testing.assert_allclose(one.history, eight.history, rtol=1e-6)


def test_eight_devices_match_one_device(on_8_devices):
  on_8_devices(check_eight_devices_match_one_device)
