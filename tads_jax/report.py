"""What the selection kept, in numbers (report.json) and in words (report.md)."""

import os

import numpy as np
import pyarrow as pa


def kept_by_group(scores: pa.Table, ground_truth: pa.Table, column: str) -> list[dict]:
  """Per value of ground_truth[column]: pool size, samples kept, their share, subset entries.

  Samples the ingest stage skipped are absent from `scores`; they count in `pool` (they
  are part of the world) but never as kept, so they show up as removed.
  """
  selected = dict(zip(scores.column('uid').to_pylist(),
                      scores.column('times_selected').to_pylist()))
  groups = {}
  for uid, value in zip(ground_truth.column('uid').to_pylist(),
                        ground_truth.column(column).to_pylist()):
    g = groups.setdefault(value, {'pool': 0, 'ingested': 0, 'kept': 0, 'entries': 0})
    g['pool'] += 1
    if uid in selected:
      g['ingested'] += 1
      g['kept'] += int(selected[uid] > 0)
      g['entries'] += int(selected[uid])
  rows = []
  for value in sorted(groups, key=str):
    g = groups[value]
    rows.append({column: value, **g,
                 'kept_fraction': g['kept'] / g['pool'] if g['pool'] else float('nan')})
  return rows


def _counts(summary: dict) -> str:
  """The integer fields of a stage summary, e.g. 'samples=9980, sources=10'."""
  return ', '.join(f'{k}={v}' for k, v in summary.items()
                   if isinstance(v, int) and not isinstance(v, bool))


def _table(rows: list[dict], columns: list[str]) -> list[str]:
  def fmt(v):
    if isinstance(v, float):
      return 'nan' if np.isnan(v) else f'{v:.3f}'
    return str(v)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(fmt(r[c]) for c in columns) + ' |' for r in rows]
  return lines


PROXY_LABELS = {'embedding': 'embedding proxy', 'pixels': 'pixel proxy'}


def proxy_label(evaluation: dict) -> str:
  """'embedding proxy' | 'pixel proxy': which proxy produced an eval.json's figures (an
  eval.json written before the field existed came from the embedding proxy)."""
  kind = evaluation.get('proxy', 'embedding')
  return PROXY_LABELS.get(kind, f'{kind} proxy')


def split_note(evaluation: dict) -> str:
  """'' when an eval.json scored the tasks' eval splits (or predates the field), else the
  words that say its figures are on the validation split, to stand beside them."""
  if evaluation.get('split', 'eval') == 'eval':
    return ''
  return ("; scored on the validation split (held out of the tasks' train data by "
          'tads.validation_fraction), not the eval split')


def proxy_description(evaluation: dict) -> str:
  """What the proxy was, in a few words."""
  train = evaluation['train']
  if evaluation.get('proxy', 'embedding') == 'pixels':
    overrides = dict(train.get('model_overrides') or [])
    tower = ('CNN image tower' if overrides.get('vision_tower') == 'cnn'
             else f"{overrides.get('vision_stem', 'patch')} stem")
    return (f"a {train.get('model', '')} CLIP ({tower}, "
            f"{overrides.get('image_size', '?')} px) trained from scratch on the "
            'images and captions')
  return f"{train.get('head', '')} heads on the reference embeddings".lstrip()


def _evaluation_lines(evaluation: dict) -> list[str]:
  """Per task and averaged: main metric mean and std over the proxy seeds, each row naming
  the proxy that produced it."""
  if evaluation.get('stale'):
    return [f"{evaluation['path']} scores another subset.npy than the current one; rerun "
            'the evaluate stage.']
  proxy = proxy_label(evaluation)
  rows = [{'task': name, 'kind': t['kind'], 'metric': evaluation['main_metric'][t['kind']],
           'mean': t['mean']['main'], 'std': t['std']['main'], 'proxy': proxy}
          for name, t in evaluation['tasks'].items()]
  for key in ('classification_average', 'retrieval_average', 'average'):
    if key in evaluation:
      rows.append({'task': key, 'kind': '', 'metric': 'mean of main metrics',
                   'mean': evaluation[key]['mean'], 'std': evaluation[key]['std'],
                   'proxy': proxy})
  train = evaluation['train']
  lines = ([f"{proxy}: {len(evaluation['seeds'])} seeds; {train['samples_seen']} samples "
            f"seen; {evaluation['subset']['entries']} subset entries "
            f"({evaluation['subset']['unique']} unique samples); "
            f"{proxy_description(evaluation)}{split_note(evaluation)}", '']
           + _table(rows, ['task', 'kind', 'metric', 'mean', 'std', 'proxy']))
  if evaluation.get('baselines'):
    lines += ['', '### Comparison at the same samples-seen budget', '',
              f"Proxy: {evaluation.get('proxy', 'embedding')}; mean +- std over "
              f"{len(evaluation['seeds'])} seeds of the mean main metric over tasks, then "
              'each task\'s mean. Every subset follows the same selection rules (fraction, '
              'method, dedup); filters keep what they keep.', '']
    lines += _comparison_table(evaluation)
  if evaluation.get('pixel_check'):
    lines += ['', '### Pixel check: the pixel proxy on a few of these subsets', '']
    lines += _pixel_check_lines(evaluation)
  return lines


