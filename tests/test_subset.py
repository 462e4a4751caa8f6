"""subset.npy: DataComp's format, read back the way DataComp's resharder reads it."""

import numpy as np
import pytest

from tads_jax.data import subset


def _uid(i):
  return f'{(i * 0x9E3779B97F4A7C15) % 2**128:032x}'


def resharder_count(subset_file, uid):
  """What DataComp's resharder does: np.load, dtype check, searchsorted left/right."""
  array = np.load(subset_file, mmap_mode='r')
  assert array.dtype == np.dtype('u8,u8')
  key = np.array([divmod(int(uid, 16), 2**64)], np.dtype('u8,u8'))[0]
  return np.searchsorted(array, key, 'right') - np.searchsorted(array, key, 'left')


def test_round_trip_with_repeats(tmp_path):
  uids = [_uid(i) for i in range(50)]
  counts = np.arange(50) % 4  # 0..3 repeats, 0 = not selected
  path = str(tmp_path / 'subset.npy')
  subset.write_subset(path, uids, counts)
  array = subset.read_subset(path)
  assert len(array) == counts.sum()
  assert subset.is_sorted(array)
  for uid, c in zip(uids, counts):
    assert resharder_count(path, uid) == c
  np.testing.assert_array_equal(subset.times_selected(array, uids), counts)
  assert sorted(set(subset.array_to_uids(array))) == sorted(
      u for u, c in zip(uids, counts) if c)


def test_fields_are_the_uid_halves(tmp_path):
  uid = '0123456789abcdef' 'fedcba9876543210'
  path = str(tmp_path / 's.npy')
  subset.write_subset(path, [uid])
  (row,) = np.load(path)
  assert row[0] == 0x0123456789ABCDEF and row[1] == 0xFEDCBA9876543210


def test_sort_is_lexicographic_on_both_fields(tmp_path):
  uids = ['0' * 15 + '2' + 'f' * 16, '0' * 15 + '2' + '0' * 16, '0' * 15 + '1' + 'f' * 16]
  array = subset.write_subset(str(tmp_path / 's.npy'), uids)
  assert subset.array_to_uids(array) == [uids[2], uids[1], uids[0]]


def test_bad_inputs(tmp_path):
  with pytest.raises(ValueError, match='not a 32-character hex uid'):
    subset.write_subset(str(tmp_path / 'a.npy'), ['xyz'])
  np.save(tmp_path / 'wrong.npy', np.arange(3, dtype=np.uint64))
  with pytest.raises(ValueError, match='wrong.npy.*dtype'):
    subset.read_subset(str(tmp_path / 'wrong.npy'))
  unsorted = subset.uids_to_array([_uid(2), _uid(1)])
  if subset.is_sorted(unsorted):
    unsorted = unsorted[::-1]
  np.save(tmp_path / 'unsorted.npy', unsorted)
  with pytest.raises(ValueError, match='unsorted.npy.*not sorted'):
    subset.read_subset(str(tmp_path / 'unsorted.npy'))
  (tmp_path / 'junk.npy').write_bytes(b'not numpy')
  with pytest.raises(ValueError, match='junk.npy'):
    subset.read_subset(str(tmp_path / 'junk.npy'))
