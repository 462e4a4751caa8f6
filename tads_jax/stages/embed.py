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
every class name), classnames [C], templates [T]; for retrieval, text_emb [M, E],
text_image [M] (the image each caption belongs to) and texts [M] (the captions: a words
proxy in meta-learning reads them, meta.MetaConfig.text). Relevance prototypes and meta-learning
feedback read these, through task_embeddings: with config.tads.validation_fraction > 0 its
'train' is the fit part of the train split and 'validation' the rest (data/task_split.py),
cut when read, so the files do not depend on the fraction.

A DataComp pool ships its embeddings (npz beside the parquet), used as they are: the pool is
not embedded again. Its tasks are embedded in the pool's own space, with `encoder.checkpoint`,
the Hugging Face CLIP folder of the model that made the npz (openai/clip-vit-base-patch32 for
pool.embedding_model='b32', openai/clip-vit-large-patch14 for 'l14'); config validation has
checked its projection_dim against the npz, and this stage checks it against every metadata
file's embeddings before embedding anything. Otherwise the stage embeds pool and tasks with
the encoder stage's reference CLIP (the given `encoder.checkpoint`, or the one trained on
`encoder.train_on`).
"""

import collections
import logging
import os
import re
import time

import numpy as np

from tads_jax import distributed
from tads_jax import embedding
from tads_jax import pipeline
from tads_jax import sharding
from tads_jax.data import datacomp
from tads_jax.data import subset as subset_lib
from tads_jax.data import task_split
from tads_jax.data import tasks as tasks_lib
from tads_jax.data import webdataset
from tads_jax.models import api
from tads_jax.stages import encoder as encoder_stage
from tads_jax.stages import ingest

STORE_DTYPE = np.float16


def shard_item(ctx, path: str) -> str:
  """`embed/shards/<item>` (no extension) for a pool shard; items match ingest's."""
  return os.path.join(ctx.stage_dir('embed'), 'shards',
                      ingest.item_name(path))


def task_item(ctx, task: str, split: str) -> str:
  safe = re.sub(r'[^A-Za-z0-9_.-]', '_', task)
  return os.path.join(ctx.stage_dir('embed'), 'tasks', f'{safe}_{split}')


def task_specs(ctx) -> list:
  """The configured tasks; 'synthetic' means the synthetic world's own task list."""
  tasks = ctx.config.tasks
  if isinstance(tasks, str) and tasks == 'synthetic':
    return tasks_lib.parse_tasks(ingest.local_path(ctx, ctx.summary('ingest')['tasks']))
  if isinstance(tasks, str):
    return tasks_lib.parse_tasks(tasks)
  if not tasks:  # no downstream tasks: only the pool is embedded
    return []
  return tasks_lib.parse_tasks(list(tasks))


def option(config, name: str):
  """`config.embed.<name>` (configs/default.py documents every field)."""
  return config.embed[name]


def load_encoder(config, checkpoint: str) -> embedding.Encoder:
  """The reference encoder at `checkpoint`, placed on the mesh of `config.mesh`.

  `embed.dtype` is the matmul compute dtype ('bfloat16': bf16 weights and matmul inputs,
  float32 accumulation and outputs), `embed.batch_size` the rows per jitted step and
  `embed.workers` the image decode threads.
  """
  dtype = embedding.compute_dtype(option(config, 'dtype'))
  batch_size = option(config, 'batch_size')
  workers = option(config, 'workers')
  for name, value in (('batch_size', batch_size), ('workers', workers)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'config.embed.{name}: expected a positive integer, got {value!r}')
  mesh, rules = sharding.from_config(config)
  try:
    clip = api.load_clip(checkpoint, dtype=dtype, param_dtype=dtype,
                         batch_size=batch_size, mesh=mesh, rules=rules)
  except ValueError as e:
    raise ValueError(f'config.encoder.checkpoint={checkpoint!r}: {e}') from None
  return embedding.Encoder(clip, workers=workers)


