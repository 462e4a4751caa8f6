"""The validation split (data/task_split.py) and its use: what the selection side reads,
evaluate.split='validation', fingerprints, and tools/tads_sweep.py end to end.

Unit cases are worked by hand. Pipeline cases run a tiny world (three train examples per
class, six retrieval images) and check the stages' task arrays against the raw npz the
embed stage wrote, cut with rows computed here.
"""

import json
import os
import shutil
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_tads_pipeline  # noqa: E402  pylint: disable=wrong-import-position

from configs import default  # noqa: E402
from tads_jax import main  # noqa: E402
from tads_jax import pipeline  # noqa: E402
from tads_jax import report as report_lib  # noqa: E402
from tads_jax import stages as stages_lib  # noqa: E402
from tads_jax.data import task_split  # noqa: E402
from tads_jax.data import tasks as tasks_lib  # noqa: E402
from tads_jax.stages import embed  # noqa: E402
from tads_jax.stages import evaluate  # noqa: E402
from tads_jax.stages import learn  # noqa: E402
from conftest import load_tool, read_eval_json  # noqa: E402

tool = load_tool('tads_sweep')

FRACTION = 0.34  # of 3 per class: 1 validation, 2 fit; of 6 retrieval images: 2 and 4


# --- the split function ----------------------------------------------------------------


def test_stratified_counts_worked_by_hand():
  # class 0: 4 examples, 1: 2, 2: 6. At 0.25: round(1.0)=1, round(0.5)=1 (half up), and
  # round(1.5)=2; at 0.9: 4 -> round(3.6)=4 capped at 3, 2 -> 1, 6 -> round(5.4)=5.
  labels = np.array([0, 0, 2, 0, 1, 2, 2, 0, 1, 2, 2, 2])
  for fraction, want in ((0.25, [1, 1, 2]), (0.9, [3, 1, 5])):
    fit, val = task_split.split_rows(12, fraction, 0, 'shapes', labels)
    assert np.bincount(labels[val], minlength=3).tolist() == want
    assert np.bincount(labels[fit], minlength=3).tolist() == [4 - want[0], 2 - want[1],
                                                              6 - want[2]]
    # A sorted, disjoint and complete cover of the train split.
    assert np.all(np.diff(fit) > 0) and np.all(np.diff(val) > 0)
    assert sorted(fit.tolist() + val.tolist()) == list(range(12))


def test_the_cut_is_deterministic_per_seed_and_task():
  labels = np.repeat(np.arange(5), 20)  # [100]
  first = task_split.split_rows(100, 0.3, 7, 'colors', labels)
  again = task_split.split_rows(100, 0.3, 7, 'colors', labels)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert len(first[1]) == 5 * 6
  other_seed = task_split.split_rows(100, 0.3, 8, 'colors', labels)[1]
  other_task = task_split.split_rows(100, 0.3, 7, 'shapes', labels)[1]
  assert not np.array_equal(first[1], other_seed)
  assert not np.array_equal(first[1], other_task)


def test_a_class_that_cannot_be_cut_names_the_field():
  labels = np.array([0, 0, 1, 2, 2])
  with pytest.raises(ValueError, match=r"^config\.tads\.validation_fraction: task 'shapes' "
                     r"has 1 train examples of class 'square'; a validation split needs at "
                     r'least 2'):
    task_split.split_rows(5, 0.5, 0, 'shapes', labels, classnames=('circle', 'square', 'star'))
  with pytest.raises(ValueError, match=r"^config\.tads\.validation_fraction: task 'captions' "
                     r'has 1 train images'):
    task_split.split_rows(1, 0.5, 0, 'captions')
  with pytest.raises(ValueError, match=r'^config\.tads\.validation_fraction: must be in'):
    task_split.split_rows(5, 0.0, 0, 'captions')


def test_validation_fraction_reader():
  c = default.get_config()
  assert task_split.validation_fraction(c) == 0.0
  del c.tads['validation_fraction']  # a config written before the field
  assert task_split.validation_fraction(c) == 0.0
  for value in (1.0, -0.5, 'a', True):
    c.tads.validation_fraction = value
    with pytest.raises(ValueError, match=r'^config\.tads\.validation_fraction: '):
      task_split.validation_fraction(c)
    del c.tads['validation_fraction']


