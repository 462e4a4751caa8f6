"""Evaluate: train a proxy CLIP from scratch on the subset, zero-shot on every task's eval split.

DataComp's protocol: a proxy trained for a fixed number of samples seen whatever the subset
size, once per seed in range(evaluate.seeds), then scored zero-shot. Two proxies
(`evaluate.proxy`):

- 'embedding' (default; DataComp on the cheap): two heads over the frozen reference
  embeddings the embed stage wrote, `evaluate.samples_seen` samples. Every task's eval
  split is scored through the trained heads: task images through the image head; the
  classifier of a classification task from its stored prompt embeddings [C, T, E] through
  the text head (then averaged per class as CLIP_benchmark does); retrieval captions
  through the text head.
- 'pixels' (DataComp's own protocol, at the size `evaluate.pixels` sets): a CLIP (ViT image
  tower, by default with a convolutional stem, a text transformer, a learned temperature)
  trained from scratch on the subset's decoded images and its captions tokenized with the
  reference encoder's tokenizer, for `evaluate.pixels.samples_seen` samples; a sample the
  subset repeats that lands twice in one batch is not its own negative. Every task's eval
  images and prompts or captions go through the trained towers (eval.evaluate_tasks). The
  pool's images are decoded once, at evaluate.pixels.image_size (by a Grain pipeline over
  the tars still to decode, config.data.grain_workers decode processes), into a cache every
  subset, baseline and seed reads: `evaluate_cache/pixels_<size>-<ingest
  fingerprint>-v<n>/`, one `<shard>.npy` per pool shard, uint8 [n, S, S, 3] in ingest
  order (memory-mapped when read; its `.json`, written after it, marks it complete and
  counts the samples skipped as the embed stage counts them).

The spread over seeds is part of the result, so a difference between two subsets can be
read against it; eval.json records which proxy made it.

Output `eval.json` in the workdir:
  tasks:   {name: {kind, num_images, num_texts, main_metric, per_seed: [{metric: value}],
                   mean: {metric: value}, std: {metric: value}}}
  average (and classification_average / retrieval_average when such tasks exist):
           {per_seed: [value], mean, std}   (the mean over tasks of each task's main metric)
  plus what was evaluated (subset path, sha256, entries, unique samples) and how (proxy:
  'embedding' | 'pixels', split: 'eval' | 'validation', train config, seeds; for pixels
  the image cache's folder, its skips and how many shards this call decoded). std is the
  sample standard deviation over seeds (0 with one seed).

With `evaluate.baselines` (e.g. ('full', 'random', 'clip_score')) the same protocol runs on
each baseline's subset under the same selection rules (config.selection: fraction, method,
dedup; a filter keeps what it keeps; 'full' = every pool sample once) and the same samples
seen, so that the comparison table comes from one run; eval.json holds them under
'baselines'. Any selector may be a baseline; a learning one (tads) is fitted here, with
its checkpoints under evaluate/baselines/<name>/learn.

The pixel check (`evaluate.pixel_check`, with the embedding proxy only): the pixel proxy
over every baseline and seed does not fit a short demo, so after the embedding evaluation
the selected subset and the baselines named in pixel_check.baselines (each one of
evaluate.baselines, whose subset files are then written) are also evaluated with the pixel
proxy (evaluate.pixels, exactly as evaluate.proxy='pixels' uses it) for pixel_check.seeds
seeds. eval.json holds them under 'pixel_check': {seeds, selected, baselines: {name}}, each
an eval dict like the others (proxy 'pixels'); absent when pixel_check.seeds is 0. Its
results and checkpoints are those an evaluate.proxy='pixels' run would make, so either run
reuses the other's.

The split scored (`evaluate.split`): 'eval' (the default), the tasks' eval splits, to report;
or 'validation', the validation part of the tasks' train splits that
config.tads.validation_fraction > 0 holds out from selection (data/task_split.py), to choose
settings on (tools/tads_sweep.py) without touching the eval splits. Both proxies score that
split (the pixel proxy decodes its examples from the task's train source); eval.json
records it under 'split'.

Checkpoints go to evaluate/selected/seed_<s>/checkpoints (the pixel proxy's to
seed_<s>/pixels/checkpoints, also those of the pixel check), so a killed run resumes at its
last checkpoint of the seed it was training, and finished seeds are not retrained.
`evaluate_subset` is the stage without the stage: tools/evaluate_subset.py scores any
DataComp subset file against the same embeddings with it.
"""

import collections
import dataclasses
import hashlib
import json
import logging
import os

import numpy as np

from tads_jax import config as config_lib
from tads_jax import eval as eval_lib
from tads_jax import pipeline
from tads_jax import selection
from tads_jax import selectors
from tads_jax import sharding
from tads_jax import train
from tads_jax.data import grain_source
from tads_jax.data import subset as subset_lib
from tads_jax.data import task_split
from tads_jax.data import tasks as tasks_lib
from tads_jax.models import clip
from tads_jax.models import tokenizer as tokenizer_lib
from tads_jax.stages import embed as embed_stage
from tads_jax.stages import encoder as encoder_stage
from tads_jax.stages import ingest
from tads_jax.stages import learn as learn_stage
from tads_jax.stages import select as select_stage

