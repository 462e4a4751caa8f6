"""Fuzzing the readers of outside data: the webdataset shard reader, the DataComp metadata
reader and the task loaders, on generated and mutated inputs.

The contract each is held to: it either returns (counting what it skipped) or raises its
documented error type, a ValueError whose message names the file; nothing else escapes
(no IndexError, KeyError, struct.error, UnicodeDecodeError, ...). A short run is part of
the default suite; `-m slow` runs many more examples.
"""

import collections
import io
import os
import tarfile
import tempfile

from hypothesis import HealthCheck, given, settings, strategies as st
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tads_jax.data import datacomp
from tads_jax.data import tar_writer
from tads_jax.data import tasks as tasks_lib
from tads_jax.data import webdataset

SHORT = settings(max_examples=25, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=600, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _png(seed: int, h: int = 6, w: int = 5) -> bytes:
  pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format='PNG')
  return out.getvalue()


def _valid_shard(path: str, n: int = 4) -> bytes:
  samples = [(f'{i:09d}', {'png': _png(i), 'txt': f'a red circle {i}',
                           'json': {'uid': f'{i:032x}'}}) for i in range(n)]
  tar_writer.write_shard(path, samples)
  with open(path, 'rb') as f:
    return f.read()


def _read_pool_shard(path: str) -> tuple[list, collections.Counter]:
  """iter_shard with decoding, as ingest and features read; only ShardError may escape."""
  skips = collections.Counter()
  try:
    samples = list(webdataset.iter_shard(path, skips, decode=True))
  except webdataset.ShardError as e:
    assert path in str(e)
    return [], skips
  for s in samples:
    assert len(s.uid) == 32 and s.caption and s.image.ndim == 3
  return samples, skips


mutation = st.one_of(
    st.tuples(st.just('flip'), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just('truncate'), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just('insert'), st.integers(0, 10_000), st.binary(min_size=1, max_size=64)),
)


def _mutate(data: bytes, mutations) -> bytes:
  data = bytearray(data)
  for kind, position, value in mutations:
    position = position % max(len(data), 1)
    if kind == 'flip':
      if data:
        data[position] ^= value
    elif kind == 'truncate':
      data = data[:position]
    else:
      data[position:position] = value
  return bytes(data)


def _check_mutated_shards(mutations_list):
  with tempfile.TemporaryDirectory() as tmp:
    original = _valid_shard(os.path.join(tmp, 'valid.tar'))
    path = os.path.join(tmp, 'mutated.tar')
    with open(path, 'wb') as f:
      f.write(_mutate(original, mutations_list))
    samples, skips = _read_pool_shard(path)
    assert len(samples) + sum(skips.values()) >= 0  # returned: counted or read


@SHORT
@given(st.lists(mutation, min_size=1, max_size=4))
def test_mutated_shards_are_read_skipped_or_refused(mutations):
  _check_mutated_shards(mutations)


@pytest.mark.slow
@LONG
@given(st.lists(mutation, min_size=1, max_size=8))
def test_mutated_shards_long(mutations):
  _check_mutated_shards(mutations)


member = st.tuples(
    st.text(alphabet='ab0.9_-/', min_size=1, max_size=12),                  # member name
    st.sampled_from(['png', 'jpg', 'txt', 'json', 'cls', 'webp', 'bin', '']),  # extension
    st.one_of(st.binary(max_size=40), st.just(b'{"uid": "' + b'f' * 32 + b'"}'),
              st.just(b'\xff\xfe caption'), st.just(b'')),
)


