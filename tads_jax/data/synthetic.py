"""The embedded default world: a synthetic web pool, a trusted set and tasks, all with ground truth.

Every image shows one object (shape, colour, texture, size, position) on a grey or gradient
background, drawn with vectorized numpy; captions come from templates with synonyms and
filler. The pool mixes clean pairs with controlled fractions of the noise a web crawl has
(misaligned and partially wrong captions, corrupted images, duplicates, text rendered into
the image, spam) and of concepts no task asks for, and records each sample's truth in
`ground_truth.parquet`, outside the shards, so that a report can say what a selector removed.

Every draw is a pure function of (seed, domain, sample index, stream) through a counter-based
hash, so any shard can be (re)generated alone: the generator skips shards that exist and
writes every file atomically, and the same config gives byte-identical files.

Run: python -m tads_jax.data.synthetic --out /tmp/world --num-samples 10000 --seed 0
"""

import argparse
import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import sys
import textwrap
from typing import Any, Mapping, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from tads_jax.data import tar_writer

VERSION = 1

# ---------------------------------------------------------------------------------------
# The vocabulary of the world.

ON_TASK_SHAPES = ('circle', 'square', 'triangle', 'star', 'cross', 'heart', 'diamond', 'ring')
OFF_TASK_SHAPES = ('hexagon', 'crescent', 'arrow', 'pentagon')  # no task asks for these
SHAPES = ON_TASK_SHAPES + OFF_TASK_SHAPES
COLORS = {  # saturated or extreme, so none equals a (grey or muted) background
    'red': (220, 30, 30), 'green': (30, 170, 50), 'blue': (30, 70, 230),
    'yellow': (250, 220, 30), 'purple': (140, 50, 190), 'orange': (250, 140, 20),
    'white': (250, 250, 250), 'black': (15, 15, 15), 'cyan': (30, 220, 230),
    'pink': (250, 130, 190),
}
COLOR_NAMES = tuple(COLORS)
TEXTURES = ('solid', 'striped', 'dotted', 'checkered')
SIZES = ('small', 'large')
ATTRIBUTES = ('shape', 'color', 'texture', 'size')

# Words a caption may use for each attribute value. No word is shared between values or
# attributes, and no template, filler or spam word is one of them, so a caption names its
# attributes unambiguously (tests parse captions with these tables).
SHAPE_WORDS = {
    'circle': ('circle', 'disc', 'disk'), 'square': ('square', 'box'),
    'triangle': ('triangle',), 'star': ('star', 'five-pointed star'),
    'cross': ('cross', 'plus sign'), 'heart': ('heart', 'love heart'),
    'diamond': ('diamond', 'rhombus'), 'ring': ('ring', 'donut', 'hoop'),
    'hexagon': ('hexagon',), 'crescent': ('crescent', 'crescent moon'),
    'arrow': ('arrow',), 'pentagon': ('pentagon',),
}
COLOR_WORDS = {
    'red': ('red', 'crimson', 'scarlet'), 'green': ('green', 'emerald'),
    'blue': ('blue', 'azure', 'cobalt'), 'yellow': ('yellow', 'golden', 'lemon'),
    'purple': ('purple', 'violet'), 'orange': ('orange', 'tangerine'),
    'white': ('white', 'snow-white'), 'black': ('black', 'jet-black', 'ebony'),
    'cyan': ('cyan', 'aqua', 'turquoise'), 'pink': ('pink', 'hot pink'),
}
TEXTURE_ADJ = {
    'solid': ('solid', 'solid-colored'), 'striped': ('striped', 'stripy'),
    'dotted': ('dotted', 'polka-dot', 'spotted'),
    'checkered': ('checkered', 'checked', 'checkerboard'),
}
TEXTURE_WITH = {
    'solid': ('in a solid color', 'with a solid fill'), 'striped': ('with stripes',),
    'dotted': ('with dots', 'with polka dots'),
    'checkered': ('with a checkerboard pattern', 'with checks'),
}
SIZE_WORDS = {'small': ('small', 'little', 'tiny'), 'large': ('large', 'big', 'huge')}
BACKGROUND_WORDS = {'grey': ('grey', 'gray', 'neutral grey'),
                    'gradient': ('gradient', 'soft gradient', 'smooth gradient')}

TEMPLATES = (
    'a {size} {color} {tex} {shape} on a {bg} background',
    'photo of a {size} {color} {shape} {tex_with}',
    'stock image: {color} {shape}, HD wallpaper',
    '{color} {shape} icon, {tex}',
    'close-up of a {tex} {color} {shape}',
    '{size} {shape} in {color} {tex_with}, {bg} background',
    'illustration of a {color} {shape} {tex_with} on a {bg} backdrop',
    'clipart: {size} {tex} {color} {shape}',
    'this is a {color} {shape}. it is {size} and {tex}',
    '{color} {tex} {shape} vector art, minimalist design',
    'a picture showing one {size} {color} {shape} {tex_with}',
    '{shape}, {color}, {size}, {tex} pattern, high resolution',
)
FILLERS = ('', '', '', ', high quality', ' - 4k', ', digital art', ' (2019)', ', trending now')
SPAM_PHRASES = ('buy now', 'best price', 'free shipping', 'click here', 'limited offer',
                'discount', 'sale', 'order today', 'cheap deals', 'winner', '100% off',
                'act fast', 'subscribe')
SPAM_WORDS = ('deal', 'sale', 'cheap', 'bargain', 'wow', 'promo')

NOISE_TYPES = ('clean', 'misaligned', 'partial', 'corrupt_noise', 'corrupt_blur', 'blank',
               'extreme_aspect', 'exact_dup', 'near_dup', 'text_in_image', 'spam')
DEFAULT_NOISE = (('misaligned', 0.15), ('partial', 0.08), ('corrupt_noise', 0.03),
                 ('corrupt_blur', 0.03), ('blank', 0.02), ('extreme_aspect', 0.02),
                 ('exact_dup', 0.05), ('near_dup', 0.05), ('text_in_image', 0.04),
                 ('spam', 0.04))
_NOISE_CODE = {name: i for i, name in enumerate(NOISE_TYPES)}
TASK_NAMES = ('shapes', 'colors', 'textures', 'captions')
# A dup or misaligned sample looks for an eligible earlier sample this many times.
_CANDIDATES = 8


# ---------------------------------------------------------------------------------------
# Config.


