"""report.html: what a selection kept and dropped, and why, as one self-contained page.

Pure: `plan` picks which pool rows to show and computes the pool-wide numbers (feature
histograms, standardization) from arrays; `render` turns the report dict, that plan, the
picked rows' captions and thumbnails and the report's PNG plots into an HTML string. The
report stage (stages/report.py) does the reading: whole-pool numeric columns, then captions
and images for the picked rows only.

Sizes are bounded by construction, not by the pool: at most PER_GROUP kept and PER_GROUP
dropped samples per group, at most MAX_NOISE noise types, MAX_CLUSTERS clusters and 10 score
deciles, BINS bins per histogram. A 10M-sample pool gives a page of the same size as a
1,000-sample one. Thumbnails, plots and charts are inline (data URIs and SVG): the page
needs no network and no file beside it.
"""

import base64
import html
import math
from typing import Mapping, Sequence

import numpy as np

from tads_jax import report as report_lib

PER_GROUP = 8        # kept samples shown per group, and as many dropped ones
MAX_CLUSTERS = 12    # diversity clusters shown, spread over the range of kept share
MAX_NOISE = 20       # ground-truth noise types shown (largest first)
BINS = 30            # per feature histogram
RANGE_SAMPLE = 1_000_000  # values a histogram's range is estimated from
TOP_DRIVERS = 3      # features listed under each thumbnail
Z_CLIP = 5.0         # as value.Standardizer: one wild value does not dominate
CAPTION_CHARS = 160
# Columns of scores.parquet that are not per-sample signals.
NOT_FEATURES = frozenset({'uid', 'key', 'shard', 'caption', 'sha256', 'url', 'score',
                          'times_selected', 'cluster'})


# ---------------------------------------------------------------------------------------
# Numbers: which rows to show, and pool-wide statistics.


def feature_names(columns: Mapping[str, np.ndarray]) -> list[str]:
  """The per-sample signals among `columns`: numeric or boolean, not an id."""
  out = []
  for name, values in columns.items():
    kind = np.asarray(values).dtype.kind
    if name not in NOT_FEATURES and kind in 'biuf':
      out.append(name)
  return out


def standardization(values: np.ndarray) -> tuple[float, float]:
  """(mean, std) over the finite values; std 1 for a constant or empty column."""
  x = np.asarray(values, np.float64)
  finite = x[np.isfinite(x)]
  if not finite.size:
    return 0.0, 1.0
  mean, std = float(finite.mean()), float(finite.std())
  if std <= 1e-7 * max(abs(mean), 1.0):
    std = 1.0
  return mean, std


