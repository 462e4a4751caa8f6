"""distributed.py: config checks, the one-process identities, and a 2-process job on localhost
whose collectives and streaming k-means give the bytes one process gets.

The 2-process job runs this file as a script (`python tests/test_distributed.py pair|single
OUT`), one device per process, so that no child inherits conftest's 8 devices.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from tads_jax import config as config_lib
from tads_jax import distributed
from tads_jax import main
from tads_jax.scoring import kmeans

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD_TIMEOUT_S = 300  # a hung collective fails the test instead of hanging CI (each spawn
# takes about a minute or less alone; 300 s leaves room for a loaded or slower machine)


def _config(**fields):
  block = dict(enabled=False, coordinator_address='', num_processes=None, process_id=None)
  block.update(fields)
  return ml_collections.ConfigDict({'distributed': block})


@pytest.fixture
def no_job(monkeypatch):
  """An environment that shows no multi-process job, whatever machine runs the test."""
  for variable in distributed.ENV.values():
    monkeypatch.delenv(variable, raising=False)
  monkeypatch.setattr(distributed, '_cluster_detected', lambda: False)


# ---------------------------------------------------------------------------------------
# Config checks.


@pytest.mark.parametrize('field,value,message', [
    ('enabled', 'yes', r"config.distributed.enabled: True, False or 'auto', got 'yes'"),
    ('enabled', 1, r"config.distributed.enabled: True, False or 'auto', got 1"),
    ('coordinator_address', 'localhost', r"config.distributed.coordinator_address: expected "
                                         r"'host:port', got 'localhost'"),
    ('coordinator_address', 'h:99999', r'config.distributed.coordinator_address: port out'),
    ('num_processes', 0, r'config.distributed.num_processes: must be >= 1, got 0'),
    ('num_processes', True, r'config.distributed.num_processes: expected an integer'),
    ('process_id', -1, r'config.distributed.process_id: must be >= 0, got -1'),
    ('heartbeat_timeout_s', 0, r'config.distributed.heartbeat_timeout_s: expected an '
                               r'integer >= 1, got 0'),
])
def test_bad_values_name_the_field(field, value, message, tmp_path, no_job):
  good = dict(enabled=True, coordinator_address='127.0.0.1:1234', num_processes=2,
              process_id=0)
  with pytest.raises(ValueError, match=message):
    distributed.settings(_config(**dict(good, **{field: value})))
  from configs import default  # pylint: disable=g-import-not-at-top
  full = default.get_config()  # disabled: its values are checked all the same
  with full.ignore_type():
    full.distributed[field] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    main.run(full, str(tmp_path / 'work'))
  assert not (tmp_path / 'work').exists()  # failed before any work


def test_process_id_must_be_below_the_count(no_job):
  with pytest.raises(ValueError, match=r'config.distributed.process_id: must be < '
                                       r'num_processes=2, got 2'):
    distributed.settings(_config(enabled=True, num_processes=2, process_id=2))


def test_unknown_field_is_named():
  c = _config()
  c.distributed.port = 3
  with pytest.raises(ValueError, match=r'config.distributed.port: unknown field'):
    distributed.settings(c)


def test_unset_fields_come_from_the_environment(monkeypatch):
  monkeypatch.setenv('TADS_COORDINATOR_ADDRESS', '10.0.0.1:8476')
  monkeypatch.setenv('TADS_NUM_PROCESSES', '4')
  monkeypatch.setenv('TADS_PROCESS_ID', '3')
  assert distributed.settings(_config(enabled='auto')) == distributed.Settings(
      'auto', '10.0.0.1:8476', 4, 3)
  # The config wins over the environment; a disabled block reads nothing from it.
  assert distributed.settings(_config(enabled=True, num_processes=8)).num_processes == 8
  assert distributed.settings(_config()) == distributed.Settings(False, None, None, None)
  monkeypatch.setenv('TADS_NUM_PROCESSES', 'two')
  with pytest.raises(ValueError, match=r"config.distributed.num_processes: "
                                       r"TADS_NUM_PROCESSES: expected an integer, got 'two'"):
    distributed.settings(_config(enabled=True))
  distributed.settings(_config())  # disabled: the bad variable is not read


def test_no_block_is_one_process():
  assert distributed.settings(ml_collections.ConfigDict({'seed': 0})).enabled is False


def test_single_process_configs_do_not_join(no_job):
  assert distributed.initialize(_config()) is False
  assert distributed.initialize(_config(enabled='auto')) is False
  assert not jax.distributed.is_initialized()


def test_enabled_without_an_address_or_cluster_says_what_is_missing(no_job):
  with pytest.raises(ValueError, match=r'config.distributed.coordinator_address: not set '
                                       r'\(nor TADS_COORDINATOR_ADDRESS\), and no cluster'):
    distributed.initialize(_config(enabled=True, num_processes=2, process_id=0))
  with pytest.raises(ValueError, match=r'config.distributed.coordinator_address: not set'):
    distributed.initialize(_config(enabled='auto', num_processes=2))
  assert not jax.distributed.is_initialized()


# ---------------------------------------------------------------------------------------
# One process: every collective is the identity.


def test_one_process_collectives_are_the_identity():
  assert distributed.process_count() == 1 and distributed.is_writer()
  assert all(distributed.owns(i) for i in range(5))
  x = np.arange(6.0).reshape(3, 2)
  assert distributed.all_sum(x) is x
  assert distributed.all_gather_rows(x) is x
  assert distributed.broadcast(x) is x
  row = x[0]
  first, second = distributed.gather_by_shard({2: x, 0: (x, row)})  # in shard order
  assert first[0] is x and first[1] is row and second is x
  with pytest.raises(ValueError, match='all_sum: needs numbers'):
    distributed.all_sum(np.ones(2, bool))
  with pytest.raises(ValueError, match='all_gather_rows: needs an array with a row axis'):
    distributed.all_gather_rows(np.float32(1))
  with pytest.raises(ValueError, match='gather_by_shard: shard indices must be integers'):
    distributed.gather_by_shard({'a': x})


def test_bucket_pads_little():
  for size in (0, 1, 1024, 1025, 5000, 10 ** 6, 3 * 2 ** 20 + 1):
    width = distributed._bucket(size)  # pylint: disable=protected-access
    assert size <= width <= max(1024, size * 9 // 8 + 1)


# ---------------------------------------------------------------------------------------
# Two processes on localhost.

SHARD_ROWS = [40, 0, 37, 64, 23, 50, 31]  # shard 1 empty; 2 processes own 4 and 3 shards
K, ITERS = 6, 5


def _process_data(p: int) -> dict:
  """What process p contributes; every process can rebuild every other's, to check."""
  rng = np.random.default_rng(100 + p)
  return dict(f64=rng.normal(size=(3, 4)),                    # float64 survives (x64 off)
              i64=rng.integers(2 ** 40, 2 ** 41, size=5),      # so does int64
              rows=rng.normal(size=(3 * p, 2)).astype(np.float32),  # process 0: no rows
              big=rng.integers(0, 2 ** 62, size=700))          # over the 1 KiB bucket


