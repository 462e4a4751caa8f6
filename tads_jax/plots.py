"""The report's PNG plots, each drawn from report.json's numbers (nothing recomputed here).

Every function takes the report dict and a path, draws one figure with matplotlib's Agg
backend (no display needed) and returns the path, or None when the report lacks the
numbers that plot needs (e.g. no ground truth, no evaluation, no meta-learning).
"""

import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from tads_jax import pipeline  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import report as report_lib  # noqa: E402  pylint: disable=wrong-import-position


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.tight_layout()
  with pipeline.atomic_write(path, suffix='.png') as tmp:
    fig.savefig(tmp, dpi=110)
  plt.close(fig)
  return path


def kept_by_noise(report: dict, path: str):
  """Share of each ground-truth noise type (and on/off task) the selection kept."""
  gt = report.get('ground_truth')
  if not gt:
    return None
  rows = gt['by_noise'] + [dict(r, noise=f"on_task={r['on_task']}") for r in gt['by_on_task']]
  names = [str(r['noise']) for r in rows]
  values = [r['kept_fraction'] for r in rows]
  fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
  ax.barh(names, values, color=['tab:green' if n == 'clean' else 'tab:gray' for n in names])
  fraction = report['selection']['fraction']
  ax.axvline(fraction, color='k', ls='--', lw=1, label=f'budget {fraction:g}')
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel('share kept')
  ax.set_title(f"{report['selection']['selector']}: kept share by ground-truth group")
  ax.legend(loc='lower right')
  return _save(fig, path)


def evaluation(report: dict, path: str):
  """Average zero-shot main metric per evaluated subset, mean and std over seeds."""
  ev = report.get('evaluation')
  if not ev or ev.get('stale'):
    return None
  runs = [(f"{ev.get('selector', 'selected')}", ev)] + list(ev.get('baselines', {}).items())
  names = [n for n, _ in runs]
  means = [r['average']['mean'] for _, r in runs]
  stds = [r['average']['std'] for _, r in runs]
  fig, ax = plt.subplots(figsize=(min(0.9 * len(runs) + 2, 18), 4))
  ax.bar(names, means, yerr=stds, capsize=4,
         color=['tab:blue'] + ['tab:gray'] * (len(runs) - 1))
  ax.set_ylabel(f'mean zero-shot main metric ({report_lib.proxy_label(ev)})')
  ax.tick_params(axis='x', labelrotation=35)
  for label in ax.get_xticklabels():
    label.set_horizontalalignment('right')
  ax.set_title(f"{report_lib.proxy_label(ev)}, {len(ev['seeds'])} seeds, "
               f"{ev['train']['samples_seen']} samples seen")
  for i, m in enumerate(means):
    ax.text(i, m, f'{m:.3f}', ha='center', va='bottom', fontsize=8)
  return _save(fig, path)


def meta_curves(report: dict, path: str):
  """Meta-learning: outer loss, each task's loss and each task's weight per meta step."""
  learn = report.get('learn')
  history = (learn or {}).get('history')
  if not history or not history.get('outer_loss'):
    return None
  steps = np.arange(1, len(history['outer_loss']) + 1)
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
  axes[0].plot(steps, history['outer_loss'])
  axes[0].set_title('outer loss (weighted task losses)')
  for name, values in history.get('task_losses', {}).items():
    axes[1].plot(steps, values, label=name)
  axes[1].set_title('task losses at the unrolled proxy')
  for name, values in history.get('task_weights', {}).items():
    axes[2].plot(steps, values, label=name)
  axes[2].set_title('task weights')
  for ax in axes:
    ax.set_xlabel('meta step')
  axes[2].legend(fontsize=7)
  return _save(fig, path)


def feature_weights(report: dict, path: str):
  """The value function's effective weight per named feature, prior vs learned."""
  weights = (report.get('learn') or {}).get('feature_weights')
  if not weights:
    return None
  names = [w['feature'] for w in weights]
  y = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(7, 0.25 * len(names) + 1.2))
  ax.barh(y - 0.2, [w['prior'] for w in weights], height=0.4, label='prior', color='tab:gray')
  ax.barh(y + 0.2, [w['learned'] for w in weights], height=0.4, label='learned (mean dV/dz)',
          color='tab:blue')
  ax.set_yticks(y, names, fontsize=7)
  ax.invert_yaxis()
  ax.axvline(0, color='k', lw=0.8)
  ax.legend(fontsize=7)
  ax.set_title('value function: weight per standardized feature')
  return _save(fig, path)


def cluster_coverage(report: dict, path: str):
  """Selected share of each diversity cluster, clusters sorted by that share."""
  coverage = (report.get('selection_profile') or {}).get('clusters')
  if not coverage:
    return None
  shares = np.sort(np.asarray(coverage['kept_fraction_per_cluster']))[::-1]
  fig, ax = plt.subplots(figsize=(7, 3))
  ax.bar(np.arange(len(shares)), shares, width=1.0, color='tab:blue')
  ax.axhline(report['selection']['fraction'], color='k', ls='--', lw=1, label='budget')
  ax.set_xlabel('cluster (sorted)')
  ax.set_ylabel('share kept')
  ax.set_title(f"{coverage['covered']} of {coverage['clusters']} clusters have a kept sample")
  ax.legend()
  return _save(fig, path)


PLOTS = {'kept_by_noise': kept_by_noise, 'evaluation': evaluation,
         'meta_curves': meta_curves, 'feature_weights': feature_weights,
         'cluster_coverage': cluster_coverage}


def draw_all(report: dict, directory: str) -> dict:
  """{name: path} of every plot the report has numbers for, written under directory."""
  out = {}
  for name, fn in PLOTS.items():
    path = fn(report, os.path.join(directory, f'{name}.png'))
    if path is not None:
      out[name] = path
  return out
