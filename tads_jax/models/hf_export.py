"""Flax CLIP params -> a Hugging Face CLIP checkpoint folder (the inverse of hf_convert).

A reference CLIP trained from scratch (no pretrained model for the pool) is saved as the
folder `load_clip` reads, so the pipeline has one loading path, and the same folder opens
in PyTorch with `transformers.CLIPModel.from_pretrained`:

    config.json                a CLIPModel config (text_config, vision_config, ...)
    model.safetensors          every CLIPModel tensor under its HF name and layout, float32
    preprocessor_config.json   CLIPImageProcessor settings
    tokenizer files            copied from `tokenizer_dir` (e.g. written by bpe.train_bpe)

An architecture Hugging Face has no class for (the CNN image tower, a conv stem) is saved by
`save_checkpoint` in the same layout with config.json's model_type 'tads_jax_clip': the
CLIPConfig fields and the Flax params under their own paths ('vision/conv_0', ...).
`load_clip` reads both; transformers refuses the second by its model_type.

The folder is built in a temporary folder beside it and renamed into place, so a killed
export leaves no half-written checkpoint.
"""

import dataclasses
import json
import os
import shutil
from typing import Any, Mapping

from flax import traverse_util
import flax.linen as nn
import jax
import numpy as np

from tads_jax.models import bpe, clip, hf_convert
from tads_jax.models import preprocess as preprocess_lib
from tads_jax.models import tokenizer as tokenizer_lib

# Tokenizer files a CLIP folder may hold; whichever exist in tokenizer_dir are copied.
TOKENIZER_FILES = ('vocab.json', 'merges.txt', 'tokenizer.json', 'tokenizer_config.json',
                   'special_tokens_map.json', 'added_tokens.json')


def _flatten(tree, prefix: str = 'params') -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f'{prefix}/{key}'))
    return out
  return {prefix: tree}


def _numpy_params(config: clip.CLIPConfig, params) -> dict[str, Any]:
  """Unboxed float32 numpy params, checked against the tree `clip.CLIP(config)` has."""
  params = nn.meta.unbox(params)
  expected = _flatten(nn.meta.unbox(clip.abstract_params(clip.CLIP(config))))
  given = _flatten(params)
  missing = sorted(set(expected) - set(given))
  extra = sorted(set(given) - set(expected))
  if missing or extra:
    what = f'{missing[0]} is missing' if missing else f'{extra[0]} is not a CLIP param'
    raise ValueError(f'params: {what} ({len(missing)} missing, {len(extra)} unexpected); '
                     'expected the tree of clip.CLIP(config) (vision, text, logit_scale)')
  for name, spec in expected.items():
    shape = tuple(np.shape(given[name]))
    if shape != tuple(spec.shape):
      raise ValueError(f'params: {name} has shape {shape}, but the config implies '
                       f'{tuple(spec.shape)}')
  return jax.tree_util.tree_map(
      lambda x: np.asarray(jax.device_get(x), dtype=np.float32), params)


def _block_state(block: dict, prefix: str) -> dict[str, np.ndarray]:
  """One transformer block in torch layout (Linear weights are [out, in])."""
  attn = block['attn']
  width = attn['qkv_kernel'].shape[0]
  qkv_kernel = attn['qkv_kernel'].reshape(width, 3, width)  # [D, 3, H*Dh]
  qkv_bias = attn['qkv_bias'].reshape(3, width)
  out = {}
  for i, name in enumerate('qkv'):
    out[f'self_attn.{name}_proj.weight'] = qkv_kernel[:, i].T
    out[f'self_attn.{name}_proj.bias'] = qkv_bias[i]
  out.update({
      'self_attn.out_proj.weight': attn['out_kernel'].reshape(width, width).T,
      'self_attn.out_proj.bias': attn['out_bias'],
      'layer_norm1.weight': block['ln1']['scale'],
      'layer_norm1.bias': block['ln1']['bias'],
      'layer_norm2.weight': block['ln2']['scale'],
      'layer_norm2.bias': block['ln2']['bias'],
      'mlp.fc1.weight': block['fc1']['kernel'].T,
      'mlp.fc1.bias': block['fc1']['bias'],
      'mlp.fc2.weight': block['fc2']['kernel'].T,
      'mlp.fc2.bias': block['fc2']['bias'],
  })
  return {f'{prefix}.{k}': v for k, v in out.items()}


def check_exportable(config: clip.CLIPConfig) -> None:
  """Hugging Face's CLIPVisionModel has only the patch embedding: a conv stem has no place
  there, so a model with one (or with the CNN tower) is refused rather than exported
  wrong."""
  if config.vision_tower != 'vit':
    raise ValueError(f"CLIPConfig.vision_tower: {config.vision_tower!r} cannot be exported "
                     "to a Hugging Face CLIP (its vision model is a ViT); save_checkpoint "
                     "writes it as a 'tads_jax_clip' folder, which load_clip reads")
  if config.vision_stem != 'patch':
    raise ValueError(f"CLIPConfig.vision_stem: {config.vision_stem!r} cannot be exported to "
                     "a Hugging Face CLIP (its vision model has only the 'patch' stem); "
                     "save_checkpoint writes it as a 'tads_jax_clip' folder, which load_clip "
                     'reads')


