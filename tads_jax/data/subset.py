"""DataComp's subset format: a sorted numpy array of 128-bit uids, dtype ("u8,u8").

Field 0 is int(uid[:16], 16), field 1 is int(uid[16:32], 16). A uid appears once per time
the sample should be seen, so sampling with repetition is expressed by repeats; DataComp's
resharder counts them with searchsorted (left/right) and writes that many copies.
"""

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tads_jax import pipeline

UID_DTYPE = np.dtype("u8,u8")
_UID_RE = re.compile(r"^[0-9a-f]{32}$")


def check_uid(uid: str, where: str = "uid") -> str:
  """Returns the uid lower-cased, or raises naming `where` if it is not 32 hex chars."""
  if not isinstance(uid, str) or not _UID_RE.match(uid.lower()):
    raise ValueError(f"{where}: {uid!r} is not a 32-character hex uid")
  return uid.lower()


def uids_to_array(uids) -> np.ndarray:
  """Converts 32-hex-char uid strings (a list, or a pyarrow string column, converted
  without making a str per row) to an (unsorted) array of dtype ("u8,u8")."""
  if isinstance(uids, (pa.Array, pa.ChunkedArray)):
    return _arrow_uids_to_array(uids)
  out = np.empty(len(uids), dtype=UID_DTYPE)
  for i, uid in enumerate(uids):
    uid = check_uid(uid)
    out[i] = (int(uid[:16], 16), int(uid[16:], 16))
  return out


_NIBBLE = np.full(256, 255, np.uint8)  # hex digit byte -> its value; 255: not a hex digit
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)  # digit j of a half -> bits 60 - 4j


def _arrow_uids_to_array(uids, rows: int = 8192) -> np.ndarray:
  """uids_to_array for a pyarrow column, from its bytes, `rows` uids at a time."""
  column = uids.combine_chunks() if isinstance(uids, pa.ChunkedArray) else uids
  column = column.cast(pa.string())
  out = np.empty(len(column), dtype=UID_DTYPE)
  for start in range(0, len(column), rows):
    part = column.slice(start, rows)
    lengths = pc.fill_null(pc.binary_length(part), 0).to_numpy()
    if (lengths != 32).any():  # a null, or not 32 bytes: raises naming it
      check_uid(part[int(np.flatnonzero(lengths != 32)[0])].as_py())
    offsets = np.frombuffer(part.buffers()[1], np.int32)[part.offset:part.offset + len(part)]
    data = np.frombuffer(part.buffers()[2], np.uint8)
    digits = _NIBBLE[data[offsets[:, None] + np.arange(32)]]  # [m, 32]
    bad = (digits == 255).any(axis=1)
    if bad.any():  # not a hex digit: raises naming it
      check_uid(part[int(np.flatnonzero(bad)[0])].as_py())
    digits = digits.astype(np.uint64)
    out["f0"][start:start + len(part)] = np.bitwise_or.reduce(digits[:, :16] << _SHIFTS, 1)
    out["f1"][start:start + len(part)] = np.bitwise_or.reduce(digits[:, 16:] << _SHIFTS, 1)
  return out


def array_to_uids(array: np.ndarray) -> list[str]:
  """The inverse of uids_to_array."""
  return [f"{int(hi):016x}{int(lo):016x}" for hi, lo in array.tolist()]


def write_subset(path: str, uids, counts=None) -> np.ndarray:
  """Writes `uids` (each repeated counts[i] times, default once) as a sorted subset file.

  Written to a temporary name and renamed, so a reader never sees half a file.
  """
  if counts is None:
    array = uids_to_array(uids if is_arrow(uids) else list(uids))
  else:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (len(uids),) or (counts < 0).any():
      raise ValueError(f"{path}: counts must be {len(uids)} non-negative integers")
    kept = np.flatnonzero(counts)  # only the kept rows' uids are converted
    array = np.repeat(uids_to_array(take(uids, kept)), counts[kept])
  array = np.sort(array)
  with pipeline.atomic_write(path, suffix='.npy') as tmp:
    np.save(tmp, array)
  return array


def is_arrow(uids) -> bool:
  """Whether uids are a pyarrow column (kept as one, never made into a str per row)."""
  return isinstance(uids, (pa.Array, pa.ChunkedArray))


def take(uids, rows: np.ndarray):
  """uids[rows]: a pyarrow column stays one, a list or an array gives a list."""
  if is_arrow(uids):
    return uids.take(pa.array(rows, pa.int64()))
  return [uids[i] for i in rows]


def read_subset(path: str) -> np.ndarray:
  """Reads a subset file, checking its dtype and order as DataComp's resharder assumes."""
  try:
    array = np.load(path, mmap_mode="r")
  except (OSError, ValueError) as e:
    raise ValueError(f"{path}: not a numpy subset file ({e})") from e
  if array.dtype != UID_DTYPE or array.ndim != 1:
    raise ValueError(f"{path}: subset must be a 1-d array of dtype {UID_DTYPE}, got "
                     f"{array.dtype} with shape {array.shape}")
  array = np.asarray(array)
  if not is_sorted(array):
    raise ValueError(f"{path}: subset uids are not sorted")
  return array


def is_sorted(array: np.ndarray) -> bool:
  """Lexicographic order on (field 0, field 1); numpy has no < on structured arrays."""
  hi, lo = array["f0"], array["f1"]
  return bool(np.all((hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] >= lo[:-1]))))


def times_selected(subset: np.ndarray, uids) -> np.ndarray:
  """How many times each uid appears in `subset` (sorted), as the resharder counts it."""
  keys = uids_to_array(list(uids))
  return (np.searchsorted(subset, keys, "right") - np.searchsorted(subset, keys, "left"))
