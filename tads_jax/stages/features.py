"""Features: per-sample quality, task relevance and diversity signals for the selectors.

Streaming part, per pool shard (resumable like ingest and embed): the shard's images are
decoded again, resized to pool.image_size and scored by the image operators in fixed-shape
chunks of `features.chunk` rows (the tail padded and masked, so XLA compiles one program);
captions go through the text operators and the embed stage's npz rows through the
cross-modal ones. flipped_clip_score embeds the horizontally flipped images with the
reference encoder here. Each shard's columns go to `features/shards/<item>.parquet`; the
`.json` sidecar is written last and marks the shard complete. Memory holds one chunk of
images.

Global part, over the whole pool: task relevance (top-m cosines to each task's prototypes
from its train split, computed shard by shard in the same loop), spherical k-means on the
joint embedding normalize(image + text), cluster weights (|C| / N) ** -alpha, SemDeDup
flags inside the clusters (best clip_score kept) and exact-duplicate flags by ingest's
image sha256. It never holds the pool's [N, E] embeddings: k-means streams the shards'
embeddings from disk once per Lloyd iteration (kmeans.fit_stream, k-means++ on at most
_init_rows(...) sampled rows), and SemDeDup sorts them by cluster into a scratch file in one
pass and reads one cluster at a time (dedup.semdedup_flags_stream). Memory holds one shard's
embeddings, the largest cluster and per-sample scalars (labels, bounds, output columns).

Output: `features/features.parquet`, uid plus one column per feature, rows in
ingest/samples.parquet order. A DataComp pool's embeddings come from its own npz files and
its task relevance from the tasks the embed stage embedded in that space; its images from
the tars beside the metadata. Without tars the image operators and flipped_clip_score are
left out, and without encoder.checkpoint flipped_clip_score is (absent columns, listed with
the reason in the summary).
"""

import collections
import json
import logging
import os
import re

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tads_jax import pipeline
from tads_jax import scoring  # noqa: F401  (registers the operators)
from tads_jax.data import images as images_lib
from tads_jax.data import webdataset
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
SEMDEDUP_SCRATCH = 'semdedup_scratch.f32'
# vocab_share is not run here: it needs a vocabulary setting the stage does not build yet.
GLOBAL_COLUMNS = ('cluster', 'cluster_weight', 'semantic_duplicate', 'exact_duplicate')
_UNSUPPORTED = ('vocab_share',)


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
    if name in _UNSUPPORTED:
      raise ValueError(f'config.features.operators: {name!r} needs a vocabulary setting '
                       'that the features stage does not provide')
  if len(set(names)) != len(names):
    raise ValueError(f'config.features.operators: repeated names in {names}')
  return names


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


def _stored_embeddings(ctx, path: str, uids: list) -> tuple[np.ndarray, np.ndarray]:
  """embed.shard_embeddings rounded to float16, for the global features: the embed stage stores
  float16, and a DataComp pool's rows (normalized in float32 on load) get the same rounding,
  so every pass over the pool sees the same values."""
  image_emb, text_emb = embed.shard_embeddings(ctx, path, uids)
  return (image_emb.astype(np.float16).astype(np.float32),  # [n, E]
          text_emb.astype(np.float16).astype(np.float32))


def _shard_images(path: str, uids: list, skips: collections.Counter):
  """Decoded uint8 images [H, W, 3] of a shard's rows, in row order.

  Ingest kept the first decodable occurrence of each uid, in tar order, so the tar is read
  again in that order and checked against the rows as it goes.
  """
  wanted, seen, position = set(uids), set(), 0
  for sample in webdataset.iter_shard(path, skips, decode=True):
    if sample.uid not in wanted or sample.uid in seen:
      continue
    if position >= len(uids) or sample.uid != uids[position]:
      raise ValueError(f'{path}: sample {sample.key} (uid {sample.uid}) is out of the order '
                       'of ingest/samples.parquet; the shard changed, rerun ingest')
    seen.add(sample.uid)
    position += 1
    yield sample.image
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


def _score_chunk(names, start, count, chunk, table, image_emb, text_emb, images=None,
                 flipped_emb=None) -> dict:
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
  out = registry.compute(names, **inputs)
  return {name: values[:count] for name, values in out.items()}


