"""kill -9 at a random point inside every stage, rerun, and every output byte for byte as an
uninterrupted run's (issue 18, item 3).

The world is the tiny one of test_tads_pipeline.py (a 30-step encoder, TADS with a few meta
steps), with evaluate (two seeds, two baselines) and export on, in more shards than the
other tests use so that a kill can land between per-shard items. Every run is the CLI,
`python -m tads_jax.main --config tests/test_kill_resume.py --workdir ...`: this file's
get_config() is the config file.

The reference runs uninterrupted in `<tmp>/work` and is moved to `<tmp>/reference`; the
killed runs then use `<tmp>/work` too, so paths written into the outputs are the same. The
killed chain is one workdir: run k is killed inside stage k (after the stage's log line
'stage <name>: running', a delay drawn from a seeded rng as a share of the reference's time
for that stage), so run k also resumes the stage run k-1 was killed in. A last run
completes. Then every file of the two workdirs is compared, with the exclusions in
_EXCLUDED and _TIMING_FIELDS, each with its reason.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# Not tads_jax.main, nor a test module importing it: this file is also the config file of
# `python -m tads_jax.main`, whose flags would then be defined twice.
from configs import default  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

STAGES = ('ingest', 'encoder', 'embed', 'features', 'learn', 'select', 'evaluate', 'export',
          'report')
# The kill delays' rng seed, printed with the kill points; KILL_RESUME_SEED=<n> tries others.
SEED = int(os.environ.get('KILL_RESUME_SEED', 20240518))


def get_config():
  """The config file of every run here (ml_collections config_flags calls it): the tiny
  world, encoder and features of test_encoder_stage.py / test_features_stage.py, TADS as
  test_tads_pipeline.py with 8 meta steps."""
  c = default.get_config()
  c.stages = STAGES
  c.seed = 0
  # 8 shards of 25: ingest, embed and features have items to resume between.
  c.pool.synthetic.update(dict(num_samples=200, shard_size=25, trusted_size=200,
                               train_per_class=1, eval_per_class=1, retrieval_train=4,
                               retrieval_eval=4))
  c.encoder.update(dict(image_size=32, model='tiny', context_length=16, vocab_size=600,
                        batch_size=32, samples_seen=32 * 30, warmup=5, checkpoint_every=10,
                        word_loss=0.0))  # as conftest.tiny_world_config
  c.encoder.model_overrides = {}
  c.embed.batch_size = 32
  c.features = ml_collections.ConfigDict(dict(
      operators=('width', 'aspect_ratio', 'sharpness', 'words', 'clip_score',
                 'flipped_clip_score', 'caption_specificity'),
      chunk=32, kmeans_k=4, kmeans_iters=3, alpha=0.5, semdedup_eps=0.05,
      relevance_top_m=2, retrieval_prototypes=2))
  c.selector.name = 'tads'
  c.selection.fraction = 0.36
  c.tads.meta.update(dict(steps=8, batch_size=16, unroll=2, task_batch_size=8,
                          checkpoint_every=2, head_hidden=32))
  c.evaluate.update(dict(samples_seen=16 * 12, seeds=2, batch_size=16, lr=1e-3, warmup=2,
                         head='mlp', baselines=('full', 'clip_score')))
  c.export.shards = True
  c.export.shard_size = 16
  return c


# Paths (relative to the workdir, as regular expressions) not compared, and why.
_EXCLUDED = {
    # The lock file holds the holder's pid and start time.
    r'\.lock': 'holder pid and time',
    # orbax training checkpoints: their metadata holds save timestamps, and they are
    # intermediate state whose results (encoder/clip, learn/state.msgpack, eval.json) are
    # compared. Their steps are compared in _checkpoint_steps.
    r'(.*/)?checkpoints/.*': 'orbax checkpoints (timestamps); steps compared apart',
}

# JSON fields that record how this run went rather than what it computed: the wall time of
# a stage or item, and how much work this particular run did (a resumed run embeds only the
# shards the killed one had not finished). Keyed by a path regex; each value lists
# key paths, '*' matching any key.
_TIMING_FIELDS = {
    r'[a-z]+/_done\.json': [('seconds',),
                            ('summary', 'samples_computed'),      # embed
                            ('summary', 'pool_samples_per_s'),    # embed
                            ('summary', 'shards_computed')],      # features
    r'embed/shards/.*\.json': [('seconds',)],
    r'report\.json': [('stages', '*', 'seconds'),
                      ('stages', 'embed', 'summary', 'samples_computed'),
                      ('stages', 'embed', 'summary', 'pool_samples_per_s'),
                      ('stages', 'features', 'summary', 'shards_computed')],
}


def _drop(obj, keys):
  if not keys or not isinstance(obj, dict):
    return
  head, rest = keys[0], keys[1:]
  for k in (list(obj) if head == '*' else [head]):
    if k in obj:
      if rest:
        _drop(obj[k], rest)
      else:
        obj[k] = '<excluded>'


def _masked_report_page(text: str, report: dict) -> str:
  """report.md / report.html with each stage's seconds (the 'Stages' table) masked; and in
  report.md the counts column's samples_computed / shards_computed (a resumed run's own
  work, see _TIMING_FIELDS)."""
  for name, stage in report['stages'].items():
    for shown in {f"{stage['seconds']:.3f}", str(stage['seconds'])}:
      text = text.replace(f'| {name} | done | {shown} |', f'| {name} | done | <s> |')
      text = text.replace(f'<tr><td>{name}</td><td>done</td><td>{shown}</td>',
                          f'<tr><td>{name}</td><td>done</td><td><s></td>')
  return re.sub(r'(samples_computed|shards_computed)=\d+', r'\1=<n>', text)


def _files(root: str) -> dict:
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      rel = os.path.relpath(path, root)
      if not any(re.fullmatch(p, rel) for p in _EXCLUDED):
        out[rel] = path
  return out


def _comparable(rel: str, path: str, root: str):
  """The file's bytes, or for a file with excluded fields the parsed, masked content."""
  with open(path, 'rb') as f:
    data = f.read()
  for pattern, fields in _TIMING_FIELDS.items():
    if re.fullmatch(pattern, rel):
      obj = json.loads(data)
      for keys in fields:
        _drop(obj, keys)
      return obj
  if rel in ('report.md', 'report.html'):
    with open(os.path.join(root, 'report.json')) as f:
      report = json.load(f)
    return _masked_report_page(data.decode('utf-8'), report)
  return data


