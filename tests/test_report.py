"""report.selection_profile on a hand-made table, and the plots drawn from report numbers."""

import numpy as np
import pyarrow as pa
from PIL import Image
import pytest

from tads_jax import plots
from tads_jax import report as report_lib


def _scores():
  return pa.table({
      'uid': ['a', 'b', 'c', 'd', 'e'],
      'relevance_shapes_image': [0.9, 0.1, 0.5, 0.3, 0.7],
      'cluster': np.array([0, 0, 1, 1, 3], np.int32),  # cluster 2 is empty
      'times_selected': [1, 0, 2, 0, 0],
  })


def test_selection_profile_hand_case():
  profile = report_lib.selection_profile(_scores())
  rel, = profile['relevance']
  assert rel['feature'] == 'relevance_shapes_image'
  assert rel['pool_mean'] == pytest.approx(0.5)
  assert rel['kept_mean'] == pytest.approx(0.7)  # a (0.9) and c (0.5)
  # Clusters 0, 1, 3 exist; 0 and 1 keep one of two each, 3 keeps none.
  assert profile['clusters'] == {'clusters': 3, 'covered': 2,
                                 'kept_fraction_per_cluster': [0.5, 0.5, 0.0]}


def _report(tmp_path):
  history = {'outer_loss': [2.0, 1.5, 1.2],
             'task_losses': {'t1': [2.0, 1.4, 1.1], 't2': [2.0, 1.6, 1.3]},
             'task_weights': {'t1': [0.5, 0.45, 0.4], 't2': [0.5, 0.55, 0.6]}}
  seeds = {'mean': 0.4, 'std': 0.01}
  run = {'average': seeds, 'seeds': [0, 1], 'train': {'samples_seen': 100},
         'subset': {'entries': 10, 'unique': 10}, 'tasks': {}}
  return {
      'workdir': str(tmp_path),
      'selection': {'selector': 'tads', 'fraction': 0.36},
      'ground_truth': {'by_noise': [{'noise': 'clean', 'kept_fraction': 0.6},
                                    {'noise': 'spam', 'kept_fraction': 0.0}],
                       'by_on_task': [{'on_task': True, 'kept_fraction': 0.5}]},
      'selection_profile': report_lib.selection_profile(_scores()),
      'learn': {'history': history, 'groups': ['quality'],
                'feature_weights': [{'feature': 'clip_score', 'group': 'quality',
                                     'prior': 1.0, 'learned': 1.3}]},
      'evaluation': dict(run, selector='tads', baselines={'random': run}),
  }


def test_every_plot_is_a_png_and_missing_numbers_skip_the_plot(tmp_path):
  paths = plots.draw_all(_report(tmp_path), str(tmp_path / 'plots'))
  assert sorted(paths) == sorted(plots.PLOTS)
  for path in paths.values():
    with Image.open(path) as img:
      assert img.format == 'PNG' and img.width > 100 and img.height > 100
  bare = {'workdir': str(tmp_path), 'selection': {'selector': 'random', 'fraction': 0.5}}
  assert plots.draw_all(bare, str(tmp_path / 'bare')) == {}


def test_markdown_shows_feature_weights_and_meta_curve_summary(tmp_path):
  lines = '\n'.join(report_lib._learn_lines(_report(tmp_path)['learn']))
  assert '3 meta steps; outer loss 2.0000 -> 1.2000' in lines
  assert 'Task weights at the end: t1 0.400, t2 0.600' in lines
  assert '| clip_score | quality | 1.000 | 1.300 |' in lines


# ---------------------------------------------------------------------------------------
# The pixel check beside the embedding proxy's comparison.


def _eval_run(average, proxy, entries=10):
  """A hand-made eval dict of one subset: one classification task at average + 0.1."""
  train = ({'kind': 'pixels', 'model': 'tiny', 'samples_seen': 96,
            'model_overrides': [['image_size', 32], ['vision_stem', 'conv']]}
           if proxy == 'pixels' else {'kind': 'embedding', 'head': 'mlp', 'samples_seen': 64})
  return {'proxy': proxy, 'seeds': [0, 1], 'train': train,
          'subset': {'entries': entries, 'unique': entries - 2},
          'main_metric': {'classification': 'top1'},
          'tasks': {'shapes': {'kind': 'classification', 'mean': {'main': average + 0.1},
                               'std': {'main': 0.02}}},
          'average': {'mean': average, 'std': 0.01}}


