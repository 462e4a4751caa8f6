"""The weighted CLIP loss and the shared normalization (tads_jax/losses.py).

References are independent of the code under test: the losses are recomputed in numpy
from their definitions (standard CLIP, FLYT's NegativeWeightedClipLoss transcribed
literally, the repeat-masked loss by explicit loops), gradients against finite
differences in float64.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tads_jax import losses

pytestmark = pytest.mark.usefixtures('fast_compiles')


# ---------------------------------------------------------------------------------------
# normalize.


def test_normalize_gives_unit_rows_in_float32_or_wider():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(4, 3, 5))
  x[1, 2] = 0.0  # a zero row stays zero (the norm's floor), no NaN
  expected = x / np.maximum(np.sqrt((x ** 2).sum(-1, keepdims=True)), 1e-12)
  for dtype in (np.float16, np.float32):
    got = losses.normalize(jnp.asarray(x, dtype))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-3 if dtype == np.float16
                               else 1e-6)
  host = losses.normalize(x.astype(np.float32), xp=np)
  assert isinstance(host, np.ndarray) and host.dtype == np.float32
  np.testing.assert_allclose(host, expected, atol=1e-6)
  assert np.all(host[1, 2] == 0)
  assert losses.normalize(x, xp=np).dtype == np.float64  # the wider float is kept
  with jax.enable_x64(True):
    wide = losses.normalize(jnp.asarray(x))
    assert wide.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(wide), expected, rtol=1e-14, atol=1e-15)


# ---------------------------------------------------------------------------------------
# The weighted CLIP loss.


def _unit(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _clip_loss_numpy(image, text, scale):
  """Standard CLIP loss: mean cross-entropy of both directions, labels on the diagonal."""
  logits = scale * image @ text.T
  def ce(l):
    l = l - l.max(axis=1, keepdims=True)
    return np.mean(np.log(np.exp(l).sum(axis=1)) - np.diag(l))
  return 0.5 * (ce(logits) + ce(logits.T))


def _flyt_loss_numpy(image, text, scale, weights):
  """FLYT's NegativeWeightedClipLoss transcribed literally (float64)."""
  w = weights / weights.sum()
  def direction(logits):
    e = np.exp(logits)
    denominator = (w[None, :] * e).sum(axis=1)
    numerator = w * np.diag(e)
    return -(w * np.log(numerator / denominator)).sum()
  logits = scale * image @ text.T
  return 0.5 * (direction(logits) + direction(logits.T))


def test_weighted_loss_uniform_is_clip_and_matches_flyt():
  rng = np.random.default_rng(0)
  image, text = _unit(rng, (6, 5)), _unit(rng, (6, 5))
  image_j, text_j = jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32)
  loss = jax.jit(losses.weighted_clip_loss)
  for log_scale in (0.0, 1.5, math.log(100)):
    expected = _clip_loss_numpy(image, text, math.exp(log_scale))
    for weights in (None, jnp.full(6, 3.0)):
      np.testing.assert_allclose(float(loss(image_j, text_j, log_scale, weights)), expected,
                                 rtol=1e-5)
  weights = rng.uniform(0.1, 2.0, 6)
  got = float(loss(image_j, text_j, 1.2, jnp.asarray(weights, jnp.float32)))
  np.testing.assert_allclose(got, _flyt_loss_numpy(image, text, math.exp(1.2), weights),
                             rtol=1e-5)
  # Weights that differ only by a factor give the same loss (normalized per batch).
  np.testing.assert_allclose(
      float(loss(image_j, text_j, 1.2, jnp.asarray(7 * weights, jnp.float32))), got,
      rtol=1e-6)


