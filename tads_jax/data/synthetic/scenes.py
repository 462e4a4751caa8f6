"""Scenes: what one image shows, drawn vectorized for many indices at once."""

from typing import Mapping, NamedTuple

import numpy as np

from tads_jax.data.synthetic.randomness import _S, _choice, _uniform
from tads_jax.data.synthetic.vocabulary import (COLOR_NAMES, COLORS, SHAPES, SIZES,
                                                TASK_VALUE_GROUPS, TEXTURES)


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


_STREAMS = {'shape': _S.SHAPE, 'color': _S.COLOR, 'texture': _S.TEXTURE}


def _off_task(seed: int, domain: int, idx: np.ndarray, offtask_fraction: float):
  """Which samples idx are off-task: [N] bool, each with probability offtask_fraction."""
  return _uniform(seed, domain, idx, _S.OFFTASK) < offtask_fraction


def _value_draw(seed: int, domain: int, idx: np.ndarray, attribute: str, off: np.ndarray):
  """Value index of `attribute` for samples idx: an off-task value where `off`."""
  on_values, off_values = TASK_VALUE_GROUPS[attribute]
  u = _uniform(seed, domain, idx, _STREAMS[attribute])
  return np.where(off, len(on_values) + _choice(u, len(off_values)),
                  _choice(u, len(on_values)))


def _shape_draw(seed: int, domain: int, idx: np.ndarray, offtask_fraction: float):
  """Shape index (into SHAPES) of samples idx: off-task with probability offtask_fraction."""
  return _value_draw(seed, domain, idx, 'shape',
                     _off_task(seed, domain, idx, offtask_fraction))


def _draw_scenes(seed: int, domain: int, idx: np.ndarray, offtask_fraction: float,
                 force: Mapping[str, np.ndarray] | None = None,
                 offtask_attributes=('shape',)) -> dict:
  """Scene attributes and caption draws for sample indices `idx` [N] (dict of [N] arrays).

  An off-task sample takes a value no task asks for in each of `offtask_attributes`
  (WorldConfig.offtask_attributes); `force` pins attributes (value indices), e.g. a
  classification task's class.
  """
  u = lambda stream: _uniform(seed, domain, idx, stream)  # noqa: E731
  off = _off_task(seed, domain, idx, offtask_fraction)
  out = {attr: _value_draw(seed, domain, idx, attr, off & (attr in offtask_attributes))
         for attr in TASK_VALUE_GROUPS}
  out['size'] = _choice(u(_S.SIZE), len(SIZES))
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