def _features_shard(ctx, path: str, table: dict, names: list, encoder) -> dict:
  item = shard_item(ctx, path)
  if os.path.exists(item + '.json'):  # written after the parquet: the shard is complete
    with open(item + '.json') as f:
      return json.load(f)
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
    tar = ingest.image_shard(config, path)
    decoded = _chunks(_shard_images(tar, uids, skips), chunk)
  else:
    decoded = ([None] * len(range(s, min(s + chunk, n))) for s in range(0, n, chunk))
  size = config.pool.image_size
  for start, originals in zip(range(0, n, chunk), decoded):
    count = len(originals)
    images = flipped_emb = None
    if image_ops:
      images = np.stack([images_lib.resize_center_crop(im, size) for im in originals])
      images = images.astype(np.float32) / 255.0  # [B, S, S, 3] in [0, 1]
    if flipped:
      items = [(i, np.ascontiguousarray(im[:, ::-1])) for i, im in enumerate(originals)]
      got, flipped_emb = encoder.embed_images(items, skips=skips)  # [B, E]
      if len(got) != count:
        raise ValueError(f'{path}: {count - len(got)} flipped images failed to load')
    out = _score_chunk(names, start, count, chunk, table, image_emb, text_emb, images,
                       flipped_emb)
    for name in names:
      columns[name].append(out[name])
  arrays = {'uid': pa.array(uids, pa.string())}
  for name in names:
    values = np.concatenate(columns[name]) if columns[name] else np.zeros(0, np.float32)
    arrays[name] = pa.array(values.astype(np.float32))
  tmp = f'{item}.parquet.tmp-{os.getpid()}'
  pq.write_table(pa.table(arrays), tmp)
  os.replace(tmp, item + '.parquet')
  record = {'path': path, 'parquet': item + '.parquet', 'samples': n, 'skips': dict(skips)}
  pipeline.write_json_atomic(item + '.json', record)
  return record


def _task_prototypes(ctx, key) -> list:
  """(column prefix, prototypes) per task, from the embed stage's train-split npz."""
  out = []
  for spec in embed.task_specs(ctx):
    where = embed.task_item(ctx, spec.name, 'train') + '.npz'
    safe = re.sub(r'[^A-Za-z0-9_]', '_', spec.name)
    if spec.kind == 'classification':
      arrays = embed.load_npz(where, ('class_text_emb',))
      protos = np.asarray(relevance.class_prototypes(arrays['class_text_emb']))  # [C, E]
    else:
      arrays = embed.load_npz(where, ('image_emb', 'text_emb', 'text_image'))
      paired = arrays['image_emb'][arrays['text_image']].astype(np.float32)  # [M, E]
      key, sub = jax.random.split(key)
      protos = relevance.retrieval_prototypes(
          paired, arrays['text_emb'].astype(np.float32),
          option(ctx.config, 'retrieval_prototypes'), sub)
    out.append((f'relevance_{safe}', protos))
  return out


def _relevance_block(ctx, tasks, image_emb, text_emb) -> np.ndarray:
  """[n, 2T] relevance of one shard's rows, `chunk` rows at a time; columns as
  relevance.relevance_vector orders them."""
  chunk, top_m = option(ctx.config, 'chunk'), option(ctx.config, 'relevance_top_m')
  n = image_emb.shape[0]
  parts = [np.zeros((0, 2 * len(tasks)), np.float32)]
  for start in range(0, n, chunk):
    count = min(chunk, n - start)
    block = relevance.relevance_vector(
        _pad(image_emb[start:start + count], chunk), _pad(text_emb[start:start + count], chunk),
        [p for _, p in tasks], top_m=top_m)  # [chunk, 2T]
    parts.append(np.asarray(block)[:count])
  return np.concatenate(parts)


def _joint_source(ctx, shards: list, uid_column):
  """A callable returning an iterator over the pool's joint embeddings normalize(image +
  text), float32 [n, E] per shard, read from disk again on every call. shards lists
  (path, first row, rows); uid_column holds the pool's uids in row order."""
  def chunks():
    for path, start, count in shards:
      if count:
        uids = uid_column.slice(start, count).to_pylist()
        image_emb, text_emb = _stored_embeddings(ctx, path, uids)
        yield np.asarray(kmeans.normalize(image_emb + text_emb))  # [n, E]
  return chunks


def _init_rows(config, k: int) -> int:
  """Rows k-means++ starts from (all of them in a smaller pool): a bound set by the config,
  not the pool, large enough that every centroid has many candidates."""
  return max(64 * option(config, 'chunk'), 64 * k)