def to_state_dict(config: clip.CLIPConfig, params) -> dict[str, np.ndarray]:
  """Params of `clip.CLIP(config)` -> HF CLIPModel state dict (contiguous float32)."""
  check_exportable(config)
  p = _numpy_params(config, params)
  vision, text, ps = p['vision'], p['text'], config.patch_size
  # [p*p*3, D] in VisionTower's (row, column, channel) patch order -> Conv2d [D, 3, p, p].
  patch = vision['patch_embed']['kernel'].reshape(ps, ps, 3, config.vision_width)
  state = {
      'logit_scale': p['logit_scale'].reshape(()),
      'visual_projection.weight': vision['proj']['kernel'].T,
      'text_projection.weight': text['proj']['kernel'].T,
      'vision_model.embeddings.class_embedding': vision['cls'],
      'vision_model.embeddings.patch_embedding.weight': patch.transpose(3, 2, 0, 1),
      'vision_model.embeddings.position_embedding.weight': vision['pos_embedding'],
      'vision_model.pre_layrnorm.weight': vision['pre_ln']['scale'],  # sic: HF's name
      'vision_model.pre_layrnorm.bias': vision['pre_ln']['bias'],
      'vision_model.post_layernorm.weight': vision['post_ln']['scale'],
      'vision_model.post_layernorm.bias': vision['post_ln']['bias'],
      'text_model.embeddings.token_embedding.weight': text['token_embedding'],
      'text_model.embeddings.position_embedding.weight': text['pos_embedding'],
      'text_model.final_layer_norm.weight': text['final_ln']['scale'],
      'text_model.final_layer_norm.bias': text['final_ln']['bias'],
  }
  for i in range(config.vision_layers):
    state.update(_block_state(vision[f'block_{i}'], f'vision_model.encoder.layers.{i}'))
  for i in range(config.text_layers):
    state.update(_block_state(text[f'block_{i}'], f'text_model.encoder.layers.{i}'))
  # np.array, not np.ascontiguousarray, which would turn the scalar logit_scale into [1].
  return {k: np.array(v, dtype=np.float32, order='C') for k, v in state.items()}


def hf_config_dict(config: clip.CLIPConfig, bos_token_id: int | None = None,
                   pad_token_id: int | None = None) -> dict:
  """config.json of a transformers CLIPModel with this architecture.

  Special ids default to CLIP's layout (BOS just below EOS, padding with EOS); pass the
  tokenizer's when it differs. Only eos_token_id changes the model (where text pools).
  """
  check_exportable(config)
  eos = config.eos_token_id
  if config.eos_token_id == 2:  # legacy configs (argmax pooling) carried these
    default_bos, default_pad = 0, 1
  else:
    default_bos, default_pad = max(eos - 1, 0), eos
  common = dict(attention_dropout=0.0, initializer_factor=1.0, initializer_range=0.02,
                projection_dim=config.embed_dim)
  text_config = dict(
      model_type='clip_text_model', vocab_size=config.vocab_size,
      hidden_size=config.text_width, intermediate_size=config.text_mlp_dim,
      num_hidden_layers=config.text_layers, num_attention_heads=config.text_heads,
      max_position_embeddings=config.context_length, hidden_act=config.text_act,
      layer_norm_eps=config.text_ln_eps,
      bos_token_id=default_bos if bos_token_id is None else bos_token_id,
      eos_token_id=eos,
      pad_token_id=default_pad if pad_token_id is None else pad_token_id, **common)
  vision_config = dict(
      model_type='clip_vision_model', hidden_size=config.vision_width,
      intermediate_size=config.vision_mlp_dim, num_hidden_layers=config.vision_layers,
      num_attention_heads=config.vision_heads, num_channels=3,
      image_size=config.image_size, patch_size=config.patch_size,
      hidden_act=config.vision_act, layer_norm_eps=config.vision_ln_eps, **common)
  return dict(architectures=['CLIPModel'], model_type='clip', dtype='float32',
              projection_dim=config.embed_dim,
              logit_scale_init_value=config.logit_scale_init, initializer_factor=1.0,
              text_config=text_config, vision_config=vision_config)


def preprocessor_dict(pp: preprocess_lib.PreprocessConfig) -> dict:
  """preprocessor_config.json (CLIPImageProcessor) that reads back as `pp`."""
  out = dict(image_processor_type='CLIPImageProcessor', do_convert_rgb=pp.convert_rgb,
             do_resize=pp.shortest_edge is not None or pp.resize_hw is not None,
             resample=int(pp.resample))
  if pp.resize_hw is not None:
    out['size'] = dict(height=pp.resize_hw[0], width=pp.resize_hw[1])
  elif pp.shortest_edge is not None:
    out['size'] = dict(shortest_edge=pp.shortest_edge)
  out['do_center_crop'] = pp.crop_hw is not None
  if pp.crop_hw is not None:
    out['crop_size'] = dict(height=pp.crop_hw[0], width=pp.crop_hw[1])
  out['do_rescale'] = pp.rescale_factor is not None
  if pp.rescale_factor is not None:
    out['rescale_factor'] = pp.rescale_factor
  out['do_normalize'] = pp.mean is not None
  if pp.mean is not None:
    out['image_mean'], out['image_std'] = list(pp.mean), list(pp.std)
  return out


