"""Image decoding and CLIP-style resizing shared by the pool readers and task loaders.

A web pool holds every kind of broken image, so decoding is forced to completion: PIL opens
lazily and would otherwise accept a JPEG cut in half. We rely on PIL's default
`ImageFile.LOAD_TRUNCATED_IMAGES = False` and never change it.
"""

import io

import numpy as np
from PIL import Image


class CorruptImageError(ValueError):
  """Bytes that do not decode to a whole image; the message names where they came from."""


def decode_image(data: bytes, where: str) -> np.ndarray:
  """Decodes JPEG/PNG/WebP/... bytes to uint8 RGB [H, W, 3], or raises CorruptImageError.

  Transparent images are composited over white, as img2dataset does, so that a transparent
  background does not turn into whatever colour the encoder left under the alpha.
  """
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()  # forces the full decode: truncated data fails here
      return _to_rgb(img)
  except MemoryError:
    raise
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
    raise CorruptImageError(f'{where}: cannot decode image ({type(e).__name__}: {e})') from e


def _to_rgb(img: Image.Image) -> np.ndarray:
  if img.mode in ('I;16', 'I;16B', 'I;16L', 'I'):  # 16-bit PNG grayscale: keep the top byte
    gray = np.asarray(img).astype(np.int64) >> 8
    return to_rgb(np.clip(gray, 0, 255).astype(np.uint8))
  if img.mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa') or 'transparency' in img.info:
    rgba = np.asarray(img.convert('RGBA'), dtype=np.float32)  # [H, W, 4]
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
  if img.mode != 'RGB':
    img = img.convert('RGB')
  return np.array(img, dtype=np.uint8)  # [H, W, 3], a copy that owns its memory


def to_rgb(image: np.ndarray) -> np.ndarray:
  """uint8 [H, W], [H, W, 1] or [H, W, 3] -> [H, W, 3] (TFDS gives MNIST as [H, W, 1])."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'expected a uint8 image, got {image.dtype}')
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f'expected an image [H, W], [H, W, 1] or [H, W, 3], got {image.shape}')
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  return image


def resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 image -> uint8 [size, size, 3]: shorter side to `size` (bicubic), centre crop.

  The same geometry as CLIP's preprocessing (torchvision Resize(size) + CenterCrop(size)),
  so embeddings of our images match what a reference CLIP saw in training.
  """
  if size <= 0:
    raise ValueError(f'size must be positive, got {size}')
  image = to_rgb(image)
  h, w = image.shape[:2]
  if h == 0 or w == 0:
    raise ValueError(f'cannot resize an empty image of shape {image.shape}')
  if min(h, w) != size:
    if h <= w:
      new_h, new_w = size, max(size, int(size * w / h))
    else:
      new_h, new_w = max(size, int(size * h / w)), size
    pil = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    image = np.asarray(pil)
    h, w = new_h, new_w
  top = int(round((h - size) / 2.0))
  left = int(round((w - size) / 2.0))
  return np.ascontiguousarray(image[top:top + size, left:left + size])  # [size, size, 3]