def histogram(values: np.ndarray, kept: np.ndarray, bins: int = BINS) -> dict | None:
  """Kept and dropped counts per bin over the finite values' 0.5-99.5 percentile range
  (values outside go to the edge bins; the percentiles from at most RANGE_SAMPLE evenly
  strided values). None when no value is finite."""
  x = np.asarray(values)
  if x.dtype.kind == 'b':
    x = x.astype(np.float32)
  finite = np.isfinite(x)
  if not finite.any():
    return None
  xf = x[finite]
  probe = xf[::len(xf) // RANGE_SAMPLE + 1].astype(np.float64)
  lo, hi = np.percentile(probe, [0.5, 99.5])
  if hi <= lo:
    lo, hi = float(xf.min()), float(xf.max())
  if hi <= lo:
    lo, hi = lo - 0.5, hi + 0.5
  index = ((xf - lo) * (bins / (hi - lo))).astype(np.int64)  # [M]: one pass, no search
  np.clip(index, 0, bins - 1, out=index)
  counts = np.bincount(index + bins * kept[finite], minlength=2 * bins)
  return {'edges': np.linspace(lo, hi, bins + 1).tolist(),
          'kept': counts[bins:].tolist(), 'dropped': counts[:bins].tolist(),
          'missing': int(len(x) - len(xf))}


def sample_order_key(shard_codes: np.ndarray | None, n: int, seed: int) -> np.ndarray:
  """A per-row random key; rows of a few randomly ranked shards come first, so that the
  rows picked for every group sit in as few shards as possible (few tars to open)."""
  rng = np.random.default_rng(seed)
  noise = rng.random(n)
  if shard_codes is None:
    return noise
  codes = np.asarray(shard_codes, np.int64)
  rank = rng.permutation(int(codes.max()) + 1 if codes.size else 0)
  return rank[codes] + noise


def pick(rows: np.ndarray, kept: np.ndarray, key: np.ndarray,
         k: int) -> tuple[list[int], list[int]]:
  """Up to k kept and k dropped rows of `rows`, those with the smallest key, in key order."""
  out = []
  for side in (kept[rows], ~kept[rows]):
    chosen = rows[side]
    if len(chosen) > k:
      chosen = chosen[np.argpartition(key[chosen], k)[:k]]
    out.append(chosen[np.argsort(key[chosen], kind='stable')].tolist())
  return out[0], out[1]


def noise_codes(noise: np.ndarray, labels: Sequence[str] | None = None) -> tuple:
  """(labels, [N] int codes) of a ground-truth column given as labels, or as codes into
  `labels` (what a dictionary-encoded parquet column gives: no 10M-string sort)."""
  if labels is not None:
    return np.asarray([str(v) for v in labels]), np.asarray(noise, np.int64)
  values, codes = np.unique(np.asarray(noise).astype(str), return_inverse=True)
  return values, codes.reshape(-1)


def groups(score: np.ndarray, kept: np.ndarray, cluster: np.ndarray | None = None,
           noise: np.ndarray | None = None, max_clusters: int = MAX_CLUSTERS,
           max_noise: int = MAX_NOISE, noise_labels: Sequence[str] | None = None) -> list[dict]:
  """The groups the gallery shows: per noise type (when known), per cluster (a spread of
  kept shares), per score decile (top first). Each: section, label, size, kept, rows."""
  out = []
  n = len(score)
  if noise is not None:
    values, codes = noise_codes(noise, noise_labels)
    sizes = np.bincount(codes, minlength=len(values))
    order = np.argsort(-sizes, kind='stable')[:max_noise]
    for v in sorted(order, key=lambda i: (values[i] != 'clean', str(values[i]))):
      rows = np.flatnonzero(codes == v)
      out.append(_group('noise', str(values[v]), rows, kept))
  if cluster is not None and n:
    cluster = np.asarray(cluster, np.int64)
    sizes = np.bincount(cluster)
    kept_per = np.bincount(cluster[kept], minlength=len(sizes))
    present = np.flatnonzero(sizes)
    share = kept_per[present] / sizes[present]
    by_share = present[np.argsort(-share, kind='stable')]
    if len(by_share) > max_clusters:
      by_share = by_share[np.unique(np.linspace(0, len(by_share) - 1, max_clusters)
                                    .round().astype(int))]
    for c in by_share:
      out.append(_group('cluster', f'cluster {c}', np.flatnonzero(cluster == c), kept))
  if n:
    rank = np.empty(n, np.int64)
    rank[np.argsort(-np.asarray(score, np.float64), kind='stable')] = np.arange(n)
    decile = rank * 10 // n  # 0 = the top 10% of scores
    for d in range(10):
      rows = np.flatnonzero(decile == d)
      if len(rows):
        label = f'{10 * d}-{10 * d + 10}% by score' + (' (top)' if d == 0 else '')
        out.append(_group('decile', label, rows, kept))
  return out


def _group(section, label, rows, kept) -> dict:
  k = int(kept[rows].sum())
  return {'section': section, 'label': label, 'rows': rows, 'size': int(len(rows)),
          'kept': k, 'kept_fraction': k / len(rows) if len(rows) else float('nan')}


def drivers(z: Mapping[str, float], values: Mapping[str, float],
            weights: Mapping[str, float] | None = None, top: int = TOP_DRIVERS) -> list[dict]:
  """The features that drove one sample's score: with the value function's per-feature
  weights (TADS), the largest |weight * z| contributions; otherwise the largest |z|."""
  rows = []
  for name, zi in z.items():
    if weights is not None:
      if name not in weights:
        continue
      strength = weights[name] * zi
    else:
      strength = zi
    rows.append({'feature': name, 'value': values[name], 'z': zi,
                 'contribution': strength if weights is not None else None,
                 '_key': abs(strength)})
  rows.sort(key=lambda r: -r['_key'])
  for r in rows:
    del r['_key']
  return rows[:top]


def plan(columns: Mapping[str, np.ndarray], noise: np.ndarray | None = None,
         shard_codes: np.ndarray | None = None, weights: Mapping[str, float] | None = None,
         per_group: int = PER_GROUP, max_clusters: int = MAX_CLUSTERS, seed: int = 0,
         noise_labels: Sequence[str] | None = None) -> dict:
  """What report.html shows, from whole-pool arrays: columns has 'score', 'times_selected',
  optionally 'cluster', and the feature columns; noise the ground truth per row (labels, or
  codes into noise_labels), or None.

  Returns {'groups': [... with 'show_kept', 'show_dropped' row lists], 'rows': every row
  shown, 'samples': {row: numbers shown under its thumbnail}, 'histograms': [...]}.
  """
  score = np.asarray(columns['score'], np.float64)  # [N]
  times = np.asarray(columns['times_selected'], np.int64)  # [N]
  kept = times > 0
  cluster = columns.get('cluster')
  names = feature_names(columns)
  key = sample_order_key(shard_codes, len(score), seed)
  labels = None
  if noise is not None:
    labels, noise = noise_codes(noise, noise_labels)
  picked = groups(score, kept, cluster, noise, max_clusters, noise_labels=labels)
  shown = set()
  for g in picked:
    g['show_kept'], g['show_dropped'] = pick(g.pop('rows'), kept, key, per_group)
    shown.update(g['show_kept'] + g['show_dropped'])
  rows = sorted(shown)
  stats = {name: standardization(columns[name]) for name in names}
  samples = {}
  for r in rows:
    values = {name: float(columns[name][r]) for name in names}
    z = {}
    for name in names:
      mean, std = stats[name]
      zi = (values[name] - mean) / std
      z[name] = 0.0 if math.isnan(zi) else float(np.clip(zi, -Z_CLIP, Z_CLIP))
    samples[r] = {
        'score': float(score[r]), 'times_selected': int(times[r]),
        'cluster': int(cluster[r]) if cluster is not None else None,
        'noise': str(labels[noise[r]]) if noise is not None else None,
        'drivers': drivers(z, values, weights)}
  hist = []
  for name in ['score'] + names:
    h = histogram(columns[name], kept)
    if h is not None:
      hist.append({'feature': name, **h})
  return {'groups': picked, 'rows': rows, 'samples': samples, 'histograms': hist,
          'pool': int(len(score)), 'kept': int(kept.sum()), 'per_group': per_group,
          'weighted': weights is not None}


# ---------------------------------------------------------------------------------------
# Charts (inline SVG).


def smooth(values: Sequence[float], weight: float | None = None) -> list[float]:
  """TensorBoard's debiased exponential moving average; weight grows with the length."""
  x = np.asarray(values, np.float64)
  if weight is None:
    weight = min(0.95, max(0.0, 1 - 5 / max(len(x), 1)))
  out, last, norm = [], 0.0, 0.0
  for v in x:
    last = weight * last + (1 - weight) * v
    norm = weight * norm + (1 - weight)
    out.append(last / norm if norm else float(v))
  return out


_COLOURS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
            '#7f7f7f', '#bcbd22', '#17becf')


