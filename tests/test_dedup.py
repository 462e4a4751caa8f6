import os
import tracemalloc

import numpy as np
import pytest

from tads_jax.scoring import dedup


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _brute_force_semdedup(emb, assignment, quality, eps):
  """Reference: full similarity matrix per cluster, greedy over items best first."""
  emb = _unit(emb)
  flags = np.zeros(len(emb), bool)
  for c in np.unique(assignment):
    idx = np.flatnonzero(assignment == c)
    idx = idx[np.lexsort((idx, -quality[idx]))]
    sims = emb[idx] @ emb[idx].T
    kept = []
    for pos in range(len(idx)):
      if any(sims[pos, j] >= 1 - eps for j in kept):
        flags[idx[pos]] = True
      else:
        kept.append(pos)
  return flags


def test_chain_keeps_its_far_end_and_prefers_quality():
  angle = np.deg2rad([0.0, 8.0, 16.0])  # neighbours 8 degrees apart, ends 16 apart
  emb = np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
  eps = 1 - np.cos(np.deg2rad(10.0))  # duplicates: closer than 10 degrees
  assignment = np.zeros(3, int)
  # Best first a, b, c: b is a's duplicate; c is close only to the dropped b, so it stays.
  flags = dedup.semdedup_flags(emb, assignment, np.array([3.0, 2.0, 1.0]), eps)
  np.testing.assert_array_equal(flags, [False, True, False])
  # With b best, both a and c are its duplicates.
  flags = dedup.semdedup_flags(emb, assignment, np.array([1.0, 3.0, 2.0]), eps)
  np.testing.assert_array_equal(flags, [True, False, True])


def test_matches_brute_force_with_planted_duplicates():
  rng = np.random.default_rng(0)
  d, n_base = 16, 150
  base = _unit(rng.normal(size=(n_base, d)))
  copies = rng.integers(0, n_base, 80)
  emb = np.concatenate([base, base[copies] + 0.02 * rng.normal(size=(80, d))])
  emb = _unit(emb).astype(np.float32)
  # Three clusters of different sizes, one larger than several blocks of 8 rows.
  assignment = rng.choice(3, size=len(emb), p=[0.7, 0.25, 0.05])
  quality = rng.random(len(emb))
  quality[::17] = np.nan  # NaN counts as worst
  for eps in (0.001, 0.01, 0.3):
    expected = _brute_force_semdedup(emb, assignment, np.where(np.isnan(quality), -np.inf,
                                                               quality), eps)
    got = dedup.semdedup_flags(emb, assignment, quality, eps, block=8)
    np.testing.assert_array_equal(got, expected)
  assert 0 < expected.sum() < len(emb)


def test_duplicates_in_different_clusters_are_not_compared():
  emb = np.array([[1, 0], [1, 0]], np.float32)
  flags = dedup.semdedup_flags(emb, np.array([0, 1]), np.array([1.0, 2.0]), 0.01)
  np.testing.assert_array_equal(flags, [False, False])
  flags = dedup.semdedup_flags(emb, np.array([0, 0]), np.array([1.0, 2.0]), 0.01)
  np.testing.assert_array_equal(flags, [True, False])


def _blocks(emb, sizes):
  """A callable streaming emb in blocks of the given sizes."""
  assert sum(sizes) == len(emb)
  ends = np.cumsum(sizes)
  return lambda: (emb[end - size:end] for size, end in zip(sizes, ends))


def test_stream_gives_the_in_memory_flags(tmp_path):
  rng = np.random.default_rng(1)
  d, n_base = 16, 150
  base = _unit(rng.normal(size=(n_base, d)))
  copies = rng.integers(0, n_base, 80)
  emb = _unit(np.concatenate([base, base[copies] + 0.02 * rng.normal(size=(80, d))]))
  emb = emb.astype(np.float16)  # as the embed stage stores them; both paths read float32
  assignment = rng.choice(4, size=len(emb), p=[0.6, 0.25, 0.1, 0.05])
  quality = rng.random(len(emb))
  quality[::13] = np.nan
  scratch = str(tmp_path / 'scratch.f32')
  for eps in (0.001, 0.01, 0.3):
    expected = dedup.semdedup_flags(emb, assignment, quality, eps, block=8)
    got = dedup.semdedup_flags_stream(_blocks(emb, [7, 0, 100, 123]), assignment, quality, eps,
                                      scratch, block=8)
    np.testing.assert_array_equal(got, expected)
    assert not os.path.exists(scratch)
  assert 0 < expected.sum() < len(emb)
  assert dedup.semdedup_flags_stream(lambda: iter(()), np.zeros(0, int), np.zeros(0), 0.1,
                                     scratch).shape == (0,)
  # Clusters split between 3 processes (as features splits them): each scans its share,
  # flags nothing outside it, and the shares add up to the whole scan.
  parts = [dedup.semdedup_flags_stream(_blocks(emb, [7, 0, 100, 123]), assignment, quality,
                                       0.01, scratch, block=8, rows=assignment % 3 == p)
           for p in range(3)]
  expected = dedup.semdedup_flags(emb, assignment, quality, 0.01, block=8)
  for p, part in enumerate(parts):
    assert not part[assignment % 3 != p].any()
    assert part.any() or not expected[assignment % 3 == p].any()
  np.testing.assert_array_equal(np.sum(parts, axis=0) > 0, expected)
  with pytest.raises(ValueError, match=r'semdedup_flags: rows must be bool \[230\]'):
    dedup.semdedup_flags_stream(_blocks(emb, [230]), assignment, quality, 0.01, scratch,
                                rows=np.ones(229, bool))


