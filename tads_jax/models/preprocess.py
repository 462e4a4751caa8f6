"""Image preprocessing as the checkpoint's preprocessor_config.json says, on the host.

Reproduces transformers' CLIPImageProcessorPil step by step (RGB conversion compositing
alpha onto white, PIL resize of the shorter side, centre crop padding with zeros when the
image is smaller, rescale in float64, mean/std in float32), so that the Flax encoder sees
the same pixels as the PyTorch one.
"""

import dataclasses
from typing import Any, Sequence

import numpy as np
from PIL import Image

from tads_jax.models import hf_convert

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  shortest_edge: int | None = 224        # resize the shorter side to this ...
  resize_hw: tuple[int, int] | None = None  # ... or to exactly (height, width)
  crop_hw: tuple[int, int] | None = (224, 224)
  resample: int = Image.Resampling.BICUBIC
  rescale_factor: float | None = 1 / 255
  mean: tuple[float, ...] | None = OPENAI_CLIP_MEAN
  std: tuple[float, ...] | None = OPENAI_CLIP_STD
  convert_rgb: bool = True


def default_config(image_size: int) -> PreprocessConfig:
  """OpenAI CLIP's preprocessing for a square input of `image_size`."""
  return PreprocessConfig(shortest_edge=image_size, crop_hw=(image_size, image_size))


def _hw(value, path: str, field: str) -> tuple[int, int]:
  if isinstance(value, int) and not isinstance(value, bool):
    return value, value
  if isinstance(value, dict) and 'height' in value and 'width' in value:
    return int(value['height']), int(value['width'])
  raise ValueError(f'{path}: {field}={value!r}; expected an integer or '
                   '{"height": H, "width": W}')


def _three(value, path: str, field: str) -> tuple[float, float, float]:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    value = [value] * 3
  if (not isinstance(value, (list, tuple)) or len(value) != 3
      or not all(isinstance(v, (int, float)) for v in value)):
    raise ValueError(f'{path}: {field}={value!r}; expected 3 numbers (R, G, B)')
  return tuple(float(v) for v in value)


def config_from_hf(path: str) -> PreprocessConfig:
  """Reads preprocessor_config.json."""
  return config_from_hf_dict(hf_convert.read_json(path), path)


def config_from_hf_dict(cfg: dict, path: str = 'preprocessor_config.json'
                        ) -> PreprocessConfig:
  """PreprocessConfig with transformers' CLIPImageProcessor defaults for absent fields.

  `path` only names the file in error messages.
  """
  if not isinstance(cfg, dict):
    raise ValueError(f'{path}: expected a JSON object')

  shortest, resize_hw = None, None
  if cfg.get('do_resize', True):
    size = cfg.get('size', {'shortest_edge': 224})
    if isinstance(size, int) and not isinstance(size, bool):
      shortest = size  # CLIP's processor reads a bare int as the shorter side
    elif isinstance(size, dict) and set(size) == {'shortest_edge'}:
      shortest = int(size['shortest_edge'])
    elif isinstance(size, dict) and set(size) == {'height', 'width'}:
      resize_hw = int(size['height']), int(size['width'])
    else:
      raise ValueError(f'{path}: size={size!r}; supported: an integer, '
                       '{"shortest_edge": S} or {"height": H, "width": W}')
  crop_hw = None
  if cfg.get('do_center_crop', True):
    crop_hw = _hw(cfg.get('crop_size', 224), path, 'crop_size')
  rescale = float(cfg.get('rescale_factor', 1 / 255)) if cfg.get('do_rescale', True) else None
  mean = std = None
  if cfg.get('do_normalize', True):
    mean = _three(cfg.get('image_mean', OPENAI_CLIP_MEAN), path, 'image_mean')
    std = _three(cfg.get('image_std', OPENAI_CLIP_STD), path, 'image_std')
    if min(std) <= 0:
      raise ValueError(f'{path}: image_std={list(std)}; must be positive')
  resample = cfg.get('resample', int(Image.Resampling.BICUBIC))
  if resample not in {int(r) for r in Image.Resampling}:
    raise ValueError(f'{path}: resample={resample!r}; expected a PIL resampling code')
  return PreprocessConfig(shortest_edge=shortest, resize_hw=resize_hw, crop_hw=crop_hw,
                          resample=int(resample), rescale_factor=rescale, mean=mean,
                          std=std, convert_rgb=bool(cfg.get('do_convert_rgb', True)))


