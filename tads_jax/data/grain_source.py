"""Webdataset tar shards as a Grain random-access source, and a decode pipeline over it.

Grain reads records by index, which is what makes its order deterministic, its iterator
state a few integers (checkpointable), its workers processes that each take a slice, and
its sharding by JAX process a slice too. It has no tar source: a tar is a stream. So each
shard's headers are scanned once (tarfile, seeking over the member data) into an index of
member offsets and sizes, and a record is one `os.pread` of its sample's span.

Samples are grouped, checked and counted exactly as webdataset.iter_shard does: a broken
sample is not dropped but returned as a skip record carrying iter_shard's reason (a
truncated shard adds one 'truncated_tar' record after its last whole sample), so a reader
that adds up the reasons gets iter_shard's skips Counter, and a record's index never
depends on what later samples hold.

The stages read it through DecodedShards: one pipeline over many tars, whose rows a stage
takes tar by tar as it computes its resumable shards.
"""

import dataclasses
import json
import os
import tarfile
import zlib
from typing import Iterable, Iterator, Sequence

import grain
import numpy as np
from absl import flags

from tads_jax.data import images
from tads_jax.data import subset
from tads_jax.data import webdataset

# The member extensions a pool sample uses (webdataset iter_shard's), in a fixed order so
# that an index can store them as small codes.
_EXTS = tuple(sorted(webdataset._POOL_EXTS))  # pylint: disable=protected-access
_EXT_CODE = {ext: code for code, ext in enumerate(_EXTS)}
# Leading bytes of gzip, bzip2 and xz: a compressed tar has no member offsets to seek to.
_COMPRESSED_MAGIC = (b'\x1f\x8b', b'BZh', b'\xfd7zXZ\x00')


# ---------------------------------------------------------------------------------------
# The index of one shard.


@dataclasses.dataclass(frozen=True)
class ShardIndex:
  """Where each sample's pool members lie in one tar; arrays so that it pickles fast."""
  path: str
  keys: np.ndarray            # [N] str: sample keys in tar order
  first_member: np.ndarray    # [N + 1] int64: sample i's members are rows first[i]:first[i+1]
  member_ext: np.ndarray      # [M] uint8: code into _EXTS
  member_offset: np.ndarray   # [M] int64: byte offset of the member's data in the tar
  member_size: np.ndarray     # [M] int64
  truncated: bool             # the tar is cut: iter_shard counts 'truncated_tar' once

  def __len__(self) -> int:
    return len(self.keys)


def _open_tar(path: str, f) -> tarfile.TarFile:
  head = f.read(6)
  f.seek(0)
  if head.startswith(_COMPRESSED_MAGIC):
    raise webdataset.ShardError(f'{path}: compressed tar; random access needs an '
                                'uncompressed shard (as img2dataset writes)')
  try:
    return tarfile.open(fileobj=f, mode='r:',
                        tarinfo=webdataset._TarInfo)  # pylint: disable=protected-access
  except (OSError, tarfile.TarError, EOFError, zlib.error) as e:
    raise webdataset.ShardError(
        f'{path}: cannot open as a tar shard ({type(e).__name__}: {e})') from e


