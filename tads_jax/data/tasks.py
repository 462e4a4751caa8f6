"""Downstream tasks: their specs (from the config or a JSON file) and their image loaders.

A task is a zero-shot classification task (class names and prompt templates) or an
image-text retrieval task, with a `train` source (feedback for meta-learning, prototypes for
relevance) and an `eval` source. Sources are webdataset shards (`.jpg` + `.cls` for
classification, `.jpg` + `.txt` with one caption per line for retrieval), an image folder
(one sub-folder per class), or `tfds:NAME[:SPLIT]` read with tfds.data_source.
"""

import collections
import dataclasses
import glob
import json
import os

import numpy as np

from tads_jax.data import images
from tads_jax.data import webdataset

KINDS = ('classification', 'retrieval')
SPLITS = ('train', 'eval')
_FIELDS = ('name', 'kind', 'classnames', 'templates', 'train', 'eval')
_REQUIRED = ('name', 'kind', 'train', 'eval')
# What torchvision's ImageFolder accepts and PIL decodes; other files (.DS_Store, notes)
# in a class folder are ignored.
FOLDER_IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.webp', '.bmp', '.gif', '.ppm', '.pgm',
                     '.tif', '.tiff')
# When the source names no split, tfds:NAME reads these.
_TFDS_DEFAULT_SPLIT = {'train': 'train', 'eval': 'test'}


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  kind: str                   # 'classification' | 'retrieval'
  classnames: tuple = ()      # classification: label i is classnames[i]
  templates: tuple = ()       # classification: prompt templates with one '{}'
  train: str = ''             # source: shard pattern, image folder or tfds:NAME[:SPLIT]
  eval: str = ''


@dataclasses.dataclass
class TaskSplit:
  images: np.ndarray                   # uint8 [N, S, S, 3]
  labels: np.ndarray | None            # int32 [N] (classification)
  captions: list[list[str]] | None     # N lists of captions (retrieval)
  keys: list[str]                      # where each example came from
  skips: collections.Counter


# ---------------------------------------------------------------------------------------
# Specs.


def _to_dict(item):
  if hasattr(item, 'to_dict'):  # ml_collections.ConfigDict
    return item.to_dict()
  return item


def _resolve(source: str, base_dir: str | None) -> str:
  if source.startswith('tfds:'):
    return source
  source = os.path.expanduser(source)
  if base_dir is not None and not os.path.isabs(source):
    source = os.path.join(base_dir, source)
  return source


def _check_strings(where, field, value, allow_empty):
  if isinstance(value, str) or not isinstance(value, (list, tuple)):
    raise ValueError(f'{where}: field {field!r} must be a list of strings, got {value!r}')
  if not value and not allow_empty:
    raise ValueError(f'{where}: field {field!r} must not be empty')
  for v in value:
    if not isinstance(v, str) or not v:
      raise ValueError(f'{where}: field {field!r} must hold non-empty strings, got {v!r}')
  return tuple(value)


def _parse_task(index: int, item, base_dir: str | None, origin: str) -> TaskSpec:
  item = _to_dict(item)
  where = f'{origin}task {index}'
  if not isinstance(item, dict):
    raise ValueError(f'{where}: expected a dict of {", ".join(_FIELDS)}, got {item!r}')
  if isinstance(item.get('name'), str) and item['name']:
    where = f'{origin}task {index} ({item["name"]!r})'
  unknown = sorted(set(item) - set(_FIELDS))
  if unknown:
    raise ValueError(f'{where}: unknown field(s) {unknown}; fields are {", ".join(_FIELDS)}')
  for field in _REQUIRED:
    if field not in item:
      raise ValueError(f'{where}: missing field {field!r}')
    if not isinstance(item[field], str) or not item[field].strip():
      raise ValueError(f'{where}: field {field!r} must be a non-empty string, '
                       f'got {item[field]!r}')
  kind = item['kind']
  if kind not in KINDS:
    raise ValueError(f'{where}: field \'kind\': unknown kind {kind!r}; one of {KINDS}')
  classification = kind == 'classification'
  if classification:
    for field in ('classnames', 'templates'):
      if field not in item:
        raise ValueError(f'{where}: missing field {field!r} (classification tasks need it)')
  else:
    for field in ('classnames', 'templates'):
      if item.get(field):
        raise ValueError(f'{where}: field {field!r}: retrieval tasks take none')
  classnames = _check_strings(where, 'classnames', item.get('classnames', ()),
                              allow_empty=not classification)
  templates = _check_strings(where, 'templates', item.get('templates', ()),
                             allow_empty=not classification)
  if len(set(classnames)) != len(classnames):
    dup = sorted(c for c, n in collections.Counter(classnames).items() if n > 1)
    raise ValueError(f'{where}: field \'classnames\': duplicate class names {dup}')
  for t in templates:
    if t.count('{}') != 1:
      raise ValueError(f'{where}: field \'templates\': {t!r} must contain \'{{}}\' once')
    try:
      t.format('x')
    except (IndexError, KeyError, ValueError) as e:
      raise ValueError(f'{where}: field \'templates\': {t!r} is not a format string with '
                       f'one \'{{}}\' ({e})') from None
  return TaskSpec(name=item['name'], kind=kind, classnames=classnames, templates=templates,
                  train=_resolve(item['train'], base_dir),
                  eval=_resolve(item['eval'], base_dir))


