"""Byte-level BPE trained on captions, written as a CLIP tokenizer folder.

When a pool has no pretrained CLIP, the reference CLIP is trained from scratch on trusted
captions; its tokenizer is learned here and saved in the layout of OpenAI CLIP's
vocab.json / merges.txt, so that `transformers.CLIPTokenizerFast` (and with it
`tads_jax.models.tokenizer` and `load_clip`) reads it like any Hub checkpoint:

    vocab.json   256 byte characters, the same with '</w>', one token per merge,
                 '<|startoftext|>', '<|endoftext|>' (so EOS has the largest id, as in CLIP)
    merges.txt   '#version: 0.2', then 'left right' per merge, in the order learned

Words are cut by the normalizer and pre-tokenizer CLIPTokenizerFast runs (NFC, whitespace
runs to one space, lower case, CLIP's regex, byte-level characters), built from the same
`tokenizers` components with the same settings, so the merges learned apply to exactly
the words seen at encoding time.

The trainer is pure Python over word counts rather than `tokenizers.trainers.BpeTrainer`:
BpeTrainer numbers its vocabulary its own way (special tokens first, then the characters
seen) and breaks count ties by internal ids, so its merges would need re-numbering and its
tie order could not be stated. With incremental pair counts this trainer learns 1,500
merges from 5,000 captions in under a second on one CPU core.
"""

import collections
import contextlib
import heapq
import json
import os
import shutil
import tempfile
from typing import Iterable

from tokenizers import Regex, normalizers, pre_tokenizers

BOS = '<|startoftext|>'
EOS = '<|endoftext|>'
END_OF_WORD = '</w>'
# CLIP's pre-tokenizer pattern, as transformers' CLIPTokenizerFast builds it.
CLIP_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"""
                r"""[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""")
NUM_BASE_TOKENS = 2 * 256  # byte characters, alone and ending a word
MIN_VOCAB_SIZE = NUM_BASE_TOKENS + 2  # ... plus BOS and EOS
TOKENIZER_FILES = ('vocab.json', 'merges.txt', 'tokenizer_config.json',
                   'special_tokens_map.json')


def bytes_to_unicode() -> list[str]:
  """GPT-2 / CLIP's printable character for each byte, in CLIP's vocabulary order.

  Printable Latin-1 bytes map to themselves and come first; the other 68 bytes map to
  U+0100 onwards, in byte order.
  """
  printable = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
               + list(range(ord('®'), ord('ÿ') + 1)))
  chars = [chr(b) for b in printable]
  chars += [chr(256 + n) for n, _ in enumerate(b for b in range(256) if b not in printable)]
  return chars


_NORMALIZER = normalizers.Sequence(
    [normalizers.NFC(), normalizers.Replace(Regex(r'\s+'), ' '), normalizers.Lowercase()])
_PRE_TOKENIZER = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior='removed', invert=True),
    pre_tokenizers.ByteLevel(add_prefix_space=False),
])


def pre_tokenize(text: str) -> list[str]:
  """CLIP's words of `text`, in byte-level characters (each gets '</w>' in the BPE)."""
  # Special-token strings never reach the BPE when encoding (the tokenizer matches them
  # first), so they are not words to learn from either.
  text = text.replace(BOS, ' ').replace(EOS, ' ')
  return [piece for piece, _ in _PRE_TOKENIZER.pre_tokenize_str(
      _NORMALIZER.normalize_str(text))]


def count_words(texts: Iterable[str]) -> collections.Counter:
  """Word (tuple of symbols, the last one ending in '</w>') -> occurrences."""
  counts = collections.Counter()
  for i, text in enumerate(texts):
    if not isinstance(text, str):
      raise TypeError(f'texts[{i}]: expected a string, got {type(text).__name__}')
    counts.update(pre_tokenize(text))
  return collections.Counter(
      {tuple(word[:-1]) + (word[-1] + END_OF_WORD,): n for word, n in counts.items()})


def _merge_word(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
  """Every occurrence of `pair` in `word` merged, left to right (as the BPE encoder does)."""
  out, i = [], 0
  while i < len(word):
    if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
      out.append(word[i] + word[i + 1])
      i += 2
    else:
      out.append(word[i])
      i += 1
  return tuple(out)


def learn_merges(word_counts: dict[tuple[str, ...], int], max_new_tokens: int,
                 known: set[str] = frozenset()) -> list[tuple[str, str]]:
  """Greedy BPE: merge the most frequent adjacent pair until `max_new_tokens` new tokens.

  Ties go to the smallest (left, right) pair in code-point order, so the result depends on
  the counts alone, not on the order of the texts. Stops early when no pair occurs twice.
  A merge whose result is already a token (in `known` or made before) is kept but adds no
  token, as in tokenizers' BpeTrainer.
  """
  words = list(word_counts)  # their order is irrelevant: pair counts are sums
  freqs = [word_counts[w] for w in words]
  pair_counts = collections.Counter()
  where = collections.defaultdict(set)  # pair -> indices of words that may contain it
  for index, word in enumerate(words):
    for pair in zip(word, word[1:]):
      pair_counts[pair] += freqs[index]
      where[pair].add(index)
  heap = [(-n, pair) for pair, n in pair_counts.items()]
  heapq.heapify(heap)
  tokens, merges, new_tokens = set(known), [], 0
  while new_tokens < max_new_tokens:
    # Lazy deletion: an entry is current only while its count still matches.
    while heap and pair_counts.get(heap[0][1], 0) != -heap[0][0]:
      heapq.heappop(heap)
    if not heap or -heap[0][0] < 2:
      break
    _, best = heapq.heappop(heap)
    merges.append(best)
    merged = best[0] + best[1]
    if merged not in tokens:
      tokens.add(merged)
      new_tokens += 1
    changed = set()
    for index in where.pop(best):
      old = words[index]
      new = _merge_word(old, best)
      if new == old:  # stale index: an earlier merge already consumed the pair here
        continue
      for pair in zip(old, old[1:]):
        pair_counts[pair] -= freqs[index]
        changed.add(pair)
      for pair in zip(new, new[1:]):
        pair_counts[pair] += freqs[index]
        where[pair].add(index)
        changed.add(pair)
      words[index] = new
    for pair in changed:
      if pair_counts[pair] > 0:
        heapq.heappush(heap, (-pair_counts[pair], pair))
      else:
        del pair_counts[pair]
  return merges


@contextlib.contextmanager
def atomic_folder(folder: str):
  """Yields a temporary folder that replaces `folder` only if the block succeeds.

  Readers see the old folder or the complete new one, never a half-written one (an
  existing folder is moved aside, the new one renamed in, then the old one deleted).
  """
  folder = os.path.abspath(folder)
  parent = os.path.dirname(folder)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(folder)}.tmp-', dir=parent)
  os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
  try:
    yield tmp
    if os.path.lexists(folder):
      if not os.path.isdir(folder):
        raise ValueError(f'{folder}: exists and is not a folder')
      old = tempfile.mkdtemp(prefix=f'.{os.path.basename(folder)}.old-', dir=parent)
      os.rename(folder, os.path.join(old, 'folder'))
      os.rename(tmp, folder)
      shutil.rmtree(old)
    else:
      os.rename(tmp, folder)
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp)


