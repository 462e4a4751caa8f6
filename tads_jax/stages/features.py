"""Features: per-sample quality, task relevance and diversity signals for the selectors.

Two passes, one concern each.

Per shard (resumable like ingest and embed): the quality operators of
config.features.operators (scoring/registry.py), with the settings of
config.features.operator_settings. The shard's images are decoded again (by a Grain
pipeline over the process's tars, grain_source.DecodedShards, with config.data.grain_workers
decode processes), resized to pool.image_size and scored by the image operators in
fixed-shape chunks of `features.chunk` rows (the tail padded and masked, so XLA compiles
one program); captions go through the text operators and the embed stage's npz rows
through the cross-modal ones. flipped_clip_score embeds the horizontally flipped images
with the reference encoder here. Each shard's columns go to
`features/shards/<item>.parquet`; the `.json` sidecar is written last and marks the shard
complete. Memory holds one chunk of images and the reader's few batches in flight.

Global signals, over the whole pool: the functions registered in SIGNALS, run in
registration order, each adding its columns: task relevance (top-m cosines to each task's
prototypes from its train split, its fit part when config.tads.validation_fraction > 0;
with features.target_relevance also the image's largest cosine to the task's train images),
spherical k-means on the joint embedding normalize(image + text) with cluster weights
(|C| / N) ** -alpha, SemDeDup flags inside the clusters (best clip_score kept) and
exact-duplicate flags by ingest's image sha256. Their settings are config.features fields
(each signal lists the ones it reads). None holds the pool's [N, E]
embeddings: they stream the shards' embeddings from disk (Pool.embeddings), k-means once per
Lloyd iteration (kmeans.fit_stream, k-means++ on at most _init_rows(...) sampled rows), and
SemDeDup sorts them by cluster into a scratch file in one pass and reads one cluster at a
time (dedup.semdedup_flags_stream). Memory holds one shard's embeddings, the largest cluster
and per-sample scalars (labels, bounds, output columns); features.parquet is written a
shard at a time from the per-shard files and those columns.

With several processes (distributed.py) each runs the per-shard pass, the relevance and
the k-means passes on the shards it owns; the per-sample values (relevance, labels,
clip_score, hash keys) are gathered in shard order and the k-means sums added per shard in
shard order, so every process holds what one process computes. SemDeDup splits the
clusters: process p scans those whose id % process_count == p, reading their rows from every
shard, and the flags are summed. The writer writes features.parquet.

Output: `features/features.parquet`, uid plus one column per feature, rows in
ingest/samples.parquet order. A DataComp pool's embeddings come from its own npz files and
its task relevance from the tasks the embed stage embedded in that space; its images from
the tars beside the metadata. Without tars the image operators and flipped_clip_score are
left out, and without encoder.checkpoint flipped_clip_score is (absent columns, listed with
the reason in the summary).
"""

import collections
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import re
from typing import Callable, Mapping

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tads_jax import distributed
from tads_jax import pipeline
from tads_jax import scoring  # noqa: F401  (registers the operators)
from tads_jax.data import grain_source
from tads_jax.data import task_split
from tads_jax.scoring import dedup
from tads_jax.scoring import kmeans
from tads_jax.scoring import registry
from tads_jax.scoring import relevance
from tads_jax.stages import embed
from tads_jax.stages import encoder as encoder_stage
from tads_jax.stages import ingest

FEATURES = 'features.parquet'
# The pool's joint embeddings sorted by cluster while SemDeDup runs ([N, E] float32 on disk,
# removed after; a fixed name, so that a killed run's copy is overwritten by the next).
SEMDEDUP_SCRATCH = 'semdedup_scratch.{process}.f32'
# Operators with a setting that has no usable default: {operator: setting}.
_NEEDS_SETTING = {'vocab_share': 'vocab'}


def option(config, name: str):
  """`config.features.<name>` (configs/default.py documents every field)."""
  return config.features[name]


def operators(config) -> tuple:
  """The configured operator names, checked against the registry."""
  names = option(config, 'operators')
  if isinstance(names, str):
    names = tuple(n for n in names.split(',') if n)
  names = tuple(names)
  for name in names:
    if name not in registry.OPERATORS:
      raise ValueError(f'config.features.operators: unknown operator {name!r}; '
                       f'registered: {sorted(registry.OPERATORS)}')
    setting, given = _NEEDS_SETTING.get(name), _settings_block(config).get(name)
    if setting and not (isinstance(given, Mapping) and given.get(setting)):
      raise ValueError(f'config.features.operators: {name!r} needs '
                       f'config.features.operator_settings.{name}.{setting}')
  if len(set(names)) != len(names):
    raise ValueError(f'config.features.operators: repeated names in {names}')
  return names


