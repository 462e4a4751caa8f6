"""Stage bookkeeping: fingerprints, skip-if-done, and resumable per-item outputs.

A stage's fingerprint hashes the config fields it reads and the fingerprints of the stages
it reads from, so changing a field reruns exactly the stages that depend on it. A stage
writes `_done.json` last; a stage directory holding another fingerprint is stale and is
cleared before the stage runs, while a directory with the same fingerprint but no
`_done.json` is a killed run whose finished items (shards) are kept and not redone.

Every file is written with atomic_write (and every per-item output with resumable_item), so
that a kill at any point leaves whole files only. This module imports nothing else of
tads_jax, so the data writers use these helpers too.
"""

import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import sys
import time
from typing import Callable, Sequence

import ml_collections
import tqdm

from tads_jax import distributed

DONE = '_done.json'
FINGERPRINT = '_fingerprint'


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  run: Callable[['Context'], dict]  # returns a JSON-able summary kept in _done.json
  # Dotted config fields the outputs depend on, or a function of the config giving them.
  config_keys: Sequence[str] | Callable[[ml_collections.ConfigDict], Sequence[str]]
  # Stages whose outputs it reads, or a function of the config giving them.
  inputs: Sequence[str] | Callable[[ml_collections.ConfigDict], Sequence[str]] = ()
  version: int = 1                  # bump when the stage's outputs change meaning
  # Identity of input files outside the workdir (paths, sizes, mtimes), so that a changed
  # pool reruns the stage even when the config is unchanged.
  input_files: Callable[[ml_collections.ConfigDict], list] | None = None
  # Sub-folders whose items depend on fewer config fields than the whole stage: {folder:
  # dotted config fields}. The folder's own fingerprint hashes those fields and the
  # stage's inputs; when the stage reruns for another config, a folder whose own
  # fingerprint is unchanged is kept (embed: the pool's embeddings survive a task change).
  parts: dict | Callable[[ml_collections.ConfigDict], dict] | None = None
  # Runs on every process of a multi-process job, each on the shards it owns, pool-wide
  # quantities from collectives (distributed.py); False: the writer (process 0) runs it
  # alone while the others wait.
  multiprocess: bool = False
  # Config fields added after workdirs were fingerprinted: {dotted field: the value that
  # does what the code did before the field existed}. At that value a field is left out of
  # the fingerprint, so those workdirs' finished stages stay valid.
  later_fields: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Context:
  config: ml_collections.ConfigDict
  workdir: str
  fingerprints: dict = dataclasses.field(default_factory=dict)

  def stage_dir(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def summary(self, name: str) -> dict:
    """The summary a finished stage recorded."""
    path = os.path.join(self.stage_dir(name), DONE)
    if not os.path.exists(path):
      raise FileNotFoundError(f'{path}: stage {name!r} has not finished in this workdir')
    with open(path) as f:
      return json.load(f)['summary']


def config_value(config, dotted):
  node = config
  for part in dotted.split('.'):
    node = node[part]
  if isinstance(node, ml_collections.ConfigDict):
    return node.to_dict()
  return node


def name_list(value) -> tuple:
  """A list of names given as a tuple, a list or a comma string: a command-line override
  `--config.stages=a,b,c` arrives as ('a,b,c',), so every entry is split at commas."""
  if isinstance(value, str):
    value = (value,)
  return tuple(n.strip() for entry in value for n in str(entry).split(',') if n.strip())


def stage_names(config) -> tuple:
  """config.stages as a tuple of stage names (see name_list)."""
  return name_list(config.stages)


def stage_inputs(stage: Stage, config) -> tuple:
  return tuple(stage.inputs(config) if callable(stage.inputs) else stage.inputs)


def _config_payload(stage: Stage, config, keys) -> dict:
  """{dotted key: value} of the fields a fingerprint hashes, without the stage's later
  fields that are at their earlier value."""
  payload = {k: config_value(config, k) for k in keys}
  for dotted, earlier in stage.later_fields.items():
    for key, value in payload.items():
      if dotted.startswith(key + '.') and isinstance(value, dict):
        *parents, leaf = dotted[len(key) + 1:].split('.')
        for part in parents:
          value = value.get(part, {})
        if leaf in value and value[leaf] == earlier:
          del value[leaf]
  return payload


def fingerprint(stage: Stage, config, upstream: dict) -> str:
  keys = stage.config_keys(config) if callable(stage.config_keys) else stage.config_keys
  payload = {
      'stage': stage.name,
      'version': stage.version,
      'config': _config_payload(stage, config, keys),
      'inputs': {name: upstream[name] for name in stage_inputs(stage, config)},
      'files': stage.input_files(config) if stage.input_files else [],
  }
  blob = json.dumps(payload, sort_keys=True, default=list).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def part_fingerprints(stage: Stage, config, upstream: dict) -> dict:
  """{folder: fingerprint} of the stage's parts (see Stage.parts)."""
  out = {}
  parts = stage.parts(config) if callable(stage.parts) else stage.parts
  for folder, keys in (parts or {}).items():
    payload = {'stage': stage.name, 'version': stage.version, 'part': folder,
               'config': _config_payload(stage, config, keys),
               'inputs': {name: upstream[name] for name in stage_inputs(stage, config)}}
    blob = json.dumps(payload, sort_keys=True, default=list).encode()
    out[folder] = hashlib.sha256(blob).hexdigest()[:16]
  return out


def file_identities(paths) -> list:
  """[path, size, mtime] of each existing file: a stage's input_files."""
  out = []
  for path in paths:
    if os.path.isfile(path):
      st = os.stat(path)
      out.append([os.path.abspath(path), st.st_size, int(st.st_mtime)])
  return out


def read_done(stage_dir: str):
  try:
    with open(os.path.join(stage_dir, DONE)) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


# What atomic writes leave behind when their process is killed before the rename: a file
# `<name>.tmp-<pid>` (atomic_write; `.npy` / `.png` after it where a library adds its
# extension), and
# bpe.atomic_folder's folders `.<name>.tmp-<random>` / `.<name>.old-<random>`.
_TEMPORARY_SUFFIXES = ('', '.npy', '.png')
_TEMPORARY_FILE = re.compile(r'.+\.tmp-(\d+)(\.npy|\.png)?')
_TEMPORARY_FOLDER = re.compile(r'\..+\.(tmp|old)-\w+')


def _may_be_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError):  # another user's process; not a pid at all
    return True
  return True


