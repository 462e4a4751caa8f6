"""Report: report.json, report.md and report.html in the workdir, from the stages' recorded
summaries, scores.parquet and (for report.html's thumbnails) the pool's shards."""

import collections
import io
import json
import logging
import os
import tarfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from tads_jax import html_report
from tads_jax import pipeline
from tads_jax import plots
from tads_jax import report as report_lib
from tads_jax.data import datacomp
from tads_jax.data import subset as subset_lib
from tads_jax.data import webdataset
from tads_jax.stages import evaluate
from tads_jax.stages import ingest
from tads_jax.stages import select


PLOTS = 'plots'  # directory of PNGs in the workdir
HTML = 'report.html'
THUMB = 128  # thumbnail side in pixels (JPEG, embedded in report.html)


def ground_truth_path(ctx) -> str:
  recorded = ctx.summary('ingest').get('ground_truth', '')
  return ctx.config.pool.ground_truth or (recorded and ingest.local_path(ctx, recorded))


def run(ctx) -> dict:
  stages = {}
  for name in pipeline.stage_names(ctx.config):
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
  with pipeline.atomic_write(ctx.path('report.md')) as tmp, open(tmp, 'w') as f:
    f.write(report_lib.render_markdown(report))
  start = time.time()
  page = html_page(report, ctx.path(select.SCORES), gt_path or None,
                   seed=ctx.config.seed)
  with pipeline.atomic_write(ctx.path(HTML)) as tmp, open(tmp, 'w', encoding='utf-8') as f:
    f.write(page)
  logging.info('report: %s (%.1f MB) in %.1f s', ctx.path(HTML), len(page) / 2**20,
               time.time() - start)
  return {'report': ctx.path('report.md'), 'html': ctx.path(HTML)}


def html_parts(report: dict, scores_path: str, gt_path: str | None = None, seed: int = 0,
               per_group: int = html_report.PER_GROUP) -> tuple:
  """(plan, shown rows, plot PNGs) for html_report.render: whole-pool numeric columns of
  scores.parquet for the statistics, then captions and images for the rows the page shows
  only (a bounded number)."""
  columns, shard_codes, uids = _numeric_columns(scores_path)
  noise, labels = (_noise(gt_path, uids) if gt_path else None) or (None, None)
  weights = None
  learned = (report.get('learn') or {}).get('feature_weights')
  if learned:
    weights = {w['feature']: float(w['learned']) for w in learned}
  the_plan = html_report.plan(columns, noise=noise, noise_labels=labels,
                              shard_codes=shard_codes, weights=weights, per_group=per_group,
                              seed=seed)
  shown = _take_rows(scores_path, the_plan['rows'], ['uid', 'key', 'shard', 'caption'])
  if (report.get('config') or {}).get('pool', {}).get('format') == 'datacomp':
    for info in shown.values():  # a metadata file's images are in the tar beside it
      tar = datacomp.tar_path(info['shard']) if info.get('shard') else None
      if tar and os.path.isfile(tar):
        info['shard'] = tar
  recorded = report.get('stages', {}).get('ingest', {}).get('summary', {}).get('world')
  if recorded:  # a moved or copied workdir: the world beside this scores file
    world = os.path.join(os.path.dirname(os.path.abspath(scores_path)), 'ingest', 'world')
    for info in shown.values():
      if info.get('shard'):
        info['shard'] = ingest.moved(info['shard'], recorded, world)
  thumbnails(shown)
  plots_png = {}
  for name, path in (report.get('plots') or {}).items():
    if os.path.exists(path):
      with open(path, 'rb') as f:
        plots_png[name] = f.read()
  return the_plan, shown, plots_png


def html_page(report: dict, scores_path: str, gt_path: str | None = None, seed: int = 0,
              per_group: int = html_report.PER_GROUP) -> str:
  """report.html's text."""
  return html_report.render(report, *html_parts(report, scores_path, gt_path, seed,
                                                per_group))


def gallery(workdir: str, sections=None, per_group: int = 4) -> str:
  """The kept/dropped gallery of a finished workdir, as an HTML fragment with its style:
  for IPython.display.HTML in a notebook. sections: some of 'noise', 'cluster', 'decile'."""
  with open(os.path.join(workdir, 'report.json')) as f:
    report = json.load(f)
  gt_path = (report.get('ground_truth') or {}).get('path')
  the_plan, shown, _ = html_parts(report, os.path.join(workdir, select.SCORES), gt_path,
                                  seed=report['config'].get('seed', 0), per_group=per_group)
  return html_report.gallery_html(the_plan, shown, sections)


