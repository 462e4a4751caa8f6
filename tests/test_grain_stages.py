"""The stages' image decode through Grain (grain_source.DecodedShards), on a tiny webdataset
pool with broken samples: the features stage's per-shard columns and the pixel proxy's image
cache are the same with 0 and 2 decode workers, and match what webdataset.iter_shard reads,
skip counts included.

The reference encoder is a random tiny CLIP saved as a Hugging Face folder: nothing is
trained, since the outputs only have to be identical and match the independent reading.
"""

import collections
import glob
import json
import os
import shutil
import tarfile

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

from tads_jax import config as config_lib
from tads_jax import distributed
from tads_jax import main
from tads_jax import pipeline
from tads_jax import stages
from tads_jax.data import grain_source
from tads_jax.data import images as images_lib
from tads_jax.data import subset as subset_lib
from tads_jax.data import tar_writer
from tads_jax.data import webdataset
from tads_jax.models import bpe, clip, hf_export
from tads_jax.scoring import quality
from tads_jax.stages import evaluate
from tads_jax.stages import features
from tads_jax.stages import ingest
from conftest import default, validate
import test_webdataset

SIZE = 16  # pool.image_size
PIXEL_SIZE = 12  # the pixel proxy's image size
OPERATORS = ('width', 'sharpness', 'entropy', 'words', 'clip_score', 'flipped_clip_score')


_pixels = test_webdataset._pixels  # pylint: disable=protected-access
_encode = test_webdataset._encode  # pylint: disable=protected-access
_cut = test_webdataset._cut  # pylint: disable=protected-access


def _sample(i, **override):
  """A sample with an image of its own size (the flipped originals differ in shape)."""
  files = {'jpg': _encode(_pixels(i, 20 + i % 7, 24 + 3 * i % 11), 'JPEG', quality=90),
           'txt': f'a photo of thing {i}', 'json': {'uid': f'{i:032x}'}}
  files.update(override)
  return f'{i:09d}', {k: v for k, v in files.items() if v is not None}


