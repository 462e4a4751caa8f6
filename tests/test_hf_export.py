"""hf_export.py: Flax CLIP -> Hugging Face folder, checked by hf_convert and PyTorch CLIP."""

import dataclasses
import functools
import json
import os
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

from tads_jax.models import api, bpe, clip, hf_convert, hf_export, preprocess

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from test_hf_convert import hf_features, max_diff  # noqa: E402

TOL = 1e-4
# 'tiny' with a small vocabulary: the same layout at a fraction of the file size.
SMALL = clip.get_config('tiny', vocab_size=600, eos_token_id=599)
CAPTIONS = ['a photo of a red circle', 'a blue square on a white background',
            'the green triangle', 'a photo of a yellow star', 'a red heart, drawn'] * 4


@functools.lru_cache
def abstract_params(config):
  return clip.abstract_params(clip.CLIP(config))


def random_params(config, seed=0, boxed=False):
  """Every leaf random (LayerNorm and biases too), so any mislaid tensor shows."""
  rng = np.random.default_rng(seed)
  abstract = abstract_params(config)
  is_box = lambda x: isinstance(x, nn.LogicallyPartitioned)
  def draw(leaf):
    value = rng.normal(0, 0.2, size=nn.meta.unbox(leaf).shape).astype(np.float32)
    return leaf.replace_boxed(value) if boxed and is_box(leaf) else value
  return jax.tree_util.tree_map(draw, abstract, is_leaf=is_box)


def flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, f'{prefix}{k}/'))
    else:
      out[prefix + k] = v
  return out


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """tiny CLIP with a BPE trained on captions, tokenizer written into the folder first."""
  folder = str(tmp_path_factory.mktemp('export') / 'clip')
  vocab = bpe.train_bpe(CAPTIONS, 600, folder, model_max_length=16)
  config = clip.get_config('tiny', vocab_size=len(vocab), eos_token_id=len(vocab) - 1)
  params = random_params(config, seed=1)
  hf_export.save_hf_checkpoint(folder, config, params, tokenizer_dir=folder)
  return folder, config, params


@pytest.mark.parametrize('overrides', [
    {},
    # Unequal widths, projection and activations catch swapped or transposed tensors.
    dict(text_width=48, text_mlp_dim=80, embed_dim=40, vision_act='gelu', text_act='gelu',
         logit_scale_init=1.5),
])
def test_round_trip_through_hf_convert_is_exact(tmp_path, overrides):
  config = clip.get_config('tiny', **overrides)
  params = random_params(config, boxed=True)  # as clip.init_params returns them
  folder = hf_export.save_hf_checkpoint(str(tmp_path / 'clip'), config, params)
  loaded_config, loaded = hf_convert.load_hf_checkpoint(folder)
  assert loaded_config == config
  ours, theirs = flatten(nn.meta.unbox(params)), flatten(loaded)
  assert ours.keys() == theirs.keys()
  for name in ours:
    assert theirs[name].dtype == np.float32
    np.testing.assert_array_equal(theirs[name], ours[name], err_msg=name)
  assert sorted(os.listdir(tmp_path)) == ['clip']  # no temporary folder left


def test_bfloat16_params_are_stored_as_float32(tmp_path):
  config = SMALL
  params = jax.tree_util.tree_map(lambda x: jax.numpy.asarray(x, jax.numpy.bfloat16),
                                  random_params(config))
  _, loaded = hf_convert.load_hf_checkpoint(
      hf_export.save_hf_checkpoint(str(tmp_path), config, params))
  np.testing.assert_array_equal(loaded['text']['token_embedding'],
                                np.asarray(params['text']['token_embedding'], np.float32))


@pytest.fixture(scope='module')
def torch_model(exported):
  model, info = transformers.CLIPModel.from_pretrained(
      exported[0], output_loading_info=True, local_files_only=True)
  return model.eval(), info


@pytest.fixture(scope='module')
def loaded(exported):
  return api.load_clip(exported[0], batch_size=4)


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_pytorch_clip_loads_it_and_agrees(exported, torch_model, loaded):
  folder, config, params = exported
  model, info = torch_model
  assert not info['missing_keys'] and not info['unexpected_keys']
  assert not info['mismatched_keys'] and not info['error_msgs']
  assert model.config.text_config.eos_token_id == config.eos_token_id
  assert model.logit_scale.item() == float(params['logit_scale'])
  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(3, 32, 32, 3)).astype(np.float32)
  ids = np.asarray(transformers.CLIPTokenizerFast.from_pretrained(folder)(
      CAPTIONS[:3], padding='max_length', max_length=16)['input_ids'])
  with torch.no_grad():
    ref_image = hf_features(model.get_image_features(
        pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))))
    ref_text = hf_features(model.get_text_features(input_ids=torch.from_numpy(ids)))
  assert ref_image.shape == ref_text.shape == (3, 32)
  # LoadedCLIP returns unit rows; the scale is covered by the exact round trip above.
  assert max_diff(loaded.encode_pixels(pixels), unit(ref_image)) <= TOL
  assert max_diff(loaded.encode_token_ids(ids), unit(ref_text)) <= TOL