def checked_eval(pixel_selected):
  """An eval.json with a pixel check (test_html_report reads it too). Embedding proxy:
  tads 0.40 > clip_score 0.35 > full 0.30; pixel check (2 seeds): tads at
  `pixel_selected`, clip_score 0.25, full 0.10."""
  evaluation = dict(_eval_run(0.40, 'embedding'), selector='tads',
                    baselines={'clip_score': _eval_run(0.35, 'embedding'),
                               'full': _eval_run(0.30, 'embedding', entries=30)})
  evaluation['pixel_check'] = {
      'seeds': 2, 'selected': _eval_run(pixel_selected, 'pixels'),
      'baselines': {'clip_score': _eval_run(0.25, 'pixels'),
                    'full': _eval_run(0.10, 'pixels', entries=30)}}
  return evaluation


def _evaluation_lines(evaluation):
  return report_lib._evaluation_lines(evaluation)  # pylint: disable=protected-access


def test_pixel_check_table_and_the_pairs_the_proxies_order_differently():
  lines = _evaluation_lines(checked_eval(0.20))
  text = '\n'.join(lines)
  assert '### Pixel check: the pixel proxy on a few of these subsets' in text
  assert 'pixel proxy: 2 seeds; 96 samples seen; a tiny CLIP (conv stem, 32 px)' in text
  check = text[text.index('### Pixel check'):]
  assert '| subset | entries | unique | average +- std | shapes | proxy |' in check
  for row in ('| tads (selected) | 10 | 8 | 0.2000 +- 0.0100 | 0.300 | pixel proxy |',
              '| clip_score | 10 | 8 | 0.2500 +- 0.0100 | 0.350 | pixel proxy |',
              '| full | 30 | 28 | 0.1000 +- 0.0100 | 0.200 | pixel proxy |'):
    assert row in check, row
  # tads over clip_score flips (0.40 > 0.35, 0.20 < 0.25); full stays last under both.
  expected = ('The embedding proxy and the pixel proxy order these subsets differently '
              '(average main metric, mean over seeds): tads (selected) is above clip_score '
              'under the embedding proxy (0.4000 vs 0.3500) but below it under the pixel '
              'proxy (0.2000 vs 0.2500).')
  assert lines[-1] == expected
  pairs = report_lib.proxy_disagreements(checked_eval(0.20))
  assert [(p['above'], p['below']) for p in pairs] == [('tads (selected)', 'clip_score')]


def test_no_disagreement_sentence_when_the_orders_agree_or_there_is_no_check():
  text = '\n'.join(_evaluation_lines(checked_eval(0.30)))
  assert 'order these subsets differently' not in text
  assert ('The embedding proxy and the pixel proxy order these subsets the same way '
          '(average main metric, mean over seeds).') in text
  assert report_lib.proxy_disagreements(checked_eval(0.30)) == []
  plain = checked_eval(0.20)
  del plain['pixel_check']
  text = '\n'.join(_evaluation_lines(plain))
  assert 'Pixel check' not in text and 'pixel proxy' not in text
  assert report_lib.order_sentence(plain) is None


def test_one_pixel_seed_is_said_to_have_no_spread():
  evaluation = checked_eval(0.20)
  evaluation['pixel_check']['seeds'] = 1
  lines = _evaluation_lines(evaluation)
  text = '\n'.join(lines)
  assert 'pixel proxy: 1 seed; 96 samples seen' in text
  assert 'One seed (a single run each, so no spread) of the mean main metric' in text
  assert lines[-1].endswith('(0.2000 vs 0.2500). The pixel proxy ran one seed per subset, '
                            "so its order may be that seed's.")
  assert 'one seed per subset' not in '\n'.join(_evaluation_lines(checked_eval(0.20)))