def seeds_phrase(seeds: int) -> str:
  """'1 seed' or 'N seeds'."""
  return f"{seeds} seed{'s' if seeds != 1 else ''}"


def _pixel_check_lines(evaluation: dict) -> list[str]:
  """The pixel check's comparison table, and whether it orders the subsets as the main
  proxy does."""
  check = pixel_check_evaluation(evaluation)
  seeds = evaluation['pixel_check']['seeds']
  spread = (f'Mean +- std over {seeds} seeds' if seeds > 1 else
            'One seed (a single run each, so no spread)')
  lines = [f"{proxy_label(check)}: {seeds_phrase(seeds)}; "
           f"{check['train']['samples_seen']} samples seen; {proxy_description(check)}. "
           f"{spread} of the mean main metric over tasks, then each task's mean; each "
           'subset is the one of the table above.', '']
  lines += _comparison_table(check)
  sentence = order_sentence(evaluation)
  return lines + (['', sentence] if sentence else [])


def _comparison_table(evaluation: dict) -> list[str]:
  """comparison_rows as a table: average +- std over seeds, each task's mean, the proxy."""
  rows = comparison_rows(evaluation)
  for row in rows:
    row['average +- std'] = f"{row['average']:.4f} +- {row['std']:.4f}"
  return _table(rows, ['subset', 'entries', 'unique', 'average +- std']
                + list(evaluation['tasks']) + ['proxy'])


def comparison_kept_rows(report: dict) -> list[dict]:
  """Per evaluated subset, the share of each ground-truth noise type it kept."""
  gt, kept = report.get('ground_truth'), report.get('comparison_kept')
  if not gt or not kept:
    return []
  selector = report['selection']['selector']
  runs = [(f'{selector} (selected)', gt)] + list(kept.items())
  rows = []
  for name, groups in runs:
    row = {'subset': name}
    row.update({str(r['noise']): r['kept_fraction'] for r in groups['by_noise']})
    on = {r['on_task']: r['kept_fraction'] for r in groups['by_on_task']}
    if True in on and False in on:
      row['on-task'], row['off-task'] = on[True], on[False]
    rows.append(row)
  return rows


def comparison_rows(evaluation: dict) -> list[dict]:
  """One row per evaluated subset (the selected one first, then the baselines): the mean
  and std over seeds of the average main metric, and each task's mean main metric."""
  runs = [(f"{evaluation.get('selector', 'selected')} (selected)", evaluation)]
  runs += list(evaluation.get('baselines', {}).items())
  rows = []
  for name, r in runs:
    row = {'subset': name, 'entries': r['subset']['entries'],
           'unique': r['subset']['unique'], 'average': r['average']['mean'],
           'std': r['average']['std'], 'proxy': proxy_label(r)}
    row.update({task: t['mean']['main'] for task, t in r['tasks'].items()})
    rows.append(row)
  return rows


def pixel_check_evaluation(evaluation: dict) -> dict | None:
  """eval.json's pixel check as an evaluation of its own (its selected subset's eval dict
  with its baselines), so that comparison_rows builds its rows as for the main proxy; None
  when the run had no pixel check."""
  check = evaluation.get('pixel_check')
  if not check:
    return None
  return dict(check['selected'], selector=evaluation.get('selector', 'selected'),
              baselines=check['baselines'])