def _save_npz(path: str, arrays: dict) -> None:
  # A file object: np.savez would append '.npz' to a name.
  with pipeline.atomic_write(path) as tmp, open(tmp, 'wb') as f:
    np.savez(f, **arrays)


def shard_images(path: str, wanted: set, skips: collections.Counter):
  """(uid, (bytes, where)) for every sample of a shard whose uid is wanted, in tar order.

  A uid can occur twice in a shard; ingest kept its first occurrence that decodes, so all
  occurrences are read here and the caller keeps the first one that decoded.
  """
  for sample in webdataset.iter_shard(path, skips, decode=False):
    if sample.uid in wanted:
      yield sample.uid, (sample.image_bytes, f'{path}: {sample.key}.{sample.image_ext}')


def _first_of_each(uids: list, emb: np.ndarray) -> tuple[list, np.ndarray]:
  first = {}
  for i, uid in enumerate(uids):
    first.setdefault(uid, i)
  rows = sorted(first.values())
  return [uids[i] for i in rows], emb[rows]


def _embed_shard(ctx, encoder: embedding.Encoder, path: str, uids: list,
                 captions: list) -> dict:
  item = shard_item(ctx, path)

  def compute():
    start = time.time()
    skips = collections.Counter()
    got, image_emb = encoder.embed_images(shard_images(ingest.local_path(ctx, path), set(uids),
                                                       skips), skips=skips)
    got, image_emb = _first_of_each(got, image_emb)
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
    return {'path': path, 'npz': item + '.npz', 'samples': len(uids),
            'skips': dict(skips), 'seconds': round(seconds, 3)}

  return pipeline.resumable_item(item, compute)


def _embed_task(ctx, encoder: embedding.Encoder, spec, split: str,
                class_text_emb: np.ndarray | None) -> dict:
  item = task_item(ctx, spec.name, split)

  def compute():
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
                    text_image=np.asarray(owner, np.int32),                  # [M]
                    texts=np.asarray(flat, dtype=str))                       # [M]
      texts = len(flat)
    _save_npz(item + '.npz', arrays)
    return {'task': spec.name, 'kind': spec.kind, 'split': split, 'npz': item + '.npz',
            'images': int(len(image_emb)), 'texts': int(texts), 'skips': dict(data.skips)}

  return pipeline.resumable_item(item, compute)


def _class_prompts(encoder: embedding.Encoder, spec) -> np.ndarray:  # -> [C, T, E]
  prompts = [t.format(c) for c in spec.classnames for t in spec.templates]
  emb = encoder.embed_texts(prompts)  # [C*T, E]
  return emb.reshape(len(spec.classnames), len(spec.templates), -1)


def _checked_specs(ctx) -> list:
  specs = task_specs(ctx)  # before loading weights: a bad task list fails fast
  names = [os.path.basename(task_item(ctx, s.name, 'x')) for s in specs]
  if len(set(names)) != len(names):
    raise ValueError(f'config.tasks: task names {[s.name for s in specs]} collide as '
                     'file names')
  return specs


def _embed_tasks(ctx, encoder: embedding.Encoder, specs) -> list:
  os.makedirs(os.path.join(ctx.stage_dir('embed'), 'tasks'), exist_ok=True)
  task_records = []
  for spec in specs:
    done = all(pipeline.item_done(task_item(ctx, spec.name, s)) for s in tasks_lib.SPLITS)
    prompts = None
    if spec.kind == 'classification' and not done:
      prompts = _class_prompts(encoder, spec)  # [C, T, E], stored with both splits
    for split in tasks_lib.SPLITS:
      task_records.append(_embed_task(ctx, encoder, spec, split, prompts))
  return task_records


def _encoder_summary(config, checkpoint: str, encoder: embedding.Encoder) -> dict:
  clip = encoder.clip
  return {'checkpoint': checkpoint, 'dtype': option(config, 'dtype'),
          'embed_dim': clip.config.embed_dim, 'image_size': clip.config.image_size,
          'batch_size': encoder.batch_size,
          'devices': 1 if encoder.mesh is None else int(encoder.mesh.size)}


