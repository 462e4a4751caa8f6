"""The selector interface: registry, checks, dedup as a rule any selector sits on, state
saved and restored by the stages, and the one-way data flow of the modules."""

import ast
import os

import ml_collections
import numpy as np
import pyarrow as pa
import pytest

from tads_jax import config as config_lib
from tads_jax import selection
from tads_jax import selectors
from tads_jax import stages
from tads_jax.stages import learn

from configs import default
from conftest import REPO, validate

# Every selector the README promises (issue: one pure interface).
PUBLISHED = ('no_filter', 'basic_filter', 'clip_score', 'laion2b', 'text_based',
             'image_based', 'image_based_clip_score', 'semdedup', 'normsim', 'negclipscore',
             'ncl_normsim', 'random', 'tads', 'clip_powered', 'clipcov', 'flyt', 'mflyt')


def test_every_published_selector_is_registered_with_a_doc_line():
  for name in PUBLISHED:
    s = selectors.get(name)
    assert s.name == name and s.doc, name
    assert s.output_for(default.get_config()) in selectors.OUTPUTS
    assert set(s.needs_for(default.get_config())) <= set(selectors.NEEDS)


def _run_config(**selection):
  return ml_collections.ConfigDict({
      'seed': 0,
      'selection': dict(dict(fraction=0.5, method='topk', dedup='none',
                             soft_cap=dict(batch_size=2, penalty=0.15, temperature=1.0)),
                        **selection),
      'clip_score': {'threshold': None}})


def _pool():
  """Six samples; the two best scores belong to copies that dedup must exclude: row 1
  copies row 0 exactly, row 3 is a near-duplicate of row 2 (the features stage's flags)."""
  return selectors.Inputs(features=pa.table({
      'uid': [f'{i:032x}' for i in range(6)],
      'clip_score': [0.5, 0.9, 0.4, 0.8, 0.3, 0.2],
      'exact_duplicate': [False, True, False, False, False, False],
      'semantic_duplicate': [False, False, False, True, False, False]}))


@pytest.mark.parametrize('dedup,kept', [
    ('none', [1, 3, 0]),       # the top 3 scores: 0.9, 0.8, 0.5
    ('exact', [3, 0, 2]),      # row 1 out
    ('semantic', [1, 0, 2]),   # row 3 out
    ('both', [0, 2, 4]),       # rows 1 and 3 out: the next best fill the budget
])
def test_dedup_excludes_duplicate_copies_whatever_the_scores(dedup, kept):
  config = _run_config(dedup=dedup)
  _, counts = selection.select(config, selectors.get('clip_score'), {}, _pool())
  assert sorted(np.flatnonzero(counts)) == sorted(kept)


def test_dedup_applies_to_a_filter_and_to_soft_cap_sampling():
  config = _run_config(dedup='both')
  _, counts = selection.select(config, selectors.get('no_filter'), {}, _pool())
  np.testing.assert_array_equal(counts, [1, 0, 1, 0, 1, 1])
  config = _run_config(dedup='both', method='soft_cap')
  _, counts = selection.select(config, selectors.get('clip_score'), {}, _pool())
  assert counts[[1, 3]].sum() == 0 and counts.sum() == 3  # budget round(0.5 * 6)


def test_a_filter_keeps_its_own_size_and_a_threshold_makes_clip_score_one():
  config = _run_config()
  config.clip_score.threshold = 0.45
  _, counts = selection.select(config, selectors.get('clip_score'), {}, _pool())
  np.testing.assert_array_equal(counts, [1, 1, 0, 1, 0, 0])  # >= 0.45, not 50%


def test_bad_dedup_value_names_the_field():
  with pytest.raises(ValueError, match='config.selection.dedup'):
    selection.dedup_mode(_run_config(dedup='sometimes'))


def test_selector_output_is_checked():
  bad = selectors.Selector(name='bad', score=lambda c, s, i: np.zeros(2))
  with pytest.raises(ValueError, match=r"selector 'bad' returned \(2,\) values for 6"):
    selectors.run_selector(bad, _run_config(), {}, _pool())
  negative = selectors.Selector(name='neg', output='counts',
                                score=lambda c, s, i: -np.ones(6, np.int64))
  with pytest.raises(ValueError, match='negative counts'):
    selectors.run_selector(negative, _run_config(), {}, _pool())


