"""Flax CLIP: shapes, logical axis names, pooling and masking properties.

Numerical parity with transformers' PyTorch CLIPModel is in test_hf_convert.py.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tads_jax.models import clip

TINY = clip.get_config('tiny', vocab_size=100, eos_token_id=99)
LOGICAL_NAMES = {'embed', 'mlp', 'heads', 'kv', 'qkv', 'vocab', 'patch', 'proj', None}


def random_params(abstract, seed=0):
  """Random float32 params of the abstract shapes (cheaper than compiling flax's init).

  Larger than the init scale, so that the properties below are far above rounding.
  """
  rng = np.random.default_rng(seed)

  def draw(path, x):
    noise = rng.standard_normal(x.shape).astype(np.float32)
    return 1 + 0.1 * noise if jax.tree_util.keystr(path).endswith("['scale']") else 0.2 * noise
  return jax.tree_util.tree_map_with_path(draw, nn.unbox(abstract))


@pytest.fixture(scope='module')
def tiny():
  module = clip.CLIP(TINY)
  abstract = clip.abstract_params(module)
  encode_image = jax.jit(lambda p, x: module.apply({'params': p}, x,
                                                   method=clip.CLIP.encode_image))
  encode_text = jax.jit(lambda p, x: module.apply({'params': p}, x,
                                                  method=clip.CLIP.encode_text))
  return module, abstract, random_params(abstract), encode_image, encode_text


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize('name', ['vit_b32', 'vit_b16', 'vit_l14'])
def test_preset_sizes_match_transformers(name):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  c = clip.get_config(name)
  hf_config = transformers.CLIPConfig(
      text_config=dict(hidden_size=c.text_width, intermediate_size=c.text_mlp_dim,
                       num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads),
      vision_config=dict(hidden_size=c.vision_width, intermediate_size=c.vision_mlp_dim,
                         num_hidden_layers=c.vision_layers,
                         num_attention_heads=c.vision_heads, patch_size=c.patch_size,
                         image_size=c.image_size),
      projection_dim=c.embed_dim)
  with torch.device('meta'):  # shapes only, no memory
    hf_model = transformers.CLIPModel(hf_config)
  hf_count = sum(p.numel() for p in hf_model.parameters())
  abstract = clip.abstract_params(clip.CLIP(c))
  assert _count(nn.unbox(abstract)) == hf_count
  if name == 'vit_b32':
    assert hf_count == 151_277_313  # openai/clip-vit-base-patch32


def test_init_params_are_boxed_with_logical_names(tiny):
  module, abstract, _, _, _ = tiny
  # An rbg key: threefry's init compiles 2-3x slower on CPU.
  boxed = clip.init_params(module, jax.random.key(0, impl='rbg'))
  # Same tree, shapes and names as the abstract params other code shards by.
  assert (jax.tree_util.tree_structure(boxed) == jax.tree_util.tree_structure(abstract))
  leaves = jax.tree_util.tree_leaves_with_path(
      boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert len(leaves) == len(jax.tree_util.tree_leaves(nn.unbox(boxed)))
  for path, leaf in leaves:
    assert isinstance(leaf, nn.LogicallyPartitioned), jax.tree_util.keystr(path)
    assert len(leaf.names) == leaf.value.ndim, jax.tree_util.keystr(path)
    assert set(leaf.names) <= LOGICAL_NAMES
  block = boxed['vision']['block_0']
  assert block['attn']['qkv_kernel'].names == ('embed', 'qkv', 'heads', 'kv')
  assert block['fc1']['kernel'].names == ('embed', 'mlp')
  assert boxed['text']['token_embedding'].names == ('vocab', 'embed')
  params = nn.unbox(boxed)
  assert float(params['logit_scale']) == pytest.approx(math.log(1 / 0.07))
  np.testing.assert_array_equal(params['text']['final_ln']['scale'], 1)
  np.testing.assert_array_equal(params['vision']['block_1']['fc2']['bias'], 0)
  assert np.std(params['vision']['block_1']['fc1']['kernel']) == pytest.approx(0.02, rel=0.1)


def test_call_returns_both_embeddings(tiny):
  module, _, params, encode_image, encode_text = tiny
  pixels = jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3))
  ids = jnp.ones((4, TINY.context_length), jnp.int32)
  image, text, logit_scale = jax.jit(module.apply)({'params': params}, pixels, ids)
  assert image.shape == (4, TINY.embed_dim) and text.shape == (4, TINY.embed_dim)
  assert image.dtype == jnp.float32
  np.testing.assert_allclose(image, encode_image(params, pixels), atol=1e-6)
  np.testing.assert_allclose(text, encode_text(params, ids), atol=1e-6)
  assert float(logit_scale) == float(params['logit_scale'])


def test_patch_embedding_is_a_strided_convolution(tiny):
  module, _, params, _, _ = tiny
  pixels = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
  _, state = jax.jit(lambda p, x: module.apply(
      {'params': p}, x, method=clip.CLIP.encode_image, capture_intermediates=True))(
          params, pixels)
  ours = state['intermediates']['vision']['patch_embed']['__call__'][0]  # [B, N, D]
  p, d = TINY.patch_size, TINY.vision_width
  kernel = params['vision']['patch_embed']['kernel'].reshape(p, p, 3, d)  # HWIO
  conv = jax.lax.conv_general_dilated(pixels, kernel, (p, p), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(ours, conv.reshape(2, -1, d), atol=1e-5)


def test_eos_positions_follow_both_hf_rules():
  ids = jnp.array([[1, 9, 4, 12, 9], [1, 3, 3, 3, 9]])
  np.testing.assert_array_equal(clip.eos_positions(ids, 9), [1, 4])  # first EOS
  np.testing.assert_array_equal(clip.eos_positions(ids, 2), [3, 4])  # legacy: argmax


def test_text_is_causal_and_pooled_at_eos(tiny):
  _, _, params, _, encode_text = tiny
  eos = TINY.eos_token_id
  ids = np.zeros((4, TINY.context_length), np.int32)
  ids[:, :4] = [5, 6, 7, eos]
  ids_after = ids.copy()
  ids_after[1, 5:] = 42  # after EOS: invisible to the pooled token
  ids_before = ids.copy()
  ids_before[1, 1] = 43  # before EOS: changes it
  ref = encode_text(params, ids)
  np.testing.assert_allclose(encode_text(params, ids_after)[1], ref[1], atol=1e-6)
  assert np.abs(encode_text(params, ids_before)[1] - ref[1]).max() > 1e-3


def test_images_are_encoded_independently(tiny):
  _, _, params, encode_image, _ = tiny
  pixels = jax.random.normal(jax.random.PRNGKey(2), (4, 32, 32, 3))
  full = encode_image(params, pixels)
  other = pixels.at[1:].set(0.0)  # row 0 unchanged, the rest of the batch replaced
  np.testing.assert_allclose(encode_image(params, other)[0], full[0], atol=1e-5)
  np.testing.assert_allclose(encode_image(params, pixels[::-1]), full[::-1], atol=1e-5)
  assert np.abs(full[0] - full[1]).max() > 1e-3


def test_wrong_input_shapes_fail(tiny):
  module, _, params, _, _ = tiny
  with pytest.raises(ValueError, match=r'expects \[B, 32, 32, 3\]'):
    jax.eval_shape(lambda x: module.apply({'params': params}, x,
                                          method=clip.CLIP.encode_image),
                   jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match='context length is 16'):
    jax.eval_shape(lambda x: module.apply({'params': params}, x,
                                          method=clip.CLIP.encode_text),
                   jnp.zeros((1, 17), jnp.int32))


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match=r'CLIPConfig.vision_heads: 5 does not divide'):
    clip.get_config('tiny', vision_heads=5)
  with pytest.raises(ValueError, match=r"CLIPConfig.text_act: 'relu'"):
    clip.get_config('tiny', text_act='relu')
  with pytest.raises(ValueError, match=r'CLIPConfig.patch_size: 7 does not divide'):
    clip.get_config('tiny', patch_size=7)
  with pytest.raises(ValueError, match=r'CLIPConfig.text_layers: expected an integer'):
    clip.get_config('tiny', text_layers=0)
  with pytest.raises(ValueError, match="preset 'vit_h14' unknown"):
    clip.get_config('vit_h14')
  assert clip.get_config('vit_b32', vision_act='gelu').vision_act == 'gelu'