class WorldError(ValueError):
  """An output directory that cannot take this world (names the file)."""


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Everything the world is a function of (the output is byte-identical for equal configs)."""
  seed: int = 0
  num_samples: int = 10_000        # pool size
  image_size: int = 64             # side of the square renders
  shard_size: int = 1_000          # samples per tar (<= 10000: keys hold 4 digits for it)
  trusted_size: int = 5_000        # clean DFN-style trusted pairs
  offtask_fraction: float = 0.3    # pool and trusted samples whose shape no task asks for
  # Fraction of the pool per noise type; the rest is clean. A mapping in from_dict / CLI.
  noise: tuple = DEFAULT_NOISE
  png_fraction: float = 0.05       # the rest of the pool is JPEG; exercises the readers
  webp_fraction: float = 0.05
  jpeg_quality: int = 90
  tasks: tuple = TASK_NAMES
  train_per_class: int = 20        # classification tasks, per class
  eval_per_class: int = 50
  retrieval_train: int = 300       # retrieval task, image-caption pairs
  retrieval_eval: int = 500
  captions_per_image: int = 2      # retrieval: captions per image, one per line

  def __post_init__(self):
    _validate(self)

  @property
  def noise_fractions(self) -> dict:
    return dict(self.noise)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d['noise'] = dict(self.noise)
    d['tasks'] = list(self.tasks)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'WorldConfig':
    """Builds a config from a plain dict (e.g. ConfigDict.to_dict()); missing = default.

    `noise` is a mapping {noise type: fraction}; types it leaves out keep their defaults.
    """
    if hasattr(d, 'to_dict'):
      d = d.to_dict()
    if not isinstance(d, Mapping):
      raise ValueError(f'WorldConfig: expected a dict of fields, got {type(d).__name__}')
    known = {f.name for f in dataclasses.fields(cls)}
    for name in d:
      if name not in known:
        raise ValueError(f'WorldConfig.{name}: unknown field; known fields: '
                         f'{", ".join(sorted(known))}')
    fields = dict(d)
    if 'noise' in fields:
      noise = fields['noise']
      if hasattr(noise, 'to_dict'):
        noise = noise.to_dict()
      if not isinstance(noise, Mapping):
        raise ValueError(f'WorldConfig.noise: expected a mapping {{noise type: fraction}}, '
                         f'got {noise!r}')
      for name in noise:
        if name not in dict(DEFAULT_NOISE):
          raise ValueError(f'WorldConfig.noise.{name}: unknown noise type; known: '
                           f'{", ".join(n for n, _ in DEFAULT_NOISE)}')
      merged = dict(DEFAULT_NOISE)
      merged.update(noise)
      fields['noise'] = tuple((n, merged[n]) for n, _ in DEFAULT_NOISE)
    if 'tasks' in fields:
      tasks = fields['tasks']
      if isinstance(tasks, str):
        tasks = tuple(t for t in tasks.split(',') if t)
      if not isinstance(tasks, (list, tuple)):
        raise ValueError(f'WorldConfig.tasks: expected a list of task names, got {tasks!r}')
      fields['tasks'] = tuple(tasks)
    return cls(**fields)


_INT_FIELDS = {'seed': 0, 'num_samples': 1, 'image_size': 16, 'shard_size': 1,
               'trusted_size': 0, 'jpeg_quality': 1, 'train_per_class': 1,
               'eval_per_class': 1, 'retrieval_train': 1, 'retrieval_eval': 1,
               'captions_per_image': 1}  # name -> minimum
_FRACTION_FIELDS = ('offtask_fraction', 'png_fraction', 'webp_fraction')


def _check_fraction(where: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f'{where}: expected a fraction (float), got {type(value).__name__} '
                     f'{value!r}')
  if not 0.0 <= value <= 1.0:
    raise ValueError(f'{where}: fraction {value!r} is outside [0, 1]')
  return float(value)


def _validate(cfg: WorldConfig) -> None:
  """Raises ValueError naming the first field that cannot work."""
  for name, minimum in _INT_FIELDS.items():
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f'WorldConfig.{name}: expected an integer, got '
                       f'{type(value).__name__} {value!r}')
    if value < minimum:
      raise ValueError(f'WorldConfig.{name}: must be >= {minimum}, got {value}')
  if cfg.shard_size > 10_000:
    raise ValueError(f'WorldConfig.shard_size: at most 10000 (img2dataset keys give the '
                     f'index in a shard 4 digits), got {cfg.shard_size}')
  if cfg.jpeg_quality > 100:
    raise ValueError(f'WorldConfig.jpeg_quality: must be <= 100, got {cfg.jpeg_quality}')
  if -(-cfg.num_samples // cfg.shard_size) > 99_999:
    raise ValueError(f'WorldConfig.num_samples: {cfg.num_samples} needs more than 99999 '
                     f'shards of {cfg.shard_size} (keys give the shard 5 digits)')
  for name in _FRACTION_FIELDS:
    _check_fraction(f'WorldConfig.{name}', getattr(cfg, name))
  if cfg.png_fraction + cfg.webp_fraction > 1.0 + 1e-9:
    raise ValueError(f'WorldConfig.webp_fraction: png_fraction + webp_fraction = '
                     f'{cfg.png_fraction + cfg.webp_fraction:g} exceeds 1')
  if not isinstance(cfg.noise, tuple) or [n for n, _ in cfg.noise] != [
      n for n, _ in DEFAULT_NOISE]:
    raise ValueError(f'WorldConfig.noise: expected one (name, fraction) pair per noise type '
                     f'in the order {", ".join(n for n, _ in DEFAULT_NOISE)} (use from_dict '
                     f'to give a mapping), got {cfg.noise!r}')
  total = 0.0
  for name, fraction in cfg.noise:
    total += _check_fraction(f'WorldConfig.noise.{name}', fraction)
  if total > 1.0 + 1e-9:
    raise ValueError(f'WorldConfig.noise: fractions sum to {total:g}, more than 1')
  if not isinstance(cfg.tasks, tuple):
    raise ValueError(f'WorldConfig.tasks: expected a tuple of task names, got {cfg.tasks!r}')
  for name in cfg.tasks:
    if name not in TASK_NAMES:
      raise ValueError(f'WorldConfig.tasks: unknown task {name!r}; known: '
                       f'{", ".join(TASK_NAMES)}')
  if len(set(cfg.tasks)) != len(cfg.tasks):
    raise ValueError(f'WorldConfig.tasks: duplicate task names in {cfg.tasks!r}')


# ---------------------------------------------------------------------------------------
# Counter-based randomness: u(seed, domain, index, stream) in [0, 1), vectorized over index.

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


# ---------------------------------------------------------------------------------------
# Scenes: what one image shows, drawn vectorized for many indices at once.


class Scene(NamedTuple):
  shape: str
  color: str
  texture: str
  size: str
  rgb: tuple            # object colour after jitter
  rgb2: tuple           # texture's second colour
  cx: float             # centre, as a fraction of the image side
  cy: float
  radius: float         # fraction of the image side
  rotation: float       # radians
  tex_angle: float      # stripe direction, radians
  tex_period: float     # texture period, in object radii
  bg_kind: str          # 'grey' | 'gradient'
  bg0: tuple
  bg1: tuple
  bg_angle: float


def _second_color(rgb):
  """Texture colour: a darker shade, or for white and black a grey that keeps contrast."""
  r, g, b = rgb
  if min(rgb) > 200:
    return (195, 195, 195)
  if max(rgb) < 60:
    return (70, 70, 70)
  return (int(r * 0.5), int(g * 0.5), int(b * 0.5))


def _shape_draw(seed: int, domain: int, idx: np.ndarray, offtask_fraction: float):
  """Shape index (into SHAPES) of samples idx: off-task with probability offtask_fraction."""
  off = _uniform(seed, domain, idx, _S.OFFTASK) < offtask_fraction
  u = _uniform(seed, domain, idx, _S.SHAPE)
  return np.where(off, len(ON_TASK_SHAPES) + _choice(u, len(OFF_TASK_SHAPES)),
                  _choice(u, len(ON_TASK_SHAPES)))


def _draw_scenes(seed: int, domain: int, idx: np.ndarray, offtask_fraction: float,
                 force: Mapping[str, np.ndarray] | None = None) -> dict:
  """Scene attributes and caption draws for sample indices `idx` [N] (dict of [N] arrays).

  `force` pins attributes (value indices), e.g. a classification task's class.
  """
  u = lambda stream: _uniform(seed, domain, idx, stream)  # noqa: E731
  out = {
      'shape': _shape_draw(seed, domain, idx, offtask_fraction),
      'color': _choice(u(_S.COLOR), len(COLOR_NAMES)),
      'texture': _choice(u(_S.TEXTURE), len(TEXTURES)),
      'size': _choice(u(_S.SIZE), len(SIZES)),
  }
  for name, values in (force or {}).items():
    out[name] = np.broadcast_to(np.asarray(values, dtype=np.int64), idx.shape).copy()
  large = out['size'] == 1
  radius = np.where(large, 0.30 + 0.08 * u(_S.RADIUS), 0.18 + 0.05 * u(_S.RADIUS))
  margin = radius * 1.1 + 0.03
  out['radius'] = radius
  out['cx'] = margin + (1 - 2 * margin) * u(_S.CX)
  out['cy'] = margin + (1 - 2 * margin) * u(_S.CY)
  out['rotation'] = np.deg2rad(-12 + 24 * u(_S.ROTATION))
  out['tex_angle'] = _choice(u(_S.TEX_ANGLE), 4) * (np.pi / 4)
  out['tex_period'] = 0.45 + 0.15 * u(_S.TEX_PERIOD)
  out['jitter'] = np.stack([u(_S.JITTER + c) for c in range(3)], -1) * 24 - 12  # [N, 3]
  out['bg_kind'] = (u(_S.BG_KIND) < 0.5).astype(np.int64)  # 1 = gradient
  out['bg_grey'] = 100 + 50 * u(_S.BG_GREY)
  tints = []
  for s in (_S.BG_TINT0, _S.BG_TINT1):  # muted: a grey level, each channel within +-15
    level = 95 + 60 * u(s)
    tints.append(np.stack([level + 30 * u(s + 1 + c) - 15 for c in range(3)], -1))  # [N, 3]
  out['bg0'], out['bg1'] = tints
  out['bg_angle'] = 2 * np.pi * u(_S.BG_ANGLE)
  out['draws'] = np.stack([u(s) for s in range(_S.TEMPLATE, _S.FILLER + 1)], -1)  # [N, 7]
  return out


def _lists(rows: dict) -> dict:
  """Per-sample access is much faster on Python lists than on numpy arrays."""
  return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in rows.items()}


def _scene(rows: dict, i: int, color_shift=(0, 0, 0)) -> Scene:
  """Sample i's Scene from _lists(_draw_scenes(...))."""
  color = COLOR_NAMES[rows['color'][i]]
  base, jitter = COLORS[color], rows['jitter'][i]
  rgb = tuple(min(max(int(base[c] + jitter[c] + color_shift[c]), 0), 255) for c in range(3))
  if rows['bg_kind'][i]:
    bg0 = tuple(int(v) for v in rows['bg0'][i])
    bg1 = tuple(int(v) for v in rows['bg1'][i])
  else:
    bg0 = bg1 = (int(rows['bg_grey'][i]),) * 3
  return Scene(shape=SHAPES[rows['shape'][i]], color=color,
               texture=TEXTURES[rows['texture'][i]], size=SIZES[rows['size'][i]], rgb=rgb,
               rgb2=_second_color(rgb), cx=rows['cx'][i], cy=rows['cy'][i],
               radius=rows['radius'][i], rotation=rows['rotation'][i],
               tex_angle=rows['tex_angle'][i], tex_period=rows['tex_period'][i],
               bg_kind='gradient' if rows['bg_kind'][i] else 'grey', bg0=bg0, bg1=bg1,
               bg_angle=rows['bg_angle'][i])


