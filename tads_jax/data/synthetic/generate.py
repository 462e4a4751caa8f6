"""Writing the world: pool and trusted shards in img2dataset's layout, task shards,
ground_truth.parquet, tasks.json and world.json.

Shards that exist are kept and every file is written with pipeline.atomic_write, so that a
run killed anywhere is completed by the next one, and the same config gives the same bytes.
"""

import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tads_jax import pipeline
from tads_jax.data import tar_writer
from tads_jax.data.synthetic.captions import _caption_of
from tads_jax.data.synthetic.pool import _make_image, plan_pool, uid_of
from tads_jax.data.synthetic.randomness import _S, _TASK_DOMAIN, _TRUSTED, _choice, _uniform
from tads_jax.data.synthetic.render import _background, _draw_object, _encode_canvas
from tads_jax.data.synthetic.scenes import _draw_scenes, _lists, _scene
from tads_jax.data.synthetic.vocabulary import (NOISE_TYPES, ON_TASK_COLORS, ON_TASK_SHAPES,
                                                ON_TASK_TEXTURES)
from tads_jax.data.synthetic.world_config import WorldConfig, WorldError

VERSION = 1  # in world.json: a directory holding another version is refused, not mixed


def _write_json(path: str, obj) -> None:
  with pipeline.atomic_write(path) as tmp, open(tmp, 'wb') as f:
    f.write((json.dumps(obj, indent=2, sort_keys=True) + '\n').encode())


def _shard_done(path_tar: str) -> bool:
  base = path_tar[:-len('.tar')]
  return all(os.path.exists(p) for p in (path_tar, base + '.parquet', base + '_stats.json'))


def _write_img2dataset_shard(path_tar: str, shard: int, samples: list) -> None:
  """Tar, then parquet, then stats: a shard is complete once its stats file exists.

  samples: (uid, caption, image bytes, ext, width, height) per sample.
  """
  keys = [f'{shard:05d}{k:04d}' for k in range(len(samples))]
  members = []
  for key, (uid, caption, data, ext, w, h) in zip(keys, samples):
    meta = {'uid': uid, 'key': key, 'caption': caption, 'width': w, 'height': h,
            'sha256': hashlib.sha256(data).hexdigest(), 'status': 'success',
            'error_message': None}
    members.append((key, {ext: data, 'txt': caption, 'json': meta}))
  tar_writer.write_shard(path_tar, members)
  base = path_tar[:-len('.tar')]
  n = len(samples)
  with pipeline.atomic_write(base + '.parquet') as tmp:
    pq.write_table(pa.table({
        'key': pa.array(keys, pa.string()),
        'uid': pa.array([s[0] for s in samples], pa.string()),
        'caption': pa.array([s[1] for s in samples], pa.string()),
        'width': pa.array([s[4] for s in samples], pa.int32()),
        'height': pa.array([s[5] for s in samples], pa.int32()),
        'status': pa.array(['success'] * n, pa.string()),
    }), tmp)
  _write_json(base + '_stats.json', {
      'count': n, 'successes': n, 'failed_to_download': 0, 'failed_to_resize': 0,
      'status_dict': {'success': n}})


_GT_SCHEMA = pa.schema([
    ('uid', pa.string()), ('key', pa.string()), ('shard', pa.string()),
    ('shape', pa.string()), ('color', pa.string()), ('texture', pa.string()),
    ('size', pa.string()), ('on_task', pa.bool_()), ('noise', pa.string()),
    ('dup_of', pa.string()), ('true_caption', pa.string()), ('caption', pa.string()),
    ('image_format', pa.string()),
])


def _pool_shard(out_dir: str, cfg: WorldConfig, shard: int) -> dict:
  """Writes pool shard `shard` unless complete; returns its ground-truth columns."""
  start = shard * cfg.shard_size
  idx = np.arange(start, min(start + cfg.shard_size, cfg.num_samples))
  plan = plan_pool(cfg, idx)
  name = f'{shard:08d}.tar'
  path = os.path.join(out_dir, 'pool', name)
  written = not _shard_done(path)
  if written:
    samples = []
    for p in plan:
      data, w, h = _make_image(p['recipe'], cfg.image_size, cfg.seed)
      samples.append((p['uid'], p['caption'], data, p['image_format'], w, h))
    _write_img2dataset_shard(path, shard, samples)
  columns = {'uid': [p['uid'] for p in plan],
             'key': [f'{shard:05d}{k:04d}' for k in range(len(plan))],
             'shard': [name] * len(plan)}
  for c in _GT_SCHEMA.names[3:]:
    columns[c] = [p[c] for p in plan]
  return {'path': path, 'written': written, 'columns': columns}


