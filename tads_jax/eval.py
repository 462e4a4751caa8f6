"""Zero-shot evaluation as CLIP_benchmark computes it, on embeddings (no I/O).

Classification: per class, every prompt template is encoded and L2-normalized, the
templates averaged and the mean renormalized; logits = 100 * image @ classes.T; top-1
accuracy and mean per-class recall (sklearn's balanced accuracy: the mean over the classes
present in the labels of the fraction of their images predicted right).

Retrieval: recall@k in both directions with several captions per image. image->text: an
image is a hit when any of its captions is among the k captions scored highest for it;
text->image: a caption is a hit when its image is among the k images scored highest. Ties
count against the query (a caption scored equal to the best true one ranks before it), so
a collapsed encoder that scores everything alike gets recall 0, not 1.

The main metric of a task, averaged over tasks as DataComp does: top-1 accuracy for
classification, and for retrieval the mean of image->text R@1 and text->image R@1
(DataComp's 'mean_recall@1'). Both are 'fraction of queries whose first answer is right',
on the same [0, 1] scale, so their mean weighs every task alike whatever its size.
"""

import numpy as np

from tads_jax import losses

RETRIEVAL_KS = (1, 5, 10)
_CHUNK = 1024  # queries per block: memory is [chunk, gallery] scores, not [M, N]


def _normalize(x, where: str):  # [..., D] -> float32 unit rows, on the host
  x = np.asarray(x, np.float32)
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{where}: embeddings contain NaN or inf')
  return losses.normalize(x, xp=np)


def zero_shot_classifier(class_text_emb) -> np.ndarray:
  """[C, T, D] text embeddings of T templates per class -> [C, D] unit class vectors."""
  emb = np.asarray(class_text_emb)
  if emb.ndim != 3 or 0 in emb.shape:
    raise ValueError(f'class_text_emb: expected [classes, templates, dim], got {emb.shape}')
  mean = _normalize(emb, 'class_text_emb').mean(axis=1)  # [C, D]
  return _normalize(mean, 'class_text_emb')


def classification_metrics(image_emb, classifier, labels) -> dict:
  """image_emb [N, D], classifier [C, D] (zero_shot_classifier), labels [N] in [0, C)."""
  image_emb, classifier = np.asarray(image_emb), np.asarray(classifier)
  labels = np.asarray(labels)
  if image_emb.ndim != 2 or classifier.ndim != 2 or image_emb.shape[1] != classifier.shape[1]:
    raise ValueError(f'image_emb {image_emb.shape} and classifier {classifier.shape}: '
                     'expected [N, D] and [C, D]')
  if labels.shape != (len(image_emb),) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels: expected {len(image_emb)} integers, got {labels.dtype} '
                     f'{labels.shape}')
  if not len(labels):
    raise ValueError('labels: no examples to evaluate')
  if labels.min() < 0 or labels.max() >= len(classifier):
    raise ValueError(f'labels: values must be in [0, {len(classifier)}), got '
                     f'[{labels.min()}, {labels.max()}]')
  images = _normalize(image_emb, 'image_emb')
  classes = _normalize(classifier, 'classifier')
  predictions = np.concatenate([
      np.argmax(100.0 * images[lo:lo + _CHUNK] @ classes.T, axis=1)
      for lo in range(0, len(images), _CHUNK)])  # [N]
  correct = predictions == labels
  present = np.unique(labels)
  recalls = [correct[labels == c].mean() for c in present]
  return {'top1': float(correct.mean()), 'mean_per_class_recall': float(np.mean(recalls))}