def _numeric_columns(path: str):
  """{name: [N] array} of every numeric or boolean column, the shard column as dictionary
  codes, and the uid column (for the ground-truth join)."""
  schema = pq.read_schema(path)
  names = [f.name for f in schema
           if pa.types.is_integer(f.type) or pa.types.is_floating(f.type)
           or pa.types.is_boolean(f.type)]
  extra = [n for n in ('uid', 'shard') if n in schema.names]
  table = pq.read_table(path, columns=names + extra, read_dictionary=['shard'])
  columns = {}
  for name in names:
    col = table.column(name)
    if col.null_count:  # NaN for a missing value
      col = pc.cast(col, pa.float64())
    columns[name] = col.to_numpy()
  shard_codes = None
  if 'shard' in extra:
    shard = table.column('shard').combine_chunks()
    shard_codes = shard.indices.to_numpy(zero_copy_only=False)
  uids = table.column('uid') if 'uid' in extra else None
  return columns, shard_codes, uids


def _noise(gt_path: str, uids) -> tuple | None:
  """(codes [N], labels): the ground-truth noise type of each scores row, 'unknown' when
  its uid is absent; dictionary codes, so that 10M rows are never sorted as strings."""
  if uids is None:
    return None
  gt = pq.read_table(gt_path, columns=['uid', 'noise'])
  index = pc.index_in(uids, value_set=gt.column('uid').combine_chunks())
  noise = pc.fill_null(pc.take(pc.cast(gt.column('noise'), pa.string()), index), 'unknown')
  encoded = pc.dictionary_encode(noise).combine_chunks()
  return (encoded.indices.to_numpy(zero_copy_only=False),
          encoded.dictionary.to_pylist())


def _take_rows(path: str, rows, columns) -> dict:
  """{row: {column: value}} for the given row numbers of a parquet file, reading only the
  row groups that hold them."""
  pf = pq.ParquetFile(path)
  columns = [c for c in columns if c in pf.schema_arrow.names]
  sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
  starts = np.cumsum([0] + sizes)
  rows = np.asarray(rows, np.int64)
  group = np.searchsorted(starts, rows, side='right') - 1
  out = {}
  for g in np.unique(group):
    mine = rows[group == g]
    part = pf.read_row_group(int(g), columns=columns).take(pa.array(mine - starts[g]))
    values = {c: part.column(c).to_pylist() for c in columns}
    for i, r in enumerate(mine.tolist()):
      out[r] = {c: values[c][i] for c in columns}
  return out


def thumbnails(shown: dict, size: int = THUMB) -> None:
  """Adds 'thumb' (JPEG bytes) to every shown row whose image can be read from its
  webdataset shard, else 'note' saying why not. Each tar is opened once and only the
  wanted members are read (an uncompressed tar is walked by seeking past the others)."""
  by_shard = collections.defaultdict(dict)
  for row, info in shown.items():
    shard, key = info.get('shard'), info.get('key')
    if not shard or key is None:
      info['note'] = 'no image'
    elif not str(shard).endswith(('.tar', '.tar.gz', '.tgz')):
      info['note'] = 'no image in this pool format'
    else:
      by_shard[shard].setdefault(key, []).append(info)
  for shard, wanted in by_shard.items():
    try:
      found = _read_images(shard, set(wanted))
    except (OSError, tarfile.TarError, EOFError) as e:
      logging.warning('report: cannot read thumbnails from %s (%s)', shard, e)
      found = {}
    for key, infos in wanted.items():
      data = found.get(key)
      thumb = _thumbnail(data, size) if data is not None else None
      for info in infos:
        if thumb is None:
          info['note'] = 'unreadable image' if data is not None else 'image not found'
        else:
          info['thumb'] = thumb


def _read_images(path: str, keys: set) -> dict:
  """{key: image bytes} for the wanted keys of one tar, in webdataset's extension order."""
  found = collections.defaultdict(dict)
  with tarfile.open(path, 'r:*') as tar:
    while (member := tar.next()) is not None:
      tar.members = []  # do not keep every header of a big shard
      parts = webdataset.split_name(member.name) if member.isfile() else None
      if parts is None or parts[0] not in keys or parts[1] not in webdataset.IMAGE_EXTS:
        continue
      found[parts[0]][parts[1]] = tar.extractfile(member).read()
  return {key: files[webdataset.pick_image(files)] for key, files in found.items()}


def _thumbnail(data: bytes, size: int) -> bytes | None:
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.draft('RGB', (size, size))  # JPEG: decode at reduced scale
      img = img.convert('RGB')
      img.thumbnail((size, size))
      out = io.BytesIO()
      img.save(out, format='JPEG', quality=80)
      return out.getvalue()
  except (OSError, ValueError, Image.DecompressionBombError):
    return None


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


STAGE = pipeline.Stage(name='report', run=run, inputs=inputs, version=6,
                       config_keys=('stages', 'export', 'pool.ground_truth'))