# ---------------------------------------------------------------------------------------
# Rendering. A canvas is uint32 [S, S], one packed RGBX pixel each (R in the low byte):
# filling a masked region is then a 2-d scalar assignment, much cheaper than an
# [S, S, 3] one, and PIL unpacks it to RGB in C.

_CANVAS = np.dtype('<u4')  # little-endian whatever the host: bytes R, G, B, X in memory
_GRIDS = {}


def _grid(size: int):
  """Pixel-centre coordinates X, Y: [S, S] float32 each, cached per size."""
  if size not in _GRIDS:
    c = np.arange(size, dtype=np.float32) + 0.5
    _GRIDS[size] = (np.broadcast_to(c[None, :], (size, size)),
                    np.broadcast_to(c[:, None], (size, size)))
  return _GRIDS[size]


def _pack(rgb) -> int:
  return int(rgb[0]) | int(rgb[1]) << 8 | int(rgb[2]) << 16


def _half_planes(u, v, first_angle: float, n: int, dist: float):
  """The n masks {p : p . e_k <= dist}, e_k at first_angle + k 360/n degrees (v down)."""
  for k in range(n):
    angle = math.radians(first_angle + 360.0 / n * k)
    yield u * math.cos(angle) + v * math.sin(angle) <= dist


def _polygon_mask(u, v, first_angle: float, n: int, dist: float):
  """A regular n-gon: inside all n half-planes through its edges."""
  planes = _half_planes(u, v, first_angle, n, dist)
  mask = next(planes)
  for plane in planes:
    mask &= plane
  return mask


def _pentagram_mask(u, v):
  """A five-pointed star: inside at least 4 of the 5 half-planes through its edges."""
  count = sum(p.view(np.uint8) for p in _half_planes(u, v, -18.0, 5, _COS72))
  return count >= 4


def _heart_mask(u, v):
  x, y = u * 1.15, -v * 1.15 + 0.12
  a = x * x + y * y - 1
  return a * a * a - x * x * y * y * y <= 0