def proxy_disagreements(evaluation: dict) -> list[dict]:
  """Pairs of subsets that the main proxy and the pixel check order differently by their
  average main metric (mean over seeds): [{'above', 'below': subset names as
  comparison_rows gives them, above under the main proxy; 'main', 'check': (above's,
  below's) averages under each}]. A tie under either proxy orders nothing."""
  check = pixel_check_evaluation(evaluation)
  if check is None:
    return []
  main = {r['subset']: r['average'] for r in comparison_rows(evaluation)}
  pixel = {r['subset']: r['average'] for r in comparison_rows(check)}
  names = [name for name in pixel if name in main]
  out = []
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      if (main[a] - main[b]) * (pixel[a] - pixel[b]) < 0:
        above, below = (a, b) if main[a] > main[b] else (b, a)
        out.append({'above': above, 'below': below, 'main': (main[above], main[below]),
                    'check': (pixel[above], pixel[below])})
  return out


def order_sentence(evaluation: dict) -> str | None:
  """One sentence on whether the pixel check orders its subsets as the main proxy does
  (each pair the two order differently, with the numbers); None with fewer than two
  subsets to order."""
  check = pixel_check_evaluation(evaluation)
  if check is None or not check['baselines']:
    return None
  pairs = proxy_disagreements(evaluation)
  main, pixel = proxy_label(evaluation), proxy_label(check)
  # One seed of the pixel proxy has no spread to tell its order from the seed's noise.
  caveat = ('' if evaluation['pixel_check']['seeds'] > 1 else
            f' The {pixel} ran one seed per subset, so its order may be that seed\'s.')
  if not pairs:
    return (f'The {main} and the {pixel} order these subsets the same way (average main '
            'metric, mean over seeds).' + caveat)
  return (f'The {main} and the {pixel} order these subsets differently (average main '
          'metric, mean over seeds): ' + '; '.join(
              f"{p['above']} is above {p['below']} under the {main} ({p['main'][0]:.4f} vs "
              f"{p['main'][1]:.4f}) but below it under the {pixel} ({p['check'][0]:.4f} vs "
              f"{p['check'][1]:.4f})" for p in pairs) + '.' + caveat)


def _learn_lines(learn: dict) -> list[str]:
  """Meta-learning in brief, and the value function's weight per named feature."""
  lines = []
  history = learn.get('history') or {}
  if history.get('outer_loss'):
    first, last = history['outer_loss'][0], history['outer_loss'][-1]
    lines += [f"{len(history['outer_loss'])} meta steps; outer loss {first:.4f} -> "
              f"{last:.4f}; groups: {', '.join(learn.get('groups', []))}", '']
    if learn.get('ensemble', 1) > 1:
      lines += [f"An ensemble of {learn['ensemble']} value functions meta-learned from "
                'as many seeds (the history above is the first\'s; a score is the mean of '
                'their standardized values).', '']
    weights = history.get('task_weights') or {}
    if weights:
      lines += ['Task weights at the end: ' + ', '.join(
          f'{name} {values[-1]:.3f}' for name, values in weights.items()), '']
  else:
    lines += ['No meta-learning (the prior alone scores the pool).', '']
  gate = learn.get('gate')
  if gate:
    passes = [gate] + ([gate['then']] if gate.get('then') else [])
    said = []
    for g in passes:
      columns = list(g['columns'])
      what = columns[0] if len(columns) == 1 else f"the largest of {', '.join(columns)}"
      said.append(f"{what} >= {g['cut']:.4f} (the top {g['fraction']:.0%} of the pool, "
                  f"{g['passed']} samples)")
    lines += [f"Gate: only samples with {', then '.join(said)} were ranked and "
              'meta-learned on.', '']
  if learn.get('dedup', 'none') != 'none':
    lines += [f"Duplicates kept out of the subset (tads.dedup={learn['dedup']!r}): every "
              'copy the features stage flags, one of each group left.', '']
  if learn.get('feature_weights'):
    lines += ['Weight per standardized feature (prior; learned = mean dV/dz over the pool):',
              '']
    lines += _table(learn['feature_weights'], ['feature', 'group', 'prior', 'learned'])
  return lines


