import collections
import hashlib
import io
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from tads_jax.data import images
from tads_jax.data import tar_writer
from tads_jax.data import webdataset


def _pixels(seed, h=12, w=16):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(array, fmt, **kw):
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt, **kw)
  return buf.getvalue()


def _uid(i):
  return f'{i:032x}'


def _write(path, samples):
  tar_writer.write_shard(str(path), samples)
  return str(path)


def _sample(i, **override):
  files = {'png': _encode(_pixels(i), 'PNG'), 'txt': f'caption {i}',
           'json': {'uid': _uid(i), 'url': f'http://x/{i}'}}
  files.update(override)
  return f'{i:09d}', {k: v for k, v in files.items() if v is not None}


# --- images.decode_image --------------------------------------------------------------


def test_decode_png_exact_and_modes():
  rgb = _pixels(0)
  np.testing.assert_array_equal(images.decode_image(_encode(rgb, 'PNG'), 'x'), rgb)
  gray = rgb[..., 0]
  out = images.decode_image(_encode(gray, 'PNG'), 'x')
  np.testing.assert_array_equal(out, np.stack([gray] * 3, axis=-1))
  # Palette image: same pixels as PIL's own conversion of the palette.
  pal = Image.fromarray(rgb).quantize(8)
  buf = io.BytesIO()
  pal.save(buf, format='PNG')
  np.testing.assert_array_equal(images.decode_image(buf.getvalue(), 'x'),
                                np.asarray(pal.convert('RGB')))
  # 16-bit grayscale keeps the top byte.
  g16 = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300)
  buf = io.BytesIO()
  Image.fromarray(g16).save(buf, format='PNG')
  out = images.decode_image(buf.getvalue(), 'x')
  np.testing.assert_array_equal(out[..., 1], (g16 >> 8).astype(np.uint8))


def test_decode_rgba_composites_over_white():
  rgba = np.zeros((2, 3, 4), np.uint8)
  rgba[..., :3] = (200, 10, 40)
  rgba[..., 3] = [[0, 255, 128], [0, 255, 128]]
  out = images.decode_image(_encode(rgba, 'PNG'), 'x').astype(int)
  np.testing.assert_array_equal(out[0, 0], [255, 255, 255])   # transparent -> white
  np.testing.assert_array_equal(out[0, 1], [200, 10, 40])     # opaque -> its colour
  a = 128 / 255  # hand-computed blend
  expected = np.round(np.array([200, 10, 40]) * a + 255 * (1 - a))
  np.testing.assert_array_equal(out[0, 2], expected)