_COS36, _COS72 = math.cos(math.pi / 5), math.cos(2 * math.pi / 5)
# Shape -> mask over object coordinates (u, v): 1 = the object's radius, v points down.
_SHAPE_MASKS = {
    'circle': lambda u, v: u * u + v * v <= 1.0,
    'ring': lambda u, v: np.abs(u * u + v * v - 0.65) <= 0.35,
    'square': lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.8,
    'diamond': lambda u, v: np.abs(u) * 1.45 + np.abs(v) <= 1.0,
    'cross': lambda u, v: np.maximum(np.minimum(np.abs(u), np.abs(v)) - 0.3,
                                     np.maximum(np.abs(u), np.abs(v)) - 0.95) <= 0,
    # Circumradius 1.25, centred 0.3 below the object centre: spans v in [-0.95, 0.93].
    'triangle': lambda u, v: _polygon_mask(u, v - 0.3, -30.0, 3, 0.625),
    'star': _pentagram_mask,
    'heart': _heart_mask,
    'hexagon': lambda u, v: _polygon_mask(u, v, 30.0, 6, math.cos(math.pi / 6)),
    'pentagon': lambda u, v: _polygon_mask(u, v, 54.0, 5, _COS36),
    'crescent': lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + (v + 0.15) ** 2
                                                      > 0.72),
    'arrow': lambda u, v: ((np.abs(v) <= 0.22) & (u >= -0.95) & (u <= 0.15))
                          | ((u >= 0.1) & (np.abs(v) <= (0.95 - u) * 0.85)),
}


def _background(scene: Scene, size: int) -> np.ndarray:
  """The scene's background as a canvas: uint32 [S, S]."""
  if scene.bg_kind == 'grey':
    return np.full((size, size), _pack(scene.bg0), _CANVAS)
  # A linear ramp from bg0 to bg1 along bg_angle, corner to corner, through a 256-entry
  # palette: one lookup per pixel instead of per-channel arithmetic.
  c, s = math.cos(scene.bg_angle), math.sin(scene.bg_angle)
  pos = _grid(size)[0][0]  # [S] pixel centres
  scale = 255.0 / max(abs(c) * size + abs(s) * size, 1e-6)
  lo = (min(0.0, c * size) + min(0.0, s * size)) * scale
  level = (pos * (c * scale) - lo)[None, :] + (pos * (s * scale))[:, None]  # [S, S]
  palette = np.empty((256, 4), np.uint8)  # RGBX entries
  for channel in range(3):
    a, b = scene.bg0[channel], scene.bg1[channel]
    palette[:, channel] = a + (b - a) * _RAMP
  palette[:, 3] = 0
  return palette.view(_CANVAS)[:, 0][level.astype(np.uint8)]


_RAMP = np.linspace(0.0, 1.0, 256)


def _draw_object(canvas: np.ndarray, scene: Scene, shift=(0.0, 0.0), scale: float = 1.0,
                 center=None) -> np.ndarray:
  """Draws the scene's object into `canvas` (uint32 [S, S], modified) and returns it."""
  size = canvas.shape[0]
  r = scene.radius * size * scale
  cx, cy = (scene.cx, scene.cy) if center is None else center
  cx, cy = cx * size + shift[0], cy * size + shift[1]
  # Only the object's bounding box is computed.
  x0, x1 = max(int(cx - 1.2 * r) - 1, 0), min(int(cx + 1.2 * r) + 2, size)
  y0, y1 = max(int(cy - 1.2 * r) - 1, 0), min(int(cy + 1.2 * r) + 2, size)
  if x1 <= x0 or y1 <= y0:
    return canvas
  gx, gy = _grid(size)
  x, y = gx[y0:y1, x0:x1], gy[y0:y1, x0:x1]  # [h, w]
  dx, dy = (x - cx) * (1.0 / r), (y - cy) * (1.0 / r)
  c, s = math.cos(scene.rotation), math.sin(scene.rotation)
  u, v = dx * c + dy * s, dy * c - dx * s
  mask = _SHAPE_MASKS[scene.shape](u, v)  # [h, w] bool
  # Textures live in image coordinates, offset so that every coordinate is positive.
  period = max(scene.tex_period * r, 4.0)
  if scene.texture == 'striped':
    t = (x * math.cos(scene.tex_angle) + y * math.sin(scene.tex_angle)) * (1.0 / period)
    pattern = ((t + 4 * size).astype(np.int32) & 1).astype(bool)
  elif scene.texture == 'checkered':
    pattern = (((x * (1.0 / period)).astype(np.int32)
                + (y * (1.0 / period)).astype(np.int32)) & 1).astype(bool)
  elif scene.texture == 'dotted':
    fx, fy = x * (1.0 / period), y * (1.0 / period)
    fx = fx - fx.astype(np.int32) - 0.5
    fy = fy - fy.astype(np.int32) - 0.5
    pattern = fx * fx + fy * fy <= 0.09
  else:
    pattern = None
  patch = canvas[y0:y1, x0:x1]
  if pattern is None:
    patch[mask] = _pack(scene.rgb)
  else:
    patch[mask] = _pack(scene.rgb)
    patch[mask & pattern] = _pack(scene.rgb2)
  return canvas


def _to_pil(canvas: np.ndarray) -> Image.Image:
  h, w = canvas.shape
  return Image.frombytes('RGB', (w, h), canvas, 'raw', 'RGBX')


def render_scene(scene: Scene, size: int, shift=(0.0, 0.0)) -> np.ndarray:
  """Draws `scene` as uint8 [size, size, 3]; `shift` moves the object by (x, y) pixels."""
  return np.asarray(_to_pil(_draw_object(_background(scene, size), scene, shift=shift)))


# ---------------------------------------------------------------------------------------
# Captions.

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


# ---------------------------------------------------------------------------------------
# Image operations and encoding.

_FONT = []


def _font():
  if not _FONT:
    _FONT.append(ImageFont.load_default())
  return _FONT[0]


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
  buf = io.BytesIO()
  if fmt == 'jpg':
    img.save(buf, 'JPEG', quality=quality, subsampling=0)  # 4:4:4 keeps small textures
  elif fmt == 'png':
    img.save(buf, 'PNG', compress_level=1)
  else:
    img.save(buf, 'WEBP', quality=quality, method=0)
  return buf.getvalue()


def _encode_canvas(canvas: np.ndarray, fmt: str, quality: int) -> bytes:
  """Encodes a canvas; JPEG reads the RGBX buffer in place (same bytes as from RGB)."""
  if fmt == 'jpg':
    h, w = canvas.shape
    return _encode(Image.frombuffer('RGBX', (w, h), canvas, 'raw', 'RGBX', 0, 1), fmt, quality)
  return _encode(_to_pil(canvas), fmt, quality)