def index_shard(path: str) -> ShardIndex:
  """Scans the member headers of the tar at `path`, grouping members as iter_groups does.

  Consecutive members with the same key form a sample, and a repeated pool extension
  starts a new one. If the tar ends mid-member, mid-header or without its end-of-archive
  block, the sample being read when it ended is left out (it may miss files) and the index
  is marked truncated, as iter_groups does. Raises ShardError if the tar cannot be opened.
  """
  try:
    f = open(path, 'rb')
    file_size = os.fstat(f.fileno()).st_size
  except OSError as e:
    raise webdataset.ShardError(
        f'{path}: cannot open as a tar shard ({type(e).__name__}: {e})') from e
  keys, first_member, member_ext, member_offset, member_size = [], [], [], [], []
  key, sample_exts, truncated = None, set(), False

  def start_sample(new_key):
    keys.append(new_key)
    first_member.append(len(member_ext))

  with f, _open_tar(path, f) as tar:
    try:
      while True:
        member = tar.next()
        if member is None:
          break
        tar.members = []  # tarfile keeps every header otherwise
        if not member.isfile():
          continue
        parts = webdataset.split_name(member.name)
        if parts is None:
          continue
        member_key, ext = parts
        if key is None or member_key != key or ext in sample_exts:
          start_sample(member_key)
          sample_exts = set()
        key = member_key
        if ext in _EXT_CODE:
          if member.offset_data + member.size > file_size:
            truncated = True  # cut inside this member's data
            break
          sample_exts.add(ext)
          member_ext.append(_EXT_CODE[ext])
          member_offset.append(member.offset_data)
          member_size.append(member.size)
    except (tarfile.ReadError, EOFError, zlib.error):
      truncated = True
    if not isinstance(getattr(tar, 'tads_header_error', None), tarfile.EOFHeaderError):
      truncated = True  # no end-of-archive block: the last sample may be cut
  if truncated and keys:  # drop the sample being read when the tar ended
    keys.pop()
    del member_ext[first_member[-1]:], member_offset[first_member[-1]:]
    del member_size[first_member[-1]:]
    first_member.pop()
  first_member.append(len(member_ext))
  return ShardIndex(
      path=path, keys=np.asarray(keys, dtype=str),
      first_member=np.asarray(first_member, np.int64),
      member_ext=np.asarray(member_ext, np.uint8),
      member_offset=np.asarray(member_offset, np.int64),
      member_size=np.asarray(member_size, np.int64), truncated=truncated)


# ---------------------------------------------------------------------------------------
# The source.


def _skip_record(index: int, shard: tuple[int, str], key: str, reason: str) -> dict:
  return {'index': index, 'shard_number': shard[0], 'shard': shard[1], 'key': key,
          'uid': '', 'caption': '', 'image_ext': '', 'image_bytes': b'', 'meta': {},
          'skip': reason}


def check_sample(index: int, shard: tuple[int, str], key: str,
                 files: dict[str, bytes]) -> dict:
  """A sample's record, or a skip record with iter_shard's reason for rejecting it.

  The checks and their order are iter_shard's (all but decoding, which the pipeline does):
  missing_image, caption_not_utf8, missing_caption, bad_json. `shard` is (number, path).
  """
  path = shard[1]
  image_ext = webdataset.pick_image(files)
  if image_ext is None:
    return _skip_record(index, shard, key, 'missing_image')
  try:
    caption = files.get('txt', b'').decode('utf-8').strip()
  except UnicodeDecodeError:
    return _skip_record(index, shard, key, 'caption_not_utf8')
  if not caption:
    return _skip_record(index, shard, key, 'missing_caption')
  meta = {}
  if 'json' in files:
    try:
      meta = json.loads(files['json'])
    except (ValueError, UnicodeDecodeError):
      return _skip_record(index, shard, key, 'bad_json')
    if not isinstance(meta, dict):
      return _skip_record(index, shard, key, 'bad_json')
  if meta.get('uid') is not None:
    try:
      uid = subset.check_uid(meta['uid'], where=f'{path}: {key}.json uid')
    except ValueError:
      return _skip_record(index, shard, key, 'bad_json')
    meta['uid_source'] = 'json'
  else:
    uid = webdataset.uid_from_key(key)
    meta['uid_source'] = 'key'
  return {'index': index, 'shard_number': shard[0], 'shard': path, 'key': key, 'uid': uid,
          'caption': caption, 'image_ext': image_ext, 'image_bytes': files[image_ext],
          'meta': meta, 'skip': ''}