def _checkpoint_steps(root: str) -> dict:
  """{checkpoint directory: sorted finished steps} (orbax names a step's folder by its
  number; a killed save leaves a tmp folder that is not a finished step)."""
  out = {}
  for dirpath, dirnames, _ in os.walk(root):
    if os.path.basename(dirpath) == 'checkpoints':
      out[os.path.relpath(dirpath, root)] = sorted(d for d in dirnames if d.isdigit())
      dirnames.clear()
  return out


def compare(reference: str, work: str) -> list:
  """Every difference between the two workdirs, as lines."""
  ref, got = _files(reference), _files(work)
  problems = [f'missing after resume: {r}' for r in sorted(set(ref) - set(got))]
  problems += [f'extra after resume: {r}' for r in sorted(set(got) - set(ref))]
  for rel in sorted(set(ref) & set(got)):
    if _comparable(rel, ref[rel], reference) != _comparable(rel, got[rel], work):
      problems.append(f'differs: {rel}')
  a, b = _checkpoint_steps(reference), _checkpoint_steps(work)
  if a != b:
    problems.append(f'checkpoint steps: reference {a}, resumed {b}')
  return problems


def _env() -> dict:
  """One CPU device, as the reference: conftest.py adds an 8-device flag to XLA_FLAGS of
  this process."""
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags)
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def _start(workdir: str, log: str) -> subprocess.Popen:
  with open(log, 'ab') as f:
    return subprocess.Popen(
        [sys.executable, '-m', 'tads_jax.main', '--config', os.path.abspath(__file__),
         '--workdir', workdir], cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=_env())