def _text_image(scene: Scene, text: str, size: int, with_object: bool,
                light: bool) -> Image.Image:
  """The caption rendered into the image (T-MARS's case), with or without a small object."""
  if light:  # a sign or poster
    canvas = np.full((size, size), _pack((235, 235, 235)), _CANVAS)
    ink = (20, 20, 20)
  else:
    canvas = _background(scene, size)
    ink = (255, 255, 255) if scene.bg0[0] < 128 else (0, 0, 0)
  if with_object:
    _draw_object(canvas, scene, scale=min(0.2 / scene.radius, 1.0) * 0.45,
                 center=(0.78, 0.78))
  img = _to_pil(canvas)
  draw = ImageDraw.Draw(img)
  line_height = 11
  lines = textwrap.wrap(text, width=max(size // 6, 4))
  for k, line in enumerate(lines[:max((size - 2) // line_height, 1)]):
    draw.text((2, 1 + k * line_height), line, fill=ink, font=_font())
  return img


def _extreme_aspect(img: np.ndarray, ratio: int, stretch: bool, tall: bool,
                    cy: float) -> np.ndarray:
  """Stretches to ratio:1, or crops a strip 1/ratio of the side (around the object)."""
  size = img.shape[0]
  if tall:
    img = img.transpose(1, 0, 2)
  if stretch:
    out = np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size * ratio, size),
                                                                       Image.BILINEAR))
  else:
    h = size // ratio
    top = int(np.clip(cy * size - h / 2, 0, size - h))
    out = img[top:top + h]
  if tall:
    out = out.transpose(1, 0, 2)
  return np.ascontiguousarray(out)


class _Recipe(NamedTuple):
  """How to make one image: a scene, an operation, and the encoding."""
  scene: Scene
  op: str               # a noise type that acts on pixels, or 'clean'
  fmt: str              # 'jpg' | 'png' | 'webp'
  quality: int
  index: int            # whose per-sample generator the op draws from
  params: tuple = ()    # op parameters


def _make_image(recipe: _Recipe, size: int, seed: int) -> tuple[bytes, int, int]:
  """Encoded image bytes, width, height."""
  scene, op, params = recipe.scene, recipe.op, recipe.params
  if op in ('clean', 'near_dup'):
    shift = params[0] if op == 'near_dup' else (0.0, 0.0)
    canvas = _draw_object(_background(scene, size), scene, shift=shift)
    return _encode_canvas(canvas, recipe.fmt, recipe.quality), size, size
  if op == 'text_in_image':
    img = _text_image(scene, params[0], size, with_object=params[1], light=params[2])
  elif op == 'blank':
    level, noisy = params
    pixels = np.full((size, size, 3), level, np.uint8)
    if noisy:  # near-uniform: +-1 grey level
      rng = np.random.default_rng([seed, recipe.index, 1])
      pixels = (pixels.astype(np.int16) + rng.integers(-1, 2, pixels.shape)).astype(np.uint8)
    img = Image.fromarray(pixels)
  else:
    pixels = render_scene(scene, size)  # [S, S, 3]
    if op == 'corrupt_noise':
      rng = np.random.default_rng([seed, recipe.index, 2])
      noisy = pixels.astype(np.float32) + rng.normal(0.0, params[0], pixels.shape)
      img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    elif op == 'corrupt_blur':
      img = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(params[0] * size))
    elif op == 'extreme_aspect':
      img = Image.fromarray(_extreme_aspect(pixels, *params, cy=scene.cy))
    else:
      raise ValueError(f'unknown image operation {op!r}')
  return _encode(img, recipe.fmt, recipe.quality), img.width, img.height


# ---------------------------------------------------------------------------------------
# The pool plan: per index, the scene, the noise, the captions and the recipe.


def _noise_codes(u: np.ndarray, fractions: dict) -> np.ndarray:
  """Maps uniforms to noise codes by cumulative fractions (clean takes the rest)."""
  edges = np.cumsum([fractions[n] for n, _ in DEFAULT_NOISE])
  codes = np.searchsorted(edges, u, side='right') + 1  # 1.. = the noise types in order
  return np.where(codes > len(DEFAULT_NOISE), 0, codes)


def _format_of(u: np.ndarray, cfg: WorldConfig) -> list:
  return ['png' if x < cfg.png_fraction else
          'webp' if x < cfg.png_fraction + cfg.webp_fraction else 'jpg' for x in u.tolist()]


def uid_of(seed: int, index: int, domain: str = 'pool') -> str:
  """A sample's 32-hex uid, distinct across the pool, the trusted set and seeds."""
  text = f'{seed}:{index}' if domain == 'pool' else f'{domain}:{seed}:{index}'
  return hashlib.md5(text.encode()).hexdigest()


def _small_step(u: float, low: int, high: int) -> int:
  """A signed integer with |x| in [low, high], from one uniform."""
  sign = 1 if u < 0.5 else -1
  return sign * (low + min(int((u * 2 % 1) * (high - low + 1)), high - low))


def plan_pool(cfg: WorldConfig, idx: np.ndarray) -> list[dict]:
  """The ground truth and recipe of pool samples `idx` (a function of (seed, index) only).

  Dups copy an earlier sample whose own draw is clean; misaligned samples take the true
  caption of an earlier non-dup sample with another shape. A sample that finds none (e.g.
  index 0) is clean.
  """
  seed, fractions = cfg.seed, cfg.noise_fractions
  idx = np.asarray(idx, dtype=np.int64)
  u = lambda stream: _uniform(seed, _POOL, idx, stream)  # noqa: E731
  rows = _draw_scenes(seed, _POOL, idx, cfg.offtask_fraction)
  noise = _noise_codes(u(_S.NOISE), fractions)
  fmt = _format_of(u(_S.FORMAT), cfg)

  # Earlier candidates: [N, C] indices < idx (index 0 has none).
  cand = np.floor(np.stack([u(_S.CANDIDATE + k) for k in range(_CANDIDATES)], -1)
                  * idx[:, None]).astype(np.int64)
  valid = idx[:, None] > 0
  cand_noise = _noise_codes(_uniform(seed, _POOL, cand, _S.NOISE), fractions)  # [N, C]
  dup_codes = [_NOISE_CODE['exact_dup'], _NOISE_CODE['near_dup']]
  is_dup = np.isin(noise, dup_codes)
  dup_ok = (cand_noise == 0) & valid
  dup_of = np.where(is_dup & dup_ok.any(1), cand[np.arange(len(idx)), dup_ok.argmax(1)], -1)
  noise = np.where(is_dup & (dup_of < 0), 0, noise)
  cand_shape = _shape_draw(seed, _POOL, cand, cfg.offtask_fraction)  # [N, C]
  # A partner shows its own scene (not a dup's copy), so its caption is its true caption.
  mis_ok = (cand_shape != rows['shape'][:, None]) & valid & ~np.isin(cand_noise, dup_codes)
  is_mis = noise == _NOISE_CODE['misaligned']
  partner = np.where(is_mis & mis_ok.any(1), cand[np.arange(len(idx)), mis_ok.argmax(1)], -1)
  noise = np.where(is_mis & (partner < 0), 0, noise)

  others = np.unique(np.concatenate([dup_of[dup_of >= 0], partner[partner >= 0]]))
  other_rows = _draw_scenes(seed, _POOL, others, cfg.offtask_fraction)
  other_pos = {int(j): k for k, j in enumerate(others.tolist())}
  other_fmt = _format_of(_uniform(seed, _POOL, others, _S.FORMAT), cfg)

  op_a, op_b, op_c = u(_S.OP_A).tolist(), u(_S.OP_B).tolist(), u(_S.OP_C).tolist()
  partial_attr, partial_value = u(_S.PARTIAL_ATTR).tolist(), u(_S.PARTIAL_VALUE).tolist()
  near = np.stack([u(_S.NEAR_DX), u(_S.NEAR_DY), u(_S.NEAR_COLOR), u(_S.NEAR_QUALITY),
                   u(_S.PARAPHRASE)], -1)
  para_draws = np.stack([u(_S.PARAPHRASE_DRAWS + k) for k in range(7)], -1)
  rows, other_rows = _lists(rows), _lists(other_rows)
  noise, near, para_draws = noise.tolist(), near.tolist(), para_draws.tolist()
  dup_of, partner = dup_of.tolist(), partner.tolist()
  out = []
  for i, index in enumerate(idx.tolist()):
    kind = NOISE_TYPES[noise[i]]
    scene = _scene(rows, i)
    true_caption = caption = _caption_of(rows, i)
    recipe = _Recipe(scene, 'clean', fmt[i], cfg.jpeg_quality, index)
    dup = ''
    if kind in ('exact_dup', 'near_dup'):
      j = dup_of[i]
      k = other_pos[j]
      dup = uid_of(seed, j)
      scene = _scene(other_rows, k)
      true_caption = caption = _caption_of(other_rows, k)
      if kind == 'exact_dup':  # the original's recipe: identical bytes
        recipe = _Recipe(scene, 'clean', other_fmt[k], cfg.jpeg_quality, j)
      else:
        dx, dy, dc, dq, para = near[i]
        color_shift = (_small_step(dc, 4, 10),) * 3  # brightness, a few grey levels
        scene = _scene(other_rows, k, color_shift=color_shift)
        quality = 70 + int(dq * 15)  # differs from the original's quality
        if quality >= cfg.jpeg_quality - 2:
          quality = max(cfg.jpeg_quality - 10, 1)
        shift = (float(_small_step(dx, 1, 2)), float(_small_step(dy, 1, 2)))
        recipe = _Recipe(scene, 'near_dup', 'jpg', quality, index, (shift,))
        if para < 0.5:
          draws = list(other_rows['draws'])
          draws[k] = para_draws[i]
          caption = _caption_of(dict(other_rows, draws=draws), k)
          true_caption = caption
    elif kind == 'misaligned':
      caption = _caption_of(other_rows, other_pos[partner[i]])
    elif kind == 'partial':
      template = min(int(rows['draws'][i][0] * len(TEMPLATES)), len(TEMPLATES) - 1)
      attrs = [a for a in template_attributes(template) if a != 'shape']
      attr = attrs[min(int(partial_attr[i] * len(attrs)), len(attrs) - 1)]
      values = {'color': COLOR_NAMES, 'texture': TEXTURES, 'size': SIZES}[attr]
      current = getattr(scene, attr)
      wrong = [v for v in values if v != current]
      value = wrong[min(int(partial_value[i] * len(wrong)), len(wrong) - 1)]
      caption = _caption_of(rows, i, **{attr: value})
    elif kind == 'spam':
      caption = _spam_caption(np.random.default_rng([seed, index, 3]))
    elif kind == 'corrupt_noise':
      recipe = recipe._replace(op=kind, params=(60.0 + 40.0 * op_a[i],))
    elif kind == 'corrupt_blur':
      recipe = recipe._replace(op=kind, params=(0.08 + 0.06 * op_a[i],))
    elif kind == 'blank':
      recipe = recipe._replace(op=kind, params=(int(20 + 215 * op_a[i]), bool(op_b[i] < 0.5)))
    elif kind == 'extreme_aspect':
      recipe = recipe._replace(op=kind, params=(4 + min(int(op_a[i] * 3), 2),
                                                bool(op_b[i] < 0.5), bool(op_c[i] < 0.5)))
    elif kind == 'text_in_image':
      recipe = recipe._replace(op=kind, params=(caption, bool(op_a[i] < 0.5),
                                                bool(op_b[i] < 0.5)))
    out.append({
        'index': index, 'uid': uid_of(seed, index), 'noise': kind, 'dup_of': dup,
        'shape': scene.shape, 'color': scene.color, 'texture': scene.texture,
        'size': scene.size, 'on_task': scene.shape in ON_TASK_SHAPES,
        'true_caption': true_caption, 'caption': caption, 'image_format': recipe.fmt,
        'recipe': recipe,
    })
  return out


def clean_render(cfg: WorldConfig, index: int) -> np.ndarray:
  """The clean render of pool sample `index`'s own scene, before any noise: [S, S, 3]."""
  rows = _draw_scenes(cfg.seed, _POOL, np.asarray([index]), cfg.offtask_fraction)
  return render_scene(_scene(_lists(rows), 0), cfg.image_size)


# ---------------------------------------------------------------------------------------
# Writing.


def _write_atomic(path: str, data: bytes) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def _write_json(path: str, obj) -> None:
  _write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + '\n').encode())


