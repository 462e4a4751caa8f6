"""The reference-encoder stage: a CLIP trained on the trusted set, saved as a HF folder."""

import collections
import json
import os
import re
import tarfile

import numpy as np
import pytest

import tads_jax
from tads_jax import config as config_lib
from tads_jax import main
from conftest import tiny_world_config


# The world and encoder of the stage tests (conftest.py); test_pixel_proxy.py reads it here.


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('enc'))
  main.run(tiny_world_config(), workdir)
  return workdir


def test_trains_and_saves_a_loadable_clip(trained):
  done = json.load(open(os.path.join(trained, 'encoder', '_done.json')))['summary']
  assert done['trained'] and done['pairs'] == 200 and done['steps'] == 30
  assert done['final_loss'] < done['first_loss']  # it learned something
  clip = tads_jax.load_clip(done['checkpoint'])
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  image_emb = clip.encode_images(images)
  text_emb = clip.encode_texts(['a red circle', 'a big blue star', 'spam spam'])
  assert image_emb.shape == text_emb.shape == (3, clip.config.embed_dim)
  np.testing.assert_allclose(np.linalg.norm(image_emb, axis=1), 1, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(text_emb, axis=1), 1, atol=1e-5)
  # The tokenizer was learned from the trusted captions: their most common word (of three
  # letters or more) is a single token.
  words = collections.Counter()
  trusted = os.path.join(trained, 'ingest', 'world', 'trusted')
  for name in os.listdir(trusted):
    if name.endswith('.tar'):
      with tarfile.open(os.path.join(trusted, name)) as tar:
        for member in tar.getmembers():
          if member.name.endswith('.txt'):
            words.update(w for w in re.findall(r'[a-z]+', tar.extractfile(member).read()
                                               .decode().lower()) if len(w) >= 3)
  word = words.most_common(1)[0][0]
  ids = clip.tokenize([word])[0]
  assert ids[2] == clip.tokenizer.eos_token_id, word  # BOS, the word, EOS


def test_rerun_skips_and_encoder_change_reruns_only_it(trained, tmp_path):
  import shutil
  work = str(tmp_path / 'w')
  shutil.copytree(trained, work)
  assert set(main.run(tiny_world_config(), work).values()) == {'skipped'}
  c = tiny_world_config()
  c.encoder.samples_seen = 32 * 12
  assert main.run(c, work) == {'ingest': 'skipped', 'encoder': 'ran'}


def test_a_given_checkpoint_is_used_as_is(trained, tmp_path):
  folder = os.path.join(trained, 'encoder', 'clip')
  c = tiny_world_config()
  c.encoder.checkpoint = folder
  main.run(c, str(tmp_path))
  done = json.load(open(tmp_path / 'encoder' / '_done.json'))['summary']
  assert done == {'checkpoint': folder, 'trained': False}


def test_bad_encoder_fields_fail_before_work(tmp_path):
  c = tiny_world_config()
  c.encoder.model = 'huge'
  with pytest.raises(config_lib.ConfigError, match="config.encoder: .*'huge'"):
    main.run(c, str(tmp_path / 'w'))
  c = tiny_world_config()
  c.encoder.vocab_size = 10
  with pytest.raises(config_lib.ConfigError, match='config.encoder.vocab_size'):
    main.run(c, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()


def test_exported_folder_truncates_in_transformers_and_agrees(trained):
  """The HF folder's tokenizer stops at the model's positions: transformers' tokenizer with
  truncation=True feeds CLIPModel captions longer than that, and the text features agree
  with tads_jax.load_clip's."""
  torch = pytest.importorskip('torch')
  import transformers  # pylint: disable=g-import-not-at-top
  folder = os.path.join(trained, 'encoder', 'clip')
  config = json.load(open(os.path.join(folder, 'tokenizer_config.json')))
  assert config['model_max_length'] == tiny_world_config().encoder.context_length
  captions = ['a big red circle on a green background ' * 6, 'a small blue star']
  tokenizer = transformers.CLIPTokenizer.from_pretrained(folder)
  model = transformers.CLIPModel.from_pretrained(folder).eval()
  tokens = tokenizer(captions, padding='max_length', truncation=True, return_tensors='pt')
  assert tokens['input_ids'].shape[1] == tiny_world_config().encoder.context_length
  with torch.no_grad():
    hf = model.get_text_features(**tokens)
  hf = getattr(hf, 'pooler_output', hf).numpy()
  hf /= np.linalg.norm(hf, axis=1, keepdims=True)
  ours = tads_jax.load_clip(folder).encode_texts(captions)
  np.testing.assert_allclose(hf, ours, atol=2e-5)


def test_a_short_last_batch_costs_only_what_it_needs(trained):
  """Three texts at batch size 64 run as one batch of 4 rows (the next power of two), and
  give the same embeddings as inside a full batch."""
  clip = tads_jax.load_clip(os.path.join(trained, 'encoder', 'clip'), batch_size=64)
  texts = ['a red circle', 'a big blue star', 'spam spam']
  shapes, fn = [], clip._text_fn  # pylint: disable=protected-access

  def recording(params, batch):
    shapes.append(batch.shape[0])
    return fn(params, batch)

  clip._text_fn = recording  # pylint: disable=protected-access
  short = clip.encode_texts(texts)
  assert shapes == [4]
  full = clip.encode_texts(texts * 30)[:3]  # 90 rows: a full batch of 64, a tail of 32
  assert shapes[1:] == [64, 32]
  np.testing.assert_allclose(short, full, atol=1e-5)