EVAL = 'eval.json'
STAGE_VERSION = 3  # bump when the proxy or its metrics change meaning
SUBSET = select_stage.SUBSET
PROXIES = ('embedding', 'pixels')
# config.evaluate fields -> TrainConfig fields of the embedding proxy.
TRAIN_FIELDS = ('samples_seen', 'batch_size', 'lr', 'warmup', 'head')
# config.evaluate.pixels fields -> TrainConfig fields of the pixel proxy; image_size and
# context_length go into the model (with the tokenizer's vocabulary), beside
# model_overrides.
PIXEL_TRAIN_FIELDS = ('model', 'samples_seen', 'batch_size', 'lr', 'warmup', 'weight_decay',
                      'b2', 'eps', 'dtype', 'checkpoint_every')
PIXEL_MODEL_FIELDS = ('image_size', 'context_length')
# Config validation runs before the encoder stage made the tokenizer, so it checks the pixel
# proxy with CLIP's vocabulary (49408 tokens, end-of-text last); the run uses the
# tokenizer's. Nothing else in the model depends on it.
_VALIDATION_VOCAB = (49408, 49407)


def proxy_kind(config) -> str:
  """config.evaluate.proxy ('embedding' when a config predates the field)."""
  block = config.get('evaluate')
  kind = 'embedding' if block is None else block.get('proxy', 'embedding')
  if kind not in PROXIES:
    raise ValueError(f'config.evaluate.proxy: {kind!r} is not one of {", ".join(PROXIES)}')
  return kind


SPLITS = ('eval', 'validation')


def eval_split(config) -> str:
  """config.evaluate.split ('eval' when a config predates the field), checked: 'validation'
  needs config.tads.validation_fraction > 0. ValueError names the field."""
  block = config.get('evaluate')
  split = 'eval' if block is None else block.get('split', 'eval')
  if split not in SPLITS:
    raise ValueError(f'config.evaluate.split: {split!r} is not one of {", ".join(SPLITS)}')
  if split == 'validation' and not task_split.validation_fraction(config):
    raise ValueError("config.evaluate.split: 'validation' scores the part of the tasks' "
                     'train splits held out from selection, and config.tads.'
                     'validation_fraction is 0 (no such part); set it in (0, 1)')
  return split


def _rules(config):
  return sharding.from_config(config).rules


def train_config(config, seed: int, vocab: tuple | None = None,
                 proxy: str | None = None) -> train.TrainConfig:
  """The proxy run of one seed; raises ValueError naming the config.evaluate field.

  vocab: (vocab_size, eos_token_id) of the tokenizer the pixel proxy reads captions with
  (pixel_tokenizer); None checks the pixel proxy's settings with CLIP's vocabulary.
  proxy: 'embedding' | 'pixels', default config.evaluate.proxy (the pixel check asks for
  'pixels' beside an embedding-proxy config).
  """
  if (proxy or proxy_kind(config)) == 'pixels':
    return pixel_train_config(config, seed, vocab or _VALIDATION_VOCAB)
  block = config.get('evaluate')
  fields = {}
  for name in TRAIN_FIELDS:
    if block is None or name not in block:
      raise ValueError(f'config.evaluate.{name}: missing field')
    fields[name] = block[name]
  return config_lib.build(train.TrainConfig, fields, 'config.evaluate', kind='embedding',
                          seed=seed, rules=_rules(config))


def pixel_train_config(config, seed: int, vocab: tuple) -> train.TrainConfig:
  """The pixel proxy's run of one seed: config.evaluate.pixels, the tokenizer's
  (vocab_size, eos_token_id), mask_repeats on. ValueError names the field."""
  where = 'config.evaluate.pixels'
  block = config.get('evaluate', {}).get('pixels')
  if block is None:
    raise ValueError(f'{where}: missing block (the pixel proxy reads it)')
  for name in PIXEL_TRAIN_FIELDS + PIXEL_MODEL_FIELDS + ('model_overrides',):
    if name not in block:
      raise ValueError(f'{where}.{name}: missing field')
  if block.model not in clip.PRESETS:
    raise ValueError(f'{where}.model: {block.model!r} is not one of '
                     f'{", ".join(clip.PRESETS)}')
  overrides = block.model_overrides
  overrides = dict(overrides.to_dict() if hasattr(overrides, 'to_dict') else overrides)
  for name in PIXEL_MODEL_FIELDS + ('vocab_size', 'eos_token_id'):
    if name in overrides:
      source = (f'{where}.{name}' if name in PIXEL_MODEL_FIELDS
                else "the reference encoder's tokenizer")
      raise ValueError(f'{where}.model_overrides.{name}: set by {source}, not here')
  overrides.update({name: block[name] for name in PIXEL_MODEL_FIELDS})
  overrides.update(vocab_size=int(vocab[0]), eos_token_id=int(vocab[1]))
  fields = {name: block[name] for name in PIXEL_TRAIN_FIELDS}
  try:
    return train.TrainConfig(kind='pixels', model_overrides=overrides, mask_repeats=True,
                             seed=seed, rules=_rules(config), **fields)
  except ValueError as e:
    # The model's own checks name a field of the block or an override.
    raise config_lib.field_error(e, where, train.TrainConfig, renames={
        **{f'CLIPConfig.{n}': f'{where}.{n}' for n in PIXEL_MODEL_FIELDS},
        'CLIPConfig': f'{where}.model_overrides'}) from None