def _write_parquet(path: str, table: pa.Table) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  pq.write_table(table, tmp)
  os.replace(tmp, path)


def _shard_done(path_tar: str) -> bool:
  base = path_tar[:-len('.tar')]
  return all(os.path.exists(p) for p in (path_tar, base + '.parquet', base + '_stats.json'))


def _write_img2dataset_shard(path_tar: str, shard: int, samples: list) -> None:
  """Tar, then parquet, then stats: a shard is complete once its stats file exists.

  samples: (uid, caption, image bytes, ext, width, height) per sample.
  """
  keys = [f'{shard:05d}{k:04d}' for k in range(len(samples))]
  members = []
  for key, (uid, caption, data, ext, w, h) in zip(keys, samples):
    meta = {'uid': uid, 'key': key, 'caption': caption, 'width': w, 'height': h,
            'sha256': hashlib.sha256(data).hexdigest(), 'status': 'success',
            'error_message': None}
    members.append((key, {ext: data, 'txt': caption, 'json': meta}))
  tar_writer.write_shard(path_tar, members)
  base = path_tar[:-len('.tar')]
  n = len(samples)
  _write_parquet(base + '.parquet', pa.table({
      'key': pa.array(keys, pa.string()), 'uid': pa.array([s[0] for s in samples], pa.string()),
      'caption': pa.array([s[1] for s in samples], pa.string()),
      'width': pa.array([s[4] for s in samples], pa.int32()),
      'height': pa.array([s[5] for s in samples], pa.int32()),
      'status': pa.array(['success'] * n, pa.string()),
  }))
  _write_json(base + '_stats.json', {
      'count': n, 'successes': n, 'failed_to_download': 0, 'failed_to_resize': 0,
      'status_dict': {'success': n}})


_GT_SCHEMA = pa.schema([
    ('uid', pa.string()), ('key', pa.string()), ('shard', pa.string()),
    ('shape', pa.string()), ('color', pa.string()), ('texture', pa.string()),
    ('size', pa.string()), ('on_task', pa.bool_()), ('noise', pa.string()),
    ('dup_of', pa.string()), ('true_caption', pa.string()), ('caption', pa.string()),
    ('image_format', pa.string()),
])