def _settings_block(config) -> dict:
  """config.features.operator_settings as a plain dict; a block without it has none."""
  block = config.features.get('operator_settings')
  if block is None:
    return {}
  return dict(block.to_dict() if hasattr(block, 'to_dict') else block)


def operator_settings(config, names=None) -> dict:
  """{operator: {setting: value}} for registry.compute, from
  config.features.operator_settings, checked against the registry; only the operators in
  `names` (default: config.features.operators), so that the settings of an operator left
  out stay in the config without effect. ValueError names the field."""
  names = operators(config) if names is None else names
  out = {}
  for name, values in _settings_block(config).items():
    where = f'config.features.operator_settings.{name}'
    if name not in registry.OPERATORS:
      raise ValueError(f'{where}: unknown operator; registered: {sorted(registry.OPERATORS)}')
    if hasattr(values, 'to_dict'):
      values = values.to_dict()
    if not isinstance(values, Mapping):
      raise ValueError(f'{where}: expected {{setting: value}}, got {values!r}')
    known = registry.OPERATORS[name].settings
    for setting in values:
      if setting not in known:
        raise ValueError(f'{where}.{setting}: unknown setting; {name} has '
                         f'{", ".join(known) or "none"}')
    if name in names and values:
      out[name] = dict(values)
  return out


def _needs_images(op) -> bool:
  return 'images' in op.inputs


def _needs_pixels(name: str) -> bool:
  op = registry.OPERATORS[name]
  return op.kind == 'image' or 'flipped_image_emb' in op.required


def _needs_encoder(name: str) -> bool:
  return 'flipped_image_emb' in registry.OPERATORS[name].required


def left_out_operators(config) -> tuple[list, list, str | None]:
  """(operators run, operators left out, why): a DataComp pool without tars has no images to
  score, and without encoder.checkpoint none to embed flipped."""
  names = operators(config)
  if config.pool.format != 'datacomp':
    return list(names), [], None
  if not ingest.has_images(config):
    left_out = [n for n in names if _needs_pixels(n)]
    why = ('the DataComp pool has no tars beside its metadata (config.pool.metadata), so '
           'the operators that read pixels are left out')
  elif not config.encoder.checkpoint:
    left_out = [n for n in names if _needs_encoder(n)]
    why = ('the DataComp pool has no reference encoder (config.encoder.checkpoint) to embed '
           'flipped images with')
  else:
    left_out = []
  if not left_out:
    return list(names), [], None
  return [n for n in names if n not in left_out], left_out, why


def shard_item(ctx, path: str) -> str:
  return os.path.join(ctx.stage_dir('features'), 'shards', ingest.item_name(path))


def _shard_images(decoded: grain_source.DecodedShards, path: str, uids: list,
                  skips: collections.Counter):
  """The decoded rows (grain_source.DecodedShards.rows) of a shard's ingested samples, in
  row order; tar `path`'s skips counted in `skips` as iter_shard(decode=True) counts them.

  Ingest kept the first decodable occurrence of each uid, in tar order, so the tar is read
  again in that order and checked against the rows as it goes.
  """
  wanted, seen, position = set(uids), set(), 0
  for row in decoded.rows(path, skips):
    uid = str(row['uid'])
    if uid not in wanted or uid in seen:
      continue
    if position >= len(uids) or uid != uids[position]:
      raise ValueError(f"{path}: sample {row['key']} (uid {uid}) is out of the order "
                       'of ingest/samples.parquet; the shard changed, rerun ingest')
    seen.add(uid)
    position += 1
    yield row
  if position != len(uids):
    raise ValueError(f'{path}: {position} of {len(uids)} ingested samples read back '
                     f'(first missing uid {uids[position]!r}, skips {dict(skips)}); rerun '
                     'ingest')


