"""TADS through the pipeline (learn -> select -> report) on the tiny world of
test_features_stage.py.

References are independent of the selector: with meta-learning off, every score is the
prior combination recomputed here with numpy from features.parquet (z-scores, clip, signed
group-normalized weights written out by hand); with it on, the learn stage's history and
the report's tables are checked against the files the stages wrote.
"""

import itertools
import json
import os
import shutil
import sys

import jax
import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_features_stage  # noqa: E402  pylint: disable=wrong-import-position

from tads_jax import config as config_lib  # noqa: E402
from tads_jax import main  # noqa: E402
from tads_jax import value  # noqa: E402
from tads_jax.data import subset as subset_lib  # noqa: E402
from tads_jax.stages import learn  # noqa: E402
from conftest import validate  # noqa: E402

STAGES = ('ingest', 'encoder', 'embed', 'features', 'learn', 'select', 'report')


def config(steps=6):
  c = test_features_stage.config()
  c.stages = STAGES
  c.selector.name = 'tads'
  c.selection.fraction = 0.36
  # every row ranked (test_gate_ranks_only_the_rows_that_pass)
  c.tads.gate.update(dict(fraction=None, then_column=None, then_fraction=None))
  c.tads.dedup = 'none'  # every copy scored (test_dedup_keeps_flagged_copies_out)
  # Every group, so that the hand-computed prior covers all three (the default leaves
  # diversity out since session 18).
  c.tads.groups = ('quality', 'relevance', 'diversity')
  c.tads.meta.update(dict(steps=steps, batch_size=16, unroll=2, task_batch_size=8,
                          checkpoint_every=3, head_hidden=32))
  return c


@pytest.fixture(scope='module')
def prior_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('tads_prior'))
  status = main.run(config(steps=0), workdir)
  return workdir, status


def _prior_scores_by_hand(features, two_sided=()):
  """sum_f w_f clip((x_f - mean_f) / std_f, -5, 5), NaN -> 0, with the prior's weights:
  quality signs from value.PRIOR_SIGNS written out, relevance +1, each group scaled to an
  L1 norm of 1; each two-sided quality feature adds a term -|z_f| to its group."""
  signs = {'aspect_ratio': -1, 'clip_score': 1, 'flipped_clip_score': 1,
           'caption_specificity': 1, 'cluster_weight': 1, 'semantic_duplicate': -1,
           'exact_duplicate': -1}  # width, sharpness, words: 0 (no prior sign)
  quality = list(test_features_stage.OPERATORS) + [f'|{n}|' for n in two_sided]
  relevance = [c for c in features.column_names if c.startswith('relevance_')]
  diversity = ['cluster_weight', 'semantic_duplicate', 'exact_duplicate']
  total = np.zeros(features.num_rows)
  for group in (quality, relevance, diversity):
    w = np.array([1.0 if c.startswith('relevance_') else -1.0 if c.startswith('|')
                  else signs.get(c, 0.0) for c in group], float)
    w /= np.abs(w).sum()
    for name, weight in zip(group, w):
      x = features.column(name.strip('|')).to_numpy(zero_copy_only=False).astype(np.float64)
      std = x.std()
      z = (x - x.mean()) / std if std > 1e-7 * max(abs(x.mean()), 1) else np.zeros_like(x)
      z = np.clip(z, -5, 5)
      total += weight * (np.abs(z) if name.startswith('|') else z)
  return total


def test_prior_alone_scores_are_the_hand_computed_combination(prior_run):
  workdir, status = prior_run
  assert all(s == 'ran' for s in status.values()), status
  scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  np.testing.assert_allclose(scores.column('score').to_numpy(),
                             _prior_scores_by_hand(scores), rtol=1e-4, atol=1e-4)
  counts = scores.column('times_selected').to_numpy()
  assert counts.sum() == round(0.36 * scores.num_rows) and counts.max() == 1
  # The subset is the top 36% of those scores.
  order = np.argsort(-scores.column('score').to_numpy(), kind='stable')
  kept = set(np.flatnonzero(counts))
  assert kept == set(order[:counts.sum()])
  report = json.load(open(os.path.join(workdir, 'report.json')))
  assert report['learn']['meta_steps'] == 0
  weights = {w['feature']: w for w in report['learn']['feature_weights']}
  assert weights['clip_score']['prior'] == pytest.approx(0.25)  # 1 of 4 signed quality ops
  assert weights['clip_score']['learned'] == pytest.approx(0.25)  # nothing learned
  assert 'No meta-learning' in open(os.path.join(workdir, 'report.md')).read()