def retrieval_metrics(image_emb, text_emb, text_to_image, ks=RETRIEVAL_KS) -> dict:
  """image_emb [N, D], text_emb [M, D], text_to_image [M]: the image of each caption.

  Returns {'image_to_text_R@k', 'text_to_image_R@k'} for k in ks.
  """
  image_emb, text_emb = np.asarray(image_emb), np.asarray(text_emb)
  owner = np.asarray(text_to_image)
  if image_emb.ndim != 2 or text_emb.ndim != 2 or image_emb.shape[1] != text_emb.shape[1]:
    raise ValueError(f'image_emb {image_emb.shape} and text_emb {text_emb.shape}: expected '
                     '[N, D] and [M, D]')
  n = len(image_emb)
  if owner.shape != (len(text_emb),) or not np.issubdtype(owner.dtype, np.integer):
    raise ValueError(f'text_to_image: expected {len(text_emb)} integers, got {owner.dtype} '
                     f'{owner.shape}')
  if not len(owner) or owner.min() < 0 or owner.max() >= n:
    raise ValueError(f'text_to_image: values must be image indices in [0, {n})')
  captionless = np.setdiff1d(np.arange(n), owner)
  if len(captionless):
    raise ValueError(f'text_to_image: image {captionless[0]} has no caption')
  images = _normalize(image_emb, 'image_emb')
  texts = _normalize(text_emb, 'text_emb')

  # text -> image: rank of the caption's own image among all images.
  t2i_rank = np.empty(len(texts), np.int64)
  for lo in range(0, len(texts), _CHUNK):
    scores = texts[lo:lo + _CHUNK] @ images.T  # [m, N]
    own = owner[lo:lo + _CHUNK]
    true = scores[np.arange(len(own)), own]
    t2i_rank[lo:lo + _CHUNK] = (scores >= true[:, None]).sum(axis=1) - 1

  # image -> text: rank of the image's best-scored own caption among the other captions.
  i2t_rank = np.empty(n, np.int64)
  for lo in range(0, n, _CHUNK):
    scores = images[lo:lo + _CHUNK] @ texts.T  # [n, M]
    mine = owner[None, :] == np.arange(lo, lo + len(scores))[:, None]  # [n, M]
    best = np.where(mine, scores, -np.inf).max(axis=1)
    i2t_rank[lo:lo + _CHUNK] = ((scores >= best[:, None]) & ~mine).sum(axis=1)

  out = {}
  for k in ks:
    out[f'image_to_text_R@{k}'] = float(np.mean(i2t_rank < k))
  for k in ks:
    out[f'text_to_image_R@{k}'] = float(np.mean(t2i_rank < k))
  return out


def main_metric(kind: str, metrics: dict) -> float:
  """The number a task contributes to the average (see the module docstring)."""
  if kind == 'classification':
    return metrics['top1']
  return 0.5 * (metrics['image_to_text_R@1'] + metrics['text_to_image_R@1'])


def _split_of(splits, index, name):
  if isinstance(splits, dict):
    if name not in splits:
      raise ValueError(f'splits: no split for task {name!r}')
    return splits[name]
  return splits[index]


def evaluate_tasks(encode_images, encode_texts, tasks, splits) -> dict:
  """Runs every task and averages their main metrics; the result is eval.json's content.

  encode_images: uint8 [N, S, S, 3] -> [N, D]; encode_texts: list of strings -> [M, D]
  (e.g. train.encoders of a trained proxy). tasks: data.tasks.TaskSpec list; splits: their
  eval TaskSplit, as a list in the same order or a dict by task name.

  Returns {'tasks': {name: {'kind', 'num_images', 'num_texts', metrics..., 'main'}},
           'average': mean of the tasks' main metrics, 'classification_average',
           'retrieval_average' (over tasks of that kind; absent when there are none),
           'main_metric': how 'main' is defined}.
  """
  if not isinstance(splits, dict) and len(splits) != len(tasks):
    raise ValueError(f'splits: {len(splits)} splits for {len(tasks)} tasks')
  results, mains = {}, {'classification': [], 'retrieval': []}
  for i, spec in enumerate(tasks):
    split = _split_of(splits, i, spec.name)
    where = f'task {spec.name!r}'
    image_emb = np.asarray(encode_images(split.images))  # [N, D]
    if spec.kind == 'classification':
      if not spec.classnames or not spec.templates:
        raise ValueError(f'{where}: classification needs classnames and templates')
      prompts = [t.replace('{}', c) for c in spec.classnames for t in spec.templates]
      text_emb = np.asarray(encode_texts(prompts))  # [C * T, D]
      class_emb = text_emb.reshape(len(spec.classnames), len(spec.templates), -1)
      metrics = classification_metrics(image_emb, zero_shot_classifier(class_emb),
                                       split.labels)
      num_texts = len(prompts)
    elif spec.kind == 'retrieval':
      if split.captions is None or len(split.captions) != len(image_emb):
        raise ValueError(f'{where}: retrieval needs one caption list per image')
      captions = [c for caps in split.captions for c in caps]
      owner = np.repeat(np.arange(len(split.captions)),
                        [len(caps) for caps in split.captions])  # [M]
      metrics = retrieval_metrics(image_emb, np.asarray(encode_texts(captions)), owner)
      num_texts = len(captions)
    else:
      raise ValueError(f'{where}: kind {spec.kind!r} is not classification or retrieval')
    main = main_metric(spec.kind, metrics)
    mains[spec.kind].append(main)
    results[spec.name] = {'kind': spec.kind, 'num_images': int(len(image_emb)),
                          'num_texts': int(num_texts), **metrics, 'main': main}
  out = {'tasks': results,
         'average': float(np.mean([r['main'] for r in results.values()])) if results else None,
         'main_metric': {'classification': 'top1',
                         'retrieval': 'mean of image_to_text_R@1 and text_to_image_R@1'}}
  for kind, values in mains.items():
    if values:
      out[f'{kind}_average'] = float(np.mean(values))
  return out