def _shard_value(i: int):
  """A per-shard value of varying shape and type (every third one a tuple)."""
  rng = np.random.default_rng(200 + i)
  if i % 3 == 0:
    return (np.arange(i, dtype=np.float32), np.array(i * 1.5))
  return rng.integers(0, 100, size=(i, 2)).astype(np.int16)


def _kmeans_pool() -> np.ndarray:  # [N, 16] float32: K noisy directions
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(K, 16))
  labels = rng.integers(0, K, size=sum(SHARD_ROWS))
  return (centres[labels] + 0.6 * rng.normal(size=(len(labels), 16))).astype(np.float32)


def _same(a, b) -> bool:
  if isinstance(a, tuple) or isinstance(b, tuple):
    return (isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b) and
            all(_same(x, y) for x, y in zip(a, b)))
  return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _check_collectives(p: int, count: int):
  """Each collective against the answer computed here from every process's data."""
  data = [_process_data(q) for q in range(count)]
  for key in ('f64', 'i64'):
    expected = data[0][key]
    for q in range(1, count):
      expected = expected + data[q][key]
    got = distributed.all_sum(data[p][key])
    assert _same(got, expected), f'all_sum {key}: {got} != {expected}'
  got = distributed.all_gather_rows(data[p]['rows'])
  assert _same(got, np.concatenate([d['rows'] for d in data])), f'all_gather_rows: {got}'
  for key in ('f64', 'big'):
    got = distributed.broadcast(data[0][key] if p == 0 else None)
    assert _same(got, data[0][key]), f'broadcast {key}: {got}'
  assert [i for i in range(7) if distributed.owns(i)] == list(range(p, 7, count))
  assert distributed.is_writer() == (p == 0)
  got = distributed.gather_by_shard({i: _shard_value(i) for i in range(7)
                                     if distributed.owns(i)})
  assert len(got) == 7 and all(_same(g, _shard_value(i)) for i, g in enumerate(got)), got


