"""Stage bookkeeping: skip when done, rerun what a config change touches, keep items."""

import json
import os

import ml_collections
import pytest

from tads_jax import pipeline


def make_stages(calls):
  def first(ctx):
    calls.append('first')
    return {'a': ctx.config.a}

  def second(ctx):
    calls.append('second')
    item = ctx.path('second', 'item.txt')
    if not os.path.exists(item):  # a finished item of a killed run is kept
      with open(item, 'w') as f:
        f.write(str(ctx.config.b))
      calls.append('second:item')
    return {'b': ctx.config.b}

  return (pipeline.Stage('first', first, config_keys=('a',)),
          pipeline.Stage('second', second, config_keys=('b',), inputs=('first',)))


def config(a=1, b=2):
  return ml_collections.ConfigDict({'a': a, 'b': b})


def run(tmp_path, cfg, calls):
  ctx = pipeline.Context(config=cfg, workdir=str(tmp_path))
  return pipeline.run_stages(make_stages(calls), ('first', 'second'), ctx)


def test_rerun_skips_and_changes_rerun_dependents(tmp_path):
  calls = []
  assert run(tmp_path, config(), calls) == {'first': 'ran', 'second': 'ran'}
  assert run(tmp_path, config(), calls) == {'first': 'skipped', 'second': 'skipped'}
  # b only touches the second stage.
  assert run(tmp_path, config(b=3), calls) == {'first': 'skipped', 'second': 'ran'}
  # a touches the first, and so the second, which reads it.
  assert run(tmp_path, config(a=5, b=3), calls) == {'first': 'ran', 'second': 'ran'}
  assert calls.count('first') == 2 and calls.count('second') == 3
  with open(tmp_path / 'second' / '_done.json') as f:
    assert json.load(f)['summary'] == {'b': 3}
  assert (tmp_path / 'second' / 'item.txt').read_text() == '3'


def test_a_later_field_at_its_earlier_value_leaves_the_fingerprint_as_it_was():
  before = ml_collections.ConfigDict({'block': {'x': 1, 'inner': {'y': 2}}})
  stage = pipeline.Stage('s', lambda ctx: {}, config_keys=('block',),
                         later_fields={'block.new': 0.0, 'block.inner.deep': 'off'})
  old = pipeline.fingerprint(stage, before, {})
  after = ml_collections.ConfigDict({'block': {'x': 1, 'new': 0.0,
                                               'inner': {'y': 2, 'deep': 'off'}}})
  assert pipeline.fingerprint(stage, after, {}) == old
  for path, value in ((('new',), 0.5), (('inner', 'deep'), 'on'), (('x',), 3)):
    changed = after.to_dict()
    node = changed['block']
    for part in path[:-1]:
      node = node[part]
    node[path[-1]] = value
    assert pipeline.fingerprint(stage, ml_collections.ConfigDict(changed), {}) != old, path
  # Without later_fields the new entries count, as for any other field.
  plain = pipeline.Stage('s', lambda ctx: {}, config_keys=('block',))
  assert pipeline.fingerprint(plain, after, {}) != pipeline.fingerprint(plain, before, {})


def test_killed_stage_keeps_items_of_same_fingerprint(tmp_path):
  calls = []
  run(tmp_path, config(), calls)
  # Simulate a kill after the item was written but before _done.json.
  os.remove(tmp_path / 'second' / '_done.json')
  calls.clear()
  assert run(tmp_path, config(), calls) == {'first': 'skipped', 'second': 'ran'}
  assert calls == ['second']  # the item was not redone


def test_stale_stage_dir_is_cleared(tmp_path):
  calls = []
  run(tmp_path, config(), calls)
  (tmp_path / 'second' / 'leftover').write_text('old')
  os.remove(tmp_path / 'second' / '_done.json')
  calls.clear()
  run(tmp_path, config(b=9), calls)
  assert not (tmp_path / 'second' / 'leftover').exists()
  assert calls == ['second', 'second:item']


def test_missing_upstream_is_an_error(tmp_path):
  ctx = pipeline.Context(config=config(), workdir=str(tmp_path))
  with pytest.raises(RuntimeError, match="outputs of stage 'first'"):
    pipeline.run_stages(make_stages([]), ('second',), ctx)


class _Terminal:
  """A stderr stand-in that says it is a terminal and keeps what was written."""

  def __init__(self, tty=True):
    self.tty, self.text = tty, ''

  def isatty(self):
    return self.tty

  def write(self, s):
    self.text += s

  def flush(self):
    pass


def test_progress_draws_a_bar_with_rate_and_eta_on_a_terminal(caplog):
  stream = _Terminal()
  progress = pipeline.Progress('embed', 1000, unit='samples', stream=stream)
  assert progress.bar is not None
  with caplog.at_level('INFO'):
    for _ in range(10):
      progress.update(100)
  assert progress.bar is None  # closed at the total
  last = stream.text.split('\r')[-1]
  assert last.startswith('embed: 100%') and '1.00k/1.00k' in last
  assert 'samples/s' in last and '<00:00' in last  # rate, and elapsed<ETA
  assert not [r for r in caplog.records if 'embed:' in r.getMessage()]  # no log lines


def test_progress_logs_lines_when_not_a_terminal(caplog):
  stream = _Terminal(tty=False)
  with caplog.at_level('INFO'):
    progress = pipeline.Progress('features', 50, unit='samples', every=1e9, stream=stream)
    progress.update(20)  # too soon: no line
    progress.update(30)  # the last one always logs
  assert progress.bar is None and stream.text == ''
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('features:')]
  assert len(lines) == 1
  assert lines[0].startswith('features: 50/50 samples, ') and 'samples/s, ETA 0 s' in lines[0]


