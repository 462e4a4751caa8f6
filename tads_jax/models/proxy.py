"""The embedding proxy: CLIP's interface on frozen reference embeddings.

Two light heads (linear, or a 2-layer MLP with a residual) map the reference CLIP's image
and text embeddings [N, D] into the proxy's space, with a learnable log temperature: cheap
enough for meta-learning and for evaluating many subsets of a large pool. The pixel proxy
is clip.CLIP itself; train.make_model builds either from a TrainConfig.

With text_vocab > 0 the text side is instead a WordsTower over each caption's word ids
(models/words.py), learned from scratch: meta-learning's proxy then learns its text side
from the captions it is given, as a CLIP trained on a subset does (meta.MetaConfig.text).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tads_jax import losses
from tads_jax.models import clip

HEADS = ('linear', 'mlp')


class EmbeddingHead(nn.Module):
  """Maps a frozen reference embedding into the proxy's embedding space."""
  head: str           # 'linear' | 'mlp'
  out_dim: int        # 'linear' only; 'mlp' keeps the input width (residual)
  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, emb):  # [B, D] -> [B, out]
    if self.head == 'linear':
      return clip.Dense(self.out_dim, ('embed', 'proj'), use_bias=False, name='proj',
                        dtype=self.dtype)(emb)
    h = clip.Dense(self.hidden, ('embed', 'mlp'), name='fc1', dtype=self.dtype)(emb)
    h = nn.with_logical_constraint(h, ('activation_batch', 'activation_mlp'))  # [B, H]
    h = jax.nn.gelu(h, approximate=False)
    return emb + clip.Dense(emb.shape[-1], ('mlp', 'embed'), name='fc2',
                            dtype=self.dtype)(h)


class WordsTower(nn.Module):
  """A caption's embedding: the mean of its words' learned vectors (id 0 pads; a caption
  with no known word embeds to 0). Sums over a word bag, so word order is not seen."""
  vocab: int          # ids in [0, vocab)
  out_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids):  # [B, L] int -> [B, out]
    # CLIP's token embedding init (normal, std 0.02).
    table = self.param('word_embedding', nn.with_logical_partitioning(
        nn.initializers.normal(0.02), ('vocab', 'embed')), (self.vocab, self.out_dim),
                       jnp.float32)
    mask = (ids > 0).astype(jnp.float32)[..., None]  # [B, L, 1]
    total = jnp.sum(jnp.take(table, ids, axis=0) * mask, axis=-2)  # [B, out]
    return (total / jnp.maximum(jnp.sum(mask, axis=-2), 1.0)).astype(self.dtype)


class EmbeddingCLIP(nn.Module):
  """Image head, text head and a log logit scale: clip.CLIP's interface on embeddings."""
  head: str = 'mlp'
  out_dim: int = 0
  hidden: int = 1024
  logit_scale_init: float = math.log(1 / 0.07)
  dtype: Any = jnp.float32
  # 0: the text input is the reference's text embedding [B, D], through a head like the
  # image's; > 0: it is word ids [B, L] into a WordsTower of this vocabulary (out_dim wide).
  text_vocab: int = 0

  def setup(self):
    kw = dict(head=self.head, out_dim=self.out_dim, hidden=self.hidden, dtype=self.dtype)
    self.image = EmbeddingHead(**kw)
    if self.text_vocab:
      if self.out_dim < 1:
        raise ValueError('EmbeddingCLIP: a words text tower needs out_dim >= 1')
      self.text = WordsTower(self.text_vocab, self.out_dim, self.dtype)
    else:
      self.text = EmbeddingHead(**kw)
    self.logit_scale = self.param(
        'logit_scale', nn.with_logical_partitioning(
            nn.initializers.constant(self.logit_scale_init), ()), (), jnp.float32)

  def encode_image(self, image_emb):  # [B, D] -> [B, E]
    return self.image(losses.normalize(image_emb))

  def encode_text(self, text):  # [B, D] embeddings, or [B, L] word ids -> [B, E]
    return self.text(text if self.text_vocab else losses.normalize(text))

  def __call__(self, image_emb, text_emb):
    return self.encode_image(image_emb), self.encode_text(text_emb), self.logit_scale
