"""Reads img2dataset / DataComp webdataset shards, one sample in memory at a time.

A shard is a tar whose members `<key>.<ext>` are grouped into samples by key, as the
webdataset package does: consecutive members sharing the prefix up to the first dot of the
basename (directories included) form one sample. A broken sample is skipped and counted by
reason; only a shard that cannot be opened at all raises.
"""

import collections
import dataclasses
import glob
import hashlib
import json
import os
import re
import tarfile
import zlib
from typing import Iterable, Iterator

import numpy as np

from tads_jax.data import images
from tads_jax.data import subset

IMAGE_EXTS = ('jpg', 'jpeg', 'png', 'webp')  # preference order when a sample has several
_POOL_EXTS = frozenset(IMAGE_EXTS + ('txt', 'json'))
_RANGE_RE = re.compile(r'^(-?\d+)\.\.(-?\d+)$')


class ShardError(ValueError):
  """A shard that cannot be read at all (missing, unreadable, not a tar); names the path."""


@dataclasses.dataclass
class PoolSample:
  key: str
  uid: str                  # 32 lower-case hex chars
  caption: str
  image_bytes: bytes
  image_ext: str            # 'jpg' | 'jpeg' | 'png' | 'webp'
  meta: dict                # the sample's json (or {}) plus 'uid_source': 'json' | 'key'
  shard: str
  image: np.ndarray | None = None  # uint8 [H, W, 3] when decoded


# ---------------------------------------------------------------------------------------
# Shard lists.


def _expand_braces(pattern: str) -> list[str]:
  """Bash-style brace expansion: `{a,b}` lists and zero-padded `{000..127}` ranges."""
  start = pattern.find('{')
  while start != -1:
    depth = 0
    for end in range(start, len(pattern)):
      depth += {'{': 1, '}': -1}.get(pattern[end], 0)
      if depth == 0:
        break
    else:
      raise ValueError(f'{pattern!r}: unbalanced "{{"')
    body = pattern[start + 1:end]
    options = _brace_options(body)
    if options is not None:
      head, tail = pattern[:start], pattern[end + 1:]
      return [head + option + rest
              for option in options for rest in _expand_braces(tail)]
    start = pattern.find('{', start + 1)  # `{x}` is literal, as in bash
  if '}' in pattern and '{' not in pattern:
    raise ValueError(f'{pattern!r}: unbalanced "}}"')
  return [pattern]


def _brace_options(body: str) -> list[str] | None:
  m = _RANGE_RE.match(body)
  if m:
    a, b = m.group(1), m.group(2)
    lo, hi = int(a), int(b)
    padded = any(len(s.lstrip('-')) > 1 and s.lstrip('-').startswith('0') for s in (a, b))
    width = max(len(a), len(b)) if padded else 0
    step = 1 if hi >= lo else -1
    return [f'{i:0{width}d}' for i in range(lo, hi + step, step)]
  # Split on top-level commas; nested braces are expanded recursively.
  parts, depth, current = [], 0, ''
  for ch in body:
    if ch == ',' and depth == 0:
      parts.append(current)
      current = ''
      continue
    depth += {'{': 1, '}': -1}.get(ch, 0)
    current += ch
  parts.append(current)
  if len(parts) == 1:
    return None
  return [option for part in parts for option in _expand_braces(part)]


def expand_shards(spec: str | Iterable[str]) -> list[str]:
  """Expands brace patterns and globs (or a list of them) into an ordered list of files.

  Brace patterns keep their own order (so `{00000000..00000127}` is shard order) and every
  file they name must exist: a missing shard in a listed range is a lost slice of the pool,
  not something to skip quietly. Globs are sorted. Duplicates are dropped, first one kept.
  """
  specs = [spec] if isinstance(spec, str) else list(spec)
  if not specs:
    raise ValueError('no shard pattern given')
  out = []
  for one in specs:
    if not isinstance(one, str) or not one.strip():
      raise ValueError(f'shard pattern must be a non-empty string, got {one!r}')
    expanded = _expand_braces(os.path.expanduser(one))
    braced = len(expanded) > 1 or expanded[0] != one
    matched = []
    for path in expanded:
      if glob.has_magic(path):
        matched.extend(sorted(p for p in glob.glob(path) if os.path.isfile(p)))
      elif os.path.isfile(path):
        matched.append(path)
      elif braced:
        raise ShardError(f'{path}: listed by {one!r} but no such file')
    if not matched:
      raise ValueError(f'{one!r} matches no file')
    out.extend(matched)
  return list(dict.fromkeys(out))


# ---------------------------------------------------------------------------------------
# Reading.


class _TarInfo(tarfile.TarInfo):
  """Remembers why the last header read failed: tarfile ends the member list silently both
  at the real end-of-archive (a zero block) and at a cut or garbled header, and only the
  first is a complete shard."""

  @classmethod
  def fromtarfile(cls, tar):
    try:
      return super().fromtarfile(tar)
    except tarfile.HeaderError as e:
      tar.tads_header_error = e
      raise


