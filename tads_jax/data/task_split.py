"""The validation split: a part of each task's train split held out from selection.

Every setting of a learned selector (TADS's meta-learning rates, temperature, steps, prior,
groups) is chosen by scoring subsets on data that neither the selector nor its settings
saw; the eval splits only report. With `config.tads.validation_fraction` > 0 each task's
train split is cut in two: a "fit" part, all that the selection side reads (relevance
prototypes, NormSim targets, meta-learning feedback, every selector's Inputs.tasks), and a
"validation" part, which evaluate.split='validation' scores. The cut applies to every
selector, not to TADS alone, so that comparisons between selectors stay fair.

The cut is a pure function of the split's size (and labels), the fraction, the cut's seed
(config.tads.validation_seed, config.seed when unset) and the task's name: classification
is stratified per class (every class present keeps at least one fit and one validation
example); retrieval is cut by image, so an image's captions stay with it.
"""

import dataclasses
import hashlib

import numpy as np

from tads_jax.data import tasks as tasks_lib

FIELD = 'config.tads.validation_fraction'
SEED_FIELD = 'config.tads.validation_seed'


def validation_fraction(config) -> float:
  """config.tads.validation_fraction, checked (0.0 when the config predates the field);
  ValueError names the field."""
  block = config.get('tads') or {}
  value = block.get('validation_fraction', 0.0)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f'{FIELD}: expected a number in [0, 1), got {value!r}')
  if not 0 <= value < 1:
    raise ValueError(f'{FIELD}: must be in [0, 1) (0: no validation split), got {value}')
  return float(value)


def _seed_field(config):
  """config.tads.validation_seed as written (None when unset or absent)."""
  return (config.get('tads') or {}).get('validation_seed')


def validation_seed(config) -> int:
  """The seed of the cut: config.tads.validation_seed, or config.seed when it is unset
  (None or absent). Another seed draws another validation split of the same world, so that
  a choice of settings can be checked on several draws (tools/tads_sweep.py --draws)
  without the world, which config.seed also draws, changing. ValueError names the field."""
  value = _seed_field(config)
  if value is None:
    return int(config.seed)
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise ValueError(f'{SEED_FIELD}: expected an int >= 0 or None (config.seed), got {value!r}')
  return value


def config_keys(config) -> tuple:
  """The fingerprint keys of the cut for every stage that reads the tasks' train splits:
  ('tads.validation_fraction',) when it is > 0, and 'tads.validation_seed' when that is
  set too, else (), so that a config without a cut (or with the default seed) keeps the
  fingerprint it had before the fields existed."""
  if not validation_fraction(config):
    return ()
  keys = ('tads.validation_fraction',)
  if _seed_field(config) is not None:
    validation_seed(config)  # checked before it is fingerprinted
    keys += ('tads.validation_seed',)
  return keys


def _rng(seed: int, task: str) -> np.random.Generator:
  """A generator of its own per (seed, task): one task's cut does not move when another
  task is added or removed."""
  digest = hashlib.sha256(f'{int(seed)}\0{task}'.encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:16], 'little'))


def _held_out(count: int, fraction: float) -> int:
  """Examples of a group of `count` that go to validation: the fraction rounded half up,
  at least one and at most count - 1 (both parts keep one)."""
  return min(max(int(np.floor(fraction * count + 0.5)), 1), count - 1)


def split_rows(size: int, fraction: float, seed: int, task: str,
               labels: np.ndarray | None = None, classnames=None) -> tuple:
  """(fit rows, validation rows), sorted int64 arrays that partition range(size).

  labels: int [size], the class of each example of a classification task (stratified: each
  class present gives _held_out(its count) examples to validation); None cuts `size`
  examples (a retrieval task's images) as one group. classnames only names a class in the
  error. ValueError names config.tads.validation_fraction when a group has fewer than two
  examples.
  """
  if not 0 < fraction < 1:
    raise ValueError(f'{FIELD}: must be in (0, 1) to cut a validation split, got {fraction}')
  rng = _rng(seed, task)
  if labels is None:
    groups = [(None, np.arange(size, dtype=np.int64))]
  else:
    labels = np.asarray(labels)
    if labels.shape != (size,):
      raise ValueError(f'task {task!r}: {labels.shape[0]} labels for {size} examples')
    groups = [(int(c), np.flatnonzero(labels == c).astype(np.int64))
              for c in np.unique(labels)]
  validation = []
  for label, rows in groups:
    if len(rows) < 2:
      what = ('images' if label is None else
              f'examples of class {classnames[label] if classnames is not None else label!r}')
      raise ValueError(f'{FIELD}: task {task!r} has {len(rows)} train {what}; a validation '
                       'split needs at least 2 (one to fit on, one to validate on)')
    validation.append(rng.permutation(rows)[:_held_out(len(rows), fraction)])
  held = np.zeros(size, bool)
  held[np.concatenate(validation)] = True
  return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)


def take_embeddings(kind: str, arrays: dict, rows: np.ndarray) -> dict:
  """The embed stage's arrays of a task split restricted to the examples `rows` (sorted):
  image rows (and labels) of a classification task, its class prompts unchanged; for
  retrieval, the images and every caption of theirs, text_image renumbered."""
  out = dict(arrays)
  for key in ('image_emb', 'labels', 'keys'):
    if key in arrays:
      out[key] = arrays[key][rows]
  if kind == 'retrieval':
    owner = np.asarray(arrays['text_image'])  # [M]
    new_index = np.full(len(arrays['image_emb']), -1, np.int64)
    new_index[rows] = np.arange(len(rows))
    kept = np.flatnonzero(new_index[owner] >= 0)  # captions of kept images, in order
    for key in ('text_emb', 'texts'):
      if key in arrays:
        out[key] = arrays[key][kept]
    out['text_image'] = new_index[owner[kept]].astype(owner.dtype)
  return out


def take_examples(split: tasks_lib.TaskSplit, rows: np.ndarray) -> tasks_lib.TaskSplit:
  """A loaded task split (decoded images) restricted to the examples `rows`, with their
  labels or captions: what the pixel proxy scores."""
  return dataclasses.replace(
      split, images=split.images[rows],
      labels=None if split.labels is None else split.labels[rows],
      captions=None if split.captions is None else [split.captions[i] for i in rows],
      keys=[split.keys[i] for i in rows])