def test_two_sided_prior_scores_by_hand(prior_run, tmp_path):
  """tads.two_sided=('sharpness',) through learn and select: the prior alone adds
  -|z_sharpness| to the quality group (1 of its 5 signed terms), by hand; the report lists
  the term with its weight."""
  workdir = str(tmp_path / 'w')
  shutil.copytree(prior_run[0], workdir)
  c = config(steps=0)
  c.tads.two_sided = ('sharpness',)
  status = main.run(c, workdir)
  assert status['learn'] == 'ran' and status['select'] == 'ran'
  scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  np.testing.assert_allclose(scores.column('score').to_numpy(),
                             _prior_scores_by_hand(scores, ('sharpness',)),
                             rtol=1e-4, atol=1e-4)
  assert not np.allclose(scores.column('score').to_numpy(), _prior_scores_by_hand(scores),
                         atol=1e-2)  # the term moved the scores
  report = json.load(open(os.path.join(workdir, 'report.json')))
  weights = {w['feature']: w for w in report['learn']['feature_weights']}
  assert weights['|sharpness|']['prior'] == pytest.approx(-0.2)
  assert weights['|sharpness|']['group'] == 'quality'
  assert weights['clip_score']['prior'] == pytest.approx(0.2)


def test_meta_learning_runs_resumes_and_is_reported(prior_run, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(prior_run[0], workdir)
  status = main.run(config(steps=6), workdir)
  # Only what depends on config.tads reruns.
  assert [s for s, v in status.items() if v == 'ran'] == ['learn', 'select', 'report']
  history = learn.load_state(os.path.join(workdir, 'learn', learn.STATE))['history']
  assert history['step'] == list(range(1, 7))
  assert set(history['task_losses']) == set(history['tasks'])
  for name in history['tasks']:
    assert len(history['task_weights'][name]) == 6
  weights_sum = np.sum([history['task_weights'][n] for n in history['tasks']], axis=0)
  np.testing.assert_allclose(weights_sum, 1.0, rtol=1e-5)
  report = json.load(open(os.path.join(workdir, 'report.json')))
  assert set(report['plots']) >= {'meta_curves', 'feature_weights', 'kept_by_noise'}
  for path in report['plots'].values():
    assert os.path.getsize(path) > 1000
  learned = {w['feature']: w['learned'] for w in report['learn']['feature_weights']}
  prior = {w['feature']: w['prior'] for w in report['learn']['feature_weights']}
  assert learned != prior  # six meta steps moved the value function
  first = subset_lib.read_subset(os.path.join(workdir, 'subset.npy'))

  # A run killed after meta step 3 (checkpoint there) resumes to the same value function.
  again = str(tmp_path / 'again')
  shutil.copytree(prior_run[0], again)
  c = config(steps=6)
  from tads_jax.selectors import tads  # pylint: disable=g-import-not-at-top
  original = tads.meta.learn

  def killed(*args, **kwargs):
    original(*args, stop_after=3, **kwargs)
    raise KeyboardInterrupt('killed after meta step 3')

  tads.meta.learn = killed
  try:
    with pytest.raises(KeyboardInterrupt):
      main.run(c, again)
  finally:
    tads.meta.learn = original
  assert main.run(c, again)['learn'] == 'ran'
  np.testing.assert_array_equal(subset_lib.read_subset(os.path.join(again, 'subset.npy')),
                                first)
  resumed = learn.load_state(os.path.join(again, 'learn', learn.STATE))['history']
  np.testing.assert_allclose(resumed['outer_loss'], history['outer_loss'], rtol=1e-6)


def test_per_task_value_form_learns_trades_and_scores_with_them(prior_run, tmp_path):
  """tads.value_form='per_task' through learn and select: the prior's scores are the
  hand formula d + logsumexp_t(r_t + q); meta-learning moves each task's trade, and the
  select stage scores with the learned ones (its scores are the module's on the
  standardized features)."""
  workdir = str(tmp_path / 'w')
  shutil.copytree(prior_run[0], workdir)
  c = config(steps=0)
  c.tads.value_form = 'per_task'
  assert [s for s, v in main.run(c, workdir).items() if v == 'ran'] == [
      'learn', 'select', 'report']
  scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  state = learn.load_state(os.path.join(workdir, 'learn', learn.STATE))
  assert state['form'] == 'per_task'
  names = state['standardizer']['names']
  std = value.Standardizer.from_dict(state['standardizer'])
  z = std.transform(value.feature_matrix(scores, names)).astype(np.float64)
  prior = np.array(state['prior'])
  terms = z * prior
  groups = [value.feature_group(n) for n in names]
  tasks = sorted({value.task_of(n) for n in names} - {None})
  assert len(tasks) >= 2
  r = np.stack([terms[:, [value.task_of(n) == t for n in names]].sum(1) for t in tasks], 1)
  q = terms[:, [g == 'quality' for g in groups]].sum(1)
  d = terms[:, [g == 'diversity' for g in groups]].sum(1)
  expected = d + np.log(np.exp(r + q[:, None]).sum(1))
  np.testing.assert_allclose(scores.column('score').to_numpy(), expected, rtol=1e-4,
                             atol=1e-4)

  c = config(steps=6)
  c.tads.value_form = 'per_task'
  main.run(c, workdir)
  state = learn.load_state(os.path.join(workdir, 'learn', learn.STATE))
  trade = np.asarray(state['params']['trade'])
  assert trade.shape == (len(tasks),) and np.all(trade != 0)
  module = value.ValueFunction(tuple(names), tuple(state['prior']), tuple(state['hidden']),
                               'per_task')
  scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  np.testing.assert_allclose(
      scores.column('score').to_numpy(),
      np.asarray(module.apply({'params': state['params']}, z.astype(np.float32))),
      rtol=1e-4, atol=1e-4)


def test_ensemble_scores_the_mean_of_standardized_members(prior_run, tmp_path, monkeypatch):
  """tads.ensemble=2: member 0 is the single function's run (same seed, same bits), member
  1 another meta-learned function; the select stage's score is the mean over members of
  (V_k - mean_k) / std_k, moments over the pool, worked here from the members' params; a
  member killed mid-way resumes from its own checkpoints to the same subset."""
  single = str(tmp_path / 'single')
  shutil.copytree(prior_run[0], single)
  main.run(config(steps=6), single)
  one = learn.load_state(os.path.join(single, 'learn', learn.STATE))
  assert 'ensemble' not in one
  workdir = str(tmp_path / 'w')
  shutil.copytree(prior_run[0], workdir)
  c = config(steps=6)
  c.tads.ensemble = 2
  main.run(c, workdir)
  state = learn.load_state(os.path.join(workdir, 'learn', learn.STATE))
  flat = jax.tree_util.tree_leaves
  assert len(flat(state['params'])) == len(flat(one['params']))
  for a, b in zip(flat(state['params']), flat(one['params'])):
    np.testing.assert_array_equal(a, b)
  other = state['ensemble']['params']['1']
  assert np.abs(np.asarray(other['linear']) - np.asarray(state['params']['linear'])).max() > 0
  scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  names = state['standardizer']['names']
  z = value.Standardizer.from_dict(state['standardizer']).transform(
      value.feature_matrix(scores, names)).astype(np.float32)
  module = value.ValueFunction(tuple(names), tuple(state['prior']), tuple(state['hidden']))
  members = [np.asarray(module.apply({'params': p}, z), np.float64)
             for p in (state['params'], other)]
  expected = np.mean([(v - v.mean()) / v.std() for v in members], axis=0)
  np.testing.assert_allclose(scores.column('score').to_numpy(), expected, atol=1e-5)
  assert 'An ensemble of 2 value functions' in open(os.path.join(workdir, 'report.md')).read()

  # Member 1 killed after its meta step 3 resumes from its own checkpoints.
  again = str(tmp_path / 'again')
  shutil.copytree(prior_run[0], again)
  from tads_jax.selectors import tads  # pylint: disable=g-import-not-at-top
  original, calls = tads.meta.learn, []

  def killed(*args, **kwargs):
    calls.append(kwargs['workdir'])
    if len(calls) == 2:
      original(*args, stop_after=3, **kwargs)
      raise KeyboardInterrupt('member 1 killed after meta step 3')
    return original(*args, **kwargs)

  with monkeypatch.context() as patch:
    patch.setattr(tads.meta, 'learn', killed)
    with pytest.raises(KeyboardInterrupt):
      main.run(c, again)
  assert calls[1] == os.path.join(calls[0], 'member_1')
  assert os.listdir(os.path.join(calls[1], 'checkpoints'))  # step 3's, resumed from
  main.run(c, again)
  np.testing.assert_array_equal(subset_lib.read_subset(os.path.join(again, 'subset.npy')),
                                subset_lib.read_subset(os.path.join(workdir, 'subset.npy')))


def test_prior_signs_hold_through_meta_learning(prior_run, tmp_path):
  """tads.linear_signs='prior' through learn: meta-learning flips some signed weights of
  this world when free; kept, none ends on the wrong side of zero, and the kept run still
  learns (its weights move off the prior)."""
  learned = {}
  for signs in ('free', 'prior'):
    workdir = str(tmp_path / signs)
    shutil.copytree(prior_run[0], workdir)
    c = config(steps=6)
    c.tads.linear_signs = signs
    c.tads.meta.value_lr = 0.3  # large steps, so that a few of them reach across zero
    main.run(c, workdir)
    state = learn.load_state(os.path.join(workdir, 'learn', learn.STATE))
    assert state['signs'] == signs
    learned[signs] = (np.asarray(state['prior']), np.asarray(state['params']['linear']))
  prior, free = learned['free']
  flipped = np.sign(prior) * free < 0
  assert flipped.any()  # the constraint has something to hold here
  prior, kept = learned['prior']
  assert np.all(np.sign(prior) * kept >= 0)
  assert np.abs(kept - prior).max() > 1e-3


def test_words_proxy_learns_through_the_stages(prior_run, tmp_path):
  """tads.meta.text='words' through learn: the stage hands meta-learning the pool's
  captions and the tasks' prompts and retrieval captions (embed stores them), it runs every
  step, and the value function ends elsewhere than with the reference's text embeddings
  from the same start."""
  learned = {}
  for text in ('reference', 'words'):
    workdir = str(tmp_path / text)
    shutil.copytree(prior_run[0], workdir)
    c = config(steps=6)
    c.tads.meta.text = text
    status = main.run(c, workdir)
    assert status['learn'] == 'ran'
    state = learn.load_state(os.path.join(workdir, 'learn', learn.STATE))
    assert len(state['history']['outer_loss']) == 6
    assert np.all(np.isfinite(state['history']['outer_loss']))
    learned[text] = np.asarray(state['params']['linear'])
  assert np.abs(learned['words'] - learned['reference']).max() > 1e-3


@pytest.mark.parametrize('steps', [0, 6])
def test_gate_ranks_only_the_rows_that_pass(prior_run, tmp_path, monkeypatch, steps):
  """tads.gate.fraction=0.5: the rows scored are the top half by clip_score (ties at the
  cut pass), found here by sorting; the rest score NaN and are never kept; the subset is
  still the budget, the top of the scores among the rows that pass; with meta-learning on,
  its batches come from those rows alone. A pattern gates on the largest of its columns."""
  workdir = str(tmp_path / 'w')
  shutil.copytree(prior_run[0], workdir)
  c = config(steps=steps)
  c.tads.gate.update(dict(column='clip_score', fraction=0.5))
  from tads_jax.selectors import tads  # pylint: disable=g-import-not-at-top
  original, seen = tads.meta.learn, []

  def recording(*args, rows=None, **kwargs):
    seen.append(rows)
    return original(*args, rows=rows, **kwargs)

  monkeypatch.setattr(tads.meta, 'learn', recording)
  main.run(c, workdir)
  scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  clip = scores.column('clip_score').to_numpy()
  passes = clip >= np.sort(clip)[::-1][round(0.5 * len(clip)) - 1]
  score = scores.column('score').to_numpy()
  np.testing.assert_array_equal(np.isfinite(score), passes)
  counts = scores.column('times_selected').to_numpy()
  assert counts.sum() == round(0.36 * scores.num_rows) and not counts[~passes].any()
  kept = np.flatnonzero(counts)
  assert score[kept].min() >= np.max(score[passes & (counts == 0)], initial=-np.inf)
  state = learn.load_state(os.path.join(workdir, 'learn', learn.STATE))
  assert state['gate']['passed'] == passes.sum()
  assert f"the top 50% of the pool, {passes.sum()} samples" in open(
      os.path.join(workdir, 'report.md')).read()
  if steps:
    np.testing.assert_array_equal(seen[0], np.flatnonzero(passes))
  else:
    assert not seen
  # A pattern gates on the largest of the columns it matches: here every task's relevance.
  c.tads.gate.column = 'relevance_*'
  main.run(c, workdir)
  scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  relevance = np.max([scores.column(n).to_numpy() for n in scores.column_names
                      if n.startswith('relevance_')], axis=0)
  relevant = relevance >= np.sort(relevance)[::-1][round(0.5 * len(relevance)) - 1]
  assert (relevant != passes).any()  # another gate than clip_score's
  np.testing.assert_array_equal(np.isfinite(scores.column('score').to_numpy()), relevant)
  assert not scores.column('times_selected').to_numpy()[~relevant].any()
  if steps:
    np.testing.assert_array_equal(seen[-1], np.flatnonzero(relevant))
  # A second pass in series: of the rows relevance passed, the top 40% of the pool by
  # clip_score.
  c.tads.gate.update(dict(then_column='clip_score', then_fraction=0.4))
  main.run(c, workdir)
  scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  among = np.where(relevant, clip, -np.inf)
  both = among >= np.sort(among)[::-1][round(0.4 * len(clip)) - 1]
  assert both.sum() < relevant.sum() and (both != passes).any()
  np.testing.assert_array_equal(np.isfinite(scores.column('score').to_numpy()), both)
  assert not scores.column('times_selected').to_numpy()[~both].any()
  state = learn.load_state(os.path.join(workdir, 'learn', learn.STATE))
  assert (state['gate']['passed'], state['gate']['then']['passed']) == (relevant.sum(),
                                                                         both.sum())
  assert f"then clip_score >= {state['gate']['then']['cut']:.4f} (the top 40% of the pool, " \
         f"{both.sum()} samples)" in open(os.path.join(workdir, 'report.md')).read()
  if steps:
    np.testing.assert_array_equal(seen[-1], np.flatnonzero(both))
  c.tads.gate.update(dict(then_column=None, then_fraction=None))
  c.tads.gate.column = 'no_such_*'
  with pytest.raises(ValueError, match=r"config\.tads\.gate\.column: 'no_such_\*' matches "
                     'no features column'):
    main.run(c, workdir)
  c.tads.gate.column = 'clip_score'
  # Without the gate the same run scores every row, and keeps some the gate drops.
  c.tads.gate.fraction = None
  main.run(c, workdir)
  ungated = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  assert np.isfinite(ungated.column('score').to_numpy()).all()
  assert ungated.column('times_selected').to_numpy()[~passes].any()


def test_dedup_keeps_flagged_copies_out(prior_run, tmp_path):
  """tads.dedup: the rows a duplicate flag marks score NaN and are never kept; every other
  row keeps the score it has without dedup (the prior, by hand), and the budget fills
  from them. The flags are the features stage's, read here from scores.parquet."""
  workdir = str(tmp_path / 'w')
  shutil.copytree(prior_run[0], workdir)
  c = config(steps=0)
  # The tiny encoder puts most rows within the default eps of another; a tighter one
  # leaves more rows than the budget unflagged.
  c.features.semdedup_eps = 1e-4
  for mode, columns in (('exact', ('exact_duplicate',)),
                        ('both', ('exact_duplicate', 'semantic_duplicate'))):
    c.tads.dedup = mode
    main.run(c, workdir)
    scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
    flagged = np.zeros(scores.num_rows, bool)
    for column in columns:
      flagged |= scores.column(column).to_numpy(zero_copy_only=False).astype(bool)
    assert 0 < flagged.sum() < scores.num_rows - round(0.36 * scores.num_rows), flagged.sum()
    score = scores.column('score').to_numpy()
    assert np.isnan(score[flagged]).all()
    np.testing.assert_allclose(score[~flagged], _prior_scores_by_hand(scores)[~flagged],
                               rtol=1e-4, atol=1e-4)
    counts = scores.column('times_selected').to_numpy()
    assert counts.sum() == round(0.36 * scores.num_rows) and counts.max() == 1
    assert not counts[flagged].any()
    state = learn.load_state(os.path.join(workdir, 'learn', learn.STATE))
    assert state['dedup'] == mode
    assert f"Duplicates kept out of the subset (tads.dedup='{mode}')" in open(
        os.path.join(workdir, 'report.md')).read()
  c.tads.dedup = 'sometimes'
  with pytest.raises(config_lib.ConfigError, match=r'config\.tads\.dedup: one of none, '
                     'exact, semantic, both'):
    validate(c)


def test_soft_cap_writes_repeats_at_the_same_budget(prior_run, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(prior_run[0], workdir)
  c = config(steps=0)
  c.selection.method = 'soft_cap'
  c.selection.soft_cap.update(dict(batch_size=4, penalty=0.15))
  status = main.run(c, workdir)
  assert status['learn'] == 'skipped' and status['select'] == 'ran'
  scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  counts = scores.column('times_selected').to_numpy()
  subset = subset_lib.read_subset(os.path.join(workdir, 'subset.npy'))
  assert len(subset) == counts.sum() == round(0.36 * scores.num_rows)
  assert counts.max() > 1  # some sample repeats: a batch of 4 from softmax of the values


def test_config_errors_name_the_field():
  c = config()
  c.stages = tuple(s for s in STAGES if s != 'learn')
  with pytest.raises(config_lib.ConfigError, match="config.stages: selector 'tads' learns"):
    validate(c)
  # Up to features only (as a sweep's extra validation draw runs): nothing selects, so
  # nothing needs the learned state.
  c.stages = tuple(itertools.takewhile(lambda s: s != 'learn', STAGES))
  assert c.stages and 'features' in c.stages
  validate(c)
  c = config()
  c.selector.name = 'random'
  with pytest.raises(config_lib.ConfigError, match="selector 'random' has nothing to learn"):
    validate(c)
  for field, bad, message in (
      ('groups', ('quality', 'vibes'), 'config.tads.groups'),
      ('hidden', (0,), 'config.tads.hidden'),
      ('value_form', 'max', r'config\.tads\.value_form: one of'),
      ('linear_signs', 'sticky', r'config\.tads\.linear_signs: one of'),
      ('two_sided', ('vibes',), r'config\.tads\.two_sided: a tuple of quality feature'),
      ('two_sided', ('clip_score',), r"config\.tads\.two_sided: 'clip_score' has a one-sided"),
  ):
    c = config()
    c.tads[field] = bad
    with pytest.raises(config_lib.ConfigError, match=message):
      validate(c)
  for field, bad, message in (
      ('fraction', 0.3, r'config\.tads\.gate\.fraction: 0\.3 is below selection\.fraction'),
      ('fraction', 1.5, r'config\.tads\.gate\.fraction: a share of the pool in \(0, 1\]'),
      ('column', '', r'config\.tads\.gate\.column: a features column name'),
      ('then_fraction', 0.6, r'config\.tads\.gate\.then_fraction: a share of the pool in '
       r'\(0, 0\.5\]'),
      ('then_fraction', 0.3, r'config\.tads\.gate\.then_fraction: 0\.3 is below selection'),
      ('then_column', '', r'config\.tads\.gate\.then_column: a features column name'),
  ):
    c = config()
    c.tads.gate.update(dict(fraction=0.5, then_column='clip_score', then_fraction=0.4))
    c.tads.gate[field] = bad
    with pytest.raises(config_lib.ConfigError, match=message):
      validate(c)
  c = config()
  c.tads.ensemble = 0
  with pytest.raises(config_lib.ConfigError, match=r'config\.tads\.ensemble: a count'):
    validate(c)
  c = config()
  c.tads.gate.then_fraction = 0.5  # a second pass without the first
  with pytest.raises(config_lib.ConfigError, match=r'config\.tads\.gate\.then_fraction: a '
                     'second pass needs the first'):
    validate(c)
  c = config()
  c.tads.meta.unroll = 0
  with pytest.raises(config_lib.ConfigError, match='config.tads.meta.unroll'):
    validate(c)
  c = config()
  c.tads.prior.quality = -1.0
  with pytest.raises(config_lib.ConfigError, match='config.tads.prior'):
    validate(c)
