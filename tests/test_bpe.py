"""bpe.py: a CLIP-format byte-level BPE that transformers' CLIPTokenizerFast loads."""

import collections
import json
import os

import numpy as np
import pytest
from tokenizers import pre_tokenizers

from tads_jax.models import bpe, tokenizer

transformers = pytest.importorskip('transformers')

SHAPES = ('circle', 'square', 'triangle', 'star', 'heart')
COLORS = ('red', 'green', 'blue', 'yellow')
TEMPLATES = ('a photo of a {c} {s}', 'the {c} {s} on a white background', 'a {s}, {c}',
             'drawing of the {c} {s}')


def captions(n=300, seed=0):
  rng = np.random.default_rng(seed)
  return [TEMPLATES[rng.integers(len(TEMPLATES))].format(
      c=COLORS[rng.integers(len(COLORS))], s=SHAPES[rng.integers(len(SHAPES))])
          for _ in range(n)]


def load(folder):
  return transformers.CLIPTokenizerFast.from_pretrained(str(folder), local_files_only=True)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  folder = tmp_path_factory.mktemp('bpe')
  vocab = bpe.train_bpe(captions(), 700, str(folder))
  return str(folder), vocab, load(folder)


def test_hand_computed_corpus(tmp_path):
  # Words: the x2, cat x2, sat, a, hat. Pair counts: (a, t</w>) 4 (cat, cat, sat, hat);
  # then (c, at</w>), (h, e</w>), (t, h) tie at 2: the smallest pair goes first; after
  # (h, e</w>), (t, he</w>) has 2; the rest occur once, so training stops at 4 merges.
  texts = ['The cat', 'the  CAT sat', 'a hat']
  vocab = bpe.train_bpe(texts, 1000, str(tmp_path))
  with open(tmp_path / 'merges.txt', encoding='utf-8') as f:
    assert f.read() == '#version: 0.2\na t</w>\nc at</w>\nh e</w>\nt he</w>\n'
  assert list(vocab)[512:] == ['at</w>', 'cat</w>', 'he</w>', 'the</w>',
                               '<|startoftext|>', '<|endoftext|>']
  assert list(vocab.values()) == list(range(518))
  # Byte characters come in CLIP's order: '!' (byte 33) is 0, so 's' (115) is 82 and
  # 'a</w>' is 256 + 97 - 33 = 320; 'h' is 71.
  tok = load(tmp_path)
  assert tok('the cat sat')['input_ids'] == [516, 515, 513, 82, 512, 517]
  assert tok('a hat')['input_ids'] == [516, 320, 71, 512, 517]
  # vocab_size caps the merges: 515 keeps only 'at</w>' (BOS 513, EOS 514), so 'the' is
  # t (83), h (71), e</w> (256 + 101 - 33 = 324); 514 leaves bytes and specials alone.
  bpe.train_bpe(texts, 515, str(tmp_path))
  assert load(tmp_path)('the cat')['input_ids'] == [513, 83, 71, 324, 66, 512, 514]
  bpe.train_bpe(texts, 514, str(tmp_path))
  assert load(tmp_path)('cat')['input_ids'] == [512, 66, 64, 256 + 83, 513]


def test_vocabulary_layout_and_files(trained):
  folder, vocab, tok = trained
  tokens = list(vocab)
  assert list(vocab.values()) == list(range(len(vocab)))
  assert set(tokens[:256]) == set(pre_tokenizers.ByteLevel.alphabet())
  # CLIP's order: printable bytes as themselves ('!' .. '~', '¡' .. '¬', '®' .. 'ÿ'), then
  # the other 68 bytes as U+0100 onwards in byte order (space, byte 32, is 'Ġ').
  assert tokens[:94] == [chr(c) for c in range(33, 127)]
  assert tokens[94:188] == [chr(c) for c in range(161, 173)] + [chr(c) for c in range(174, 256)]
  assert tokens[188:256] == [chr(c) for c in range(256, 324)] and tokens[188 + 32] == 'Ġ'
  assert tokens[256:512] == [c + '</w>' for c in tokens[:256]]
  assert tokens[-2:] == ['<|startoftext|>', '<|endoftext|>']
  assert len(vocab) <= 700
  with open(os.path.join(folder, 'merges.txt'), encoding='utf-8') as f:
    lines = f.read().splitlines()
  assert lines[0] == '#version: 0.2'
  merges = [tuple(line.split(' ')) for line in lines[1:]]
  assert all(len(m) == 2 for m in merges)
  # Each merge's parts exist before it; each merge makes the next token.
  assert tokens[512:-2] == [a + b for a, b in merges]
  for i, (a, b) in enumerate(merges):
    assert vocab[a] < 512 + i and vocab[b] < 512 + i
  with open(os.path.join(folder, 'special_tokens_map.json')) as f:
    special = json.load(f)
  assert special['bos_token']['content'] == '<|startoftext|>'
  assert special['pad_token'] == '<|endoftext|>'
  with open(os.path.join(folder, 'tokenizer_config.json')) as f:
    assert json.load(f)['model_max_length'] == 77
  assert tok.bos_token_id == len(vocab) - 2
  assert tok.eos_token_id == tok.pad_token_id == tok.unk_token_id == len(vocab) - 1
  assert len(tok) == len(vocab) and tok.model_max_length == 77


