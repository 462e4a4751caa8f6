"""Ingest: list the pool, read every sample once, keep per-sample metadata, count skips.

Streaming and resumable per shard: each shard's rows go to `ingest/shards/<name>.parquet`
(written atomically with its skip counts), so a killed run redoes only unfinished shards.
Samples whose uid was already seen in an earlier shard are dropped and counted.

A DataComp pool is its metadata files (parquet + npz). With the tars beside them (DataComp's
full layout, same names), the pool is what was downloaded: a metadata row without a usable
image in its tar is skipped ('no_image'; DataComp's download misses part of every pool),
rows follow tar order, and sha256 is that of the image bytes the tar holds; captions, the
original sizes and the embeddings stay the metadata's. Without tars every usable metadata
row is a sample and sha256 is the metadata's column.

A webdataset pool made from a labelled classification set (tools/labelled_to_pool.py) carries
each sample's class index in its json (`"label": 3`); it becomes the `label` column, -1 for a
sample without one (a json without an integer `label` >= 0, every DataComp row), so a pool
without labels reads as before with one more column of -1.
"""

import collections
import hashlib
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tads_jax import distributed
from tads_jax import pipeline
from tads_jax.data import datacomp
from tads_jax.data import subset as subset_lib
from tads_jax.data import images as images_lib
from tads_jax.data import synthetic
from tads_jax.data import webdataset

SAMPLES = 'samples.parquet'
SCHEMA = pa.schema([
    ('uid', pa.string()), ('key', pa.string()), ('shard', pa.string()),
    ('caption', pa.string()), ('width', pa.int32()), ('height', pa.int32()),
    ('image_format', pa.string()), ('sha256', pa.string()), ('uid_source', pa.string()),
    ('label', pa.int32()),
])
NO_LABEL = -1


def world_dir(ctx) -> str:
  return os.path.join(ctx.stage_dir('ingest'), 'world')


def world_config(config) -> synthetic.WorldConfig:
  fields = dict(config.pool.synthetic.to_dict())
  fields.update(seed=config.seed, image_size=config.pool.image_size)
  return synthetic.WorldConfig.from_dict(fields)


def pool_sources(config, world: str | None = None) -> list[str]:
  """The pool's shard (webdataset) or metadata (datacomp) files, in order."""
  fmt = config.pool.format
  if fmt == 'synthetic':
    return webdataset.expand_shards(os.path.join(world, 'pool', '*.tar'))
  if fmt == 'webdataset':
    return webdataset.expand_shards(config.pool.shards)
  return datacomp.list_metadata(config.pool.metadata)


def input_files(config) -> list:
  """Sizes and mtimes of external pool files (a DataComp pool's npz files and tars too); the
  synthetic world is derived from config."""
  if config.pool.format == 'synthetic':
    return []
  sources = pool_sources(config)
  if config.pool.format == 'datacomp':
    sources = [f for p in sources
               for f in (p, datacomp.npz_path(p), datacomp.tar_path(p))]
  return pipeline.file_identities(sources)


def image_tars(config) -> list | None:
  """A DataComp pool's tars (one per metadata file, in order), or None when it has none;
  ValueError when only some metadata files have theirs."""
  if config.pool.format != 'datacomp':
    raise ValueError(f'image_tars: a DataComp pool has tars beside its metadata; '
                     f'config.pool.format is {config.pool.format!r}')
  return datacomp.image_tars(pool_sources(config))


def has_images(config) -> bool:
  """Whether the pool's images can be read: always for webdataset shards, for a DataComp pool
  when its tars are beside the metadata."""
  if config.pool.format != 'datacomp':
    return True
  return image_tars(config) is not None


def local_path(ctx, path: str) -> str:
  """A path ingest recorded, in this workdir.

  A synthetic world lives in the workdir, and ingest recorded its files (the summary's
  world, tasks and ground truth, the shards in samples.parquet) where the workdir was
  then. A workdir moved or copied since finds them under its own ingest/world; an external
  pool's paths are returned as they are.
  """
  return moved(path, recorded_world(ctx), world_dir(ctx))


def recorded_world(ctx) -> str | None:
  """Where ingest generated the synthetic world (None for another pool, or before ingest)."""
  if ctx.config.pool.format != 'synthetic':
    return None
  done = pipeline.read_done(ctx.stage_dir('ingest'))
  return done and done['summary'].get('world')