def parse_tasks(value, base_dir: str | None = None) -> list[TaskSpec]:
  """Task specs from a list of dicts (or ConfigDicts) or from a JSON file holding one.

  Relative sources resolve against the JSON file's folder (so a task file can travel with
  its data), or against `base_dir` for a list given in the config.
  """
  origin = ''
  if isinstance(value, str):
    path = os.path.expanduser(value)
    try:
      with open(path) as f:
        value = json.load(f)
    except OSError as e:
      raise ValueError(f'{path}: cannot read the task list ({e})') from e
    except ValueError as e:
      raise ValueError(f'{path}: not valid JSON ({e})') from e
    base_dir = os.path.dirname(os.path.abspath(path))
    origin = f'{path}: '
    if not isinstance(value, list):
      raise ValueError(f'{path}: expected a JSON list of tasks, got {type(value).__name__}')
  if not isinstance(value, (list, tuple)):
    raise ValueError(f'tasks: expected a list of task dicts or a JSON path, got {value!r}')
  if not value:
    raise ValueError(f'{origin}tasks: the task list is empty')
  specs = [_parse_task(i, item, base_dir, origin) for i, item in enumerate(value)]
  names = collections.Counter(s.name for s in specs)
  dup = sorted(n for n, c in names.items() if c > 1)
  if dup:
    raise ValueError(f'{origin}tasks: duplicate task name(s) {dup}')
  return specs


# ---------------------------------------------------------------------------------------
# Loaders.


def _is_shard_spec(source: str) -> bool:
  return '.tar' in source or glob.has_magic(source) or '{' in source


def _from_shards(spec, source, image_size, max_examples, skips, where):
  classification = spec.kind == 'classification'
  label_ext = 'cls' if classification else 'txt'
  exts = set(webdataset.IMAGE_EXTS) | {label_ext}
  out_images, labels, captions, keys = [], [], [], []
  try:
    shards = webdataset.expand_shards(source)
  except ValueError as e:
    raise ValueError(f'{where}: {e}') from None
  for shard in shards:
    for key, files in webdataset.iter_groups(shard, skips, exts=exts):
      if max_examples is not None and len(keys) >= max_examples:
        return out_images, labels, captions, keys
      image_ext = webdataset.pick_image(files)
      if image_ext is None:
        skips['missing_image'] += 1
        continue
      if label_ext not in files:
        skips['missing_label' if classification else 'missing_caption'] += 1
        continue
      text = files[label_ext].decode('utf-8', errors='replace')
      if classification:
        label = _check_label(text.strip(), spec, f'{shard}: {key}.cls')
      else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
          skips['missing_caption'] += 1
          continue
      try:
        image = images.decode_image(files[image_ext], where=f'{shard}: {key}.{image_ext}')
      except images.CorruptImageError:
        skips['corrupt_image'] += 1
        continue
      out_images.append(images.resize_center_crop(image, image_size))
      if classification:
        labels.append(label)
      else:
        captions.append(lines)
      keys.append(f'{shard}:{key}')
  return out_images, labels, captions, keys


def _check_label(value, spec, where) -> int:
  try:
    label = int(value)
  except (TypeError, ValueError):
    raise ValueError(f'{where}: label {value!r} is not an integer class index') from None
  if not 0 <= label < len(spec.classnames):
    raise ValueError(f'{where}: label {label} is outside [0, {len(spec.classnames)}) for '
                     f'task {spec.name!r} with {len(spec.classnames)} classnames')
  return label


def _folder_classes(spec, folder, where) -> list[tuple[str, int]]:
  """(sub-folder, label) pairs: a folder is named after its class, '_' standing for ' '."""
  if spec.kind != 'classification':
    raise ValueError(f'{where}: an image folder holds classification data; retrieval needs '
                     'webdataset shards with .txt captions')
  subdirs = sorted(d for d in os.listdir(folder)
                   if not d.startswith('.') and os.path.isdir(os.path.join(folder, d)))
  index = {name: i for i, name in enumerate(spec.classnames)}
  pairs, extra = [], []
  for d in subdirs:
    name = d if d in index else d.replace('_', ' ')
    if name in index:
      pairs.append((d, index[name]))
    else:
      extra.append(d)
  found = {label for _, label in pairs}
  missing = [c for i, c in enumerate(spec.classnames) if i not in found]
  if extra or missing or len(found) != len(pairs):
    raise ValueError(f'{where}: sub-folders of {folder} must be the task\'s classnames; '
                     f'folders without a class: {extra}, classes without a folder: {missing}')
  return sorted(pairs, key=lambda p: p[1])


