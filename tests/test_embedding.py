"""Streaming embedding engine: batching, padding, skipping, bf16 and the 8-device mesh.

The reference is the same Flax module applied to one example at a time, outside the engine.
The 8-device check runs on conftest.py's on_8_devices.
"""

import collections
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tads_jax import embedding, sharding
from tads_jax.models import api, clip, preprocess

TINY = clip.get_config('tiny', vocab_size=512, eos_token_id=511, vision_layers=1,
                       text_layers=1)
SIZE = TINY.image_size


def random_params(seed=0):
  abstract = clip.abstract_params(clip.CLIP(TINY))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: (0.1 * rng.standard_normal(x.shape)).astype(np.float32), nn.unbox(abstract))


def make_encoder(params, batch_size=4, dtype=jnp.float32, **kwargs):
  loaded = api.LoadedCLIP(TINY, params, None, preprocess.default_config(SIZE),
                          dtype=dtype, param_dtype=dtype, batch_size=batch_size, **kwargs)
  return embedding.Encoder(loaded)


def random_images(n, seed=1):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (SIZE + 3 * i, SIZE + 5 * (i % 3), 3), dtype=np.uint8)
          for i in range(n)]


def random_ids(n, seed=2):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 511, size=(n, TINY.context_length)).astype(np.int32)
  ids[np.arange(n), rng.integers(1, TINY.context_length, n)] = 511
  return ids


def one_at_a_time(params, images=None, ids=None):
  """The module on single examples, normalized in numpy: the independent reference."""
  module = clip.CLIP(TINY)
  method = clip.CLIP.encode_image if images is not None else clip.CLIP.encode_text
  apply = jax.jit(lambda p, x: module.apply({'params': p}, x, method=method))
  if images is not None:
    cfg = preprocess.default_config(SIZE)
    rows = [preprocess.preprocess_image(image, cfg) for image in images]
  else:
    rows = list(ids)
  out = [apply(params, row[None]) for row in rows]  # batch of one, [1, E] each
  out = np.concatenate([np.asarray(o, np.float64) for o in out])
  return out / np.linalg.norm(out, axis=-1, keepdims=True)


def jpeg(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=95)
  return buf.getvalue()


@pytest.fixture(scope='module')
def params():
  return random_params()


@pytest.fixture(scope='module')
def encoder(params):
  return make_encoder(params)


def test_stream_matches_one_at_a_time(params, encoder):
  images = random_images(11)  # 11 at batch size 4: a padded tail of 1
  ids, emb = encoder.embed_images(enumerate(images))
  assert ids == list(range(11))
  assert emb.shape == (11, TINY.embed_dim) and emb.dtype == np.float32
  np.testing.assert_allclose(emb, one_at_a_time(params, images=images), atol=1e-5)
  tokens = random_ids(6)
  text_ids, text_emb = encoder.encode_text_batches(embedding.array_batches(tokens, 4))
  assert text_ids == list(range(6))
  np.testing.assert_allclose(text_emb, one_at_a_time(params, ids=tokens), atol=1e-5)
  # No items: no batches, an empty result of the right width.
  assert encoder.embed_images(iter(()))[1].shape == (0, TINY.embed_dim)


def test_iter_batches_pads_and_masks_the_tail():
  items = [(f'k{i}', i) for i in range(10)]
  batches = list(embedding.iter_batches(items, lambda i: np.full((2,), i + 1, np.float32),
                                        batch_size=4, workers=3, prefetch=1))
  assert [b.inputs.shape for b in batches] == [(4, 2)] * 3
  assert [b.ids for b in batches] == [['k0', 'k1', 'k2', 'k3'], ['k4', 'k5', 'k6', 'k7'],
                                      ['k8', 'k9']]
  np.testing.assert_array_equal(batches[2].mask, [True, True, False, False])
  np.testing.assert_array_equal(batches[2].inputs, [[9, 9], [10, 10], [0, 0], [0, 0]])
  assert all(b.mask.all() for b in batches[:2])
  np.testing.assert_array_equal(np.concatenate([b.inputs[b.mask] for b in batches])[:, 0],
                                np.arange(1, 11))


