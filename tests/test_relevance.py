import jax
import numpy as np
import pytest

from tads_jax.scoring import relevance


def _unit(x):
  x = np.asarray(x, np.float32)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_class_prototypes_average_normalized_templates():
  # Class 0: templates along x and (unnormalized, length 2) along y; class 1: one direction.
  text_emb = np.array([[[1, 0], [0, 2]], [[3, 4], [3, 4]]], np.float32)  # [C=2, T=2, D=2]
  np.testing.assert_allclose(relevance.class_prototypes(text_emb),
                             [[2 ** -0.5, 2 ** -0.5], [0.6, 0.8]], atol=1e-6)
  with pytest.raises(ValueError, match='classes, templates'):
    relevance.class_prototypes(text_emb[0])


def test_relevance_top_m_hand_case():
  emb = np.array([[1, 0]], np.float32)
  protos = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)  # cosines 1, 0, 0.6
  np.testing.assert_allclose(relevance.relevance(emb, protos, top_m=1), [1.0])
  np.testing.assert_allclose(relevance.relevance(emb, protos, top_m=2), [0.8])
  # m larger than the number of prototypes is capped: mean of all three.
  np.testing.assert_allclose(relevance.relevance(emb, protos, top_m=5), [1.6 / 3], atol=1e-6)
  with pytest.raises(ValueError, match="top_m"):
    relevance.relevance(emb, protos, top_m=0)


def test_relevance_vector_columns_match_numpy():
  rng = np.random.default_rng(0)
  b, d = 5, 16
  image_emb, text_emb = _unit(rng.normal(size=(b, d))), _unit(rng.normal(size=(b, d)))
  classes = _unit(rng.normal(size=(4, d)))
  retrieval = (_unit(rng.normal(size=(3, d))), _unit(rng.normal(size=(6, d))))
  got = np.asarray(relevance.relevance_vector(image_emb, text_emb, [classes, retrieval],
                                              top_m=2))
  assert got.shape == (b, 4)

  def top2(emb, protos):
    return np.sort(emb @ protos.T, axis=1)[:, -2:].mean(axis=1)

  expected = np.stack([top2(image_emb, classes), top2(text_emb, classes),
                       top2(image_emb, retrieval[0]), top2(text_emb, retrieval[1])], axis=1)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_relevance_vector_rejects_bad_prototypes():
  emb = np.ones((2, 4), np.float32)
  with pytest.raises(ValueError, match='task 0'):
    relevance.relevance_vector(emb, emb, [np.ones((3, 5), np.float32)])
  with pytest.raises(ValueError, match='top_m'):
    relevance.relevance_vector(emb, emb, [np.ones((3, 4), np.float32)], top_m=0)


def test_retrieval_prototypes_find_the_task_clusters():
  rng = np.random.default_rng(1)
  d = 8
  centres = np.eye(d, dtype=np.float32)
  labels = np.repeat([0, 1], 30)
  image_emb = _unit(centres[labels] + 0.05 * rng.normal(size=(60, d)))  # images near e0, e1
  text_emb = _unit(centres[labels + 4] + 0.05 * rng.normal(size=(60, d)))  # captions e4, e5
  image_protos, text_protos = relevance.retrieval_prototypes(image_emb, text_emb, 2,
                                                             jax.random.key(0), iters=5)
  np.testing.assert_allclose(np.sort(np.argmax(image_protos, axis=1)), [0, 1])
  np.testing.assert_allclose(np.sort(np.argmax(text_protos, axis=1)), [4, 5])
  assert np.all(np.max(image_protos, axis=1) > 0.99)
  # Fewer pairs than k: one prototype per pair.
  few = relevance.retrieval_prototypes(image_emb[:3], text_emb[:3], 10, jax.random.key(0))
  assert few[0].shape == (3, d) and few[1].shape == (3, d)


