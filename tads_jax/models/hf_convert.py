"""Hugging Face CLIP checkpoint folder -> CLIPConfig and Flax params, offline.

Reads config.json and the weights (model.safetensors, a sharded
model.safetensors.index.json, or pytorch_model.bin when torch is installed) of a
`transformers.CLIPModel` checkpoint. Every tensor is checked against the shape the config
implies, so a truncated or mismatched checkpoint fails with the file, the tensor and the
config fields involved, instead of a broadcasting error deep inside the model.
"""

import json
import os
from typing import Any

from flax import traverse_util
import flax.linen as nn
import numpy as np

from tads_jax.models import clip

# transformers' CLIPTextConfig / CLIPVisionConfig defaults (what a config.json may omit).
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                      num_hidden_layers=12, num_attention_heads=8,
                      max_position_embeddings=77, hidden_act='quick_gelu',
                      layer_norm_eps=1e-5, eos_token_id=49407)
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, num_channels=3, image_size=224,
                        patch_size=32, hidden_act='quick_gelu', layer_norm_eps=1e-5)

SAFETENSORS = 'model.safetensors'
# config.json's model_type of a CLIP folder whose architecture Hugging Face has no class
# for (hf_export.save_checkpoint): CLIPConfig fields, and weights under Flax param paths.
TADS_JAX_MODEL_TYPE = 'tads_jax_clip'
SAFETENSORS_INDEX = 'model.safetensors.index.json'
TORCH_BIN = 'pytorch_model.bin'


def read_json(path: str) -> dict:
  """A JSON object from a checkpoint folder; ValueError naming the file otherwise."""
  try:
    with open(path, encoding='utf-8') as f:
      data = json.load(f)
  except FileNotFoundError:
    raise ValueError(f'{path}: no such file') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: not valid JSON ({e})') from None
  if not isinstance(data, dict):
    raise ValueError(f'{path}: expected a JSON object, got {type(data).__name__}')
  return data


