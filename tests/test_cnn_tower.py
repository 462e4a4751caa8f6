"""The reference encoder's convolutional image tower (clip.CNNTower) and the training-time
augmentation (preprocess.augment, TrainConfig.augment_*).

References: the tower against a plain PyTorch restatement (torch.nn.Conv2d, GroupNorm,
ReLU, mean, Linear) with the same weights; the augmentation against a per-image loop of
np.pad and slicing; resuming an augmented run against the uninterrupted run.
"""

import dataclasses
import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import pixels_cnn
from conftest import validate
from tads_jax import train
from tads_jax.models import api
from tads_jax.models import bpe
from tads_jax.models import clip
from tads_jax.models import hf_export
from tads_jax.models import preprocess
from tads_jax.models import tokenizer as tokenizer_lib
from tads_jax.stages import evaluate

pytestmark = pytest.mark.usefixtures('fast_compiles')

LAYERS = ((8, 2), (8, 1), (16, 2))


def _cnn_config(**overrides):
  fields = dict(vision_tower='cnn', vision_cnn=LAYERS, vision_cnn_groups=4)
  return clip.get_config('tiny', **{**fields, **overrides})


def test_cnn_tower_matches_a_torch_restatement():
  torch = pytest.importorskip('torch')
  config = _cnn_config()
  model = clip.CLIP(config)
  params = nn.unbox(clip.init_params(model, jax.random.key(0)))['vision']
  rng = np.random.default_rng(0)
  # Non-trivial norm parameters, so that a swapped scale and bias would show.
  for i in range(len(LAYERS)):
    for name in ('scale', 'bias'):
      params[f'norm_{i}'][name] = jnp.asarray(rng.normal(size=params[f'norm_{i}'][name].shape),
                                              jnp.float32)
  pixels = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
  ours = np.asarray(clip.CNNTower(config).apply({'params': params}, pixels))

  layers, channels = [], 3
  for i, (out, stride) in enumerate(LAYERS):
    conv = torch.nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False)
    conv.weight.data = torch.from_numpy(
        np.asarray(params[f'conv_{i}']).transpose(3, 2, 0, 1).copy())  # HWIO -> OIHW
    norm = torch.nn.GroupNorm(4, out, eps=config.vision_ln_eps)
    norm.weight.data = torch.from_numpy(np.asarray(params[f'norm_{i}']['scale']).copy())
    norm.bias.data = torch.from_numpy(np.asarray(params[f'norm_{i}']['bias']).copy())
    layers += [conv, norm, torch.nn.ReLU()]
    channels = out
  proj = torch.nn.Linear(channels, config.embed_dim, bias=False)
  proj.weight.data = torch.from_numpy(np.asarray(params['proj']['kernel']).T.copy())
  torch_pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).requires_grad_()
  x = torch.nn.Sequential(*layers)(torch_pixels)
  theirs = proj(x.mean(dim=(2, 3)))
  assert ours.shape == (3, config.embed_dim)
  np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-4, atol=1e-5)

  # Gradients (on CPU clip.conv3x3 computes its own): of sum(sin(embedding)) with respect
  # to the pixels and every parameter, against torch's autograd.
  torch.sin(theirs).sum().backward()
  loss = lambda p, x: jnp.sum(jnp.sin(clip.CNNTower(config).apply({'params': p}, x)))  # noqa: E731
  grads, pixel_grad = jax.jit(jax.grad(loss, (0, 1)))(params, pixels)
  np.testing.assert_allclose(pixel_grad, torch_pixels.grad.permute(0, 2, 3, 1).numpy(),
                             rtol=1e-3, atol=1e-5)
  for i, (conv, norm) in enumerate(zip(layers[0::3], layers[1::3])):
    np.testing.assert_allclose(grads[f'conv_{i}'], conv.weight.grad.permute(2, 3, 1, 0).numpy(),
                               rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(grads[f'norm_{i}']['scale'], norm.weight.grad.numpy(),
                               rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(grads[f'norm_{i}']['bias'], norm.bias.grad.numpy(),
                               rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(grads['proj']['kernel'], proj.weight.grad.T.numpy(),
                             rtol=1e-3, atol=1e-5)


def test_cnn_tower_config_errors_and_no_hf_export(tmp_path):
  with pytest.raises(ValueError, match=r"CLIPConfig.vision_tower: 'resnet' is not one of"):
    clip.get_config('tiny', vision_tower='resnet')
  for bad in ((), ((8, 0),), ((8,),), 'wide'):
    with pytest.raises(ValueError, match=r'CLIPConfig.vision_cnn: expected a non-empty'):
      clip.get_config('tiny', vision_tower='cnn', vision_cnn=bad)
  with pytest.raises(ValueError, match=r'CLIPConfig.vision_cnn_groups: 3 does not divide'):
    clip.get_config('tiny', vision_tower='cnn', vision_cnn=((8, 2),), vision_cnn_groups=3)
  # Lists (JSON, the command line) become the hashable tuples a jit cache key needs.
  listed = clip.get_config('tiny', vision_tower='cnn', vision_cnn=[[8, 2], [16, 2]])
  assert listed.vision_cnn == ((8, 2), (16, 2)) and hash(listed)
  cfg = train.TrainConfig(kind='pixels', model='tiny', batch_size=4, samples_seen=8,
                          model_overrides={'vision_tower': 'cnn', 'vision_cnn': [[8, 2]]})
  assert hash(cfg) and cfg.clip_config().vision_cnn == ((8, 2),)
  config = _cnn_config()
  params = clip.init_params(clip.CLIP(config), jax.random.key(0))
  with pytest.raises(ValueError, match=r"CLIPConfig.vision_tower: 'cnn' cannot be exported"):
    hf_export.save_hf_checkpoint(str(tmp_path / 'clip'), config, params)
  with pytest.raises(ValueError, match=r'CNNTower: pixels of shape'):
    clip.CLIP(config).apply({'params': nn.unbox(params)}, jnp.zeros((1, 16, 16, 3)),
                            method=lambda m, x: m.vision(x))


def _augment_by_loop(images, rng, flip, shift):
  """Each image padded with its edges, cropped at its own offset, then maybe mirrored (the
  draws in the order preprocess.augment makes them)."""
  b, h, w = images.shape[:3]
  dy, dx = rng.integers(0, 2 * shift + 1, b), rng.integers(0, 2 * shift + 1, b)
  mirror = rng.random(b) < 0.5 if flip else np.zeros(b, bool)
  out = []
  for i in range(b):
    padded = np.pad(images[i], ((shift, shift), (shift, shift), (0, 0)), mode='edge')
    crop = padded[dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    out.append(crop[:, ::-1] if mirror[i] else crop)
  return np.stack(out), dy, dx, mirror


@pytest.mark.parametrize('flip,shift', [(False, 0), (True, 0), (False, 3), (True, 4)])
def test_augment_is_a_padded_crop_and_a_mirror(flip, shift):
  images = np.random.default_rng(1).integers(0, 256, (16, 12, 12, 3), dtype=np.uint8)
  ours = preprocess.augment(images, np.random.default_rng(7), flip, shift)
  theirs, dy, dx, mirror = _augment_by_loop(images, np.random.default_rng(7), flip, shift)
  assert ours.dtype == np.uint8 and ours.shape == images.shape
  np.testing.assert_array_equal(ours, theirs)
  if not flip and not shift:
    np.testing.assert_array_equal(ours, images)
  # An image cropped at the centre of its padding and not mirrored is the original.
  same = (dy == shift) & (dx == shift) & ~mirror
  for i in np.flatnonzero(same):
    np.testing.assert_array_equal(ours[i], images[i])
  if flip:
    assert 0 < mirror.sum() < len(mirror)


def test_augmented_training_resumes_to_the_uninterrupted_run(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
  tokens = rng.integers(1, 50, (24, 16)).astype(np.int32)
  tokens[:, -1] = 99
  cfg = train.TrainConfig(kind='pixels', model='tiny', batch_size=8, samples_seen=8 * 6,
                          warmup=2, checkpoint_every=2, augment_flip=True, augment_shift=2,
                          model_overrides={'vision_tower': 'cnn', 'vision_cnn': [[8, 2]],
                                           'vision_cnn_groups': 4, 'vocab_size': 100,
                                           'eos_token_id': 99, 'text_layers': 1})
  assert cfg.to_dict()['augment_shift'] == 2
  assert 'augment_flip' not in dataclasses.replace(cfg, augment_flip=False).to_dict()
  whole, _ = train.train(cfg, (images, tokens))
  train.train(cfg, (images, tokens), workdir=str(tmp_path), stop_after=3)
  resumed, _ = train.train(cfg, (images, tokens), workdir=str(tmp_path))
  for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  plain, _ = train.train(dataclasses.replace(cfg, augment_flip=False, augment_shift=0),
                         (images, tokens))
  conv = lambda p: np.asarray(p['vision']['conv_0'])  # noqa: E731
  assert not np.array_equal(conv(whole), conv(plain))  # the augmentation reached the step
  with pytest.raises(ValueError, match='TrainConfig.augment_shift'):
    dataclasses.replace(cfg, augment_shift=-1)
  with pytest.raises(ValueError, match='TrainConfig.augment_flip'):
    dataclasses.replace(cfg, augment_flip=1)


def test_a_cnn_clip_round_trips_through_its_folder(tmp_path):
  """No Hugging Face class holds the CNN tower: save_checkpoint writes a 'tads_jax_clip'
  folder, load_clip reads it back to the same params and embeddings; a ViT still gets a
  Hugging Face folder."""
  captions = [f'a {c} {s} on a grey background' for c in ('red', 'blue', 'green')
              for s in ('circle', 'square', 'star', 'heart')] * 3
  tok_dir = str(tmp_path / 'tok')
  bpe.train_bpe(captions, 600, tok_dir, model_max_length=16)
  vocab = len(tokenizer_lib.CLIPTextTokenizer(tok_dir, 16).tokenizer)
  config = _cnn_config(vocab_size=vocab, eos_token_id=vocab - 1)
  params = nn.unbox(clip.init_params(clip.CLIP(config), jax.random.key(3)))
  folder = hf_export.save_checkpoint(str(tmp_path / 'clip'), config, params,
                                     tokenizer_dir=tok_dir)
  with open(f'{folder}/config.json', encoding='utf-8') as f:
    assert json.load(f)['model_type'] == 'tads_jax_clip'
  loaded = api.load_clip(folder)
  assert loaded.config == config
  for a, b in zip(jax.tree_util.tree_leaves(params),
                  jax.tree_util.tree_leaves(jax.device_get(loaded.params))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  pixels = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  direct = clip.CLIP(config).apply({'params': params}, pixels, method=clip.CLIP.encode_image)
  direct = np.asarray(direct) / np.linalg.norm(np.asarray(direct), axis=1, keepdims=True)
  np.testing.assert_allclose(loaded.encode_pixels(pixels), direct, rtol=1e-5, atol=1e-6)
  # A weight file from another architecture is refused, naming the tensor.
  other = _cnn_config(vocab_size=vocab, eos_token_id=vocab - 1, vision_cnn=((8, 2),))
  hf_export.save_checkpoint(str(tmp_path / 'other'), other,
                            nn.unbox(clip.init_params(clip.CLIP(other), jax.random.key(0))),
                            tokenizer_dir=tok_dir)
  shutil.copyfile(f'{tmp_path}/other/model.safetensors', f'{folder}/model.safetensors')
  with pytest.raises(ValueError, match=r"model.safetensors: tensor 'vision/conv_1' is missing"):
    api.load_clip(folder)
  vit = clip.get_config('tiny', vocab_size=vocab, eos_token_id=vocab - 1)
  vit_folder = hf_export.save_checkpoint(
      str(tmp_path / 'vit'), vit, clip.init_params(clip.CLIP(vit), jax.random.key(0)),
      tokenizer_dir=tok_dir)
  with open(f'{vit_folder}/config.json', encoding='utf-8') as f:
    assert json.load(f)['model_type'] == 'clip'


@pytest.mark.parametrize('stride,height,width', [(1, 7, 10), (2, 7, 10), (2, 8, 9), (3, 7, 10)])
def test_conv3x3_equals_xla_convolution_in_value_and_gradient(stride, height, width):
  """clip.conv3x3 against lax.conv_general_dilated on non-square inputs: its value, and
  under differentiation (on CPU an im2col matmul forward, the kernel's gradient from the
  same matrix) its value and both gradients. Width 10 takes _im2col's paired-column path
  at stride 2, width 9 the strided one."""
  rng = np.random.default_rng(stride + width)
  x = jnp.asarray(rng.normal(size=(2, height, width, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 5, 4)), jnp.float32)
  reference = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  ours = lambda x, k: clip.conv3x3(x, k, stride, jnp.float32)  # noqa: E731
  np.testing.assert_allclose(ours(x, kernel), reference(x, kernel), rtol=1e-5, atol=1e-5)
  dy = jnp.asarray(rng.normal(size=reference(x, kernel).shape), jnp.float32)
  (value, vjp), (ref_value, ref_vjp) = (jax.vjp(f, x, kernel) for f in (ours, reference))
  np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.jit(vjp)(dy), ref_vjp(dy)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))  # noqa: E731
  for a, b in zip(jax.grad(loss(ours), (0, 1))(x, kernel),
                  jax.grad(loss(reference), (0, 1))(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('stride', [1, 2])
def test_conv3x3_in_bfloat16_matches_xla_convolution_in_bfloat16(stride):
  """dtype=bfloat16 casts the matmul inputs and accumulates in float32, as XLA's
  convolution with the same casts does."""
  rng = np.random.default_rng(stride)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 6)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(3, 3, 6, 8)), jnp.float32)
  reference = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), (stride, stride), ((1, 1), (1, 1)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), preferred_element_type=jnp.float32)
  ours = lambda x, k: clip.conv3x3(x, k, stride, jnp.bfloat16)  # noqa: E731
  loss = lambda f: lambda x, k: jnp.sum(jnp.sin(f(x, k)))  # noqa: E731
  (value, grads), (ref_value, ref_grads) = (jax.value_and_grad(loss(f), (0, 1))(x, kernel)
                                            for f in (ours, reference))
  assert all(g.dtype == jnp.float32 for g in grads)
  np.testing.assert_allclose(value, ref_value, rtol=2e-2, atol=1e-1)
  for a, b in zip(grads, ref_grads):
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=5e-2)


def test_the_cnn_pixel_proxy_config_validates_and_trains_the_cnn():
  c = pixels_cnn.get_config()
  validate(c)
  model = evaluate.train_config(c, 0).clip_config()
  assert (model.vision_tower, model.image_size) == ('cnn', c.encoder.image_size)
