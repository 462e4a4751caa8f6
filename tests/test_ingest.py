"""ingest.rows_by_shard: per-shard rows of samples.parquet, streamed in shard order."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tads_jax import pipeline
from tads_jax.stages import ingest


def _write(tmp_path, shards):
  os.makedirs(tmp_path / 'ingest', exist_ok=True)
  pq.write_table(pa.table({'uid': [f'u{i}' for i in range(len(shards))], 'shard': shards,
                           'caption': [f'c{i}' for i in range(len(shards))]}),
                 str(tmp_path / 'ingest' / ingest.SAMPLES))
  return pipeline.Context(config=None, workdir=str(tmp_path))


def test_shards_without_rows_get_empty_lists(tmp_path):
  ctx = _write(tmp_path, ['b', 'b', 'd'])
  got = list(ingest.rows_by_shard(ctx, ['a', 'b', 'c', 'd', 'e'], ('uid',)))
  assert got == [('a', {'uid': []}), ('b', {'uid': ['u0', 'u1']}), ('c', {'uid': []}),
                 ('d', {'uid': ['u2']}), ('e', {'uid': []})]


def test_out_of_order_or_unknown_shards_are_errors(tmp_path):
  ctx = _write(tmp_path, ['b', 'a'])
  with pytest.raises(ValueError, match="not in shard order at 'a'"):
    list(ingest.rows_by_shard(ctx, ['a', 'b'], ('uid',)))
  ctx = _write(tmp_path, ['z'])
  with pytest.raises(ValueError, match="names 'z'"):
    list(ingest.rows_by_shard(ctx, ['a'], ('uid', 'caption')))
