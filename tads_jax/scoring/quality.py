"""Intrinsic quality operators: image, text and cross-modal scores, one float32 per sample.

Each operator is registered by name (registry.py) so that a config lists the ones to run
and the report lists what was run. Image scores are in the units of images scaled to
[0, 1] (multiply sharpness by 255**2, contrast and colourfulness by 255 to compare with
thresholds quoted for 0..255 images); the value function standardizes features anyway.
"""

from collections import Counter
from typing import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tads_jax.models import words as words_lib
from tads_jax.scoring.registry import register

# ITU-R BT.601 luma weights, as OpenCV's and PIL's RGB -> L conversions use.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def luminance(images):  # [B, H, W, 3] -> [B, H, W]
  return images @ jnp.asarray(LUMA_WEIGHTS, images.dtype)


def flip_images(images):  # [B, H, W, 3] -> [B, H, W, 3]
  """Horizontal flip, for the embeddings that flipped_clip_score reads."""
  return images[:, :, ::-1, :]


def _sizes(sizes):  # [B, 2] int (height, width) -> two float32 [B]
  sizes = jnp.asarray(sizes, jnp.float32)
  return sizes[:, 0], sizes[:, 1]


# ----------------------------------------------------------------------------- image


@register('width', 'image')
def width(sizes):  # [B, 2] -> [B]
  """Original width: the fixed-size chunk has lost it, so it comes from `sizes`."""
  return _sizes(sizes)[1]


@register('height', 'image')
def height(sizes):  # [B, 2] -> [B]
  return _sizes(sizes)[0]


@register('aspect_ratio', 'image')
def aspect_ratio(sizes):  # [B, 2] -> [B]
  """Long side over short side (>= 1), so that very tall and very wide both score high,
  as DataComp's basic filter (aspect <= 3) reads it."""
  h, w = _sizes(sizes)
  return jnp.maximum(h, w) / jnp.maximum(jnp.minimum(h, w), 1.0)


@register('sharpness', 'image')
def sharpness(images):  # [B, H, W, 3] float32 in [0, 1] -> [B]
  """Variance of the Laplacian of the luminance: low for blurred or flat images.

  5-point stencil with mirrored borders, the same operator as scipy.ndimage.laplace.
  """
  y = luminance(images)  # [B, H, W]
  p = jnp.pad(y, ((0, 0), (1, 1), (1, 1)), mode='symmetric')
  lap = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 4.0 * y
  return jnp.var(lap, axis=(1, 2))


@register('contrast', 'image')
def contrast(images):  # [B, H, W, 3] -> [B]
  """RMS contrast: standard deviation of the luminance."""
  return jnp.std(luminance(images), axis=(1, 2))


@register('colourfulness', 'image')
def colourfulness(images):  # [B, H, W, 3] -> [B]
  """Hasler & Suesstrunk (2003): spread plus 0.3 x mean of the opponent colour axes."""
  r, g, b = images[..., 0], images[..., 1], images[..., 2]
  rg = r - g
  yb = 0.5 * (r + g) - b
  spread = jnp.sqrt(jnp.var(rg, axis=(1, 2)) + jnp.var(yb, axis=(1, 2)))
  mean = jnp.sqrt(jnp.mean(rg, axis=(1, 2)) ** 2 + jnp.mean(yb, axis=(1, 2)) ** 2)
  return spread + 0.3 * mean


@register('entropy', 'image')
def entropy(images, bins: int = 256):  # [B, H, W, 3] -> [B]
  """Shannon entropy (bits) of the luminance histogram: near 0 for blank or posterized
  images, up to log2(bins) for noise.

  Bins are [i/bins, (i+1)/bins), the last one closed, as np.histogram(range=(0, 1)).
  The histogram is a scatter-add into B * bins counters, not a one-hot over pixels, so
  memory stays at the size of the chunk.
  """
  y = luminance(images)
  batch = y.shape[0]
  idx = jnp.clip(jnp.floor(y * bins), 0, bins - 1).astype(jnp.int32).reshape(batch, -1)
  idx = idx + bins * jnp.arange(batch, dtype=jnp.int32)[:, None]
  counts = jax.ops.segment_sum(jnp.ones(idx.size, jnp.float32), idx.reshape(-1),
                               num_segments=batch * bins).reshape(batch, bins)
  prob = counts / counts.sum(axis=1, keepdims=True)
  return -jnp.sum(jnp.where(prob > 0, prob * jnp.log2(jnp.where(prob > 0, prob, 1.0)), 0.0),
                  axis=1)


@register('near_uniform', 'image')
def near_uniform(images, threshold: float = 0.02):  # [B, H, W, 3] -> [B] in {0, 1}
  """1.0 for blank or almost single-tone images: luminance std under `threshold`
  (0.02 is about 5 grey levels of 255)."""
  return (contrast(images) < threshold).astype(jnp.float32)


# ----------------------------------------------------------------------------- text
# Text operators run as plain Python over the list of captions, not under jit: captions are
# variable-length Unicode, and splitting words, Unicode character classes and n-gram
# counting need dynamic shapes and hash maps that XLA has no good form for (a padded byte
# array would lose the Unicode classes). They cost microseconds per caption, far below
# decoding the image, so jit would buy nothing.

