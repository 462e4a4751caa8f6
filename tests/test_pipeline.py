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