def _square(value, path: str, field: str) -> int:
  """HF allows image_size / patch_size as int or [h, w]; this model needs squares."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise ValueError(f'{path}: {field}={value!r}; only square sizes are supported')
    value = value[0]
  if not isinstance(value, int) or isinstance(value, bool):
    raise ValueError(f'{path}: {field}={value!r}; expected an integer')
  return value


def config_from_hf(path: str) -> clip.CLIPConfig:
  """Reads a CLIPModel config.json."""
  return config_from_hf_dict(read_json(path), path)


def config_from_hf_dict(cfg: dict, path: str = 'config.json') -> clip.CLIPConfig:
  """CLIPConfig from config.json's contents (with pre-2023 `*_config_dict` overrides).

  `path` only names the file in error messages.
  """
  model_type = cfg.get('model_type', 'clip')
  if model_type != 'clip':
    raise ValueError(f"{path}: model_type={model_type!r}; only 'clip' (CLIPModel) "
                     'checkpoints are supported')
  towers = {}
  for tower, defaults in (('text', _TEXT_DEFAULTS), ('vision', _VISION_DEFAULTS)):
    merged = dict(defaults)
    for key in (f'{tower}_config', f'{tower}_config_dict'):  # HF: *_config_dict wins
      sub = cfg.get(key)
      if sub is None:
        continue
      if not isinstance(sub, dict):
        raise ValueError(f'{path}: {key} must be an object, got {type(sub).__name__}')
      merged.update(sub)
    towers[tower] = merged
  text, vision = towers['text'], towers['vision']
  if vision['num_channels'] != 3:
    raise ValueError(f'{path}: vision_config.num_channels={vision["num_channels"]}; only '
                     'RGB (3) is supported')
  eos = text['eos_token_id']
  if not isinstance(eos, int) or isinstance(eos, bool):
    raise ValueError(f'{path}: text_config.eos_token_id={eos!r}; expected one integer')
  fields = dict(
      embed_dim=cfg.get('projection_dim', 512),
      image_size=_square(vision['image_size'], path, 'vision_config.image_size'),
      patch_size=_square(vision['patch_size'], path, 'vision_config.patch_size'),
      vision_width=vision['hidden_size'], vision_layers=vision['num_hidden_layers'],
      vision_heads=vision['num_attention_heads'],
      vision_mlp_dim=vision['intermediate_size'], vision_act=vision['hidden_act'],
      vision_ln_eps=float(vision['layer_norm_eps']),
      vocab_size=text['vocab_size'], context_length=text['max_position_embeddings'],
      text_width=text['hidden_size'], text_layers=text['num_hidden_layers'],
      text_heads=text['num_attention_heads'], text_mlp_dim=text['intermediate_size'],
      text_act=text['hidden_act'], text_ln_eps=float(text['layer_norm_eps']),
      eos_token_id=eos,
      logit_scale_init=float(cfg.get('logit_scale_init_value', 2.6592)))
  try:
    return clip.CLIPConfig(**fields)
  except ValueError as e:
    raise ValueError(f'{path}: {e}') from None


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    return load_file(path)
  except Exception as e:  # safetensors raises its own error types for corrupt files
    raise ValueError(f'{path}: cannot read safetensors ({e})') from None


def _load_torch_bin(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError(f'{path}: reading pytorch_model.bin needs torch, which is not '
                     f'installed; convert the checkpoint to {SAFETENSORS} or install torch'
                     ) from None
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types for corrupt or unsafe pickles
    raise ValueError(f'{path}: cannot read with torch.load(weights_only=True) ({e})'
                     ) from None
  if not isinstance(state, dict):
    raise ValueError(f'{path}: expected a state dict, got {type(state).__name__}')
  out = {}
  for name, tensor in state.items():
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
      tensor = tensor.float()
    out[name] = tensor.detach().cpu().numpy()
  return out


def read_state_dict(folder: str) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of the checkpoint as numpy arrays, and the file they came from."""
  single = os.path.join(folder, SAFETENSORS)
  if os.path.isfile(single):
    return _load_safetensors(single), single
  index = os.path.join(folder, SAFETENSORS_INDEX)
  if os.path.isfile(index):
    weight_map = read_json(index).get('weight_map')
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f'{index}: missing or empty weight_map')
    state = {}
    for shard in sorted(set(weight_map.values())):
      shard_path = os.path.join(folder, shard)
      if not os.path.isfile(shard_path):
        raise ValueError(f'{index}: weight_map names {shard!r}, which is not in {folder}')
      state.update(_load_safetensors(shard_path))
    return state, index
  binary = os.path.join(folder, TORCH_BIN)
  if os.path.isfile(binary):
    return _load_torch_bin(binary), binary
  raise ValueError(f'{folder}: no weights found; expected {SAFETENSORS}, '
                   f'{SAFETENSORS_INDEX} or {TORCH_BIN}')


def _block_shapes(width: int, mlp_dim: int, why: str) -> dict[str, tuple[tuple, str]]:
  return {
      'self_attn.q_proj.weight': ((width, width), why),
      'self_attn.q_proj.bias': ((width,), why),
      'self_attn.k_proj.weight': ((width, width), why),
      'self_attn.k_proj.bias': ((width,), why),
      'self_attn.v_proj.weight': ((width, width), why),
      'self_attn.v_proj.bias': ((width,), why),
      'self_attn.out_proj.weight': ((width, width), why),
      'self_attn.out_proj.bias': ((width,), why),
      'layer_norm1.weight': ((width,), why),
      'layer_norm1.bias': ((width,), why),
      'layer_norm2.weight': ((width,), why),
      'layer_norm2.bias': ((width,), why),
      'mlp.fc1.weight': ((mlp_dim, width), why + ', intermediate_size'),
      'mlp.fc1.bias': ((mlp_dim,), why + ', intermediate_size'),
      'mlp.fc2.weight': ((width, mlp_dim), why + ', intermediate_size'),
      'mlp.fc2.bias': ((width,), why),
  }