def _child(mode: str, out: str):
  """One process of the 2-process job ('pair': TADS_* set) or the one-process reference
  ('single'): checks the collectives, fits the streaming k-means over the shards it owns
  and saves what it got to out + '_<process>.npz'."""
  joined = distributed.initialize(_config(enabled='auto'))
  assert joined == (mode == 'pair'), joined
  assert distributed.initialize(_config(enabled='auto')) == joined  # a repeat call is fine
  p, count = distributed.process_index(), distributed.process_count()
  assert count == (2 if mode == 'pair' else 1), count
  _check_collectives(p, count)

  pool = _kmeans_pool()
  starts = np.cumsum([0] + SHARD_ROWS)
  owned = [i for i in range(len(SHARD_ROWS)) if distributed.owns(i)]

  def chunks():
    for i in owned:
      yield i, pool[starts[i]:starts[i + 1]]

  fit = kmeans.fit_stream(chunks, len(pool), K, ITERS, jax.random.key(7), chunk=16,
                          init_sample=100, shard_rows=SHARD_ROWS,
                          gather=distributed.gather_by_shard, processes=count)
  local = np.split(fit.assignment, np.cumsum([SHARD_ROWS[i] for i in owned])[:-1])
  assignment = np.concatenate(distributed.gather_by_shard(dict(zip(owned, local))))
  saved = dict(centroids=fit.centroids, assignment=assignment, history=np.array(fit.history),
               objective=np.array(fit.objective), computed=np.array(fit.computed))
  if mode == 'single':  # the plain stream (no shard_rows): the same k-means, other rounding
    plain = kmeans.fit_stream(
        lambda: (pool[starts[i]:starts[i + 1]] for i in range(len(SHARD_ROWS))), len(pool),
        K, ITERS, jax.random.key(7), chunk=16, init_sample=100)
    saved.update(plain_centroids=plain.centroids, plain_assignment=plain.assignment)
  np.savez(f'{out}_{p}.npz', **saved)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _spawn(tmp_path, runs, check=True):
  """Runs this file as a script once per (args, is one of the pair[, devices]) in `runs`,
  the pair joined on localhost, one device each unless said; asserts that every child
  exited 0 (check), and returns their exit codes and logs."""
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  # Not the suite's compilation cache (conftest.py): with it, the resumed pair below lost
  # a process (heartbeat timeout) on 2 cores.
  env = {k: v for k, v in os.environ.items()
         if k not in distributed.ENV.values() and not k.startswith(('JAX_COMPILATION_CACHE',
                                                                     'JAX_PERSISTENT_CACHE'))}
  # (Imported here: the children run this file as a script, and importing conftest there
  # would give them the suite's compilation cache, which they must not use.)
  from conftest import FRESH_PROCESS_ENV  # pylint: disable=g-import-not-at-top
  env.update(PYTHONPATH=os.pathsep.join([REPO, env.get('PYTHONPATH', '')]).rstrip(os.pathsep),
             JAX_PLATFORMS='cpu', **FRESH_PROCESS_ENV)
  address = f'127.0.0.1:{_free_port()}'
  procs, logs, pair = [], [], 0
  for i, (args, in_pair, *devices) in enumerate(runs):
    devices = devices[0] if devices else 1
    extra = {'XLA_FLAGS': ' '.join(flags + [f'--xla_force_host_platform_device_count={devices}'])}
    if in_pair:
      extra.update(TADS_COORDINATOR_ADDRESS=address, TADS_NUM_PROCESSES='2',
                   TADS_PROCESS_ID=str(pair))
      pair += 1
    log = open(tmp_path / f'child{i}.log', 'w')  # pylint: disable=consider-using-with
    logs.append(log)
    procs.append(subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        env=dict(env, **extra), stdout=log, stderr=subprocess.STDOUT, cwd=REPO))
  deadline = time.monotonic() + CHILD_TIMEOUT_S
  try:
    for proc in procs:
      proc.wait(timeout=max(deadline - time.monotonic(), 1))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    for log in logs:
      log.close()
  outputs = [(tmp_path / f'child{i}.log').read_text() for i in range(len(procs))]
  for i, proc in enumerate(procs):
    assert proc.returncode == 0 or not check, (
        f'child {i} ({runs[i][0]}) exited {proc.returncode} (-9: killed after '
        f'{CHILD_TIMEOUT_S} s):\n{outputs[i][-3000:]}')
  return [proc.returncode for proc in procs], outputs


