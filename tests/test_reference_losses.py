"""The reference encoder's two extra loss terms (TrainConfig.word_loss, view_loss): the
word targets, the word-classification loss, the second view, the training step that adds
them, resuming, and the encoder stage that feeds them.

References: the word loss and targets worked by hand in numpy; the second view against a
per-image loop; the step's first loss against the three terms computed from the model's
own embeddings outside the step; the causal text tower's pooled output, which cannot see
the tokens after the end-of-text token that the stage cuts from each word.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_same_training, tiny_world_config
from tads_jax import config as config_lib
from tads_jax import losses
from tads_jax import main
from tads_jax import pipeline
from tads_jax import train
from tads_jax.models import bpe
from tads_jax.models import clip
from tads_jax.models import preprocess
from tads_jax.models import tokenizer as tokenizer_lib
from tads_jax.models import words
from tads_jax.stages import encoder

pytestmark = pytest.mark.usefixtures('fast_compiles')

CNN = {'vision_tower': 'cnn', 'vision_cnn': [[8, 2]], 'vision_cnn_groups': 4,
       'vocab_size': 100, 'eos_token_id': 99, 'text_layers': 1, 'context_length': 8}


def _data(n=16, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  tokens = rng.integers(1, 50, (n, 8)).astype(np.int32)
  tokens[:, -1] = 99
  word_ids = np.array([[5, 99], [6, 99], [7, 99]], np.int32)  # three one-token words
  targets = np.zeros((n, 3), np.float32)
  targets[np.arange(n), np.arange(n) % 3] = 0.5
  targets[np.arange(n), (np.arange(n) + 1) % 3] += 0.5
  return images, tokens, (word_ids, targets)


def test_caption_word_targets_by_hand():
  captions = ['a red circle', 'A red, red square!', 'a blue circle', 'green']
  vocab, targets = words.caption_word_targets(captions, min_count=2)
  assert vocab == ['a', 'circle', 'red']  # 'blue', 'square', 'green' are in one caption
  np.testing.assert_allclose(targets, [[1 / 3, 1 / 3, 1 / 3],
                                       [1 / 2, 0, 1 / 2],  # a word counts once
                                       [1 / 2, 1 / 2, 0],
                                       [0, 0, 0]])
  with pytest.raises(ValueError, match='no word is in 5 of the 4 captions'):
    words.caption_word_targets(captions, min_count=5)
  with pytest.raises(ValueError, match='min_count must be an integer >= 1'):
    words.caption_word_targets(captions, min_count=0)


def test_word_classification_loss_by_hand():
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
  image, word = unit(rng.normal(size=(3, 4))), unit(rng.normal(size=(5, 4)))
  targets = np.array([[0.5, 0.5, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]], np.float32)
  scale = np.log(7.0)
  logits = 7.0 * image @ word.T
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  per_row = [-(0.5 * log_p[0, 0] + 0.5 * log_p[0, 1]), -log_p[1, 4], 0.0]
  got = losses.word_classification_loss(jnp.asarray(image), jnp.asarray(word),
                                        jnp.asarray(targets), scale)
  assert float(got) == pytest.approx(np.mean(per_row), rel=1e-5)
  weights = np.array([1.0, 3.0, 0.0], np.float32)
  got = losses.word_classification_loss(jnp.asarray(image), jnp.asarray(word),
                                        jnp.asarray(targets), scale, jnp.asarray(weights))
  assert float(got) == pytest.approx((per_row[0] + 3 * per_row[1]) / 4, rel=1e-5)


@pytest.mark.parametrize('shift,brightness', [(0, 0), (0, 10), (2, 0), (2, 10)])
def test_second_view_is_a_move_and_a_uniform_lift(shift, brightness):
  images = np.random.default_rng(1).integers(0, 256, (32, 12, 12, 3), dtype=np.uint8)
  images[0] = 250  # clipped at 255 when lit up
  view = preprocess.second_view(images, np.random.default_rng(7), shift, brightness)
  # The same draws, image by image: the move as augment makes it, then one lift each.
  rng = np.random.default_rng(7)
  dy, dx = rng.integers(0, 2 * shift + 1, 32), rng.integers(0, 2 * shift + 1, 32)
  lift = rng.integers(-brightness, brightness + 1, 32)
  for i in range(32):
    padded = np.pad(images[i], ((shift, shift), (shift, shift), (0, 0)), mode='edge')
    moved = padded[dy[i]:dy[i] + 12, dx[i]:dx[i] + 12].astype(int)
    np.testing.assert_array_equal(view[i], np.clip(moved + lift[i], 0, 255))
  assert view.dtype == np.uint8
  if brightness:
    assert lift.min() < 0 < lift.max() and np.abs(lift).max() <= brightness
  else:
    np.testing.assert_array_equal(view, preprocess.augment(
        images, np.random.default_rng(7), flip=False, shift=shift))


def test_the_step_adds_the_two_terms_to_clips_loss():
  """The first logged loss (the params at init, step 0's batch) is CLIP's loss plus
  word_loss x the word term plus view_loss x the two-view term, each computed here from the
  model's embeddings of the batch, its second views and the words."""
  images, tokens, (word_ids, targets) = _data()
  cfg = train.TrainConfig(kind='pixels', model='tiny', batch_size=8, samples_seen=8,
                          warmup=1, model_overrides=CNN, word_loss=0.7, view_loss=0.3,
                          view_shift=2, view_brightness=10, seed=3)
  _, history = train.train(cfg, (images, tokens), word_targets=(word_ids, targets))
  model = train.make_model(cfg)
  params = nn.unbox(train.init_params(model, cfg))
  idx = next(train.batch_rows(np.arange(16), 8, cfg.seed))
  views = preprocess.second_view(images[idx], np.random.default_rng([3, 0, 2]), 2, 10)
  encode = lambda x, method: np.asarray(losses.normalize(model.apply(  # noqa: E731
      {'params': params}, x, method=method)))
  img = encode(train.prepare_images('pixels', images[idx]), 'encode_image')
  img2 = encode(train.prepare_images('pixels', views), 'encode_image')
  txt = encode(tokens[idx], 'encode_text')
  wrd = encode(word_ids, 'encode_text')
  scale = float(params['logit_scale'])

  def clip_loss(a, b, s):  # CLIP's symmetric cross-entropy, by hand
    logits = np.exp(s) * a @ b.T
    lse = lambda x: np.log(np.exp(x).sum(1))  # noqa: E731
    return np.mean(0.5 * (lse(logits) + lse(logits.T)) - np.diag(logits))
  logits = np.exp(scale) * img @ wrd.T
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  word_term = np.mean(-(targets[idx] * log_p).sum(1))
  expected = (clip_loss(img, txt, scale) + 0.7 * word_term
              + 0.3 * clip_loss(img, img2, np.log(10.0)))
  assert history['loss'][0] == pytest.approx(expected, rel=2e-5)


def test_a_run_with_both_terms_resumes_to_the_uninterrupted_run(tmp_path):
  images, tokens, words_and_targets = _data(24)
  cfg = train.TrainConfig(kind='pixels', model='tiny', batch_size=8, samples_seen=8 * 5,
                          warmup=2, checkpoint_every=2, model_overrides=CNN,
                          augment_shift=1, word_loss=1.0, view_loss=1.0)
  assert cfg.to_dict()['word_loss'] == 1.0
  assert 'view_loss' not in dataclasses.replace(cfg, view_loss=0.0).to_dict()
  whole, _ = train.train(cfg, (images, tokens), word_targets=words_and_targets)
  train.train(cfg, (images, tokens), workdir=str(tmp_path), stop_after=3,
              word_targets=words_and_targets)
  resumed, _ = train.train(cfg, (images, tokens), workdir=str(tmp_path),
                           word_targets=words_and_targets)
  for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  other = (words_and_targets[0], words_and_targets[1][:, ::-1].copy())
  with pytest.raises(ValueError, match='written for other data'):
    train.train(cfg, (images, tokens), workdir=str(tmp_path), word_targets=other)


def test_bad_terms_and_word_targets_are_named():
  images, tokens, (word_ids, targets) = _data()
  cfg = train.TrainConfig(kind='pixels', model='tiny', batch_size=8, samples_seen=8,
                          model_overrides=CNN, word_loss=1.0)
  with pytest.raises(ValueError, match=r"TrainConfig.word_loss, view_loss: terms of the "
                     r"'pixels' proxy; kind is 'embedding'"):
    train.TrainConfig(kind='embedding', view_loss=1.0)
  with pytest.raises(ValueError, match='TrainConfig.view_loss: expected a finite number'):
    dataclasses.replace(cfg, view_loss=-1.0)
  with pytest.raises(ValueError, match='TrainConfig.view_shift: expected an integer >= 0'):
    dataclasses.replace(cfg, view_shift=-2)
  with pytest.raises(ValueError, match=r'word_targets: TrainConfig.word_loss > 0 needs'):
    train.train(cfg, (images, tokens))
  with pytest.raises(ValueError, match='word_targets: given, but TrainConfig.word_loss is 0'):
    train.train(dataclasses.replace(cfg, word_loss=0.0), (images, tokens),
                word_targets=(word_ids, targets))
  with pytest.raises(ValueError, match=r'word_targets.targets: .* of shape \(16, 3\)'):
    train.train(cfg, (images, tokens), word_targets=(word_ids, targets[:4]))
  with pytest.raises(ValueError, match='word_targets.word_ids: a word has no end-of-text'):
    train.train(cfg, (images, tokens), word_targets=(word_ids[:, :1], targets))
  with pytest.raises(ValueError, match=r'word_targets.word_ids: expected at most 8 ids'):
    train.train(cfg, (images, tokens), word_targets=(np.full((3, 9), 99), targets))


def test_the_encoder_stage_passes_the_terms_and_its_words(tmp_path):
  """The stage's TrainConfig carries the config's terms, and its word targets are the
  trusted captions' words, each tokenized alone and cut after its end token. (The whole
  stage with both terms ran in BENCHMARKS.md session 21; here no training: a stage run
  would put the tiny CLIP on this process's 8 virtual devices, whose collectives can
  deadlock on 2 cores, conftest.on_1_device.)"""
  c = tiny_world_config()
  c.encoder.update(dict(word_loss=1.0, word_min_count=2, view_loss=0.5, view_shift=3,
                        view_brightness=7))
  cfg = encoder.train_config(c, vocab_size=600)
  assert (cfg.word_loss, cfg.view_loss, cfg.view_shift, cfg.view_brightness) == (
      1.0, 0.5, 3, 7)
  captions = ['a red striped circle', 'a blue striped square', 'a red dotted star'] * 4
  tok_dir = str(tmp_path / 'tok')
  bpe.train_bpe(captions, 600, tok_dir, model_max_length=16)
  tokenizer = tokenizer_lib.CLIPTextTokenizer(tok_dir, 16)
  ids, targets = encoder.word_targets(captions, tokenizer, min_count=8)
  vocab, expected = words.caption_word_targets(captions, 8)  # a, red, striped
  np.testing.assert_array_equal(targets, expected)
  full = tokenizer(vocab)
  eos = tokenizer.eos_token_id
  np.testing.assert_array_equal(ids, full[:, :ids.shape[1]])
  assert (ids == eos).any(axis=1).all() and ids.shape[1] < full.shape[1]
  assert (ids[:, -1] == eos).any()  # cut right after the longest word's end token
  bad = tiny_world_config()
  bad.encoder.update(dict(word_loss=1.0, word_min_count=0))
  with pytest.raises(config_lib.ConfigError, match='config.encoder.word_min_count: must be'):
    main.run(bad, str(tmp_path / 'bad'))
  bad.encoder.update(dict(word_min_count=5, view_brightness=-1))
  with pytest.raises(config_lib.ConfigError, match='config.encoder.view_brightness: expected'):
    main.run(bad, str(tmp_path / 'bad'))


def test_cutting_a_word_after_its_end_token_leaves_its_embedding():
  """The stage cuts each word's ids after its end-of-text token: the causal tower pools
  there and never sees what follows, so the embedding is the uncut one's."""
  config = clip.get_config('tiny', **CNN)
  model = clip.CLIP(config)
  params = nn.unbox(clip.init_params(model, jax.random.key(0)))
  ids = np.array([[5, 99, 0, 0, 0, 0, 0, 0], [6, 7, 99, 0, 0, 0, 0, 0]], np.int32)
  full = model.apply({'params': params}, ids, method=clip.CLIP.encode_text)
  cut = model.apply({'params': params}, ids[:, :3], method=clip.CLIP.encode_text)
  np.testing.assert_allclose(np.asarray(cut), np.asarray(full), rtol=1e-5, atol=1e-6)


def test_the_terms_off_leave_the_encoder_fingerprint_of_earlier_workdirs():
  """A workdir whose encoder ran before these fields existed is not retrained for them."""
  c = tiny_world_config()
  earlier = tiny_world_config()
  for field in ('word_loss', 'word_min_count', 'view_loss', 'view_shift', 'view_brightness'):
    del earlier.encoder[field]
  upstream = {'ingest': 'x'}
  assert (pipeline.fingerprint(encoder.STAGE, c, upstream)
          == pipeline.fingerprint(encoder.STAGE, earlier, upstream))
  c.encoder.view_loss = 1.0
  assert (pipeline.fingerprint(encoder.STAGE, c, upstream)
          != pipeline.fingerprint(encoder.STAGE, earlier, upstream))


def check_sharded_training_with_both_terms():
  """The step with both terms, data-parallel over 8 devices, equals one device."""
  from tads_jax import sharding  # pylint: disable=g-import-not-at-top
  assert jax.device_count() >= 8, jax.devices()
  images, tokens, words_and_targets = _data()
  cfg = train.TrainConfig(kind='pixels', model='tiny', batch_size=16, samples_seen=16 * 3,
                          lr=1e-3, warmup=1, eps=1e-3, model_overrides=CNN, word_loss=1.0,
                          view_loss=1.0)
  ref = train.train(cfg, (images, tokens), word_targets=words_and_targets)
  got = train.train(cfg, (images, tokens), mesh=sharding.make_mesh(8, 1),
                    word_targets=words_and_targets)
  assert_same_training(got, ref)


@pytest.mark.slow
def test_sharded_training_with_both_terms_matches_one_device(on_8_devices):
  on_8_devices(check_sharded_training_with_both_terms)