def _chunks(items, size: int):
  chunk = []
  for item in items:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _pad(x: np.ndarray, rows: int, value=0) -> np.ndarray:
  pad = [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
  return np.pad(x, pad, constant_values=value)


def _score_chunk(names, settings, start, count, chunk, table, image_emb, text_emb,
                 images=None, flipped_emb=None) -> dict:
  """The operators on rows [start, start + count) of a shard, padded to `chunk` rows."""
  end = start + count
  sizes = np.stack([np.asarray(table['height'][start:end], np.int32),
                    np.asarray(table['width'][start:end], np.int32)], axis=1)  # [B, 2]
  inputs = dict(
      sizes=_pad(sizes, chunk, 1),
      captions=list(table['caption'][start:end]) + [''] * (chunk - count),
      image_emb=_pad(image_emb[start:end], chunk),    # [chunk, E]
      text_emb=_pad(text_emb[start:end], chunk),      # [chunk, E]
      mask=np.arange(chunk) < count)                  # [chunk]
  if images is not None:
    inputs['images'] = _pad(images, chunk)            # [chunk, S, S, 3] float32
  if flipped_emb is not None:
    inputs['flipped_image_emb'] = _pad(flipped_emb, chunk)
  out = registry.compute(names, settings, **inputs)
  return {name: values[:count] for name, values in out.items()}


def _features_shard(ctx, path: str, table: dict, names: list, settings: dict,
                    encoder, decoded: grain_source.DecodedShards | None) -> dict:
  """The operators on one shard's rows, written to its item unless a finished run did.
  `decoded` reads the images when an operator needs them (its next tar is this shard's)."""
  item = shard_item(ctx, path)

  def compute():
    config = ctx.config
    chunk = option(config, 'chunk')
    uids = table['uid']
    n = len(uids)
    image_emb, text_emb = embed.shard_embeddings(ctx, path, uids)  # [N, E] float32 each
    columns = {name: [] for name in names}
    skips = collections.Counter()
    image_ops = any(_needs_images(registry.OPERATORS[m]) for m in names)
    flipped = 'flipped_clip_score' in names
    if image_ops or flipped:
      # A pool shard, or the tar beside a DataComp metadata file.
      tar = ingest.image_shard(ctx, path)
      chunks = _chunks(_shard_images(decoded, tar, uids, skips), chunk)
    else:
      chunks = ([None] * min(chunk, n - s) for s in range(0, n, chunk))
    size = config.pool.image_size
    start = 0
    for rows in chunks:  # to the end: the tar's last skips are counted, its rows checked
      count = len(rows)
      images = flipped_emb = None
      if image_ops:
        # images.resize_center_crop to pool.image_size, done by the reader.
        images = np.stack([row[f'image_{size}'] for row in rows])  # [B, S, S, 3] uint8
        images = images.astype(np.float32) / 255.0  # [B, S, S, 3] in [0, 1]
      if flipped:
        # The original, whatever its size: the encoder's own preprocessing sizes it.
        items = [(i, np.ascontiguousarray(row['image'][:, ::-1]))
                 for i, row in enumerate(rows)]
        got, flipped_emb = encoder.embed_images(items, skips=skips)  # [B, E]
        if len(got) != count:
          raise ValueError(f'{path}: {count - len(got)} flipped images failed to load')
      out = _score_chunk(names, settings, start, count, chunk, table, image_emb, text_emb,
                         images, flipped_emb)
      for name in names:
        columns[name].append(out[name])
      start += count
    arrays = {'uid': pa.array(uids, pa.string())}
    for name in names:
      values = np.concatenate(columns[name]) if columns[name] else np.zeros(0, np.float32)
      arrays[name] = pa.array(values.astype(np.float32))
    with pipeline.atomic_write(item + '.parquet') as tmp:
      pq.write_table(pa.table(arrays), tmp)
    return {'path': path, 'parquet': item + '.parquet', 'samples': n, 'skips': dict(skips)}

  return pipeline.resumable_item(item, compute)


def _shard_columns(ctx, path: str, columns=None) -> pa.Table:
  """The columns the per-shard pass wrote for a shard (uid and the operators')."""
  return pq.read_table(shard_item(ctx, path) + '.parquet', columns=columns)


def _shard_pass(ctx, names: list) -> tuple[list, int, list]:
  """The quality operators over every shard, each process over the shards it owns:
  (every shard's record, shards computed now, (path, first row, rows) of each shard)."""
  config = ctx.config
  settings = operator_settings(config, names)
  ingested = ctx.summary('ingest')
  paths = [r['path'] for r in ingested['per_source']]
  os.makedirs(os.path.join(ctx.stage_dir('features'), 'shards'), exist_ok=True)
  encoder = None
  if 'flipped_clip_score' in names and not all(
      pipeline.item_done(shard_item(ctx, p)) for p in paths):
    encoder = embed.load_encoder(config, encoder_stage.checkpoint(ctx))
  decoded = None
  image_ops = any(_needs_images(registry.OPERATORS[m]) for m in names)
  if image_ops or 'flipped_clip_score' in names:
    # One Grain pipeline over this process's tars still to score, in shard order (workers
    # start once, not per shard). The image operators get pool.image_size, resized by the
    # reader; flipped_clip_score needs the originals, one size each (the encoder
    # preprocesses the flipped original, and flipping after a center crop is not the same
    # pixels), so they come as a list beside the batch.
    todo = [ingest.image_shard(ctx, p) for i, p in enumerate(paths)
            if distributed.owns(i) and not pipeline.item_done(shard_item(ctx, p))]
    decoded = grain_source.DecodedShards(
        todo, image_sizes=(config.pool.image_size,) if image_ops else (),
        keep_original='flipped_clip_score' in names,
        worker_count=grain_source.config_worker_count(config))
  progress = pipeline.Progress('features', ingested['samples'], unit='samples')
  records, computed, shards, n = {}, 0, [], 0
  try:
    for index, (path, table) in enumerate(ingest.rows_by_shard(
        ctx, paths, ('uid', 'caption', 'width', 'height'))):
      shards.append((path, n, len(table['uid'])))
      n += len(table['uid'])
      if not distributed.owns(index):  # another process scores it
        continue
      done = pipeline.item_done(shard_item(ctx, path))
      records[index] = _features_shard(ctx, path, table, names, settings, encoder, decoded)
      computed += 0 if done else 1
      progress.update(len(table['uid']))
  finally:
    if decoded is not None:
      decoded.close()  # its worker processes
  computed = int(distributed.all_sum(np.array([computed], np.int64))[0])
  return distributed.gather_records(records), computed, shards


def _task_prototypes(ctx, key) -> list:
  """(column prefix, prototypes) per task, from the embed stage's train split as the
  selection side sees it (its fit part when config.tads.validation_fraction > 0)."""
  out = []
  for spec, arrays in embed.task_embeddings(ctx, 'train'):
    if spec.kind == 'classification':
      protos = np.asarray(relevance.class_prototypes(arrays['class_text_emb']))  # [C, E]
    else:
      paired = arrays['image_emb'][arrays['text_image']].astype(np.float32)  # [M, E]
      key, sub = jax.random.split(key)
      protos = relevance.retrieval_prototypes(
          paired, arrays['text_emb'].astype(np.float32),
          option(ctx.config, 'retrieval_prototypes'), sub)
    out.append((_column_prefix(spec), protos))
  return out


def _column_prefix(spec) -> str:
  """'relevance_<task>' with every character outside [A-Za-z0-9_] of the name as '_'."""
  return 'relevance_' + re.sub(r'[^A-Za-z0-9_]', '_', spec.name)


RELEVANCE_CALIBRATIONS = ('none', 'zscore')


def relevance_calibration(config) -> str:
  """config.features.relevance_calibration ('none' when absent), checked."""
  mode = config.features.get('relevance_calibration', 'none')
  if mode not in RELEVANCE_CALIBRATIONS:
    raise ValueError(f'config.features.relevance_calibration: one of '
                     f'{", ".join(RELEVANCE_CALIBRATIONS)}, got {mode!r}')
  return mode


def _calibrations(pool: 'Pool', tasks) -> list:
  """Per task ((image mean, std), (text mean, std)) of each prototype's cosine over the
  whole pool: moments summed per shard, then over the shards in shard order (every
  process gets the same)."""
  sides = relevance.task_sides([p for _, p in tasks])
  chunk = option(pool.ctx.config, 'chunk')

  def moments(image_emb, text_emb):  # [3, sum over tasks and sides of P]
    total = 0.0
    for start in range(0, image_emb.shape[0], chunk):
      parts = [relevance.prototype_moments(emb[start:start + chunk], protos)
               for image_protos, text_protos in sides
               for emb, protos in ((image_emb, image_protos), (text_emb, text_protos))]
      total = total + np.concatenate(parts, axis=1)
    return total

  per_shard = {index: moments(image_emb, text_emb)
               for index, image_emb, text_emb in pool.embeddings()}
  summed = functools.reduce(np.add, distributed.gather_by_shard(per_shard))
  sizes = [len(p) for pair in sides for p in pair]
  stats = [relevance.calibration(m)
           for m in np.split(summed, np.cumsum(sizes)[:-1], axis=1)]
  return [(stats[2 * t], stats[2 * t + 1]) for t in range(len(sides))]


def _relevance_block(ctx, tasks, image_emb, text_emb, calibrations=None) -> np.ndarray:
  """[n, 2T] relevance of one shard's rows, `chunk` rows at a time; columns as
  relevance.relevance_vector orders them."""
  chunk, top_m = option(ctx.config, 'chunk'), option(ctx.config, 'relevance_top_m')
  n = image_emb.shape[0]
  parts = [np.zeros((0, 2 * len(tasks)), np.float32)]
  for start in range(0, n, chunk):
    count = min(chunk, n - start)
    block = relevance.relevance_vector(
        _pad(image_emb[start:start + count], chunk), _pad(text_emb[start:start + count], chunk),
        [p for _, p in tasks], top_m=top_m, calibrations=calibrations)  # [chunk, 2T]
    parts.append(np.asarray(block)[:count])
  return np.concatenate(parts)


def _init_rows(config, k: int) -> int:
  """Rows k-means++ starts from (all of them in a smaller pool): a bound set by the config,
  not the pool, large enough that every centroid has many candidates."""
  return max(64 * option(config, 'chunk'), 64 * k)


# ---------------------------------------------------------------------------------------
# Global signals.


@dataclasses.dataclass
class Pool:
  """What a global signal reads: the pool after the per-shard pass.

  Embeddings are never held whole: they are read from disk again on every pass, one shard
  at a time, and so are the uids (from samples.parquet). With several processes each reads
  the shards it owns (distributed.owns), and per-sample values come back to every process
  through gather_rows, in shard order.
  """
  ctx: pipeline.Context
  shards: list             # (path, first row, rows) of each shard, in ingest order
  keys: dict               # {signal name: PRNG key} for the signals that draw
  columns: dict = dataclasses.field(default_factory=dict)  # what earlier signals added

  @property
  def rows(self) -> int:
    return sum(count for _, _, count in self.shards)

  def owned(self) -> list:
    """The indices of the non-empty shards this process owns."""
    return [i for i, (_, _, count) in enumerate(self.shards) if count and distributed.owns(i)]

  def uids(self, owned_only: bool = True):
    """(shard index, its uids) of each non-empty shard (this process's, or every one)."""
    paths = [path for path, _, _ in self.shards]
    for index, (_, table) in enumerate(ingest.rows_by_shard(self.ctx, paths, ('uid',))):
      if table['uid'] and (distributed.owns(index) or not owned_only):
        yield index, table['uid']

  def embeddings(self, owned_only: bool = True):
    """(shard index, image_emb, text_emb) of each non-empty shard, float32 [n, E] each,
    as stored: this process's shards, or every shard of the pool."""
    for index, uids in self.uids(owned_only):
      yield (index,) + embed.stored_embeddings(self.ctx, self.shards[index][0], uids)

  def joint(self, owned_only: bool = True) -> Callable:
    """A source for kmeans.fit_stream (owned_only: (shard index, rows) pairs) and
    dedup.semdedup_flags_stream (every shard: rows): a callable returning an iterator over
    the joint embeddings normalize(image + text), [n, E] per shard."""
    def chunks():
      for index, image_emb, text_emb in self.embeddings(owned_only):
        joint = np.asarray(kmeans.normalize(image_emb + text_emb))  # [n, E]
        yield (index, joint) if owned_only else joint
    return chunks

  def gather_rows(self, per_shard: dict) -> np.ndarray:
    """[N, ...]: every process's {shard index: [rows, ...]} in shard order."""
    parts = distributed.gather_by_shard(per_shard)
    out = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if out.shape[0] != self.rows:
      raise ValueError(f'features: the processes gathered {out.shape[0]} rows of the '
                       f'pool\'s {self.rows}; a shard is missing')
    return out

  @functools.cached_property
  def quality(self) -> np.ndarray:  # [N]
    """Which copy of a duplicate is kept: the one of highest clip_score (the operator's
    column when it ran, else the same cosine from the stored embeddings)."""
    if 'clip_score' in left_out_operators(self.ctx.config)[0]:
      return self.gather_rows({
          index: _shard_columns(self.ctx, self.shards[index][0], ['clip_score'])
          .column('clip_score').to_numpy() for index in self.owned()})
    return self.gather_rows({index: np.sum(image_emb * text_emb, axis=1)
                             for index, image_emb, text_emb in self.embeddings()})


@dataclasses.dataclass(frozen=True)
class Signal:
  name: str
  # Pool -> ({column: [N] values}, {summary key: JSON-able value}).
  fn: Callable[[Pool], tuple[dict, dict]]
  columns: tuple[str, ...] | None   # the columns it adds; None: one pair per task
  settings: tuple[str, ...]         # the config.features fields it reads


SIGNALS: dict[str, Signal] = {}
# Signals that draw, in the order the run's key is split (a fixed order: one signal's draws
# do not depend on which others exist).
_SEEDED = ('relevance', 'clusters')


def signal(name: str, columns: tuple[str, ...] | None, settings: tuple[str, ...] = ()):
  """Decorator adding a global signal to SIGNALS; they run in registration order, so a
  signal may read the columns of those registered before it (pool.columns)."""
  def wrap(fn):
    if name in SIGNALS:
      raise ValueError(f'signal {name!r} is already registered')
    SIGNALS[name] = Signal(name, fn, columns, tuple(settings))
    return fn
  return wrap


@signal('relevance', columns=None,
        settings=('relevance_top_m', 'retrieval_prototypes', 'chunk',
                  'relevance_calibration'))
def task_relevance(pool: Pool) -> tuple[dict, dict]:
  """relevance_<task>_image / _text: how close a sample is to what each task asks for
  (calibrated: in z-scores of each prototype's cosines over the pool)."""
  tasks = _task_prototypes(pool.ctx, pool.keys['relevance'])  # a DataComp pool's: its space
  columns = {}
  if not tasks:
    return columns, {}
  calibrations = None
  if relevance_calibration(pool.ctx.config) == 'zscore' and pool.rows:
    calibrations = _calibrations(pool, tasks)
  values = pool.gather_rows({
      index: _relevance_block(pool.ctx, tasks, image_emb, text_emb, calibrations)
      for index, image_emb, text_emb in pool.embeddings()}).reshape(-1, 2 * len(tasks))
  for t, (prefix, _) in enumerate(tasks):
    columns[f'{prefix}_image'] = values[:, 2 * t]
    columns[f'{prefix}_text'] = values[:, 2 * t + 1]
  return columns, {}


@signal('target_relevance', columns=None, settings=('target_relevance', 'chunk'))
def target_relevance(pool: Pool) -> tuple[dict, dict]:
  """relevance_<task>_target (features.target_relevance): each sample's image against the
  task's train images (their fit part), its largest cosine to any of them."""
  if not pool.ctx.config.features.get('target_relevance', False):
    return {}, {}
  tasks = []
  for spec, arrays in embed.task_embeddings(pool.ctx, 'train'):
    if not len(arrays['image_emb']):
      raise ValueError(f"config.features.target_relevance: task {spec.name!r} has no train "
                       "images (field 'image_emb' of its train split is empty)")
    tasks.append((_column_prefix(spec), relevance.target_blocks(arrays['image_emb'])))
  if not tasks:
    return {}, {}
  chunk = option(pool.ctx.config, 'chunk')

  def block(image_emb):  # [n, E] -> [n, T]
    out = np.zeros((image_emb.shape[0], len(tasks)), np.float32)
    for start in range(0, image_emb.shape[0], chunk):
      count = min(chunk, image_emb.shape[0] - start)
      rows = _pad(image_emb[start:start + count], chunk)
      for t, (_, targets) in enumerate(tasks):
        out[start:start + count, t] = np.asarray(
            relevance.nearest_target(rows, targets))[:count]
    return out

  values = pool.gather_rows({index: block(image_emb)
                             for index, image_emb, _ in pool.embeddings()})
  values = values.reshape(-1, len(tasks))
  return {f'{prefix}_target': values[:, t] for t, (prefix, _) in enumerate(tasks)}, {}


@signal('clusters', columns=('cluster', 'cluster_weight'),
        settings=('kmeans_k', 'kmeans_iters', 'alpha', 'chunk'))
def clusters(pool: Pool) -> tuple[dict, dict]:
  """k-means clusters of the joint embedding, and weights that shrink the dense ones."""
  if not pool.rows:
    return {'cluster': np.zeros(0, np.int32),
            'cluster_weight': np.zeros(0, np.float32)}, {'kmeans': None}
  config = pool.ctx.config
  k = min(option(config, 'kmeans_k'), pool.rows)
  fit = kmeans.fit_stream(
      pool.joint(), pool.rows, k, option(config, 'kmeans_iters'), pool.keys['clusters'],
      init_sample=_init_rows(config, k), shard_rows=[count for _, _, count in pool.shards],
      gather=distributed.gather_by_shard, processes=distributed.process_count(),
      callback=lambda i, cos, share: logging.info(
          'features: k-means pass %d, mean cosine %.4f, %.0f%% of rows computed', i, cos,
          100 * share))
  owned = pool.owned()
  labels = np.split(fit.assignment, np.cumsum([pool.shards[i][2] for i in owned])[:-1])
  assignment = pool.gather_rows(dict(zip(owned, labels)) if owned else {})
  columns = {'cluster': assignment.astype(np.int32),
             'cluster_weight': kmeans.cluster_weights(assignment, k, option(config, 'alpha'))}
  return columns, {'kmeans': {'k': k, 'objective': float(fit.objective)}}


@signal('semantic_duplicate', columns=('semantic_duplicate',), settings=('semdedup_eps',))
def semantic_duplicates(pool: Pool) -> tuple[dict, dict]:
  """SemDeDup inside each cluster (reads 'cluster'): all but the best of near-copies.

  With several processes the clusters are split: process p scans the clusters whose id %
  process_count == p, reading their rows from every shard, and the flags are summed."""
  flags = np.zeros(0, bool)
  if pool.rows:
    assignment = pool.columns['cluster']
    mine = assignment % distributed.process_count() == distributed.process_index()  # [N]
    flags = dedup.semdedup_flags_stream(
        pool.joint(owned_only=False), assignment, pool.quality,
        option(pool.ctx.config, 'semdedup_eps'), rows=mine,
        scratch=pool.ctx.path('features', SEMDEDUP_SCRATCH.format(
            process=distributed.process_index())))
    flags = distributed.all_sum(flags.view(np.uint8)) > 0
  return {'semantic_duplicate': flags}, {'semantic_duplicates': int(np.sum(flags))}


@signal('exact_duplicate', columns=('exact_duplicate',))
def exact_duplicates(pool: Pool) -> tuple[dict, dict]:
  """Byte-identical images (ingest's sha256): all but the best copy. Each process keys
  its shards' hashes (128 bits of blake2b; a missing hash makes no duplicate) and every
  process gets every key, in shard order."""
  if not pool.rows:
    return {'exact_duplicate': np.zeros(0, bool)}, {'exact_duplicates': 0}
  paths = [path for path, _, _ in pool.shards]
  keys = {}
  for index, (_, table) in enumerate(ingest.rows_by_shard(pool.ctx, paths, ('sha256',))):
    if table['sha256'] and distributed.owns(index):
      keys[index] = _hash_keys(table['sha256'])
  keys = pool.gather_rows(keys)  # [N, 3]
  known = keys[:, 2] > 0
  _, group = np.unique(keys[:, :2], axis=0, return_inverse=True)
  flags = dedup.duplicate_flags(group.reshape(-1), known, pool.quality)
  return {'exact_duplicate': flags}, {'exact_duplicates': int(np.sum(flags))}


def _hash_keys(hashes) -> np.ndarray:
  """[n, 3] uint64 per content hash string: 128 bits of its blake2b, and 1 when it is
  known (0 for None or '')."""
  out = np.zeros((len(hashes), 3), np.uint64)
  for i, value in enumerate(hashes):
    if value:
      out[i, :2] = np.frombuffer(hashlib.blake2b(value.encode(), digest_size=16).digest(),
                                 np.uint64)
      out[i, 2] = 1
  return out


# The columns every pool gets from the global signals, after the relevance pairs.
GLOBAL_COLUMNS = tuple(c for s in SIGNALS.values() for c in s.columns or ())


def run(ctx) -> dict:
  config = ctx.config
  names, left_out, left_out_why = left_out_operators(config)
  if left_out:
    logging.info('features: %s left out: %s', ', '.join(left_out), left_out_why)
  records, computed, shards = _shard_pass(ctx, names)
  keys = dict(zip(_SEEDED, jax.random.split(jax.random.PRNGKey(config.seed), len(_SEEDED))))
  pool = Pool(ctx, shards, keys)
  signal_summary = {}
  for sig in SIGNALS.values():  # every process: each its part, the values gathered
    columns, summary = sig.fn(pool)
    pool.columns.update(columns)
    signal_summary.update(summary)
  if not distributed.is_writer():
    return {}

  def tables():  # each shard's operator columns and its rows of the global ones
    for (path, start, count), (_, rows) in zip(
        shards, ingest.rows_by_shard(ctx, [p for p, _, _ in shards], ('uid',))):
      table = _shard_columns(ctx, path)
      if table.column('uid').to_pylist() != rows['uid']:
        raise ValueError(f"{ctx.path('ingest', ingest.SAMPLES)}: field 'uid' does not match "
                         f'the features shard of {path}; rerun ingest')
      for name, values in pool.columns.items():
        table = table.append_column(name, pa.array(values[start:start + count]))
      yield table
  columns = None
  with pipeline.atomic_write(ctx.path('features', FEATURES)) as tmp:
    for table in pipeline.write_row_stream(tables(), tmp):
      columns = columns or table.column_names[1:]
  logging.info('features: %d samples, %d columns', pool.rows, len(columns))
  return {
      'samples': pool.rows,
      'shards': len(records),
      'shards_computed': computed,
      'operators': names,
      'operators_left_out': left_out,
      'operators_left_out_reason': left_out_why,
      'columns': columns,
      **signal_summary,
      'skips': dict(sum((collections.Counter(r['skips']) for r in records),
                        collections.Counter())),
  }


def features_path(ctx) -> str | None:
  """features/features.parquet when the features stage is configured (and so has run)."""
  if 'features' not in pipeline.stage_names(ctx.config):
    return None
  return ctx.path('features', FEATURES)


def read_features(ctx, columns=None) -> pa.Table:
  """ingest/samples.parquet, with every features column joined on when the features stage
  is configured: the table every selector sees. `columns`: only these (uid always), None:
  every column.

  The width and height operators repeat ingest's columns of the same name (they read
  them), so a features column whose name samples.parquet has is not joined twice.
  """
  parts = list(iter_features(ctx, [ingest_rows(ctx)], columns))
  return parts[0]


def column_names(ctx) -> list:
  """The columns of read_features, in its order, from the files' schemas."""
  names = pq.ParquetFile(ctx.path('ingest', ingest.SAMPLES)).schema_arrow.names
  path = features_path(ctx)
  extra = [] if path is None else pq.ParquetFile(path).schema_arrow.names
  return names + [c for c in extra if c not in names]


def ingest_rows(ctx) -> int:
  """The pool's rows: samples.parquet's, read from its footer."""
  return pq.ParquetFile(ctx.path('ingest', ingest.SAMPLES)).metadata.num_rows


def iter_features(ctx, sizes, columns=None):
  """read_features a slice at a time: one table of each row count in `sizes` (an iterable
  read lazily, e.g. each shard's rows), in row order; memory holds one slice.

  features.parquet is written in samples.parquet's row order; a file whose uids are not
  raises naming it. The uids are read to check that, and left out of the tables when
  `columns` does not ask for 'uid'.
  """
  for table in _joined_slices(ctx, sizes, columns):
    yield table if columns is None or 'uid' in columns else table.drop_columns(['uid'])


def _joined_slices(ctx, sizes, columns):
  samples_path = ctx.path('ingest', ingest.SAMPLES)
  sample_names = pq.ParquetFile(samples_path).schema_arrow.names
  path = features_path(ctx)
  feature_names = [] if path is None else [
      c for c in pq.ParquetFile(path).schema_arrow.names if c not in sample_names]
  if columns is not None:
    wanted = set(columns)
    unknown = wanted - set(sample_names) - set(feature_names)
    if unknown:
      raise ValueError(f'{path or samples_path}: no column(s) {sorted(unknown)}; have '
                       f'{sample_names + feature_names}')
    sample_names = [c for c in sample_names if c == 'uid' or c in wanted]
    feature_names = [c for c in feature_names if c in wanted]
  if path is None or not feature_names:
    yield from _slices(samples_path, sample_names, sizes)
    return
  sizes, same_sizes = itertools.tee(sizes)
  features_slices = _slices(path, ['uid'] + feature_names, same_sizes)
  for table in _slices(samples_path, sample_names, sizes):
    extra = next(features_slices)
    if not table.column('uid').equals(extra.column('uid')):
      raise ValueError(f"{path}: field 'uid' does not match ingest/samples.parquet row for "
                       'row; rerun the features stage')
    for name in feature_names:
      table = table.append_column(name, extra.column(name))
    yield table


def _slices(path: str, columns, sizes):
  """Tables of exactly each row count in `sizes`, the file's rows in order; the file must
  hold at least their sum."""
  reader = pq.ParquetFile(path)
  schema = pa.schema([reader.schema_arrow.field(c) for c in columns])
  batches = pipeline.iter_rows(path, columns)
  buffer = pa.Table.from_batches([], schema=schema)
  for size in sizes:
    while buffer.num_rows < size:
      batch = next(batches, None)
      if batch is None:
        raise ValueError(f'{path}: fewer rows than ingest/samples.parquet; rerun the stage '
                         'that wrote it')
      buffer = pa.concat_tables([buffer, pa.Table.from_batches([batch], schema=schema)])
    yield buffer.slice(0, size)
    buffer = buffer.slice(size)


def config_keys(config) -> tuple:
  # The encoder, the tasks and the embed settings come in through the embed stage. The
  # validation split (retrieval prototypes read the fit part) counts only when there is
  # one, so that a config without it keeps its fingerprint.
  return ('seed', 'pool.format', 'pool.image_size', 'features') + task_split.config_keys(config)


STAGE = pipeline.Stage(name='features', run=run, inputs=('ingest', 'embed'),
                       config_keys=config_keys, version=3, multiprocess=True)
