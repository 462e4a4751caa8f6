"""Several processes, one pool: joining the job, owning shards, and numpy-level collectives.

Each process ingests, embeds and scores the shards it owns (index % process_count ==
process_index). What the whole pool decides (k-means sums, standardizer moments, fraction
thresholds, the global top-k cut) comes from the collectives below, never from a file one
process writes for another; only the writer (process 0) writes pool-wide outputs.

The collectives carry raw bytes (numpy's .npy format) through
jax.experimental.multihost_utils, so float64 and int64 arrive exactly whatever
jax_enable_x64 says, and shapes may differ between processes. Every process receives every
part in process (or shard) order and combines them in that order, so all processes hold the
same bytes, and a sum over shards in shard order is the sum one process computes over the
same shards. With one process each function returns its input, as numpy, and no collective
runs. A process that fails before a collective leaves the others waiting in it until JAX's
distributed timeouts end the job: check inputs before calling.

jax.distributed.initialize must run before anything starts a JAX backend (jax.devices, any
computation): main.run calls initialize(config) first. On CPU the cross-process
collectives are gloo over TCP, jax 0.10.2's default for jax_cpu_collectives_implementation.
"""

import dataclasses
import io
import json
import logging
import os
import re

import jax
from jax.experimental import multihost_utils
import numpy as np

# Where an unset config.distributed field is read from.
ENV = {'coordinator_address': 'TADS_COORDINATOR_ADDRESS',
       'num_processes': 'TADS_NUM_PROCESSES',
       'process_id': 'TADS_PROCESS_ID'}
_FIELDS = ('enabled',) + tuple(ENV) + ('heartbeat_timeout_s',)
# JAX's default: how long a process may go silent before the job's others abort.
HEARTBEAT_TIMEOUT_S = 100


@dataclasses.dataclass(frozen=True)
class Settings:
  """config.distributed with the environment filled in; None: left to JAX's detection."""
  enabled: bool | str            # False | True | 'auto'
  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None
  heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S  # a killed process ends the others after it


def settings(config, environ=None) -> Settings:
  """config.distributed checked, unset fields read from the TADS_* variables of `environ`
  (default os.environ) unless enabled is False. A config without the block runs one
  process. ValueError names the field (and the variable a bad value came from)."""
  environ = os.environ if environ is None else environ
  block = config.get('distributed') if hasattr(config, 'get') else None
  if block is None:
    return Settings(False, None, None, None)
  values = dict(block.to_dict() if hasattr(block, 'to_dict') else block)
  for name in values:
    if name not in _FIELDS:
      raise ValueError(f'config.distributed.{name}: unknown field; known fields: '
                       f'{", ".join(_FIELDS)}')
  enabled = values.get('enabled', False)
  if not (isinstance(enabled, bool) or enabled == 'auto'):
    raise ValueError(f"config.distributed.enabled: True, False or 'auto', got {enabled!r}")
  fields = {}
  for name, variable in ENV.items():
    value, source = values.get(name), f'config.distributed.{name}'
    if value in (None, '') and enabled is not False and environ.get(variable, ''):
      value, source = environ[variable], f'config.distributed.{name}: {variable}'
    fields[name] = _parse(name, value, source)
  count, index = fields['num_processes'], fields['process_id']
  if count is not None and index is not None and index >= count:
    raise ValueError(f'config.distributed.process_id: must be < num_processes={count}, '
                     f'got {index}')
  timeout = values.get('heartbeat_timeout_s', HEARTBEAT_TIMEOUT_S)
  if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
    raise ValueError(f'config.distributed.heartbeat_timeout_s: expected an integer >= 1, '
                     f'got {timeout!r}')
  return Settings(enabled, **fields, heartbeat_timeout_s=timeout)


def _parse(name: str, value, source: str):
  """One field's value (from the config, or a string from the environment) or None."""
  if value is None or value == '':
    return None
  if name == 'coordinator_address':
    if not isinstance(value, str) or not re.fullmatch(r'\S+:\d{1,5}', value):
      raise ValueError(f"{source}: expected 'host:port', got {value!r}")
    if not 0 < int(value.rsplit(':', 1)[1]) < 65536:
      raise ValueError(f'{source}: port out of range in {value!r}')
    return value
  if isinstance(value, str):  # from the environment
    try:
      value = int(value)
    except ValueError:
      raise ValueError(f'{source}: expected an integer, got {value!r}') from None
  if isinstance(value, bool) or not isinstance(value, int):
    raise ValueError(f'{source}: expected an integer, got {type(value).__name__} {value!r}')
  least = 1 if name == 'num_processes' else 0
  if value < least:
    raise ValueError(f'{source}: must be >= {least}, got {value}')
  return value