def test_calibration_from_moments_summed_over_chunks_is_each_prototypes_mean_and_std():
  rng = np.random.default_rng(3)
  emb, protos = _unit(rng.normal(size=(50, 8))), _unit(rng.normal(size=(3, 8)))
  moments = sum(relevance.prototype_moments(emb[a:a + 16], protos) for a in range(0, 50, 16))
  mean, std = relevance.calibration(moments)
  sims = emb.astype(np.float64) @ protos.T.astype(np.float64)
  np.testing.assert_allclose(mean, sims.mean(0), atol=1e-6)
  np.testing.assert_allclose(std, sims.std(0), atol=1e-6)
  # A prototype whose cosines never vary gets std 1 (no division by zero).
  _, std = relevance.calibration(relevance.prototype_moments(np.ones((4, 2)), [[1.0, 0.0]]))
  assert std.tolist() == [1.0]


def test_calibrated_relevance_vector_is_the_top_m_of_z_scored_cosines():
  """A hand case: a generic prototype close to every row loses the max to a specific one
  once both are z-scored."""
  emb = _unit([[1.0, 0.1], [1.0, -0.1], [0.8, 0.6]])
  protos = _unit([[1.0, 0.0], [0.0, 1.0]])  # generic (cosine ~1 to two rows), specific
  raw = np.asarray(relevance.relevance_vector(emb, emb, [protos], top_m=1))
  np.testing.assert_allclose(raw[:, 0], np.max(emb @ protos.T, axis=1), atol=1e-6)
  stats = relevance.calibration(relevance.prototype_moments(emb, protos))
  got = np.asarray(relevance.relevance_vector(emb, emb, [protos], top_m=1,
                                              calibrations=[(stats, stats)]))
  sims = emb @ protos.T
  z = (sims - sims.mean(0)) / sims.std(0)
  np.testing.assert_allclose(got[:, 0], z.max(1), atol=1e-5)
  np.testing.assert_allclose(got[:, 1], z.max(1), atol=1e-5)
  # The third row: raw, the generic prototype is its max (0.8 against 0.6); z-scored, the
  # specific one is, as that match is the unusual one.
  assert np.argmax(sims[2]) == 0 and np.argmax(z[2]) == 1
  with pytest.raises(ValueError, match='calibration must be'):
    relevance.relevance_vector(emb, emb, [protos], calibrations=[((stats[0][:1], stats[1][:1]),
                                                                 stats)])
  with pytest.raises(ValueError, match='1 calibrations for 2 tasks'):
    relevance.relevance_vector(emb, emb, [protos, protos], calibrations=[(stats, stats)])


def test_nearest_target_is_the_max_cosine_over_blocks_of_targets():
  """Seven targets in blocks of three (the last block filled with copies of the first):
  the same maxima as numpy over all seven, including a row whose best is a negative cosine
  and a row whose best target is the seventh."""
  rng = np.random.default_rng(0)
  targets = _unit(np.abs(rng.normal(size=(7, 5))))  # all cosines between them positive
  rows = _unit(np.concatenate([rng.normal(size=(6, 5)), -targets.sum(0, keepdims=True),
                               targets[6:] + 0.01]))
  blocks = relevance.target_blocks(targets, block=3)
  assert blocks.shape == (3, 3, 5)
  np.testing.assert_array_equal(blocks[2, 1:], targets[[0, 0]])
  expected = (rows.astype(np.float64) @ targets.T.astype(np.float64)).max(axis=1)
  assert expected[6] < 0 and np.argmax(rows[7] @ targets.T) == 6
  np.testing.assert_allclose(relevance.nearest_target(rows, blocks), expected, atol=1e-6)
  # One block when the targets fit in it.
  np.testing.assert_allclose(relevance.nearest_target(rows, relevance.target_blocks(targets)),
                             expected, atol=1e-6)
  with pytest.raises(ValueError, match='non-empty'):
    relevance.target_blocks(np.zeros((0, 5), np.float32))