def test_validation_seed_reader_and_fingerprints():
  """tads.validation_seed: None reads config.seed; a bad value names the field; set, it
  reruns what reads the cut (with a cut) and nothing upstream of it."""
  c = default.get_config()
  c.seed = 5
  assert task_split.validation_seed(c) == 5
  del c.tads['validation_seed']  # a config written before the field
  assert task_split.validation_seed(c) == 5
  for value in (-1, 1.5, 'a', True):
    c.tads.validation_seed = value
    with pytest.raises(ValueError, match=r'^config\.tads\.validation_seed: '):
      task_split.validation_seed(c)
    del c.tads['validation_seed']
  c = default.get_config()
  c.tads.validation_fraction = 0.2
  before = _fingerprints(c)
  c.tads.validation_seed = c.seed  # the same cut, named: fingerprinted all the same
  named = _fingerprints(c)
  c.tads.validation_seed = c.seed + 1
  after = _fingerprints(c)
  assert {n for n in before if before[n] != named[n]} == {'features', 'learn', 'select',
                                                          'evaluate'}
  assert {n for n in named if named[n] != after[n]} == {'features', 'learn', 'select',
                                                        'evaluate'}


def test_retrieval_keeps_an_image_with_its_captions():
  # 5 images; captions 0,1 -> image 0, 2 -> 1, 3,4,5 -> 2, 6 -> 3, 7 -> 4.
  arrays = {'image_emb': np.arange(5, dtype=np.float16)[:, None] * np.ones((1, 2)),
            'text_emb': np.arange(8, dtype=np.float16)[:, None] * np.ones((1, 2)),
            'text_image': np.array([0, 0, 1, 2, 2, 2, 3, 4], np.int32),
            'keys': np.array(['a', 'b', 'c', 'd', 'e'])}
  part = task_split.take_embeddings('retrieval', arrays, np.array([1, 2]))
  np.testing.assert_array_equal(part['image_emb'][:, 0], [1, 2])
  np.testing.assert_array_equal(part['text_emb'][:, 0], [2, 3, 4, 5])
  np.testing.assert_array_equal(part['text_image'], [0, 1, 1, 1])
  assert part['text_image'].dtype == np.int32 and part['keys'].tolist() == ['b', 'c']
  # A cut by image: at 0.4 two of the five images, each with all of its captions.
  fit, val = task_split.split_rows(5, 0.4, 0, 'captions')
  assert len(val) == 2 and sorted(fit.tolist() + val.tolist()) == list(range(5))
  fit_part = task_split.take_embeddings('retrieval', arrays, fit)
  val_part = task_split.take_embeddings('retrieval', arrays, val)
  assert len(fit_part['text_emb']) + len(val_part['text_emb']) == 8
  for part, rows in ((fit_part, fit), (val_part, val)):
    owners = part['image_emb'][part['text_image'], 0]  # each caption's image, by value
    np.testing.assert_array_equal(owners, arrays['text_image'][
        np.isin(arrays['text_image'], rows)])


def test_classification_cut_keeps_the_prompts_and_picks_examples():
  arrays = {'image_emb': np.eye(4, dtype=np.float16), 'labels': np.array([0, 1, 0, 1]),
            'class_text_emb': np.ones((2, 3, 4), np.float16)}
  part = task_split.take_embeddings('classification', arrays, np.array([0, 3]))
  np.testing.assert_array_equal(part['image_emb'], np.eye(4)[[0, 3]])
  np.testing.assert_array_equal(part['labels'], [0, 1])
  assert part['class_text_emb'] is arrays['class_text_emb']
  split = tasks_lib.TaskSplit(images=np.arange(3)[:, None, None, None] * np.ones(
      (1, 2, 2, 3), np.uint8), labels=None, captions=[['x'], ['y', 'z'], ['w']],
      keys=['k0', 'k1', 'k2'], skips=None)
  taken = task_split.take_examples(split, np.array([1, 2]))
  assert taken.captions == [['y', 'z'], ['w']] and taken.keys == ['k1', 'k2']
  np.testing.assert_array_equal(taken.images[:, 0, 0, 0], [1, 2])


