"""Writes webdataset tar shards (img2dataset / DataComp layout).

A shard is written to a temporary name and renamed when complete, so a killed writer never
leaves a truncated shard under its final name.
"""

import io
import json
import os
import tarfile
from typing import Iterable, Mapping

# Fixed member metadata: identical inputs give byte-identical shards.
_MTIME = 0


def _encode(value) -> bytes:
  if isinstance(value, bytes):
    return value
  if isinstance(value, str):
    return value.encode("utf-8")
  if isinstance(value, (dict, list)):
    return json.dumps(value, sort_keys=True).encode("utf-8")
  if isinstance(value, int):
    return str(value).encode("utf-8")
  raise TypeError(f"cannot write a {type(value).__name__} into a tar member")


def write_shard(path: str, samples: Iterable[tuple[str, Mapping[str, object]]]) -> int:
  """Writes `samples` ((key, {ext: bytes | str | dict | int})) to the tar at `path`.

  Members are named `<key>.<ext>` in the order given, which keeps a sample's files adjacent
  as webdataset readers expect. Returns the number of samples written.
  """
  tmp = f"{path}.tmp-{os.getpid()}"
  count = 0
  with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
    for key, files in samples:
      for ext, value in files.items():
        data = _encode(value)
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size = len(data)
        info.mtime = _MTIME
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(data))
      count += 1
  os.replace(tmp, path)
  return count
