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