def num_seeds(config) -> int:
  block = config.get('evaluate')
  seeds = None if block is None else block.get('seeds')
  if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
    raise ValueError(f'config.evaluate.seeds: expected an integer >= 1, got {seeds!r}')
  return seeds


def evaluate_heads(encode_images, encode_texts, tasks) -> dict:
  """Zero-shot metrics of every task through the proxy's heads.

  encode_images / encode_texts: reference embeddings [N, E] -> proxy embeddings [N, E']
  (train.encoders without a reference). tasks: embed.task_embeddings(). Returns
  {name: {'kind', 'num_images', 'num_texts', metrics..., 'main'}}.
  """
  results = {}
  for spec, data in tasks:
    image_emb = encode_images(data['image_emb'].astype(np.float32))  # [N, E']
    if spec.kind == 'classification':
      prompts = data['class_text_emb'].astype(np.float32)  # [C, T, E]
      c, t, e = prompts.shape
      class_emb = encode_texts(prompts.reshape(c * t, e)).reshape(c, t, -1)  # [C, T, E']
      metrics = eval_lib.classification_metrics(
          image_emb, eval_lib.zero_shot_classifier(class_emb), data['labels'])
      num_texts = c * t
    else:
      text_emb = encode_texts(data['text_emb'].astype(np.float32))  # [M, E']
      metrics = eval_lib.retrieval_metrics(image_emb, text_emb, data['text_image'])
      num_texts = len(text_emb)
    results[spec.name] = {'kind': spec.kind, 'num_images': int(len(image_emb)),
                          'num_texts': int(num_texts), **metrics,
                          'main': eval_lib.main_metric(spec.kind, metrics)}
  return results


def _spread(values) -> dict:
  values = np.asarray(values, np.float64)
  std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return {'per_seed': values.tolist(), 'mean': float(np.mean(values)), 'std': std}


def aggregate(per_seed: list) -> dict:
  """Per task and averaged mean and std over seeds; per_seed: evaluate_heads() per seed."""
  names = list(per_seed[0])
  tasks = {}
  for name in names:
    runs = [r[name] for r in per_seed]
    metrics = [k for k, v in runs[0].items() if isinstance(v, float)]  # incl. 'main'
    tasks[name] = {
        'kind': runs[0]['kind'], 'num_images': runs[0]['num_images'],
        'num_texts': runs[0]['num_texts'],
        'per_seed': [{k: r[k] for k in metrics} for r in runs],
        'mean': {k: float(np.mean([r[k] for r in runs])) for k in metrics},
        'std': {k: _spread([r[k] for r in runs])['std'] for k in metrics},
    }
  out = {'tasks': tasks,
         'main_metric': {'classification': 'top1',
                         'retrieval': 'mean of image_to_text_R@1 and text_to_image_R@1'}}
  groups = {'average': names}
  for kind in ('classification', 'retrieval'):
    group = [n for n in names if tasks[n]['kind'] == kind]
    if group:
      groups[f'{kind}_average'] = group
  for key, group in groups.items():
    out[key] = _spread([np.mean([r[n]['main'] for n in group]) for r in per_seed])
  return out


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


# Per-seed results keyed by everything they are a function of, outside the stage's folder
# so that they outlive its reruns: a comparison that adds a selector retrains only that
# selector's proxies (training is deterministic given these).
CACHE = 'evaluate_cache'


def _cache_path(ctx, subset_sha: str, cfg: train.TrainConfig,
                split: str = 'eval') -> str | None:
  """Where one seed's result on a subset is kept; None when the embeddings' identity is
  unknown (no fingerprint of the embed stage in ctx). The embed stage's fingerprint covers
  the reference encoder and the tasks, so it also names the pixel proxy's tokenizer; the
  validation split is also named by the fraction and the seed that cut it."""
  upstream = {name: ctx.fingerprints.get(name) for name in ('ingest', 'embed')}
  if upstream['embed'] is None:
    return None
  key = {'subset': subset_sha, 'train': cfg.to_dict(), 'upstream': upstream,
         'version': STAGE_VERSION}
  if cfg.kind == 'pixels':  # the embedding proxy's keys stay as they were
    key.update(proxy='pixels', pixel_cache=PIXEL_CACHE_VERSION)
  if split != 'eval':  # the eval split's keys stay as they were too
    key.update(split=split, validation_fraction=task_split.validation_fraction(ctx.config),
               split_seed=ctx.config.seed)
  blob = json.dumps(key, sort_keys=True, default=list).encode()
  return ctx.path(CACHE, hashlib.sha256(blob).hexdigest()[:24] + '.json')