def _repetition(items: Sequence, n: int) -> float:
  """Share of n-gram occurrences whose n-gram occurs more than once (Data-Juicer's
  word_repetition ratio); 0 when there are fewer than n items."""
  grams = [tuple(items[i:i + n]) for i in range(len(items) - n + 1)]
  if not grams:
    return 0.0
  counts = Counter(grams)
  return sum(c for c in counts.values() if c > 1) / len(grams)


@register('characters', 'text')
def characters(captions):  # list of B str -> [B]
  return np.array([len(c) for c in captions], np.float32)


@register('words', 'text')
def words(captions):  # list of B str -> [B]
  """Whitespace-separated words, as DataComp's basic filter counts them."""
  return np.array([len(c.split()) for c in captions], np.float32)


@register('alnum_ratio', 'text')
def alnum_ratio(captions):  # list of B str -> [B]
  """Share of characters that are letters or digits (0 for an empty caption)."""
  return np.array([sum(ch.isalnum() for ch in c) / len(c) if c else 0.0 for c in captions],
                  np.float32)


@register('special_char_ratio', 'text')
def special_char_ratio(captions):  # list of B str -> [B]
  """Share of characters that are neither letters, digits nor whitespace: punctuation,
  symbols, emoji. With alnum_ratio and the whitespace share it sums to 1."""
  return np.array([sum(not (ch.isalnum() or ch.isspace()) for ch in c) / len(c) if c else 0.0
                   for c in captions], np.float32)


@register('word_repetition', 'text')
def word_repetition(captions, n: int = 2):  # list of B str -> [B]
  """Share of word n-grams (bigrams by default) that repeat: spam such as
  'buy buy buy now' scores high. Bigrams, because natural captions repeat 'a' and 'the'."""
  return np.array([_repetition(words_lib.words(c), n) for c in captions], np.float32)


@register('char_repetition', 'text')
def char_repetition(captions, n: int = 10):  # list of B str -> [B]
  """Share of character n-grams (10, Data-Juicer's default) that repeat, on the lowercased
  caption: catches repeated phrases that word splitting misses ('clickhereclickhere')."""
  return np.array([_repetition(c.lower(), n) for c in captions], np.float32)


@register('vocab_share', 'text')
def vocab_share(captions, vocab: frozenset = frozenset()):  # list of B str -> [B]
  """Share of words found in `vocab` (lowercase words; e.g. words_from_bpe_vocab of the
  reference tokenizer): low for random strings, URLs and foreign-script captions.
  An empty caption scores 0."""
  if not vocab:
    raise ValueError('vocab_share needs a non-empty vocab setting '
                     "(params={'vocab_share': {'vocab': ...}})")
  vocab = vocab if isinstance(vocab, (set, frozenset)) else frozenset(vocab)
  shares = []
  for c in captions:
    ws = words_lib.words(c)
    shares.append(sum(w in vocab for w in ws) / len(ws) if ws else 0.0)
  return np.array(shares, np.float32)


def words_from_bpe_vocab(vocab: Mapping[str, int] | Iterable[str]) -> frozenset:
  """Whole words of a CLIP BPE vocabulary (vocab.json): the tokens that end a word carry
  '</w>'; those made only of letters and digits are kept, lowercased."""
  out = set()
  for token in vocab:
    if token.endswith('</w>'):
      word = token[:-4].lower()
      if words_lib.words(word) == [word]:  # letters and digits only
        out.add(word)
  return frozenset(out)


# ----------------------------------------------------------------------------- cross-modal


@register('clip_score', 'crossmodal')
def clip_score(image_emb, text_emb):  # [B, D], [B, D] -> [B]
  """Cosine of image and caption under the reference CLIP (inputs are L2-normalized)."""
  return jnp.sum(image_emb * text_emb, axis=-1)


@register('flipped_clip_score', 'crossmodal')
def flipped_clip_score(flipped_image_emb, text_emb):  # [B, D], [B, D] -> [B]
  """Cosine of the caption with the horizontally flipped image (T-MARS-style guard): when
  the caption is matched by text written in the image, the mirrored text no longer reads,
  so this drops well below clip_score; a real depiction is about mirror-invariant."""
  return jnp.sum(flipped_image_emb * text_emb, axis=-1)


@register('caption_specificity', 'crossmodal')
def caption_specificity(image_emb, text_emb, mask=None):  # [B, D], [B, D], [B] -> [B]
  """Cosine of a caption to its own image minus its mean cosine to the other images of the
  chunk.

  A generic caption ('image', 'photo of a thing') is about as close to every image as to its
  own, so its clip_score is not small while it tells nothing; the margin over the chunk's
  other images measures how much the caption singles out its image, as the contrastive
  loss sees it. Chunks of a few thousand pool samples make the mean a stable estimate of
  the pool. Mean cosine is linear, so it is one dot with the sum of the other images:
  O(B D), not O(B^2 D). Padding rows (mask False) are left out of the mean; with fewer than
  two valid rows the background is taken as 0.
  """
  if mask is None:
    mask = jnp.ones(image_emb.shape[0], bool)
  weights = mask.astype(image_emb.dtype)  # [B]
  total = weights @ image_emb  # [D]
  others = jnp.maximum(weights.sum() - weights, 1.0)  # [B]
  background = (text_emb @ total - weights * jnp.sum(text_emb * image_emb, -1)) / others
  return clip_score(image_emb, text_emb) - background