def test_two_processes_get_the_bytes_one_process_gets(tmp_path):
  _spawn(tmp_path, [(('pair', str(tmp_path / 'pair')), True),
                    (('pair', str(tmp_path / 'pair')), True),
                    (('single', str(tmp_path / 'single')), False)])

  single = np.load(tmp_path / 'single_0.npz')
  for p in range(2):
    pair = np.load(tmp_path / f'pair_{p}.npz')
    for key in ('centroids', 'assignment', 'history', 'objective', 'computed'):
      assert _same(pair[key], single[key]), (p, key, pair[key], single[key])
  # And it is k-means: the plain stream's answer up to rounding, a real clustering.
  np.testing.assert_allclose(single['centroids'], single['plain_centroids'], atol=1e-5)
  np.testing.assert_array_equal(single['assignment'], single['plain_assignment'])
  assert single['assignment'].shape == (sum(SHARD_ROWS),)
  assert len(np.unique(single['assignment'])) == K
  assert single['computed'][-1] < 1.0  # the bounds skipped rows, per shard too


# ---------------------------------------------------------------------------------------
# The pipeline on 2 processes: each ingests, embeds, scores the shards it owns (rowwise
# selectors too); the writer runs the rest and writes.

SELECTORS = ('clip_score', 'normsim', 'tads', 'semdedup')


def _select_config(name: str):
  """The tiny world of the stage tests through select with `name`."""
  import test_features_stage  # pylint: disable=g-import-not-at-top
  c = test_features_stage.config()
  c.stages = ('ingest', 'encoder', 'embed', 'features') + (
      ('learn',) if name == 'tads' else ()) + ('select',)
  c.selector.name = name
  c.tads.meta.update(dict(steps=4, batch_size=16, unroll=2, task_batch_size=8,
                          head_hidden=32))
  c.distributed.enabled = 'auto'
  return c


_LONG = dict(steps=40, checkpoint_every=4)  # meta-learning long enough to be killed in


def _kill_child(root: str):
  """_pipeline_child for tads (_LONG); process 1 SIGKILLs itself as soon as the writer's
  meta-learning checkpoint at step 8 is on disk."""
  import signal  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  done = os.path.join(root, 'work', 'learn', 'checkpoints', '8', 'commit_success.txt')

  def watch():
    while not os.path.exists(done):
      time.sleep(0.005)
    os.kill(os.getpid(), signal.SIGKILL)
  if distributed.settings(_select_config('tads')).process_id == 1:
    threading.Thread(target=watch, daemon=True).start()
  _pipeline_child(root, ('tads',), **_LONG)


