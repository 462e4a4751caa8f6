"""Captions: a template filled with synonyms of a scene's attributes, picked by the sample's
own draws, and spam."""

import re

import numpy as np

from tads_jax.data.synthetic.vocabulary import (BACKGROUND_WORDS, COLOR_NAMES, COLOR_WORDS,
                                                FILLERS, SHAPE_WORDS, SHAPES, SIZE_WORDS,
                                                SIZES, SPAM_PHRASES, SPAM_WORDS, TEMPLATES,
                                                TEXTURE_ADJ, TEXTURE_WITH, TEXTURES)

_ARTICLE = re.compile(r'\ba (?=[aeiou])')


def _pick(words, u: float) -> str:
  return words[min(int(u * len(words)), len(words) - 1)]


def template_attributes(template_index: int) -> tuple:
  """The attributes a template names (every template names shape and colour)."""
  t = TEMPLATES[template_index]
  out = ['shape', 'color']
  if '{tex}' in t or '{tex_with}' in t:
    out.append('texture')
  if '{size}' in t:
    out.append('size')
  return tuple(out)


def make_caption(shape: str, color: str, texture: str, size: str, bg_kind: str,
                 draws) -> str:
  """A caption naming the given attributes; `draws` (7 uniforms) pick template and words."""
  t_u, size_u, color_u, shape_u, tex_u, bg_u, fill_u = draws
  text = TEMPLATES[min(int(t_u * len(TEMPLATES)), len(TEMPLATES) - 1)].format(
      size=_pick(SIZE_WORDS[size], size_u), color=_pick(COLOR_WORDS[color], color_u),
      shape=_pick(SHAPE_WORDS[shape], shape_u), tex=_pick(TEXTURE_ADJ[texture], tex_u),
      tex_with=_pick(TEXTURE_WITH[texture], tex_u), bg=_pick(BACKGROUND_WORDS[bg_kind], bg_u))
  return _ARTICLE.sub('an ', text) + _pick(FILLERS, fill_u)


def _caption_of(rows: dict, i: int, **override) -> str:
  """Sample i's clean caption (rows from _lists), or with attributes overridden."""
  attrs = dict(shape=SHAPES[rows['shape'][i]], color=COLOR_NAMES[rows['color'][i]],
               texture=TEXTURES[rows['texture'][i]], size=SIZES[rows['size'][i]],
               bg_kind='gradient' if rows['bg_kind'][i] else 'grey')
  attrs.update(override)
  return make_caption(draws=rows['draws'][i], **attrs)


def _spam_caption(rng: np.random.Generator) -> str:
  phrases = [SPAM_PHRASES[k] for k in rng.choice(len(SPAM_PHRASES), rng.integers(3, 6),
                                                 replace=False)]
  word = SPAM_WORDS[rng.integers(len(SPAM_WORDS))]
  phrases.insert(int(rng.integers(len(phrases) + 1)), ' '.join([word] * int(rng.integers(3, 6))))
  host = f'{SPAM_WORDS[rng.integers(len(SPAM_WORDS))]}{int(rng.integers(10, 999))}'
  url = (f'www.{host}.com' if rng.random() < 0.5
         else f'http://{host}.biz/item?id={int(rng.integers(1000, 99999))}')
  phrases.append(url)
  text = ' '.join(phrases)
  return text.upper() if rng.random() < 0.3 else text