def _pool_shard(out_dir: str, cfg: WorldConfig, shard: int) -> dict:
  """Writes pool shard `shard` unless complete; returns its ground-truth columns."""
  start = shard * cfg.shard_size
  idx = np.arange(start, min(start + cfg.shard_size, cfg.num_samples))
  plan = plan_pool(cfg, idx)
  name = f'{shard:08d}.tar'
  path = os.path.join(out_dir, 'pool', name)
  written = not _shard_done(path)
  if written:
    samples = []
    for p in plan:
      data, w, h = _make_image(p['recipe'], cfg.image_size, cfg.seed)
      samples.append((p['uid'], p['caption'], data, p['image_format'], w, h))
    _write_img2dataset_shard(path, shard, samples)
  columns = {'uid': [p['uid'] for p in plan],
             'key': [f'{shard:05d}{k:04d}' for k in range(len(plan))],
             'shard': [name] * len(plan)}
  for c in _GT_SCHEMA.names[3:]:
    columns[c] = [p[c] for p in plan]
  return {'path': path, 'written': written, 'columns': columns}


def _trusted_shard(out_dir: str, cfg: WorldConfig, shard: int) -> dict:
  """Clean pairs (on- and off-task), like the curated set DFN trains its filter on."""
  path = os.path.join(out_dir, 'trusted', f'{shard:08d}.tar')
  if _shard_done(path):
    return {'path': path, 'written': False}
  start = shard * cfg.shard_size
  idx = np.arange(start, min(start + cfg.shard_size, cfg.trusted_size))
  rows = _lists(_draw_scenes(cfg.seed, _TRUSTED, idx, cfg.offtask_fraction))
  samples = []
  for i, index in enumerate(idx.tolist()):
    scene = _scene(rows, i)
    data = _encode_canvas(_draw_object(_background(scene, cfg.image_size), scene), 'jpg',
                          cfg.jpeg_quality)
    samples.append((uid_of(cfg.seed, index, 'trusted'), _caption_of(rows, i), data, 'jpg',
                    cfg.image_size, cfg.image_size))
  _write_img2dataset_shard(path, shard, samples)
  return {'path': path, 'written': True}


_CLASS_ATTR = {'shapes': ('shape', ON_TASK_SHAPES), 'colors': ('color', COLOR_NAMES),
               'textures': ('texture', TEXTURES)}
TASK_TEMPLATES = {
    'shapes': ('a photo of a {}.', 'a picture of a {}.', 'a drawing of a {} shape.',
               'an icon of a {}.', 'a {} on a grey background.', 'clipart of a {}.'),
    'colors': ('a photo of a {} object.', 'a {} shape.', 'something {}.',
               'a drawing in the colour {}.', 'a {} icon.', 'clipart in {}.'),
    'textures': ('a photo of a {} shape.', 'a {} pattern.', 'an object with a {} texture.',
                 'a {} icon.', 'clipart of a {} object.'),
}


def _task_size(cfg: WorldConfig, task: str, split: str) -> int:
  if task in _CLASS_ATTR:
    per_class = cfg.train_per_class if split == 'train' else cfg.eval_per_class
    return per_class * len(_CLASS_ATTR[task][1])
  return cfg.retrieval_train if split == 'train' else cfg.retrieval_eval


def _task_shard(out_dir: str, cfg: WorldConfig, task: str, split: str, shard: int) -> dict:
  """Clean on-task renders (their own draws, not pool samples) as a webdataset shard."""
  path = os.path.join(out_dir, 'tasks', task, split, f'{shard:08d}.tar')
  if os.path.exists(path):
    return {'path': path, 'written': False}
  domain = _TASK_DOMAIN[(task, split)]
  n = _task_size(cfg, task, split)
  idx = np.arange(shard * cfg.shard_size, min((shard + 1) * cfg.shard_size, n))
  # Shapes are always on-task; a classification attribute cycles through the classes.
  force = {'shape': _choice(_uniform(cfg.seed, domain, idx, _S.SHAPE), len(ON_TASK_SHAPES))}
  if task in _CLASS_ATTR:
    attr, classes = _CLASS_ATTR[task]
    force[attr] = idx % len(classes)
  rows = _lists(_draw_scenes(cfg.seed, domain, idx, 0.0, force=force))
  members = []
  for i, index in enumerate(idx.tolist()):
    key = f'{shard:05d}{i:04d}'
    scene = _scene(rows, i)
    data = _encode_canvas(_draw_object(_background(scene, cfg.image_size), scene), 'jpg',
                          cfg.jpeg_quality)
    if task in _CLASS_ATTR:
      members.append((key, {'jpg': data, 'cls': rows[attr][i]}))
    else:
      captions = [_caption_of(rows, i)]
      for c in range(1, cfg.captions_per_image):
        # Each further caption: the same scene in new words (draws of its own domain).
        draws = _uniform(cfg.seed, domain + 1000 * c, np.full(7, index),
                         np.arange(_S.TEMPLATE, _S.FILLER + 1))
        captions.append(_caption_of(dict(rows, draws={i: draws.tolist()}), i))
      members.append((key, {'jpg': data, 'txt': '\n'.join(captions)}))
  tar_writer.write_shard(path, members)
  return {'path': path, 'written': True}


