"""Embed: reference-CLIP image and text embeddings of the pool and of the tasks' data.

Pool, per ingested shard: `embed/shards/<item>.npz` with
  uid        [N] str      the shard's kept samples, in ingest/samples.parquet order
  image_emb  [N, E] float16, unit rows
  text_emb   [N, E] float16, unit rows (the ingested caption)
float16 as in DataComp's npz files: half the disk and read time for the stages that stream
these, and rounding moves a cosine by ~1e-4, far below what bf16 compute or any threshold
on these embeddings resolves. The `.json` sidecar is written after the npz and marks the
shard complete, so a killed run redoes only unfinished shards.

Tasks, per task and split: `embed/tasks/<task>_<split>.npz` (float16 too) with image_emb
[N, E] and, for classification, labels [N], class_text_emb [C, T, E] (every template for
every class name), classnames [C], templates [T]; for retrieval, text_emb [M, E] and
text_image [M] (the image each caption belongs to). Relevance prototypes and meta-learning
feedback read these.

A DataComp pool ships its embeddings (npz beside the parquet): the stage records that and
embeds nothing. Otherwise it needs `encoder.checkpoint` (a Hugging Face CLIP folder).
"""

import collections
import json
import logging
import os
import re
import time

import numpy as np
import pyarrow.parquet as pq

from tads_jax import embedding
from tads_jax import pipeline
from tads_jax import sharding
from tads_jax.data import tasks as tasks_lib
from tads_jax.data import webdataset
from tads_jax.models import api
from tads_jax.stages import ingest

STORE_DTYPE = np.float16
DEFAULT_BATCH_SIZE = 64
DEFAULT_WORKERS = 2


def shard_item(ctx, path: str) -> str:
  """`embed/shards/<item>` (no extension) for a pool shard; items match ingest's."""
  return os.path.join(ctx.stage_dir('embed'), 'shards',
                      ingest._item_name(path))  # pylint: disable=protected-access


def task_item(ctx, task: str, split: str) -> str:
  safe = re.sub(r'[^A-Za-z0-9_.-]', '_', task)
  return os.path.join(ctx.stage_dir('embed'), 'tasks', f'{safe}_{split}')


def task_specs(ctx) -> list:
  """The configured tasks; 'synthetic' means the synthetic world's own task list."""
  tasks = ctx.config.tasks
  if isinstance(tasks, str) and tasks == 'synthetic':
    return tasks_lib.parse_tasks(ctx.summary('ingest')['tasks'])
  if isinstance(tasks, str):
    return tasks_lib.parse_tasks(tasks)
  return tasks_lib.parse_tasks(list(tasks))


def load_encoder(config) -> embedding.Encoder:
  """The reference encoder of `config.encoder`, placed on the mesh of `config.mesh`."""
  checkpoint = config.encoder.checkpoint
  if not checkpoint:
    raise ValueError(
        'config.encoder.checkpoint: empty. The embed stage needs a Hugging Face CLIP '
        'folder; training a reference encoder on config.encoder.train_on='
        f'{config.encoder.train_on!r} when no checkpoint exists is not built yet.')
  dtype = embedding.compute_dtype(config.encoder.get('dtype', 'float32'))
  mesh = sharding.mesh_from_config(config)
  rules = config.mesh.get('rules', 'data_parallel')
  batch_size = config.encoder.get('batch_size', DEFAULT_BATCH_SIZE)
  try:
    clip = api.load_clip(checkpoint, dtype=dtype, param_dtype=dtype,
                         batch_size=batch_size, mesh=mesh, rules=rules)
  except ValueError as e:
    raise ValueError(f'config.encoder.checkpoint={checkpoint!r}: {e}') from None
  return embedding.Encoder(clip, workers=config.encoder.get('workers', DEFAULT_WORKERS))


def _save_npz(path: str, arrays: dict) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'wb') as f:  # a file object: np.savez would append '.npz' to a name
    np.savez(f, **arrays)
  os.replace(tmp, path)


def _runs(where: str):
  """(shard, uids, captions) per run of consecutive samples.parquet rows of one shard."""
  current, uids, captions = None, [], []
  samples = pq.ParquetFile(where)
  for batch in samples.iter_batches(columns=['uid', 'shard', 'caption'], batch_size=65536):
    for uid, shard, caption in zip(*(c.to_pylist() for c in batch.columns)):
      if shard != current:
        if current is not None:
          yield current, uids, captions
        current, uids, captions = shard, [], []
      uids.append(uid)
      captions.append(caption)
  if current is not None:
    yield current, uids, captions


