"""Zero-shot metrics against hand-computed cases and a brute-force ranking reference."""

import collections
import json
import math

import numpy as np
import pytest

from tads_jax import eval as evaluation
from tads_jax.data import tasks


def test_zero_shot_classifier_and_metrics_by_hand():
  # 3 classes x 2 templates in 2-d. Templates are normalized before averaging: class 0's
  # mean of [1, 0] and [0.6, 0.8] is [0.8, 0.4] -> [2, 1]/sqrt(5) (averaging the raw
  # [1, 0] and [3, 4] would give [1, 1]/sqrt(2) instead).
  class_text = np.array([[[1, 0], [3, 4]],
                         [[0, 2], [0, 1]],
                         [[-1, 0], [-5, 0]]], np.float32)  # [C, T, D]
  classifier = evaluation.zero_shot_classifier(class_text)
  np.testing.assert_allclose(classifier, [[2 / math.sqrt(5), 1 / math.sqrt(5)], [0, 1],
                                          [-1, 0]], atol=1e-6)
  # Image -> scores (class 0, 1, 2) -> prediction, by hand:
  images = np.array([[1, 0],      # .894, 0, -1          -> 0
                     [0.1, 1],    # .537, 1, -.1         -> 1
                     [1, 1],      # 1.342, 1, -1         -> 0
                     [-1, 0.2],   # -.805, .2, 1         -> 2
                     [0.2, 1],    # .626, 1, -.2         -> 1
                     [-1, -1],    # -1.342, -1, 1        -> 2
                     [1, -0.1]],  # .849, -.1, -1        -> 0
                    np.float32)
  labels = np.array([0, 1, 1, 2, 0, 2, 0])
  metrics = evaluation.classification_metrics(images, classifier, labels)
  # Correct: 0, 1, 3, 5, 6 -> 5/7. Per class: 0: images 0, 4, 6 -> 2/3; 1: images 1, 2
  # -> 1/2; 2: images 3, 5 -> 1. Mean 13/18.
  assert metrics['top1'] == pytest.approx(5 / 7)
  assert metrics['mean_per_class_recall'] == pytest.approx(13 / 18)
  # A class absent from the labels does not enter the mean (sklearn's balanced accuracy).
  only = evaluation.classification_metrics(images[[0, 3, 4]], classifier, labels[[0, 3, 4]])
  assert only['mean_per_class_recall'] == pytest.approx((1 / 2 + 1) / 2)


def test_retrieval_recall_by_hand_with_two_captions_per_image():
  # Images are the axes, so a caption's score for image i is its i-th coordinate.
  images = np.eye(3, dtype=np.float32)
  texts = np.array([[0.8, 0.6, 0],      # image 0: ranks images 0, 1, 2 -> own at 0
                    [0.6, 0.8, 0],      # image 0: own image at rank 1
                    [0, 0.28, 0.96],    # image 1: rank 1 (image 2 first)
                    [0.28, 0, 0.96],    # image 1: rank 2
                    [0.6, 0, 0.8],      # image 2: rank 0
                    [0, 0, 1]],         # image 2: rank 0
                   np.float32)
  owner = np.array([0, 0, 1, 1, 2, 2])
  metrics = evaluation.retrieval_metrics(images, texts, owner, ks=(1, 2, 3))
  # text -> image ranks 0, 1, 1, 2, 0, 0.
  assert metrics['text_to_image_R@1'] == pytest.approx(3 / 6)
  assert metrics['text_to_image_R@2'] == pytest.approx(5 / 6)
  assert metrics['text_to_image_R@3'] == 1.0
  # image -> text. Image 0 scores .8 .6 0 .28 .6 0: its best own caption (.8) is first.
  # Image 1 scores .6 .8 .28 0 0 0: its best own (.28) comes after captions 0 and 1 ->
  # rank 2. Image 2 scores 0 0 .96 .96 .8 1: its second caption (1.0) is first, although
  # its first (.8) would be third: any caption counts.
  assert metrics['image_to_text_R@1'] == pytest.approx(2 / 3)
  assert metrics['image_to_text_R@2'] == pytest.approx(2 / 3)
  assert metrics['image_to_text_R@3'] == 1.0
  default = evaluation.retrieval_metrics(images, texts, owner)
  assert list(default) == [f'{d}_R@{k}' for d in ('image_to_text', 'text_to_image')
                           for k in (1, 5, 10)]
  assert default['image_to_text_R@5'] == default['text_to_image_R@5'] == 1.0


def test_ties_count_against_the_query():
  # A collapsed encoder (every embedding equal) must not look perfect.
  same = np.ones((4, 3), np.float32)
  metrics = evaluation.retrieval_metrics(same[:2], same, np.array([0, 0, 1, 1]),
                                         ks=(1, 2, 3))
  assert metrics['text_to_image_R@1'] == 0 and metrics['text_to_image_R@2'] == 1
  # Each image ties with the other image's 2 captions: rank 2.
  assert metrics['image_to_text_R@2'] == 0 and metrics['image_to_text_R@3'] == 1


def _brute_force(images, texts, owner, k):
  """Reference: sort every query's gallery (stable) and look for a true match in the top k."""
  scores = texts @ images.T  # [M, N]
  t2i = np.mean([owner[j] in np.argsort(-scores[j], kind='stable')[:k]
                 for j in range(len(texts))])
  i2t = np.mean([np.any(owner[np.argsort(-scores[:, i], kind='stable')[:k]] == i)
                 for i in range(len(images))])
  return i2t, t2i