def _read_cache(path: str | None) -> dict | None:
  if not path or not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------
# The pixel proxy's data: the pool's images decoded once, captions tokenized.

PIXEL_CACHE_VERSION = 1  # bump when the decoded images change (resize, crop)
_DECODE_BATCH = 64       # images per batch of the Grain decode pipeline


def pixel_cache_dir(ctx, image_size: int) -> str:
  """The decoded pool at one size; the ingest fingerprint names the pool it holds."""
  fp = ctx.fingerprints.get('ingest')
  if fp is None:
    done = pipeline.read_done(ctx.stage_dir('ingest'))
    if done is None:
      raise ValueError(f'{ctx.stage_dir("ingest")}: ingest has not finished in this workdir')
    fp = done['fingerprint']
  return ctx.path(CACHE, f'pixels_{image_size}-{fp}-v{PIXEL_CACHE_VERSION}')


def pixel_tokenizer(ctx, context_length: int) -> tokenizer_lib.CLIPTextTokenizer:
  """The reference encoder's tokenizer: its Hugging Face folder has one, so nothing is
  downloaded and the pixel proxy reads captions as the reference did."""
  folder = encoder_stage.checkpoint(ctx)
  if not folder:
    raise ValueError("config.encoder.checkpoint: the pixel proxy (config.evaluate.proxy="
                     "'pixels' or evaluate.pixel_check) tokenizes captions with the "
                     "reference encoder's tokenizer, and this run has no reference encoder "
                     'folder; set config.encoder.checkpoint')
  return tokenizer_lib.CLIPTextTokenizer(folder, context_length)


def _decode_shard(decoded: grain_source.DecodedShards, path: str, tar: str, uids: list,
                  size: int, item: str) -> dict:
  """Decodes one ingested shard's rows into `item`.npy (uint8 [n, S, S, 3], ingest order);
  returns the record that pipeline.resumable_item writes after it as `item`.json.

  `decoded` reads the shard's images from `tar` (its next one) and counts its skips as the
  embed stage does (a corrupt image only when its uid is ingested); a uid's first
  occurrence that decodes is kept, as ingest kept it. The array is written into a
  temporary memory map and renamed.
  """
  skips = collections.Counter()
  index = {u: i for i, u in enumerate(uids)}
  filled = np.zeros(len(uids), bool)
  with pipeline.atomic_write(item + '.npy', suffix='.npy') as tmp:
    out = np.lib.format.open_memmap(tmp, mode='w+', dtype=np.uint8,
                                    shape=(len(uids), size, size, 3))  # [n, S, S, 3]
    for row in decoded.rows(tar, skips, wanted=set(index)):
      i = index[str(row['uid'])]
      if not filled[i]:
        out[i] = row[f'image_{size}']
        filled[i] = True
    if not filled.all():
      missing = uids[int(np.argmin(filled))]
      raise ValueError(f'{tar}: {int(filled.sum())} of {len(uids)} ingested samples decoded '
                       f'(first missing uid {missing!r}, skips {dict(skips)}); the shard no '
                       'longer matches ingest/samples.parquet, rerun ingest')
    out.flush()
    del out
  return {'path': path, 'images': tar, 'samples': len(uids), 'skips': dict(skips)}


def _decode_shards(ctx, items: list, size: int) -> list:
  """The cache records of `items` ([(path, item)], ingest order), decoding the shards
  whose item is not done through one Grain pipeline over their tars
  (config.data.grain_workers decode processes, started once per call, not per shard)."""
  todo = {}  # path: (item, tar)
  for path, item in items:
    if not pipeline.item_done(item):
      tar = ingest.image_shard(ctx, path)  # a pool shard, or a DataComp metadata's tar
      if tar is None:
        raise ValueError(f'{path}: no images beside this DataComp metadata file; the pixel '
                         "proxy (config.evaluate.proxy='pixels' or evaluate.pixel_check) "
                         "needs the pool's tars")
      todo[path] = (item, tar)
  if todo:  # the shards' uids again: only a call that decodes reads them twice
    paths = [r['path'] for r in ctx.summary('ingest')['per_source']]
    with grain_source.DecodedShards(
        [tar for _, tar in todo.values()], image_sizes=(size,), batch_size=_DECODE_BATCH,
        worker_count=grain_source.config_worker_count(ctx.config)) as decoded:
      for path, rows in ingest.rows_by_shard(ctx, paths, ('uid',)):
        if path in todo:
          item, tar = todo[path]
          pipeline.resumable_item(item, lambda: _decode_shard(  # pylint: disable=cell-var-from-loop
              decoded, path, tar, rows['uid'], size, item))
  records = []
  for _, item in items:
    with open(item + '.json') as f:  # resumable_item's record, written after the array
      records.append(json.load(f))
  return records