def remove_temporaries(workdir: str) -> list:
  """Removes what killed writers left half-written in `workdir`; returns the paths.

  They never got renamed into place, and no rerun writes under the same name (a file's
  name holds its dead writer's pid), so without this they stay for good. Call it only
  while holding the workdir's lock, so that no stage is writing there; a temporary file of
  a live process (a tool writing the evaluate cache without the lock) is kept. orbax's
  checkpoint folders are left to orbax (a killed save's step is written again).
  """
  removed = []
  for dirpath, dirnames, filenames in os.walk(workdir):
    for name in sorted(dirnames):
      if _TEMPORARY_FOLDER.fullmatch(name):
        shutil.rmtree(os.path.join(dirpath, name))
        removed.append(os.path.join(dirpath, name))
    dirnames[:] = [d for d in dirnames
                   if d != 'checkpoints' and not _TEMPORARY_FOLDER.fullmatch(d)]
    for name in filenames:
      match = _TEMPORARY_FILE.fullmatch(name)
      if match and not _may_be_alive(int(match.group(1))):
        os.remove(os.path.join(dirpath, name))
        removed.append(os.path.join(dirpath, name))
  if removed:
    logging.info('removed %d file(s) that a killed run left half-written, e.g. %s',
                 len(removed), removed[0])
  return removed


@contextlib.contextmanager
def atomic_write(path: str, suffix: str = ''):
  """Yields a temporary name beside `path` to write to; it replaces `path` when the block
  ends, so that a reader (or a rerun after a kill) sees the old file or the whole new one,
  never half of one. A block that raises leaves `path` as it was and removes the temporary.

  The name, `<path>.tmp-<pid><suffix>`, is what remove_temporaries clears after a kill -9;
  suffix is '.npy' or '.png' for the libraries that append their extension to a name
  (np.save, savefig). Write through a file object (`open(tmp, 'wb')`) otherwise.
  """
  if suffix not in _TEMPORARY_SUFFIXES:
    raise ValueError(f'{path}: temporary suffix {suffix!r} is not one of '
                     f'{_TEMPORARY_SUFFIXES} (remove_temporaries would miss the file)')
  tmp = f'{path}.tmp-{os.getpid()}{suffix}'
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


