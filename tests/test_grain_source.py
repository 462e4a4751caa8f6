import collections
import gzip
import io
import pickle
import tarfile

import grain
import numpy as np
import pytest

from tads_jax.data import grain_source
from tads_jax.data import images
from tads_jax.data import tar_writer
from tads_jax.data import webdataset
import test_webdataset

SIZES = (16, 8)


def _pixels(seed, h=24, w=32):
  return test_webdataset._pixels(seed, h, w)  # pylint: disable=protected-access


_encode = test_webdataset._encode  # pylint: disable=protected-access


def _sample(i, **override):
  files = {'jpg': _encode(_pixels(i), 'JPEG', quality=90), 'txt': f'caption {i}',
           'json': {'uid': f'{i:032x}', 'url': f'http://x/{i}'}}
  files.update(override)
  return f'{i:09d}', {k: v for k, v in files.items() if v is not None}


def _write(path, samples):
  tar_writer.write_shard(str(path), samples)
  return str(path)


_cut = test_webdataset._cut  # pylint: disable=protected-access


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  """Tars with every kind of broken sample iter_shard counts, and truncated ones."""
  d = tmp_path_factory.mktemp('shards')
  jpg = _encode(_pixels(99, 48, 48), 'JPEG', quality=90)
  broken = _write(d / 'broken.tar', [
      _sample(0),
      _sample(1, jpg=b'\xff\xd8\xff\xe0 this is not a jpeg'),  # corrupt_image
      _sample(2, jpg=jpg[:len(jpg) // 2]),                     # corrupt_image (cut JPEG)
      _sample(3, txt=None),                                    # missing_caption
      _sample(4, txt='  \n '),                                 # missing_caption (blank)
      _sample(5, jpg=None),                                    # missing_image
      _sample(6, json=b'{"uid": '),                            # bad_json (unparsable)
      _sample(7, json={'uid': 'xyz'}),                         # bad_json (invalid uid)
      _sample(8, json=b'[1, 2]'),                              # bad_json (not an object)
      _sample(9, txt=b'caf\xe9 au lait'),                      # caption_not_utf8
      _sample(10, json=None),                                  # uid from the key
      _sample(11, jpg=None, png=_encode(_pixels(11), 'PNG'), npy=b'ignored'),
      _sample(12, json={'uid': f'{12:032X}'}),                 # upper-case uid
  ])
  big = lambda i: _encode(_pixels(i, 64, 64), 'PNG')  # several tar blocks each
  full = _write(d / 'full.tar', [(f'{i:09d}', {'png': big(i), 'txt': f'caption {i}'})
                                 for i in range(20, 24)])
  with tarfile.open(full) as tar:
    members = {m.name: m for m in tar.getmembers()}
  m, t, last = members['000000022.png'], members['000000022.txt'], members['000000023.txt']
  cut_member = _cut(full, d / 'cut_member.tar', m.offset_data + m.size // 2)
  cut_header = _cut(full, d / 'cut_header.tar', t.offset + 100)
  no_end = _cut(full, d / 'no_end.tar', last.offset_data + -(-last.size // 512) * 512)
  # Grouping as webdataset: directories in keys, a repeated key later is a new sample,
  # 'seg.png' is no image extension, a directory named like an image is ignored.
  grouping = str(d / 'grouping.tar')
  png = _encode(_pixels(0), 'PNG')
  with tarfile.open(grouping, 'w') as tar:
    for name, data in [('d/k1.png', png), ('d/k1.txt', b'one'), ('k1.png', png),
                       ('k1.txt', b'two'), ('k2.seg.png', png), ('k2.txt', b'three'),
                       ('k1.png', png), ('k1.txt', b'four'), ('k1.txt', b'five'),
                       ('noext', b'?')]:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    info = tarfile.TarInfo('k3.png')
    info.type = tarfile.DIRTYPE
    tar.addfile(info)
  clean = _write(d / 'clean.tar', [_sample(i) for i in range(30, 41)])
  return [broken, full, cut_member, cut_header, no_end, grouping, clean]


def _reference(paths, decode):
  """iter_shard over the shards: (samples, skips)."""
  skips = collections.Counter()
  samples = [s for path in paths for s in webdataset.iter_shard(path, skips, decode=decode)]
  return samples, skips


def test_records_match_iter_shard(shards):
  expected, expected_skips = _reference(shards, decode=False)
  source = grain_source.TarShardSource(shards)
  records = list(grain_source.iter_records(source))
  assert [r['index'] for r in records] == list(range(len(source)))
  got = [r for r in records if not r['skip']]
  skips = collections.Counter(r['skip'] for r in records if r['skip'])
  assert skips == expected_skips
  assert skips['truncated_tar'] == 3 and skips['bad_json'] == 3  # the cases were built
  assert len(got) == len(expected)
  for record, sample in zip(got, expected):
    assert (record['shard'], record['key'], record['uid'], record['caption'],
            record['image_ext'], record['meta']) == (
                sample.shard, sample.key, sample.uid, sample.caption, sample.image_ext,
                sample.meta)
    assert record['image_bytes'] == sample.image_bytes


def test_truncated_shards_keep_samples_before(shards):
  source = grain_source.TarShardSource(shards[2:5])  # cut_member, cut_header, no_end
  keys = [[r['key'] for r in grain_source.iter_records(
      grain_source.TarShardSource([path]))] for path in shards[2:5]]
  # Cut inside sample 22's image, inside the header of its caption (sample 22 may miss
  # files), and after the last member with no end-of-archive block (sample 23 may too).
  assert keys == [['000000020', '000000021', ''], ['000000020', '000000021', ''],
                  ['000000020', '000000021', '000000022', '']]
  assert [r['skip'] for r in grain_source.iter_records(source)].count('truncated_tar') == 3


def test_source_pickles(shards):
  source = grain_source.TarShardSource(shards)
  copy = pickle.loads(pickle.dumps(source))
  assert len(copy) == len(source) and repr(copy) == repr(source)
  for i in range(len(source)):
    assert copy[i] == source[i]
  with pytest.raises(IndexError):
    source[len(source)]


def test_unopenable_shards_raise_naming_path(tmp_path):
  junk = tmp_path / 'junk.tar'
  junk.write_bytes(np.random.default_rng(0).bytes(4096))
  empty = tmp_path / 'empty.tar'
  empty.write_bytes(b'')
  plain = _write(tmp_path / 'plain.tar', [_sample(0)])
  zipped = tmp_path / 'zipped.tar.gz'
  with open(plain, 'rb') as f:
    zipped.write_bytes(gzip.compress(f.read()))
  for path in (tmp_path / 'nope.tar', tmp_path, junk, empty, zipped):
    with pytest.raises(webdataset.ShardError, match=str(path)):
      grain_source.TarShardSource([str(path)])
  with pytest.raises(ValueError, match='paths'):
    grain_source.TarShardSource(plain)  # a string, not a list


def test_shard_changed_after_indexing_raises(tmp_path):
  path = _write(tmp_path / 's.tar', [_sample(i) for i in range(3)])
  source = grain_source.TarShardSource([path])
  _cut(path, path, 600)
  with pytest.raises(webdataset.ShardError, match='s.tar: 000000001: shorter'):
    source[1]


def _pipeline(paths, worker_count=0, batch_size=4, **kw):
  source = grain_source.TarShardSource(paths)
  return grain_source.decode_pipeline(source, batch_size, image_sizes=SIZES,
                                      worker_count=worker_count, **kw)


def _run(dataset):
  iterator = iter(dataset)
  try:
    return list(iterator)
  finally:
    iterator.close()


def _assert_batches_equal(got, expected):
  assert len(got) == len(expected)
  for a, b in zip(got, expected):
    assert sorted(a) == sorted(b)
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_decoded_rows_match_iter_shard(shards):
  expected, expected_skips = _reference(shards, decode=True)
  batches = _run(_pipeline(shards))
  assert all(len(b['skip']) == 4 for b in batches[:-1])
  assert batches[-1]['image_16'].shape[1:] == (16, 16, 3)
  skips = collections.Counter()
  rows = list(grain_source.iter_rows(batches, skips))
  assert skips == expected_skips and skips['corrupt_image'] == 2
  assert [(r['key'], r['uid'], r['caption']) for r in rows] == [
      (s.key, s.uid, s.caption) for s in expected]
  paths = [shards[r['shard_number']] for r in rows]
  assert paths == [s.shard for s in expected]
  for row, sample in zip(rows, expected):
    for size in SIZES:
      np.testing.assert_array_equal(row[f'image_{size}'],
                                    images.resize_center_crop(sample.image, size))


def test_state_resumes_exactly(shards):
  full = _run(_pipeline(shards))
  for k in (0, 2, len(full) - 1):
    iterator = iter(_pipeline(shards))
    head = [next(iterator) for _ in range(k)]
    state = iterator.get_state()
    iterator.close()
    resumed = iter(_pipeline(shards))
    resumed.set_state(state)
    rest = list(resumed)
    _assert_batches_equal(head + rest, full)
    assert len(rest) == len(full) - k


def test_two_workers_same_batches_and_state(shards):
  """Worker processes change neither the batches nor what a checkpoint resumes to."""
  full = _run(_pipeline(shards))
  k = 3
  iterator = iter(_pipeline(shards, worker_count=2))
  got, state = [], None
  for batch in iterator:
    got.append(batch)
    if len(got) == k:
      state = iterator.get_state()
  iterator.close()
  _assert_batches_equal(got, full)
  resumed = iter(_pipeline(shards, worker_count=2))
  resumed.set_state(state)
  try:
    rest = list(resumed)
  finally:
    resumed.close()
  _assert_batches_equal(rest, full[k:])


def test_process_sharding_splits_contiguously(shards):
  source = grain_source.TarShardSource(shards)
  n = len(source)
  parts = []
  for index in range(3):
    options = grain.sharding.ShardOptions(shard_index=index, shard_count=3)
    batches = _run(grain_source.decode_pipeline(source, 5, image_sizes=(8,),
                                                shard_options=options))
    parts.append(np.concatenate([b['index'] for b in batches]).tolist())
  assert sum(parts, []) == list(range(n))
  assert [len(p) for p in parts] == [n // 3 + (i < n % 3) for i in range(3)]
  options = grain.sharding.ShardOptions(shard_index=2, shard_count=3, drop_remainder=True)
  batches = _run(grain_source.decode_pipeline(source, 5, image_sizes=(8,),
                                              shard_options=options))
  assert np.concatenate([b['index'] for b in batches]).tolist() == list(
      range(2 * (n // 3), 3 * (n // 3)))
  # One JAX process here: ShardByJaxProcess (the default) reads every record.
  batches = _run(grain_source.decode_pipeline(source, 64, image_sizes=(8,)))
  assert np.concatenate([b['index'] for b in batches]).tolist() == list(range(n))


def test_bad_arguments_raise():
  source = object()
  with pytest.raises(ValueError, match='batch_size'):
    grain_source.decode_pipeline(source, 0)
  with pytest.raises(ValueError, match='worker_count'):
    grain_source.decode_pipeline(source, 2, worker_count=-1)
  with pytest.raises(ValueError, match='image_sizes'):
    grain_source.DecodeAndResize((0,))


@pytest.mark.parametrize('group,workers', [(2, 0), (16, 0), (3, 2)])
def test_decoded_shards_hand_out_each_tar_as_iter_shard_reads_it(shards, group, workers):
  """Tar by tar, across pipeline groups: the same rows, originals and skips per tar."""
  with grain_source.DecodedShards(shards, image_sizes=(8,), keep_original=True,
                                  worker_count=workers, batch_size=3,
                                  group=group) as decoded:
    for path in shards:
      expected, expected_skips = _reference([path], decode=True)
      skips = collections.Counter()
      rows = list(decoded.rows(path, skips))
      assert skips == expected_skips, path
      assert [(r['key'], r['uid'], r['caption']) for r in rows] == [
          (s.key, s.uid, s.caption) for s in expected]
      for row, sample in zip(rows, expected):
        np.testing.assert_array_equal(row['image'], sample.image)
        np.testing.assert_array_equal(row['image_8'],
                                      images.resize_center_crop(sample.image, 8))


def test_decoded_shards_wanted_uids_and_order(shards):
  broken, full, clean = shards[0], shards[1], shards[-1]
  decoded = grain_source.DecodedShards([broken, full, clean], image_sizes=(8,))
  with pytest.raises(ValueError, match='clean.tar: asked for out of order; the next tar '
                     'is .*broken.tar'):
    decoded.rows(shards[-1], collections.Counter())
  wanted = {f'{i:032x}' for i in (0, 1, 10 ** 6)}  # sample 1 is a corrupt image
  skips = collections.Counter()
  with decoded:
    rows = list(decoded.rows(broken, skips, wanted=wanted))
    assert [r['uid'] for r in rows] == [f'{0:032x}']
    # Sample 2's corrupt image is not wanted: not counted; the other reasons all are.
    assert skips == {'corrupt_image': 1, 'missing_caption': 2, 'missing_image': 1,
                     'bad_json': 3, 'caption_not_utf8': 1}
    # A tar's rows left unread are passed over by the next tar's.
    assert next(decoded.rows(full, collections.Counter()))['key'] == '000000020'
    assert [r['key'] for r in decoded.rows(clean, collections.Counter())] == [
        f'{i:09d}' for i in range(30, 41)]
  with pytest.raises(ValueError, match='image_sizes'):
    grain_source.DecodedShards(shards, image_sizes=())
