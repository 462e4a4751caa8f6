"""The words proxy (meta.MetaConfig.text='words'): its tokenizer and vocabulary by hand,
its word-bag tower and task losses against numpy, and, on a toy whose answer is known, that
meta-learning with it learns to value captions that name what the task asks. The
meta-gradient through it is checked against finite differences in test_meta.py.

XLA's CPU optimizations are off while this module runs (conftest.py's fast_compiles).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tads_jax import meta
from tads_jax import value
from tads_jax.models import proxy as proxy_lib
from tads_jax.models import words
from tads_jax.selectors import tads
from conftest import auroc, unit

pytestmark = pytest.mark.usefixtures('fast_compiles')


# ---------------------------------------------------------------------------------------
# Words and the vocabulary.


def test_words_are_lowercase_letter_and_digit_runs():
  assert words.words("A Red, striped CIRCLE -- 2x!") == ['a', 'red', 'striped', 'circle',
                                                         '2x']


def test_vocabulary_puts_task_words_first_then_pool_words_by_count():
  vocab = words.vocabulary(['a photo of a cat', 'a photo of a dog'],
                           ['bird bird fish', 'fish bird cow', 'cat'], size=8)
  # Task words in order of first appearance, then the pool's: bird (3), fish (2), cow (1).
  assert vocab == {'a': 1, 'photo': 2, 'of': 3, 'cat': 4, 'dog': 5, 'bird': 6, 'fish': 7,
                   'cow': 8}
  assert words.vocabulary(['a cat'], ['bird bird fish fish cow'], size=3) == {
      'a': 1, 'cat': 2, 'bird': 3}  # ties keep first appearance; the cap holds
  with pytest.raises(ValueError, match=r"the tasks' texts have 3 distinct words, more "
                     r'than size=2'):
    words.vocabulary(['a red cat'], [], size=2)


def test_word_ids_drop_unknown_words_cut_and_pad():
  vocab = {'a': 1, 'red': 2, 'cat': 3}
  got = words.word_ids(['A red dog', 'cat cat cat cat', 'zebra', ''], vocab, length=3)
  np.testing.assert_array_equal(got, [[1, 2, 0], [3, 3, 3], [0, 0, 0], [0, 0, 0]])
  assert got.dtype == np.int16  # ids up to 32767 fit
  big = {f'w{i}': i + 1 for i in range(40000)}
  wide = words.word_ids(['w0 w39999'], big, length=2)
  assert wide.dtype == np.int32 and wide.tolist() == [[1, 40000]]


def test_word_inputs_share_one_vocabulary_between_pool_and_tasks():
  tasks = [{'name': 'colors', 'kind': 'classification', 'classnames': ['red', 'blue'],
            'templates': ['a {} shape', 'a photo of {}']},
           {'name': 'captions', 'kind': 'retrieval', 'texts': ['a blue circle', 'a square']}]
  pool_ids, out = tads.word_inputs(['a red circle', 'green green square'], tasks)
  vocab = words.vocabulary(['a red shape', 'a photo of red', 'a blue shape',
                            'a photo of blue', 'a blue circle', 'a square'],
                           ['a red circle', 'green green square'])
  np.testing.assert_array_equal(pool_ids, words.word_ids(['a red circle',
                                                         'green green square'], vocab))
  cls = out[0]['class_text_ids']
  assert cls.shape == (2, 2, words.MAX_WORDS)
  np.testing.assert_array_equal(cls[1, 0], words.word_ids(['a blue shape'], vocab)[0])
  np.testing.assert_array_equal(out[1]['text_ids'],
                                words.word_ids(['a blue circle', 'a square'], vocab))
  # 'red' in a caption and in a prompt is one id.
  assert pool_ids[0, 1] == cls[0, 0, 1] == vocab['red']


# ---------------------------------------------------------------------------------------
# The tower and the task losses.


def test_words_tower_is_the_mean_of_its_word_vectors():
  tower = proxy_lib.WordsTower(vocab=6, out_dim=4)
  ids = np.array([[1, 2, 2, 0], [5, 0, 0, 0], [0, 0, 0, 0]], np.int32)
  params = nn.unbox(tower.init(jax.random.key(0), ids)['params'])
  table = np.asarray(params['word_embedding'])
  got = np.asarray(tower.apply({'params': params}, ids))
  np.testing.assert_allclose(got[0], (table[1] + 2 * table[2]) / 3, rtol=1e-6)
  np.testing.assert_allclose(got[1], table[5], rtol=1e-6)
  np.testing.assert_array_equal(got[2], 0.0)  # no known word: zero, not NaN


def _words_problem(n=64, dim=6, vocab=12, seed=0):
  rng = np.random.default_rng(seed)
  pool = {'z': rng.normal(size=(n, 3)).astype(np.float32),
          'image_emb': unit(rng.normal(size=(n, dim))).astype(np.float16),
          'text_ids': rng.integers(0, vocab, size=(n, 5)).astype(np.int32)}
  tasks = [{'name': 'cls', 'image_emb': unit(rng.normal(size=(40, dim))),
            'labels': rng.integers(0, 4, 40),
            'class_text_ids': rng.integers(1, vocab, size=(4, 2, 5))},
           {'name': 'ret', 'image_emb': unit(rng.normal(size=(30, dim))),
            'text_ids': rng.integers(1, vocab, size=(60, 5)),
            'text_image': np.repeat(np.arange(30), 2)}]
  return pool, tasks


def test_task_losses_of_a_words_proxy_match_numpy():
  """Zero-shot cross-entropy and retrieval CLIP loss, the text side a word-bag mean, by
  hand (identity image head)."""
  _, tasks = _words_problem()
  tasks = meta.check_tasks(tasks, 6, text='words')
  cfg = meta.MetaConfig(head='linear', text='words')
  proxy = meta.make_proxy(cfg, 6, vocab=12)
  rng = np.random.default_rng(3)
  table = rng.normal(size=(12, 6)).astype(np.float32)
  params = {'image': {'proj': {'kernel': jnp.eye(6)}},
            'text': {'word_embedding': jnp.asarray(table)},
            'logit_scale': jnp.asarray(np.log(20.0), jnp.float32)}
  unit_np = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)

  def bag(ids):  # [..., L] -> [..., D]
    mask = (ids > 0)[..., None]
    return (table[ids] * mask).sum(-2) / np.maximum(mask.sum(-2), 1)

  batch = meta.task_batch(tasks[0], np.arange(10))
  assert set(batch) == {'image_emb', 'labels', 'class_text_ids'}
  classes = unit_np(unit_np(bag(batch['class_text_ids'])).mean(axis=1))  # [C, D]
  logits = 20.0 * unit_np(batch['image_emb']) @ classes.T
  log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  expected = -np.mean(log_p[np.arange(10), batch['labels']])
  assert float(meta.classification_loss(proxy, params, batch)) == pytest.approx(expected,
                                                                               rel=1e-5)
  batch = meta.task_batch(tasks[1], np.arange(0, 12, 2))
  logits = 20.0 * unit_np(batch['image_emb']) @ unit_np(bag(batch['text_ids'])).T
  ce = lambda l: np.mean(np.log(np.exp(l).sum(axis=1)) - np.diag(l))
  assert float(meta.retrieval_loss(proxy, params, batch)) == pytest.approx(
      0.5 * (ce(logits) + ce(logits.T)), rel=1e-5)


def test_words_inputs_are_checked_naming_the_field():
  pool, tasks = _words_problem()
  with pytest.raises(ValueError, match=r'tasks\[0\] \(cls\)\.class_text_ids: expected word '
                     r'ids \(integers >= 0\) of shape \[C, T, L\]'):
    meta.check_tasks([dict(tasks[0], class_text_ids=np.zeros((4, 5)))], 6, text='words')
  with pytest.raises(ValueError, match=r"tasks\[0\] \(ret\): field 'text_ids' is missing"):
    reference_only = {k: v for k, v in tasks[1].items() if k != 'text_ids'}
    meta.check_tasks([dict(reference_only, text_emb=unit(np.ones((60, 6))))], 6,
                     text='words')
  cfg = meta.MetaConfig(steps=1, batch_size=16, text='words', task_batch_size=8)
  module = value.make_value_function(('clip_score', 'width', 'height'), hidden=(4,))
  fn = (module, value.init_params(module))
  with pytest.raises(ValueError, match=r"pool: field 'text_ids' is missing"):
    meta.learn(cfg, fn, {k: v for k, v in pool.items() if k != 'text_ids'}, tasks)
  with pytest.raises(ValueError, match=r'pool\.text_ids: expected word ids'):
    meta.learn(cfg, fn, dict(pool, text_ids=-pool['text_ids'] - 1), tasks)
  with pytest.raises(ValueError, match=r"MetaConfig\.text: 'bpe' is not one of"):
    meta.MetaConfig(text='bpe')


# ---------------------------------------------------------------------------------------
# Learning on a toy whose answer is known.


def _partial_caption_toy(n=512, classes=8, dim=16, seed=0):
  """Images of `classes` classes; half the captions name the class ('a photo of a c3'),
  half only 'a photo'. The reference text embedding of every caption is its image's class
  centroid: the reference reads the image's class whatever the caption says, so only the
  words carry the difference (meta-learning on those embeddings learns nothing consistent
  here: AUROC 0.02-0.85 over toy seeds). Features: [names the class + noise, noise,
  noise]."""
  rng = np.random.default_rng(seed)
  centroids = unit(rng.normal(size=(classes, dim)))
  label = rng.integers(0, classes, n)
  partial = np.arange(n) % 2 == 1
  captions = ['a photo' if p else f'a photo of a c{c}' for p, c in zip(partial, label)]
  image = unit(centroids[label] + 0.2 * rng.normal(size=(n, dim)))
  text = unit(centroids[label] + 0.2 * rng.normal(size=(n, dim)))
  features = np.stack([(~partial) + 0.3 * rng.normal(size=n), rng.normal(size=n),
                       rng.normal(size=n)], axis=1)
  names = ('caption_specificity', 'width', 'height')
  z = value.Standardizer.fit(features, names).transform(features)
  task_label = rng.integers(0, classes, 256)
  task = {'name': 'classes', 'kind': 'classification',
          'image_emb': unit(centroids[task_label] + 0.2 * rng.normal(size=(256, dim))),
          'labels': task_label, 'classnames': [f'c{c}' for c in range(classes)],
          'templates': ['a photo of a {}', 'a {}'],
          'class_text_emb': unit(centroids[:, None] + 0.1 * rng.normal(
              size=(classes, 2, dim)))}
  return {'z': z, 'image_emb': image, 'text_emb': text}, captions, task, partial, names


def test_a_words_proxy_learns_to_value_captions_that_name_the_class():
  pool, captions, task, partial, names = _partial_caption_toy()
  pool['text_ids'], (task_words,) = tads.word_inputs(captions, [task])
  module = value.make_value_function(names, hidden=(8,), zero_prior=True)
  cfg = meta.MetaConfig(steps=60, batch_size=64, unroll=2, inner_optimizer='adam',
                        inner_lr=0.05, value_lr=0.05, value_grad_clip=0.0,
                        task_batch_size=64, log_every=60, text='words')
  learned, _ = meta.learn(cfg, (module, value.init_params(module)), pool, [task_words])
  v = np.asarray(module.apply({'params': learned}, pool['z']))
  assert auroc(~partial, v) >= 0.95  # 0.97-0.99 over toy seeds 0-2
  assert value.feature_weights(module, learned, pool['z'])['caption_specificity'][
      'effective'] > 0