def test_decode_returns_normalized_text(trained):
  _, _, tok = trained
  cases = {
      'A  Photo of\tthe RED\n star': 'a photo of the red star',
      'zebra café 2024': 'zebra café 2 0 2 4',  # unseen: byte fallback; digits split
      "The heart's edge!": "the heart 's edge !",  # CLIP's words, '</w>' read as a space
  }
  for text, expected in cases.items():
    ids = tok(text)['input_ids']
    assert tok.decode(ids, skip_special_tokens=True) == expected


def test_words_are_clip_tokenizer_words(trained):
  backend = trained[2].backend_tokenizer
  for text in ["The DOG's  bone!! cafe\u0301 2024", 'x<|endoftext|>y', '  naïve\tÜBER---ok ']:
    theirs = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))
    words = [w for w, _ in theirs]
    if '<|endoftext|>' in text:  # the tokenizer matches special tokens before the BPE
      words = [w for w in words if w not in ('<|', 'endoftext', '|>')]
    assert bpe.pre_tokenize(text) == words


def test_frequent_words_become_single_tokens(trained):
  _, vocab, tok = trained
  counts = collections.Counter(w for c in captions() for w in bpe.pre_tokenize(c))
  frequent = [w for w, n in counts.items() if n >= 20]
  assert len(frequent) >= 10  # every shape, colour and template word
  for word in frequent:
    assert tok.tokenize(word) == [word + '</w>'], word
  assert len(tok.tokenize('zebra')) > 1  # never seen: no whole-word token


def test_wrapper_gives_fixed_length_ids(trained):
  folder, vocab, _ = trained
  bos, eos = vocab['<|startoftext|>'], vocab['<|endoftext|>']
  wrapper = tokenizer.CLIPTextTokenizer(folder, context_length=8, vocab_size=len(vocab))
  assert wrapper.eos_token_id == eos
  ids = wrapper(['a red star', 'drawing of the blue heart on a white background', ''])
  assert ids.shape == (3, 8) and ids.dtype == np.int32
  assert ids[0].tolist() == [bos, vocab['a</w>'], vocab['red</w>'], vocab['star</w>'],
                             eos, eos, eos, eos]
  assert ids[1, 0] == bos and ids[1, -1] == eos and eos not in ids[1, :-1]  # cut, EOS kept
  assert ids[2].tolist() == [bos] + [eos] * 7


def test_deterministic_and_order_free(tmp_path):
  texts = captions(200, seed=3)
  order = np.random.default_rng(1).permutation(len(texts))
  bpe.train_bpe(texts, 600, str(tmp_path / 'a'))
  bpe.train_bpe(texts, 600, str(tmp_path / 'b'))
  bpe.train_bpe(iter([texts[i] for i in order]), 600, str(tmp_path / 'c'))
  for name in bpe.TOKENIZER_FILES:
    a = (tmp_path / 'a' / name).read_bytes()
    assert a == (tmp_path / 'b' / name).read_bytes() == (tmp_path / 'c' / name).read_bytes()


def _naive_merges(word_counts, max_new_tokens):
  """Reference BPE: recount every pair from scratch before each merge."""
  words = dict(word_counts)
  merges = []
  while len(merges) < max_new_tokens:
    pairs = collections.Counter()
    for word, n in words.items():
      for pair in zip(word, word[1:]):
        pairs[pair] += n
    if not pairs:
      break
    best = min(pairs, key=lambda p: (-pairs[p], p))
    if pairs[best] < 2:
      break
    merges.append(best)
    merged = {}
    for word, n in words.items():
      new = bpe._merge_word(word, best)  # pylint: disable=protected-access
      merged[new] = merged.get(new, 0) + n
    words = merged
  return merges


@pytest.mark.parametrize('seed', range(4))
def test_incremental_counts_match_naive_bpe(seed):
  rng = np.random.default_rng(seed)
  # Few letters and repeats ('aaaa') exercise overlapping pairs and stale indices.
  words = [''.join(rng.choice(list('aabc'), size=rng.integers(1, 7))) for _ in range(60)]
  counts = bpe.count_words(' '.join(rng.choice(words, size=300)) for _ in range(2))
  merges = bpe.learn_merges(counts, 10_000)
  assert merges == _naive_merges(counts, 10_000)
  assert len(merges) > 5


def test_bad_input_is_named(tmp_path):
  with pytest.raises(ValueError, match='vocab_size: expected an integer >= 514'):
    bpe.train_bpe(['a'], 513, str(tmp_path / 'x'))
  with pytest.raises(TypeError, match=r'texts\[1\]: expected a string, got int'):
    bpe.train_bpe(['a', 3], 600, str(tmp_path / 'x'))
  with pytest.raises(TypeError, match='got one string'):
    bpe.train_bpe('a photo', 600, str(tmp_path / 'x'))
  assert not os.path.exists(tmp_path / 'x')
  assert os.listdir(tmp_path) == []  # no temporary folder left behind