def test_zero_weight_sample_has_no_effect_on_loss_or_gradient():
  rng = np.random.default_rng(1)
  image = jnp.asarray(_unit(rng, (5, 4)), jnp.float32)
  text = jnp.asarray(_unit(rng, (5, 4)), jnp.float32)
  weights = jnp.asarray([0.5, 1.0, 0.0, 2.0, 1.5])
  keep = np.array([0, 1, 3, 4])
  grad = jax.jit(jax.value_and_grad(losses.weighted_clip_loss, argnums=(0, 1, 2)))
  loss, (g_image, g_text, g_scale) = grad(image, text, 2.0, weights)
  loss_kept, (k_image, k_text, k_scale) = grad(image[keep], text[keep], 2.0, weights[keep])
  np.testing.assert_allclose(float(loss), float(loss_kept), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g_image)[keep], k_image, atol=1e-6)
  np.testing.assert_allclose(np.asarray(g_text)[keep], k_text, atol=1e-6)
  np.testing.assert_allclose(float(g_scale), float(k_scale), atol=1e-6)
  assert np.all(np.asarray(g_image)[2] == 0) and np.all(np.asarray(g_text)[2] == 0)
  # Changing the zero-weight sample's embeddings changes nothing.
  moved = grad(image.at[2].set(image[0]), text.at[2].set(-text[1]), 2.0, weights)
  np.testing.assert_allclose(float(moved[0]), float(loss), rtol=1e-6)
  # And the gradient w.r.t. the weights is finite everywhere.
  g_w = jax.jit(jax.grad(losses.weighted_clip_loss, argnums=3))(image, text, 2.0, weights)
  assert np.all(np.isfinite(np.asarray(g_w)))
  # All weights zero: nothing to learn from, loss 0 and no NaN.
  zero, (g, _, _) = grad(image, text, 2.0, jnp.zeros(5))
  assert float(zero) == 0 and np.all(np.asarray(g) == 0)


def test_weighted_loss_gradient_wrt_weights_matches_finite_differences():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    image = jnp.asarray(_unit(rng, (5, 3)))
    text = jnp.asarray(_unit(rng, (5, 3)))
    weights = jnp.asarray(rng.uniform(0.2, 1.5, 5))
    loss = jax.jit(lambda w: losses.weighted_clip_loss(image, text, 1.7, w))
    analytic = np.asarray(jax.jit(jax.grad(loss))(weights))
    eps = 1e-6
    numeric = np.array([(float(loss(weights.at[i].add(eps))) -
                         float(loss(weights.at[i].add(-eps)))) / (2 * eps)
                        for i in range(5)])
  np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
  assert np.abs(analytic).max() > 1e-3  # the weights do matter


# ---------------------------------------------------------------------------------------
# The loss with repeats masked.


def _masked_loss_numpy(image, text, scale, rows):
  """CLIP's loss where, for each query, the other samples of the same data row are left
  out of the softmax (they are the same pair, not a negative); float64."""
  logits = scale * image @ text.T
  n = len(rows)
  def direction(l):
    total = 0.0
    for i in range(n):
      keep = [j for j in range(n) if j == i or rows[j] != rows[i]]
      total += np.log(np.sum(np.exp(l[i, keep]))) - l[i, i]
    return total / n
  return 0.5 * (direction(logits) + direction(logits.T))


def test_a_repeated_row_is_not_its_own_negative():
  rng = np.random.default_rng(0)
  rows = np.array([4, 7, 4, 9, 2, 7])  # rows 4 and 7 drawn twice
  image, text = _unit(rng, (6, 5)), _unit(rng, (6, 5))
  # A repeat is the same pair: same embeddings (up to the model, exactly so here).
  image[2], text[2], image[5], text[5] = image[0], text[0], image[1], text[1]
  loss = jax.jit(losses.weighted_clip_loss)
  args = jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32)
  for log_scale in (0.0, 1.3, math.log(100)):
    expected = _masked_loss_numpy(image, text, math.exp(log_scale), rows)
    got = float(loss(*args, log_scale, None, jnp.asarray(rows, jnp.int32)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    if log_scale < 2:  # at scale 100 the random negatives drown the copy's term
      # Unmasked, each copy is a negative of the other: a higher loss.
      assert float(loss(*args, log_scale)) > got + 1e-3
  # Without repeats the row ids change nothing: exactly today's loss, weights included.
  distinct = jnp.asarray([3, 1, 0, 5, 2, 4], jnp.int32)
  weights = jnp.asarray(rng.uniform(0.1, 2.0, 6), jnp.float32)
  for w in (None, weights):
    assert float(loss(*args, 1.1, w, distinct)) == float(loss(*args, 1.1, w))
  # The masked pair gets no gradient through the other copy's logit.
  grad = jax.grad(lambda t: losses.weighted_clip_loss(args[0], t, 1.1, None,
                                                     jnp.asarray(rows, jnp.int32)))
  g = np.asarray(grad(args[1]))
  assert np.all(np.isfinite(g))