def test_padded_rows_are_masked_and_dropped(params, encoder):
  images = random_images(3)
  pixels = preprocess.preprocess_images(images, preprocess.default_config(SIZE))
  garbage = np.full((1,) + pixels.shape[1:], 1e3, np.float32)
  batch = embedding.Batch(np.concatenate([pixels, garbage]),
                          np.array([True, True, True, False]), ['a', 'b', 'c'])
  ids, emb = encoder.encode_image_batches([batch])
  assert ids == ['a', 'b', 'c'] and emb.shape == (3, TINY.embed_dim)
  np.testing.assert_allclose(emb, one_at_a_time(params, images=images), atol=1e-5)
  # The jitted step itself zeroes masked rows (what a sharded reduction would see).
  out = np.asarray(encoder.image_step(encoder.clip.params, batch.inputs, batch.mask))
  assert out.shape == (4, TINY.embed_dim) and not out[3].any()
  with pytest.raises(ValueError, match='batches of 4'):
    encoder.encode_image_batches([embedding.Batch(pixels, np.ones(3, bool), [0, 1, 2])])


def test_corrupt_image_mid_shard_is_skipped_in_order(params, encoder):
  images = random_images(7, seed=3)
  payloads = [(jpeg(im), f'shard.tar: {i}.jpg') for i, im in enumerate(images)]
  payloads[3] = (payloads[3][0][:200], 'shard.tar: 3.jpg')  # cut mid-scan
  skips = collections.Counter()
  ids, emb = encoder.embed_images(enumerate(payloads), skips=skips)
  assert ids == [0, 1, 2, 4, 5, 6]
  assert skips == {'corrupt_image': 1}
  decoded = [np.asarray(Image.open(io.BytesIO(payloads[i][0])).convert('RGB')) for i in ids]
  np.testing.assert_allclose(emb, one_at_a_time(params, images=decoded), atol=1e-5)


def test_other_load_errors_propagate_and_early_stop_returns():
  def load(i):
    if i == 5:
      raise RuntimeError('disk gone')
    return np.zeros(2, np.float32)
  with pytest.raises(RuntimeError, match='disk gone'):
    list(embedding.iter_batches(enumerate(range(9)), load, batch_size=2))
  with pytest.raises(ValueError, match=r"item 1: loaded as float32 \(3,\)"):
    list(embedding.iter_batches(enumerate([2, 3]), lambda n: np.zeros(n, np.float32), 4))
  # A consumer that stops early does not leave the producer blocked on a full queue.
  stream = embedding.iter_batches(enumerate(range(10**6)),
                                  lambda i: np.zeros(2, np.float32), batch_size=2)
  assert next(stream).ids == [0, 1]
  stream.close()


def test_bfloat16_compute_gives_float32_outputs_close_to_float32(params, encoder):
  images = random_images(5, seed=4)
  bf16 = make_encoder(params, dtype=jnp.bfloat16)
  assert jax.tree_util.tree_leaves(bf16.clip.params)[0].dtype == jnp.bfloat16
  _, ref = encoder.embed_images(enumerate(images))
  _, got = bf16.embed_images(enumerate(images))
  assert got.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1, atol=1e-5)
  cos = np.sum(got * ref, axis=-1)
  assert cos.min() > 0.99 and np.abs(got - ref).max() < 0.05
  assert np.abs(got - ref).max() > 0  # the bf16 path really ran in lower precision


def check_mesh_matches_single_device():
  """8 devices against 1; raises AssertionError on any mismatch."""
  assert jax.device_count() >= 8, jax.devices()
  params = random_params()
  images = random_images(13, seed=5)  # batch 8 on 8 devices: two batches, tail of 5
  tokens = random_ids(13)
  single = make_encoder(params, batch_size=8, mesh=None)
  ref_ids, ref = single.embed_images(enumerate(images))
  _, ref_text = single.encode_text_batches(embedding.array_batches(tokens, 8))
  mesh = sharding.make_mesh(8, 1)
  enc = make_encoder(params, batch_size=5, mesh=mesh)
  assert enc.batch_size == 8  # rounded up to a multiple of the data axis
  ids, emb = enc.embed_images(enumerate(images))
  assert ids == ref_ids
  np.testing.assert_allclose(emb, ref, atol=1e-5)
  _, text = enc.encode_text_batches(embedding.array_batches(tokens, 8))
  np.testing.assert_allclose(text, ref_text, atol=1e-5)
  # The step's output really is split over the data axis, one row per device.
  batch = next(embedding.array_batches(
      preprocess.preprocess_images(images[:8], preprocess.default_config(SIZE)), 8))
  with enc.scope():
    out = enc.image_step(enc.clip.params, batch.inputs, batch.mask)
  assert out.addressable_shards[0].data.shape == (1, TINY.embed_dim)
  assert len(out.sharding.device_set) == 8


def test_mesh_of_8_devices_matches_one_device(on_8_devices):
  on_8_devices(check_mesh_matches_single_device)