def moved(path: str, recorded: str | None, world: str) -> str:
  """`path` under `world` when it was under `recorded` (ingest's summary['world'])."""
  if recorded and path.startswith(recorded + os.sep):
    return world + path[len(recorded):]
  return world if path == recorded else path


def image_shard(ctx, source: str) -> str | None:
  """The tar holding the images of an ingested source (a pool shard itself, or a DataComp
  metadata file's tar), in this workdir; None for a DataComp pool without tars."""
  if ctx.config.pool.format != 'datacomp':
    return local_path(ctx, source)
  tar = datacomp.tar_path(source)
  return tar if os.path.isfile(tar) else None


def item_name(path: str) -> str:
  digest = hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:8]
  return f'{os.path.basename(path)}-{digest}'


def sample_label(meta: dict) -> int:
  """The class index a pool sample's json carries, NO_LABEL without one (a bool, a float or
  a string is not a class index)."""
  label = meta.get('label')
  if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < 2 ** 31:
    return label
  return NO_LABEL


def _item_rows(ctx, path: str) -> str:
  """A source's rows, as its item wrote them."""
  return os.path.join(ctx.stage_dir('ingest'), 'shards', item_name(path) + '.parquet')


def _with_label(table: pa.Table) -> pa.Table:
  """A shard's rows written before ingest kept labels (a resumed run's finished items)
  get the column of NO_LABEL."""
  if 'label' in table.column_names:
    return table
  return table.append_column(pa.field('label', pa.int32()),
                             pa.array([NO_LABEL] * table.num_rows, pa.int32()))


def _rows_from_shard(path: str, skips: collections.Counter) -> dict:
  rows = {name: [] for name in SCHEMA.names}
  for s in webdataset.iter_shard(path, skips, decode=True):
    rows['uid'].append(s.uid)
    rows['key'].append(s.key)
    rows['shard'].append(path)
    rows['caption'].append(s.caption)
    rows['height'].append(int(s.image.shape[0]))
    rows['width'].append(int(s.image.shape[1]))
    rows['image_format'].append(s.image_ext)
    rows['sha256'].append(hashlib.sha256(s.image_bytes).hexdigest())
    rows['uid_source'].append(s.meta.get('uid_source', 'json'))
    rows['label'].append(sample_label(s.meta))
  return rows


def _rows_from_metadata(path: str, model: str, skips: collections.Counter,
                        tar: str | None = None) -> tuple[dict, int]:
  """(rows, embedding dimension) of one metadata file; with its `tar`, the rows whose image
  the tar holds, in tar order."""
  shard = datacomp.read_metadata(path, model=model)
  table = shard.table
  n = len(shard.uids)
  # DataComp's metadata names the caption 'text'; img2dataset's per-tar parquet 'caption'.
  text = next((c for c in ('text', 'caption') if c in table.column_names), None)
  captions = table.column(text).to_pylist() if text else [''] * n

  def column(name, default):
    return table.column(name).to_pylist() if name in table.column_names else [default] * n

  widths, heights = column('original_width', None), column('original_height', None)
  sha = column('sha256', '')
  usable = np.zeros(n, bool)  # [N] a valid embedding pair and a caption
  for i in range(n):
    if not shard.valid[i]:
      skips['bad_embedding'] += 1
    elif not captions[i] or not str(captions[i]).strip():
      skips['missing_caption'] += 1
    else:
      usable[i] = True
  rows = {name: [] for name in SCHEMA.names}

  def add(i, key, width, height, image_format, sha256):
    rows['uid'].append(shard.uids[i])
    rows['key'].append(key)
    rows['shard'].append(path)
    rows['caption'].append(captions[i])
    rows['width'].append(int(widths[i] if widths[i] is not None else width))
    rows['height'].append(int(heights[i] if heights[i] is not None else height))
    rows['image_format'].append(image_format)
    rows['sha256'].append(sha256)
    rows['uid_source'].append('json')
    rows['label'].append(NO_LABEL)

  dim = int(shard.image_emb.shape[1])
  if tar is None:
    for i in np.flatnonzero(usable):
      add(i, str(i), -1, -1, '', sha[i] or '')
    return rows, dim
  index = {}
  for i, uid in enumerate(shard.uids):
    index.setdefault(uid, i)
  accounted = np.zeros(n, bool)  # [N] the row's image was found (read or corrupt)
  # Undecoded, so that a corrupt image is charged to its metadata row, not counted twice.
  for sample in webdataset.iter_shard(tar, skips, decode=False):
    i = index.get(sample.uid)
    if i is None:
      skips['not_in_metadata'] += 1  # no embedding for it: not part of this pool
      continue
    if not usable[i]:
      continue  # counted above, once per metadata row
    try:
      image = images_lib.decode_image(sample.image_bytes,
                                      where=f'{tar}: {sample.key}.{sample.image_ext}')
    except images_lib.CorruptImageError:
      if not accounted[i]:
        skips['corrupt_image'] += 1
      accounted[i] = True
      continue
    accounted[i] = True
    add(i, sample.key, image.shape[1], image.shape[0], sample.image_ext,
        hashlib.sha256(sample.image_bytes).hexdigest())
  missing = int((usable & ~accounted).sum())  # not downloaded, or lost from the tar
  if missing:
    skips['no_image'] += missing
  return rows, dim