class TarShardSource:
  """A grain RandomAccessDataSource over webdataset shards: one record per sample.

  A record is a dict: index, shard_number, shard (its path), key, uid, caption, image_ext,
  image_bytes, meta (the json plus uid_source, as PoolSample.meta) and skip (iter_shard's
  reason, '' for a usable sample). Records run through the shards in the order given, each
  shard in tar order, and a truncated shard ends with one 'truncated_tar' skip record.

  The shards are indexed when the source is made; a shard that cannot be opened raises
  ShardError there. Pickles (Grain workers are processes) with its index, no file handles.
  """

  def __init__(self, paths: Sequence[str]):
    if isinstance(paths, str) or not paths:
      raise ValueError(f'paths: expected a non-empty list of tar shards, got {paths!r}')
    self.shards = [index_shard(path) for path in paths]
    counts = [len(shard) + shard.truncated for shard in self.shards]
    self._record_starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

  @property
  def paths(self) -> list[str]:
    return [shard.path for shard in self.shards]

  def __len__(self) -> int:
    return int(self._record_starts[-1])

  def __repr__(self) -> str:
    # Grain keys checkpoints by the source's repr: name what the records are.
    return (f'TarShardSource({len(self.shards)} shards, {len(self)} records, first '
            f'{self.shards[0].path!r})')

  def locate(self, index: int) -> tuple[int, int]:
    """Record index -> (shard number, sample number in that shard)."""
    if not 0 <= index < len(self):
      raise IndexError(f'record {index} out of range for {len(self)} records')
    shard = int(np.searchsorted(self._record_starts, index, side='right')) - 1
    return shard, index - int(self._record_starts[shard])

  def read_files(self, shard: int, sample: int) -> dict[str, bytes]:
    """{ext: bytes} of one indexed sample, read with one pread of its members' span."""
    index = self.shards[shard]
    lo, hi = index.first_member[sample], index.first_member[sample + 1]
    if lo == hi:
      return {}
    offsets, sizes = index.member_offset[lo:hi], index.member_size[lo:hi]
    start = int(offsets[0])
    span = int(offsets[-1] + sizes[-1]) - start
    with open(index.path, 'rb', buffering=0) as f:
      data = os.pread(f.fileno(), span, start)
    if len(data) != span:
      raise webdataset.ShardError(f'{index.path}: {index.keys[sample]}: shorter than when '
                                  'indexed; the shard changed, make a new source')
    return {_EXTS[code]: data[offset - start:offset - start + size]
            for code, offset, size in zip(index.member_ext[lo:hi].tolist(),
                                          offsets.tolist(), sizes.tolist())}

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    shard, sample = self.locate(index)
    where = (shard, self.shards[shard].path)
    if sample == len(self.shards[shard]):
      return _skip_record(index, where, '', 'truncated_tar')
    key = str(self.shards[shard].keys[sample])
    return check_sample(index, where, key, self.read_files(shard, sample))


def iter_records(source: TarShardSource) -> Iterator[dict]:
  """Every record of `source` in order (skip records included)."""
  for index in range(len(source)):
    yield source[index]


# ---------------------------------------------------------------------------------------
# The decode pipeline.


class DecodeAndResize(grain.transforms.Map):
  """Source record -> fixed-shape record: the image decoded as iter_shard(decode=True) does,
  then resize_center_crop to each of `image_sizes` (as the stages resize).

  A skip record, or an image that does not decode ('corrupt_image'), gets zero images and
  its reason, so that every batch keeps its rows: a batch's layout never depends on the
  data, and reasons reach the main process to be counted. A corrupt image's row keeps its
  uid: the embed stage counts a corrupt image only when its uid is one it reads.

  keep_original: the row also holds the decoded image as it is ('image', uint8 [H, W, 3],
  [0, 0, 3] for a skip), for what needs every pixel (features' flipped_clip_score
  preprocesses the flipped original for the reference encoder).
  """

  def __init__(self, image_sizes: Sequence[int], keep_original: bool = False):
    self.image_sizes = tuple(int(size) for size in image_sizes)
    self.keep_original = bool(keep_original)
    if min(self.image_sizes, default=1) <= 0 or not (self.image_sizes or keep_original):
      raise ValueError(f'image_sizes: expected positive sizes, got {image_sizes!r}')

  def map(self, record: dict) -> dict:
    skip = record['skip']
    decoded = None
    if not skip:
      where = f"{record['shard']}: {record['key']}.{record['image_ext']}"
      try:
        decoded = images.decode_image(record['image_bytes'], where=where)  # [H, W, 3]
      except images.CorruptImageError:
        skip = 'corrupt_image'
    out = {'index': np.int64(record['index']),
           'shard_number': np.int32(record['shard_number']),
           'key': record['key'], 'uid': record['uid'],
           'caption': record['caption'] if not skip else '', 'skip': skip}
    for size in self.image_sizes:
      out[f'image_{size}'] = (np.zeros((size, size, 3), np.uint8) if decoded is None
                              else images.resize_center_crop(decoded, size))  # [S, S, 3]
    if self.keep_original:
      out['image'] = np.zeros((0, 0, 3), np.uint8) if decoded is None else decoded
    return out