def _run_datacomp(ctx) -> dict:
  """The pool's npz embeddings are used as they are; the tasks are embedded with the
  checkpoint that made them, so that both live in one space."""
  config = ctx.config
  model = config.pool.embedding_model
  summary = {'format': 'datacomp', 'pool_ships_embeddings': True, 'embedding_model': model,
             'embedded': 0, 'tasks': []}
  specs = _checked_specs(ctx)
  if not specs:
    logging.info('embed: the DataComp pool ships %s embeddings and there are no tasks; '
                 'nothing to embed', model)
    return summary
  checkpoint = encoder_stage.checkpoint(ctx)
  if not checkpoint:
    raise ValueError(f'config.encoder.checkpoint: required to embed the tasks (config.tasks) '
                     f"of a DataComp pool in its own space: the Hugging Face CLIP folder of "
                     f'{datacomp.HF_CHECKPOINTS[model]} for config.pool.embedding_model='
                     f'{model!r}')
  encoder = load_encoder(config, checkpoint)
  dim = encoder.clip.config.embed_dim
  for record in ctx.summary('ingest')['per_source']:
    pool_dim = record.get('embedding_dim')
    if pool_dim is not None and pool_dim != dim:
      raise ValueError(f'config.encoder.checkpoint={checkpoint!r}: embeds in {dim} '
                       f'dimensions, but {datacomp.npz_path(record["path"])} holds {model} '
                       f'embeddings of dimension {pool_dim} (config.pool.embedding_model); '
                       f'use {datacomp.HF_CHECKPOINTS[model]}')
  logging.info('embed: the DataComp pool ships %s embeddings; embedding %d task(s) with %s',
               model, len(specs), checkpoint)
  summary['tasks'] = _embed_tasks(ctx, encoder, specs)
  summary['encoder'] = _encoder_summary(config, checkpoint, encoder)
  summary['store_dtype'] = np.dtype(STORE_DTYPE).name
  return summary


def run(ctx) -> dict:
  config = ctx.config
  if config.pool.format == 'datacomp':  # the tasks only: the writer embeds them
    return _run_datacomp(ctx) if distributed.is_writer() else {}
  specs = _checked_specs(ctx)
  checkpoint = encoder_stage.checkpoint(ctx)
  encoder = load_encoder(config, checkpoint)
  os.makedirs(os.path.join(ctx.stage_dir('embed'), 'shards'), exist_ok=True)

  ingested = ctx.summary('ingest')
  paths = [r['path'] for r in ingested['per_source']]
  progress = pipeline.Progress('embed', ingested['samples'], unit='samples')
  start, computed, records = time.time(), 0, {}
  for index, (path, rows) in enumerate(ingest.rows_by_shard(ctx, paths, ('uid', 'caption'))):
    if not distributed.owns(index):  # another process embeds it
      continue
    uids, captions = rows['uid'], rows['caption']
    done = pipeline.item_done(shard_item(ctx, path))
    records[index] = _embed_shard(ctx, encoder, path, uids, captions)
    computed += 0 if done else len(uids)
    progress.update(len(uids))
  seconds = time.time() - start
  records = distributed.gather_records(records)
  computed = int(distributed.all_sum(np.array([computed], np.int64))[0])
  if not distributed.is_writer():
    return {}

  task_records = _embed_tasks(ctx, encoder, specs)
  return {
      'format': config.pool.format,
      'pool_ships_embeddings': False,
      'encoder': _encoder_summary(config, checkpoint, encoder),
      'store_dtype': np.dtype(STORE_DTYPE).name,
      'shards': len(records),
      'samples': sum(r['samples'] for r in records),
      'samples_computed': computed,
      'pool_samples_per_s': round(computed / seconds, 2) if computed and seconds > 0 else None,
      'shards_dir': os.path.join(ctx.stage_dir('embed'), 'shards'),
      'tasks': task_records,
  }