def _cluster_detected() -> bool:
  """Whether JAX's own auto-detection (Cloud TPU pod, Slurm, Open MPI, Kubernetes) sees a
  job, so that jax.distributed.initialize() needs no arguments. Reads jax._src.clusters, the
  list initialize itself walks (no public API says this)."""
  try:
    from jax._src import clusters  # pylint: disable=g-import-not-at-top
    kinds = clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    return False
  return any(not kind.opt_in_only_method and kind.is_env_present() for kind in kinds)


def initialize(config) -> bool:
  """Joins the multi-process job config.distributed describes, once; True when this
  process is in one (a repeat call too), False when the config runs a single process.

  enabled='auto' joins when an address or a process count is known (config or TADS_*
  variables) or JAX detects a cluster; unset fields are left to that detection.
  """
  s = settings(config)
  if jax.distributed.is_initialized():
    return True
  if s.enabled is False:
    return False
  complete = None not in (s.coordinator_address, s.num_processes, s.process_id)
  detected = not complete and _cluster_detected()
  if s.enabled == 'auto' and not (detected or s.coordinator_address or s.num_processes):
    return False
  if not complete and not detected:
    missing = next(name for name in ENV if getattr(s, name) is None)
    raise ValueError(f'config.distributed.{missing}: not set (nor {ENV[missing]}), and no '
                     'cluster environment (Cloud TPU pod, Slurm, Open MPI, Kubernetes) was '
                     'detected to supply it')
  if jax.config.jax_cpu_collectives_implementation is None:  # CPU processes need one
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=s.coordinator_address,
                             num_processes=s.num_processes, process_id=s.process_id,
                             heartbeat_timeout_seconds=s.heartbeat_timeout_s)
  logging.info('distributed: process %d of %d, %d local of %d devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def owns(shard_index: int) -> bool:
  """Whether this process reads, embeds and scores shard `shard_index`."""
  return shard_index % process_count() == process_index()


def is_writer() -> bool:
  """The one process that writes pool-wide outputs (subset.npy, scores, the report)."""
  return process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all have reached the barrier `name` (nothing with one
  process): e.g. until the writer has written what the next stage reads."""
  if process_count() > 1:
    multihost_utils.sync_global_devices(name)


def all_sum(array) -> np.ndarray:
  """The elementwise sum of every process's array (same shape and dtype everywhere), added
  in process order in that dtype: every process gets the same bytes."""
  local = np.asarray(array)
  if local.dtype == bool or local.dtype.hasobject:
    raise ValueError(f'all_sum: needs numbers, got dtype {local.dtype}')
  if process_count() == 1:
    return local
  parts = _all_gather_arrays(local)
  for p, part in enumerate(parts):
    if part.shape != local.shape or part.dtype != local.dtype:
      raise ValueError(f'all_sum: process {p} sent {part.dtype} {part.shape}, process '
                       f'{process_index()} {local.dtype} {local.shape}')
  total = parts[0]
  for part in parts[1:]:
    total = np.asarray(total + part)
  return total


def all_gather_rows(array) -> np.ndarray:
  """Every process's rows ([n_p, ...], n_p may differ, even be 0) concatenated in process
  order: e.g. per-sample scores from which each process finds the same global cut."""
  local = np.asarray(array)
  if local.ndim == 0:
    raise ValueError('all_gather_rows: needs an array with a row axis, got a scalar')
  if process_count() == 1:
    return local
  parts = _all_gather_arrays(local)
  for p, part in enumerate(parts):
    if part.shape[1:] != local.shape[1:] or part.dtype != local.dtype:
      raise ValueError(f'all_gather_rows: process {p} sent {part.dtype} rows of '
                       f'{part.shape[1:]}, process {process_index()} {local.dtype} rows of '
                       f'{local.shape[1:]}')
  return np.concatenate(parts)


def broadcast(array) -> np.ndarray:
  """Process 0's array on every process (the others' argument is ignored and may be None):
  a value only the writer computes, e.g. a draw that must be made once."""
  if process_count() == 1:
    return np.asarray(array)
  data = _to_bytes(np.asarray(array)) if is_writer() else np.zeros(0, np.uint8)
  length = int(multihost_utils.broadcast_one_to_all(np.array([data.size], np.int32))[0])
  padded = np.zeros(_bucket(length), np.uint8)
  padded[:data.size] = data
  return _from_bytes(multihost_utils.broadcast_one_to_all(padded)[:length])


def gather_by_shard(per_shard: dict) -> list:
  """Every shard's value, from whichever process computed it, in shard index order; a
  value is an array or a tuple of arrays. Each process passes {shard index: value} for
  the shards it owns; every process gets the same list, so a pool-wide quantity added up
  in this order is the one a single process computes from all shards."""
  for index in per_shard:
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
      raise ValueError(f'gather_by_shard: shard indices must be integers, got {index!r}')
  local = {int(i): _numpy_value(v) for i, v in per_shard.items()}
  if process_count() == 1:
    return [local[i] for i in sorted(local)]
  buffer = io.BytesIO()
  members = {}
  for index, value in local.items():
    if isinstance(value, tuple):
      members.update({f't{index}_{j}': part for j, part in enumerate(value)})
      members[f'n{index}'] = np.array(len(value))
    else:
      members[f'a{index}'] = value
  np.savez(buffer, **members)
  merged, source = {}, {}
  for p, data in enumerate(_all_gather_bytes(np.frombuffer(buffer.getvalue(), np.uint8))):
    with np.load(io.BytesIO(data.tobytes()), allow_pickle=False) as npz:
      for name in npz.files:
        if name[0] == 't':
          continue
        index = int(name[1:])
        if index in merged:
          raise ValueError(f'gather_by_shard: shard {index} came from processes '
                           f'{source[index]} and {p}')
        source[index] = p
        merged[index] = (npz[name] if name[0] == 'a' else
                         tuple(npz[f't{index}_{j}'] for j in range(int(npz[name]))))
  return [merged[i] for i in sorted(merged)]


def gather_records(per_shard: dict) -> list:
  """gather_by_shard for JSON-able records (a stage's per-shard summaries)."""
  parts = gather_by_shard({i: np.frombuffer(json.dumps(r).encode(), np.uint8)
                           for i, r in per_shard.items()})
  return [json.loads(part.tobytes().decode()) for part in parts]


def _numpy_value(value):
  """An array or a tuple of arrays, as numpy (so that one process and many return the same
  types, and sums over them round the same way)."""
  if isinstance(value, (tuple, list)):
    parts = tuple(np.asarray(v) for v in value)
  else:
    parts = (np.asarray(value),)
  for part in parts:
    if part.dtype.hasobject:
      raise ValueError(f'gather_by_shard: values must be numeric arrays, got dtype '
                       f'{part.dtype}')
  return parts if isinstance(value, (tuple, list)) else parts[0]


def _to_bytes(array: np.ndarray) -> np.ndarray:  # -> [n] uint8, the .npy encoding
  buffer = io.BytesIO()
  np.save(buffer, array, allow_pickle=False)
  return np.frombuffer(buffer.getvalue(), np.uint8)


def _from_bytes(data: np.ndarray) -> np.ndarray:
  return np.load(io.BytesIO(np.asarray(data, np.uint8).tobytes()), allow_pickle=False)


def _all_gather_arrays(array: np.ndarray) -> list:
  return [_from_bytes(data) for data in _all_gather_bytes(_to_bytes(array))]


def _all_gather_bytes(data: np.ndarray) -> list:
  """Every process's uint8 buffer, in process order; lengths may differ. The buffers are
  padded to a common bucketed width, so that repeated calls reuse a few compiled programs."""
  if data.size >= 2 ** 31:
    raise ValueError(f'distributed: {data.size} bytes is over the 2 GiB a collective moves')
  lengths = multihost_utils.process_allgather(np.array([data.size], np.int32)).reshape(-1)
  padded = np.zeros(_bucket(int(lengths.max())), np.uint8)  # [width]
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded)  # [P, width]
  return [gathered[p, :length] for p, length in enumerate(lengths)]


def _bucket(size: int) -> int:
  """The smallest m * 2**e >= size with 8 <= m <= 16 (at least 1 KiB): at most 1/8 padding
  and 8 widths per doubling."""
  size = max(size, 1024)
  shift = size.bit_length() - 4
  return -(-size >> shift) << shift