# Rows per parquet row group and per streamed batch of the per-sample tables: a reader
# holds one row group of the columns it reads, so this, not the pool, bounds its memory.
ROW_GROUP = 65536


def write_row_stream(tables, path: str):
  """Writes an iterable of tables (one schema, at least one table) as one parquet file in
  row groups of ROW_GROUP rows, holding at most that many rows; yields each table once
  written (for tallies)."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  tables = iter(tables)
  first = next(tables)
  with pq.ParquetWriter(path, first.schema) as writer:
    pending = first.schema.empty_table()
    for table in itertools.chain([first], tables):
      pending = pa.concat_tables([pending, table])
      while pending.num_rows >= ROW_GROUP:
        writer.write_table(pending.slice(0, ROW_GROUP), row_group_size=ROW_GROUP)
        pending = pending.slice(ROW_GROUP)
      yield table
    if pending.num_rows:
      writer.write_table(pending, row_group_size=ROW_GROUP)


def iter_rows(path: str, columns=None, batch_size: int = ROW_GROUP):
  """The record batches of a parquet file, read one row group at a time: no pre-buffering
  or threaded read-ahead, which hold more of the file than the batch."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  reader = pq.ParquetFile(path, pre_buffer=False)
  return reader.iter_batches(batch_size=batch_size, columns=columns, use_threads=False)


def write_json_atomic(path: str, obj) -> None:
  with atomic_write(path) as tmp, open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)


def item_done(item: str) -> bool:
  """Whether a resumable item (see resumable_item) was finished by an earlier run."""
  return os.path.exists(item + '.json')


def resumable_item(item: str, compute: Callable[[], dict]) -> dict:
  """The record of one item of a resumable stage (a pool shard, a task split).

  A finished item's record is read back from `<item>.json` and nothing is recomputed.
  Otherwise compute() writes the item's files (each with atomic_write) and returns its
  JSON-able record, which is written last: the record's presence means the files are
  whole, so a run killed anywhere redoes at most the item it was on.
  """
  if item_done(item):
    with open(item + '.json') as f:
      return json.load(f)
  record = compute()
  write_json_atomic(item + '.json', record)
  return record


def _json_default(obj):
  if hasattr(obj, 'item'):  # numpy scalars
    return obj.item()
  if hasattr(obj, 'tolist'):
    return obj.tolist()
  raise TypeError(f'cannot write {type(obj).__name__} to JSON')


def run_stages(stages: Sequence[Stage], names: Sequence[str], ctx: Context) -> dict:
  """Runs the named stages in order, skipping those already done with this fingerprint.

  Returns {stage name: 'ran' | 'skipped'}.
  """
  by_name = {s.name: s for s in stages}
  status = {}
  for name in names:
    stage = by_name[name]
    for dep in stage_inputs(stage, ctx.config):
      if dep not in ctx.fingerprints:
        done = read_done(ctx.stage_dir(dep))
        if done is None:
          raise RuntimeError(f'stage {name!r} reads the outputs of stage {dep!r}, which is '
                             f'not in config.stages and has not finished in {ctx.workdir}')
        ctx.fingerprints[dep] = done['fingerprint']
    fp = fingerprint(stage, ctx.config, ctx.fingerprints)
    stage_dir = ctx.stage_dir(name)
    done = read_done(stage_dir)
    if done is not None and done['fingerprint'] == fp:
      logging.info('stage %s: done with fingerprint %s, skipped', name, fp)
      ctx.fingerprints[name] = fp
      status[name] = 'skipped'
      continue
    # Several processes: the writer prepares the directory and marks the stage done; the
    # others wait for it, and run the stage only when it splits its work over them.
    writer = distributed.is_writer()
    if writer:
      _prepare_dir(stage_dir, fp, part_fingerprints(stage, ctx.config, ctx.fingerprints))
    distributed.barrier(f'{name}: prepared')
    logging.info('stage %s: running (fingerprint %s)', name, fp)
    start = time.time()
    summary = stage.run(ctx) if writer or stage.multiprocess else None
    distributed.barrier(f'{name}: ran')
    if writer:
      write_json_atomic(os.path.join(stage_dir, DONE), {
          'fingerprint': fp, 'seconds': round(time.time() - start, 3), 'summary': summary})
    distributed.barrier(f'{name}: done')
    ctx.fingerprints[name] = fp
    status[name] = 'ran'
    logging.info('stage %s: finished in %.1f s', name, time.time() - start)
  return status


