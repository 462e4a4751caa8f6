"""The reference-encoder stage: a CLIP trained on the trusted set, saved as a HF folder."""

import json
import os
import sys

import numpy as np
import pytest

import tads_jax
from tads_jax import config as config_lib
from tads_jax import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import default  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny_config():
  c = default.get_config()
  c.stages = ('ingest', 'encoder')
  c.selector.name = 'random'
  c.encoder.image_size = 32
  c.pool.synthetic.update(dict(num_samples=100, shard_size=50, trusted_size=200,
                               train_per_class=1, eval_per_class=1, retrieval_train=4,
                               retrieval_eval=4))
  c.encoder.model = 'tiny'
  c.encoder.model_overrides = {}
  c.encoder.context_length = 16
  c.encoder.vocab_size = 600
  c.encoder.batch_size = 32
  c.encoder.samples_seen = 32 * 30
  c.encoder.warmup = 5
  c.encoder.checkpoint_every = 10
  return c


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('enc'))
  main.run(tiny_config(), workdir)
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
  # The tokenizer was learned from the trusted captions: common words are single tokens.
  ids = clip.tokenize(['red'])[0]
  assert ids[2] == clip.tokenizer.eos_token_id  # BOS, 'red</w>', EOS


def test_rerun_skips_and_encoder_change_reruns_only_it(trained, tmp_path):
  import shutil
  work = str(tmp_path / 'w')
  shutil.copytree(trained, work)
  assert set(main.run(tiny_config(), work).values()) == {'skipped'}
  c = tiny_config()
  c.encoder.samples_seen = 32 * 12
  assert main.run(c, work) == {'ingest': 'skipped', 'encoder': 'ran'}


def test_a_given_checkpoint_is_used_as_is(trained, tmp_path):
  folder = os.path.join(trained, 'encoder', 'clip')
  c = tiny_config()
  c.encoder.checkpoint = folder
  main.run(c, str(tmp_path))
  done = json.load(open(tmp_path / 'encoder' / '_done.json'))['summary']
  assert done == {'checkpoint': folder, 'trained': False}


def test_bad_encoder_fields_fail_before_work(tmp_path):
  c = tiny_config()
  c.encoder.model = 'huge'
  with pytest.raises(config_lib.ConfigError, match="config.encoder: .*'huge'"):
    main.run(c, str(tmp_path / 'w'))
  c = tiny_config()
  c.encoder.vocab_size = 10
  with pytest.raises(config_lib.ConfigError, match='config.encoder.vocab_size'):
    main.run(c, str(tmp_path / 'w'))
  assert not (tmp_path / 'w').exists()
