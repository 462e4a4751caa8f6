"""Counter-based randomness: u(seed, domain, index, stream) in [0, 1), vectorized over index.

Every draw is a pure function of those four numbers, with no generator state, so that any
sample, and so any shard, can be made alone and in any order with the same result.
"""

import numpy as np

from tads_jax.data.synthetic.vocabulary import TASK_NAMES

_POOL, _TRUSTED = 0, 1
_TASK_DOMAIN = {(t, s): 16 + 2 * i + j for i, t in enumerate(TASK_NAMES)
                for j, s in enumerate(('train', 'eval'))}
_NUM_STREAMS = 64


class _S:
  """Stream ids: one independent uniform per (sample, purpose)."""
  OFFTASK, SHAPE, COLOR, TEXTURE, SIZE = 0, 1, 2, 3, 4
  BG_KIND, BG_GREY, BG_TINT0, BG_TINT1, BG_ANGLE = 5, 6, 7, 11, 15  # a tint takes 4 streams
  CX, CY, RADIUS, ROTATION, TEX_ANGLE, TEX_PERIOD, JITTER = 16, 17, 18, 19, 20, 21, 22  # +3
  TEMPLATE, SYN_SIZE, SYN_COLOR, SYN_SHAPE, SYN_TEX, SYN_BG, FILLER = 26, 27, 28, 29, 30, 31, 32
  NOISE, FORMAT, PARTIAL_ATTR, PARTIAL_VALUE, OP_A, OP_B, OP_C = 33, 34, 35, 36, 37, 38, 39
  NEAR_DX, NEAR_DY, NEAR_COLOR, NEAR_QUALITY, PARAPHRASE = 40, 41, 42, 43, 44
  CANDIDATE = 48  # _CANDIDATES streams
  PARAPHRASE_DRAWS = 56  # 7 streams: template .. filler for a paraphrased caption


def _mix64(x: np.ndarray) -> np.ndarray:
  """splitmix64's finalizer: a bijection of uint64 that scatters nearby counters."""
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


def _uniform(seed: int, domain: int, index, stream) -> np.ndarray:
  """Uniforms in [0, 1) that depend only on (seed, domain, index, stream); broadcasts."""
  with np.errstate(over='ignore'):
    key = _mix64(np.asarray([seed * 0x10001 + domain], dtype=np.uint64)
                 + np.uint64(0x9E3779B97F4A7C15))
    counter = (np.asarray(index, dtype=np.uint64) * np.uint64(_NUM_STREAMS)
               + np.asarray(stream, dtype=np.uint64))
    bits = _mix64(_mix64(counter ^ key) + key)
  return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _choice(u: np.ndarray, n: int) -> np.ndarray:
  return np.minimum((u * n).astype(np.int64), n - 1)