def expected_shapes(c: clip.CLIPConfig) -> dict[str, tuple[tuple, str]]:
  """HF tensor name -> (shape, the config.json fields that determine it)."""
  v, t = 'vision_config.hidden_size', 'text_config.hidden_size'
  out = {
      'logit_scale': ((), 'a scalar'),
      'visual_projection.weight': ((c.embed_dim, c.vision_width), f'projection_dim, {v}'),
      'text_projection.weight': ((c.embed_dim, c.text_width), f'projection_dim, {t}'),
      'vision_model.embeddings.class_embedding': ((c.vision_width,), v),
      'vision_model.embeddings.patch_embedding.weight': (
          (c.vision_width, 3, c.patch_size, c.patch_size), f'{v}, vision_config.patch_size'),
      'vision_model.embeddings.position_embedding.weight': (
          (c.num_patches + 1, c.vision_width),
          f'vision_config.image_size, vision_config.patch_size, {v}'),
      'vision_model.pre_layrnorm.weight': ((c.vision_width,), v),
      'vision_model.pre_layrnorm.bias': ((c.vision_width,), v),
      'vision_model.post_layernorm.weight': ((c.vision_width,), v),
      'vision_model.post_layernorm.bias': ((c.vision_width,), v),
      'text_model.embeddings.token_embedding.weight': (
          (c.vocab_size, c.text_width), f'text_config.vocab_size, {t}'),
      'text_model.embeddings.position_embedding.weight': (
          (c.context_length, c.text_width), f'text_config.max_position_embeddings, {t}'),
      'text_model.final_layer_norm.weight': ((c.text_width,), t),
      'text_model.final_layer_norm.bias': ((c.text_width,), t),
  }
  for tower, width, mlp, layers in (('vision', c.vision_width, c.vision_mlp_dim,
                                     c.vision_layers),
                                    ('text', c.text_width, c.text_mlp_dim, c.text_layers)):
    for i in range(layers):
      for name, spec in _block_shapes(width, mlp, f'{tower}_config.hidden_size').items():
        out[f'{tower}_model.encoder.layers.{i}.{name}'] = spec
  return out


def _check(state: dict[str, np.ndarray], c: clip.CLIPConfig, source: str, config_path: str):
  expected = expected_shapes(c)
  for name, (shape, why) in expected.items():
    if name not in state:
      raise ValueError(f'{source}: tensor {name!r} is missing ({config_path} implies it: '
                       f'{why}; {len(state)} tensors in the file)')
    if tuple(state[name].shape) != shape:
      raise ValueError(f'{source}: tensor {name!r} has shape {tuple(state[name].shape)}, '
                       f'but {config_path} implies {shape} ({why})')
  # Buffers (position_ids) are not weights; anything else unexpected means the config
  # describes a different model than the weights (e.g. fewer layers).
  extra = sorted(k for k in state if k not in expected and not k.endswith('position_ids'))
  if extra:
    raise ValueError(f'{source}: {len(extra)} tensors that {config_path} does not describe, '
                     f'e.g. {extra[0]!r}; config and weights are from different models')


def _block(state: dict[str, np.ndarray], prefix: str, heads: int) -> dict[str, Any]:
  w = lambda name: state[f'{prefix}.{name}']
  width = w('self_attn.q_proj.weight').shape[0]
  head_dim = width // heads
  # torch Linear computes x @ W.T with W [out, in]; out features are ordered (head, dim).
  qkv_kernel = np.stack([w(f'self_attn.{n}_proj.weight').T for n in 'qkv'], axis=1)
  qkv_bias = np.stack([w(f'self_attn.{n}_proj.bias') for n in 'qkv'], axis=0)
  return {
      'ln1': {'scale': w('layer_norm1.weight'), 'bias': w('layer_norm1.bias')},
      'ln2': {'scale': w('layer_norm2.weight'), 'bias': w('layer_norm2.bias')},
      'attn': {
          'qkv_kernel': qkv_kernel.reshape(width, 3, heads, head_dim),
          'qkv_bias': qkv_bias.reshape(3, heads, head_dim),
          'out_kernel': w('self_attn.out_proj.weight').T.reshape(heads, head_dim, width),
          'out_bias': w('self_attn.out_proj.bias'),
      },
      'fc1': {'kernel': w('mlp.fc1.weight').T, 'bias': w('mlp.fc1.bias')},
      'fc2': {'kernel': w('mlp.fc2.weight').T, 'bias': w('mlp.fc2.bias')},
  }