def split_name(name: str) -> tuple[str, str] | None:
  """'dir/000001.seg.png' -> ('dir/000001', 'seg.png'), webdataset's key/extension split."""
  head, base = os.path.split(name)
  if '.' not in base or base.startswith('.'):
    return None
  stem, ext = base.split('.', 1)
  return (os.path.join(head, stem) if head else stem), ext.lower()


def iter_groups(path: str, skips: collections.Counter,
                exts: Iterable[str] | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
  """Yields (key, {ext: bytes}) per sample in tar order, streaming.

  Only members whose extension is in `exts` (all when None) are read. If the tar ends
  mid-member or mid-header, the samples before are yielded, the one being read is dropped
  (it may be missing files) and skips['truncated_tar'] is incremented once.
  """
  wanted = None if exts is None else frozenset(exts)
  try:
    tar = tarfile.open(path, 'r|*', tarinfo=_TarInfo)
  except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
    raise ShardError(f'{path}: cannot open as a tar shard ({type(e).__name__}: {e})') from e
  key, files = None, {}
  with tar:
    try:
      while True:
        member = tar.next()
        if member is None:
          break
        tar.members = []  # tarfile keeps every header otherwise: memory would grow
        if not member.isfile():
          continue
        parts = split_name(member.name)
        if parts is None:
          continue
        member_key, ext = parts
        # A key change (or a repeated extension) ends the previous sample, which is
        # complete: yield it before reading on, in case the tar is cut from here.
        if key is not None and (member_key != key or ext in files):
          yield key, files
          files = {}
        key = member_key
        if wanted is None or ext in wanted:
          files[ext] = tar.extractfile(member).read()
    except (tarfile.ReadError, EOFError, zlib.error):
      skips['truncated_tar'] += 1
      return
    if not isinstance(getattr(tar, 'tads_header_error', None), tarfile.EOFHeaderError):
      skips['truncated_tar'] += 1  # no end-of-archive block: the last sample may be cut
      return
  if key is not None:
    yield key, files


def uid_from_key(key: str) -> str:
  """A deterministic 32-hex uid for samples whose json carries none (md5 of the key)."""
  return hashlib.md5(key.encode('utf-8')).hexdigest()


def pick_image(files: dict[str, bytes]) -> str | None:
  """The image extension to use, in IMAGE_EXTS preference order."""
  return next((ext for ext in IMAGE_EXTS if ext in files), None)


def iter_shard(path: str, skips: collections.Counter,
               decode: bool = False) -> Iterator[PoolSample]:
  """Yields the usable samples of one pool shard; counts the others in `skips` by reason.

  Reasons: missing_image, missing_caption (no .txt or blank), caption_not_utf8, bad_json
  (unparsable, not an object, or an invalid uid), corrupt_image (decode=True only),
  truncated_tar (once).
  """
  for key, files in iter_groups(path, skips, exts=_POOL_EXTS):
    image_ext = pick_image(files)
    if image_ext is None:
      skips['missing_image'] += 1
      continue
    try:
      caption = files.get('txt', b'').decode('utf-8').strip()
    except UnicodeDecodeError:  # counted, not silently turned into replacement characters
      skips['caption_not_utf8'] += 1
      continue
    if not caption:
      skips['missing_caption'] += 1
      continue
    meta = {}
    if 'json' in files:
      try:
        meta = json.loads(files['json'])
      except (ValueError, UnicodeDecodeError):
        skips['bad_json'] += 1
        continue
      if not isinstance(meta, dict):
        skips['bad_json'] += 1
        continue
    if meta.get('uid') is not None:
      try:
        uid = subset.check_uid(meta['uid'], where=f'{path}: {key}.json uid')
      except ValueError:
        skips['bad_json'] += 1
        continue
      meta['uid_source'] = 'json'
    else:
      uid = uid_from_key(key)
      meta['uid_source'] = 'key'
    image = None
    if decode:
      try:
        image = images.decode_image(files[image_ext], where=f'{path}: {key}.{image_ext}')
      except images.CorruptImageError:
        skips['corrupt_image'] += 1
        continue
    yield PoolSample(key=key, uid=uid, caption=caption, image_bytes=files[image_ext],
                     image_ext=image_ext, meta=meta, shard=path, image=image)


def dedup_uids(samples: Iterable[PoolSample], skips: collections.Counter,
               seen: set) -> Iterator[PoolSample]:
  """Drops samples whose uid is in `seen` (adding new ones), counting 'duplicate_uid'.

  `seen` is the caller's, so it can span shards: DataComp pools repeat uids across shards.
  """
  for sample in samples:
    if sample.uid in seen:
      skips['duplicate_uid'] += 1
      continue
    seen.add(sample.uid)
    yield sample
