"""Word ids for the meta-learning proxy's word-bag text tower (proxy.WordsTower).

The tower learns one vector per word from scratch, as a CLIP trained on the subset learns
its text tower, so a caption that names the wrong attributes, or too few, teaches the proxy
that; the reference's text embeddings already know every word and hide it. Words are
lowercase runs of Unicode letters and digits (`words`, which the quality operators also
count with): no tokenizer file is needed, and a task's prompt and a caption that share a
word share its id. Id 0 pads.
"""

import collections
import re
from typing import Iterable, Sequence

import numpy as np

# Distinct words kept: every word of the tasks' texts, then the pool's most frequent.
MAX_VOCAB = 16384
# Words kept per text, in order (the synthetic world's captions have at most 12).
MAX_WORDS = 32
_WORD = re.compile(r'[^\W_]+')  # runs of Unicode letters and digits


def words(text: str) -> list[str]:
  """The text's lowercase words without punctuation, in order."""
  return _WORD.findall(text.lower())


def vocabulary(required: Iterable[str], pool: Iterable[str],
               size: int = MAX_VOCAB) -> dict[str, int]:
  """{word: id}, ids from 1: every word of the `required` texts first (the tasks' prompts
  and captions: the outer loss reads them), in order of first appearance, then the pool's
  other words by falling count (ties by first appearance) until `size` words in all."""
  if not isinstance(size, int) or size < 1:
    raise ValueError(f'vocabulary: size must be an integer >= 1, got {size!r}')
  vocab = {}
  for text in required:
    for word in words(text):
      vocab.setdefault(word, len(vocab) + 1)
  if len(vocab) > size:
    raise ValueError(f"vocabulary: the tasks' texts have {len(vocab)} distinct words, "
                     f'more than size={size}')
  counts = collections.Counter()
  for text in pool:
    counts.update(words(text))
  for word, _ in counts.most_common():  # Counter keeps first-seen order among ties
    if len(vocab) >= size:
      break
    vocab.setdefault(word, len(vocab) + 1)
  return vocab


def word_ids(texts: Sequence[str], vocab: dict[str, int],
             length: int = MAX_WORDS) -> np.ndarray:  # -> [N, length] int16 or int32
  """Each text's first `length` words that are in `vocab`, as ids, 0-padded (a word
  outside the vocabulary is dropped, so a text of unknown words is all padding). int16
  when every id fits (MAX_VOCAB does): 64 bytes per pool row at MAX_WORDS, not 128."""
  dtype = np.int16 if max(vocab.values(), default=0) <= np.iinfo(np.int16).max else np.int32
  out = np.zeros((len(texts), length), dtype)
  for i, text in enumerate(texts):
    ids = [vocab[w] for w in words(text) if w in vocab][:length]
    out[i, :len(ids)] = ids
  return out


def caption_word_targets(captions: Sequence[str],
                         min_count: int) -> tuple[list[str], np.ndarray]:
  """(vocabulary, targets [N, V] float32) for a word-classification loss over captions
  (losses.word_classification_loss): the words that at least `min_count` captions use,
  sorted, and each caption's distribution over them, uniform over the distinct words it
  uses (a zero row when it uses none)."""
  if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
    raise ValueError(f'caption_word_targets: min_count must be an integer >= 1, got '
                     f'{min_count!r}')
  caption_words = [set(words(caption)) for caption in captions]
  counts = collections.Counter(w for ws in caption_words for w in ws)
  vocab = sorted(w for w, n in counts.items() if n >= min_count)
  if not vocab:
    raise ValueError(f'caption_word_targets: no word is in {min_count} of the '
                     f'{len(captions)} captions')
  index = {w: i for i, w in enumerate(vocab)}
  targets = np.zeros((len(captions), len(vocab)), np.float32)
  for row, ws in enumerate(caption_words):
    hits = [index[w] for w in ws if w in index]
    targets[row, hits] = 1.0 / max(len(hits), 1)
  return vocab, targets