class _Rows:
  """Chosen rows of several uint8 [n_k, S, S, 3] arrays (memory maps) as one [N, S, S, 3]
  array for train.train: indexing gathers only the rows a batch asks for."""

  def __init__(self, parts: list):  # [(array [n_k, S, S, 3], local rows [m_k])]
    self.arrays = [array for array, _ in parts]
    self.part = np.repeat(np.arange(len(parts)), [len(rows) for _, rows in parts])  # [N]
    self.local = np.concatenate([np.asarray(rows, np.int64) for _, rows in parts])  # [N]
    self.shape = (len(self.local),) + self.arrays[0].shape[1:]
    self.dtype = self.arrays[0].dtype

  def __len__(self):
    return self.shape[0]

  def __getitem__(self, idx):
    idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx)
    out = np.empty((len(idx),) + self.shape[1:], self.dtype)  # [B, S, S, 3]
    part = self.part[idx]
    for k in np.unique(part):
      mine = part == k
      out[mine] = self.arrays[k][self.local[idx[mine]]]
    return out


def pixel_data(ctx, subset, tokenizer, image_size: int) -> tuple:
  """(uids, images [N, S, S, 3] uint8 view, token_ids [N, L] int32, pool size, cache
  summary) of the pool rows `subset` lists, in ingest order; shards decoded on first use."""
  folder = pixel_cache_dir(ctx, image_size)
  os.makedirs(folder, exist_ok=True)
  paths = [r['path'] for r in ctx.summary('ingest')['per_source']]
  uids, captions, shards, pool = [], [], [], 0  # shards: (path, item, rows, rows kept)
  for path, rows in ingest.rows_by_shard(ctx, paths, ('uid', 'caption')):
    shard_uids = rows['uid']
    pool += len(shard_uids)
    keep = subset_lib.times_selected(subset, shard_uids) > 0  # [n]
    if not keep.any():
      continue
    rows_kept = np.flatnonzero(keep)
    shards.append((path, os.path.join(folder, ingest.item_name(path)), len(shard_uids),
                   rows_kept))
    uids += [shard_uids[i] for i in rows_kept]
    captions += [rows['caption'][i] for i in rows_kept]
  if not uids:
    raise ValueError(f'{ctx.path("ingest", ingest.SAMPLES)}: no pool sample is in the subset')
  decoded = sum(not pipeline.item_done(item) for _, item, _, _ in shards)
  records = _decode_shards(ctx, [(path, item) for path, item, _, _ in shards], image_size)
  skips, parts = collections.Counter(), []
  for (path, item, count, rows_kept), record in zip(shards, records):
    skips.update(record['skips'])
    array = np.load(item + '.npy', mmap_mode='r')  # [n, S, S, 3]
    if array.shape != (count, image_size, image_size, 3):
      raise ValueError(f'{item}.npy: shape {array.shape}, but ingest kept '
                       f'{count} samples of {path}; remove {folder}')
    parts.append((array, rows_kept))
  cache = {'dir': folder, 'shards_decoded': decoded, 'skips': dict(skips)}
  return uids, _Rows(parts), tokenizer(captions), pool, cache


def pixel_tasks(ctx, image_size: int, split: str = 'eval') -> tuple:
  """(specs, splits) of every task, images decoded at the proxy's size. split: one of
  embed.READ_SPLITS; 'train' and 'validation' are the examples of the train split that
  embed.task_embeddings gives (matched by their keys), so that both proxies score the same
  examples."""
  specs = embed_stage.task_specs(ctx)
  if split == 'eval':
    return specs, [tasks_lib.load_split(spec, 'eval', image_size) for spec in specs]
  stored = embed_stage.stored_split(split)
  out = []
  # A key names the file it came from: a synthetic world's, where embed found it.
  then, now = ingest.recorded_world(ctx), ingest.world_dir(ctx)
  for spec, arrays in embed_stage.task_embeddings(ctx, split, extra=('keys',)):
    data = tasks_lib.load_split(spec, stored, image_size)
    index = {key: i for i, key in enumerate(data.keys)}
    keys = [ingest.moved(str(k), then, now) for k in arrays['keys']]
    missing = [k for k in keys if k not in index]
    if missing:
      raise ValueError(f'{embed_stage.task_item(ctx, spec.name, stored)}.npz: example '
                       f'{missing[0]!r} of task {spec.name!r} ({stored} split) is no longer '
                       'in its source; rerun embed')
    rows = np.asarray([index[k] for k in keys], np.int64)
    out.append(task_split.take_examples(data, rows))
  return specs, out