def check_folder(spec, folder: str, where: str) -> int:
  """Image files an image-folder source holds (listing only, no decoding); ValueError when
  its sub-folders are not the classnames or it holds no image: found at config validation,
  before any work, not after the pool is embedded."""
  count = 0
  for sub, _ in _folder_classes(spec, folder, where):
    class_dir = os.path.join(folder, sub)
    count += sum(1 for name in os.listdir(class_dir)
                 if name.lower().endswith(FOLDER_IMAGE_EXTS)
                 and os.path.isfile(os.path.join(class_dir, name)))
  if not count:
    raise ValueError(f'{where}: no image file ({", ".join(FOLDER_IMAGE_EXTS)}) in the class '
                     f'sub-folders of {folder}')
  return count


def _from_folder(spec, folder, image_size, max_examples, skips, where):
  out_images, labels, keys = [], [], []
  for sub, label in _folder_classes(spec, folder, where):
    class_dir = os.path.join(folder, sub)
    for name in sorted(os.listdir(class_dir)):
      path = os.path.join(class_dir, name)
      if not name.lower().endswith(FOLDER_IMAGE_EXTS) or not os.path.isfile(path):
        continue
      if max_examples is not None and len(keys) >= max_examples:
        return out_images, labels, [], keys
      with open(path, 'rb') as f:
        data = f.read()
      try:
        image = images.decode_image(data, where=path)
      except images.CorruptImageError:
        skips['corrupt_image'] += 1
        continue
      out_images.append(images.resize_center_crop(image, image_size))
      labels.append(label)
      keys.append(path)
  return out_images, labels, [], keys


def _from_tfds(spec, source, split, image_size, max_examples, data_dir, where):
  if spec.kind != 'classification':
    raise ValueError(f'{where}: TFDS sources are supported for classification tasks only, '
                     f'not {spec.kind}')
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  name, _, tfds_split = source[len('tfds:'):].partition(':')
  tfds_split = tfds_split or _TFDS_DEFAULT_SPLIT[split]
  try:
    ds = tfds.data_source(name, split=tfds_split, data_dir=data_dir, download=False)
  except Exception as e:  # tfds raises many kinds: not found, not prepared, wrong format
    raise ValueError(f'{where}: cannot open TFDS {name!r} split {tfds_split!r} '
                     f'(data_dir={data_dir!r}; prepare it as array_record beforehand): '
                     f'{type(e).__name__}: {e}') from e
  features = ds.dataset_info.features
  for field in ('image', 'label'):
    if field not in features:
      raise ValueError(f'{where}: TFDS {name!r} has no {field!r} feature '
                       f'(features: {sorted(features.keys())})')
  num_classes = getattr(features['label'], 'num_classes', None)
  if num_classes is not None and num_classes != len(spec.classnames):
    raise ValueError(f'{where}: TFDS {name!r} field \'label\' has {num_classes} classes '
                     f'but task {spec.name!r} has {len(spec.classnames)} classnames')
  n = len(ds) if max_examples is None else min(len(ds), max_examples)
  out_images, labels, keys = [], [], []
  for i in range(n):
    example = ds[i]
    at = f'{source} (split {tfds_split!r}) example {i}'
    label = _check_label(example['label'], spec, at)
    out_images.append(images.resize_center_crop(np.asarray(example['image']), image_size))
    labels.append(label)
    keys.append(f'tfds:{name}:{tfds_split}[{i}]')
  return out_images, labels, [], keys


def load_split(spec: TaskSpec, split: str, image_size: int, max_examples: int | None = None,
               tfds_data_dir: str | None = None) -> TaskSplit:
  """Loads a task's train or eval examples, decoded and resized CLIP-style to image_size.

  Examples are read in source order (shard order, sorted folders, TFDS index order) and the
  first `max_examples` usable ones kept, so the result is deterministic. Broken samples are
  skipped and counted; labels outside the classnames are errors naming the file and key.
  """
  if split not in SPLITS:
    raise ValueError(f'task {spec.name!r}: split must be one of {SPLITS}, got {split!r}')
  if max_examples is not None and max_examples <= 0:
    raise ValueError(f'task {spec.name!r}: max_examples must be positive, got {max_examples}')
  source = getattr(spec, split)
  where = f'task {spec.name!r} {split} source {source!r}'
  skips = collections.Counter()
  if source.startswith('tfds:'):
    out_images, labels, captions, keys = _from_tfds(
        spec, source, split, image_size, max_examples, tfds_data_dir, where)
  elif os.path.isdir(source):
    out_images, labels, captions, keys = _from_folder(
        spec, source, image_size, max_examples, skips, where)
  elif _is_shard_spec(source):
    out_images, labels, captions, keys = _from_shards(
        spec, source, image_size, max_examples, skips, where)
  else:
    raise ValueError(f'{where}: not a webdataset shard pattern (.tar, glob or braces), an '
                     'existing image folder, or tfds:NAME[:SPLIT]')
  if not keys:
    raise ValueError(f'{where}: no usable examples (skipped: {dict(skips)})')
  classification = spec.kind == 'classification'
  return TaskSplit(
      images=np.stack(out_images).astype(np.uint8),  # [N, S, S, 3]
      labels=np.asarray(labels, dtype=np.int32) if classification else None,  # [N]
      captions=None if classification else captions,
      keys=keys,
      skips=skips)