def _fmt(v) -> str:
  if v is None:
    return ''
  if isinstance(v, bool):
    return str(v)
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  if isinstance(v, (float, np.floating)):
    if math.isnan(v):
      return 'nan'
    if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
      return f'{v:.3g}'
    return f'{v:.3f}'
  return str(v)


def svg_histogram(h: dict, width: int = 280, height: int = 120) -> str:
  """Kept (blue) and dropped (grey) as shares of their own group per bin, overlaid."""
  kept, dropped = np.asarray(h['kept'], float), np.asarray(h['dropped'], float)
  kept_share = kept / max(kept.sum(), 1)
  dropped_share = dropped / max(dropped.sum(), 1)
  top = max(kept_share.max(initial=0), dropped_share.max(initial=0), 1e-9)
  pad, bins = 16, len(kept)
  w = (width - 2) / bins
  bars = []
  for shares, colour in ((dropped_share, '#999'), (kept_share, '#1f77b4')):
    for i, s in enumerate(shares):
      if s > 0:
        bh = s / top * (height - pad - 2)
        bars.append(f'<rect x="{1 + i * w:.1f}" y="{height - pad - bh:.1f}" '
                    f'width="{max(w - 0.5, 0.5):.1f}" height="{bh:.1f}" fill="{colour}" '
                    'fill-opacity="0.55"/>')
  lo, hi = h['edges'][0], h['edges'][-1]
  return (f'<svg class="chart" width="{width}" height="{height}" '
          f'viewBox="0 0 {width} {height}" role="img">'
          f'<title>{html.escape(h["feature"])}: kept vs dropped</title>'
          + ''.join(bars)
          + f'<line x1="0" y1="{height - pad}" x2="{width}" y2="{height - pad}" '
          'stroke="#333" stroke-width="0.6"/>'
          f'<text x="1" y="{height - 3}" font-size="10">{_fmt(lo)}</text>'
          f'<text x="{width - 1}" y="{height - 3}" font-size="10" text-anchor="end">'
          f'{_fmt(hi)}</text></svg>')