def test_state_round_trips_through_the_learn_stage_files(tmp_path):
  state = {'params': {'dense': {'kernel': np.arange(6, dtype=np.float32).reshape(2, 3)}},
           'names': ['a', 'b'], 'steps': 3, 'history': {'loss': [1.0, 0.5]}}
  path = str(tmp_path / learn.STATE)
  learn.save_state(path, state)
  back = learn.load_state(path)
  np.testing.assert_array_equal(back['params']['dense']['kernel'],
                                state['params']['dense']['kernel'])
  assert back['names'] == ['a', 'b'] and back['steps'] == 3
  assert back['history'] == {'loss': [1.0, 0.5]}
  with open(path, 'wb') as f:
    f.write(b'not msgpack')
  with pytest.raises(ValueError, match='not a saved selector state'):
    learn.load_state(path)


def test_what_a_selector_needs_is_checked_before_any_work():
  c = default.get_config()
  c.selector.name = 'normsim'
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'select')
  validate(c)  # the default world has tasks and embeddings
  c.unlock()
  del c['tasks']
  c.tasks = []
  with pytest.raises(config_lib.ConfigError, match="config.tasks: selector 'normsim'"):
    validate(c)
  c = default.get_config()
  c.selector.name = 'laion2b'
  c.stages = ('ingest', 'encoder', 'embed', 'select')
  with pytest.raises(config_lib.ConfigError, match="selector 'laion2b' reads the features"):
    validate(c)
  c = default.get_config()
  c.evaluate.baselines = ('full', 'semdedup')
  c.stages = ('ingest', 'select', 'evaluate')
  c.selector.name = 'random'
  with pytest.raises(config_lib.ConfigError,
                     match="config.evaluate.baselines: selector 'semdedup' reads the pool"):
    validate(c)
  c = default.get_config()
  c.evaluate.baselines = ('full', 'basic_filter')
  c.basic_filter.max_aspect = 0.5
  with pytest.raises(config_lib.ConfigError, match='config.basic_filter.max_aspect'):
    validate(c)


def _imports(path: str) -> set:
  tree = ast.parse(open(path).read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      out.update(f'{node.module}.{a.name}' for a in node.names)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
  return out


def test_no_module_imports_a_later_stage():
  """Data flows one way: a stage reads earlier stages' outputs through their readers, and
  selectors (pure functions of arrays) import no stage at all."""
  order = {name: i for i, name in enumerate(stages.STAGE_NAMES)}
  root = os.path.join(REPO, 'tads_jax')
  for name, i in order.items():
    for module in _imports(os.path.join(root, 'stages', f'{name}.py')):
      if module.startswith('tads_jax.stages.'):
        other = module.split('.')[2]
        assert order[other] < i, f'stages/{name}.py imports the later stage {other}'
  for file in os.listdir(os.path.join(root, 'selectors')):
    if file.endswith('.py'):
      for module in _imports(os.path.join(root, 'selectors', file)):
        assert not module.startswith('tads_jax.stages'), f'selectors/{file} imports {module}'


def test_fingerprints_follow_the_settings_a_selector_reads():
  """mflyt's results depend on its input selectors' blocks: changing normsim.p changes the
  learn stage's fingerprint; changing an unrelated selector's block does not."""
  from tads_jax import pipeline  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.selector.name = 'mflyt'
  keys = learn.STAGE.config_keys(c)
  assert 'mflyt' in keys and 'normsim' in keys and 'clip_score' in keys
  fp = pipeline.fingerprint(learn.STAGE, c, {'ingest': 'a', 'embed': 'b', 'features': 'c'})
  c.basic_filter.min_side = 10
  assert pipeline.fingerprint(learn.STAGE, c, {'ingest': 'a', 'embed': 'b',
                                               'features': 'c'}) == fp
  c.normsim.p = 2.0
  assert pipeline.fingerprint(learn.STAGE, c, {'ingest': 'a', 'embed': 'b',
                                               'features': 'c'}) != fp
