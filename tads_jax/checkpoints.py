"""Orbax checkpoints of a training loop, each with the fingerprint of the run it belongs to.

A checkpoint holds the loop's state and a JSON item with the run's fingerprint (what must
match for the checkpoint to be resumed: the config fields that change what the run
computes, digests of its data) and its history so far. Restoring checks the fingerprint
first, so a workdir reused for another run raises instead of resuming the wrong one.
"""

import hashlib
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp


def make_manager(directory: str, keep: int) -> ocp.CheckpointManager:
  """A manager of `directory` keeping the last `keep` checkpoints. The loop decides when to
  save (loop.run: every checkpoint_every steps and at the end).

  The checkpoints are this process's own: in a multi-process job the training loops run on
  one process (the writer) with local devices, or, for a state replicated over every
  process (meta-learning), the writer alone saves and every process reads its checkpoints
  (loop.run); orbax must not wait for the others."""
  os.makedirs(directory, exist_ok=True)  # orbax creates it only with every process taking part
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=False,
      multiprocessing_options=ocp.options.MultiprocessingOptions(
          primary_host=jax.process_index(), active_processes={jax.process_index()}))
  return ocp.CheckpointManager(directory, options=options, item_names=('state', 'meta'))


def digest(*arrays) -> str:
  """sha256 over the arrays' dtypes, shapes and bytes, for fingerprints."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(a)
    h.update(str((a.dtype.str, a.shape)).encode())
    h.update(a.reshape(-1).view(np.uint8))  # the bytes, without a copy
  return h.hexdigest()


def config_fields(config: dict, resumable) -> dict:
  """A config's fields (a dict) without the `resumable` ones, which do not change what a
  run computes (how often it logs or saves): a checkpoint may be resumed with others."""
  return {k: v for k, v in config.items() if k not in resumable}


def check_fingerprint(directory, step, saved, expected, config_name='TrainConfig'):
  """Raises ValueError unless a checkpoint's recorded fingerprint (`saved`) matches this
  run's (`expected`): the same data fields and the same config fields."""
  for key, value in expected.items():
    if key == 'config':
      continue
    if json.loads(json.dumps(value)) != saved.get(key):
      raise ValueError(f'{directory}: the checkpoint at step {step} was written for other '
                       f'data ({key}={saved.get(key)!r}, this run {value!r}); use another '
                       'workdir')
  for key, value in expected['config'].items():
    old = saved.get('config', {}).get(key)
    if old != json.loads(json.dumps(value)):  # tuples are stored as lists
      raise ValueError(f'{directory}: the checkpoint at step {step} was written with '
                       f'{config_name}.{key}={old!r}, this run has {value!r}; use another '
                       'workdir')


def save(manager, step: int, state, fingerprint: dict, history: dict) -> None:
  """Saves the state with the run's fingerprint and history (a copy: the save finishes in
  the background while history grows).

  The state is saved as host numpy arrays: orbax refuses arrays on one process's devices
  in a multi-process job, and restore puts them back on the template's devices."""
  meta = dict(fingerprint, history={k: list(v) for k, v in history.items()})
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(jax.device_get(state)), meta=ocp.args.JsonSave(meta)),
      force=True)


def restore(manager, directory: str, state, fingerprint: dict,
            config_name='TrainConfig', step: int | None = None):
  """(step, state, history) of checkpoint `step` (default the latest), checked against the
  fingerprint, or None when there is none. `state` gives the structure and shardings to
  restore into; a state on a mesh over several processes is read as host arrays and put
  back on that mesh."""
  latest = manager.latest_step() if step is None else step
  if latest is None:
    return None
  meta = manager.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
  check_fingerprint(directory, latest, meta, fingerprint, config_name)
  if spans_processes(state):
    host = jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), state)
    restored = manager.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(host)))['state']
    restored = jax.tree_util.tree_map(lambda x, t: jax.device_put(x, t.sharding), restored,
                                      state)
  else:
    restored = manager.restore(latest, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(state))))['state']
  return latest, restored, {k: list(v) for k, v in meta['history'].items()}


def spans_processes(state) -> bool:
  """Whether any array of `state` lives on a mesh over several processes' devices."""
  return any(not x.sharding.is_fully_addressable
             for x in jax.tree_util.tree_leaves(state) if hasattr(x, 'sharding'))


def _abstract(tree):
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