def to_rgb_uint8(image: Any, where: str = 'image') -> np.ndarray:  # -> [H, W, 3] uint8
  """A PIL image or a uint8 HWC / HW array as RGB; transparency composited onto white."""
  if isinstance(image, Image.Image):
    if 'A' in image.getbands() or image.info.get('transparency') is not None:
      rgba = image.convert('RGBA')
      white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
      return np.asarray(Image.alpha_composite(white, rgba).convert('RGB'))
    return np.asarray(image.convert('RGB'))
  array = np.asarray(image)
  if array.dtype != np.uint8:
    raise ValueError(f'{where}: expected a uint8 array (H, W, 3) or a PIL image, got '
                     f'dtype {array.dtype}')
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
    raise ValueError(f'{where}: expected shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), '
                     f'got {array.shape}')
  if array.shape[-1] == 1:
    return np.repeat(array, 3, axis=-1)
  if array.shape[-1] == 4:
    alpha = array[..., 3:4] / 255
    return np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
  return array


def _resize_size(h: int, w: int, cfg: PreprocessConfig) -> tuple[int, int]:
  if cfg.resize_hw is not None:
    return cfg.resize_hw
  short, long = (w, h) if w <= h else (h, w)
  new_short, new_long = cfg.shortest_edge, int(cfg.shortest_edge * long / short)
  return (new_long, new_short) if w <= h else (new_short, new_long)


def center_crop(image: np.ndarray, crop_hw: tuple[int, int]) -> np.ndarray:
  """Centre crop [H, W, C]; pads with zeros first when the image is smaller (as HF)."""
  h, w = image.shape[:2]
  ch, cw = crop_hw
  top, left = (h - ch) // 2, (w - cw) // 2
  if top >= 0 and left >= 0:
    return image[top:top + ch, left:left + cw]
  new_h, new_w = max(ch, h), max(cw, w)
  pad_top, pad_left = -(-(new_h - h) // 2), -(-(new_w - w) // 2)
  canvas = np.zeros((new_h, new_w) + image.shape[2:], image.dtype)
  canvas[pad_top:pad_top + h, pad_left:pad_left + w] = image
  top, left = top + pad_top, left + pad_left
  return canvas[top:top + ch, left:left + cw]


def preprocess_image(image: Any, cfg: PreprocessConfig,
                     where: str = 'image') -> np.ndarray:  # -> [H, W, 3] float32
  array = to_rgb_uint8(image, where) if cfg.convert_rgb else np.asarray(image)
  if cfg.shortest_edge is not None or cfg.resize_hw is not None:
    h, w = _resize_size(array.shape[0], array.shape[1], cfg)
    array = np.asarray(Image.fromarray(array).resize((w, h), resample=cfg.resample))
  if cfg.crop_hw is not None:
    array = center_crop(array, cfg.crop_hw)
  if cfg.rescale_factor is not None:
    array = (array.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
  array = array.astype(np.float32)
  if cfg.mean is not None:
    array = (array - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
  return array


def preprocess_images(images: Sequence[Any], cfg: PreprocessConfig) -> np.ndarray:
  """[N, H, W, 3] float32 from a list of PIL images or uint8 arrays (or one [N,H,W,C])."""
  if not len(images):
    raise ValueError('images: empty')
  return np.stack([preprocess_image(im, cfg, f'images[{i}]') for i, im in enumerate(images)])


def augment(images: np.ndarray, rng: np.random.Generator, flip: bool,
            shift: int) -> np.ndarray:
  """Training-time augmentation of a uint8 batch [B, S, S, C]: each image mirrored left-right
  with probability 1/2 (flip) and moved by up to `shift` pixels each way, the edge pixels
  filling what it uncovers (a translation crop, as pad-and-random-crop; open_clip's
  RandomResizedCrop at scale ~1). One gather for the whole batch."""
  b, h, w = images.shape[:3]
  dy = rng.integers(0, 2 * shift + 1, b)  # [B] crop offsets into the padded batch
  dx = rng.integers(0, 2 * shift + 1, b)
  mirror = rng.random(b) < 0.5 if flip else np.zeros(b, bool)
  padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode='edge')
  rows = dy[:, None] + np.arange(h)  # [B, S]
  cols = dx[:, None] + np.where(mirror[:, None], np.arange(w)[::-1], np.arange(w))  # [B, S]
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def second_view(images: np.ndarray, rng: np.random.Generator, shift: int,
                brightness: int) -> np.ndarray:
  """Another view of each uint8 image [B, S, S, C], for a two-view instance loss (SLIP's
  SimCLR term): moved by up to `shift` pixels each way as `augment` moves it, then lit up
  or down by the same whole number of grey levels, up to `brightness`, in every channel
  (clipped to [0, 255]). The changes a re-encoded near-copy of a picture shows."""
  moved = augment(images, rng, flip=False, shift=shift)
  lift = rng.integers(-brightness, brightness + 1, images.shape[0])  # [B]
  return np.clip(moved.astype(np.int16) + lift[:, None, None, None], 0, 255).astype(np.uint8)