def config_keys(config) -> tuple:
  if config.pool.format == 'datacomp':  # the pool's npz is read as it is; tasks are embedded
    if not config.tasks:
      return ('pool.format', 'pool.embedding_model', 'tasks')
    return ('pool.format', 'pool.embedding_model', 'mesh', 'tasks', 'embed.dtype',
            'embed.batch_size')
  # Not pool.image_size: pool images are read from the shards and task images loaded at
  # the encoder's input size; a synthetic world's size reaches here through ingest. Not
  # embed.workers: the decode thread count does not change the outputs.
  # The encoder comes in through its stage.
  return ('pool.format', 'mesh', 'tasks', 'embed.dtype', 'embed.batch_size')


def input_files(config) -> list:
  """Size and mtime of a task-list file, so that new tasks at the same path re-embed (new
  weights at the same checkpoint path rerun the encoder stage, and so this one)."""
  if not isinstance(config.tasks, str) or config.tasks == 'synthetic':
    return []
  return pipeline.file_identities([config.tasks])


# ---- readers of this stage's outputs (the later stages read embeddings only through these)


def load_npz(path: str, keys) -> dict:
  """The named arrays of an npz this stage wrote; ValueError names the file and key."""
  if not os.path.exists(path):
    raise ValueError(f'{path}: missing; the embed stage has not finished it (run ingest and '
                     'embed with this config in this workdir)')
  try:
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in keys if k not in npz.files]
      if missing:
        raise ValueError(f'{path}: missing key(s) {missing} (keys: {npz.files}); rerun embed')
      return {k: npz[k] for k in keys}
  except OSError as e:
    raise ValueError(f'{path}: cannot read ({e}); rerun embed') from e


def shard_embeddings(ctx, path: str, uids: list) -> tuple[np.ndarray, np.ndarray]:
  """(image_emb, text_emb) float32 [n, E] of one pool shard's rows `uids` (ingest order):
  the embed stage's npz, or a DataComp pool's own npz beside its parquet."""
  if ctx.config.pool.format == 'datacomp':
    shard = datacomp.read_metadata(path, model=ctx.config.pool.embedding_model, columns=[])
    index = {u: i for i, u in enumerate(shard.uids)}
    missing = [u for u in uids if u not in index]
    if missing:
      raise ValueError(f'{path}: uid {missing[0]!r} of ingest/samples.parquet is not in '
                       'this metadata file; rerun ingest')
    rows = np.asarray([index[u] for u in uids], np.int64)
    return shard.image_emb[rows], shard.text_emb[rows]
  where = shard_item(ctx, path) + '.npz'
  arrays = load_npz(where, ('uid', 'image_emb', 'text_emb'))
  if arrays['uid'].tolist() != list(uids):
    raise ValueError(f"{where}: field 'uid' does not match ingest/samples.parquet for "
                     f'{path}; rerun embed')
  return arrays['image_emb'].astype(np.float32), arrays['text_emb'].astype(np.float32)


def pool_embeddings(ctx, subset=None) -> tuple[list, np.ndarray, np.ndarray, int]:
  """(uids, image_emb [N, E], text_emb [N, E] float32, pool size) in
  ingest/samples.parquet order, as stored (float16 values; a DataComp pool's npz rows
  normalized on load).

  With `subset` (a subset array) only the pool rows it lists are kept, so memory follows
  the subset, not the pool.
  """
  paths = [r['path'] for r in ctx.summary('ingest')['per_source']]
  uids, image_emb, text_emb, pool = [], [], [], 0
  for path, rows in ingest.rows_by_shard(ctx, paths, ('uid',)):
    shard_uids = rows['uid']
    pool += len(shard_uids)
    keep = (np.ones(len(shard_uids), bool) if subset is None
            else subset_lib.times_selected(subset, shard_uids) > 0)  # [n]
    if not keep.any():
      continue
    image, text = stored_embeddings(ctx, path, shard_uids)
    uids += [u for u, k in zip(shard_uids, keep) if k]
    image_emb.append(image[keep])  # [n_kept, E]
    text_emb.append(text[keep])
  if not uids:
    raise ValueError(f'{ctx.stage_dir("embed")}: no embedded pool sample '
                     f'{"is in the subset" if subset is not None else "found"}')
  return uids, np.concatenate(image_emb), np.concatenate(text_emb), pool


