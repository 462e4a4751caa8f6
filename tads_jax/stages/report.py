"""Report: report.json and report.md in the workdir, from the stages' recorded summaries."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from tads_jax import pipeline
from tads_jax import plots
from tads_jax import report as report_lib
from tads_jax.data import subset as subset_lib
from tads_jax.stages import evaluate
from tads_jax.stages import select


PLOTS = 'plots'  # directory of PNGs in the workdir


def ground_truth_path(ctx) -> str:
  return ctx.config.pool.ground_truth or ctx.summary('ingest').get('ground_truth', '')


def run(ctx) -> dict:
  stages = {}
  for name in ctx.config.stages:
    if name == 'report':
      continue
    done = pipeline.read_done(ctx.stage_dir(name))
    if done is not None:
      stages[name] = {'status': 'done', 'seconds': done['seconds'],
                      'summary': done['summary']}
  ingest = ctx.summary('ingest')
  report = {
      'workdir': os.path.abspath(ctx.workdir),
      'config': ctx.config.to_dict(),
      'stages': stages,
      'pool': {k: ingest[k] for k in ('format', 'sources', 'samples', 'skips')},
      'selection': ctx.summary('select'),
  }
  gt_path = ground_truth_path(ctx)
  if gt_path:
    scores = pq.read_table(ctx.path(select.SCORES), columns=['uid', 'times_selected'])
    gt = pq.read_table(gt_path)
    for column in ('uid', 'noise', 'on_task'):
      if column not in gt.column_names:
        raise ValueError(f'{gt_path}: ground truth has no {column!r} column')
    report['ground_truth'] = {
        'path': gt_path,
        'by_noise': report_lib.kept_by_group(scores, gt, 'noise'),
        'by_on_task': report_lib.kept_by_group(scores, gt, 'on_task'),
    }
  report['selection_profile'] = report_lib.selection_profile(pq.read_table(
      ctx.path(select.SCORES)))
  learn = _learn(ctx)
  if learn is not None:
    report['learn'] = learn
  evaluation = _evaluation(ctx)
  if evaluation is not None:
    report['evaluation'] = evaluation
    if gt_path and not evaluation.get('stale') and evaluation.get('baselines'):
      report['comparison_kept'] = _baselines_kept(ctx, gt, list(evaluation['baselines']))
  report['plots'] = plots.draw_all(report, ctx.path(PLOTS))
  pipeline.write_json_atomic(ctx.path('report.json'), report)
  tmp = ctx.path(f'report.md.tmp-{os.getpid()}')
  with open(tmp, 'w') as f:
    f.write(report_lib.render_markdown(report))
  os.replace(tmp, ctx.path('report.md'))
  return {'report': ctx.path('report.md')}


def _evaluation(ctx):
  """eval.json when it scores the current subset.npy (select may have rerun since)."""
  path = ctx.path(evaluate.EVAL)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    result = json.load(f)
  subset_path = ctx.path(select.SUBSET)
  sha = result.get('subset', {}).get('sha256')
  if not os.path.exists(subset_path) or sha != evaluate.file_sha256(subset_path):
    return {'path': path, 'stale': True}
  return {'path': path, 'stale': False, **result}


def _baselines_kept(ctx, gt, names) -> dict:
  """{baseline: {'by_noise': rows, 'by_on_task': rows}}: what each baseline's subset kept of
  every ground-truth group, as the selected subset's rows are computed."""
  uids = select.read_scores(ctx, columns=['uid']).column('uid').to_pylist()
  out = {}
  for name in names:
    path = evaluate.baseline_subset_path(ctx, name)
    if not os.path.exists(path):
      continue
    counts = subset_lib.times_selected(subset_lib.read_subset(path), uids)
    table = pa.table({'uid': uids, 'times_selected': counts})
    out[name] = {'by_noise': report_lib.kept_by_group(table, gt, 'noise'),
                 'by_on_task': report_lib.kept_by_group(table, gt, 'on_task')}
  return out


def _learn(ctx):
  """The learn stage's summary and meta-learning history, when it is configured."""
  if 'learn' not in pipeline.stage_names(ctx.config):
    return None
  return dict(ctx.summary('learn'))


def inputs(config) -> tuple:
  """The report reruns after the learn and evaluate stages when they are configured."""
  names = pipeline.stage_names(config)
  return ('ingest',) + tuple(s for s in ('learn', 'select', 'evaluate') if s in names
                             or s == 'select')


STAGE = pipeline.Stage(name='report', run=run, inputs=inputs, version=5,
                       config_keys=('stages', 'export', 'pool.ground_truth'))