def test_retrieval_matches_brute_force_across_chunks(monkeypatch):
  monkeypatch.setattr(evaluation, '_CHUNK', 7)  # several blocks per direction
  rng = np.random.default_rng(0)
  n = 30
  owner = np.concatenate([np.arange(n), rng.integers(0, n, 25)])  # 1 to several captions
  images = rng.normal(size=(n, 8))
  images /= np.linalg.norm(images, axis=1, keepdims=True)
  texts = images[owner] + 0.6 * rng.normal(size=(len(owner), 8))
  texts /= np.linalg.norm(texts, axis=1, keepdims=True)
  metrics = evaluation.retrieval_metrics(images, texts, owner)
  for k in (1, 5, 10):
    i2t, t2i = _brute_force(images.astype(np.float32), texts.astype(np.float32), owner, k)
    assert metrics[f'image_to_text_R@{k}'] == pytest.approx(i2t)
    assert metrics[f'text_to_image_R@{k}'] == pytest.approx(t2i)
  assert 0 < metrics['text_to_image_R@1'] < metrics['text_to_image_R@10'] < 1


_COLOURS = {'red': (255, 0, 0), 'green': (0, 255, 0), 'blue': (0, 0, 255)}


def _solid(rgb):
  return np.broadcast_to(np.asarray(rgb, np.uint8), (4, 4, 3))


def _encode_images(images):  # mean colour
  return np.asarray(images, np.float32).mean(axis=(1, 2))


def _encode_texts(texts):  # the colour words a caption names
  return np.array([np.sum([_COLOURS[w] for w in t.split() if w in _COLOURS] or
                          [(1, 1, 1)], axis=0) for t in texts], np.float32)


def test_evaluate_tasks_runs_every_task_and_averages():
  specs = [
      tasks.TaskSpec(name='colours', kind='classification',
                     classnames=('red', 'green', 'blue'),
                     templates=('a {} thing', 'a photo of something {}'),
                     train='x.tar', eval='y.tar'),
      tasks.TaskSpec(name='captions', kind='retrieval', train='x.tar', eval='y.tar'),
  ]
  red, green, blue = (_COLOURS[c] for c in ('red', 'green', 'blue'))
  reddish = (200, 0, 100)
  colours = tasks.TaskSplit(
      images=np.stack([_solid(c) for c in (red, green, blue, reddish)]),
      labels=np.array([0, 1, 2, 2], np.int32), captions=None, keys=list('abcd'),
      skips=collections.Counter())
  captions = tasks.TaskSplit(
      images=np.stack([_solid(red), _solid(blue)]), labels=None,
      captions=[['a red square', 'something red'], ['green grass']],
      keys=['e', 'f'], skips=collections.Counter())
  prompts = []

  def encode_texts(texts):
    prompts.extend(texts)
    return _encode_texts(texts)

  result = evaluation.evaluate_tasks(_encode_images, encode_texts, specs,
                                     {'colours': colours, 'captions': captions})
  # Every class x template prompt was encoded.
  assert prompts[:6] == ['a red thing', 'a photo of something red', 'a green thing',
                         'a photo of something green', 'a blue thing',
                         'a photo of something blue']
  cls = result['tasks']['colours']
  # The reddish image (label blue) is predicted red: 3/4; per class 1, 1, 1/2.
  assert cls['top1'] == pytest.approx(3 / 4)
  assert cls['mean_per_class_recall'] == pytest.approx(2.5 / 3)
  assert cls['main'] == cls['top1'] and cls['num_texts'] == 6 and cls['num_images'] == 4
  ret = result['tasks']['captions']
  # The blue image's only caption says green (scores 0 with both images): text->image for
  # it ties and misses; red's two captions hit. image->text: red hits; blue ties with
  # everything at 0 and misses. R@1: t2i 2/3, i2t 1/2.
  assert ret['text_to_image_R@1'] == pytest.approx(2 / 3)
  assert ret['image_to_text_R@1'] == pytest.approx(1 / 2)
  assert ret['main'] == pytest.approx((2 / 3 + 1 / 2) / 2)
  assert result['average'] == pytest.approx((3 / 4 + (2 / 3 + 1 / 2) / 2) / 2)
  assert result['classification_average'] == pytest.approx(3 / 4)
  assert result['retrieval_average'] == pytest.approx(ret['main'])
  assert json.loads(json.dumps(result)) == result  # ready for eval.json
  # The same with splits given as a list in task order.
  assert evaluation.evaluate_tasks(_encode_images, _encode_texts, specs,
                                   [colours, captions]) == result
  with pytest.raises(ValueError, match="splits: no split for task 'captions'"):
    evaluation.evaluate_tasks(_encode_images, _encode_texts, specs, {'colours': colours})


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match=r'class_text_emb: expected \[classes, templates'):
    evaluation.zero_shot_classifier(np.ones((3, 4)))
  with pytest.raises(ValueError, match=r'labels: values must be in \[0, 2\)'):
    evaluation.classification_metrics(np.ones((2, 3)), np.ones((2, 3)), np.array([0, 2]))
  with pytest.raises(ValueError, match='image_emb .* and classifier .*: expected'):
    evaluation.classification_metrics(np.ones((2, 3)), np.ones((2, 4)), np.array([0, 1]))
  with pytest.raises(ValueError, match='text_to_image: image 1 has no caption'):
    evaluation.retrieval_metrics(np.eye(3), np.eye(3), np.array([0, 0, 2]))
  with pytest.raises(ValueError, match='text_to_image: expected 3 integers'):
    evaluation.retrieval_metrics(np.eye(3), np.eye(3), np.array([0, 1]))
  with pytest.raises(ValueError, match='image_emb: embeddings contain NaN'):
    evaluation.retrieval_metrics(np.full((1, 3), np.nan), np.eye(3)[:1], np.array([0]))