def run(ctx) -> dict:
  config = ctx.config
  names, left_out, left_out_why = left_out_operators(config)
  if left_out:
    logging.info('features: %s left out: %s', ', '.join(left_out), left_out_why)
  ingested = ctx.summary('ingest')
  paths = [r['path'] for r in ingested['per_source']]
  os.makedirs(os.path.join(ctx.stage_dir('features'), 'shards'), exist_ok=True)
  encoder = None
  if 'flipped_clip_score' in names and not all(
      os.path.exists(shard_item(ctx, p) + '.json') for p in paths):
    encoder = embed.load_encoder(config, encoder_stage.checkpoint(ctx))
  key = jax.random.PRNGKey(config.seed)
  relevance_key, kmeans_key = jax.random.split(key)
  tasks = _task_prototypes(ctx, relevance_key)  # a DataComp pool's: in its npz's space

  progress = pipeline.Progress('features', ingested['samples'], unit='samples')
  records, computed = [], 0
  tables, shards, relevance_parts, dot_parts = [], [], [], []
  n = 0
  for path, table in ingest.rows_by_shard(ctx, paths,
                                         ('uid', 'caption', 'width', 'height')):
    done = os.path.exists(shard_item(ctx, path) + '.json')
    records.append(_features_shard(ctx, path, table, names, encoder))
    computed += 0 if done else 1
    progress.update(len(table['uid']))
    tables.append(pq.read_table(shard_item(ctx, path) + '.parquet'))
    shards.append((path, n, len(table['uid'])))
    n += len(table['uid'])
    if tasks or 'clip_score' not in names:
      image_emb, text_emb = _stored_embeddings(ctx, path, table['uid'])  # [n, E] each
      if tasks:
        relevance_parts.append(_relevance_block(ctx, tasks, image_emb, text_emb))
      dot_parts.append(np.sum(image_emb * text_emb, axis=1))  # [n]

  features = pa.concat_tables(tables)
  samples = pq.read_table(ctx.path('ingest', ingest.SAMPLES), columns=['uid', 'sha256'])
  if features.column('uid').to_pylist() != samples.column('uid').to_pylist():
    raise ValueError(f"{ctx.path('ingest', ingest.SAMPLES)}: field 'uid' does not match the "
                     'features shards; rerun ingest')
  columns = {}
  if tasks:
    values = np.concatenate(relevance_parts)  # [N, 2T]
    for t, (prefix, _) in enumerate(tasks):
      columns[f'{prefix}_image'] = values[:, 2 * t]
      columns[f'{prefix}_text'] = values[:, 2 * t + 1]

  quality = (features.column('clip_score').to_numpy() if 'clip_score' in names else
             np.concatenate([np.zeros(0, np.float32), *dot_parts]))
  summary_kmeans = None
  if n:
    joint = _joint_source(ctx, shards, features.column('uid'))
    k = min(option(config, 'kmeans_k'), n)
    fit = kmeans.fit_stream(
        joint, n, k, option(config, 'kmeans_iters'), kmeans_key,
        init_sample=_init_rows(config, k),
        callback=lambda i, cos, share: logging.info(
            'features: k-means pass %d, mean cosine %.4f, %.0f%% of rows computed', i, cos,
            100 * share))
    columns['cluster'] = fit.assignment.astype(np.int32)
    columns['cluster_weight'] = kmeans.cluster_weights(fit.assignment, k,
                                                       option(config, 'alpha'))
    columns['semantic_duplicate'] = dedup.semdedup_flags_stream(
        joint, fit.assignment, quality, option(config, 'semdedup_eps'),
        scratch=ctx.path('features', SEMDEDUP_SCRATCH))
    summary_kmeans = {'k': k, 'objective': float(fit.objective)}
  else:
    columns.update(cluster=np.zeros(0, np.int32), cluster_weight=np.zeros(0, np.float32),
                   semantic_duplicate=np.zeros(0, bool))
  columns['exact_duplicate'] = dedup.exact_duplicate_flags(
      samples.column('sha256').to_pylist(), quality)
  for name, values in columns.items():
    features = features.append_column(name, pa.array(values))
  tmp = ctx.path('features', f'{FEATURES}.tmp-{os.getpid()}')
  pq.write_table(features, tmp)
  os.replace(tmp, ctx.path('features', FEATURES))
  logging.info('features: %d samples, %d columns', n, features.num_columns - 1)
  return {
      'samples': n,
      'shards': len(records),
      'shards_computed': computed,
      'operators': names,
      'operators_left_out': left_out,
      'operators_left_out_reason': left_out_why,
      'columns': features.column_names[1:],
      'kmeans': summary_kmeans,
      'semantic_duplicates': int(np.sum(columns['semantic_duplicate'])),
      'exact_duplicates': int(np.sum(columns['exact_duplicate'])),
      'skips': dict(sum((collections.Counter(r['skips']) for r in records),
                        collections.Counter())),
  }


def features_path(ctx) -> str | None:
  """features/features.parquet when the features stage is configured (and so has run)."""
  if 'features' not in pipeline.stage_names(ctx.config):
    return None
  return ctx.path('features', FEATURES)


def read_features(ctx) -> pa.Table:
  """ingest/samples.parquet, with every features column joined on by uid when the features
  stage is configured: the table every selector sees.

  The width and height operators repeat ingest's columns of the same name (they read
  them), so a features column whose name samples.parquet has is not joined twice.
  """
  table = ingest.samples(ctx)
  path = features_path(ctx)
  if path is None:
    return table
  extra = pq.read_table(path)
  extra = extra.select(['uid'] + [c for c in extra.column_names
                                  if c not in table.column_names])
  uids = table.column('uid').to_pylist()
  index = {u: i for i, u in enumerate(extra.column('uid').to_pylist())}
  missing = [u for u in uids if u not in index]
  if missing or extra.num_rows != len(uids):
    raise ValueError(f"{path}: field 'uid' does not match ingest/samples.parquet "
                     f'({len(missing)} uids missing, {extra.num_rows} rows for {len(uids)} '
                     'samples); rerun the features stage')
  extra = extra.take(pa.array([index[u] for u in uids], pa.int64()))
  for name in extra.column_names:
    if name != 'uid':
      table = table.append_column(name, extra.column(name))
  return table


def config_keys(config) -> tuple:
  # The encoder, the tasks and the embed settings come in through the embed stage.
  return ('seed', 'pool.format', 'pool.image_size', 'features')


STAGE = pipeline.Stage(name='features', run=run, inputs=('ingest', 'embed'),
                       config_keys=config_keys, version=2)
