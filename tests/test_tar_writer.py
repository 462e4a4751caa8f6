import collections
import io
import json
import os
import tarfile

import numpy as np
import pytest

from tads_jax.data import tar_writer
from tads_jax.data import webdataset


def _reference(path, samples):
  """The shard as Python's tarfile writes it: the independent reference for the bytes."""
  with tarfile.open(path, 'w', format=tarfile.USTAR_FORMAT) as tar:
    for key, files in samples:
      for ext, value in files.items():
        if isinstance(value, str):
          data = value.encode('utf-8')
        elif isinstance(value, (dict, list)):
          data = json.dumps(value, sort_keys=True).encode('utf-8')
        elif isinstance(value, int):
          data = str(value).encode('utf-8')
        else:
          data = value
        info = tarfile.TarInfo(f'{key}.{ext}')
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))


def _bytes(rng, n):
  return rng.integers(0, 256, n, dtype=np.uint8).tobytes()


def _samples():
  rng = np.random.default_rng(0)
  long_key = 'd' * 70 + '/' + 'k' * 60  # 131 chars: needs the ustar prefix field
  return [
      ('000000000', {'jpg': _bytes(rng, 3000), 'txt': 'a red cube',
                     'json': {'uid': f'{0:032x}', 'width': 64, 'height': 48}}),
      ('000000001', {'jpg': _bytes(rng, 511), 'txt': 'Ünïcödé 猫の写真 🐈 — caption'}),
      ('000000002', {'jpg': _bytes(rng, 512), 'txt': ''}),   # empty member
      ('000000003', {'jpg': _bytes(rng, 513), 'cls': 7}),
      ('000000004', {'jpg': b'', 'json': []}),
      ('ключ_ünï', {'png': _bytes(rng, 1), 'txt': 'x' * 1024}),  # non-ASCII key
      (long_key, {'jpg': _bytes(rng, 100), 'txt': 'long'}),
      ('p' * 95, {'jpg': _bytes(rng, 7)}),  # name exactly 99 / 100 bytes with ext
      ('q' * 96, {'jpg': _bytes(rng, 7)}),
  ]


def _as_bytes(value):
  if isinstance(value, str):
    return value.encode('utf-8')
  if isinstance(value, (dict, list)):
    return json.dumps(value, sort_keys=True).encode('utf-8')
  if isinstance(value, int):
    return str(value).encode('utf-8')
  return value


def test_byte_identical_to_tarfile(tmp_path):
  samples = _samples()
  ours, ref = str(tmp_path / 'ours.tar'), str(tmp_path / 'ref.tar')
  assert tar_writer.write_shard(ours, samples) == len(samples)
  _reference(ref, samples)
  got, want = open(ours, 'rb').read(), open(ref, 'rb').read()
  assert len(got) % tarfile.RECORDSIZE == 0
  assert got == want


@pytest.mark.parametrize('sizes', [[], [0], [511], [512], [513], [10240 - 4 * 512], [10240 - 3 * 512],
                                   [10240 - 3 * 512 + 1], [4000] * 5])
def test_record_padding_matches_tarfile(tmp_path, sizes):
  # Sizes chosen so the end blocks land just before, on and past a 10240-byte record.
  rng = np.random.default_rng(len(sizes))
  samples = [(f'{i:04d}', {'bin': _bytes(rng, n)}) for i, n in enumerate(sizes)]
  ours, ref = str(tmp_path / 'ours.tar'), str(tmp_path / 'ref.tar')
  tar_writer.write_shard(ours, samples)
  _reference(ref, samples)
  assert open(ours, 'rb').read() == open(ref, 'rb').read()


def test_readable_by_tarfile(tmp_path):
  samples = _samples()
  path = str(tmp_path / 's.tar')
  tar_writer.write_shard(path, samples)
  want = [(f'{k}.{e}', _as_bytes(v)) for k, files in samples for e, v in files.items()]
  with tarfile.open(path) as tar:
    members = tar.getmembers()
    got = [(m.name, tar.extractfile(m).read()) for m in members]
  assert got == want
  assert all(m.isfile() and m.mode == 0o644 and m.mtime == 0 and m.uid == 0 and m.gid == 0
             and m.uname == '' and m.gname == '' for m in members)


def test_readable_by_iter_groups(tmp_path):
  samples = _samples()
  path = str(tmp_path / 's.tar')
  tar_writer.write_shard(path, samples)
  skips = collections.Counter()
  got = list(webdataset.iter_groups(path, skips))
  want = [(k, {e: _as_bytes(v) for e, v in files.items()}) for k, files in samples]
  assert got == want
  assert not skips


def test_failure_midway_leaves_nothing(tmp_path):
  path = tmp_path / 'out.tar'

  def samples():
    yield '000000000', {'txt': 'first'}
    yield '000000001', {'txt': 'second'}
    raise RuntimeError('generator died')

  with pytest.raises(RuntimeError, match='generator died'):
    tar_writer.write_shard(str(path), samples())
  assert not path.exists()
  assert os.listdir(tmp_path) == []  # the temporary file is gone too


def test_failure_keeps_previous_shard(tmp_path):
  # A rewrite that fails must not touch a complete shard already at the final path.
  path = str(tmp_path / 'out.tar')
  tar_writer.write_shard(path, [('a', {'txt': 'old'})])
  before = open(path, 'rb').read()

  def samples():
    yield 'b', {'txt': 'new'}
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    tar_writer.write_shard(path, samples())
  assert open(path, 'rb').read() == before
  assert os.listdir(tmp_path) == ['out.tar']


def test_name_too_long_names_path_and_member(tmp_path):
  # No '/' to split at: tarfile refuses too; we say which shard and member.
  path = str(tmp_path / 'bad.tar')
  with pytest.raises(ValueError, match=r'bad\.tar.*' + 'z' * 101):
    tar_writer.write_shard(path, [('ok', {'txt': 'x'}), ('z' * 101, {'txt': 'x'})])
  with pytest.raises(ValueError):
    _reference(str(tmp_path / 'ref.tar'), [('z' * 101, {'txt': 'x'})])
  assert not os.path.exists(path)
  assert not any(n.startswith('bad.tar') for n in os.listdir(tmp_path))


def test_unsupported_value_names_path_and_member(tmp_path):
  path = str(tmp_path / 'bad.tar')
  with pytest.raises(TypeError, match=r'bad\.tar.*k\.npy.*float'):
    tar_writer.write_shard(path, [('k', {'npy': 1.5})])
  assert os.listdir(tmp_path) == []