def _stack_keeping_originals(rows: Sequence[dict]) -> dict:
  """Grain's batch, but the originals (one shape each) stay a list of arrays."""
  out = {name: np.stack([row[name] for row in rows]) for name in rows[0] if name != 'image'}
  out['image'] = [row['image'] for row in rows]
  return out


def _process_range(num_records: int, options: grain.sharding.ShardOptions) -> tuple[int, int]:
  """This process's contiguous [start, end) of the records: contiguous keeps each tar's
  reads sequential. The split is Grain's IndexSampler's (first shards take the remainder,
  or it is dropped when options.drop_remainder)."""
  per_shard, remainder = divmod(num_records, options.shard_count)
  start, end = per_shard * options.shard_index, per_shard * (options.shard_index + 1)
  if not options.drop_remainder:
    start += min(options.shard_index, remainder)
    end += min(options.shard_index + 1, remainder)
  return start, end


def _allow_workers_without_absl_flags():
  """Grain 0.2.18 reads --grain_enable_multiprocess_worker_profiling when it starts workers
  and raises UnparsedFlagAccessError unless absl parsed the command line, which a script
  or test without absl.app never does (google/grain#1355, fixed after 0.2.18). Marking
  that one flag as given, keeping its default, is what grain does for its debug flags."""
  name = 'grain_enable_multiprocess_worker_profiling'
  if not flags.FLAGS.is_parsed() and name in flags.FLAGS:
    flags.FLAGS[name].present = True


def decode_pipeline(source: TarShardSource, batch_size: int, *,
                    image_sizes: Sequence[int] = (224,), keep_original: bool = False,
                    worker_count: int = 0, read_threads: int = 1,
                    shard_options: grain.sharding.ShardOptions | None = None,
                    drop_remainder: bool = False) -> grain.IterDataset:
  """source -> decode + resize -> batches of `batch_size` records, as a Grain IterDataset.

  A batch is a dict of arrays: index [B] int64, shard_number [B] int32 (in source.paths),
  key, uid, caption, skip [B] str ('' for a usable row; count_skips adds them up) and
  image_<S> [B, S, S, 3] uint8 per size (with keep_original also image: a list of B
  uint8 [H, W, 3], the decoded originals). Batch i holds records [i*B, (i+1)*B) of this
  process's part, whatever `worker_count`: workers (processes) each build every
  worker_count-th batch and Grain interleaves them back in order, so the output does not
  depend on it. `read_threads` threads per process build batches in parallel.

  `shard_options` (default ShardByJaxProcess) gives this process a contiguous part of the
  records. `iter(pipeline)` has get_state() / set_state() to resume after a checkpoint;
  a state is only valid for the same source, batch size, sharding and worker_count.
  """
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'batch_size: expected a positive integer, got {batch_size!r}')
  if not isinstance(worker_count, int) or worker_count < 0:
    raise ValueError(f'worker_count: expected an integer >= 0, got {worker_count!r}')
  if not isinstance(read_threads, int) or read_threads < 0:
    raise ValueError(f'read_threads: expected an integer >= 0, got {read_threads!r}')
  if shard_options is None:
    shard_options = grain.sharding.ShardByJaxProcess()
  start, end = _process_range(len(source), shard_options)
  dataset = (grain.MapDataset.source(source)[start:end]
             .map(DecodeAndResize(image_sizes, keep_original))
             .batch(batch_size, drop_remainder=drop_remainder,
                    batch_fn=_stack_keeping_originals if keep_original else None))
  # The read buffer holds whole batches: a few, not Grain's default of 500.
  dataset = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=max(2, 2 * read_threads)))
  if worker_count > 0:
    _allow_workers_without_absl_flags()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return dataset


def count_skips(batch: dict, skips) -> None:
  """Adds a batch's skip reasons to the Counter `skips`, as iter_shard counts them."""
  for reason in batch['skip'].tolist():
    if reason:
      skips[reason] += 1


def iter_rows(batches: Iterable[dict], skips) -> Iterator[dict]:
  """The usable rows of decoded batches, one dict each (images included), in order;
  skip rows are counted in `skips`."""
  for batch in batches:
    count_skips(batch, skips)
    for row in np.flatnonzero(batch['skip'] == ''):
      yield {name: values[row] for name, values in batch.items()}