def render_markdown(report: dict) -> str:
  """report.json as a page a person reads."""
  out = ['# tads-jax report', '', f"workdir: `{report['workdir']}`", '']
  out += ['## Stages', '']
  out += _table([{'stage': name, 'status': s.get('status', ''), 'seconds': s.get('seconds', ''),
                  'counts': _counts(s.get('summary', {}))}
                 for name, s in report['stages'].items()],
                ['stage', 'status', 'seconds', 'counts'])
  pool = report['pool']
  out += ['', '## Pool', '', f"format: {pool['format']}; sources: {pool['sources']}; "
          f"samples ingested: {pool['samples']}", '']
  if pool['skips']:
    out += ['Skipped samples by reason:', '']
    out += _table([{'reason': k, 'count': v} for k, v in pool['skips'].items()],
                  ['reason', 'count'])
  else:
    out += ['No sample was skipped.']
  features = report['stages'].get('features', {}).get('summary', {})
  if features.get('operators_left_out'):
    reason = features.get('operators_left_out_reason', '')
    out += ['', f"Quality operators left out: {', '.join(features['operators_left_out'])}"
            + (f' ({reason})' if reason else '') + '.']
  sel = report['selection']
  out += ['', '## Selection', '',
          f"selector: {sel['selector']}; method: {sel['method']}; fraction: "
          f"{sel['fraction']}; kept {sel['selected_unique']} of {sel['pool']} samples "
          f"({sel['subset_entries']} entries in subset.npy)", '']
  gt = report.get('ground_truth')
  if gt:
    out += ['### Kept share by noise type (ground truth)', '']
    out += _table(gt['by_noise'], ['noise', 'pool', 'ingested', 'kept', 'kept_fraction'])
    out += ['', '### Kept share on-task vs off-task (ground truth)', '']
    out += _table(gt['by_on_task'], ['on_task', 'pool', 'ingested', 'kept',
                                     'kept_fraction'])
  else:
    out += ['No ground truth for this pool (set pool.ground_truth to a parquet with uid, '
            'noise and on_task columns).']
  profile = report.get('selection_profile') or {}
  if profile.get('relevance'):
    out += ['', '### Task relevance of the kept samples vs the pool', '']
    out += _table(profile['relevance'], ['feature', 'pool_mean', 'kept_mean'])
  if profile.get('clusters'):
    c = profile['clusters']
    shares = np.asarray(c['kept_fraction_per_cluster'])
    out += ['', f"Cluster coverage: {c['covered']} of {c['clusters']} diversity clusters "
            f"keep at least one sample; share kept per cluster: median "
            f"{np.median(shares):.3f}, min {shares.min():.3f}, max {shares.max():.3f}."]
  learn = report.get('learn')
  if learn:
    out += ['', '## Learned value function', '']
    out += _learn_lines(learn)
  evaluation = report.get('evaluation')
  if evaluation:
    label = '' if evaluation.get('stale') else f'{proxy_label(evaluation)} '
    out += ['', f'## Evaluation (zero-shot, {label}trained on the subset'
            f'{split_note(evaluation)})', '']
    out += _evaluation_lines(evaluation)
  kept_rows = comparison_kept_rows(report)
  if kept_rows:
    columns = list(dict.fromkeys(c for r in kept_rows for c in r))
    for r in kept_rows:
      for c in columns:
        r.setdefault(c, float('nan'))
    out += ['', '### Kept share of each noise type, per evaluated subset (ground truth)', '']
    out += _table(kept_rows, columns)
  if report.get('plots'):
    out += ['', '## Plots', '']
    out += [f'![{name}]({os.path.relpath(path, report["workdir"])})'
            for name, path in report['plots'].items()]
  export = report['stages'].get('export', {}).get('summary', {})
  if export.get('enabled'):
    out += ['', '## Export', '', f"{export['samples']} samples in {export['shards']} "
            'webdataset shards under export/']
  return '\n'.join(out) + '\n'


def selection_profile(scores: pa.Table) -> dict:
  """What the selection looks like through the features: per task, the mean relevance of
  the kept samples against the pool's; per diversity cluster, the share kept."""
  kept = scores.column('times_selected').to_numpy() > 0  # [N]
  out = {}
  relevance = [c for c in scores.column_names if c.startswith('relevance_')]
  if relevance:
    out['relevance'] = []
    for column in relevance:
      values = scores.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
      out['relevance'].append({
          'feature': column, 'pool_mean': float(np.nanmean(values)),
          'kept_mean': float(np.nanmean(values[kept])) if kept.any() else float('nan')})
  if 'cluster' in scores.column_names:
    cluster = scores.column('cluster').to_numpy()
    k = int(cluster.max()) + 1 if len(cluster) else 0
    size = np.bincount(cluster, minlength=k)
    kept_per = np.bincount(cluster[kept], minlength=k)
    present = size > 0
    out['clusters'] = {
        'clusters': int(present.sum()), 'covered': int((kept_per[present] > 0).sum()),
        'kept_fraction_per_cluster': (kept_per[present] / size[present]).tolist()}
  return out