def test_the_report_names_the_validation_split():
  evaluation = {'tasks': {'t': {'kind': 'classification', 'mean': {'main': 0.5},
                                'std': {'main': 0.0}}},
                'main_metric': {'classification': 'top1'}, 'average': {'mean': 0.5,
                                                                      'std': 0.0},
                'train': {'samples_seen': 8, 'head': 'mlp'}, 'seeds': [0],
                'subset': {'entries': 3, 'unique': 3}, 'proxy': 'embedding'}
  lines = report_lib._evaluation_lines  # pylint: disable=protected-access
  assert report_lib.split_note(evaluation) == ''
  assert 'validation' not in '\n'.join(lines(evaluation))
  evaluation['split'] = 'eval'
  assert report_lib.split_note(evaluation) == ''
  evaluation['split'] = 'validation'
  first = lines(evaluation)[0]
  assert first.endswith('scored on the validation split (held out of the tasks\' train data '
                        'by tads.validation_fraction), not the eval split')


# --- fingerprints ----------------------------------------------------------------------


def _fingerprints(c) -> dict:
  upstream = {stage.name: stage.name for stage in stages_lib.STAGES}
  return {stage.name: pipeline.fingerprint(stage, c, upstream) for stage in stages_lib.STAGES}


def test_fingerprints_at_zero_are_those_of_a_config_without_the_fields():
  """A config written before the fields and one holding them at their defaults fingerprint
  every stage alike, except the stages that hash the whole config.tads block (learn and
  select with the tads selector): the field is part of that block."""
  for selector in ('clip_score', 'normsim', 'tads'):
    c = default.get_config()
    c.selector.name = selector
    with_fields = _fingerprints(c)
    del c.tads['validation_fraction']
    del c.evaluate['split']
    without = _fingerprints(c)
    differ = {name for name in with_fields if with_fields[name] != without[name]}
    assert differ == ({'learn', 'select'} if selector == 'tads' else set()), selector


def test_a_validation_split_reruns_the_selection_side_only():
  for selector in ('clip_score', 'normsim', 'tads'):
    c = default.get_config()
    c.selector.name = selector
    before = _fingerprints(c)
    c.tads.validation_fraction = 0.2
    after = _fingerprints(c)
    assert {name for name in before if before[name] != after[name]} == {
        'features', 'learn', 'select', 'evaluate'}, selector
    c.evaluate.split = 'validation'
    scored = _fingerprints(c)
    assert {name for name in after if after[name] != scored[name]} == {'evaluate'}


# --- the pipeline ----------------------------------------------------------------------


def config(fraction=0.0, split='eval'):
  c = test_tads_pipeline.config(steps=2)
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'learn', 'select', 'evaluate')
  c.pool.synthetic.update(dict(train_per_class=3, retrieval_train=6))
  c.tads.validation_fraction = fraction
  c.evaluate.update(dict(samples_seen=16 * 6, seeds=2, batch_size=16, lr=1e-3, warmup=2,
                         head='mlp', baselines=(), split=split))
  return c


@pytest.fixture(scope='module')
def base_run(tmp_path_factory):
  """A run without a validation split."""
  workdir = str(tmp_path_factory.mktemp('val_base'))
  return workdir, main.run(config(), workdir)


@pytest.fixture(scope='module')
def split_run(base_run, tmp_path_factory):
  """The same world with a validation split (a copy of the base run's workdir)."""
  workdir = str(tmp_path_factory.mktemp('val_split') / 'w')
  shutil.copytree(base_run[0], workdir)
  return workdir, main.run(config(FRACTION), workdir)


def _raw(workdir, spec, split='train') -> dict:
  with np.load(os.path.join(workdir, 'embed', 'tasks', f'{spec.name}_{split}.npz')) as npz:
    return {k: npz[k] for k in npz.files}


def _rows(spec, raw) -> tuple:
  labels = raw['labels'] if spec.kind == 'classification' else None
  return task_split.split_rows(len(raw['image_emb']), FRACTION, config().seed, spec.name,
                               labels)


