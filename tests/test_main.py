"""The CLI pipeline end to end on small synthetic worlds: outputs, reruns, resume, bad input."""

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pyarrow.parquet as pq
import pytest

from tads_jax import main
from tads_jax.data import datacomp
from tads_jax.data import subset as subset_lib
from tads_jax.data import tar_writer
from tads_jax.data import webdataset

from configs import default
from conftest import REPO


def small_config(**synthetic) -> ml_collections.ConfigDict:
  """The default's pool with the cheap chain (no encoder training): random selection."""
  c = default.get_config()
  c.stages = ('ingest', 'select', 'export', 'report')
  c.selector.name = 'random'
  c.pool.synthetic.update(dict(
      num_samples=400, shard_size=50, trusted_size=20, train_per_class=1,
      eval_per_class=1, retrieval_train=4, retrieval_eval=4, **synthetic))
  return c


@pytest.fixture(scope='module')
def default_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('default'))
  status = main.run(small_config(), workdir)
  return workdir, status


def test_end_to_end_outputs(default_run):
  workdir, status = default_run
  assert status == {'ingest': 'ran', 'select': 'ran', 'export': 'ran', 'report': 'ran'}
  scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  gt = pq.read_table(os.path.join(workdir, 'ingest', 'world', 'ground_truth.parquet'))
  # The synthetic pool has no broken samples: everything is ingested.
  assert scores.num_rows == gt.num_rows == 400
  assert sorted(scores.column('uid').to_pylist()) == sorted(gt.column('uid').to_pylist())
  subset = subset_lib.read_subset(os.path.join(workdir, 'subset.npy'))
  assert len(subset) == round(0.36 * 400)
  chosen = set(subset_lib.array_to_uids(subset))
  selected = {u for u, c in zip(scores.column('uid').to_pylist(),
                                scores.column('times_selected').to_pylist()) if c}
  assert chosen == selected
  report = json.load(open(os.path.join(workdir, 'report.json')))
  by_noise = {r['noise']: r for r in report['ground_truth']['by_noise']}
  truth = collections.Counter(gt.column('noise').to_pylist())
  assert {k: v['pool'] for k, v in by_noise.items()} == dict(truth)
  gt_noise = dict(zip(gt.column('uid').to_pylist(), gt.column('noise').to_pylist()))
  kept = collections.Counter(gt_noise[u] for u in chosen)
  assert {k: v['kept'] for k, v in by_noise.items()} == {k: kept.get(k, 0) for k in truth}
  md = open(os.path.join(workdir, 'report.md')).read()
  assert 'Kept share by noise type' in md and 'misaligned' in md


def test_rerun_skips_and_fraction_change_reruns_only_dependents(default_run, tmp_path):
  workdir, _ = default_run
  work = str(tmp_path / 'w')
  shutil.copytree(workdir, work)
  samples = os.path.join(work, 'ingest', 'samples.parquet')
  before = os.stat(samples).st_mtime_ns
  assert set(main.run(small_config(), work).values()) == {'skipped'}
  c = small_config()
  c.selection.fraction = 0.2
  status = main.run(c, work)
  assert status == {'ingest': 'skipped', 'select': 'ran', 'export': 'ran', 'report': 'ran'}
  assert os.stat(samples).st_mtime_ns == before
  assert len(subset_lib.read_subset(os.path.join(work, 'subset.npy'))) == 80


def test_same_config_same_subset(default_run, tmp_path):
  workdir, _ = default_run
  main.run(small_config(), str(tmp_path))
  a = open(os.path.join(workdir, 'subset.npy'), 'rb').read()
  assert a == open(tmp_path / 'subset.npy', 'rb').read()
  c = small_config()
  c.seed = 1
  main.run(c, str(tmp_path / 'other'))
  assert a != open(tmp_path / 'other' / 'subset.npy', 'rb').read()