def _read_marker(directory: str) -> str | None:
  try:
    with open(os.path.join(directory, FINGERPRINT)) as f:
      return f.read().strip()
  except FileNotFoundError:
    return None


def _prepare_dir(stage_dir: str, fp: str, parts: dict | None = None) -> None:
  """Clears a stage directory left by another config, except the parts whose own
  fingerprint still matches; keeps a killed run's items."""
  parts = parts or {}
  if os.path.isdir(stage_dir):
    if _read_marker(stage_dir) != fp:
      for entry in os.listdir(stage_dir):
        path = os.path.join(stage_dir, entry)
        if entry in parts and os.path.isdir(path) and _read_marker(path) == parts[entry]:
          logging.info('%s: kept (its inputs did not change)', path)
          continue
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path)
        else:
          os.remove(path)
    elif os.path.exists(os.path.join(stage_dir, DONE)):
      os.remove(os.path.join(stage_dir, DONE))
  os.makedirs(stage_dir, exist_ok=True)
  for folder, part_fp in parts.items():
    os.makedirs(os.path.join(stage_dir, folder), exist_ok=True)
    with open(os.path.join(stage_dir, folder, FINGERPRINT), 'w') as f:
      f.write(part_fp)
  with open(os.path.join(stage_dir, FINGERPRINT), 'w') as f:
    f.write(fp)


class Progress:
  """Rate and ETA of a long loop: a tqdm bar when `stream` (stderr) is a terminal, else a
  log line (items/s, ETA) at most every `every` seconds, and one when the loop is done."""

  def __init__(self, name: str, total: int, unit: str = 'samples', every: float = 5.0,
               stream=None, lines: bool = True, initial: int = 0):
    """lines=False: no log lines off a terminal (the caller logs its own, with metrics);
    initial: items already done (a resumed loop)."""
    self.name, self.total, self.unit, self.every = name, total, unit, every
    self.lines = lines
    self.start = self.last = time.time()
    stream = sys.stderr if stream is None else stream
    self.bar = None
    if _is_terminal(stream):
      self.bar = tqdm.tqdm(total=total, desc=name, unit=f' {unit}', file=stream,
                           dynamic_ncols=True, smoothing=0.1, mininterval=0.5,
                           unit_scale=True, initial=initial)
    self.done = initial

  def update(self, n: int) -> None:
    self.done += n
    now = time.time()
    if self.bar is not None:
      self.bar.update(n)
      if self.done >= self.total:
        self.close()
      return
    if not self.lines:
      return
    if now - self.last >= self.every or self.done >= self.total:
      self.last = now
      rate = self.done / max(now - self.start, 1e-9)
      eta = (self.total - self.done) / rate if rate > 0 else float('inf')
      logging.info('%s: %d/%d %s, %.0f %s/s, ETA %.0f s', self.name, self.done, self.total,
                   self.unit, rate, self.unit, eta)

  def postfix(self, **values) -> None:
    """Metrics shown beside the bar (loss, ...); nothing off a terminal."""
    if self.bar is not None:
      self.bar.set_postfix(values, refresh=False)

  def close(self) -> None:
    """Ends the bar (when there is one); a loop that stops early should call it."""
    if self.bar is not None:
      self.bar.close()
      self.bar = None


def _is_terminal(stream) -> bool:
  try:
    return bool(stream.isatty())
  except (AttributeError, ValueError):  # no isatty, or a closed stream
    return False