def _shard_rows(ctx, paths: list):
  """Yields (shard path, uids, captions) for every path, from ingest/samples.parquet.

  samples.parquet holds each shard's rows contiguously, in shard order, so it is read in
  record batches and memory holds one shard's uids and captions, never the pool's.
  """
  where = ctx.path('ingest', ingest.SAMPLES)
  order = {p: i for i, p in enumerate(paths)}
  next_path = 0
  for shard, uids, captions in _runs(where):
    if shard not in order:
      raise ValueError(f"{where}: column 'shard' names {shard!r}, which the ingest summary "
                       'does not list')
    if order[shard] < next_path:
      raise ValueError(f"{where}: column 'shard' is not in shard order at {shard!r}; "
                       'rerun ingest')
    for path in paths[next_path:order[shard]]:  # shards none of whose samples was kept
      yield path, [], []
    yield shard, uids, captions
    next_path = order[shard] + 1
  for path in paths[next_path:]:
    yield path, [], []


def _shard_images(path: str, wanted: set, skips: collections.Counter):
  """(uid, (bytes, where)) for the wanted uids of a shard, first occurrence, tar order."""
  seen = set()
  for sample in webdataset.iter_shard(path, skips, decode=False):
    if sample.uid in wanted and sample.uid not in seen:
      seen.add(sample.uid)
      yield sample.uid, (sample.image_bytes, f'{path}: {sample.key}.{sample.image_ext}')


def _embed_shard(ctx, encoder: embedding.Encoder, path: str, uids: list,
                 captions: list) -> dict:
  item = shard_item(ctx, path)
  if os.path.exists(item + '.json'):  # written after the npz: the shard is complete
    with open(item + '.json') as f:
      return json.load(f)
  start = time.time()
  skips = collections.Counter()
  got, image_emb = encoder.embed_images(_shard_images(path, set(uids), skips), skips=skips)
  if got != uids:
    got_set = set(got)
    missing = [u for u in uids if u not in got_set]
    raise ValueError(f'{path}: the shard no longer matches ingest/samples.parquet '
                     f'({len(got)} of {len(uids)} samples read back, first missing uid '
                     f'{missing[0] if missing else None!r}, skips {dict(skips)}); rerun '
                     'ingest')
  text_emb = encoder.embed_texts(captions)
  _save_npz(item + '.npz', {
      'uid': np.asarray(uids, dtype='<U32'),                # [N]
      'image_emb': image_emb.astype(STORE_DTYPE),           # [N, E]
      'text_emb': text_emb.astype(STORE_DTYPE),             # [N, E]
  })
  seconds = time.time() - start
  record = {'path': path, 'npz': item + '.npz', 'samples': len(uids),
            'seconds': round(seconds, 3)}
  pipeline.write_json_atomic(item + '.json', record)
  return record


def _embed_task(ctx, encoder: embedding.Encoder, spec, split: str,
                class_text_emb: np.ndarray | None) -> dict:
  item = task_item(ctx, spec.name, split)
  if os.path.exists(item + '.json'):
    with open(item + '.json') as f:
      return json.load(f)
  # At the encoder's own input size: loading at pool.image_size and upsampling would blur.
  data = tasks_lib.load_split(spec, split, encoder.clip.config.image_size)
  _, image_emb = encoder.embed_images(enumerate(data.images))  # [N, E]
  arrays = {'image_emb': image_emb.astype(STORE_DTYPE),
            'keys': np.asarray(data.keys, dtype=str)}
  if spec.kind == 'classification':
    arrays.update(labels=data.labels,                                   # [N]
                  class_text_emb=class_text_emb.astype(STORE_DTYPE),    # [C, T, E]
                  classnames=np.asarray(spec.classnames, dtype=str),
                  templates=np.asarray(spec.templates, dtype=str))
    texts = class_text_emb.shape[0] * class_text_emb.shape[1]
  else:
    flat = [c for caps in data.captions for c in caps]
    owner = [i for i, caps in enumerate(data.captions) for _ in caps]
    arrays.update(text_emb=encoder.embed_texts(flat).astype(STORE_DTYPE),  # [M, E]
                  text_image=np.asarray(owner, np.int32))                  # [M]
    texts = len(flat)
  _save_npz(item + '.npz', arrays)
  record = {'task': spec.name, 'kind': spec.kind, 'split': split, 'npz': item + '.npz',
            'images': int(len(image_emb)), 'texts': int(texts), 'skips': dict(data.skips)}
  pipeline.write_json_atomic(item + '.json', record)
  return record