def _num_shards(n: int, shard_size: int) -> int:
  return -(-n // shard_size)


def _task_spec(cfg: WorldConfig, task: str) -> dict:
  if task in _CLASS_ATTR:
    spec = {'name': task, 'kind': 'classification', 'classnames': list(_CLASS_ATTR[task][1]),
            'templates': list(TASK_TEMPLATES[task])}
  else:
    spec = {'name': task, 'kind': 'retrieval', 'classnames': [], 'templates': []}
  for split in ('train', 'eval'):
    last = _num_shards(_task_size(cfg, task, split), cfg.shard_size) - 1
    spec[split] = f'tasks/{task}/{split}/{{{0:08d}..{last:08d}}}.tar'
  return spec


def _call(job):
  fn, args = job
  return fn(*args)


def generate_world(out_dir: str, cfg: WorldConfig, num_workers: int = 1,
                   verbose: bool = False) -> dict:
  """Writes (or completes) the world in `out_dir`; returns counts and paths.

  Shards that exist are kept; everything else is (re)written. A directory holding a world
  made from another config is refused rather than mixed. With num_workers > 1, shards are
  made in that many spawned processes; the output is the same.
  """
  if not isinstance(cfg, WorldConfig):
    raise ValueError(f'generate_world: cfg must be a WorldConfig, got {type(cfg).__name__}')
  if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
    raise ValueError(f'generate_world: num_workers must be an integer >= 1, got '
                     f'{num_workers!r}')
  os.makedirs(out_dir, exist_ok=True)
  world_path = os.path.join(out_dir, 'world.json')
  if os.path.exists(world_path):
    try:
      with open(world_path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise WorldError(f'{world_path}: unreadable ({e}); delete {out_dir} to regenerate') from e
    old_cfg = old.get('config', {}) if isinstance(old, dict) else {}
    new_cfg = cfg.to_dict()
    if not isinstance(old, dict) or old.get('version') != VERSION or old_cfg != new_cfg:
      changed = sorted(k for k in set(old_cfg) | set(new_cfg)
                       if old_cfg.get(k) != new_cfg.get(k)) or ['version']
      raise WorldError(f'{world_path}: {out_dir} holds a world made with another config '
                       f'(differs in: {", ".join(changed)}); use a new directory')
  else:  # first, so that an interrupted run is recognized as this config's
    _write_json(world_path, {'version': VERSION, 'seed': cfg.seed, 'config': cfg.to_dict(),
                             'complete': False})
  for sub in ['pool', 'trusted'] + [os.path.join('tasks', t, s) for t in cfg.tasks
                                    for s in ('train', 'eval')]:
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)

  pool_jobs = [(_pool_shard, (out_dir, cfg, s))
               for s in range(_num_shards(cfg.num_samples, cfg.shard_size))]
  other_jobs = [(_trusted_shard, (out_dir, cfg, s))
                for s in range(_num_shards(cfg.trusted_size, cfg.shard_size))]
  other_jobs += [(_task_shard, (out_dir, cfg, t, split, s)) for t in cfg.tasks
                 for split in ('train', 'eval')
                 for s in range(_num_shards(_task_size(cfg, t, split), cfg.shard_size))]
  executor = None
  if num_workers > 1:
    executor = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context('spawn'))
    results = executor.map(_call, pool_jobs + other_jobs)
  else:
    results = map(_call, pool_jobs + other_jobs)

  counts = {name: 0 for name in NOISE_TYPES}
  formats, on_task, written, paths = {}, 0, collections.Counter(), collections.defaultdict(list)
  gt_path = os.path.join(out_dir, 'ground_truth.parquet')
  gt_tmp = f'{gt_path}.tmp-{os.getpid()}'
  try:
    with pq.ParquetWriter(gt_tmp, _GT_SCHEMA) as gt:
      for k, ((fn, _), result) in enumerate(zip(pool_jobs + other_jobs, results)):
        kind = {_pool_shard: 'pool', _trusted_shard: 'trusted', _task_shard: 'tasks'}[fn]
        paths[kind].append(result['path'])
        written[kind] += result['written']
        if kind == 'pool':
          columns = result['columns']
          gt.write_table(pa.table(columns, schema=_GT_SCHEMA))
          for noise, fmt, on in zip(columns['noise'], columns['image_format'],
                                    columns['on_task']):
            counts[noise] += 1
            formats[fmt] = formats.get(fmt, 0) + 1
            on_task += on
        if verbose:
          print(f'{kind}: {os.path.relpath(result["path"], out_dir)} '
                f'{"written" if result["written"] else "kept"} '
                f'({k + 1}/{len(pool_jobs) + len(other_jobs)})', file=sys.stderr, flush=True)
    os.replace(gt_tmp, gt_path)
  finally:
    if executor is not None:
      executor.shutdown(cancel_futures=True)
    if os.path.exists(gt_tmp):
      os.remove(gt_tmp)

  tasks_path = os.path.join(out_dir, 'tasks.json')
  _write_json(tasks_path, [_task_spec(cfg, t) for t in cfg.tasks])
  formats = dict(sorted(formats.items()))
  off_task = cfg.num_samples - on_task
  _write_json(world_path, {'version': VERSION, 'seed': cfg.seed, 'config': cfg.to_dict(),
                           'complete': True, 'counts': counts, 'on_task': on_task,
                           'off_task': off_task, 'formats': formats})
  return {
      'out_dir': out_dir, 'num_samples': cfg.num_samples, 'counts': counts,
      'on_task': on_task, 'off_task': off_task, 'formats': formats,
      'shards_written': written['pool'],
      'shards_kept': len(pool_jobs) - written['pool'],
      'trusted_shards_written': written['trusted'], 'task_shards_written': written['tasks'],
      'paths': {'pool': paths['pool'], 'trusted': paths['trusted'], 'tasks_json': tasks_path,
                'ground_truth': gt_path, 'world_json': world_path},
  }


# ---------------------------------------------------------------------------------------
# CLI.


def _parse_noise(text: str) -> dict:
  out = {}
  for part in filter(None, (p.strip() for p in text.split(','))):
    name, sep, value = part.partition('=')
    if not sep:
      raise ValueError(f'--noise: expected name=fraction, got {part!r}')
    try:
      out[name.strip()] = float(value)
    except ValueError:
      raise ValueError(f'--noise: fraction for {name.strip()!r} is not a number: '
                       f'{value!r}') from None
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m tads_jax.data.synthetic',
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
      description='Generate the synthetic web world: pool shards with ground truth, a trusted '
                  'set, and downstream tasks. Shards already in --out are kept.')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--num-samples', type=int, default=WorldConfig.num_samples,
                      help='pool samples')
  parser.add_argument('--seed', type=int, default=WorldConfig.seed, help='world seed')
  parser.add_argument('--image-size', type=int, default=WorldConfig.image_size,
                      help='side of the square images, pixels')
  parser.add_argument('--shard-size', type=int, default=WorldConfig.shard_size,
                      help='samples per tar, at most 10000')
  parser.add_argument('--trusted-size', type=int, default=WorldConfig.trusted_size,
                      help='clean trusted pairs (DFN-style)')
  parser.add_argument('--offtask-fraction', type=float, default=WorldConfig.offtask_fraction,
                      help='fraction of samples whose shape no task asks for')
  parser.add_argument('--noise', default='',
                      help='override noise fractions, e.g. misaligned=0.2,spam=0.05; types: '
                           + ', '.join(n for n, _ in DEFAULT_NOISE))
  parser.add_argument('--tasks', default=','.join(TASK_NAMES),
                      help='comma-separated subset of ' + ', '.join(TASK_NAMES))
  parser.add_argument('--workers', type=int, default=1,
                      help='processes making shards (the output does not depend on it)')
  parser.add_argument('--quiet', action='store_true', help='no per-shard progress')
  args = parser.parse_args(argv)
  try:
    cfg = WorldConfig.from_dict({
        'seed': args.seed, 'num_samples': args.num_samples, 'image_size': args.image_size,
        'shard_size': args.shard_size, 'trusted_size': args.trusted_size,
        'offtask_fraction': args.offtask_fraction, 'noise': _parse_noise(args.noise),
        'tasks': args.tasks})
  except ValueError as e:
    parser.error(str(e))
  if args.workers < 1:
    parser.error(f'--workers: must be >= 1, got {args.workers}')
  try:
    summary = generate_world(args.out, cfg, num_workers=args.workers, verbose=not args.quiet)
  except WorldError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(json.dumps({k: summary[k] for k in ('out_dir', 'num_samples', 'counts', 'on_task',
                                            'off_task', 'formats', 'shards_written',
                                            'shards_kept')}, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
