"""`load_clip(path)`: a Hugging Face CLIP folder as a ready-to-use Flax encoder.

    clip = tads_jax.load_clip('/path/to/clip-vit-base-patch32')
    image_emb = clip.encode_images([pil_image, uint8_array])   # [N, E], unit rows
    text_emb = clip.encode_texts(['a photo of a cat'])          # [N, E], unit rows

Encoding runs in fixed-size batches (the tail padded and dropped) so that XLA compiles
each encoder once; with a mesh, batches are split over its 'data' axis and params placed
by the sharding rules.
"""

import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tads_jax import losses
from tads_jax import sharding
from tads_jax.models import clip, hf_convert, preprocess, tokenizer


class LoadedCLIP:
  """A CLIP module with its params, tokenizer and preprocessing; numpy in, numpy out."""

  def __init__(self, config: clip.CLIPConfig, params: Any,
               text_tokenizer: tokenizer.CLIPTextTokenizer | None,
               preprocess_config: preprocess.PreprocessConfig, *, dtype=jnp.float32,
               param_dtype=jnp.float32, batch_size: int = 64, mesh=None,
               rules='data_parallel', source: str = ''):
    self.config = config
    self.module = clip.CLIP(config, dtype=dtype, param_dtype=param_dtype)
    self.tokenizer = text_tokenizer
    self.preprocess_config = preprocess_config
    self.mesh = mesh
    self.rules = sharding.get_rules(rules)
    self.source = source
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f'batch_size: expected a positive integer, got {batch_size!r}')
    if mesh is not None:  # every data shard gets the same number of rows
      shards = mesh.shape['data']
      batch_size = -(-batch_size // shards) * shards
    self.batch_size = batch_size
    # Logical axis names of every param, for placing them on any mesh later.
    self.logical_axes = sharding.logical_axes(clip.abstract_params(self.module))
    params = jax.tree_util.tree_map(lambda x: np.asarray(x, param_dtype), params)

    def image_fn(params, pixels):  # [B, H, W, 3] -> [B, E]
      return losses.normalize(self.module.apply({'params': params}, pixels,
                                                method=clip.CLIP.encode_image))

    def text_fn(params, token_ids):  # [B, L] -> [B, E]
      return losses.normalize(self.module.apply({'params': params}, token_ids,
                                                method=clip.CLIP.encode_text))

    if mesh is None:
      self.params = jax.device_put(params)
      self._image_fn, self._text_fn = jax.jit(image_fn), jax.jit(text_fn)
    else:
      self.params = sharding.shard_params(params, mesh, self.rules, axes=self.logical_axes)
      param_sh = jax.tree_util.tree_map(lambda x: x.sharding, self.params)
      batch_sh = sharding.batch_sharding(mesh)
      self._image_fn, self._text_fn = (
          jax.jit(fn, in_shardings=(param_sh, batch_sh), out_shardings=batch_sh)
          for fn in (image_fn, text_fn))

  def _tail_rows(self, rows: int) -> int:
    """Rows a short last batch is padded to: the next power of two (a multiple of the data
    shards on a mesh), at most batch_size, so a few compiled shapes serve every tail and a
    short batch never costs a full one."""
    shards = self.mesh.shape['data'] if self.mesh is not None else 1
    size = 1 << max(rows - 1, 0).bit_length()
    size = -(-size // shards) * shards
    return min(size, self.batch_size)

  def _run(self, fn, n: int, get_batch) -> np.ndarray:
    """fn over rows [0, n) in fixed-size batches; `get_batch(lo, hi)` builds the rows."""
    out = np.zeros((n, self.config.embed_dim), np.float32)
    with _context(self.mesh, self.rules):
      for lo in range(0, n, self.batch_size):
        hi = min(lo + self.batch_size, n)
        batch = get_batch(lo, hi)
        rows = self._tail_rows(hi - lo)
        if hi - lo < rows:  # pad the tail to a bucketed shape
          pad = np.zeros((rows - (hi - lo),) + batch.shape[1:], batch.dtype)
          batch = np.concatenate([batch, pad])
        out[lo:hi] = np.asarray(fn(self.params, batch))[:hi - lo]
    return out

  def preprocess(self, images: Sequence[Any]) -> np.ndarray:  # -> [N, H, W, 3] float32
    return preprocess.preprocess_images(images, self.preprocess_config)

  def tokenize(self, texts: Sequence[str]) -> np.ndarray:  # -> [N, L] int32
    if self.tokenizer is None:
      raise ValueError(f'{self.source}: this encoder was loaded without a tokenizer')
    return self.tokenizer(texts)

  def encode_pixels(self, pixels) -> np.ndarray:
    """[N, H, W, 3] preprocessed float pixels -> [N, E] L2-normalized embeddings."""
    pixels = np.asarray(pixels, np.float32)
    s = self.config.image_size
    if pixels.ndim != 4 or pixels.shape[1:] != (s, s, 3):
      raise ValueError(f'pixels: expected shape [N, {s}, {s}, 3], got {pixels.shape}')
    return self._run(self._image_fn, len(pixels), lambda lo, hi: pixels[lo:hi])

  def encode_token_ids(self, token_ids) -> np.ndarray:
    """[N, L] int token ids -> [N, E] L2-normalized embeddings."""
    token_ids = np.asarray(token_ids)
    if (token_ids.ndim != 2 or not np.issubdtype(token_ids.dtype, np.integer)
        or token_ids.shape[1] > self.config.context_length):
      raise ValueError(f'token_ids: expected integers of shape [N, L<='
                       f'{self.config.context_length}], got {token_ids.dtype} '
                       f'{token_ids.shape}')
    token_ids = token_ids.astype(np.int32)
    return self._run(self._text_fn, len(token_ids), lambda lo, hi: token_ids[lo:hi])

  def encode_images(self, images: Sequence[Any]) -> np.ndarray:
    """PIL images or uint8 HWC arrays -> [N, E] L2-normalized embeddings.

    Preprocessing (resize, centre crop, mean/std from preprocessor_config.json) happens
    one batch at a time, so host memory holds one batch of pixels.
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
      raise ValueError(f'images: got one array of shape {images.shape}; pass a list of '
                       'images or an [N, H, W, C] array')
    images = list(images)
    if not images:
      return np.zeros((0, self.config.embed_dim), np.float32)

    def make_batch(lo, hi):
      return np.stack([preprocess.preprocess_image(images[i], self.preprocess_config,
                                                   f'images[{i}]') for i in range(lo, hi)])
    return self._run(self._image_fn, len(images), make_batch)

  def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
    """Strings -> [N, E] L2-normalized embeddings (the checkpoint's own tokenizer)."""
    ids = self.tokenize(texts)
    if not len(ids):
      return np.zeros((0, self.config.embed_dim), np.float32)
    return self._run(self._text_fn, len(ids), lambda lo, hi: ids[lo:hi])


class _context:
  """Mesh and logical-axis rules in scope while tracing (no-op without a mesh)."""

  def __init__(self, mesh, rules):
    self.mesh, self.rules, self.stack = mesh, rules, []

  def __enter__(self):
    if self.mesh is not None:
      for ctx in (jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules)):
        ctx.__enter__()
        self.stack.append(ctx)

  def __exit__(self, *exc):
    while self.stack:
      self.stack.pop().__exit__(*exc)


def _check_consistent(folder: str, config: clip.CLIPConfig,
                      text_tokenizer: tokenizer.CLIPTextTokenizer,
                      pp: preprocess.PreprocessConfig):
  """Config, tokenizer and preprocessing must agree, or embeddings are silently wrong."""
  config_json = os.path.join(folder, 'config.json')
  eos = text_tokenizer.eos_token_id
  if config.eos_token_id == 2:  # legacy pooling: argmax(ids) must land on EOS
    if eos != len(text_tokenizer.tokenizer) - 1:
      raise ValueError(f'{config_json}: text_config.eos_token_id=2 pools at the largest '
                       f'token id, but the tokenizer in {folder} has EOS id {eos} of '
                       f'{len(text_tokenizer.tokenizer)} tokens')
  elif eos != config.eos_token_id:
    raise ValueError(f'{config_json}: text_config.eos_token_id={config.eos_token_id}, but '
                     f'the tokenizer in {folder} has EOS id {eos}')
  size = config.image_size
  out_hw = pp.crop_hw or pp.resize_hw
  if out_hw != (size, size):
    raise ValueError(f'{os.path.join(folder, "preprocessor_config.json")}: produces '
                     f'{out_hw} images, but {config_json} has vision_config.image_size='
                     f'{size}')


def load_clip(path: str, dtype=jnp.float32, *, param_dtype=jnp.float32,
              batch_size: int = 64, mesh=None, rules='data_parallel') -> LoadedCLIP:
  """Loads a Hugging Face CLIP checkpoint folder (no network).

  The folder needs config.json, weights (model.safetensors, a sharded safetensors index
  or pytorch_model.bin), the tokenizer (tokenizer.json or vocab.json + merges.txt) and
  preprocessor_config.json. `dtype` is the matmul compute dtype (jnp.bfloat16 for speed).
  """
  config, params = hf_convert.load_hf_checkpoint(path)
  text_tokenizer = tokenizer.CLIPTextTokenizer(path, config.context_length, config.vocab_size)
  pp = preprocess.config_from_hf(os.path.join(path, 'preprocessor_config.json'))
  _check_consistent(path, config, text_tokenizer, pp)
  return LoadedCLIP(config, params, text_tokenizer, pp, dtype=dtype,
                    param_dtype=param_dtype, batch_size=batch_size, mesh=mesh,
                    rules=rules, source=path)


def load_from_config(config, **kwargs) -> LoadedCLIP:
  """The reference encoder named by `config.encoder.checkpoint` (a HF CLIP folder)."""
  path = config.encoder.checkpoint
  if not path:
    raise ValueError('config.encoder.checkpoint: empty; give a Hugging Face CLIP folder')
  try:
    return load_clip(path, **kwargs)
  except ValueError as e:
    raise ValueError(f'config.encoder.checkpoint={path!r}: {e}') from None