def test_at_zero_the_selection_side_reads_the_whole_train_split(base_run):
  workdir, status = base_run
  assert all(s == 'ran' for s in status.values()), status
  ctx = pipeline.Context(config=config(), workdir=workdir)
  tasks = learn._tasks(ctx, ('tasks',))  # pylint: disable=protected-access
  specs = embed.task_specs(ctx)
  assert [t['name'] for t in tasks] == [s.name for s in specs]
  assert {s.kind for s in specs} == {'classification', 'retrieval'}
  for spec, task in zip(specs, tasks):
    raw = _raw(workdir, spec)
    for field in embed.task_fields(spec.kind):
      want = raw[field].tolist() if field == 'classnames' else raw[field]
      np.testing.assert_array_equal(task[field], want, err_msg=f'{spec.name} {field}')
  with pytest.raises(ValueError, match=r'^config\.tads\.validation_fraction: 0, so '):
    embed.task_embeddings(ctx, 'validation')


def test_a_config_without_the_fields_makes_the_same_outputs(base_run, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(base_run[0], workdir)
  c = config()
  del c.tads['validation_fraction']
  del c.evaluate['split']
  status = main.run(c, workdir)
  assert status['embed'] == status['features'] == 'skipped'
  for name in ('learn/state.msgpack', 'subset.npy', 'features/features.parquet'):
    with open(os.path.join(workdir, name), 'rb') as a, \
         open(os.path.join(base_run[0], name), 'rb') as b:
      assert a.read() == b.read(), name
  again, base = read_eval_json(workdir), read_eval_json(base_run[0])
  assert again['split'] == base['split'] == 'eval'
  assert again['tasks'] == base['tasks'] and again['average'] == base['average']


def test_with_a_split_the_selection_side_sees_only_the_fit_rows(split_run):
  workdir, status = split_run
  # The embeddings do not depend on the cut; everything that reads the tasks reruns.
  assert status['ingest'] == status['encoder'] == status['embed'] == 'skipped', status
  assert status['features'] == status['learn'] == status['select'] == 'ran', status
  ctx = pipeline.Context(config=config(FRACTION), workdir=workdir)
  tasks = learn._tasks(ctx, ('tasks',))  # pylint: disable=protected-access
  validation = dict(embed.task_embeddings(ctx, 'validation'))
  for spec, task in zip(embed.task_specs(ctx), tasks):
    raw = _raw(workdir, spec)
    fit, val = _rows(spec, raw)
    image = raw['image_emb'].astype(np.float32)
    np.testing.assert_array_equal(task['image_emb'], image[fit])
    np.testing.assert_array_equal(validation[spec]['image_emb'], raw['image_emb'][val])
    if spec.kind == 'classification':
      counts = np.bincount(raw['labels'])
      assert counts.min() == 3
      assert np.bincount(task['labels']).tolist() == (counts - 1).tolist()  # one held out
      np.testing.assert_array_equal(task['labels'], raw['labels'][fit])
      np.testing.assert_array_equal(task['class_text_emb'], raw['class_text_emb'])
    else:
      assert (len(fit), len(val)) == (4, 2)
      held = np.isin(raw['text_image'], val)  # [M] captions of validation images
      np.testing.assert_array_equal(task['text_emb'], raw['text_emb'][~held])
      np.testing.assert_array_equal(fit[task['text_image']], raw['text_image'][~held])
    # No validation example reaches the selection side.
    for row in image[val]:
      assert not np.any(np.all(task['image_emb'] == row, axis=1)), spec.name


def test_relevance_prototypes_come_from_the_fit_part(base_run, split_run):
  """Classification prototypes are the class prompts (unchanged by the cut), retrieval
  ones the k-means of the fit part's pairs: only the retrieval task's columns move."""
  before = pq.read_table(os.path.join(base_run[0], 'features', 'features.parquet'))
  after = pq.read_table(os.path.join(split_run[0], 'features', 'features.parquet'))
  assert before.column_names == after.column_names
  moved = {name for name in before.column_names
           if not before.column(name).equals(after.column(name))}
  assert moved == {'relevance_captions_image', 'relevance_captions_text'}


def test_evaluate_scores_the_validation_rows(split_run, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(split_run[0], workdir)
  status = main.run(config(FRACTION, split='validation'), workdir)
  assert [s for s, v in status.items() if v == 'ran'] == ['evaluate']
  result, on_eval = read_eval_json(workdir), read_eval_json(split_run[0])
  assert result['split'] == 'validation' and on_eval['split'] == 'eval'
  ctx = pipeline.Context(config=config(FRACTION), workdir=workdir)
  for spec in embed.task_specs(ctx):
    raw = _raw(workdir, spec)
    _, val = _rows(spec, raw)
    scored = result['tasks'][spec.name]
    assert scored['num_images'] == len(val)
    assert on_eval['tasks'][spec.name]['num_images'] == len(_raw(workdir, spec, 'eval')[
        'image_emb'])
    if spec.kind == 'retrieval':
      assert scored['num_texts'] == int(np.isin(raw['text_image'], val).sum())
  # The same proxies (trained on the same subset), scored on other examples.
  assert result['subset']['sha256'] == on_eval['subset']['sha256']
  assert result['final_loss'] == on_eval['final_loss']


def test_the_pixel_proxy_decodes_the_validation_examples(base_run, split_run):
  workdir, _ = split_run
  ctx = pipeline.Context(config=config(FRACTION), workdir=workdir)
  specs, splits = evaluate.pixel_tasks(ctx, 16, 'validation')
  # The copy's embed stage was the base's: its keys name the base's world, and the
  # examples come from the copy's own.
  base_world, own_world = (os.path.join(w, 'ingest', 'world') for w in (base_run[0], workdir))
  for spec, split in zip(specs, splits):
    raw = _raw(workdir, spec)
    _, val = _rows(spec, raw)
    assert split.keys == [k.replace(base_world, own_world) for k in raw['keys'][val]]
    assert all(k.startswith(own_world + os.sep) for k in split.keys)
    assert split.images.shape == (len(val), 16, 16, 3)
    whole = tasks_lib.load_split(spec, 'train', 16)
    np.testing.assert_array_equal(split.images, whole.images[val])
    if spec.kind == 'classification':
      np.testing.assert_array_equal(split.labels, raw['labels'][val])
    else:
      assert sum(len(c) for c in split.captions) == int(np.isin(raw['text_image'], val).sum())


def test_sweep_chooses_on_validation_and_scores_only_its_choice_on_eval(split_run, tmp_path,
                                                                        monkeypatch):
  scored = []  # (candidate, split) of every subset scored, from its cache or not
  original = evaluate.evaluate_subset

  def spy(ctx, *args, **kwargs):
    scored.append((os.path.basename(ctx.workdir), evaluate.eval_split(ctx.config)))
    return original(ctx, *args, **kwargs)

  monkeypatch.setattr(evaluate, 'evaluate_subset', spy)
  out = str(tmp_path / 'sweep')
  names = ['tads', 'prior_only', 'tau_x3']
  summary = tool.sweep(config(FRACTION), split_run[0], out, names=names, seeds=2)
  with open(os.path.join(out, tool.SWEEP)) as f:
    assert json.load(f) == json.loads(json.dumps(summary))
  assert [t['name'] for t in summary['tried']] == names
  assert summary['tried'][2]['overrides'] == {'tads.meta.tau': config().tads.meta.tau * 3.0}
  # Each other candidate's paired difference against the config's own ('tads').
  tads_seeds = np.asarray(summary['tried'][0]['validation']['per_seed'])
  assert 'paired' not in summary['tried'][0]
  for entry in summary['tried'][1:]:
    assert entry['paired']['against'] == 'tads'
    assert entry['paired']['mean'] == pytest.approx(
        np.mean(np.asarray(entry['validation']['per_seed']) - tads_seeds))
  means = [t['validation']['mean'] for t in summary['tried']]
  assert summary['chosen'] == names[int(np.argmax(means))]
  assert summary['rule'] == 'best validation mean'
  chosen = summary['tried'][names.index(summary['chosen'])]
  assert summary['chosen_overrides'] == chosen['overrides']
  # The eval split was read for the chosen candidate alone, after every validation score.
  assert [s for s in scored if s[1] == 'eval'] == [(summary['chosen'], 'eval')]
  assert scored[-1] == (summary['chosen'], 'eval')
  assert {w for w, s in scored if s == 'validation'} == set(names)
  for name, entry in zip(names, summary['tried']):
    result = read_eval_json(os.path.join(out, name))
    assert result['split'] == ('eval' if name == summary['chosen'] else 'validation')
    assert len(entry['validation']['per_seed']) == 2
    if name != summary['chosen']:
      assert entry['validation']['mean'] == result['average']['mean']
    else:
      assert summary['eval']['mean'] == result['average']['mean']
  lines = tool.markdown(summary)
  assert sum('(chosen)' in line for line in lines) == 1
  # A run without a validation split has nothing to choose on.
  with pytest.raises(ValueError, match=r'^config\.tads\.validation_fraction: 0; the sweep'):
    tool.sweep(config(), split_run[0], out)


def test_sweep_draws_score_each_candidate_on_several_cuts(split_run, tmp_path):
  """--draws 2: the second draw's candidate scores the examples seed + 1 holds out, and
  the candidate's validation figures are those of both draws' eval.json together."""
  out = str(tmp_path / 'sweep')
  summary = tool.sweep(config(FRACTION), split_run[0], out, names=['prior_only'], seeds=2,
                       draws=2)
  seed = config().seed
  assert summary['validation_seeds'] == [seed, seed + 1]
  entry = summary['tried'][0]
  # The first draw's workdir then scored the chosen candidate on eval; the second's kept
  # its validation eval.json.
  first = entry['validation']['per_draw'][0]
  second = read_eval_json(os.path.join(out, f'prior_only_draw{seed + 1}'))
  assert second['split'] == 'validation'
  assert len(first['per_seed']) == 2
  per_seed = first['per_seed'] + second['average']['per_seed']
  assert entry['validation']['per_seed'] == per_seed
  assert entry['validation']['mean'] == pytest.approx(np.mean(per_seed))
  assert entry['validation']['std'] == pytest.approx(np.std(per_seed, ddof=1))
  assert [d['validation_seed'] for d in entry['validation']['per_draw']] == [seed, seed + 1]
  assert entry['validation']['per_draw'][1]['mean'] == second['average']['mean']
  # The second draw's workdir cut with seed + 1: its validation rows are that cut's.
  c = config(FRACTION)
  c.tads.validation_seed = seed + 1
  ctx = pipeline.Context(config=c, workdir=os.path.join(out, f'prior_only_draw{seed + 1}'))
  moved = 0
  for spec, arrays in embed.task_embeddings(ctx, 'validation'):
    raw = _raw(ctx.workdir, spec)
    labels = raw['labels'] if spec.kind == 'classification' else None
    rows = task_split.split_rows(len(raw['image_emb']), FRACTION, seed + 1, spec.name,
                                 labels)[1]
    if spec.kind == 'classification':
      np.testing.assert_array_equal(arrays['image_emb'], raw['image_emb'][rows])
    moved += not np.array_equal(rows, _rows(spec, raw)[1])
  assert moved  # another cut than the run's own
  # The draw's base reran features with its cut and stopped there: every candidate
  # learns its own value function, so the base learns none.
  assert os.path.isdir(os.path.join(out, f'_draw_{seed + 1}', 'features'))
  assert not os.path.exists(os.path.join(out, f'_draw_{seed + 1}', 'learn'))
  assert any('per draw' in line for line in tool.markdown(summary))
  with pytest.raises(ValueError, match=r'^draws: '):
    tool.sweep(config(FRACTION), split_run[0], out, names=['tads'], draws=0)


def test_paired_differences_by_hand():
  """A candidate 0.01 under the reference on every draw and seed while the draws move both
  by 0.05: unpaired stds of 0.04, a paired difference of exactly -0.01 +- 0, ahead on none
  of the draws; the Markdown table says so."""
  ref_seeds = [0.70, 0.71, 0.75, 0.76]  # 2 draws x 2 seeds
  ref = {'name': 'tads', 'validation': {
      'per_seed': ref_seeds, 'mean': float(np.mean(ref_seeds)),
      'std': float(np.std(ref_seeds, ddof=1)),
      'per_draw': [{'validation_seed': 0, 'mean': 0.705}, {'validation_seed': 1, 'mean': 0.755}]},
      'overrides': {}, 'tasks': {}}
  cand_seeds = [v - 0.01 for v in ref_seeds]
  cand = {'name': 'other', 'validation': {
      'per_seed': cand_seeds, 'mean': float(np.mean(cand_seeds)),
      'std': float(np.std(cand_seeds, ddof=1)),
      'per_draw': [{'validation_seed': 0, 'mean': 0.695}, {'validation_seed': 1, 'mean': 0.745}]},
      'overrides': {'tads.tau': 3.0}, 'tasks': {}}
  got = tool.paired(cand, ref)
  assert got['against'] == 'tads' and (got['wins'], got['of']) == (0, 2)
  assert got['mean'] == pytest.approx(-0.01) and got['std'] == pytest.approx(0.0, abs=1e-12)
  assert cand['validation']['std'] > 0.025  # what the unpaired figure shows
  lead = dict(cand, validation=dict(cand['validation'], per_seed=[0.72, 0.70, 0.77, 0.75],
                                    per_draw=[{'mean': 0.71}, {'mean': 0.76}]))
  got = tool.paired(lead, ref)  # +0.02, -0.01, +0.02, -0.01: mean +0.005, ahead on both draws
  assert got['mean'] == pytest.approx(0.005)
  assert got['std'] == pytest.approx(np.std([0.02, -0.01, 0.02, -0.01], ddof=1))
  assert got['wins'] == 2
  cand['paired'] = tool.paired(cand, ref)
  summary = {'tried': [ref, cand], 'chosen': 'tads', 'eval': {'mean': 0.6, 'std': 0.01},
             'rule': tool.RULE, 'proxy': 'embedding', 'seeds': 2, 'validation_fraction': 0.25,
             'validation_seeds': [0, 1]}
  lines = tool.markdown(summary)
  assert 'paired vs tads' in lines[0]
  assert '-0.0100 +- 0.0000, ahead on 0 of 2 draws' in lines[3]
  with pytest.raises(ValueError, match='^paired: other has 3 figures, tads 4'):
    tool.paired(dict(cand, validation=dict(cand['validation'], per_seed=[0.1, 0.2, 0.3])), ref)


def test_sweep_candidates_follow_the_config():
  c = default.get_config()
  c.tads.meta.steps = 300
  # A two-pass gate (the default's until session 21): 'no_then' among the candidates.
  c.tads.gate.update(dict(then_column='clip_score', then_fraction=0.54))
  got = tool.candidates(c)
  assert list(got) == ['tads', 'prior_only', 'value_lr_x3', 'value_lr_div3', 'tau_x3',
                       'tau_div3', 'steps_x3', 'steps_div3', 'relevance_zscore', 'per_task',
                       'zscore_per_task', 'prior_signs', 'no_mlp',
                       'no_mlp_prior_signs', 'no_target_relevance', 'no_gate', 'no_then',
                       'no_dedup', 'dedup_exact', 'dedup_semantic',
                       'no_quality', 'no_relevance', 'with_diversity',
                       'prior_quality_heavy', 'prior_relevance_heavy', 'two_sided',
                       'two_sided_prior_signs']
  assert got['two_sided'] == {'tads.two_sided': ('sharpness', 'contrast', 'entropy')}
  assert got['no_then'] == {'tads.gate.then_column': None, 'tads.gate.then_fraction': None}
  assert got['no_dedup'] == {'tads.dedup': 'none'}
  assert got['steps_x3'] == {'tads.meta.steps': 900}
  assert got['steps_div3'] == {'tads.meta.steps': 100}
  assert got['value_lr_x3']['tads.meta.value_lr'] == pytest.approx(0.09)
  assert got['no_relevance'] == {'tads.groups': ('quality',)}
  assert got['with_diversity'] == {'tads.groups': ('quality', 'relevance', 'diversity')}
  assert got['prior_quality_heavy'] == {'tads.prior.quality': 2.0,
                                        'tads.prior.relevance': 0.5}
  # With two-sided terms in the config: 'no_two_sided' instead, and the candidates that
  # cannot have them (the per-task form, no quality group) drop them.
  c.tads.two_sided = ('sharpness',)
  got = tool.candidates(c)
  assert 'two_sided' not in got and got['no_two_sided'] == {'tads.two_sided': ()}
  assert got['per_task']['tads.two_sided'] == () and got['no_quality']['tads.two_sided'] == ()
  assert 'tads.two_sided' not in got['prior_signs']
  assert tool.tads_ablations.VARIANTS['per_task'] == {'tads.value_form': 'per_task'}
  c.tads.two_sided = ()
  c.tads.groups = ('quality', 'relevance', 'diversity')
  got = tool.candidates(c)
  assert [n for n in got if n.startswith(('no_qu', 'no_re', 'no_di', 'with_', 'prior_'))] == [
      'prior_only', 'prior_signs', 'no_quality', 'no_relevance', 'no_diversity',
      'prior_quality_heavy', 'prior_relevance_heavy', 'prior_diversity_heavy']
  assert got['prior_quality_heavy'] == tool.tads_ablations.VARIANTS['prior_quality_heavy']
  c.tads.groups = ('quality',)
  c.tads.meta.steps = 0
  c.tads.gate.update(dict(then_column=None, then_fraction=None))  # one pass
  c.tads.dedup = 'none'
  assert list(tool.candidates(c)) == ['tads', 'prior_only', 'value_lr_x3', 'value_lr_div3',
                                      'tau_x3', 'tau_div3', 'relevance_zscore', 'per_task',
                                      'zscore_per_task', 'prior_signs',
                                      'no_mlp', 'no_mlp_prior_signs', 'no_target_relevance',
                                      'no_gate', 'then_clip_score_0.45',
                                      'then_clip_score_0.54', 'dedup_exact',
                                      'dedup_semantic', 'dedup_both', 'with_relevance',
                                      'with_diversity', 'two_sided', 'two_sided_prior_signs']
  assert tool.candidates(c)['no_gate'] == {'tads.gate.fraction': None}
  assert tool.candidates(c)['then_clip_score_0.45'] == {
      'tads.gate.then_column': 'clip_score', 'tads.gate.then_fraction': 0.45}
  c.tads.gate.update(dict(then_column='clip_score', then_fraction=0.54))  # two passes
  assert [n for n in tool.candidates(c) if 'gate' in n or 'then' in n] == ['no_gate',
                                                                           'no_then']
  c.tads.gate.update(dict(then_column=None, then_fraction=None))
  c.tads.gate.fraction = None  # the sweep tries gates on the config's column
  assert tool.candidates(c)['gate_0.54'] == {'tads.gate.fraction': 0.54}
  c.selection.fraction = 0.6  # 2x would be more than the pool
  assert [n for n in tool.candidates(c) if 'gate' in n] == ['gate_0.9']
  assert tool.candidates(c)['no_target_relevance'] == {'features.target_relevance': False}
  c.features.target_relevance = False  # the sweep tries the other value
  assert tool.candidates(c)['target_relevance'] == {'features.target_relevance': True}
  assert 'no_target_relevance' not in tool.candidates(c)
  assert tool.candidates(c)['per_task'] == {'tads.value_form': 'per_task'}
  assert tool.candidates(c)['no_mlp_prior_signs'] == {'tads.hidden': (),
                                                      'tads.linear_signs': 'prior'}


def test_robustness_moves_each_setting_3x_and_reports_the_margin_over_clip_score(
    base_run, tmp_path):
  """tools/tads_robustness.py on a tiny run: one row for the base run, then tau at 3x and
  1/3, each rerun in its own copy; margins are the eval.json means' differences."""
  robust = load_tool('tads_robustness')
  workdir = str(tmp_path / 'base')
  shutil.copytree(base_run[0], workdir)
  c = config()
  c.evaluate.baselines = ('clip_score',)
  main.run(c, workdir)
  rows = robust.robustness(workdir, str(tmp_path / 'out'), fields=('tau',), seeds=2,
                           config=c)
  assert [r['variant'] for r in rows] == ['tads (base run)', 'tau_x3', 'tau_div3']
  assert json.loads(rows[1]['overrides']) == {'tads.meta.tau': c.tads.meta.tau * 3.0}
  clip = read_eval_json(workdir)['baselines']['clip_score']['average']
  for row, where in zip(rows, (workdir, str(tmp_path / 'out' / 'tau_x3'),
                               str(tmp_path / 'out' / 'tau_div3'))):
    result = read_eval_json(where)['average']
    assert row['average'] == result['mean']
    assert row['margin over clip_score'] == pytest.approx(result['mean'] - clip['mean'])
    spread = max(result['std'], clip['std'])
    margin = result['mean'] - clip['mean']
    assert row['margin / larger std'] == (
        pytest.approx(margin / spread) if spread else
        np.copysign(np.inf, margin) if margin else 0.0)
  with pytest.raises(ValueError, match='scored with 2 seeds, not 3'):
    robust.robustness(workdir, str(tmp_path / 'out'), fields=('tau',), seeds=3, config=c)
  with pytest.raises(ValueError, match="no 'clip_score' baseline"):
    robust.robustness(base_run[0], str(tmp_path / 'out'), fields=('tau',), seeds=2, config=c)
