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