def _resume_child(root: str):
  """Reruns the pipeline up to embed in root/work, as one process of the pair."""
  c = _select_config('clip_score')
  c.stages = ('ingest', 'encoder', 'embed')
  status = main.run(c, os.path.join(root, 'work'))
  assert status == {'ingest': 'skipped', 'encoder': 'skipped', 'embed': 'ran'}, status


def _pipeline_child(root: str, names=SELECTORS, evaluate=False, **meta):
  """The whole pipeline in `root` for every selector (earlier stages done once); each
  selector's subset and scores kept as root/<selector>.{npy,parquet}. evaluate: tads's run
  ends with the evaluate stage, tads also its baseline (fitted by the writer alone). meta:
  other config.tads.meta values."""
  import shutil  # pylint: disable=g-import-not-at-top
  for name in names:
    c = _select_config(name)
    c.tads.meta.update(meta)
    if evaluate and name == 'tads':
      c.stages += ('evaluate',)
      c.evaluate.update(dict(seeds=1, samples_seen=2048, baselines=('tads',)))
    c.distributed.heartbeat_timeout_s = 5  # a killed process ends its pair soon
    main.run(c, os.path.join(root, 'work'))
    if distributed.is_writer():
      shutil.copyfile(os.path.join(root, 'work', 'subset.npy'), os.path.join(root, name + '.npy'))
      shutil.copyfile(os.path.join(root, 'work', 'scores.parquet'),
                      os.path.join(root, name + '.parquet'))


def _assert_same_table(a, b):
  """a and b hold the same columns and values, NaN equal to NaN: TADS's gate scores the
  rows below its cut NaN, and Arrow's Table.equals counts NaN unequal to itself."""
  assert a.schema.equals(b.schema), (a.schema, b.schema)
  for name in a.column_names:
    np.testing.assert_array_equal(a.column(name).to_numpy(zero_copy_only=False),
                                  b.column(name).to_numpy(zero_copy_only=False), err_msg=name)


@pytest.fixture(scope='module')
def pipeline_pair(tmp_path_factory):
  """The whole pipeline run by the pair (root/pair), and by one process on one device
  (root/single) up to select, what the pair's tables and subsets are compared with, once
  for the tests below: returns root."""
  root = tmp_path_factory.mktemp('pipeline')
  _spawn(root, [(('pipeline', str(root / 'pair')), True),
                (('pipeline', str(root / 'pair')), True),
                (('select', str(root / 'single')), False)])
  return root