def svg_lines(series: Mapping[str, Sequence[float]], title: str, raw: bool = True,
              width: int = 360, height: int = 200) -> str:
  """One line per series, smoothed; the raw values faint behind when `raw`."""
  all_values = [v for s in series.values() for v in s if np.isfinite(v)]
  if not all_values:
    return ''
  lo, hi = min(all_values), max(all_values)
  if hi <= lo:
    lo, hi = lo - 0.5, hi + 0.5
  n = max(len(s) for s in series.values())
  left, right, top, bottom = 44, 8, 20, 22
  pw, ph = width - left - right, height - top - bottom

  def points(values):
    xs = [left + (pw * i / max(n - 1, 1)) for i in range(len(values))]
    ys = [top + ph * (1 - (v - lo) / (hi - lo)) for v in values]
    return ' '.join(f'{x:.1f},{y:.1f}' for x, y, v in zip(xs, ys, values) if np.isfinite(v))

  parts = [f'<svg class="chart" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img">',
           f'<title>{html.escape(title)}</title>',
           f'<text x="{left}" y="13" font-size="12">{html.escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" '
           'stroke="#ccc"/>',
           f'<text x="{left - 3}" y="{top + 9}" font-size="10" text-anchor="end">'
           f'{_fmt(hi)}</text>',
           f'<text x="{left - 3}" y="{top + ph}" font-size="10" text-anchor="end">'
           f'{_fmt(lo)}</text>',
           f'<text x="{left + pw}" y="{height - 6}" font-size="10" text-anchor="end">'
           f'step {n}</text>']
  for i, (name, values) in enumerate(series.items()):
    colour = _COLOURS[i % len(_COLOURS)]
    if raw and len(values) > 1:
      parts.append(f'<polyline fill="none" stroke="{colour}" stroke-opacity="0.25" '
                   f'stroke-width="1" points="{points(values)}"/>')
    parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                 f'points="{points(smooth(values))}"><title>{html.escape(name)}</title>'
                 '</polyline>')
    if len(series) > 1:
      parts.append(f'<text x="{left + 4}" y="{top + 12 + 11 * i}" font-size="10" '
                   f'fill="{colour}">{html.escape(name)}</text>')
  parts.append('</svg>')
  return ''.join(parts)


# ---------------------------------------------------------------------------------------
# The page.


_PAGE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;
  max-width:1400px;padding:0 16px 40px;color:#222}