# ---------------------------------------------------------------------------------------
# The stages' reader: decoded rows tar by tar.

# Tars per pipeline: each worker holds a pickled copy of the index (~100 bytes a sample,
# ~1 MB a DataComp tar), and the main process scans a group's headers before its first
# batch; 16 tars keep both small while workers start once per 16 shards.
GROUP_TARS = 16


def config_worker_count(config) -> int:
  """config.data.grain_workers: decode processes of the stages' Grain pipelines (0 when a
  config predates the block; configs/default.py documents it, config.py checks it)."""
  block = config.get('data')
  return 0 if block is None else block.get('grain_workers', 0)


class DecodedShards:
  """Decoded rows of many tars through Grain, handed out tar by tar in the order given.

  A stage computes its shards one at a time (each an item that resumes), but a pipeline
  pays for its index and its workers when it starts; so one pipeline runs over a group of
  up to GROUP_TARS of the tars, started when the first of them is asked for, and
  rows(path) takes the rows of one tar from it. Use as a context manager (the workers
  stop on exit). Records are not split over JAX processes (NoSharding): a stage gives each
  process its own tars (distributed.owns).
  """

  def __init__(self, paths: Sequence[str], *, image_sizes: Sequence[int] = (),
               keep_original: bool = False, worker_count: int = 0, batch_size: int = 32,
               group: int = GROUP_TARS):
    self.paths = list(paths)
    self.options = dict(image_sizes=tuple(image_sizes), keep_original=keep_original,
                        worker_count=worker_count)
    DecodeAndResize(image_sizes, keep_original)  # bad sizes fail here, not at first use
    if not isinstance(worker_count, int) or worker_count < 0:
      raise ValueError(f'worker_count: expected an integer >= 0, got {worker_count!r}')
    self.batch_size, self.group = batch_size, group
    self._next = 0           # the tar that rows() hands out next
    self._first = 0          # the running group's first tar
    self._iterator = None
    self._batch, self._row, self._exhausted = None, 0, False

  def _start(self, first: int) -> None:
    self.close()
    source = TarShardSource(self.paths[first:first + self.group])
    self._iterator = iter(decode_pipeline(source, self.batch_size,
                                          shard_options=grain.sharding.NoSharding(),
                                          **self.options))
    self._first, self._batch, self._row, self._exhausted = first, None, 0, False

  def _peek(self) -> int | None:
    """The tar (index into paths) of the next record of the running group, None after
    its last."""
    if self._exhausted:
      return None
    if self._batch is None or self._row == len(self._batch['skip']):
      self._batch, self._row = next(self._iterator, None), 0
      if self._batch is None:
        self._exhausted = True
        return None
    return self._first + int(self._batch['shard_number'][self._row])

  def rows(self, path: str, skips, wanted: set | None = None) -> Iterator[dict]:
    """The usable rows of tar `path` (the next of paths), one dict each as iter_rows gives
    them, in tar order; its skip rows are counted in the Counter `skips` by reason, as
    iter_shard(decode=True) counts them. With `wanted` (a set of uids) only their rows
    come, and a corrupt image counts only when its uid is wanted, as the embed stage
    counts (it decodes no other). Rows of earlier tars not read are passed over."""
    if self._next >= len(self.paths) or path != self.paths[self._next]:
      expected = self.paths[self._next] if self._next < len(self.paths) else 'none'
      raise ValueError(f'{path}: asked for out of order; the next tar is {expected}')
    self._next += 1
    return self._rows(self._next - 1, skips, wanted)

  def _rows(self, number: int, skips, wanted: set | None) -> Iterator[dict]:
    if self._iterator is None or number >= self._first + self.group:
      self._start(number)
    while (shard := self._peek()) is not None and shard <= number:
      batch, row = self._batch, self._row
      self._row += 1
      if shard < number:
        continue
      skip, uid = str(batch['skip'][row]), str(batch['uid'][row])
      if wanted is not None and uid not in wanted and skip in ('', 'corrupt_image'):
        continue
      if skip:
        skips[skip] += 1
      else:
        yield {name: values[row] for name, values in batch.items()}

  def close(self) -> None:
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