def _class_prompts(encoder: embedding.Encoder, spec) -> np.ndarray:  # -> [C, T, E]
  prompts = [t.format(c) for c in spec.classnames for t in spec.templates]
  emb = encoder.embed_texts(prompts)  # [C*T, E]
  return emb.reshape(len(spec.classnames), len(spec.templates), -1)


def run(ctx) -> dict:
  config = ctx.config
  if config.pool.format == 'datacomp':
    logging.info('embed: the DataComp pool ships %s embeddings; nothing to embed',
                 config.pool.embedding_model)
    return {'format': 'datacomp', 'pool_ships_embeddings': True,
            'embedding_model': config.pool.embedding_model, 'embedded': 0}
  if not config.encoder.checkpoint:
    load_encoder(config)  # raises, saying what is missing
  specs = task_specs(ctx)  # before loading weights: a bad task list fails fast
  names = [os.path.basename(task_item(ctx, s.name, 'x')) for s in specs]
  if len(set(names)) != len(names):
    raise ValueError(f'config.tasks: task names {[s.name for s in specs]} collide as '
                     'file names')
  encoder = load_encoder(config)
  os.makedirs(os.path.join(ctx.stage_dir('embed'), 'shards'), exist_ok=True)
  os.makedirs(os.path.join(ctx.stage_dir('embed'), 'tasks'), exist_ok=True)

  ingested = ctx.summary('ingest')
  paths = [r['path'] for r in ingested['per_source']]
  progress = pipeline.Progress('embed', ingested['samples'], unit='samples')
  start, computed, records = time.time(), 0, []
  for path, uids, captions in _shard_rows(ctx, paths):
    done = os.path.exists(shard_item(ctx, path) + '.json')
    records.append(_embed_shard(ctx, encoder, path, uids, captions))
    computed += 0 if done else len(uids)
    progress.update(len(uids))
  seconds = time.time() - start

  task_records = []
  for spec in specs:
    prompts = _class_prompts(encoder, spec) if spec.kind == 'classification' else None
    for split in tasks_lib.SPLITS:
      task_records.append(_embed_task(ctx, encoder, spec, split, prompts))

  clip = encoder.clip
  return {
      'format': config.pool.format,
      'pool_ships_embeddings': False,
      'encoder': {'checkpoint': config.encoder.checkpoint,
                  'dtype': config.encoder.get('dtype', 'float32'),
                  'embed_dim': clip.config.embed_dim, 'image_size': clip.config.image_size,
                  'batch_size': encoder.batch_size,
                  'devices': 1 if encoder.mesh is None else int(encoder.mesh.size)},
      'store_dtype': np.dtype(STORE_DTYPE).name,
      'shards': len(records),
      'samples': sum(r['samples'] for r in records),
      'samples_computed': computed,
      'pool_samples_per_s': round(computed / seconds, 2) if computed and seconds > 0 else None,
      'shards_dir': os.path.join(ctx.stage_dir('embed'), 'shards'),
      'tasks': task_records,
  }


def config_keys(config) -> tuple:
  if config.pool.format == 'datacomp':
    return ('pool.format', 'pool.embedding_model')
  # Not pool.image_size: pool images are read from the shards and task images loaded at
  # the encoder's input size; a synthetic world's size reaches here through ingest.
  return ('pool.format', 'encoder', 'mesh', 'tasks')


def input_files(config) -> list:
  """Sizes and mtimes of the checkpoint's files and of a task-list file, so that new
  weights or tasks at the same path re-embed."""
  if config.pool.format == 'datacomp':
    return []
  folder = config.encoder.checkpoint
  paths = []
  if folder and os.path.isdir(folder):
    paths = [os.path.join(folder, n) for n in sorted(os.listdir(folder))]
  if isinstance(config.tasks, str) and config.tasks != 'synthetic':
    paths.append(config.tasks)
  out = []
  for path in paths:
    if os.path.isfile(path):
      st = os.stat(path)
      out.append([os.path.abspath(path), st.st_size, int(st.st_mtime)])
  return out


STAGE = pipeline.Stage(name='embed', run=run, inputs=('ingest',), config_keys=config_keys,
                       input_files=input_files, version=1)