def _check_tokenizer(tokenizer_dir: str, config: clip.CLIPConfig):
  """load_clip's tokenizer checks, run at export rather than at load; (bos, pad) ids."""
  text_tokenizer = tokenizer_lib.CLIPTextTokenizer(tokenizer_dir, config.context_length,
                                                   config.vocab_size)
  tok = text_tokenizer.tokenizer
  eos = tok.eos_token_id
  if config.eos_token_id == 2:
    if eos != len(tok) - 1:
      raise ValueError(f'{tokenizer_dir}: EOS id {eos} is not the largest of {len(tok)} '
                       'tokens, but config.eos_token_id=2 pools at the largest id')
  elif eos != config.eos_token_id:
    raise ValueError(f'{tokenizer_dir}: EOS id {eos}, but config.eos_token_id='
                     f'{config.eos_token_id}')
  return tok.bos_token_id, tok.pad_token_id


def save_checkpoint(folder: str, config: clip.CLIPConfig, params,
                    preprocess: preprocess_lib.PreprocessConfig | None = None, *,
                    tokenizer_dir: str | None = None) -> str:
  """Writes a trained CLIP as the folder `load_clip` reads: a Hugging Face CLIP folder
  (save_hf_checkpoint) when the architecture has one, else a 'tads_jax_clip' folder."""
  _check_type(config)
  try:
    check_exportable(config)
  except ValueError:
    return _save_folder(folder, config, params, preprocess, tokenizer_dir, hf=False)
  return save_hf_checkpoint(folder, config, params, preprocess, tokenizer_dir=tokenizer_dir)


def tads_jax_config_dict(config: clip.CLIPConfig) -> dict:
  """config.json of a 'tads_jax_clip' folder: every CLIPConfig field."""
  return dict(model_type=hf_convert.TADS_JAX_MODEL_TYPE, dtype='float32',
              clip_config=json.loads(json.dumps(dataclasses.asdict(config))))


def save_hf_checkpoint(folder: str, config: clip.CLIPConfig, params,
                       preprocess: preprocess_lib.PreprocessConfig | None = None, *,
                       tokenizer_dir: str | None = None) -> str:
  """Writes `params` of `clip.CLIP(config)` as a Hugging Face CLIP folder; returns it.

  `params` may be boxed (from clip.init_params), jax or numpy, any float dtype; weights are
  stored as float32. `preprocess` defaults to OpenAI CLIP's for config.image_size.
  `tokenizer_dir` (may be `folder` itself) supplies the tokenizer files; its EOS id must be
  config.eos_token_id and it must fit in config.vocab_size, as load_clip requires. An
  existing `folder` is replaced.
  """
  _check_type(config)
  check_exportable(config)
  return _save_folder(folder, config, params, preprocess, tokenizer_dir, hf=True)


def _check_type(config):
  if not isinstance(config, clip.CLIPConfig):
    raise TypeError(f'config: expected a clip.CLIPConfig, got {type(config).__name__}')


def _save_folder(folder, config, params, preprocess, tokenizer_dir, hf: bool) -> str:
  pp = preprocess_lib.default_config(config.image_size) if preprocess is None else preprocess
  out_hw = pp.crop_hw or pp.resize_hw
  if out_hw != (config.image_size, config.image_size):
    raise ValueError(f'preprocess: produces {out_hw} images, but config.image_size is '
                     f'{config.image_size}')
  if hf:
    state = to_state_dict(config, params)
  else:  # Flax paths ('vision/conv_0'), as hf_convert reads them back
    state = {name: np.array(v, dtype=np.float32, order='C') for name, v in
             traverse_util.flatten_dict(_numpy_params(config, params), sep='/').items()}
  bos = pad = None
  copy = []
  if tokenizer_dir is not None:
    bos, pad = _check_tokenizer(tokenizer_dir, config)
    copy = [f for f in TOKENIZER_FILES if os.path.isfile(os.path.join(tokenizer_dir, f))]

  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  with bpe.atomic_folder(folder) as tmp:
    with open(os.path.join(tmp, 'config.json'), 'w', encoding='utf-8') as f:
      json.dump(hf_config_dict(config, bos, pad) if hf else tads_jax_config_dict(config), f,
                indent=2)
    # transformers reads safetensors only with format metadata 'pt' (its torch layout).
    weights = os.path.join(tmp, hf_convert.SAFETENSORS)
    save_file(state, weights, metadata={'format': 'pt' if hf else 'flax'})
    os.chmod(weights, 0o644)  # safetensors creates it private; the folder is shared
    with open(os.path.join(tmp, 'preprocessor_config.json'), 'w', encoding='utf-8') as f:
      json.dump(preprocessor_dict(pp), f, indent=2)
    for name in copy:
      shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(tmp, name))
  return os.path.abspath(folder)
