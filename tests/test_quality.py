import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from tads_jax.scoring import quality, registry


def _textured(rng, size=32):  # [H, W, 3] in [0, 1], smooth blobs plus fine detail
  base = ndimage.gaussian_filter(rng.random((size, size, 3)), sigma=(3, 3, 0))
  detail = rng.random((size, size, 3))
  return np.clip(0.7 * base + 0.3 * detail, 0, 1).astype(np.float32)


def _luma(images):
  return images[..., 0] * 0.299 + images[..., 1] * 0.587 + images[..., 2] * 0.114


def test_sharpness_is_variance_of_scipy_laplacian():
  rng = np.random.default_rng(0)
  images = np.stack([_textured(rng) for _ in range(3)])
  expected = [ndimage.laplace(_luma(img).astype(np.float64)).var() for img in images]
  np.testing.assert_allclose(quality.sharpness(images), expected, rtol=1e-4)


def test_blurred_image_is_less_sharp_than_its_source():
  rng = np.random.default_rng(1)
  source = _textured(rng)
  blurred = ndimage.gaussian_filter(source, sigma=(1.5, 1.5, 0)).astype(np.float32)
  s = quality.sharpness(np.stack([source, blurred]))
  assert s[1] < 0.5 * s[0]


def test_blank_image_is_flagged_and_has_no_entropy():
  rng = np.random.default_rng(2)
  blank = np.full((32, 32, 3), 0.8, np.float32)
  nearly_blank = blank + rng.normal(0, 0.003, blank.shape).astype(np.float32)  # JPEG noise
  images = np.stack([blank, nearly_blank, _textured(rng)])
  np.testing.assert_array_equal(quality.near_uniform(images), [1.0, 1.0, 0.0])
  ent = quality.entropy(images)
  assert ent[0] == 0.0 and ent[2] > 4.0


def test_entropy_matches_numpy_histogram():
  rng = np.random.default_rng(3)
  images = np.stack([_textured(rng), rng.random((32, 32, 3)).astype(np.float32)])
  for bins in (256, 64):
    expected = []
    for img in images:
      counts, _ = np.histogram(_luma(img), bins=bins, range=(0.0, 1.0))
      p = counts[counts > 0] / counts.sum()
      expected.append(-(p * np.log2(p)).sum())
    np.testing.assert_allclose(quality.entropy(images, bins=bins), expected, atol=2e-3)


def test_contrast_and_colourfulness_hand_cases():
  half = np.zeros((4, 4, 3), np.float32)
  half[:, :2, 0] = 1.0  # left half pure red
  half[:, 2:, 1] = 1.0  # right half pure green
  grey = np.full((4, 4, 3), 0.5, np.float32)
  images = np.stack([half, grey])
  # rg = +1 / -1 (var 1, mean 0); yb = 0.5 everywhere (var 0, mean 0.5): 1 + 0.3 * 0.5.
  np.testing.assert_allclose(quality.colourfulness(images), [1.15, 0.0], atol=1e-6)
  # Luma 0.299 on one half and 0.587 on the other: std is half the difference.
  np.testing.assert_allclose(quality.contrast(images), [(0.587 - 0.299) / 2, 0.0], atol=1e-6)


def test_sizes_give_width_height_and_aspect():
  sizes = np.array([[100, 300], [400, 200], [50, 50]], np.int32)  # (height, width)
  np.testing.assert_array_equal(quality.width(sizes), [300, 200, 50])
  np.testing.assert_array_equal(quality.height(sizes), [100, 400, 50])
  np.testing.assert_allclose(quality.aspect_ratio(sizes), [3.0, 2.0, 1.0])


def test_text_operators_hand_cases():
  caps = ['buy buy buy buy now', 'A brown dog runs on the beach', 'ab 1!', '']
  np.testing.assert_array_equal(quality.characters(caps), [19, 29, 5, 0])
  np.testing.assert_array_equal(quality.words(caps), [5, 7, 2, 0])
  np.testing.assert_allclose(quality.alnum_ratio(caps)[2:], [3 / 5, 0.0])
  np.testing.assert_allclose(quality.special_char_ratio(caps)[2:], [1 / 5, 0.0])
  # Bigrams of the spam: 'buy buy' x3 and 'buy now' x1, so 3 of 4 repeat.
  np.testing.assert_allclose(quality.word_repetition(caps), [0.75, 0.0, 0.0, 0.0])
  np.testing.assert_allclose(quality.word_repetition(caps, n=1)[0], 4 / 5)
  # 'abcabc' trigrams: abc, bca, cab, abc.
  np.testing.assert_allclose(quality.char_repetition(['abcabc', 'abcdef'], n=3), [0.5, 0.0])
  assert quality.char_repetition(['buy buy buy buy now'])[0] > quality.char_repetition(
      ['A brown dog runs on the beach'])[0]


def test_vocab_share_and_bpe_vocab_words():
  vocab = quality.words_from_bpe_vocab({'dog</w>': 1, 'do': 2, 'the</w>': 3, '!</w>': 4})
  assert vocab == {'dog', 'the'}
  np.testing.assert_allclose(quality.vocab_share(['The dog, the CAT!', '...'], vocab=vocab),
                             [0.75, 0.0])
  with pytest.raises(ValueError, match='vocab'):
    quality.vocab_share(['x'])