def test_decode_corrupt_and_truncated_raise_naming_where():
  with pytest.raises(images.CorruptImageError, match='shard.tar: 7.jpg'):
    images.decode_image(b'not an image at all', 'shard.tar: 7.jpg')
  jpg = _encode(_pixels(1, 64, 64), 'JPEG', quality=90)
  with pytest.raises(images.CorruptImageError, match='cut'):
    images.decode_image(jpg[:len(jpg) // 2], 'cut')
  png = _encode(_pixels(2, 64, 64), 'PNG')
  with pytest.raises(images.CorruptImageError, match='cutpng'):
    images.decode_image(png[:len(png) // 2], 'cutpng')
  assert issubclass(images.CorruptImageError, ValueError)


# --- expand_shards ----------------------------------------------------------------------


def _touch(d, names):
  for n in names:
    (d / n).write_bytes(b'')


def test_expand_braces_zero_padded_range_and_lists(tmp_path):
  _touch(tmp_path, [f'{i:08d}.tar' for i in range(12)])
  got = webdataset.expand_shards(str(tmp_path / '{00000009..00000011}.tar'))
  assert got == [str(tmp_path / f'{i:08d}.tar') for i in (9, 10, 11)]
  got = webdataset.expand_shards(str(tmp_path / '{00000003,00000001}.tar'))
  assert got == [str(tmp_path / '00000003.tar'), str(tmp_path / '00000001.tar')]
  # Two braces: cartesian product in pattern order.
  got = webdataset.expand_shards(str(tmp_path / '000000{0..1}{1,0}.tar'))
  assert [os.path.basename(p) for p in got] == [
      '00000001.tar', '00000000.tar', '00000011.tar', '00000010.tar']


def test_expand_glob_sorted_list_concat_dedup(tmp_path):
  _touch(tmp_path, ['b.tar', 'a.tar', 'c.tar', 'c.parquet'])
  assert webdataset.expand_shards(str(tmp_path / '*.tar')) == [
      str(tmp_path / n) for n in ('a.tar', 'b.tar', 'c.tar')]
  got = webdataset.expand_shards([str(tmp_path / 'c.tar'), str(tmp_path / '*.tar'),
                                  str(tmp_path / '{b,a}.tar')])
  assert got == [str(tmp_path / n) for n in ('c.tar', 'a.tar', 'b.tar')]


def test_expand_errors(tmp_path):
  _touch(tmp_path, ['00000000.tar', '00000002.tar'])
  with pytest.raises(webdataset.ShardError, match='00000001.tar'):
    webdataset.expand_shards(str(tmp_path / '{00000000..00000002}.tar'))
  with pytest.raises(ValueError, match=r'nothing-\*\.tar'):
    webdataset.expand_shards(str(tmp_path / 'nothing-*.tar'))
  with pytest.raises(ValueError, match='missing.tar'):
    webdataset.expand_shards(str(tmp_path / 'missing.tar'))
  with pytest.raises(ValueError, match='unbalanced'):
    webdataset.expand_shards(str(tmp_path / '{0..2.tar'))
  with pytest.raises(ValueError):
    webdataset.expand_shards([])


# --- iter_shard -------------------------------------------------------------------------


def test_round_trip_png(tmp_path):
  samples = [_sample(i) for i in range(3)]
  # Sample 3 has no json and sample 4 a json without uid: uid = md5(key).
  samples.append(_sample(3, json=None))
  samples.append(_sample(4, json={'url': 'u'}))
  path = _write(tmp_path / '00000000.tar', samples)
  skips = collections.Counter()
  got = list(webdataset.iter_shard(path, skips, decode=True))
  assert not skips
  assert [s.key for s in got] == [k for k, _ in samples]
  expected_uids = [_uid(i) for i in range(3)] + [
      hashlib.md5(f'{i:09d}'.encode()).hexdigest() for i in (3, 4)]
  assert [s.uid for s in got] == expected_uids
  assert [s.meta['uid_source'] for s in got] == ['json'] * 3 + ['key'] * 2
  assert [s.caption for s in got] == [f'caption {i}' for i in range(5)]
  assert got[0].meta['url'] == 'http://x/0'
  for i, s in enumerate(got):
    assert s.image_ext == 'png' and s.shard == path
    np.testing.assert_array_equal(s.image, _pixels(i))
    assert s.image_bytes == samples[i][1]['png']


def test_round_trip_jpg_within_tolerance_and_no_decode(tmp_path):
  yy, xx = np.mgrid[0:32, 0:48]
  smooth = np.stack([xx * 5, yy * 7, (xx + yy) * 3], -1).astype(np.uint8)
  path = _write(tmp_path / 's.tar', [('a', {'JPG': _encode(smooth, 'JPEG', quality=95),
                                            'txt': 'x', 'npy': b'ignored'})])
  skips = collections.Counter()
  (s,) = webdataset.iter_shard(path, skips, decode=True)
  assert s.image_ext == 'jpg'  # extensions are lower-cased, as webdataset does
  assert np.abs(s.image.astype(int) - smooth).mean() < 2.0
  (s,) = webdataset.iter_shard(path, skips)
  assert s.image is None and not skips


def test_bad_samples_are_skipped_and_counted(tmp_path):
  corrupt = b'\xff\xd8\xff\xe0 this is not a jpeg'
  samples = [
      _sample(0),
      _sample(1, png=None, jpg=corrupt),            # corrupt_image (decode=True only)
      _sample(2, txt=None),                         # missing_caption
      _sample(3, txt='  \n '),                      # missing_caption (blank)
      _sample(4, png=None),                         # missing_image
      _sample(5, json=b'{"uid": '),                 # bad_json (unparsable)
      _sample(6, json={'uid': 'xyz'}),              # bad_json (invalid uid)
      _sample(7, json=b'[1, 2]'),                   # bad_json (not an object)
      _sample(9, txt=b'caf\xe9 au lait'),           # caption_not_utf8 (latin-1 bytes)
      _sample(8),
  ]
  path = _write(tmp_path / 's.tar', samples)
  skips = collections.Counter()
  got = [s.key for s in webdataset.iter_shard(path, skips, decode=True)]
  assert got == ['000000000', '000000008']
  assert skips == {'corrupt_image': 1, 'missing_caption': 2, 'missing_image': 1,
                   'bad_json': 3, 'caption_not_utf8': 1}
  skips = collections.Counter()
  got = [s.key for s in webdataset.iter_shard(path, skips, decode=False)]
  assert got == ['000000000', '000000001', '000000008']  # not decoded: not detected
  assert 'corrupt_image' not in skips


def test_grouping_follows_webdataset(tmp_path):
  png = _encode(_pixels(0), 'PNG')
  path = str(tmp_path / 's.tar')
  with tarfile.open(path, 'w') as tar:
    for name, data in [('d/k1.png', png), ('d/k1.txt', b'one'), ('k1.png', png),
                       ('k1.txt', b'two'), ('k2.seg.png', png), ('k2.txt', b'three'),
                       ('k1.png', png), ('k1.txt', b'four'), ('noext', b'?')]:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    info = tarfile.TarInfo('k3.png')  # a directory that looks like an image: ignored
    info.type = tarfile.DIRTYPE
    tar.addfile(info)
  skips = collections.Counter()
  got = [(s.key, s.caption) for s in webdataset.iter_shard(path, skips)]
  # Directory is part of the key; 'seg.png' is not an image extension; a key that comes
  # back after another key is a new sample (the caller dedups its uid).
  assert got == [('d/k1', 'one'), ('k1', 'two'), ('k1', 'four')]
  assert skips == {'missing_image': 1}


def _cut(src, dst, at):
  with open(src, 'rb') as f:
    data = f.read()
  with open(dst, 'wb') as f:
    f.write(data[:at])
  return str(dst)


def test_truncated_tar_keeps_samples_before(tmp_path):
  big = lambda i: _encode(_pixels(i, 64, 64), 'PNG')  # several tar blocks each
  samples = [_sample(i, png=big(i)) for i in range(4)]
  full = _write(tmp_path / 'full.tar', samples)
  with tarfile.open(full) as tar:
    members = {m.name: m for m in tar.getmembers()}
  m = members['000000002.png']

  # Cut in the middle of sample 2's image data.
  cut = _cut(full, tmp_path / 'mid_member.tar', m.offset_data + m.size // 2)
  skips = collections.Counter()
  assert [s.key for s in webdataset.iter_shard(cut, skips)] == ['000000000', '000000001']
  assert skips == {'truncated_tar': 1}

  # Cut inside the header of sample 2's caption: sample 2 may be incomplete, so it is
  # dropped with the cut; samples 0 and 1 survive.
  t = members['000000002.txt']
  cut = _cut(full, tmp_path / 'mid_header.tar', t.offset + 100)
  skips = collections.Counter()
  assert [s.key for s in webdataset.iter_shard(cut, skips)] == ['000000000', '000000001']
  assert skips == {'truncated_tar': 1}

  # Cut exactly after the last member (no end-of-archive blocks): still a truncated shard.
  last = members['000000003.json']
  end = last.offset_data + -(-last.size // 512) * 512
  cut = _cut(full, tmp_path / 'no_end.tar', end)
  skips = collections.Counter()
  keys = [s.key for s in webdataset.iter_shard(cut, skips)]
  assert keys == ['000000000', '000000001', '000000002'] and skips == {'truncated_tar': 1}

  skips = collections.Counter()
  assert len(list(webdataset.iter_shard(full, skips))) == 4 and not skips


def test_unopenable_shards_raise_naming_path(tmp_path):
  with pytest.raises(webdataset.ShardError, match='nope.tar'):
    list(webdataset.iter_shard(str(tmp_path / 'nope.tar'), collections.Counter()))
  with pytest.raises(webdataset.ShardError, match=str(tmp_path)):
    list(webdataset.iter_shard(str(tmp_path), collections.Counter()))
  junk = tmp_path / 'junk.tar'
  junk.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(webdataset.ShardError, match='junk.tar'):
    list(webdataset.iter_shard(str(junk), collections.Counter()))
  empty = tmp_path / 'empty.tar'
  empty.write_bytes(b'')
  with pytest.raises(webdataset.ShardError, match='empty.tar'):
    list(webdataset.iter_shard(str(empty), collections.Counter()))


@pytest.mark.skipif(os.geteuid() == 0, reason='root reads files whatever their mode')
def test_permission_denied_raises(tmp_path):
  path = _write(tmp_path / 's.tar', [_sample(0)])
  os.chmod(path, 0)
  with pytest.raises(webdataset.ShardError, match='s.tar'):
    list(webdataset.iter_shard(path, collections.Counter()))


def test_dedup_uids_across_shards(tmp_path):
  a = _write(tmp_path / 'a.tar', [_sample(0), _sample(1), _sample(1)])
  b = _write(tmp_path / 'b.tar', [_sample(2), _sample(0)])
  skips, seen = collections.Counter(), set()
  got = []
  for path in (a, b):
    got += [s.uid for s in webdataset.dedup_uids(
        webdataset.iter_shard(path, skips), skips, seen)]
  assert got == [_uid(0), _uid(1), _uid(2)]
  assert skips == {'duplicate_uid': 2}
  assert seen == {_uid(0), _uid(1), _uid(2)}
