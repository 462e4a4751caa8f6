"""The checkpoint's own CLIP tokenizer (transformers' CLIPTokenizerFast), fixed length.

Text goes to the model as [N, context_length] int32 ids: BOS, BPE tokens, EOS, then the
tokenizer's pad token; text longer than the context is cut so that EOS stays last, as
Hugging Face does with truncation=True. Fixed shapes mean one XLA compilation.
"""

import os
from typing import Sequence

import numpy as np

TOKENIZER_FILES = ('tokenizer.json', 'vocab.json', 'merges.txt')


class CLIPTextTokenizer:
  """Callable: list of strings -> [N, context_length] int32 token ids."""

  def __init__(self, folder: str, context_length: int = 77,
               vocab_size: int | None = None):
    has_json = os.path.isfile(os.path.join(folder, 'tokenizer.json'))
    has_bpe = all(os.path.isfile(os.path.join(folder, f)) for f in ('vocab.json',
                                                                    'merges.txt'))
    if not (has_json or has_bpe):
      raise ValueError(f'{folder}: no CLIP tokenizer files; expected tokenizer.json or '
                       'vocab.json + merges.txt')
    from transformers import CLIPTokenizerFast  # pylint: disable=import-outside-toplevel
    try:
      self.tokenizer = CLIPTokenizerFast.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # tokenizers raises plain Exception for a bad vocab/merges
      raise ValueError(f'{folder}: cannot load the CLIP tokenizer ({e})') from None
    self.folder = folder
    self.context_length = context_length
    if vocab_size is not None and len(self.tokenizer) > vocab_size:
      # Ids past the embedding table would be clamped silently by the gather.
      raise ValueError(f'{folder}: the tokenizer has {len(self.tokenizer)} tokens but '
                       f'config.json text_config.vocab_size is {vocab_size}')

  @property
  def eos_token_id(self) -> int:
    return self.tokenizer.eos_token_id

  def __call__(self, texts: Sequence[str]) -> np.ndarray:  # -> [N, L] int32
    if isinstance(texts, str):
      raise TypeError('expected a list of strings, got one string')
    texts = list(texts)
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f'texts[{i}]: expected a string, got {type(text).__name__}')
    if not texts:
      return np.zeros((0, self.context_length), np.int32)
    ids = self.tokenizer(texts, padding='max_length', truncation=True,
                         max_length=self.context_length)['input_ids']
    return np.asarray(ids, dtype=np.int32)