def test_caption_specificity_against_brute_force_with_padding():
  rng = np.random.default_rng(4)
  b, d = 6, 8
  image_emb = rng.normal(size=(b, d)).astype(np.float32)
  text_emb = rng.normal(size=(b, d)).astype(np.float32)
  image_emb /= np.linalg.norm(image_emb, axis=1, keepdims=True)
  text_emb /= np.linalg.norm(text_emb, axis=1, keepdims=True)
  mask = np.array([True, True, True, True, False, False])
  sims = text_emb @ image_emb.T  # [text, image]
  valid = np.flatnonzero(mask)
  expected = [sims[i, i] - np.mean([sims[i, j] for j in valid if j != i]) for i in valid]
  got = quality.caption_specificity(image_emb, text_emb, mask)
  np.testing.assert_allclose(np.asarray(got)[valid], expected, atol=1e-6)
  np.testing.assert_allclose(quality.clip_score(image_emb, text_emb), np.diag(sims), atol=1e-6)


def _render(text, size=64):  # caption written on a white canvas: [H, W, 3] in [0, 1]
  img = Image.new('RGB', (size, size), 'white')
  ImageDraw.Draw(img).text((2, 20), text, fill='black')
  return np.asarray(img, np.float32) / 255.0


def test_flipped_score_drops_on_an_image_that_carries_its_caption():
  # A toy CLIP that 'reads': both towers are the same random projection of pixels, the
  # text tower applied to the caption rendered as an image. An image that is its caption's
  # text then matches perfectly, and only as long as the text is not mirrored.
  rng = np.random.default_rng(5)
  proj = rng.normal(size=(64 * 64 * 3, 32)).astype(np.float32)

  def embed(images):
    e = (images - 1.0).reshape(len(images), -1) @ proj  # white background -> 0
    return e / np.linalg.norm(e, axis=1, keepdims=True)

  caption = 'SALE 50%'
  text_image = _render(caption)[None]
  # An up-pointing triangle: mirror-symmetric left-right, not top-bottom.
  y, x = np.mgrid[:64, :64]
  inside = (y >= 8) & (y < 56) & (np.abs(x - 31.5) < (y - 8) / 2)
  shape = np.ones((1, 64, 64, 3), np.float32)
  shape[0, inside, 1:] = 0.0  # red on white
  images = np.concatenate([text_image, shape])
  text_emb = embed(np.concatenate([text_image, shape]))  # each image's own 'caption'
  plain = quality.clip_score(embed(images), text_emb)
  flipped = quality.flipped_clip_score(embed(np.asarray(quality.flip_images(images))),
                                       text_emb)
  assert plain[0] > 0.99 and flipped[0] < plain[0] - 0.2
  np.testing.assert_allclose(flipped[1], plain[1], atol=1e-5)


def test_compute_runs_named_operators_with_settings():
  rng = np.random.default_rng(6)
  images = np.stack([_textured(rng), np.full((32, 32, 3), 0.5, np.float32)])
  sizes = np.array([[10, 20], [30, 30]], np.int32)
  out = registry.compute(['sharpness', 'near_uniform', 'width', 'words'],
                         params={'near_uniform': {'threshold': 1.0}},
                         images=images, sizes=sizes, captions=['a b', 'c'])
  assert list(out) == ['sharpness', 'near_uniform', 'width', 'words']
  np.testing.assert_allclose(out['sharpness'], quality.sharpness(images), rtol=1e-6)
  np.testing.assert_array_equal(out['near_uniform'], [1.0, 1.0])  # everything under 1.0
  np.testing.assert_array_equal(out['width'], [20, 30])
  np.testing.assert_array_equal(out['words'], [2, 1])
  assert all(v.dtype == np.float32 and v.shape == (2,) for v in out.values())


def test_compute_rejects_bad_requests():
  with pytest.raises(ValueError, match='unknown quality operator'):
    registry.compute(['no_such_op'], captions=['x'])
  with pytest.raises(ValueError, match="needs input.*sizes"):
    registry.compute(['width'], images=np.zeros((1, 4, 4, 3), np.float32))
  with pytest.raises(ValueError, match='unknown setting'):
    registry.compute(['sharpness'], params={'sharpness': {'sigma': 1}},
                     images=np.zeros((1, 4, 4, 3), np.float32))


def test_new_operator_plugs_in_by_name(monkeypatch):
  monkeypatch.setattr(registry, 'OPERATORS', dict(registry.OPERATORS))

  @registry.register('mean_red', 'image')
  def mean_red(images, scale: float = 1.0):
    return scale * images[..., 0].mean(axis=(1, 2))

  images = np.zeros((2, 4, 4, 3), np.float32)
  images[1, ..., 0] = 0.5
  out = registry.compute(['mean_red'], params={'mean_red': {'scale': 2.0}}, images=images)
  np.testing.assert_allclose(out['mean_red'], [0.0, 1.0])
  assert 'mean_red' in registry.names('image')
  with pytest.raises(ValueError, match='already registered'):
    registry.register('mean_red', 'image')(mean_red)
  with pytest.raises(ValueError, match='kind'):
    registry.register('x', 'audio')