def test_stream_checks_its_source_and_removes_the_scratch_file(tmp_path):
  emb = _unit(np.random.default_rng(2).normal(size=(10, 4))).astype(np.float32)
  scratch = str(tmp_path / 'scratch.f32')
  for blocks, n, message in (([4, 6], 11, 'yielded 10 rows'), ([10], 9, 'more than the N=9')):
    with pytest.raises(ValueError, match=message):
      dedup.semdedup_flags_stream(_blocks(emb, blocks), np.zeros(n, int), np.zeros(n), 0.1,
                                  scratch)
    assert not os.path.exists(scratch)
  with pytest.raises(ValueError, match='one width'):
    dedup.semdedup_flags_stream(lambda: iter([emb[:4], emb[4:, :2]]), np.zeros(10, int),
                                np.zeros(10), 0.1, scratch)
  assert not os.path.exists(scratch)


def _generated_pool(n, d, block=512, seed=0):
  """A source that draws its blocks on demand, so the pool itself is never in memory."""
  def chunks():
    for start in range(0, n, block):
      rng = np.random.default_rng([seed, start])
      yield _unit(rng.normal(size=(min(block, n - start), d))).astype(np.float32)
  return chunks


def _traced_peak(fn) -> int:
  """Peak bytes traced while fn runs (numpy reports its buffers to tracemalloc)."""
  tracemalloc.start()
  try:
    fn()
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


def test_stream_memory_does_not_grow_with_the_pool(tmp_path):
  d, n, cluster = 256, 4096, 128  # clusters of a fixed size, as k grows with a real pool
  scratch = str(tmp_path / 'scratch.f32')

  def labels(m):  # [m] cluster ids and [m] quality
    rng = np.random.default_rng(m)
    return rng.permutation(m) // cluster, rng.random(m)

  stream = lambda m: dedup.semdedup_flags_stream(_generated_pool(m, d), *labels(m), 0.05,
                                                 scratch)
  memory = lambda m: dedup.semdedup_flags(np.concatenate(list(_generated_pool(m, d)())),
                                          *labels(m), 0.05)
  stream(n)  # compile outside the measurement
  extra = 3 * n * d * 4  # the [N, E] float32 bytes the larger pool adds
  stream_peaks = [_traced_peak(lambda: stream(m)) for m in (n, 4 * n)]
  memory_peaks = [_traced_peak(lambda: memory(m)) for m in (n, 4 * n)]
  print(f'SemDeDup peak bytes, N={n} and 4N, D={d}: stream {stream_peaks}, in memory '
        f'{memory_peaks}; [3N, D] float32 = {extra}')
  assert stream_peaks[1] - stream_peaks[0] < 0.1 * extra
  assert memory_peaks[1] - memory_peaks[0] > extra  # the measure sees a pool in memory


def test_semdedup_rejects_bad_input():
  emb = np.ones((3, 2), np.float32)
  with pytest.raises(ValueError, match='assignment'):
    dedup.semdedup_flags(emb, np.zeros(2, int), np.zeros(3), 0.1)
  with pytest.raises(ValueError, match='eps'):
    dedup.semdedup_flags(emb, np.zeros(3, int), np.zeros(3), -0.1)


def test_exact_duplicates_keep_the_best_copy():
  hashes = ['x', 'y', 'x', '', None, '', 'x']
  quality = [1.0, 5.0, 3.0, 0.0, 0.0, 0.0, 3.0]
  # 'x' at 0, 2, 6: 2 and 6 tie on quality, the first (2) is kept. Missing hashes never match.
  np.testing.assert_array_equal(dedup.exact_duplicate_flags(hashes, quality),
                                [True, False, False, False, False, False, True])
  with pytest.raises(ValueError, match='quality'):
    dedup.exact_duplicate_flags(['a', 'b'], [1.0])
