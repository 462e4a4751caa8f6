"""DataComp's subset format: a sorted numpy array of 128-bit uids, dtype ("u8,u8").

Field 0 is int(uid[:16], 16), field 1 is int(uid[16:32], 16). A uid appears once per time
the sample should be seen, so sampling with repetition is expressed by repeats; DataComp's
resharder counts them with searchsorted (left/right) and writes that many copies.
"""

import re

import numpy as np

from tads_jax import pipeline

UID_DTYPE = np.dtype("u8,u8")
_UID_RE = re.compile(r"^[0-9a-f]{32}$")


def check_uid(uid: str, where: str = "uid") -> str:
  """Returns the uid lower-cased, or raises naming `where` if it is not 32 hex chars."""
  if not isinstance(uid, str) or not _UID_RE.match(uid.lower()):
    raise ValueError(f"{where}: {uid!r} is not a 32-character hex uid")
  return uid.lower()


def uids_to_array(uids) -> np.ndarray:
  """Converts 32-hex-char uid strings to an (unsorted) array of dtype ("u8,u8")."""
  out = np.empty(len(uids), dtype=UID_DTYPE)
  for i, uid in enumerate(uids):
    uid = check_uid(uid)
    out[i] = (int(uid[:16], 16), int(uid[16:], 16))
  return out


def array_to_uids(array: np.ndarray) -> list[str]:
  """The inverse of uids_to_array."""
  return [f"{int(hi):016x}{int(lo):016x}" for hi, lo in array.tolist()]


def write_subset(path: str, uids, counts=None) -> np.ndarray:
  """Writes `uids` (each repeated counts[i] times, default once) as a sorted subset file.

  Written to a temporary name and renamed, so a reader never sees half a file.
  """
  array = uids_to_array(list(uids))
  if counts is not None:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (len(array),) or (counts < 0).any():
      raise ValueError(f"{path}: counts must be {len(array)} non-negative integers")
    array = np.repeat(array, counts)
  array = np.sort(array)
  with pipeline.atomic_write(path, suffix='.npy') as tmp:
    np.save(tmp, array)
  return array


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
