"""The pool plan: per index, the scene, the noise, the captions and the recipe of its image.

A plan is a function of (seed, index) only, so that a shard's samples and ground truth are
known without making any other shard; _make_image turns a recipe into encoded bytes.
"""

import hashlib
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFilter

from tads_jax.data.synthetic.captions import _caption_of, _spam_caption, template_attributes
from tads_jax.data.synthetic.randomness import _POOL, _S, _uniform
from tads_jax.data.synthetic.render import (_background, _draw_object, _encode,
                                            _encode_canvas, _extreme_aspect, _text_image,
                                            render_scene)
from tads_jax.data.synthetic.scenes import Scene, _draw_scenes, _lists, _scene, _shape_draw
from tads_jax.data.synthetic.vocabulary import (_CANDIDATES, _NOISE_CODE, DEFAULT_NOISE,
                                                NOISE_TYPES, ON_TASK_SHAPES, SIZES,
                                                TASK_VALUE_GROUPS, TEMPLATES)
from tads_jax.data.synthetic.world_config import WorldConfig


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
  rows = _draw_scenes(seed, _POOL, idx, cfg.offtask_fraction,
                      offtask_attributes=cfg.offtask_attributes)
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
  other_rows = _draw_scenes(seed, _POOL, others, cfg.offtask_fraction,
                            offtask_attributes=cfg.offtask_attributes)
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
      current = getattr(scene, attr)
      # A wrong value of the same kind: on-task for an on-task value, off-task for an
      # off-task one, so that the error does not also move the sample on or off the tasks.
      values = next(group for group in TASK_VALUE_GROUPS.get(attr, (SIZES,))
                    if current in group)
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
  rows = _draw_scenes(cfg.seed, _POOL, np.asarray([index]), cfg.offtask_fraction,
                      offtask_attributes=cfg.offtask_attributes)
  return render_scene(_scene(_lists(rows), 0), cfg.image_size)