def _check_generated_tar(members, with_png):
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'gen.tar')
    with tarfile.open(path, 'w') as tar:
      for name, ext, data in members:
        if with_png and ext == 'png':
          data = _png(len(name))
        info = tarfile.TarInfo(f'{name}.{ext}' if ext else name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    _read_pool_shard(path)


@SHORT
@given(st.lists(member, max_size=8), st.booleans())
def test_generated_tars_are_read_skipped_or_refused(members, with_png):
  _check_generated_tar(members, with_png)


@pytest.mark.slow
@LONG
@given(st.lists(member, max_size=16), st.booleans())
def test_generated_tars_long(members, with_png):
  _check_generated_tar(members, with_png)


uid_value = st.one_of(st.text(alphabet='0123456789abcdefABCDEFxyz', max_size=34),
                      st.just('0' * 32), st.none())
emb_shape = st.sampled_from([(4, 8), (3, 8), (4, 1), (4,), (4, 8, 2), (0, 8)])
emb_fill = st.sampled_from(['normal', 'zero', 'nan', 'inf', 'int'])


def _check_datacomp(uids, shapes, fills, drop_key):
  with tempfile.TemporaryDirectory() as tmp:
    parquet = os.path.join(tmp, '00000000.parquet')
    pq.write_table(pa.table({'uid': pa.array(uids, pa.string()),
                             'text': [f'caption {i}' for i in range(len(uids))]}), parquet)
    arrays = {}
    for key, shape, fill in zip(('b32_img', 'b32_txt'), shapes, fills):
      values = np.random.default_rng(0).normal(size=shape)
      values = {'normal': values, 'zero': values * 0, 'nan': values * np.nan,
                'inf': values * np.inf, 'int': values.astype(np.int32)}[fill]
      arrays[key] = values.astype(np.int32 if fill == 'int' else np.float16)
    if drop_key:
      arrays.pop('b32_txt')
    with open(datacomp.npz_path(parquet), 'wb') as f:
      np.savez(f, **arrays)
    try:
      shard = datacomp.read_metadata(parquet, model='b32')
    except ValueError as e:
      assert tmp in str(e)  # names the file
      return
    n = len(shard.uids)
    assert shard.image_emb.shape[0] == shard.text_emb.shape[0] == n == len(uids)
    assert np.all(np.isfinite(shard.image_emb)) and np.all(np.isfinite(shard.text_emb))


@SHORT
@given(st.lists(uid_value, min_size=0, max_size=4), st.tuples(emb_shape, emb_shape),
       st.tuples(emb_fill, emb_fill), st.booleans())
def test_datacomp_metadata_is_read_or_refused_naming_the_file(uids, shapes, fills, drop):
  _check_datacomp(uids, shapes, fills, drop)


@pytest.mark.slow
@LONG
@given(st.lists(uid_value, min_size=0, max_size=6), st.tuples(emb_shape, emb_shape),
       st.tuples(emb_fill, emb_fill), st.booleans())
def test_datacomp_metadata_long(uids, shapes, fills, drop):
  _check_datacomp(uids, shapes, fills, drop)


label = st.one_of(st.sampled_from(['0', '1', '2', '-1', 'cat', '1.5', '', ' 1 ', '99']),
                  st.binary(max_size=6).map(lambda b: b.decode('latin-1')))


def _check_task_shard(labels, corrupt):
  spec = tasks_lib.parse_tasks([dict(name='t', kind='classification',
                                     classnames=['a', 'b', 'c'], templates=['{}'],
                                     train='x.tar', eval='x.tar')])[0]
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'task.tar')
    samples = [(f'{i:04d}', {'png': b'not an image' if corrupt and i == 0 else _png(i),
                             'cls': value}) for i, value in enumerate(labels)]
    tar_writer.write_shard(path, samples)
    spec = spec.__class__(**{**spec.__dict__, 'train': path})
    try:
      split = tasks_lib.load_split(spec, 'train', image_size=8)
    except ValueError as e:
      assert path in str(e) or 'task' in str(e)
      return
    assert split.images.shape[1:] == (8, 8, 3)
    assert set(split.labels.tolist()) <= {0, 1, 2}


@SHORT
@given(st.lists(label, min_size=0, max_size=4), st.booleans())
def test_task_shards_are_loaded_or_refused_naming_the_file(labels, corrupt):
  _check_task_shard(labels, corrupt)


@pytest.mark.slow
@LONG
@given(st.lists(label, min_size=0, max_size=8), st.booleans())
def test_task_shards_long(labels, corrupt):
  _check_task_shard(labels, corrupt)