def convert_state_dict(state: dict[str, np.ndarray], c: clip.CLIPConfig,
                       source: str = 'state dict', config_path: str = 'config.json',
                       dtype=np.float32) -> dict[str, Any]:
  """HF CLIPModel state dict -> params of `clip.CLIP(c)` (plain numpy arrays)."""
  _check(state, c, source, config_path)
  s = {k: np.asarray(v) for k, v in state.items()}
  p = c.patch_size
  # Conv2d kernel [D, 3, p, p] -> [p*p*3, D] in the (row, column, channel) order in which
  # VisionTower flattens a patch.
  patch = s['vision_model.embeddings.patch_embedding.weight'].transpose(2, 3, 1, 0)
  vision = {
      'patch_embed': {'kernel': patch.reshape(p * p * 3, c.vision_width)},
      'cls': s['vision_model.embeddings.class_embedding'],
      'pos_embedding': s['vision_model.embeddings.position_embedding.weight'],
      'pre_ln': {'scale': s['vision_model.pre_layrnorm.weight'],
                 'bias': s['vision_model.pre_layrnorm.bias']},
      'post_ln': {'scale': s['vision_model.post_layernorm.weight'],
                  'bias': s['vision_model.post_layernorm.bias']},
      'proj': {'kernel': s['visual_projection.weight'].T},
  }
  for i in range(c.vision_layers):
    vision[f'block_{i}'] = _block(s, f'vision_model.encoder.layers.{i}', c.vision_heads)
  text = {
      'token_embedding': s['text_model.embeddings.token_embedding.weight'],
      'pos_embedding': s['text_model.embeddings.position_embedding.weight'],
      'final_ln': {'scale': s['text_model.final_layer_norm.weight'],
                   'bias': s['text_model.final_layer_norm.bias']},
      'proj': {'kernel': s['text_projection.weight'].T},
  }
  for i in range(c.text_layers):
    text[f'block_{i}'] = _block(s, f'text_model.encoder.layers.{i}', c.text_heads)
  params = {'vision': vision, 'text': text, 'logit_scale': s['logit_scale'].reshape(())}
  return _map(lambda x: np.array(x, dtype=dtype, order="C"), params)


def _map(fn, tree):
  if isinstance(tree, dict):
    return {k: _map(fn, v) for k, v in tree.items()}
  return fn(tree)


def load_hf_checkpoint(folder: str, dtype=np.float32) -> tuple[clip.CLIPConfig, dict]:
  """(config, params) from a Hugging Face CLIP checkpoint folder."""
  if not os.path.isdir(folder):
    raise ValueError(f'{folder}: not a directory (expected a Hugging Face CLIP checkpoint '
                     'folder with config.json and weights)')
  config_path = os.path.join(folder, 'config.json')
  raw = read_json(config_path)
  if raw.get('model_type') == TADS_JAX_MODEL_TYPE:
    return _load_tads_jax(folder, raw, config_path, dtype)
  config = config_from_hf_dict(raw, config_path)
  state, source = read_state_dict(folder)
  return config, convert_state_dict(state, config, source, config_path, dtype)


def _load_tads_jax(folder: str, raw: dict, config_path: str, dtype) -> tuple:
  """A 'tads_jax_clip' folder: CLIPConfig(**clip_config), params by their Flax paths."""
  fields = raw.get('clip_config')
  if not isinstance(fields, dict):
    raise ValueError(f'{config_path}: clip_config must be an object of CLIPConfig fields')
  try:
    config = clip.CLIPConfig(**fields)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{config_path}: clip_config: {e}') from None
  state, source = read_state_dict(folder)
  expected = traverse_util.flatten_dict(
      nn.meta.unbox(clip.abstract_params(clip.CLIP(config))), sep='/')  # path -> shape
  for name, spec in expected.items():
    if name not in state:
      raise ValueError(f'{source}: tensor {name!r} is missing ({config_path} implies it; '
                       f'{len(state)} tensors in the file)')
    if tuple(state[name].shape) != tuple(spec.shape):
      raise ValueError(f'{source}: tensor {name!r} has shape {tuple(state[name].shape)}, '
                       f'but {config_path} implies {tuple(spec.shape)}')
  extra = sorted(set(state) - set(expected))
  if extra:
    raise ValueError(f'{source}: {len(extra)} tensors that {config_path} does not describe, '
                     f'e.g. {extra[0]!r}; config and weights are from different models')
  params = traverse_util.unflatten_dict(
      {name: np.asarray(state[name], dtype=dtype) for name in expected}, sep='/')
  return config, params
