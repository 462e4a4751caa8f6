"""Task relevance: how close a sample is to what each downstream task asks for.

Each task is summarized by prototypes in the reference CLIP space; a sample scores the mean
of its top-m cosines to them, once for its image and once for its caption. Top-m rather
than max so that one lucky match to a single class or centroid counts less than being near
several; m = 1 is the plain max.

Calibrated relevance (features.relevance_calibration='zscore') first turns each
prototype's cosines into z-scores over the pool (its mean and std there), so that a class
whose prototype sits close to much of the pool (a tight or generic prompt) does not win
the max for samples it only loosely fits: every class and every retrieval centroid then
competes on how unusual the match is, as hubness corrections (CSLS) do for retrieval.

Target relevance (features.target_relevance) compares a sample's image with each task's
train images themselves rather than with prototypes: its largest cosine to any of them,
NormSim_inf per task (Wang et al. 2024), so that a sample near a few real task images counts
even where no class prompt or retrieval centroid sits.
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


TARGET_BLOCK = 4096  # target rows per step of nearest_target's scan


def target_blocks(targets, block: int = TARGET_BLOCK) -> np.ndarray:  # [T, D] -> [K, b, D]
  """The targets cut into K equal blocks of b <= block rows for nearest_target, the last
  one filled up with copies of the first target (a repeat changes no max)."""
  targets = np.asarray(targets, np.float32)
  if targets.ndim != 2 or not targets.shape[0]:
    raise ValueError(f'target_blocks: expected a non-empty [T, D] array, got {targets.shape}')
  b = min(block, targets.shape[0])
  k = -(-targets.shape[0] // b)
  filler = np.broadcast_to(targets[:1], (k * b - targets.shape[0], targets.shape[1]))
  return np.concatenate([targets, filler]).reshape(k, b, targets.shape[1])


@jax.jit
def nearest_target(emb, blocks):  # [B, D], [K, b, D] -> [B]
  """Each (L2-normalized) row's largest cosine to any target, one block of targets at a
  time (memory B x b): NormSim_inf without its absolute value, so that it ranks as the
  relevance columns do (CLIP image-image cosines are nearly all positive)."""
  def step(best, block):
    sims = jnp.dot(emb, block.T, preferred_element_type=jnp.float32)  # [B, b]
    return jnp.maximum(best, jnp.max(sims, axis=-1)), None
  best, _ = jax.lax.scan(step, jnp.full(emb.shape[:1], -jnp.inf, jnp.float32), blocks)
  return best


def prototype_moments(emb, prototypes) -> np.ndarray:  # [B, D], [P, D] -> [3, P]
  """(row count, sum, sum of squares) of each prototype's cosines over the rows, float64:
  summed over a pool's chunks they give calibration()'s mean and std."""
  sims = np.dot(np.asarray(emb, np.float32), np.asarray(prototypes, np.float32).T)  # [B, P]
  sims = sims.astype(np.float64)
  return np.stack([np.full(sims.shape[1], float(sims.shape[0])), sims.sum(axis=0),
                   (sims ** 2).sum(axis=0)])


def calibration(moments) -> tuple[np.ndarray, np.ndarray]:  # [3, P] -> mean [P], std [P]
  """Each prototype's mean and std of cosine from prototype_moments summed over a pool; a
  prototype whose cosines do not vary (or a pool without rows) gets std 1."""
  count, total, squares = np.asarray(moments, np.float64)
  mean = total / np.maximum(count, 1.0)
  std = np.sqrt(np.maximum(squares / np.maximum(count, 1.0) - mean ** 2, 0.0))
  return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def task_sides(tasks_prototypes: Sequence) -> list:
  """[(image prototypes, text prototypes)] per task: a single array (a classification
  task's class embeddings) serves both sides."""
  return [tuple(p) if isinstance(p, (tuple, list)) else (p, p) for p in tasks_prototypes]


def relevance_vector(image_emb, text_emb, tasks_prototypes: Sequence, top_m: int = 1,
                     calibrations: Sequence | None = None):
  """[B, 2T] relevance, columns (task 0 image, task 0 text, task 1 image, ...).

  Each entry of tasks_prototypes is either one array [P, D], used for both sides (a
  classification task's class embeddings: images are scored as a zero-shot classifier
  scores them), or a pair (image prototypes, text prototypes) from retrieval_prototypes.
  calibrations (optional): per task ((image mean [P], std [P]), (text mean, std)) from
  calibration(); each cosine becomes (cosine - mean) / std before the top-m.
  """
  if top_m < 1:
    raise ValueError(f'relevance: top_m must be >= 1, got {top_m}')
  if not tasks_prototypes:
    raise ValueError('relevance_vector: no task prototypes given')
  if calibrations is not None and len(calibrations) != len(tasks_prototypes):
    raise ValueError(f'relevance_vector: {len(calibrations)} calibrations for '
                     f'{len(tasks_prototypes)} tasks')
  pairs = []
  for i, sides in enumerate(task_sides(tasks_prototypes)):
    if len(sides) != 2:
      raise ValueError(f'relevance_vector: task {i}: expected (image, text) prototypes, got '
                       f'{len(sides)} arrays')
    pairs.append(tuple(jnp.asarray(side, jnp.float32) for side in sides))
    for side in pairs[-1]:
      if side.ndim != 2 or side.shape[1] != image_emb.shape[-1]:
        raise ValueError(f'relevance_vector: task {i}: prototypes must be [P, '
                         f'{image_emb.shape[-1]}], got {side.shape}')
  shifts = None
  if calibrations is not None:
    shifts = []
    for i, (task, sides) in enumerate(zip(calibrations, pairs)):
      shifts.append(tuple((jnp.asarray(m, jnp.float32), jnp.asarray(s, jnp.float32))
                          for m, s in task))
      for (mean, std), protos in zip(shifts[-1], sides):
        if mean.shape != (protos.shape[0],) or std.shape != mean.shape:
          raise ValueError(f'relevance_vector: task {i}: calibration must be [{protos.shape[0]}]'
                           f' per side, got {mean.shape} and {std.shape}')
    shifts = tuple(shifts)
  return _relevance_vector(image_emb, text_emb, tuple(pairs), top_m, shifts)


@functools.partial(jax.jit, static_argnames=('top_m',))
def _relevance_vector(image_emb, text_emb, pairs, top_m, shifts=None):
  """One matmul per side against all tasks' prototypes stacked (each row z-scored by its
  calibration when given), then top-m per task."""
  per_side = []
  for side, emb in enumerate((image_emb, text_emb)):
    stacked = jnp.concatenate([p[side] for p in pairs], axis=0)  # [sum P, D]
    sims_t = jnp.dot(stacked, emb.T, preferred_element_type=jnp.float32)  # [sum P, B]
    if shifts is not None:
      mean = jnp.concatenate([s[side][0] for s in shifts])  # [sum P]
      std = jnp.concatenate([s[side][1] for s in shifts])
      sims_t = (sims_t - mean[:, None]) / std[:, None]
    bounds = np.cumsum([0] + [p[side].shape[0] for p in pairs])
    per_side.append([_top_m_mean(sims_t[a:b], top_m) for a, b in zip(bounds, bounds[1:])])
  return jnp.stack([c for pair in zip(*per_side) for c in pair], axis=1)  # [B, 2T]