def _ingest_source(ctx, path: str) -> dict:
  """Reads one shard (or metadata file) unless a finished item exists; returns skips."""
  items = os.path.join(ctx.stage_dir('ingest'), 'shards')
  os.makedirs(items, exist_ok=True)
  item = os.path.join(items, item_name(path))

  def compute():
    skips = collections.Counter()
    extra = {}
    if ctx.config.pool.format == 'datacomp':
      tar = image_shard(ctx, path)
      rows, dim = _rows_from_metadata(path, ctx.config.pool.embedding_model, skips, tar)
      extra = {'embedding_dim': dim, 'tar': tar}
    else:
      rows = _rows_from_shard(path, skips)
    with pipeline.atomic_write(item + '.parquet') as tmp:
      pq.write_table(pa.table(rows, schema=SCHEMA), tmp)
    return {'path': path, 'samples': len(rows['uid']), 'skips': dict(skips), **extra}

  return pipeline.resumable_item(item, compute)


def run(ctx) -> dict:
  config = ctx.config
  world = None
  if config.pool.format == 'synthetic':
    world = world_dir(ctx)
    if distributed.is_writer():
      logging.info('ingest: generating the synthetic world in %s', world)
      synthetic.generate_world(world, world_config(config))
    distributed.barrier('ingest: world generated')
  sources = pool_sources(config, world)
  progress = pipeline.Progress('ingest', len(sources), unit='shards', every=2.0)
  if config.pool.format == 'datacomp':
    image_tars(config)  # every metadata file with its tar, or none
  # Each process ingests the sources it owns; every process then gets every source's
  # record and uids (as 128-bit keys), in source order, and finds the duplicates.
  records, keys = {}, {}
  for index, path in enumerate(sources):
    if distributed.owns(index):
      records[index] = _ingest_source(ctx, path)
      keys[index] = subset_lib.uids_to_array(
          pq.read_table(_item_rows(ctx, path), columns=['uid']).column('uid'))
      progress.update(1)
  records = distributed.gather_records(records)
  keys = distributed.gather_by_shard(keys)
  for path, record in zip(sources, records):
    dim, first = record.get('embedding_dim'), records[0].get('embedding_dim')
    if None not in (dim, first) and dim != first:
      raise ValueError(f'{datacomp.npz_path(path)}: {config.pool.embedding_model} embeddings '
                       f'of dimension {dim}, but {datacomp.npz_path(records[0]["path"])} '
                       f'has {first}; one pool has one embedding model')

  # Merge in shard order; a uid seen in an earlier shard is a duplicate.
  skips = collections.Counter()
  for r in records:
    skips.update(r['skips'])
  pool_keys = np.concatenate(keys) if keys else np.zeros(0, subset_lib.UID_DTYPE)
  _, first = np.unique(pool_keys, return_index=True)  # each uid's first row
  keep = np.zeros(len(pool_keys), bool)  # [N]
  keep[first] = True
  skips['duplicate_uid'] += int((~keep).sum())
  skips = +skips  # drops a zero count
  if not keep.any():  # stop here, not in a later stage's arithmetic on nothing
    raise ValueError(f'{sources[0] if len(sources) == 1 else f"{len(sources)} pool sources"}: '
                     f'the pool has no usable sample (skipped by reason: '
                     f'{dict(sorted(skips.items())) or "none; the sources are empty"})')
  if not distributed.is_writer():
    return {}
  ends = np.cumsum([len(k) for k in keys], dtype=np.int64)

  def kept_rows():  # each source's kept rows, read from its item (memory: one source)
    for path, end, count in zip(sources, ends, [len(k) for k in keys]):
      table = _with_label(pq.read_table(_item_rows(ctx, path)))
      yield table.filter(pa.array(keep[end - count:end])).cast(SCHEMA)
  labelled = 0
  with pipeline.atomic_write(ctx.path('ingest', SAMPLES)) as tmp:
    for table in pipeline.write_row_stream(kept_rows(), tmp):
      labelled += int((table.column('label').to_numpy() >= 0).sum())

  summary = {
      'format': config.pool.format,
      'sources': len(sources),
      'samples': int(keep.sum()),
      'skips': dict(sorted(skips.items())),
      'per_source': records,
  }
  if config.pool.format == 'datacomp':
    summary['embedding_dim'] = records[0].get('embedding_dim') if records else None
    summary['images'] = bool(records) and records[0].get('tar') is not None
  if labelled:  # a labelled classification set (tools/labelled_to_pool.py)
    summary['labelled'] = labelled
  if world is not None:
    summary['world'] = world
    summary['ground_truth'] = os.path.join(world, 'ground_truth.parquet')
    summary['tasks'] = os.path.join(world, 'tasks.json')
  return summary