def test_load_clip_end_to_end(exported, torch_model, loaded):
  folder = exported[0]
  assert set(bpe.TOKENIZER_FILES) <= set(os.listdir(folder))
  model = torch_model[0]
  rng = np.random.default_rng(2)
  images = [rng.integers(0, 256, (40 + 3 * i, 36 + 5 * i, 3), dtype=np.uint8)
            for i in range(5)]
  texts = ['a photo of a red circle', 'A Blue  STAR', 'zebra']
  # PyTorch side reads our preprocessor_config.json and tokenizer files itself.
  pixel_values = transformers.CLIPImageProcessorPil.from_pretrained(folder)(
      images=images, return_tensors='pt')['pixel_values']
  ids = transformers.CLIPTokenizerFast.from_pretrained(folder)(
      texts, padding='max_length', max_length=16, return_tensors='pt')['input_ids']
  with torch.no_grad():
    ref_image = hf_features(model.get_image_features(pixel_values=pixel_values))
    ref_text = hf_features(model.get_text_features(input_ids=ids))
  np.testing.assert_array_equal(loaded.tokenize(texts), ids.numpy())
  assert max_diff(loaded.encode_images(images), unit(ref_image)) <= TOL
  assert max_diff(loaded.encode_texts(texts), unit(ref_text)) <= TOL


@pytest.mark.parametrize('pp', [
    preprocess.default_config(32),
    preprocess.PreprocessConfig(shortest_edge=None, resize_hw=(32, 32), crop_hw=None,
                                resample=2, rescale_factor=1 / 255, mean=(0.5,) * 3,
                                std=(0.25, 0.5, 0.75)),
    preprocess.PreprocessConfig(shortest_edge=40, crop_hw=(32, 32), rescale_factor=None,
                                mean=None, std=None, convert_rgb=False),
])
def test_preprocessor_config_reads_back(tmp_path, pp):
  config = SMALL
  folder = hf_export.save_hf_checkpoint(str(tmp_path), config, random_params(config), pp)
  path = os.path.join(folder, 'preprocessor_config.json')
  assert preprocess.config_from_hf(path) == pp
  with open(path) as f:
    fields = json.load(f)
  # transformers' own processor, from the same file, makes the same pixels.
  image = np.random.default_rng(0).integers(0, 256, (45, 38, 3), dtype=np.uint8)
  ref = transformers.CLIPImageProcessorPil.from_pretrained(folder)
  theirs = ref(images=[image], return_tensors='np')['pixel_values'].transpose(0, 2, 3, 1)
  assert fields['image_processor_type'] == 'CLIPImageProcessor'
  assert max_diff(preprocess.preprocess_images([image], pp), theirs) <= 1e-6


def test_existing_folder_is_replaced_whole(tmp_path):
  config = SMALL
  folder = str(tmp_path / 'clip')
  hf_export.save_hf_checkpoint(folder, config, random_params(config, seed=0))
  with open(os.path.join(folder, 'stale.txt'), 'w') as f:
    f.write('from an older export')
  hf_export.save_hf_checkpoint(folder, config, random_params(config, seed=5))
  assert 'stale.txt' not in os.listdir(folder)
  _, loaded = hf_convert.load_hf_checkpoint(folder)
  np.testing.assert_array_equal(loaded['vision']['cls'],
                                random_params(config, seed=5)['vision']['cls'])
  # A failing export leaves the previous folder as it was.
  bad = random_params(config)
  del bad['text']['block_1']
  with pytest.raises(ValueError, match='params/text/block_1/.* is missing'):
    hf_export.save_hf_checkpoint(folder, config, bad)
  assert sorted(os.listdir(tmp_path)) == ['clip']
  _, again = hf_convert.load_hf_checkpoint(folder)
  np.testing.assert_array_equal(again['vision']['cls'], loaded['vision']['cls'])


def test_bad_input_is_named(tmp_path, exported):
  config = SMALL
  params = random_params(config)
  params['vision']['proj']['kernel'] = np.zeros((64, 16), np.float32)
  with pytest.raises(ValueError, match=r'params/vision/proj/kernel has shape \(64, 16\), '
                     r'but the config implies \(64, 32\)'):
    hf_export.save_hf_checkpoint(str(tmp_path / 'a'), config, params)
  with pytest.raises(ValueError, match=r'preprocess: produces \(224, 224\) images, but '
                     'config.image_size is 32'):
    hf_export.save_hf_checkpoint(str(tmp_path / 'b'), config, random_params(config),
                                 preprocess.default_config(224))
  folder, fitting, _ = exported
  eos = fitting.eos_token_id
  other = dataclasses.replace(fitting, eos_token_id=eos - 1)
  with pytest.raises(ValueError, match=re.escape(f'{folder}: EOS id {eos}, but '
                                                 f'config.eos_token_id={eos - 1}')):
    hf_export.save_hf_checkpoint(str(tmp_path / 'c'), other, random_params(other),
                                 tokenizer_dir=folder)
  small = dataclasses.replace(fitting, vocab_size=100, eos_token_id=99)
  with pytest.raises(ValueError, match='text_config.vocab_size is 100'):
    hf_export.save_hf_checkpoint(str(tmp_path / 'd'), small, random_params(small),
                                 tokenizer_dir=folder)
  assert sorted(os.listdir(tmp_path)) == []
