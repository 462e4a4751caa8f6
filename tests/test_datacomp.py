import os

import numpy as np
import pytest

from tads_jax.data import datacomp


def _table(n, uid_offset=0):
  return {
      'uid': [f'{i + uid_offset:032X}' for i in range(n)],  # upper case: lower-cased on load
      'url': [f'http://x/{i}' for i in range(n)],
      'text': [f'text {i}' for i in range(n)],
      'original_width': list(range(100, 100 + n)),
      'original_height': list(range(200, 200 + n)),
      'clip_b32_similarity_score': [0.3] * n,
      'clip_l14_similarity_score': [0.25] * n,
      'sha256': ['0' * 64] * n,
  }


def _embeddings(n, seed=0, d=(8, 12)):
  rng = np.random.default_rng(seed)
  return {'b32_img': rng.normal(size=(n, d[0])), 'b32_txt': rng.normal(size=(n, d[0])),
          'l14_img': rng.normal(size=(n, d[1])), 'l14_txt': rng.normal(size=(n, d[1]))}


def _write(tmp_path, name='00000000', n=5, **kw):
  path = str(tmp_path / f'{name}.parquet')
  emb = kw.pop('emb', None) or _embeddings(n)
  datacomp.write_metadata(path, _table(n), emb, **kw)
  return path, emb


def test_round_trip_normalizes_float16_to_unit_float32(tmp_path):
  path, emb = _write(tmp_path)
  assert np.load(datacomp.npz_path(path))['b32_img'].dtype == np.float16
  shard = datacomp.read_metadata(path)
  assert shard.uids == [f'{i:032x}' for i in range(5)]
  assert shard.image_emb.dtype == np.float32 and shard.image_emb.shape == (5, 8)
  np.testing.assert_allclose(np.linalg.norm(shard.image_emb, axis=1), 1, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(shard.text_emb, axis=1), 1, atol=1e-6)
  # Same direction as the float16 values written, normalized here in float64.
  ref = emb['b32_txt'].astype(np.float16).astype(np.float64)
  ref /= np.linalg.norm(ref, axis=1, keepdims=True)
  np.testing.assert_allclose(shard.text_emb, ref, atol=1e-6)
  assert shard.valid.all()
  assert shard.table.column('text').to_pylist()[2] == 'text 2'
  assert set(datacomp.COLUMNS) <= set(shard.table.column_names)


def test_l14_and_column_subset(tmp_path):
  path, emb = _write(tmp_path)
  shard = datacomp.read_metadata(path, model='l14', columns=['text'])
  assert shard.image_emb.shape == (5, 12)
  assert shard.table.column_names == ['uid', 'text']
  ref = emb['l14_img'].astype(np.float16).astype(np.float64)
  np.testing.assert_allclose(shard.image_emb, ref / np.linalg.norm(ref, axis=1)[:, None],
                             atol=1e-6)


def test_bad_rows_are_masked_not_raised(tmp_path):
  emb = _embeddings(6)
  emb['b32_img'][1, 3] = np.nan
  emb['b32_txt'][2, 0] = np.inf
  emb['b32_img'][4] = 0.0
  path, _ = _write(tmp_path, n=6, emb=emb)
  shard = datacomp.read_metadata(path)
  np.testing.assert_array_equal(shard.valid, [True, False, False, True, False, True])
  assert np.isfinite(shard.image_emb).all() and np.isfinite(shard.text_emb).all()
  np.testing.assert_array_equal(shard.image_emb[~shard.valid], 0)
  np.testing.assert_array_equal(shard.text_emb[~shard.valid], 0)
  np.testing.assert_allclose(np.linalg.norm(shard.image_emb[shard.valid], axis=1), 1,
                             atol=1e-6)


def test_list_metadata(tmp_path):
  a, _ = _write(tmp_path, '00000000')
  b, _ = _write(tmp_path, '00000001')
  assert datacomp.list_metadata(str(tmp_path / '*.parquet')) == [a, b]
  assert datacomp.list_metadata(str(tmp_path / '{00000001,00000000}.parquet')) == [b, a]
  (tmp_path / '00000002.parquet').write_bytes(b'')
  with pytest.raises(ValueError, match='00000002.npz'):
    datacomp.list_metadata(str(tmp_path / '*.parquet'))
  with pytest.raises(ValueError, match='.parquet'):
    datacomp.list_metadata(str(tmp_path / '00000000.npz'))


def test_npz_errors_name_file_and_key(tmp_path):
  path, emb = _write(tmp_path)
  npz = datacomp.npz_path(path)
  np.savez(npz, b32_img=emb['b32_img'].astype(np.float16))
  with pytest.raises(ValueError, match=r"00000000\.npz.*'b32_txt'"):
    datacomp.read_metadata(path)
  np.savez(npz, b32_img=emb['b32_img'][:4], b32_txt=emb['b32_txt'][:4])
  with pytest.raises(ValueError, match=r"00000000\.npz.*'b32_img'.*\(4, 8\)"):
    datacomp.read_metadata(path)
  np.savez(npz, b32_img=emb['b32_img'], b32_txt=emb['l14_txt'])
  with pytest.raises(ValueError, match=r'00000000\.npz.*b32_img dim 8 != b32_txt dim 12'):
    datacomp.read_metadata(path)
  os.remove(npz)
  with pytest.raises(ValueError, match=r'00000000\.npz'):
    datacomp.read_metadata(path)


def test_parquet_errors_name_file_and_field(tmp_path):
  path = str(tmp_path / 'x.parquet')
  table = _table(3)
  del table['uid']
  datacomp.write_metadata(path, table, _embeddings(3))
  with pytest.raises(ValueError, match=r'x\.parquet.*"uid"'):
    datacomp.read_metadata(path)
  table = _table(3)
  table['uid'][1] = 'not-a-uid'
  datacomp.write_metadata(path, table, _embeddings(3))
  with pytest.raises(ValueError, match=r"x\.parquet: row 1 field \"uid\": 'not-a-uid'"):
    datacomp.read_metadata(path)
  table['uid'][1] = None
  datacomp.write_metadata(path, table, _embeddings(3))
  with pytest.raises(ValueError, match='row 1'):
    datacomp.read_metadata(path)
  (tmp_path / 'y.parquet').write_bytes(b'garbage')
  with pytest.raises(ValueError, match=r'y\.parquet'):
    datacomp.read_metadata(str(tmp_path / 'y.parquet'))


def test_write_metadata_checks_rows(tmp_path):
  with pytest.raises(ValueError, match="'b32_img'"):
    datacomp.write_metadata(str(tmp_path / 'z.parquet'), _table(3),
                            {'b32_img': np.zeros((2, 4))})