def _read(path: str) -> str:
  with open(path, errors='replace') as f:
    return f.read()


def _run_to_end(workdir: str, log: str) -> None:
  proc = _start(workdir, log)
  assert proc.wait(timeout=1800) == 0, _read(log)[-4000:]


def _wait_for_line(proc, log: str, line: str, offset: int, timeout: float = 900) -> bool:
  """Polls the log (from byte `offset`) until `line` appears; False if the run ended."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    with open(log, 'rb') as f:
      f.seek(offset)
      if line.encode() in f.read():
        return True
    if proc.poll() is not None:
      return False
    time.sleep(0.01)
  raise TimeoutError(f'{line!r} did not appear in {log} within {timeout} s')


def _kill_inside(workdir: str, log: str, stage: str, delay: float) -> str:
  """Starts a run, kills it `delay` s after `stage` starts; returns what the kill hit."""
  offset = os.path.getsize(log) if os.path.exists(log) else 0
  proc = _start(workdir, log)
  if not _wait_for_line(proc, log, f'stage {stage}: running', offset):
    raise AssertionError(f'the run ended (rc {proc.returncode}) before stage {stage} '
                         f'started:\n{_read(log)[-4000:]}')
  time.sleep(delay)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  done = os.path.exists(os.path.join(workdir, stage, '_done.json'))
  return ('after it finished' if done else 'inside') + _state(workdir, stage)


def _state(workdir: str, stage: str) -> str:
  """What the killed run had written: the stage's finished items and checkpoint steps, and
  half-written temporaries anywhere."""
  items, steps, temporaries = 0, [], []
  for dirpath, _, names in os.walk(workdir):
    rel = os.path.relpath(dirpath, workdir)
    temporaries += [os.path.join(rel, n) for n in names if '.tmp-' in n]
    if rel.startswith(stage + os.sep) and os.path.basename(dirpath) == 'shards':
      items += sum(n.endswith('.json') for n in names)
  for directory, found in _checkpoint_steps(os.path.join(workdir, stage)).items():
    steps.append(f'{directory}: {found}')
  parts = [f'{items} items'] if items else []
  parts += steps + ([f'temporaries {temporaries}'] if temporaries else [])
  return f' ({"; ".join(parts)})' if parts else ''


@pytest.mark.slow
def test_kill_at_random_points_of_every_stage_then_resume_is_byte_identical(tmp_path):
  work, reference = str(tmp_path / 'work'), str(tmp_path / 'reference')
  start = time.time()
  _run_to_end(work, str(tmp_path / 'reference.log'))
  os.rename(work, reference)
  seconds = {s: json.load(open(os.path.join(reference, s, '_done.json')))['seconds']
             for s in STAGES}
  print(f'reference run: {time.time() - start:.0f} s; stage seconds {seconds}')

  rng = np.random.default_rng(SEED)
  log = str(tmp_path / 'killed.log')
  kills = []
  for stage in STAGES:
    share = rng.uniform(0.05, 0.9)
    for attempt in range(4):
      delay = share * seconds[stage] / 2 ** attempt
      hit = _kill_inside(work, log, stage, delay)
      kills.append(f'{stage}: killed {delay:.3f} s after it started '
                   f'({share:.2f} / {2 ** attempt} of the reference\'s {seconds[stage]:.2f} s): '
                   f'{hit}')
      print('kill point', kills[-1], flush=True)
      if hit.startswith('inside'):
        break
      # The stage finished before the kill: take its done marker away (a kill between its
      # last item and _done.json), so the next run resumes it, and kill sooner.
      os.remove(os.path.join(work, stage, '_done.json'))
    else:
      pytest.fail(f'no kill landed inside stage {stage}: {kills}')
  _run_to_end(work, log)

  problems = compare(reference, work)
  assert not problems, '\n'.join(problems + ['kill points (seed %d):' % SEED] + kills)
  print(f'kill/resume test: {time.time() - start:.0f} s')