def evaluate_subset(ctx, subset_path: str, checkpoints: str, seeds: int | None = None,
                    mesh=None, proxy: str | None = None) -> dict:
  """Trains one proxy per seed on `subset_path` and evaluates it; returns eval.json's dict.

  ctx: a pipeline.Context of a workdir where ingest and embed finished. checkpoints: the
  directory under which seed_<s>/ holds each seed's orbax checkpoints (a rerun resumes).
  Seed s trains with TrainConfig.seed = config.seed + s (init and data order). seeds and
  proxy ('embedding' | 'pixels') default to config.evaluate's; the pixel check passes its
  own. The tasks' split scored is config.evaluate.split's (eval_split).
  """
  config = ctx.config
  split = eval_split(config)
  seeds = num_seeds(config) if seeds is None else seeds
  if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
    raise ValueError(f'seeds: expected an integer >= 1, got {seeds!r}')
  if not os.path.exists(subset_path):
    raise ValueError(f'{subset_path}: no such subset file')
  proxy = proxy_kind(config) if proxy is None else proxy
  if proxy not in PROXIES:
    raise ValueError(f'proxy: {proxy!r} is not one of {", ".join(PROXIES)}')
  vocab = tokenizer = None
  if proxy == 'pixels':
    tokenizer = pixel_tokenizer(ctx, config.evaluate.pixels.context_length)
    vocab = (len(tokenizer.tokenizer), tokenizer.eos_token_id)
  cfgs = [train_config(config, config.seed + s, vocab, proxy) for s in range(seeds)]
  sha = file_sha256(subset_path)
  caches = [_cache_path(ctx, sha, cfg, split) for cfg in cfgs]
  cached = [_read_cache(path) for path in caches]
  stats = next((c['subset'] for c in cached if c and 'subset' in c), None)
  pixel_cache = None
  if stats is None or any(c is None for c in cached):  # something to train: read the data
    subset = subset_lib.read_subset(subset_path)
    if proxy == 'pixels':
      size = config.evaluate.pixels.image_size
      uids, images, token_ids, pool, pixel_cache = pixel_data(ctx, subset, tokenizer, size)
      data = (images, token_ids)
      specs, splits = pixel_tasks(ctx, size, split)
      tasks = list(zip(specs, splits))
    else:
      uids, image_emb, text_emb, pool = embed_stage.pool_embeddings(ctx, subset)
      data = (image_emb, text_emb)
      tasks = embed_stage.task_embeddings(ctx, split)
    if not tasks:
      raise ValueError('config.tasks: no tasks to evaluate on')
    # [entries]: rows of the kept samples, each once per time the subset lists it.
    rows = train.rows_from_subset(subset, uids)
    missing = len(subset) - len(rows)  # uids ingest skipped or another pool's: counted
    if missing:
      logging.warning('%s: %d of its %d entries are not in the embedded pool; skipped',
                      subset_path, missing, len(subset))
    stats = {'entries': int(len(rows)), 'unique': int(len(np.unique(rows))),
             'entries_not_in_pool': int(missing), 'pool': pool}
  per_seed, final_loss = [], []
  for s, cfg in enumerate(cfgs):
    if cached[s] is not None:
      logging.info('evaluate: seed %d of %d of this subset was evaluated before (%s)', s + 1,
                   seeds, caches[s])
      per_seed.append(cached[s]['tasks'])
      final_loss.append(cached[s]['final_loss'])
      continue
    logging.info('evaluate: seed %d of %d, %d steps on %d subset entries', s + 1, seeds,
                 cfg.steps, len(rows))
    workdir = os.path.join(checkpoints, f'seed_{s}')
    if proxy == 'pixels':  # beside an embedding proxy's checkpoints, never mixed with them
      workdir = os.path.join(workdir, 'pixels')
    params, history = train.train(cfg, data, workdir=workdir, mesh=mesh, rows=rows)
    if proxy == 'pixels':
      encode_images, encode_texts = train.encoders(cfg, params, tokenizer=tokenizer)
      per_seed.append(eval_lib.evaluate_tasks(encode_images, encode_texts, specs,
                                              splits)['tasks'])
    else:
      encode_images, encode_texts = train.encoders(cfg, params)
      per_seed.append(evaluate_heads(encode_images, encode_texts, tasks))
    final_loss.append(history['loss'][-1])  # the history is restored with a checkpoint
    if caches[s]:
      os.makedirs(os.path.dirname(caches[s]), exist_ok=True)
      pipeline.write_json_atomic(caches[s], {'tasks': per_seed[-1], 'subset': stats,
                                             'final_loss': final_loss[-1]})
  result = aggregate(per_seed)
  train_fields = cfgs[0].to_dict()
  train_fields.pop('seed')
  result.update(
      proxy=proxy, split=split,
      subset={'path': os.path.abspath(subset_path), 'sha256': sha, **stats},
      train=train_fields, seeds=[cfg.seed for cfg in cfgs], final_loss=final_loss)
  if proxy == 'pixels':
    result['pixel_cache'] = pixel_cache or {
        'dir': pixel_cache_dir(ctx, config.evaluate.pixels.image_size), 'shards_decoded': 0,
        'skips': None}  # every seed was cached: the images were not read
  return result


