"""Proxy training: the weighted loss, schedule, data order, budget, learning, resume and
sharding (on 8 devices: conftest.py's on_8_devices).

XLA's CPU optimizations are switched off while this module runs (conftest.py's
fast_compiles): the models are tiny, so compiling them optimized costs more than it saves.
"""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tads_jax import eval as evaluation
from tads_jax import sharding
from tads_jax import train
from tads_jax.data import subset

pytestmark = pytest.mark.usefixtures('fast_compiles')

# One embedding config for the learning, budget, temperature and resume tests, so that
# they share one compiled step (train caches it by config).
TOY = train.TrainConfig(kind='embedding', head='linear', batch_size=32,
                        samples_seen=32 * 60, lr=2e-2, warmup=5, weight_decay=1e-4,
                        checkpoint_every=20, log_every=20)
TINY_PIXELS = dict(kind='pixels', model='tiny', model_overrides=dict(
    vocab_size=64, eos_token_id=63, context_length=8, vision_layers=1, text_layers=1))


def _toy_pairs(n, seed=0, latent=6, dim=24):
  """Image and text embeddings of a shared latent through two different random maps, so
  that matching them needs learned heads (the raw cosine of a true pair is ~0)."""
  rng = np.random.default_rng(seed)
  maps = np.random.default_rng(100).normal(size=(2, latent, dim))
  z = rng.normal(size=(n, latent))
  image = z @ maps[0] + 0.05 * rng.normal(size=(n, dim))
  text = z @ maps[1] + 0.05 * rng.normal(size=(n, dim))
  unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
  return unit(image), unit(text)


@pytest.fixture(scope='module')
def toy_run(fast_compiles):  # pylint: disable=unused-argument
  data = _toy_pairs(512)
  params, history = train.train(TOY, data)
  return data, params, history


# ---------------------------------------------------------------------------------------
# Helpers.