def shard_sizes(ctx) -> list:
  """The rows samples.parquet holds of each pool source, in source order (0 for one that
  kept nothing): memory holds one shard's uids."""
  paths = [r['path'] for r in ctx.summary('ingest')['per_source']]
  return [len(rows['uid']) for _, rows in rows_by_shard(ctx, paths, ('uid',))]


def rows_by_shard(ctx, paths: list, columns):
  """(shard path, {column: list}) for every path in order, from samples.parquet.

  Each shard's rows are contiguous there, in shard order, so it is read in record batches
  and memory holds one shard's rows, never the pool's. A shard none of whose samples was
  kept gets empty lists.
  """
  where = ctx.path('ingest', SAMPLES)
  names = list(dict.fromkeys(['shard', *columns]))
  order = {p: i for i, p in enumerate(paths)}
  current, rows, next_path = None, None, 0

  def finish():  # the shards before `current` that kept nothing, then `current`
    yield from ((p, {c: [] for c in columns}) for p in paths[next_path:order[current]])
    yield current, rows

  for batch in pipeline.iter_rows(where, names):
    # Runs of one shard, found on the column's dictionary codes: a str per row is made
    # only for the columns asked for.
    codes = pc.dictionary_encode(batch.column('shard'))
    names_of = codes.dictionary.to_pylist()
    index = codes.indices.to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.diff(index, prepend=-1))
    for start, end in zip(starts, np.append(starts[1:], len(index))):
      shard = names_of[index[start]]
      if shard != current:
        if current is not None:
          yield from finish()
          next_path = order[current] + 1
        if shard not in order:
          raise ValueError(f"{where}: column 'shard' names {shard!r}, which the ingest "
                           'summary does not list')
        if order[shard] < next_path:
          raise ValueError(f"{where}: column 'shard' is not in shard order at {shard!r}; "
                           'rerun ingest')
        current, rows = shard, {c: [] for c in columns}
      for c in columns:
        rows[c] += batch.column(c).slice(int(start), int(end - start)).to_pylist()
  if current is not None:
    yield from finish()
    next_path = order[current] + 1
  yield from ((p, {c: [] for c in columns}) for p in paths[next_path:])


def config_keys(config) -> tuple:
  if config.pool.format == 'synthetic':  # the world is a function of these
    return ('pool.format', 'seed', 'pool.image_size', 'pool.synthetic')
  if config.pool.format == 'webdataset':
    return ('pool.format', 'pool.shards')
  return ('pool.format', 'pool.metadata', 'pool.embedding_model')


STAGE = pipeline.Stage(name='ingest', run=run, config_keys=config_keys,
                       input_files=input_files, version=1, multiprocess=True)