def check_embedded(ctx) -> None:
  """Raises ValueError naming what is missing unless ingest, encoder and embed finished in
  ctx.workdir with ctx.config (their recorded fingerprints match the config's)."""
  stages = (ingest.STAGE, encoder_stage.STAGE, embed_stage.STAGE)
  fingerprints = {}
  for stage in stages:
    done = pipeline.read_done(ctx.stage_dir(stage.name))
    if done is None:
      raise ValueError(f'{os.path.join(ctx.stage_dir(stage.name), pipeline.DONE)}: missing; '
                       f'run the stages ingest, encoder and embed with this config in '
                       f'{ctx.workdir} first')
    expected = pipeline.fingerprint(stage, ctx.config, fingerprints)
    if done['fingerprint'] != expected:
      raise ValueError(f'{os.path.join(ctx.stage_dir(stage.name), pipeline.DONE)}: stage '
                       f'{stage.name!r} finished with another config (fingerprint '
                       f'{done["fingerprint"]}, this config gives {expected}); rerun it '
                       'with this config')
    fingerprints[stage.name] = expected
  ctx.fingerprints.update(fingerprints)


FULL = 'full'  # the baseline that trains on every pool sample once


def baseline_names(config) -> tuple:
  """config.evaluate.baselines, checked: ValueError names an unknown or repeated name
  (config validation calls this too)."""
  block = config.get('evaluate')
  names = () if block is None else pipeline.name_list(block.get('baselines', ()))
  for name in names:
    if name != FULL and name not in selectors.SELECTORS:
      raise ValueError(f'config.evaluate.baselines: unknown baseline {name!r}; known: '
                       f'{FULL}, {", ".join(sorted(selectors.SELECTORS))}')
  if len(set(names)) != len(names):
    raise ValueError(f'config.evaluate.baselines: names repeat in {names}')
  return names


def pixel_check(config) -> tuple:
  """(seeds, baseline names) of config.evaluate.pixel_check, checked; (0, ()) when the
  block is absent. ValueError names the field (config validation calls this too).

  A name must be one of evaluate.baselines: the embedding evaluation writes the subset
  files the check reads; the names are checked only when the check is on. It runs beside
  the embedding proxy only: with evaluate.proxy='pixels' every subset already is
  evaluated with the pixel proxy, so the check is off (seeds 0) whatever it says.
  """
  where = 'config.evaluate.pixel_check'
  block = (config.get('evaluate') or {}).get('pixel_check')
  if block is None:
    return 0, ()
  seeds = block.get('seeds', 0)
  if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 0:
    raise ValueError(f'{where}.seeds: expected an integer >= 0, got {seeds!r}')
  names = block.get('baselines', ())
  if not isinstance(names, (tuple, list, str)):
    raise ValueError(f'{where}.baselines: expected a list of names, got '
                     f'{type(names).__name__} {names!r}')
  names = pipeline.name_list(names)
  if not seeds or proxy_kind(config) == 'pixels':
    return 0, names  # off (with the pixel proxy, every subset already is evaluated by it)
  allowed = baseline_names(config)
  for name in names:
    if name not in allowed:
      raise ValueError(f'{where}.baselines: {name!r} is not one of config.evaluate.baselines'
                       f' ({", ".join(allowed) or "none"})')
  if len(set(names)) != len(names):
    raise ValueError(f'{where}.baselines: names repeat in {names}')
  return seeds, names


def baseline_counts(ctx, name: str, inputs: selectors.Inputs, directory: str) -> np.ndarray:
  """Times each pool row is selected by baseline `name` (from baseline_names) under the
  run's config.selection (its fraction, method and dedup): 'full' keeps every sample once;
  a selector is fitted here (a learning one with its checkpoints in `directory`) and
  selects as the select stage would."""
  if name == FULL:
    return np.ones(inputs.num_rows, np.int64)
  selector = selectors.get(name)
  inputs = dataclasses.replace(inputs, checkpoints=os.path.join(directory, 'learn'))
  state = selector.fit(ctx.config, inputs)
  _, counts = selection.select(ctx.config, selector, state, inputs)
  return counts


def baseline_subset_path(ctx, name: str) -> str:
  """Where the evaluate stage writes baseline `name`'s subset (DataComp format)."""
  return os.path.join(ctx.stage_dir('evaluate'), 'baselines', name, SUBSET)


def evaluate_baselines(ctx, mesh=None, names=None) -> dict:
  """{name: eval dict} for every config.evaluate.baselines entry (or `names`), each at the
  budget of the selected subset; subsets and checkpoints under evaluate/baselines/<name>/."""
  names = baseline_names(ctx.config) if names is None else tuple(names)
  if not names:
    return {}
  needs = set()
  for name in names:
    if name != FULL:
      needs.update(selectors.get(name).needs_for(ctx.config))
  out = {}
  for name in names:
    path = baseline_subset_path(ctx, name)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    if not os.path.exists(path):
      with learn_stage.selector_inputs(ctx, needs, 'evaluate') as inputs:
        subset_lib.write_subset(path, inputs.uids,
                                baseline_counts(ctx, name, inputs, directory))
    logging.info('evaluate: baseline %s', name)
    out[name] = evaluate_subset(ctx, path, directory, mesh=mesh)
  return out