def test_training_progress_resumes_shows_metrics_and_leaves_lines_to_the_caller(caplog):
  """Train and meta loops: a bar that starts where a resumed run is and shows the loss on
  a terminal; off one, nothing (their own log lines carry the loss)."""
  stream = _Terminal()
  progress = pipeline.Progress('train', 10, unit='steps', stream=stream, lines=False,
                               initial=4)
  for _ in range(3):
    progress.update(1)
  progress.postfix(loss='1.2345')
  progress.update(3)
  last = stream.text.split('\r')[-1]
  assert 'train: 100%' in last and '10.0/10.0' in last and 'loss=1.2345' in last
  quiet = _Terminal(tty=False)
  with caplog.at_level('INFO'):
    progress = pipeline.Progress('meta', 5, unit='steps', stream=quiet, lines=False)
    for _ in range(5):
      progress.update(1)
    progress.postfix(outer='0.5')
  assert quiet.text == '' and not [r for r in caplog.records if 'meta:' in r.getMessage()]


def test_remove_temporaries_takes_what_killed_writers_left(tmp_path):
  """A write killed before its rename leaves `<name>.tmp-<pid>` (or atomic_folder's
  `.<name>.tmp-*` / `.<name>.old-*` folder) that no rerun would overwrite."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True).stdout.strip()
  left = ['ingest/samples.parquet.tmp-' + dead, f'subset.npy.tmp-{dead}.npy',
          f'plots/a.png.tmp-{dead}.png', 'encoder/.clip.tmp-k2j_x9/model.safetensors',
          'encoder/.tokenizer.old-a1b2c3/folder/vocab.json']
  kept = ['ingest/samples.parquet', 'subset.npy', 'report.json', f'eval.json.tmp-{os.getpid()}',
          'learn/checkpoints/8.orbax-checkpoint-tmp/meta', 'encoder/clip/config.json',
          'notes.tmp-draft']
  for rel in left + kept:
    os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
    (tmp_path / rel).write_text('x')
  removed = pipeline.remove_temporaries(str(tmp_path))
  assert sorted(os.path.relpath(p, tmp_path) for p in removed) == sorted(
      ['ingest/samples.parquet.tmp-' + dead, f'subset.npy.tmp-{dead}.npy',
       f'plots/a.png.tmp-{dead}.png', 'encoder/.clip.tmp-k2j_x9',
       'encoder/.tokenizer.old-a1b2c3'])
  for rel in kept:
    assert (tmp_path / rel).exists(), rel
  assert not os.path.exists(tmp_path / 'encoder' / '.clip.tmp-k2j_x9')


@pytest.mark.parametrize('suffix', ['', '.npy'])
def test_atomic_write_failing_midway_keeps_the_old_file_and_no_temporary(tmp_path, suffix):
  path = tmp_path / 'scores.bin'
  path.write_bytes(b'old')
  with pytest.raises(RuntimeError, match='disk full'):
    with pipeline.atomic_write(str(path), suffix=suffix) as tmp:
      assert tmp == f'{path}.tmp-{os.getpid()}{suffix}'
      with open(tmp, 'wb') as f:
        f.write(b'half of the new')
      raise RuntimeError('disk full')
  assert path.read_bytes() == b'old'
  assert os.listdir(tmp_path) == ['scores.bin']
  with pipeline.atomic_write(str(path), suffix=suffix) as tmp, open(tmp, 'wb') as f:
    f.write(b'new')
  assert path.read_bytes() == b'new'
  assert os.listdir(tmp_path) == ['scores.bin']


def test_atomic_write_temporaries_are_the_ones_a_kill_cleanup_finds(tmp_path):
  """A name that remove_temporaries would not match is refused."""
  with pytest.raises(ValueError, match='remove_temporaries would miss'):
    with pipeline.atomic_write(str(tmp_path / 'a.npz'), suffix='.npz'):
      pass
  for suffix in ('', '.npy', '.png'):
    with pipeline.atomic_write(str(tmp_path / 'a'), suffix=suffix) as tmp:
      assert pipeline._TEMPORARY_FILE.fullmatch(os.path.basename(tmp))
      open(tmp, 'w').close()


def test_resumable_items_skip_finished_items_after_a_failure(tmp_path):
  computed = []

  def item_loop(fail_at=None):
    records = []
    for name in ('a', 'b', 'c'):
      item = str(tmp_path / name)

      def compute(name=name, item=item):
        computed.append(name)
        with pipeline.atomic_write(item + '.txt') as tmp, open(tmp, 'w') as f:
          f.write(name)
          if name == fail_at:
            raise RuntimeError(f'killed on {name}')
        return {'name': name}

      records.append(pipeline.resumable_item(item, compute))
    return records

  with pytest.raises(RuntimeError, match='killed on b'):
    item_loop(fail_at='b')
  assert computed == ['a', 'b']
  assert pipeline.item_done(str(tmp_path / 'a')) and not pipeline.item_done(str(tmp_path / 'b'))
  assert sorted(os.listdir(tmp_path)) == ['a.json', 'a.txt']
  assert item_loop() == [{'name': 'a'}, {'name': 'b'}, {'name': 'c'}]
  assert computed == ['a', 'b', 'b', 'c']  # a was not redone
  assert item_loop() == [{'name': 'a'}, {'name': 'b'}, {'name': 'c'}]
  assert computed == ['a', 'b', 'b', 'c']
