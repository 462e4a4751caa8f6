"""The contrastive loss of the proxies and the one normalization every stage uses.

Pure functions of arrays: the training loop (train.py), meta-learning (meta.py), the
selectors' scorers and the evaluation all normalize embeddings with `normalize`, so that a
unit row means the same thing everywhere.
"""

import math

import jax
import jax.numpy as jnp

MAX_LOGIT_SCALE = math.log(100)  # CLIP clips the learned temperature at 100
# Added to the logits of zero-weight samples: exp() of it is exactly 0 in float32, so such
# a sample drops out of every softmax, and unlike -inf it makes no 0 * inf in the gradient.
_NEG = -1e30


def normalize(x, xp=jnp):  # [..., D] -> unit rows, float32 (float64 stays float64)
  """Rows divided by their L2 norm (at least 1e-12, so a zero row stays zero), computed in
  float32 or the input's wider float (float64 under x64 gradient checks). xp=np gives the
  same function on the host, in numpy."""
  x = xp.asarray(x)
  x = x.astype(xp.promote_types(x.dtype, xp.float32))
  return x / xp.maximum(xp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def weighted_clip_loss(image_emb, text_emb, logit_scale, weights=None, row_ids=None):
  """CLIP's symmetric contrastive loss with per-sample weights that also weight negatives.

  With L_ij = exp(logit_scale) <u_i, v_j> (u, v unit image and text embeddings) and
  w = weights / sum(weights) (FLYT's NegativeWeightedClipLoss):

      loss = sum_i w_i [CE_i(image->text) + CE_i(text->image)] / 2
      CE_i(image->text) = -log( w_i exp(L_ii) / sum_j w_j exp(L_ij) )
      CE_i(text->image) = -log( w_i exp(L_ii) / sum_j w_j exp(L_ji) )

  i.e. ordinary cross-entropy on logits L_ij + log w_j. Uniform weights shift every logit
  by the same log(1/B), so the loss is exactly standard CLIP's; a zero-weight sample leaves
  every softmax and the sum, so it changes neither the loss nor any gradient. Expanding,
  the loss is sum_i w_i [lse_j(L_ij + log w_j) - L_ii] + H(w), H the entropy of w: that
  term has no params, so it never changes a training step; only a gradient of the loss
  value itself w.r.t. the weights sees it. An all-zero weight vector gives a loss of 0.

  With row_ids ([B] ints, the data row each sample was drawn from), a pair (i, j), i != j,
  of one row is no negative for either: L_ij leaves both softmaxes (exactly as a zero
  weight does), so a sample drawn twice into a batch is not pushed away from its own copy.
  Without repeats in the batch this is the loss above.

  image_emb, text_emb: [B, E] unit rows; logit_scale: [] (log); weights: [B] >= 0 or None;
  row_ids: [B] ints or None.
  """
  dtype = jnp.promote_types(image_emb.dtype, jnp.float32)  # float64 under x64 checks
  logits = jnp.exp(logit_scale) * _dot(image_emb, text_emb, dtype)  # [B, B]
  if weights is None:
    weights = jnp.ones(logits.shape[0], dtype)
  weights = weights.astype(dtype)
  total = jnp.sum(weights)
  w = weights / jnp.where(total > 0, total, 1.0)  # [B], sums to 1
  present = w > 0
  log_w = jnp.where(present, jnp.log(jnp.where(present, w, 1.0)), _NEG)

  if row_ids is not None:  # same row, not the diagonal: symmetric, so it serves both ways
    same = row_ids[:, None] == row_ids[None, :]  # [B, B]
    repeat = same & ~jnp.eye(logits.shape[0], dtype=bool)
    logits = jnp.where(repeat, _NEG, logits)

  def cross_entropy(logits):  # rows are queries, the softmax runs over columns
    shifted = logits + log_w[None, :]
    return jax.nn.logsumexp(shifted, axis=1) - jnp.diagonal(shifted)  # [B]

  per_sample = 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))  # [B]
  return jnp.sum(jnp.where(present, w * jnp.where(present, per_sample, 0.0), 0.0))


def word_classification_loss(image_emb, word_emb, targets, logit_scale, weights=None):
  """A word-classification loss beside CLIP's (in the spirit of SuperClass, Huang et al.
  2024): each image's softmax over a word vocabulary against its caption's words.

      loss = sum_i w_i sum_v -t_iv log softmax_v(exp(logit_scale) <u_i, c_v>)

  u_i unit image embeddings [B, E], c_v unit word embeddings [V, E] (the text tower's
  embedding of each word alone, so there are no new parameters), t_i [B, V] target
  distributions (rows summing to 1, or 0 for a caption without a vocabulary word), w =
  weights / sum(weights) (uniform when None). It asks the image tower for every word a
  caption names in every step; the contrastive loss asks that only of the words that
  tell a batch's captions apart."""
  dtype = jnp.promote_types(image_emb.dtype, jnp.float32)
  logits = jnp.exp(logit_scale) * _dot(image_emb, word_emb, dtype)  # [B, V]
  per_sample = -jnp.sum(targets.astype(dtype) * jax.nn.log_softmax(logits, axis=1), 1)
  if weights is None:
    return jnp.mean(per_sample)
  weights = weights.astype(dtype)
  total = jnp.sum(weights)
  return jnp.sum(weights * per_sample) / jnp.where(total > 0, total, 1.0)


def _dot(a, b, dtype=jnp.float32):  # [B, E] x [C, E] -> [B, C], float32 accumulation
  return jnp.einsum('be,ce->bc', a, b, preferred_element_type=dtype)
