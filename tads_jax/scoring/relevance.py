"""Task relevance: how close a sample is to what each downstream task asks for.

Each task is summarized by prototypes in the reference CLIP space; a sample scores the mean
of its top-m cosines to them, once for its image and once for its caption. Top-m rather
than max so that one lucky match to a single class or centroid counts less than being near
several; m = 1 is the plain max.
"""

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tads_jax.scoring import kmeans


def class_prototypes(text_emb):  # [C, T, D] -> [C, D]
  """Zero-shot classifier weights as CLIP builds them: per class, the mean over prompt
  templates of the normalized text embeddings, renormalized."""
  text_emb = jnp.asarray(text_emb, jnp.float32)
  if text_emb.ndim != 3:
    raise ValueError(f'class_prototypes: text_emb must be [classes, templates, D], '
                     f'got shape {text_emb.shape}')
  return kmeans.normalize(kmeans.normalize(text_emb).mean(axis=1))


def retrieval_prototypes(image_emb, text_emb, k: int, key, iters: int = 20,
                         init: str = 'kmeans++'):
  """(image prototypes [k', D], text prototypes [k', D]): spherical k-means centroids of a
  retrieval task's train images and, separately, of its train captions, so that each side
  of a pool sample is compared with the same modality. k' = min(k, N): a task with fewer
  train pairs than k uses every pair as its own prototype."""
  image_emb, text_emb = np.asarray(image_emb), np.asarray(text_emb)
  if image_emb.ndim != 2 or image_emb.shape != text_emb.shape:
    raise ValueError(f'retrieval_prototypes: image_emb and text_emb must both be [N, D], got '
                     f'{image_emb.shape} and {text_emb.shape}')
  k = min(k, image_emb.shape[0])
  image_key, text_key = jax.random.split(key)
  image_protos = kmeans.fit(image_emb, k, iters, image_key, init=init).centroids
  text_protos = kmeans.fit(text_emb, k, iters, text_key, init=init).centroids
  return image_protos, text_protos


def _top_m_mean(sims_t, top_m: int):  # [P, B] -> [B]
  """Mean of each column's top m (m capped at P).

  The prototypes are the rows, and a loop over them inserts each row into m running [B]
  vectors kept sorted (a max/min pair per slot): contiguous SIMD sweeps that cost a few
  percent of the matmul, where lax.top_k on [B, P] costs ~40% of it on CPU.
  """
  m = min(top_m, sims_t.shape[0])

  def insert(i, tops):
    value, out = sims_t[i], []
    for top in tops:
      out.append(jnp.maximum(top, value))
      value = jnp.minimum(top, value)
    return tuple(out)

  init = tuple(jnp.full(sims_t.shape[1:], -jnp.inf, jnp.float32) for _ in range(m))
  return sum(jax.lax.fori_loop(0, sims_t.shape[0], insert, init, unroll=4)) / m


@functools.partial(jax.jit, static_argnames=('top_m',))
def relevance(emb, prototypes, top_m: int = 1):  # [B, D], [P, D] -> [B]
  """Mean of the top-m cosines of each (L2-normalized) row to the prototypes; m is capped
  at P."""
  if top_m < 1:
    raise ValueError(f'relevance: top_m must be >= 1, got {top_m}')
  return _top_m_mean(jnp.dot(prototypes, emb.T, preferred_element_type=jnp.float32), top_m)


def relevance_vector(image_emb, text_emb, tasks_prototypes: Sequence, top_m: int = 1):
  """[B, 2T] relevance, columns (task 0 image, task 0 text, task 1 image, ...).

  Each entry of tasks_prototypes is either one array [P, D], used for both sides (a
  classification task's class embeddings: images are scored as a zero-shot classifier
  scores them), or a pair (image prototypes, text prototypes) from retrieval_prototypes.
  """
  if top_m < 1:
    raise ValueError(f'relevance: top_m must be >= 1, got {top_m}')
  if not tasks_prototypes:
    raise ValueError('relevance_vector: no task prototypes given')
  pairs = []
  for i, protos in enumerate(tasks_prototypes):
    if isinstance(protos, (tuple, list)):
      if len(protos) != 2:
        raise ValueError(f'relevance_vector: task {i}: expected (image, text) prototypes, got '
                         f'{len(protos)} arrays')
      pairs.append((jnp.asarray(protos[0], jnp.float32), jnp.asarray(protos[1], jnp.float32)))
    else:
      protos = jnp.asarray(protos, jnp.float32)
      pairs.append((protos, protos))
    for side in pairs[-1]:
      if side.ndim != 2 or side.shape[1] != image_emb.shape[-1]:
        raise ValueError(f'relevance_vector: task {i}: prototypes must be [P, '
                         f'{image_emb.shape[-1]}], got {side.shape}')
  return _relevance_vector(image_emb, text_emb, tuple(pairs), top_m)


@functools.partial(jax.jit, static_argnames=('top_m',))
def _relevance_vector(image_emb, text_emb, pairs, top_m):
  """One matmul per side against all tasks' prototypes stacked, then top-m per task."""
  per_side = []
  for side, emb in enumerate((image_emb, text_emb)):
    stacked = jnp.concatenate([p[side] for p in pairs], axis=0)  # [sum P, D]
    sims_t = jnp.dot(stacked, emb.T, preferred_element_type=jnp.float32)  # [sum P, B]
    bounds = np.cumsum([0] + [p[side].shape[0] for p in pairs])
    per_side.append([_top_m_mean(sims_t[a:b], top_m) for a, b in zip(bounds, bounds[1:])])
  return jnp.stack([c for pair in zip(*per_side) for c in pair], axis=1)  # [B, 2T]