def _pool(folder) -> list:
  """Three tars: broken samples in the first, a repeated uid in the second, the third cut
  inside its last image."""
  os.makedirs(folder)
  bad_jpeg = b'\xff\xd8\xff\xe0 not a jpeg'
  first = [_sample(i) for i in range(11)] + [
      _sample(100, jpg=bad_jpeg),                        # corrupt, its uid ingested by none
      _sample(101, txt=None),                            # missing_caption
      _sample(102, jpg=bad_jpeg, json={'uid': f'{103:032x}'}),  # corrupt, uid of the next
      _sample(103)] + [_sample(i) for i in range(11, 14)]
  second = [_sample(i) for i in range(20, 33)] + [
      _sample(33, json={'uid': f'{20:032x}'})]            # a later copy of uid 20
  paths = [os.path.join(folder, f'{k:05d}.tar') for k in range(3)]
  tar_writer.write_shard(paths[0], first)
  tar_writer.write_shard(paths[1], second)
  full = os.path.join(folder, 'full.tmp')
  tar_writer.write_shard(full, [_sample(i) for i in range(40, 50)])
  with tarfile.open(full) as tar:
    last = next(m for m in tar.getmembers() if m.name == '000000049.jpg')
  _cut(full, paths[2], last.offset_data + last.size // 2)
  os.remove(full)
  return paths


def _reference_clip(folder):
  """A random tiny CLIP with a BPE learned on a few captions, as a Hugging Face folder."""
  captions = [f'a photo of thing {i}' for i in range(60)]
  vocab = bpe.train_bpe(captions, 600, folder, model_max_length=16)
  config = clip.get_config('tiny', vocab_size=len(vocab), eos_token_id=len(vocab) - 1)
  params = clip.init_params(clip.CLIP(config), jax.random.PRNGKey(0))
  return hf_export.save_hf_checkpoint(folder, config, params, tokenizer_dir=folder)


def _config(shards, checkpoint, workers):
  c = default.get_config()
  c.stages = ('ingest', 'encoder', 'embed', 'features')
  c.pool.format = 'webdataset'
  c.pool.shards = shards
  c.pool.image_size = SIZE
  c.encoder.checkpoint = checkpoint
  del c['tasks']  # the default holds a string; a list is a different type
  c.tasks = []
  c.selector.name = 'random'
  c.embed.batch_size = 16
  c.features.update(dict(operators=OPERATORS, chunk=8, kmeans_k=2, kmeans_iters=1))
  c.data.grain_workers = workers
  return c


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  """(config maker, workdir, pool tars): the stages up to features run with 0 workers."""
  root = tmp_path_factory.mktemp('grain_stages')
  paths = _pool(str(root / 'pool'))
  checkpoint = _reference_clip(str(root / 'clip'))
  make = lambda workers: _config(os.path.join(str(root / 'pool'), '*.tar'), checkpoint,
                                 workers)
  workdir = str(root / 'work')
  status = main.run(make(0), workdir)
  assert status['features'] == 'ran'
  return make, workdir, paths


def _shard_files(workdir) -> dict:
  folder = os.path.join(workdir, 'features', 'shards')
  return {name: os.path.join(folder, name) for name in sorted(os.listdir(folder))}


def _record(workdir, stage, path) -> dict:
  """The record a stage wrote beside a shard's item."""
  with open(os.path.join(workdir, stage, 'shards', ingest.item_name(path) + '.json')) as f:
    return json.load(f)


def _iter_shard(path):
  """(usable samples, skips) as iter_shard(decode=True) reads the tar."""
  skips = collections.Counter()
  return list(webdataset.iter_shard(path, skips, decode=True)), skips


def test_features_columns_and_skips_are_the_same_with_two_workers(world, tmp_path):
  make, workdir, paths = world
  zero = _shard_files(workdir)
  assert len(zero) == 2 * len(paths)
  work = str(tmp_path / 'w')
  shutil.copytree(workdir, work)
  shutil.rmtree(os.path.join(work, 'features'))
  assert main.run(make(2), work)['features'] == 'ran'  # not in the fingerprint: reruns
  two = _shard_files(work)
  assert list(two) == list(zero)
  for name in zero:
    if name.endswith('.parquet'):
      assert pq.read_table(two[name]).equals(pq.read_table(zero[name])), name
    else:
      with open(zero[name]) as a, open(two[name]) as b:
        first, second = json.load(a), json.load(b)
      assert second['skips'] == first['skips'], name
  # Each shard's skips are iter_shard's over its whole tar, as the reader before counted.
  for path in paths:
    assert _record(workdir, 'features', path)['skips'] == dict(_iter_shard(path)[1]), path
  assert _record(workdir, 'features', paths[0])['skips'] == {'corrupt_image': 2,
                                                             'missing_caption': 1}
  assert _record(workdir, 'features', paths[2])['skips'] == {'truncated_tar': 1}


def test_features_image_columns_match_images_read_with_iter_shard(world):
  _, workdir, paths = world
  table = pq.read_table(os.path.join(workdir, 'features', 'features.parquet'))
  images = {}
  for path in paths:
    for sample in _iter_shard(path)[0]:
      if sample.uid not in images:  # ingest kept the first copy of a uid
        images[sample.uid] = images_lib.resize_center_crop(sample.image, SIZE)
  assert table.column('uid').to_pylist() == list(images)
  images = list(images.values())
  expected = np.asarray(quality.sharpness(np.stack(images).astype(np.float32) / 255.0))
  np.testing.assert_allclose(table.column('sharpness').to_numpy(), expected, rtol=1e-4,
                             atol=1e-7)
  flipped = table.column('flipped_clip_score').to_numpy()
  assert np.all(np.isfinite(flipped)) and not np.allclose(
      flipped, table.column('clip_score').to_numpy())


def test_a_process_decodes_only_the_shards_it_owns(world, tmp_path, monkeypatch):
  """Shards split over processes by distributed.owns, not a second time by Grain: a
  process owning shards 1 and 2 (2 workers) writes the columns one process wrote."""
  make, workdir, paths = world
  zero = _shard_files(workdir)
  work = str(tmp_path / 'w')
  shutil.copytree(workdir, work)
  shutil.rmtree(os.path.join(work, 'features', 'shards'))
  monkeypatch.setattr(distributed, 'owns', lambda index: index > 0)
  ctx = pipeline.Context(config=make(2), workdir=work)
  records, computed, _ = features._shard_pass(ctx, list(OPERATORS))  # pylint: disable=protected-access
  assert computed == 2 and [r['path'] for r in records] == paths[1:]
  mine = _shard_files(work)
  assert sorted(mine) == sorted(n for n in zero if not n.startswith('00000.tar'))
  for name in mine:
    if name.endswith('.parquet'):
      assert pq.read_table(mine[name]).equals(pq.read_table(zero[name])), name


def _pixel_cache(make, workdir, workers):
  """The pixel proxy's cache of every shard, decoded with `workers`: ({item: array},
  {item: record}, cache summary)."""
  ctx = pipeline.Context(config=make(workers), workdir=workdir)
  folder = evaluate.pixel_cache_dir(ctx, PIXEL_SIZE)
  shutil.rmtree(folder, ignore_errors=True)
  uids = pq.read_table(ctx.path('ingest', ingest.SAMPLES)).column('uid').to_pylist()
  subset = np.sort(subset_lib.uids_to_array(uids))  # every sample once
  _, rows, captions, pool, cache = evaluate.pixel_data(ctx, subset, lambda c: c, PIXEL_SIZE)
  assert pool == len(uids) and len(captions) == len(uids)
  arrays = {f: np.load(os.path.join(folder, f)) for f in sorted(os.listdir(folder))
            if f.endswith('.npy')}
  records = {}
  for f in sorted(glob.glob(os.path.join(folder, '*.json'))):
    with open(f) as g:
      records[os.path.basename(f)] = json.load(g)
  return arrays, records, cache, np.asarray(rows[np.arange(len(rows))])


def test_pixel_cache_is_the_same_with_two_workers_and_counts_as_embed(world):
  make, workdir, paths = world
  arrays, records, cache, rows = _pixel_cache(make, workdir, 0)
  arrays2, records2, cache2, rows2 = _pixel_cache(make, workdir, 2)
  assert list(arrays) == list(arrays2) and records == records2
  for name in arrays:
    np.testing.assert_array_equal(arrays2[name], arrays[name], err_msg=name)
  np.testing.assert_array_equal(rows2, rows)
  assert cache['shards_decoded'] == cache2['shards_decoded'] == len(paths)
  # The rows are iter_shard's images at the proxy's size, first copy of each uid, in
  # ingest order; the skips are the embed stage's (a corrupt image counts only when its
  # uid was ingested, so not sample 100's).
  expected, seen = [], set()
  for path in paths:
    for sample in _iter_shard(path)[0]:
      if sample.uid not in seen:
        seen.add(sample.uid)
        expected.append(images_lib.resize_center_crop(sample.image, PIXEL_SIZE))
  np.testing.assert_array_equal(rows, np.stack(expected))
  for path in paths:
    assert (records[ingest.item_name(path) + '.json']['skips'] ==
            _record(workdir, 'embed', path)['skips']), path
  assert cache['skips'] == {'corrupt_image': 1, 'missing_caption': 1, 'truncated_tar': 1}


@pytest.mark.parametrize('value,message', [
    (-1, r'config.data.grain_workers: must be >= 0, got -1$'),
    ('two', r"config.data.grain_workers: expected an integer, got str 'two'$"),
    (True, r'config.data.grain_workers: expected an integer, got True$'),
])
def test_bad_grain_workers_fail_validation_in_one_line_naming_the_field(value, message):
  c = default.get_config()
  del c.data['grain_workers']  # the field holds an int; another type needs a new field
  c.data.grain_workers = value
  with pytest.raises(config_lib.ConfigError, match=message) as error:
    validate(c)
  assert str(error.value).startswith('config.data.grain_workers: ')
  assert '\n' not in str(error.value)


def test_grain_workers_are_in_no_fingerprint():
  """The worker count changes how fast images are decoded, not what any stage writes."""
  c, other = default.get_config(), default.get_config()
  other.data.grain_workers = 3
  c.evaluate.proxy = other.evaluate.proxy = 'pixels'
  upstream = {stage.name: stage.name for stage in stages.STAGES}
  for stage in stages.STAGES:
    assert (pipeline.fingerprint(stage, other, upstream) ==
            pipeline.fingerprint(stage, c, upstream)), stage.name
  validate(other)
  assert grain_source.config_worker_count(other) == 3
  del other['data']  # a config from before the block: no workers
  validate(other)
  assert grain_source.config_worker_count(other) == 0
