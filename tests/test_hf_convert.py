"""Hugging Face CLIP folder -> Flax: parity with transformers' PyTorch CLIPModel.

The reference is a random-weight `transformers.CLIPModel` saved the way the Hub stores
checkpoints; the tokenizer vocabulary, merges and preprocessor config are written here.
Covers hf_convert.py, tokenizer.py, preprocess.py and api.py (the loading path).
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from safetensors.numpy import load_file, save_file  # noqa: E402

from tads_jax.models import api, clip, hf_convert, preprocess  # noqa: E402

TOL = 1e-4


def _bytes_to_unicode():
  """GPT-2 / CLIP byte -> printable character table (the BPE base alphabet)."""
  bs = (list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
        + list(range(ord('®'), ord('ÿ') + 1)))
  cs = bs[:]
  n = 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return [chr(c) for c in cs]


# Enough merges to make whole-word tokens for a few words; everything else falls back to
# byte tokens, as CLIP's tokenizer does for rare strings.
MERGES = ['p h', 'ph o', 'pho t', 'phot o</w>', 'o f</w>', 'c a', 'ca t</w>', 'd o',
          'do g</w>', 't h', 'th e</w>']


def tiny_vocab():
  chars = _bytes_to_unicode()
  tokens = chars + [c + '</w>' for c in chars] + [m.replace(' ', '') for m in MERGES]
  tokens += ['<|startoftext|>', '<|endoftext|>']  # last, as in CLIP: EOS has the top id
  return {t: i for i, t in enumerate(tokens)}


VOCAB = tiny_vocab()
BOS, EOS = VOCAB['<|startoftext|>'], VOCAB['<|endoftext|>']
CONTEXT = 16
IMAGE = 32


def hf_config(vision_act='quick_gelu', text_act='gelu', eos_token_id=EOS, **vision):
  # Unequal widths, head sizes and projection catch transposed or swapped tensors.
  vision_config = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, image_size=IMAGE, patch_size=8,
                       hidden_act=vision_act)
  vision_config.update(vision)
  return transformers.CLIPConfig(
      text_config=dict(vocab_size=len(VOCAB), hidden_size=48, intermediate_size=80,
                       num_hidden_layers=2, num_attention_heads=4,
                       max_position_embeddings=CONTEXT, hidden_act=text_act,
                       bos_token_id=BOS, eos_token_id=eos_token_id, pad_token_id=EOS),
      vision_config=vision_config, projection_dim=40)


def torch_model(config, seed=0):
  torch.manual_seed(seed)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():  # HF inits the logit scale to a constant; make it distinctive
    model.logit_scale.fill_(3.1)
  return model


PREPROCESSOR = {
    'crop_size': {'height': IMAGE, 'width': IMAGE}, 'do_center_crop': True,
    'do_convert_rgb': True, 'do_normalize': True, 'do_rescale': True, 'do_resize': True,
    'image_mean': [0.48145466, 0.4578275, 0.40821073],
    'image_std': [0.26862954, 0.26130258, 0.27577711],
    'image_processor_type': 'CLIPImageProcessor', 'resample': 3,
    'rescale_factor': 1 / 255, 'size': {'shortest_edge': IMAGE}}


def write_folder(folder, model, weights='safetensors', tokenizer=True, preprocessor=True):
  """A checkpoint folder as the Hub has it (config, weights, tokenizer, preprocessor)."""
  os.makedirs(folder, exist_ok=True)
  model.config.to_json_file(os.path.join(folder, 'config.json'))
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  if weights == 'safetensors':
    save_file(state, os.path.join(folder, 'model.safetensors'))
  else:
    torch.save(model.state_dict(), os.path.join(folder, 'pytorch_model.bin'))
  if tokenizer:
    with open(os.path.join(folder, 'vocab.json'), 'w') as f:
      json.dump(VOCAB, f)
    with open(os.path.join(folder, 'merges.txt'), 'w') as f:
      f.write('#version: 0.2\n' + '\n'.join(MERGES) + '\n')
  if preprocessor:
    with open(os.path.join(folder, 'preprocessor_config.json'), 'w') as f:
      json.dump(PREPROCESSOR, f)
  return str(folder)


def hf_features(out):
  """transformers 5 returns a ModelOutput (projection in pooler_output); 4.x a tensor."""
  if hasattr(out, 'pooler_output'):
    out = out.pooler_output
  return out.detach().numpy()


def reference_tokenizer():
  # Built from the vocabulary in memory, not from the folder our loader reads.
  return transformers.CLIPTokenizerFast(vocab=dict(VOCAB),
                                        merges=[tuple(m.split()) for m in MERGES])


def random_ids(rng, n):
  """[n, CONTEXT] ids: BOS, random tokens, EOS at varying positions, EOS padding."""
  ids = rng.integers(0, BOS, size=(n, CONTEXT))
  ids[:, 0] = BOS
  for row, end in zip(ids, rng.integers(2, CONTEXT, size=n)):
    row[end:] = EOS
  return ids


def max_diff(a, b):
  return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  model = torch_model(hf_config())
  path = write_folder(tmp_path_factory.mktemp('clip'), model)
  return path, model


@pytest.fixture(scope='module')
def loaded(folder):
  return api.load_clip(folder[0], batch_size=4)


@pytest.mark.parametrize('vision_act,text_act', [('quick_gelu', 'gelu'),
                                                  ('gelu', 'quick_gelu')])
def test_features_match_pytorch(tmp_path, vision_act, text_act):
  model = torch_model(hf_config(vision_act, text_act), seed=1)
  path = write_folder(tmp_path, model)
  config, params = hf_convert.load_hf_checkpoint(path)
  assert (config.vision_act, config.text_act) == (vision_act, text_act)
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(3, IMAGE, IMAGE, 3)).astype(np.float32)
  ids = random_ids(rng, 3)
  with torch.no_grad():
    ref_image = hf_features(model.get_image_features(
        pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))))
    ref_text = hf_features(model.get_text_features(input_ids=torch.from_numpy(ids)))
  module = clip.CLIP(config)
  image, text, logit_scale = jax.jit(module.apply)({'params': params}, pixels,
                                                   ids.astype(np.int32))
  assert image.shape == (3, 40) and text.shape == (3, 40)
  assert max_diff(image, ref_image) <= TOL
  assert max_diff(text, ref_text) <= TOL
  assert float(logit_scale) == pytest.approx(3.1)


def test_legacy_eos_pooling_matches_pytorch(tmp_path):
  # Configs written before transformers PR #24773 say eos_token_id=2 and pool at argmax.
  model = torch_model(hf_config(eos_token_id=2))
  config, params = hf_convert.load_hf_checkpoint(write_folder(tmp_path, model))
  assert config.eos_token_id == 2
  ids = random_ids(np.random.default_rng(1), 4)
  ids[0, 3:] = 5  # no EOS at all: argmax still picks the largest id, as HF does
  with torch.no_grad():
    ref = hf_features(model.get_text_features(input_ids=torch.from_numpy(ids)))
  out = clip.CLIP(config).apply({'params': params}, ids.astype(np.int32),
                                method=clip.CLIP.encode_text)
  assert max_diff(out, ref) <= TOL


def test_pytorch_bin_loads_like_safetensors(tmp_path, folder):
  path, model = folder
  bin_path = write_folder(tmp_path, model, weights='bin')
  assert not os.path.exists(os.path.join(bin_path, 'model.safetensors'))
  _, from_bin = hf_convert.load_hf_checkpoint(bin_path)
  _, from_st = hf_convert.load_hf_checkpoint(path)
  flat_bin = _flatten(from_bin)
  flat_st = _flatten(from_st)
  assert flat_bin.keys() == flat_st.keys()
  for key in flat_st:
    np.testing.assert_array_equal(flat_bin[key], flat_st[key])


def test_sharded_safetensors_index(tmp_path, folder):
  path, model = folder
  sharded = write_folder(tmp_path, model)
  state = load_file(os.path.join(sharded, 'model.safetensors'))
  os.remove(os.path.join(sharded, 'model.safetensors'))
  names = sorted(state)
  halves = {'model-00001-of-00002.safetensors': names[::2],
            'model-00002-of-00002.safetensors': names[1::2]}
  weight_map = {}
  for file, keys in halves.items():
    save_file({k: state[k] for k in keys}, os.path.join(sharded, file))
    weight_map.update({k: file for k in keys})
  with open(os.path.join(sharded, 'model.safetensors.index.json'), 'w') as f:
    json.dump({'metadata': {}, 'weight_map': weight_map}, f)
  flat = _flatten(hf_convert.load_hf_checkpoint(sharded)[1])
  ref = _flatten(hf_convert.load_hf_checkpoint(path)[1])
  assert flat.keys() == ref.keys()
  for key in ref:
    np.testing.assert_array_equal(flat[key], ref[key])
  os.remove(os.path.join(sharded, 'model-00002-of-00002.safetensors'))
  with pytest.raises(ValueError, match="weight_map names 'model-00002-of-00002"):
    hf_convert.load_hf_checkpoint(sharded)


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}/'))
    else:
      out[prefix + k] = v
  return out


def test_tokenizer_matches_clip_tokenizer_fast(loaded):
  texts = ['a photo of a cat', 'The  DOG!', 'photo photography', '',
           'x' * 40]  # the last one is cut to the context with EOS kept last
  ours = loaded.tokenize(texts)
  ref = reference_tokenizer()(texts, padding='max_length', truncation=True,
                              max_length=CONTEXT)['input_ids']
  np.testing.assert_array_equal(ours, np.asarray(ref))
  assert ours.dtype == np.int32 and ours.shape == (5, CONTEXT)
  # By hand: the merges make whole-word tokens; EOS pads.
  words = [VOCAB[w] for w in ('a</w>', 'photo</w>', 'of</w>', 'a</w>', 'cat</w>')]
  assert ours[0].tolist() == [BOS, *words] + [EOS] * (CONTEXT - 6)
  assert ours[4, -1] == EOS and ours[4, 0] == BOS and EOS not in ours[4, :-1]


def test_preprocessing_matches_clip_image_processor():
  rng = np.random.default_rng(0)
  cfg = preprocess.config_from_hf_dict(PREPROCESSOR)
  ref = transformers.CLIPImageProcessorPil(**{k: v for k, v in PREPROCESSOR.items()
                                               if k != 'image_processor_type'})
  images = [
      rng.integers(0, 256, (50, 40, 3), dtype=np.uint8),   # portrait
      rng.integers(0, 256, (33, 90, 3), dtype=np.uint8),   # landscape
      rng.integers(0, 256, (20, 25, 3), dtype=np.uint8),   # upsampled
      rng.integers(0, 256, (45, 45, 1), dtype=np.uint8),    # grayscale
      rng.integers(0, 256, (40, 60, 4), dtype=np.uint8),   # RGBA onto white
      Image.fromarray(rng.integers(0, 256, (70, 64, 3), dtype=np.uint8)),
      Image.fromarray(rng.integers(0, 256, (64, 48, 4), dtype=np.uint8), 'RGBA'),
      Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8), 'L'),
  ]
  ours = preprocess.preprocess_images(images, cfg)
  theirs = ref(images=images, return_tensors='np')['pixel_values'].transpose(0, 2, 3, 1)
  assert ours.shape == (len(images), IMAGE, IMAGE, 3) and ours.dtype == np.float32
  assert max_diff(ours, theirs) <= 1e-6
  # A 2-D array (which HF rejects) is read as grayscale, like a PIL 'L' image.
  gray = rng.integers(0, 256, (45, 45), dtype=np.uint8)
  np.testing.assert_array_equal(preprocess.preprocess_images([gray], cfg),
                                preprocess.preprocess_images([Image.fromarray(gray)], cfg))


def test_legacy_int_sizes_read_like_hf():
  # Older Hub folders (e.g. openai/clip-vit-base-patch32) store bare integers.
  legacy = dict(PREPROCESSOR, size=IMAGE, crop_size=IMAGE)
  cfg = preprocess.config_from_hf_dict(legacy)
  assert cfg == preprocess.config_from_hf_dict(PREPROCESSOR)
  image = np.random.default_rng(3).integers(0, 256, (41, 77, 3), dtype=np.uint8)
  ref = transformers.CLIPImageProcessorPil(size=IMAGE, crop_size=IMAGE)
  theirs = ref(images=[image], return_tensors='np')['pixel_values'].transpose(0, 2, 3, 1)
  assert max_diff(preprocess.preprocess_images([image], cfg), theirs) <= 1e-6
  with pytest.raises(ValueError, match=r"preprocessor_config\.json: size=\{'longest_edge'"):
    preprocess.config_from_hf_dict(dict(PREPROCESSOR, size={'longest_edge': 5}))


def test_center_crop_pads_small_images_like_hf():
  image = np.arange(2 * 3 * 1, dtype=np.uint8).reshape(2, 3, 1) + 1
  out = preprocess.center_crop(image, (4, 4))[..., 0]
  # HF pads to 4x4 with the image at ceil((4-2)/2)=1, ceil((4-3)/2)=1, then crops.
  expected = np.array([[0, 0, 0, 0], [0, 1, 2, 3], [0, 4, 5, 6], [0, 0, 0, 0]])
  np.testing.assert_array_equal(out, expected)


def test_end_to_end_matches_pytorch(folder, loaded):
  path, model = folder
  rng = np.random.default_rng(2)
  images = [rng.integers(0, 256, (48 + 5 * i, 40 + 7 * i, 3), dtype=np.uint8)
            for i in range(5)]  # 5 rows at batch size 4: one padded tail
  texts = ['a photo of a cat', 'the dog', 'photo of the dog', 'cat cat cat', 'zebra']
  ours_image = loaded.encode_images(images)
  ours_text = loaded.encode_texts(texts)

  processor = transformers.CLIPImageProcessorPil.from_pretrained(path)
  pixel_values = processor(images=images, return_tensors='pt')['pixel_values']
  ids = reference_tokenizer()(texts, padding='max_length', max_length=CONTEXT,
                              truncation=True, return_tensors='pt')['input_ids']
  with torch.no_grad():
    ref_image = hf_features(model.get_image_features(pixel_values=pixel_values))
    ref_text = hf_features(model.get_text_features(input_ids=ids))
  ref_image /= np.linalg.norm(ref_image, axis=-1, keepdims=True)
  ref_text /= np.linalg.norm(ref_text, axis=-1, keepdims=True)
  assert ours_image.shape == (5, 40) and ours_text.shape == (5, 40)
  assert ours_image.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(ours_image, axis=-1), 1, atol=1e-6)
  assert max_diff(ours_image, ref_image) <= TOL
  assert max_diff(ours_text, ref_text) <= TOL
  # A PIL image gives the same embedding as its array; the batch split changes nothing.
  pil = loaded.encode_images([Image.fromarray(images[1])])
  assert max_diff(pil[0], ours_image[1]) <= 1e-6
  assert max_diff(loaded.encode_texts(texts[3:4])[0], ours_text[3]) <= 1e-6
  assert loaded.encode_texts([]).shape == (0, 40)


def test_bfloat16_compute_stays_close(folder, loaded):
  bf16 = api.load_clip(folder[0], dtype=jnp.bfloat16, batch_size=4)
  texts = ['a photo of a cat', 'the dog']
  cos = np.sum(bf16.encode_texts(texts) * loaded.encode_texts(texts), axis=-1)
  assert np.all(cos > 0.99)


def _save_without(path, drop=(), replace=None):
  file = os.path.join(path, 'model.safetensors')
  state = load_file(file)
  for key in drop:
    del state[key]
  state.update(replace or {})
  save_file(state, file)


def test_missing_tensor_is_named(tmp_path, folder):
  path = write_folder(tmp_path, folder[1])
  _save_without(path, drop=['vision_model.encoder.layers.1.mlp.fc2.bias'])
  with pytest.raises(ValueError, match=r"model\.safetensors: tensor "
                     r"'vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias' is missing"):
    hf_convert.load_hf_checkpoint(path)


def test_wrong_shape_names_tensor_and_config(tmp_path, folder):
  path = write_folder(tmp_path, folder[1])
  with open(os.path.join(path, 'config.json')) as f:
    cfg = json.load(f)
  cfg['text_config']['intermediate_size'] = 64  # the weights have 80
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match=r"'text_model\.encoder\.layers\.0\.mlp\.fc1\.weight' "
                     r"has shape \(80, 48\), but .*config\.json implies \(64, 48\).*"
                     r"intermediate_size"):
    hf_convert.load_hf_checkpoint(path)


def test_extra_layers_are_reported(tmp_path, folder):
  path = write_folder(tmp_path, folder[1])
  with open(os.path.join(path, 'config.json')) as f:
    cfg = json.load(f)
  cfg['vision_config']['num_hidden_layers'] = 1
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match='does not describe.*vision_model.encoder.layers.1'):
    hf_convert.load_hf_checkpoint(path)


def test_missing_files_are_named(tmp_path, folder):
  path = write_folder(tmp_path / 'a', folder[1], tokenizer=False)
  with pytest.raises(ValueError, match='no CLIP tokenizer files'):
    api.load_clip(path)
  path = write_folder(tmp_path / 'b', folder[1], preprocessor=False)
  with pytest.raises(ValueError, match=r'preprocessor_config\.json: no such file'):
    api.load_clip(path)
  path = write_folder(tmp_path / 'c', folder[1])
  os.remove(os.path.join(path, 'model.safetensors'))
  with pytest.raises(ValueError, match=r'no weights found; expected model\.safetensors'):
    api.load_clip(path)
  with pytest.raises(ValueError, match='not a directory'):
    api.load_clip(str(tmp_path / 'nowhere'))


def test_bin_without_torch_names_file(tmp_path, folder, monkeypatch):
  path = write_folder(tmp_path, folder[1], weights='bin')
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch -> ImportError
  with pytest.raises(ValueError, match=r'pytorch_model\.bin: reading pytorch_model\.bin '
                     'needs torch'):
    hf_convert.load_hf_checkpoint(path)


def test_config_errors_name_file_and_field(tmp_path):
  path = tmp_path / 'config.json'
  path.write_text(json.dumps({'model_type': 'siglip'}))
  with pytest.raises(ValueError, match=r"config\.json: model_type='siglip'"):
    hf_convert.config_from_hf(str(path))
  path.write_text(json.dumps({'vision_config': {'hidden_act': 'relu'}}))
  with pytest.raises(ValueError, match="config.json: CLIPConfig.vision_act: 'relu'"):
    hf_convert.config_from_hf(str(path))
  path.write_text(json.dumps({'vision_config': {'image_size': [224, 160]}}))
  with pytest.raises(ValueError, match='vision_config.image_size.*square'):
    hf_convert.config_from_hf(str(path))
  path.write_text('{not json')
  with pytest.raises(ValueError, match='not valid JSON'):
    hf_convert.config_from_hf(str(path))


def test_legacy_config_dict_overrides():
  # Old Hub configs (e.g. openai/clip-vit-large-patch14) carry *_config_dict overrides.
  cfg = {'text_config': {'hidden_size': 512},
         'text_config_dict': {'hidden_size': 768, 'num_attention_heads': 12,
                              'intermediate_size': 3072},
         'vision_config_dict': {'hidden_size': 1024, 'num_attention_heads': 16,
                                'num_hidden_layers': 24, 'intermediate_size': 4096,
                                'patch_size': 14},
         'projection_dim': 768}
  config = hf_convert.config_from_hf_dict(cfg)
  assert config == clip.get_config('vit_l14', logit_scale_init=2.6592)


def test_eos_mismatch_between_config_and_tokenizer(tmp_path):
  model = torch_model(hf_config(eos_token_id=BOS))  # tokenizer's EOS is BOS + 1
  path = write_folder(tmp_path, model)
  with pytest.raises(ValueError, match=f'eos_token_id={BOS}, but the tokenizer'):
    api.load_clip(path)


def test_load_from_config_names_field(folder):
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({'encoder': {'checkpoint': ''}})
  with pytest.raises(ValueError, match='config.encoder.checkpoint: empty'):
    api.load_from_config(config)
  config.encoder.checkpoint = folder[0] + '-missing'
  with pytest.raises(ValueError, match='config.encoder.checkpoint=.*not a directory'):
    api.load_from_config(config)
  config.encoder.checkpoint = folder[0]
  assert api.load_from_config(config, batch_size=2).config.embed_dim == 40


@pytest.mark.slow
def test_vit_b32_matches_pytorch(tmp_path):
  """Full-size ViT-B/32 (OpenAI shapes, random weights) through the folder loader."""
  start = time.time()
  config = transformers.CLIPConfig()  # transformers' defaults are ViT-B/32
  model = torch_model(config)
  path = write_folder(tmp_path, model)
  ours_config, params = hf_convert.load_hf_checkpoint(path)
  assert ours_config == clip.get_config('vit_b32', logit_scale_init=2.6592)
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(2, 224, 224, 3)).astype(np.float32)
  ids = rng.integers(0, 49406, size=(2, 77))
  ids[:, 0], ids[0, 9:], ids[1, 40:] = 49406, 49407, 49407
  with torch.no_grad():
    ref_image = hf_features(model.get_image_features(
        pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))))
    ref_text = hf_features(model.get_text_features(input_ids=torch.from_numpy(ids)))
  image, text, _ = clip.CLIP(ours_config).apply({'params': params}, pixels,
                                                ids.astype(np.int32))
  print(f'ViT-B/32 max abs diff: image {max_diff(image, ref_image):.2e}, text '
        f'{max_diff(text, ref_text):.2e}; {time.time() - start:.1f} s')
  assert max_diff(image, ref_image) <= TOL
  assert max_diff(text, ref_text) <= TOL