def test_export_writes_the_subset_as_the_resharder_would(default_run, tmp_path):
  workdir, _ = default_run
  work = str(tmp_path / 'w')
  shutil.copytree(workdir, work)
  c = small_config()
  c.export.shards = True
  c.export.shard_size = 64
  main.run(c, work)
  subset = subset_lib.read_subset(os.path.join(work, 'subset.npy'))
  shards = webdataset.expand_shards(os.path.join(work, 'export', '*.tar'))
  assert len(shards) == -(-len(subset) // 64)
  keys = []
  for shard in shards:
    for key, files in webdataset.iter_groups(shard, collections.Counter()):
      assert json.loads(files['json'])['uid'] == key.split('-')[0]
      keys.append(key)
  assert sorted(k.split('-')[0] for k in keys) == sorted(subset_lib.array_to_uids(subset))
  stats = json.load(open(os.path.join(work, 'export', '00000000_stats.json')))
  assert stats['successes'] == 64


def _broken_pool(world_pool: str, out: str) -> dict:
  """Copies 3 pool shards and breaks samples in known ways; returns the expected skips."""
  os.makedirs(out)
  src = sorted(f for f in os.listdir(world_pool) if f.endswith('.tar'))[:3]
  groups = [list(webdataset.iter_groups(os.path.join(world_pool, f), collections.Counter()))
            for f in src]
  a, b, c = groups
  a[0][1]['jpg' if 'jpg' in a[0][1] else next(e for e in a[0][1] if e in
           webdataset.IMAGE_EXTS)] = b'\xff\xd8 not an image'
  del a[1][1]['txt']                                     # missing caption
  for ext in [e for e in a[2][1] if e in webdataset.IMAGE_EXTS]:
    del a[2][1][ext]                                     # missing image
  b[0] = (b[0][0], {**b[0][1], 'json': a[5][1]['json']})  # uid seen in shard 0
  tar_writer.write_shard(os.path.join(out, '00000000.tar'), a)
  tar_writer.write_shard(os.path.join(out, '00000001.tar'), b)
  tar_writer.write_shard(os.path.join(out, '00000002.tar'), c)
  raw = open(os.path.join(out, '00000002.tar'), 'rb').read()
  open(os.path.join(out, '00000002.tar'), 'wb').write(raw[:len(raw) // 2])
  return {'corrupt_image': 1, 'missing_caption': 1, 'missing_image': 1,
          'duplicate_uid': 1, 'truncated_tar': 1}


def test_webdataset_pool_with_broken_samples(default_run, tmp_path):
  workdir, _ = default_run
  world = os.path.join(workdir, 'ingest', 'world')
  expected = _broken_pool(os.path.join(world, 'pool'), str(tmp_path / 'pool'))
  c = small_config()
  c.pool.format = 'webdataset'
  c.pool.shards = str(tmp_path / 'pool' / '{00000000..00000002}.tar')
  c.pool.ground_truth = os.path.join(world, 'ground_truth.parquet')
  c.tasks = os.path.join(world, 'tasks.json')
  main.run(c, str(tmp_path / 'work'))
  report = json.load(open(tmp_path / 'work' / 'report.json'))
  assert report['pool']['skips'] == expected
  md = open(tmp_path / 'work' / 'report.md').read()
  for reason in expected:
    assert reason in md
  ingested = report['pool']['samples']
  kept_truncated = report['stages']['ingest']['summary']['per_source'][2]['samples']
  assert 0 < kept_truncated < 50
  assert ingested == 50 - 3 + 50 - 1 + kept_truncated


def test_unopenable_shard_names_it_and_keeps_finished_shards(default_run, tmp_path):
  workdir, _ = default_run
  pool = os.path.join(workdir, 'ingest', 'world', 'pool')
  os.makedirs(tmp_path / 'pool')
  shutil.copy(os.path.join(pool, '00000000.tar'), tmp_path / 'pool' / '00000000.tar')
  (tmp_path / 'pool' / '00000001.tar').write_bytes(b'this is not a tar file at all' * 40)
  c = small_config()
  c.pool.format = 'webdataset'
  c.pool.shards = str(tmp_path / 'pool' / '*.tar')
  c.tasks = os.path.join(workdir, 'ingest', 'world', 'tasks.json')
  with pytest.raises(webdataset.ShardError, match='00000001.tar'):
    main.run(c, str(tmp_path / 'work'))
  items = os.listdir(tmp_path / 'work' / 'ingest' / 'shards')
  assert any(i.startswith('00000000.tar') and i.endswith('.json') for i in items)


def test_datacomp_metadata_pool(tmp_path):
  rng = np.random.default_rng(0)
  uids = [f'{rng.integers(0, 2**63):016x}{i:016x}' for i in range(30)]
  for part in range(2):
    rows = slice(15 * part, 15 * part + 15)
    emb = {k: rng.normal(size=(15, 8)).astype(np.float16)
           for k in ('b32_img', 'b32_txt', 'l14_img', 'l14_txt')}
    if part == 1:
      emb['b32_img'][3] = np.nan
    datacomp.write_metadata(str(tmp_path / f'{part:08d}.parquet'), {
        'uid': uids[rows], 'url': ['http://x'] * 15, 'text': ['a red circle'] * 15,
        'original_width': [256] * 15, 'original_height': [256] * 15,
        'clip_b32_similarity_score': [0.3] * 15, 'clip_l14_similarity_score': [0.3] * 15,
        'sha256': ['0' * 64] * 15}, emb)
  c = small_config()
  c.pool.format = 'datacomp'
  c.pool.metadata = str(tmp_path / '*.parquet')
  del c['tasks']
  c.tasks = []
  c.stages = ('ingest', 'select', 'report')
  main.run(c, str(tmp_path / 'work'))
  report = json.load(open(tmp_path / 'work' / 'report.json'))
  assert report['pool']['samples'] == 29
  assert report['pool']['skips'] == {'bad_embedding': 1}
  assert len(subset_lib.read_subset(str(tmp_path / 'work' / 'subset.npy'))) == round(.36 * 29)


_SLOW_RUN = r'''
import sys, time
sys.path.insert(0, {repo!r})
from configs import default
from tads_jax import main
from tads_jax.stages import ingest
original = ingest._ingest_source
def slow(ctx, path):
  time.sleep(0.4)
  return original(ctx, path)
ingest._ingest_source = slow
c = default.get_config()
c.stages = ('ingest', 'select', 'export', 'report')
c.selector.name = 'random'
c.pool.synthetic.update(dict(num_samples=600, shard_size=50, trusted_size=20,
    train_per_class=1, eval_per_class=1, retrieval_train=4, retrieval_eval=4))
main.run(c, {workdir!r})
'''


def test_sigkill_mid_stage_resumes_per_shard(tmp_path):
  workdir = str(tmp_path / 'work')
  items = os.path.join(workdir, 'ingest', 'shards')
  proc = subprocess.Popen([sys.executable, '-c', _SLOW_RUN.format(repo=REPO,
                                                                  workdir=workdir)])
  deadline = time.time() + 120
  done = []
  while time.time() < deadline and proc.poll() is None:
    done = [f for f in os.listdir(items) if f.endswith('.json')] if os.path.isdir(items) else []
    if len(done) >= 3:
      break
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert 3 <= len(done) < 12, 'the kill must land inside the ingest stage'
  assert not os.path.exists(os.path.join(workdir, 'ingest', '_done.json'))
  mtimes = {f: os.stat(os.path.join(items, f)).st_mtime_ns for f in os.listdir(items)
            if f.endswith('.json')}

  c = small_config()
  c.pool.synthetic.num_samples = 600
  status = main.run(c, workdir)
  assert status['ingest'] == 'ran'
  for f, t in mtimes.items():  # finished shards were not redone
    assert os.stat(os.path.join(items, f)).st_mtime_ns == t
  main.run(c, str(tmp_path / 'clean'))
  assert (open(os.path.join(workdir, 'subset.npy'), 'rb').read() ==
          open(tmp_path / 'clean' / 'subset.npy', 'rb').read())
  a = pq.read_table(os.path.join(workdir, 'scores.parquet')).drop_columns(['shard'])
  b = pq.read_table(str(tmp_path / 'clean' / 'scores.parquet')).drop_columns(['shard'])
  assert a.equals(b)


def test_cli_bad_shard_is_one_line_and_stages_take_a_comma_string(default_run, tmp_path):
  """A data error reaches the CLI user as one line naming the file, not a traceback; the
  stages override in the comma form the docs show works."""
  workdir, _ = default_run
  pool = os.path.join(workdir, 'ingest', 'world', 'pool')
  os.makedirs(tmp_path / 'pool')
  shutil.copy(os.path.join(pool, '00000000.tar'), tmp_path / 'pool' / '00000000.tar')
  (tmp_path / 'pool' / '00000001.tar').write_bytes(b'this is not a tar file at all' * 40)
  args = [sys.executable, '-m', 'tads_jax.main', '--config',
          os.path.join(REPO, 'configs', 'default.py'), '--workdir', str(tmp_path / 'work'),
          '--config.stages=ingest,select', '--config.selector.name=random',
          '--config.pool.format=webdataset',
          f'--config.pool.shards={tmp_path / "pool" / "*.tar"}',
          f'--config.tasks={os.path.join(workdir, "ingest", "world", "tasks.json")}']
  out = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and '00000001.tar' in last, last
  assert 'Traceback' not in out.stderr
  # The comma string was read as two stages: ingest ran and finished its good shard.
  assert os.path.exists(tmp_path / 'work' / 'ingest' / 'shards')


def test_console_command_is_main_cli(monkeypatch):
  """pyproject's [project.scripts] entry, as installed, is main.cli, which runs main."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  entry, = [e for e in metadata.entry_points(group='console_scripts') if e.name == 'tads-jax']
  assert entry.value == 'tads_jax.main:cli' and entry.load() is main.cli
  ran = []
  monkeypatch.setattr(app, 'run', ran.append)
  monkeypatch.setattr(sys.modules['__main__'], '__doc__', None)
  main.cli()
  assert ran == [main.main] and sys.modules['__main__'].__doc__ == main.__doc__


@pytest.mark.slow
def test_console_command_prints_what_the_module_prints(tmp_path):
  """`tads-jax` and `python -m tads_jax.main`: the same --help (but for the program name)
  and the same error and exit status on a bad config."""
  script = os.path.join(os.path.dirname(sys.executable), 'tads-jax')
  if not os.path.exists(script):
    pytest.skip(f'{script} is not installed (pip install -e .)')
  bad = ['--config', os.path.join(REPO, 'configs', 'default.py'),
         '--config.selection.fraction=2.0', '--workdir', str(tmp_path / 'w')]
  for args in (['--help'], bad):
    cmd = subprocess.run([script, *args], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path)
    mod = subprocess.run([sys.executable, '-m', 'tads_jax.main', *args], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert cmd.returncode == mod.returncode != 0, (cmd.stderr, mod.stderr)
    module_path = os.path.join(REPO, 'tads_jax', 'main.py')
    assert cmd.stdout.replace(script, 'PROG') == mod.stdout.replace(module_path, 'PROG')
    assert cmd.stderr.splitlines()[-1:] == mod.stderr.splitlines()[-1:]
  assert 'config error' in cmd.stderr and 'fraction' in cmd.stderr
  assert not os.path.exists(tmp_path / 'w')


def test_a_pool_with_no_usable_sample_stops_at_ingest_in_one_line(tmp_path):
  """An empty tar and a DataComp file whose rows are all zero: ingest says the pool is
  empty (with the skips by reason) instead of a later stage failing on nothing."""
  import tarfile  # pylint: disable=g-import-not-at-top
  empty = tmp_path / 'empty'
  empty.mkdir()
  with tarfile.open(empty / '00000000.tar', 'w'):
    pass
  c = small_config()
  c.pool.format = 'webdataset'
  c.pool.shards = str(empty / '*.tar')
  del c['tasks']
  c.tasks = []
  c.stages = ('ingest', 'select')
  with pytest.raises(ValueError, match=r'00000000.tar: the pool has no usable sample '
                     r'\(skipped by reason: none; the sources are empty\)'):
    main.run(c, str(tmp_path / 'w1'))
  zeros = {k: np.zeros((5, 8), np.float16) for k in ('b32_img', 'b32_txt')}
  datacomp.write_metadata(str(tmp_path / 'zero.parquet'), {
      'uid': [f'{i:032x}' for i in range(5)], 'text': ['a caption'] * 5}, zeros)
  c.pool.format = 'datacomp'
  c.pool.metadata = str(tmp_path / 'zero.parquet')
  with pytest.raises(ValueError, match=r"zero.parquet: the pool has no usable sample "
                     r"\(skipped by reason: \{'bad_embedding': 5\}\)"):
    main.run(c, str(tmp_path / 'w2'))