def _trusted_shard(out_dir: str, cfg: WorldConfig, shard: int) -> dict:
  """Clean pairs (on- and off-task), like the curated set DFN trains its filter on."""
  path = os.path.join(out_dir, 'trusted', f'{shard:08d}.tar')
  if _shard_done(path):
    return {'path': path, 'written': False}
  start = shard * cfg.shard_size
  idx = np.arange(start, min(start + cfg.shard_size, cfg.trusted_size))
  rows = _lists(_draw_scenes(cfg.seed, _TRUSTED, idx, cfg.offtask_fraction,
                             offtask_attributes=cfg.offtask_attributes))
  samples = []
  for i, index in enumerate(idx.tolist()):
    scene = _scene(rows, i)
    data = _encode_canvas(_draw_object(_background(scene, cfg.image_size), scene), 'jpg',
                          cfg.jpeg_quality)
    samples.append((uid_of(cfg.seed, index, 'trusted'), _caption_of(rows, i), data, 'jpg',
                    cfg.image_size, cfg.image_size))
  _write_img2dataset_shard(path, shard, samples)
  return {'path': path, 'written': True}


_CLASS_ATTR = {'shapes': ('shape', ON_TASK_SHAPES), 'colors': ('color', ON_TASK_COLORS),
               'textures': ('texture', ON_TASK_TEXTURES)}
TASK_TEMPLATES = {
    'shapes': ('a photo of a {}.', 'a picture of a {}.', 'a drawing of a {} shape.',
               'an icon of a {}.', 'a {} on a grey background.', 'clipart of a {}.'),
    'colors': ('a photo of a {} object.', 'a {} shape.', 'something {}.',
               'a drawing in the colour {}.', 'a {} icon.', 'clipart in {}.'),
    'textures': ('a photo of a {} shape.', 'a {} pattern.', 'an object with a {} texture.',
                 'a {} icon.', 'clipart of a {} object.'),
}


def _task_size(cfg: WorldConfig, task: str, split: str) -> int:
  if task in _CLASS_ATTR:
    per_class = cfg.train_per_class if split == 'train' else cfg.eval_per_class
    return per_class * len(_CLASS_ATTR[task][1])
  return cfg.retrieval_train if split == 'train' else cfg.retrieval_eval


def _task_shard(out_dir: str, cfg: WorldConfig, task: str, split: str, shard: int) -> dict:
  """Clean on-task renders (their own draws, not pool samples) as a webdataset shard."""
  path = os.path.join(out_dir, 'tasks', task, split, f'{shard:08d}.tar')
  if os.path.exists(path):
    return {'path': path, 'written': False}
  domain = _TASK_DOMAIN[(task, split)]
  n = _task_size(cfg, task, split)
  idx = np.arange(shard * cfg.shard_size, min((shard + 1) * cfg.shard_size, n))
  # Shapes are always on-task; a classification attribute cycles through the classes.
  force = {'shape': _choice(_uniform(cfg.seed, domain, idx, _S.SHAPE), len(ON_TASK_SHAPES))}
  if task in _CLASS_ATTR:
    attr, classes = _CLASS_ATTR[task]
    force[attr] = idx % len(classes)
  rows = _lists(_draw_scenes(cfg.seed, domain, idx, 0.0, force=force))
  members = []
  for i, index in enumerate(idx.tolist()):
    key = f'{shard:05d}{i:04d}'
    scene = _scene(rows, i)
    data = _encode_canvas(_draw_object(_background(scene, cfg.image_size), scene), 'jpg',
                          cfg.jpeg_quality)
    if task in _CLASS_ATTR:
      members.append((key, {'jpg': data, 'cls': rows[attr][i]}))
    else:
      captions = [_caption_of(rows, i)]
      for c in range(1, cfg.captions_per_image):
        # Each further caption: the same scene in new words (draws of its own domain).
        draws = _uniform(cfg.seed, domain + 1000 * c, np.full(7, index),
                         np.arange(_S.TEMPLATE, _S.FILLER + 1))
        captions.append(_caption_of(dict(rows, draws={i: draws.tolist()}), i))
      members.append((key, {'jpg': data, 'txt': '\n'.join(captions)}))
  tar_writer.write_shard(path, members)
  return {'path': path, 'written': True}