def evaluate_pixel_check(ctx, mesh=None) -> dict | None:
  """eval.json's 'pixel_check' (see the module docstring), None when it is off. Runs after
  evaluate_baselines, which wrote the baselines' subset files; results, checkpoints and
  decoded images are where an evaluate.proxy='pixels' run keeps them."""
  seeds, names = pixel_check(ctx.config)
  if not seeds:
    return None
  logging.info('evaluate: pixel check, %d seeds: selected', seeds)
  selected = evaluate_subset(ctx, ctx.path(SUBSET), _selected_checkpoints(ctx), seeds=seeds,
                             mesh=mesh, proxy='pixels')
  baselines = {}
  for name in names:
    path = baseline_subset_path(ctx, name)
    logging.info('evaluate: pixel check, %d seeds: baseline %s', seeds, name)
    baselines[name] = evaluate_subset(ctx, path, os.path.dirname(path), seeds=seeds,
                                      mesh=mesh, proxy='pixels')
  return {'seeds': seeds, 'selected': selected, 'baselines': baselines}


def _averages(result: dict, baselines: dict) -> dict:
  """The summary's figures of one proxy: the selected subset's and each baseline's average
  main metric (mean and std over seeds)."""
  return {'average_mean': result['average']['mean'],
          'average_std': result['average']['std'],
          'baselines': {name: {'mean': b['average']['mean'], 'std': b['average']['std']}
                        for name, b in baselines.items()}}


def _log_averages(what: str, result: dict, baselines: dict) -> None:
  logging.info('evaluate: %saverage main metric %.4f +- %.4f over %d seeds', what,
               result['average']['mean'], result['average']['std'], len(result['seeds']))
  for name, b in baselines.items():
    logging.info('evaluate: %sbaseline %s: %.4f +- %.4f', what, name, b['average']['mean'],
                 b['average']['std'])


def _selected_checkpoints(ctx) -> str:
  """Where the selected subset's seeds keep their checkpoints (both proxies')."""
  return os.path.join(ctx.stage_dir('evaluate'), 'selected')


def run(ctx) -> dict:
  mesh = sharding.from_config(ctx.config).mesh
  result = evaluate_subset(ctx, ctx.path(SUBSET), _selected_checkpoints(ctx), mesh=mesh)
  result['selector'] = ctx.config.selector.name
  result['baselines'] = evaluate_baselines(ctx, mesh)
  check = evaluate_pixel_check(ctx, mesh)
  if check is not None:
    result['pixel_check'] = check
  pipeline.write_json_atomic(ctx.path(EVAL), result)
  _log_averages('', result, result['baselines'])
  summary = {'eval': ctx.path(EVAL), 'split': result['split'], 'seeds': len(result['seeds']),
             'subset_entries': result['subset']['entries'],
             **_averages(result, result['baselines'])}
  if check is not None:
    _log_averages('pixel check: ', check['selected'], check['baselines'])
    summary['pixel_check'] = {'seeds': check['seeds'],
                              **_averages(check['selected'], check['baselines'])}
  return summary


def inputs(config) -> tuple:
  """Baselines such as clip_score read the features when the features stage is configured."""
  if 'features' in pipeline.stage_names(config):
    return ('ingest', 'embed', 'features', 'select')
  return ('ingest', 'embed', 'select')


def config_keys(config) -> tuple:
  """The proxy's settings, and the selection rules and own blocks of every baseline. The
  pixel proxy's block counts only when it is the proxy or the pixel check is on, and the
  pixel check's block only when it is on: changing either does not rerun (and clear) an
  embedding-proxy evaluation, whose fingerprint stays what it was before the check
  existed. Likewise the split counts only when it is 'validation', and the validation
  fraction only when it is > 0 (the baselines' tasks, and that split, depend on it)."""
  block = config.get('evaluate') or {}
  check_on = pixel_check(config)[0] > 0
  unread = set() if check_on else {'pixel_check'}
  if eval_split(config) == 'eval':
    unread.add('split')
  if block.get('proxy', 'embedding') != 'pixels' and not check_on:
    unread.add('pixels')
  keys = [f'evaluate.{k}' for k in block if k not in unread]
  keys += ['seed', 'selection', 'mesh.rules', *task_split.config_keys(config)]
  for name in baseline_names(config):
    if name != FULL:
      keys += list(selectors.get(name).config_fields_for(config))
  return tuple(dict.fromkeys(keys))


STAGE = pipeline.Stage(name='evaluate', run=run, inputs=inputs,
                       config_keys=config_keys, version=STAGE_VERSION)