def test_two_processes_run_the_pipeline_one_process_runs(pipeline_pair, tmp_path):
  """ingest, embed, features (the shards, and the pool-wide signals from collectives),
  learn (TADS's meta batches split over the 2 processes' devices) and select split over 2
  processes of one device each: every stage's table and each selector's subset and scores
  equal one process's on one device. TADS's learn and select, rerun by one process with 2
  devices (the pair's mesh for meta-learning) on the pair's features, give the pair's
  bytes. Then a process killed mid-stage resumes: only its unfinished shard is embedded
  again."""
  import shutil  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pair, single = pipeline_pair / 'pair', pipeline_pair / 'single'
  two = tmp_path / 'two_devices'
  shutil.copytree(pair / 'work', two / 'work', ignore=shutil.ignore_patterns('learn', 'select'))
  _spawn(tmp_path, [(('tads', str(two)), False, 2)])
  # (The pair's meta steps are programs over both processes' devices: had process 1 not
  # taken part, process 0 would have waited for it until the test's timeout.) evaluate
  # runs on the writer alone, and so does its tads baseline's fit, on its own devices.
  from conftest import read_eval_json  # pylint: disable=g-import-not-at-top
  evaluated = read_eval_json(str(pair / 'work'))
  assert 'tads' in json.dumps(evaluated['baselines'])
  assert (pair / 'tads.npy').read_bytes() == (two / 'tads.npy').read_bytes()
  _assert_same_table(pq.read_table(pair / 'tads.parquet'), pq.read_table(two / 'tads.parquet'))

  for name in ('ingest/samples.parquet', 'features/features.parquet'):
    tables = [pq.read_table(root / 'work' / name) for root in (pair, single)]
    if 'shard' in tables[0].column_names:  # the world's path: each run generated its own
      tables = [t.drop_columns(['shard']) for t in tables]
    assert tables[0].equals(tables[1]), name
  npz = [sorted((root / 'work' / 'embed' / 'shards').glob('*.npz')) for root in (pair, single)]
  assert len(npz[0]) == len(npz[1]) == 2  # names hold a hash of the world's path: by order
  for a_path, b_path in zip(*npz):
    with np.load(a_path) as a, np.load(b_path) as b:
      for key in b.files:
        np.testing.assert_array_equal(a[key], b[key])
  for name in SELECTORS:
    if name == 'tads':  # 2 devices against 1: another mesh, so other float rounding
      continue
    assert (pair / f'{name}.npy').read_bytes() == (single / f'{name}.npy').read_bytes(), name
    assert pq.read_table(pair / f'{name}.parquet').drop_columns(['shard']).equals(
        pq.read_table(single / f'{name}.parquet').drop_columns(['shard'])), name

  # Process 1 killed while embedding its shard, as the workdir then is: its item unwritten
  # (items are written whole or not at all), the stage not marked done. The pair's rerun
  # embeds that shard alone, on its owner, to the same arrays.
  killed = npz[0][1]
  killed.unlink()
  killed.with_suffix('.json').unlink()
  (pair / 'work' / 'embed' / '_done.json').unlink()
  _spawn(tmp_path, [(('resume', str(pair)), True), (('resume', str(pair)), True)])
  summary = main.pipeline.read_done(str(pair / 'work' / 'embed'))['summary']
  with np.load(killed) as a, np.load(npz[1][1]) as b:
    assert summary['samples_computed'] == len(b['uid']) < summary['samples']
    for key in b.files:
      np.testing.assert_array_equal(a[key], b[key])


# Slow (34 s of the suite's two-process time): one process of the pair killed
# mid-stage is resumed in the fast test above; this one kills inside meta-learning.
@pytest.mark.slow
def test_two_processes_resume_meta_learning_after_a_kill(pipeline_pair, tmp_path):
  """A real kill in meta-learning: process 1 SIGKILLs itself once the writer's checkpoint
  at step 8 is on disk; process 0, waiting in a collective, aborts when process 1's
  heartbeat stops. The pair's rerun resumes both processes from the writer's last
  checkpoint and ends with the bytes of an uninterrupted run (one process, 2 devices)."""
  import shutil  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  killed, whole = tmp_path / 'killed', tmp_path / 'whole'
  for root in (killed, whole):
    shutil.copytree(pipeline_pair / 'pair' / 'work', root / 'work',
                    ignore=shutil.ignore_patterns('learn', 'select'))
  codes, _ = _spawn(tmp_path, [(('tads_kill', str(killed)), True)] * 2, check=False)
  assert codes[1] == -9 and codes[0] != 0, codes
  assert not (killed / 'tads.npy').exists()
  _, logs = _spawn(tmp_path, [(('tads_long', str(killed)), True)] * 2 +
                   [(('tads_long', str(whole)), False, 2)])
  resumed = [re.findall(r'resumed at meta step (\d+) of 40', log) for log in logs[:2]]
  assert resumed[0] == resumed[1] and 8 <= int(resumed[0][0]) < 40, resumed
  assert (killed / 'tads.npy').read_bytes() == (whole / 'tads.npy').read_bytes()
  _assert_same_table(pq.read_table(killed / 'tads.parquet'),
                     pq.read_table(whole / 'tads.parquet'))


if __name__ == '__main__':
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)  # the resume lines the test reads
  {'pipeline': lambda root: _pipeline_child(root, evaluate=True),
   'select': _pipeline_child, 'resume': _resume_child,
   'tads': lambda root: _pipeline_child(root, ('tads',)),
   'tads_long': lambda root: _pipeline_child(root, ('tads',), **_LONG),
   'tads_kill': _kill_child}.get(
      sys.argv[1], lambda out: _child(sys.argv[1], out))(sys.argv[2])