def _num_shards(n: int, shard_size: int) -> int:
  return -(-n // shard_size)


def _task_spec(cfg: WorldConfig, task: str) -> dict:
  if task in _CLASS_ATTR:
    spec = {'name': task, 'kind': 'classification', 'classnames': list(_CLASS_ATTR[task][1]),
            'templates': list(TASK_TEMPLATES[task])}
  else:
    spec = {'name': task, 'kind': 'retrieval', 'classnames': [], 'templates': []}
  for split in ('train', 'eval'):
    last = _num_shards(_task_size(cfg, task, split), cfg.shard_size) - 1
    spec[split] = f'tasks/{task}/{split}/{{{0:08d}..{last:08d}}}.tar'
  return spec


def _call(job):
  fn, args = job
  return fn(*args)


def generate_world(out_dir: str, cfg: WorldConfig, num_workers: int = 1,
                   verbose: bool = False) -> dict:
  """Writes (or completes) the world in `out_dir`; returns counts and paths.

  Shards that exist are kept; everything else is (re)written. A directory holding a world
  made from another config is refused rather than mixed. With num_workers > 1, shards are
  made in that many spawned processes; the output is the same.
  """
  if not isinstance(cfg, WorldConfig):
    raise ValueError(f'generate_world: cfg must be a WorldConfig, got {type(cfg).__name__}')
  if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
    raise ValueError(f'generate_world: num_workers must be an integer >= 1, got '
                     f'{num_workers!r}')
  os.makedirs(out_dir, exist_ok=True)
  world_path = os.path.join(out_dir, 'world.json')
  if os.path.exists(world_path):
    try:
      with open(world_path) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise WorldError(f'{world_path}: unreadable ({e}); delete {out_dir} to regenerate') from e
    old_cfg = old.get('config', {}) if isinstance(old, dict) else {}
    new_cfg = cfg.to_dict()
    if not isinstance(old, dict) or old.get('version') != VERSION or old_cfg != new_cfg:
      changed = sorted(k for k in set(old_cfg) | set(new_cfg)
                       if old_cfg.get(k) != new_cfg.get(k)) or ['version']
      raise WorldError(f'{world_path}: {out_dir} holds a world made with another config '
                       f'(differs in: {", ".join(changed)}); use a new directory')
  else:  # first, so that an interrupted run is recognized as this config's
    _write_json(world_path, {'version': VERSION, 'seed': cfg.seed, 'config': cfg.to_dict(),
                             'complete': False})
  for sub in ['pool', 'trusted'] + [os.path.join('tasks', t, s) for t in cfg.tasks
                                    for s in ('train', 'eval')]:
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)

  pool_jobs = [(_pool_shard, (out_dir, cfg, s))
               for s in range(_num_shards(cfg.num_samples, cfg.shard_size))]
  other_jobs = [(_trusted_shard, (out_dir, cfg, s))
                for s in range(_num_shards(cfg.trusted_size, cfg.shard_size))]
  other_jobs += [(_task_shard, (out_dir, cfg, t, split, s)) for t in cfg.tasks
                 for split in ('train', 'eval')
                 for s in range(_num_shards(_task_size(cfg, t, split), cfg.shard_size))]
  executor = None
  if num_workers > 1:
    executor = concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=multiprocessing.get_context('spawn'))
    results = executor.map(_call, pool_jobs + other_jobs)
  else:
    results = map(_call, pool_jobs + other_jobs)

  counts = {name: 0 for name in NOISE_TYPES}
  formats, on_task, written, paths = {}, 0, collections.Counter(), collections.defaultdict(list)
  gt_path = os.path.join(out_dir, 'ground_truth.parquet')
  try:
    with pipeline.atomic_write(gt_path) as gt_tmp, pq.ParquetWriter(gt_tmp, _GT_SCHEMA) as gt:
      for k, ((fn, _), result) in enumerate(zip(pool_jobs + other_jobs, results)):
        kind = {_pool_shard: 'pool', _trusted_shard: 'trusted', _task_shard: 'tasks'}[fn]
        paths[kind].append(result['path'])
        written[kind] += result['written']
        if kind == 'pool':
          columns = result['columns']
          gt.write_table(pa.table(columns, schema=_GT_SCHEMA))
          for noise, fmt, on in zip(columns['noise'], columns['image_format'],
                                    columns['on_task']):
            counts[noise] += 1
            formats[fmt] = formats.get(fmt, 0) + 1
            on_task += on
        if verbose:
          print(f'{kind}: {os.path.relpath(result["path"], out_dir)} '
                f'{"written" if result["written"] else "kept"} '
                f'({k + 1}/{len(pool_jobs) + len(other_jobs)})', file=sys.stderr, flush=True)
  finally:
    if executor is not None:
      executor.shutdown(cancel_futures=True)

  tasks_path = os.path.join(out_dir, 'tasks.json')
  _write_json(tasks_path, [_task_spec(cfg, t) for t in cfg.tasks])
  formats = dict(sorted(formats.items()))
  off_task = cfg.num_samples - on_task
  _write_json(world_path, {'version': VERSION, 'seed': cfg.seed, 'config': cfg.to_dict(),
                           'complete': True, 'counts': counts, 'on_task': on_task,
                           'off_task': off_task, 'formats': formats})
  return {
      'out_dir': out_dir, 'num_samples': cfg.num_samples, 'counts': counts,
      'on_task': on_task, 'off_task': off_task, 'formats': formats,
      'shards_written': written['pool'],
      'shards_kept': len(pool_jobs) - written['pool'],
      'trusted_shards_written': written['trusted'], 'task_shards_written': written['tasks'],
      'paths': {'pool': paths['pool'], 'trusted': paths['trusted'], 'tasks_json': tasks_path,
                'ground_truth': gt_path, 'world_json': world_path},
  }