h1{margin:16px 0 4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{margin:20px 0 6px} nav a{margin-right:14px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f4f4f4}
.note{color:#666;font-size:13px}
.charts{display:flex;gap:12px;flex-wrap:wrap}
.hists{display:grid;grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:10px}
.hists figure{margin:0} figcaption{font-size:12px}
img.plot{max-width:min(100%,640px);border:1px solid #eee}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
"""
# The gallery's rules, prefixed so that they can sit inside a notebook's page.
_GALLERY_CSS = """
.tg-row{display:flex;gap:12px;align-items:flex-start;flex-wrap:wrap}
.tg-side{flex:1 1 560px;min-width:300px}
.tg-side h4,.tg-group{margin:4px 0;font-size:13px}
.tg-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(118px,1fr));gap:8px}
.tg-card{border:1px solid #ddd;border-radius:4px;padding:4px;font-size:11px;
  background:#fafafa;overflow:hidden;font-family:system-ui,sans-serif;color:#222}
.tg-card.tg-kept{border-color:#1f77b4;background:#f1f7fc}
.tg-card img,.tg-noimg{width:100%;height:96px;object-fit:contain;background:#eee;
  display:block;margin:0}
.tg-noimg{display:flex;align-items:center;justify-content:center;color:#888}
.tg-cap{margin:3px 0;line-height:1.25;max-height:3.8em;overflow:hidden}
.tg-meta{color:#555} .tg-drv{color:#333;font-family:ui-monospace,monospace;font-size:10px}
.tg-badge{display:inline-block;border-radius:3px;padding:0 4px;color:#fff;background:#999}
.tg-badge.tg-kept{background:#1f77b4}
"""


def _png(data: bytes) -> str:
  return 'data:image/png;base64,' + base64.b64encode(data).decode('ascii')


def _jpeg(data: bytes) -> str:
  return 'data:image/jpeg;base64,' + base64.b64encode(data).decode('ascii')


def table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
  if not rows:
    return '<p class="note">(no rows)</p>'
  if columns is None:
    columns = list(dict.fromkeys(c for r in rows for c in r))
  head = ''.join(f'<th>{html.escape(str(c))}</th>' for c in columns)
  body = ''.join('<tr>' + ''.join(f'<td>{html.escape(_fmt(r.get(c)))}</td>' for c in columns)
                 + '</tr>' for r in rows)
  return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _card(row: int, sample: dict, shown: Mapping, weighted: bool) -> str:
  info = shown.get(row, {})
  kept = sample['times_selected'] > 0
  thumb = info.get('thumb')
  if thumb:
    image = f'<img src="{_jpeg(thumb)}" alt="{html.escape(info.get("uid", ""))}">'
  else:
    image = f'<div class="tg-noimg">{html.escape(info.get("note") or "no image")}</div>'
  caption = info.get('caption', '')
  short = caption if len(caption) <= CAPTION_CHARS else caption[:CAPTION_CHARS] + '…'
  badge = (f'<span class="tg-badge tg-kept">kept ×{sample["times_selected"]}</span>' if kept
           else '<span class="tg-badge">dropped</span>')
  meta = [f'score {_fmt(sample["score"])}']
  if sample.get('noise') is not None:
    meta.append(html.escape(sample['noise']))
  if sample.get('cluster') is not None:
    meta.append(f'c{sample["cluster"]}')
  lines = []
  for d in sample['drivers']:
    if weighted:
      lines.append(f'{html.escape(d["feature"])} {d["contribution"]:+.2f} '
                   f'(z {d["z"]:+.1f})')
    else:
      lines.append(f'{html.escape(d["feature"])} {_fmt(d["value"])} (z {d["z"]:+.1f})')
  return (f'<div class="tg-card{" tg-kept" if kept else ""}" '
          f'title="{html.escape(info.get("uid", ""))}">{image}'
          f'<div>{badge} <span class="tg-meta">{" · ".join(meta)}</span></div>'
          f'<div class="tg-cap" title="{html.escape(caption)}">{html.escape(short)}</div>'
          f'<div class="tg-drv">{"<br>".join(lines)}</div></div>')


_SECTIONS = (('noise', 'By ground-truth noise type'),
             ('cluster', 'By diversity cluster'),
             ('decile', 'By score decile'))


def _gallery(the_plan: dict, shown: Mapping, sections=None) -> str:
  out = []
  samples = the_plan['samples']
  for section, title in _SECTIONS:
    if sections is not None and section not in sections:
      continue
    gs = [g for g in the_plan['groups'] if g['section'] == section]
    if not gs:
      continue
    out.append(f'<h3 id="gallery-{section}">{title}</h3>')
    for g in gs:
      out.append(f'<h4 class="tg-group">{html.escape(g["label"])}: kept {g["kept"]} of {g["size"]} '
                 f'({_fmt(g["kept_fraction"])})</h4><div class="tg-row">')
      for side, rows in (('kept', g['show_kept']), ('dropped', g['show_dropped'])):
        cards = ''.join(_card(r, samples[r], shown, the_plan['weighted']) for r in rows)
        out.append(f'<div class="tg-side"><h4>{side} ({len(rows)} shown)</h4>'
                   f'<div class="tg-grid">{cards or "<p class=note>none</p>"}</div></div>')
      out.append('</div>')
  return '\n'.join(out)


def gallery_html(the_plan: dict, shown: Mapping, sections=None) -> str:
  """The gallery alone with its style, for IPython.display.HTML in a notebook."""
  body = _gallery(the_plan, shown, sections)
  return f'<style>{_GALLERY_CSS}</style><div class="tads-gallery">{body}</div>'


def _learn_html(learn: dict) -> str:
  out = []
  history = learn.get('history') or {}
  if history.get('outer_loss'):
    out.append('<p class="note">Smoothed (exponential moving average, debiased) over meta '
               'steps; the raw values are faint behind.</p><div class="charts">')
    out.append(svg_lines({'outer loss': history['outer_loss']}, 'outer loss'))
    if history.get('task_losses'):
      out.append(svg_lines(history['task_losses'], 'task losses at the unrolled proxy'))
    if history.get('task_weights'):
      out.append(svg_lines(history['task_weights'], 'task weights', raw=False))
    out.append('</div>')
  else:
    out.append('<p class="note">No meta-learning ran (the prior alone scores the pool).</p>')
  if learn.get('feature_weights'):
    out.append('<h3>Weight per standardized feature</h3><p class="note">prior, and learned '
               '= mean dV/dz over the pool</p>')
    out.append(table(learn['feature_weights'], ['feature', 'group', 'prior', 'learned']))
  return '\n'.join(out)


def _comparison_table(ev: dict) -> str:
  """One row per subset of an evaluation (report.comparison_rows): average ± std over
  seeds, each task's mean, the proxy."""
  rows = report_lib.comparison_rows(ev)
  for r in rows:
    r['average ± std'] = f'{r["average"]:.4f} ± {r["std"]:.4f}'
  return table(rows, ['subset', 'entries', 'unique', 'average ± std', *ev['tasks'], 'proxy'])


def _evaluation_html(report: dict, plots: Mapping[str, bytes]) -> str:
  ev = report['evaluation']
  if ev.get('stale'):
    return (f'<p class="note">{html.escape(ev["path"])} scores another subset.npy than the '
            'current one; rerun the evaluate stage.</p>')
  out = [f'<p class="note">{html.escape(report_lib.proxy_label(ev))}: '
         f'{html.escape(report_lib.proxy_description(ev))}; '
         f'{len(ev["seeds"])} seeds; {ev["train"]["samples_seen"]} samples seen per run. '
         'average = mean over tasks of the main metric (mean ± std over seeds).</p>']
  out.append(_comparison_table(ev))
  if 'evaluation' in plots:
    out.append(f'<img class="plot" alt="evaluation" src="{_png(plots["evaluation"])}">')
  check = report_lib.pixel_check_evaluation(ev)
  if check is not None:
    seeds = ev['pixel_check']['seeds']
    out.append('<h3>Pixel check: the pixel proxy on a few of these subsets</h3>')
    out.append(f'<p class="note">{html.escape(report_lib.proxy_label(check))}: '
               f'{html.escape(report_lib.proxy_description(check))}; '
               f'{report_lib.seeds_phrase(seeds)}; '
               f'{check["train"]["samples_seen"]} samples seen per run.</p>')
    out.append(_comparison_table(check))
    sentence = report_lib.order_sentence(ev)
    if sentence:
      out.append(f'<p>{html.escape(sentence)}</p>')
  kept_rows = report_lib.comparison_kept_rows(report)
  if kept_rows:
    out.append('<h3>Kept share of each noise type, per evaluated subset</h3>')
    out.append(table(kept_rows))
  return '\n'.join(out)


def render(report: dict, the_plan: dict, shown: Mapping[int, Mapping],
           plots: Mapping[str, bytes] | None = None) -> str:
  """The page. `shown[row]` has 'uid', 'caption' and 'thumb' (JPEG bytes) or 'note' (why
  there is no image); `plots` maps report['plots'] names to PNG bytes."""
  plots = plots or {}
  sel = report['selection']
  esc = html.escape
  nav = [('selection', 'Selection')]
  if report.get('evaluation'):
    nav.append(('comparison', 'Comparison'))
  nav += [('gallery', 'Gallery'), ('features', 'Features')]
  if report.get('learn'):
    nav.append(('learn', 'Meta-learning'))
  others = {k: v for k, v in plots.items() if k != 'evaluation'}
  if others:
    nav.append(('plots', 'Plots'))
  out = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f'<title>tads-jax report: {esc(str(sel["selector"]))}</title>',
         f'<style>{_PAGE_CSS}{_GALLERY_CSS}</style></head><body>',
         '<h1>tads-jax report</h1>',
         f'<p class="note">workdir: <code>{esc(str(report.get("workdir", "")))}</code></p>',
         '<nav>' + ''.join(f'<a href="#{a}">{t}</a>' for a, t in nav) + '</nav>']

  out.append('<h2 id="selection">Selection</h2>')
  out.append(f'<p>selector <b>{esc(str(sel["selector"]))}</b>; method {esc(str(sel["method"]))}; '
             f'fraction {_fmt(sel["fraction"])}; kept {sel["selected_unique"]} of '
             f'{sel["pool"]} samples ({sel["subset_entries"]} entries in subset.npy)</p>')
  pool = report.get('pool') or {}
  if pool:
    skips = pool.get('skips') or {}
    out.append(f'<p class="note">pool: {esc(str(pool.get("format")))}, {pool.get("sources")} '
               f'sources, {pool.get("samples")} samples ingested; skipped: '
               + (', '.join(f'{esc(k)} {v}' for k, v in skips.items()) or 'none') + '</p>')
  gt = report.get('ground_truth')
  if gt:
    out.append('<h3>Kept share by ground-truth noise type</h3>')
    out.append(table(gt['by_noise'], ['noise', 'pool', 'ingested', 'kept', 'kept_fraction']))
    out.append(table(gt['by_on_task'], ['on_task', 'pool', 'ingested', 'kept',
                                        'kept_fraction']))
  else:
    out.append('<p class="note">No ground truth for this pool: the gallery has no noise '
               'section.</p>')

  if report.get('evaluation'):
    out.append('<h2 id="comparison">Comparison of selectors (zero-shot, proxy trained on '
               'each subset)</h2>')
    out.append(_evaluation_html(report, plots))

  out.append('<h2 id="gallery">Gallery: kept and dropped samples</h2>')
  drv = ('the largest contributions weight × z of the value function'
         if the_plan['weighted'] else 'the features farthest from the pool mean (z-score)')
  out.append(f'<p class="note">Up to {the_plan["per_group"]} kept and '
             f'{the_plan["per_group"]} dropped samples per group, drawn at random (from few '
             f'shards) out of {the_plan["pool"]} samples. Under each: the selector\'s score '
             f'and {drv}. '
             + ' '.join(f'<a href="#gallery-{s}">{t}</a>' for s, t in _SECTIONS
                        if any(g['section'] == s for g in the_plan['groups']))
             + '</p>')
  out.append(_gallery(the_plan, shown))

  out.append('<h2 id="features">Features: kept vs dropped</h2>')
  out.append('<p class="note legend">Share of each side per bin (0.5-99.5 percentile range; '
             'outliers in the edge bins):<span style="background:#1f77b4"></span>kept'
             '<span style="background:#999"></span>dropped</p><div class="hists">')
  for h in the_plan['histograms']:
    missing = f' ({h["missing"]} missing)' if h['missing'] else ''
    out.append(f'<figure>{svg_histogram(h)}<figcaption>{esc(h["feature"])}{missing}'
               '</figcaption></figure>')
  out.append('</div>')
  profile = report.get('selection_profile') or {}
  if profile.get('relevance'):
    out.append('<h3>Task relevance of the kept samples vs the pool</h3>')
    out.append(table(profile['relevance'], ['feature', 'pool_mean', 'kept_mean']))

  if report.get('learn'):
    out.append('<h2 id="learn">Meta-learning</h2>')
    out.append(_learn_html(report['learn']))
  if others:
    out.append('<h2 id="plots">Plots</h2>')
    for name, data in others.items():
      out.append(f'<h3>{esc(name)}</h3><img class="plot" alt="{esc(name)}" src="{_png(data)}">')
  stages = report.get('stages') or {}
  if stages:
    out.append('<h2 id="stages">Stages</h2>')
    out.append(table([{'stage': k, 'status': s.get('status'), 'seconds': s.get('seconds')}
                      for k, s in stages.items()], ['stage', 'status', 'seconds']))
  out.append('</body></html>')
  return '\n'.join(out)