def stored_embeddings(ctx, path: str, uids: list) -> tuple[np.ndarray, np.ndarray]:
  """shard_embeddings rounded to float16 (as float32): this stage stores float16, and a
  DataComp pool's rows (normalized in float32 on load) get the same rounding, so every
  reader of the pool's embeddings, whole or a shard at a time, sees the same values."""
  image, text = shard_embeddings(ctx, path, uids)
  return (image.astype(STORE_DTYPE).astype(np.float32),
          text.astype(STORE_DTYPE).astype(np.float32))


class RowFile:
  """[N, E] float16 rows in a raw file, gathered by index as float32 (`rows[idx]`, idx an
  int array in any order, or a slice): one pread per run of consecutive rows, no mmap, so
  the pages read stay in the OS page cache and out of this process's memory."""

  def __init__(self, path: str, rows: int, dim: int):
    self.path, self.shape, self.dtype = path, (rows, dim), np.dtype(np.float32)
    self.ndim = 2
    self._row_bytes = dim * np.dtype(STORE_DTYPE).itemsize
    self._fd = os.open(path, os.O_RDONLY)

  def __getitem__(self, idx) -> np.ndarray:  # -> [len(idx), E] float32
    if isinstance(idx, slice):
      idx = np.arange(*idx.indices(self.shape[0]))
    idx = np.asarray(idx, np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
      raise IndexError(f'{self.path}: row index out of range for {self.shape[0]} rows')
    wanted, where = np.unique(idx, return_inverse=True)  # sorted distinct rows
    out = np.empty((len(wanted), self.shape[1]), STORE_DTYPE)
    starts = np.flatnonzero(np.diff(wanted, prepend=-2) != 1)  # first of each run
    for begin, end in zip(starts, np.append(starts[1:], len(wanted))):
      count = int(end - begin)
      data = os.pread(self._fd, count * self._row_bytes, int(wanted[begin]) * self._row_bytes)
      out[begin:end] = np.frombuffer(data, STORE_DTYPE).reshape(count, self.shape[1])
    return out[where].astype(np.float32)

  def close(self) -> None:
    os.close(self._fd)


class EmbeddingFiles:
  """The pool's embeddings read from disk on every pass: what the stages give a selector
  (selectors.Inputs.embedding_source) instead of [N, E] arrays.

  blocks() yields one shard's (image_emb, text_emb) at a time, float32 with the stored
  float16 values (as pool_embeddings returns them). rows() gives random access for batches
  drawn across the pool: on first use one pass copies both sides into float16 files in
  `spill_dir` (named as temporaries, so a killed run's copies are removed by the next),
  read back row by row (RowFile); close() removes them.
  """

  def __init__(self, ctx, spill_dir: str):
    self._ctx, self._spill_dir = ctx, spill_dir
    self._paths = [r['path'] for r in ctx.summary('ingest')['per_source']]
    self._rows = None

  def blocks(self):
    for path, rows in ingest.rows_by_shard(self._ctx, self._paths, ('uid',)):
      if rows['uid']:
        yield stored_embeddings(self._ctx, path, rows['uid'])

  def rows(self) -> tuple[RowFile, RowFile]:
    if self._rows is None:
      os.makedirs(self._spill_dir, exist_ok=True)
      paths = [os.path.join(self._spill_dir, f'pool_{side}.f16.tmp-{os.getpid()}')
               for side in ('image', 'text')]
      count, dim = 0, 0
      try:
        with open(paths[0], 'wb') as image_file, open(paths[1], 'wb') as text_file:
          for image, text in self.blocks():
            image_file.write(image.astype(STORE_DTYPE).tobytes())
            text_file.write(text.astype(STORE_DTYPE).tobytes())
            count, dim = count + len(image), image.shape[1]
      except BaseException:
        for path in paths:
          if os.path.exists(path):
            os.remove(path)
        raise
      if not count:
        raise ValueError(f'{self._ctx.stage_dir("embed")}: no embedded pool sample found')
      self._rows = tuple(RowFile(path, count, dim) for path in paths)
    return self._rows

  def close(self) -> None:
    """Removes the spill files (the blocks need nothing closed)."""
    for rows in self._rows or ():
      rows.close()
      os.remove(rows.path)
    self._rows = None


def task_fields(kind: str) -> tuple:
  """The arrays of a task split's npz that the later stages read."""
  if kind == 'classification':
    return ('image_emb', 'labels', 'class_text_emb', 'classnames', 'templates')
  return ('image_emb', 'text_emb', 'text_image', 'texts')


# What the later stages read of a task: 'train', what the selection side sees (the fit
# part of the stored train split when config.tads.validation_fraction > 0, else all of it);
# 'validation', the rest of the train split (only then); 'eval', the eval split.
READ_SPLITS = ('train', 'validation', 'eval')


def stored_split(split: str) -> str:
  """The split of tasks_lib.SPLITS whose files hold the examples `split` reads."""
  if split not in READ_SPLITS:
    raise ValueError(f'task split: {split!r} is not one of {", ".join(READ_SPLITS)}')
  return 'eval' if split == 'eval' else 'train'


def split_part(config, spec, arrays: dict, split: str) -> np.ndarray | None:
  """The rows of the stored split's arrays (with 'image_emb', and 'labels' for
  classification) that `split` reads; None for all of them (split 'eval', or no
  validation split). ValueError names config.tads.validation_fraction when split is
  'validation' and the fraction is 0, or when a class cannot be cut."""
  stored = stored_split(split)
  fraction = task_split.validation_fraction(config)
  if split == 'validation' and not fraction:
    raise ValueError(f"{task_split.FIELD}: 0, so the tasks' train splits have no validation "
                     'part to read; set it in (0, 1)')
  if stored == 'eval' or not fraction:
    return None
  labels = arrays['labels'] if spec.kind == 'classification' else None
  fit, validation = task_split.split_rows(
      len(arrays['image_emb']), fraction, task_split.validation_seed(config), spec.name,
      labels=labels, classnames=spec.classnames)
  return fit if split == 'train' else validation


def task_embeddings(ctx, split: str = 'eval', extra: tuple = ()) -> list:
  """[(TaskSpec, {field: array})] of every task's `split` (READ_SPLITS): the arrays of
  task_fields and `extra` (e.g. 'keys') of the stored split, restricted to the split's rows
  (task_split.take_embeddings)."""
  stored = stored_split(split)
  out = []
  for spec in task_specs(ctx):
    path = task_item(ctx, spec.name, stored) + '.npz'
    try:
      arrays = load_npz(path, task_fields(spec.kind) + tuple(extra))
    except ValueError as e:
      raise ValueError(f'{e} (task {spec.name!r}, {spec.kind}, {stored} split)') from None
    rows = split_part(ctx.config, spec, arrays, split)
    if rows is not None:
      arrays = task_split.take_embeddings(spec.kind, arrays, rows)
    out.append((spec, arrays))
  return out


def parts(config) -> dict:
  """The pool's embeddings depend on the pool and the encoder, not on the tasks: a task
  change re-embeds the tasks only (a DataComp pool's embeddings are its own npz)."""
  if config.pool.format == 'datacomp':
    return {}
  return {'shards': ('pool.format', 'mesh', 'embed.dtype', 'embed.batch_size')}


STAGE = pipeline.Stage(name='embed', run=run, inputs=('ingest', 'encoder'),
                       config_keys=config_keys, input_files=input_files, version=2,
                       parts=parts, multiprocess=True)
