"""The embedding proxy: CLIP's interface on frozen reference embeddings.

Two light heads (linear, or a 2-layer MLP with a residual) map the reference CLIP's image
and text embeddings [N, D] into the proxy's space, with a learnable log temperature: cheap
enough for meta-learning and for evaluating many subsets of a large pool. The pixel proxy
is clip.CLIP itself; train.make_model builds either from a TrainConfig.
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


class EmbeddingCLIP(nn.Module):
  """Image head, text head and a log logit scale: clip.CLIP's interface on embeddings."""
  head: str = 'mlp'
  out_dim: int = 0
  hidden: int = 1024
  logit_scale_init: float = math.log(1 / 0.07)
  dtype: Any = jnp.float32

  def setup(self):
    kw = dict(head=self.head, out_dim=self.out_dim, hidden=self.hidden, dtype=self.dtype)
    self.image = EmbeddingHead(**kw)
    self.text = EmbeddingHead(**kw)
    self.logit_scale = self.param(
        'logit_scale', nn.with_logical_partitioning(
            nn.initializers.constant(self.logit_scale_init), ()), (), jnp.float32)

  def encode_image(self, image_emb):  # [B, D] -> [B, E]
    return self.image(losses.normalize(image_emb))

  def encode_text(self, text_emb):  # [B, D] -> [B, E]
    return self.text(losses.normalize(text_emb))

  def __call__(self, image_emb, text_emb):
    return self.encode_image(image_emb), self.encode_text(text_emb), self.logit_scale