def _special(content: str) -> dict:
  return dict(content=content, lstrip=False, normalized=True, rstrip=False,
              single_word=False, special=True)


def write_tokenizer(out_dir: str, merges: list[tuple[str, str]],
                    model_max_length: int = 77) -> dict[str, int]:
  """Writes CLIP's tokenizer files for these merges; returns the vocabulary."""
  chars = bytes_to_unicode()
  vocab = {}
  for token in chars + [c + END_OF_WORD for c in chars] + [a + b for a, b in merges]:
    vocab.setdefault(token, len(vocab))
  vocab[BOS] = len(vocab)
  vocab[EOS] = len(vocab)
  tokenizer_config = {
      'add_prefix_space': False,
      'added_tokens_decoder': {str(vocab[t]): _special(t) for t in (BOS, EOS)},
      'bos_token': BOS, 'eos_token': EOS, 'pad_token': EOS, 'unk_token': EOS,
      'clean_up_tokenization_spaces': False,
      'do_lower_case': True,
      'errors': 'replace',
      'model_max_length': model_max_length,
      'tokenizer_class': 'CLIPTokenizer',
  }
  special = {k: {key: v for key, v in _special(t).items() if key != 'special'}
             for k, t in (('bos_token', BOS), ('eos_token', EOS), ('unk_token', EOS))}
  special['pad_token'] = EOS
  with atomic_folder(out_dir) as tmp:
    with open(os.path.join(tmp, 'vocab.json'), 'w', encoding='utf-8') as f:
      json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(tmp, 'merges.txt'), 'w', encoding='utf-8') as f:
      f.write('#version: 0.2\n' + ''.join(f'{a} {b}\n' for a, b in merges))
    for name, content in (('tokenizer_config.json', tokenizer_config),
                          ('special_tokens_map.json', special)):
      with open(os.path.join(tmp, name), 'w', encoding='utf-8') as f:
        json.dump(content, f, indent=2, ensure_ascii=False)
  return vocab


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str,
              model_max_length: int = 77) -> dict[str, int]:
  """Learns a CLIP-format byte-level BPE of at most `vocab_size` tokens into `out_dir`.

  `vocab_size` counts the 512 byte tokens and BOS/EOS, so it must be at least 514; the
  vocabulary is smaller when no pair of symbols occurs twice any more. `out_dir` is
  replaced whole. Returns the vocabulary (token -> id); the model's
  text_config.vocab_size must be at least its length, and its eos_token_id is
  `vocab['<|endoftext|>']` (the largest id).
  """
  if (not isinstance(vocab_size, int) or isinstance(vocab_size, bool)
      or vocab_size < MIN_VOCAB_SIZE):
    raise ValueError(f'vocab_size: expected an integer >= {MIN_VOCAB_SIZE} (256 bytes, '
                     f'the same ending a word, BOS and EOS), got {vocab_size!r}')
  if (not isinstance(model_max_length, int) or isinstance(model_max_length, bool)
      or model_max_length < 2):
    raise ValueError(f'model_max_length: expected an integer >= 2, got '
                     f'{model_max_length!r}')
  if isinstance(texts, str):
    raise TypeError('texts: expected an iterable of strings, got one string')
  base = bytes_to_unicode()
  known = set(base) | {c + END_OF_WORD for c in base}
  merges = learn_merges(count_words(texts), vocab_size - MIN_VOCAB_SIZE, known)
  return write_tokenizer(out_dir, merges, model_max_length)
