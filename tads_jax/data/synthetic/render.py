"""Rendering: a scene into pixels, a caption into an image, and pixels into encoded bytes.

A canvas is uint32 [S, S], one packed RGBX pixel each (R in the low byte): filling a masked
region is then a 2-d scalar assignment, much cheaper than an [S, S, 3] one, and PIL unpacks
it to RGB in C.
"""

import io
import math
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tads_jax.data.synthetic.scenes import Scene

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
  elif scene.texture == 'wavy':  # stripes bent by a sine across them
    along, across = math.cos(scene.tex_angle), math.sin(scene.tex_angle)
    t = (x * along + y * across
         + 0.3 * period * np.sin((y * along - x * across) * (math.pi / period))) * (1.0 / period)
    pattern = ((t + 4 * size).astype(np.int32) & 1).astype(bool)
  elif scene.texture == 'concentric':  # rings around the object's centre
    d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) * (1.0 / period)
    pattern = (d.astype(np.int32) & 1).astype(bool)
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