def _unit(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------
# Schedule, data order, budget.


def test_schedule_warmup_then_cosine():
  schedule = train.make_schedule(1.0, warmup=4, total_steps=12)
  got = np.asarray(jax.jit(schedule)(jnp.arange(13)))
  # Hand values: (s+1)/4 for s < 4; then (1 + cos(pi (s-4)/8)) / 2.
  expected = [0.25, 0.5, 0.75, 1.0, 1.0, 0.9619398, 0.8535534, 0.6913417, 0.5,
              0.3086583, 0.1464466, 0.0380602, 0.0]
  np.testing.assert_allclose(got, expected, atol=1e-6)
  np.testing.assert_allclose(train.make_schedule(1.0, 4, 12, xp=np)(np.arange(13)),
                             expected, atol=1e-6)
  # The optimizer really uses it: the first AdamW update of a lone parameter is -lr(0).
  cfg = train.TrainConfig(lr=0.1, warmup=4, batch_size=1, samples_seen=12,
                          weight_decay=0.0)
  opt = train.make_optimizer(cfg)
  params = {'w': jnp.ones((2, 2))}
  updates, _ = jax.jit(opt.update)({'w': jnp.ones((2, 2))}, opt.init(params), params)
  np.testing.assert_allclose(updates['w'], -0.1 * 0.25, rtol=1e-4)


def test_batch_rows_cycles_with_a_fresh_shuffle_each_epoch():
  rows = np.arange(10)
  it = train.batch_rows(rows, 4, seed=3)
  stream = np.concatenate([next(it) for _ in range(10)])  # 40 = 4 epochs
  epochs = stream.reshape(4, 10)
  for epoch in epochs:
    assert sorted(epoch) == list(range(10))
  assert len({tuple(e) for e in epochs}) == 4  # a new order every epoch
  # Deterministic, and a restart at any step yields what the run would have seen.
  again = train.batch_rows(rows, 4, seed=3, start_step=7)
  np.testing.assert_array_equal(next(again), stream[28:32])
  assert not np.array_equal(
      np.concatenate([b for _, b in zip(range(10), train.batch_rows(rows, 4, seed=4))]),
      stream)


def test_subset_repeats_are_seen_proportionally(tmp_path):
  uids = [f'{i:032x}' for i in range(1, 7)]
  counts = [3, 1, 0, 2, 1, 1]
  path = str(tmp_path / 'subset.npy')
  subset.write_subset(path, uids, counts)
  rows = train.rows_from_subset(path, uids)
  np.testing.assert_array_equal(np.bincount(rows, minlength=6), counts)
  # Over whole epochs every uid is seen exactly (epochs x times selected).
  epoch = len(rows)  # 8
  it = train.batch_rows(rows, 4, seed=0)
  seen = np.concatenate([next(it) for _ in range(5 * epoch // 4)])
  np.testing.assert_array_equal(np.bincount(seen, minlength=6), 5 * np.asarray(counts))
  with pytest.raises(ValueError, match='none of the 2 uids is in the subset'):
    train.rows_from_subset(path, [f'{99:032x}', f'{98:032x}'])


def test_budget_fixes_steps_whatever_the_subset_size(toy_run):
  data, _, history = toy_run
  assert history['step'] == list(range(1, TOY.steps + 1))
  assert TOY.steps == TOY.samples_seen // TOY.batch_size == 60
  # A 16x smaller subset: the same steps (more epochs), seen through `rows`.
  small = train.train(TOY, data, rows=np.arange(32))[1]
  assert len(small['loss']) == TOY.steps
  # lr history follows the schedule the optimizer uses.
  np.testing.assert_allclose(history['lr'][:2], [TOY.lr / 5, 2 * TOY.lr / 5], rtol=1e-6)
  last = 0.5 * TOY.lr * (1 + math.cos(math.pi * (59 - 5) / (60 - 5)))  # update 60: s=59
  assert history['lr'][-1] == pytest.approx(last, rel=1e-5)


def test_weights_reach_the_loss(toy_run):
  data = toy_run[0]
  cfg = TOY
  history = train.train(cfg, data, weights=np.zeros(len(data[0]), np.float32))[1]
  assert history['loss'] == [0.0] * cfg.steps


# ---------------------------------------------------------------------------------------
# Learning.


def test_embedding_proxy_learns_a_toy_problem(toy_run):
  _, params, history = toy_run
  losses = np.asarray(history['loss'])
  assert losses[-10:].mean() < 0.5 * losses[:5].mean()
  encode_images, encode_texts = train.encoders(TOY, params)
  image, text = _toy_pairs(200, seed=7)  # held out
  metrics = evaluation.retrieval_metrics(encode_images(image), encode_texts(text),
                                         np.arange(200))
  # Chance is 1/200; the raw reference embeddings do no better than chance.
  raw = evaluation.retrieval_metrics(image, text, np.arange(200))
  assert raw['text_to_image_R@1'] < 0.05
  assert metrics['text_to_image_R@1'] > 0.8 and metrics['image_to_text_R@1'] > 0.8
  # The learnable temperature moved from its init.
  assert abs(history['logit_scale'][-1] - math.log(1 / 0.07)) > 0.05


def test_temperature_is_clipped_at_log_100():
  rng = np.random.default_rng(0)
  # Identical pairs: a larger scale always lowers the loss, so the scale climbs; in 3-d
  # some negatives are close, so the loss does not saturate and the gradient stays large.
  emb = _unit(rng, (64, 3)).astype(np.float32)
  cfg = train.TrainConfig(kind='embedding', head='mlp', head_hidden=8, batch_size=16,
                          samples_seen=16 * 8, lr=0.05, warmup=0,
                          logit_scale_init=math.log(100) - 0.1)
  params, history = train.train(cfg, (emb, emb))
  assert max(history['logit_scale']) == pytest.approx(math.log(100), abs=1e-6)
  assert float(params['logit_scale']) <= math.log(100) + 1e-6


def test_pixel_proxy_overfits_a_tiny_batch():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
  ids = rng.integers(1, 60, size=(8, 8)).astype(np.int32)
  ids[:, -1] = 63  # end-of-text
  cfg = train.TrainConfig(batch_size=8, samples_seen=8 * 60, lr=3e-4, warmup=3,
                          weight_decay=0.0, **TINY_PIXELS)
  params, history = train.train(cfg, (images, ids))
  losses = history['loss']
  assert losses[0] > 1.9  # log(8) = 2.08 at init
  assert np.mean(losses[-5:]) < 0.05 * losses[0]
  # The eval encoders see what training saw (same pixel normalization, same pooling): the
  # memorized pairs are retrieved perfectly.
  encode_images, encode_texts = train.encoders(cfg, params, batch_size=8)
  metrics = evaluation.retrieval_metrics(encode_images(images), encode_texts(ids),
                                         np.arange(8), ks=(1,))
  assert metrics == {'image_to_text_R@1': 1.0, 'text_to_image_R@1': 1.0}
  # With a tokenizer, captions are strings.
  _, encode_strings = train.encoders(cfg, params, batch_size=8,
                                     tokenizer=lambda texts: ids[[int(t) for t in texts]])
  np.testing.assert_allclose(encode_strings(['3', '1']), encode_texts(ids[[3, 1]]),
                             atol=1e-6)


def test_embedding_encoders_run_through_the_reference(toy_run):
  cfg, params = TOY, toy_run[1]
  data = _toy_pairs(8)

  class Reference:  # maps 'images' and captions to fixed embeddings by index
    def encode_images(self, images):
      return data[0][np.asarray(images)[:, 0, 0, 0]]

    def encode_texts(self, texts):
      return data[1][[int(t) for t in texts]]

  images = np.zeros((8, 2, 2, 3), np.uint8)
  images[:, 0, 0, 0] = np.arange(8)[::-1]
  enc_i, enc_t = train.encoders(cfg, params, reference=Reference(), batch_size=3)
  direct_i, direct_t = train.encoders(cfg, params, batch_size=3)
  np.testing.assert_allclose(enc_i(images), direct_i(data[0][::-1]), atol=1e-6)
  np.testing.assert_allclose(enc_t([str(i) for i in range(8)]), direct_t(data[1]),
                             atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(enc_i(images), axis=1), 1, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Checkpoints.


def test_resume_after_a_kill_equals_an_uninterrupted_run(toy_run, tmp_path):
  data, straight, history = toy_run
  workdir = str(tmp_path / 'run')
  # Killed 7 steps after the checkpoint at step 20: those steps are lost and redone.
  _, partial = train.train(TOY, data, workdir=workdir, stop_after=27)
  assert len(partial['loss']) == 27
  saved = [d for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit()]
  assert saved == ['20']
  resumed, resumed_history = train.train(TOY, data, workdir=workdir)
  for a, b in zip(jax.tree_util.tree_leaves(straight),
                  jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
  np.testing.assert_allclose(resumed_history['loss'], history['loss'], rtol=1e-5)
  assert resumed_history['step'] == list(range(1, TOY.steps + 1))
  # A finished run restores and returns at once; a changed config is refused.
  again = train.train(TOY, data, workdir=workdir)[0]
  np.testing.assert_array_equal(np.asarray(again['logit_scale']),
                                np.asarray(resumed['logit_scale']))
  changed = dataclasses.replace(TOY, lr=0.1)
  with pytest.raises(ValueError, match=r'checkpoints: the checkpoint at step 60 was written '
                     r'with TrainConfig.lr=0.02, this run has 0.1'):
    train.train(changed, data, workdir=workdir)
  with pytest.raises(ValueError, match='written for other data'):
    train.train(TOY, data, workdir=workdir, rows=np.arange(100))


# ---------------------------------------------------------------------------------------
# Errors.


def test_bad_config_and_data_are_named():
  with pytest.raises(ValueError, match="TrainConfig.kind: 'vit' is not one of"):
    train.TrainConfig(kind='vit')
  with pytest.raises(ValueError, match='TrainConfig.samples_seen: 10 is less than one batch'):
    train.TrainConfig(batch_size=16, samples_seen=10)
  with pytest.raises(ValueError, match='TrainConfig.b2: expected a number in'):
    train.TrainConfig(b2=1.0)
  with pytest.raises(ValueError, match='TrainConfig.model_overrides'):
    train.TrainConfig(kind='pixels', model='tiny', model_overrides={'layers': 2})
  with pytest.raises(ValueError, match="CLIP preset 'huge' unknown"):
    train.TrainConfig(kind='pixels', model='huge')
  emb = np.zeros((4, 8), np.float32)
  with pytest.raises(ValueError, match='data: image_emb .* and text_emb .* differ'):
    train.train(TOY, (emb, np.zeros((5, 8), np.float32)))
  with pytest.raises(ValueError, match=r'weights: expected shape \(4,\)'):
    train.train(TOY, (emb, emb), weights=np.ones(3))
  with pytest.raises(ValueError, match='weights: must be finite and >= 0'):
    train.train(TOY, (emb, emb), weights=-np.ones(4))
  with pytest.raises(ValueError, match=r'rows: indices must be in \[0, 4\)'):
    train.train(TOY, (emb, emb), rows=np.array([0, 4]))
  pixels = train.TrainConfig(batch_size=8, samples_seen=8, **TINY_PIXELS)
  with pytest.raises(ValueError, match=r'data.images: expected uint8 \[N, 32, 32, 3\]'):
    train.train(pixels, (np.zeros((2, 64, 64, 3), np.uint8), np.zeros((2, 8), np.int32)))
  ids = np.full((2, 8), 5, np.int32)
  with pytest.raises(ValueError, match='data.token_ids: row 0 has no end-of-text token 63'):
    train.train(pixels, (np.zeros((2, 32, 32, 3), np.uint8), ids))
  ids[:, -1] = 99
  with pytest.raises(ValueError, match=r'data.token_ids: ids must be in \[0, 64\)'):
    train.train(pixels, (np.zeros((2, 32, 32, 3), np.uint8), ids))


# ---------------------------------------------------------------------------------------
# Sharding.


def check_sharded_training():
  """8-device data-parallel and FSDP training equal one device; raises on a mismatch."""
  assert jax.device_count() >= 8, jax.devices()
  data = _toy_pairs(128)
  cfg = train.TrainConfig(kind='embedding', head='mlp', head_hidden=32, batch_size=16,
                          samples_seen=16 * 6, lr=1e-2, warmup=2, eps=1e-3)
  one = train.train(cfg, data)
  for rules in ('data_parallel', 'fsdp'):
    sharded_cfg = dataclasses.replace(cfg, rules=rules)
    mesh = sharding.make_mesh(8, 1)
    params, history = train.train(sharded_cfg, data, mesh=mesh)
    fc1 = params['image']['fc1']['kernel']  # [D, H]
    local = fc1.addressable_shards[0].data.shape
    assert local == ((24 // 8, 32) if rules == 'fsdp' else (24, 32)), (rules, local)
    np.testing.assert_allclose(history['loss'], one[1]['loss'], rtol=1e-5, err_msg=rules)
    for a, b in zip(jax.tree_util.tree_leaves(one[0]), jax.tree_util.tree_leaves(params)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=rules)
  with pytest.raises(ValueError, match="batch_size: 12 is not a multiple of the mesh's "
                     r'data axis \(8 devices\)'):
    train.train(dataclasses.replace(cfg, batch_size=12), data, mesh=sharding.make_mesh(8, 1))


def check_sharded_pixel_training():
  """The tiny CLIP, data-parallel over 8 devices, equals one device."""
  assert jax.device_count() >= 8, jax.devices()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
  ids = rng.integers(1, 60, size=(16, 8)).astype(np.int32)
  ids[:, -1] = 63
  # eps=1e-3: Adam's first steps are ~lr * sign(g), so with a tiny eps a gradient that is
  # ~0 and differs in the last bit between layouts would move a weight by +-lr.
  pix = train.TrainConfig(batch_size=16, samples_seen=16 * 3, lr=1e-3, warmup=1, eps=1e-3,
                          **TINY_PIXELS)
  ref = train.train(pix, (images, ids))
  got = train.train(pix, (images, ids), mesh=sharding.make_mesh(8, 1))
  np.testing.assert_allclose(got[1]['loss'], ref[1]['loss'], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(ref[0]), jax.tree_util.tree_leaves(got[0])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_sharded_training_matches_single_device(on_8_devices):
  on_8_devices(check_sharded_training)


@pytest.mark.slow
def test_sharded_pixel_training_matches_single_device(on_8_devices):
  on_8_devices(check_sharded_pixel_training)
