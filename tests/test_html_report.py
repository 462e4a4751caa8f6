"""report.html: html_report's numbers and page on hand-made arrays, the report stage's
thumbnail reader on a hand-made tar, the stage's page on a tiny world, and (slow) the page
opened in headless Chromium.

References are independent of the module: group membership, kept counts and deciles are
recomputed here with numpy; the moving average is written out as a loop; thumbnails are
compared with the colours drawn into the tar; the browser reports what it rendered.
"""

import base64
import html.parser
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np
from PIL import Image
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_main  # noqa: E402  pylint: disable=wrong-import-position
import test_report  # noqa: E402  pylint: disable=wrong-import-position

from tads_jax import html_report  # noqa: E402
from tads_jax import main  # noqa: E402
from tads_jax.stages import report as report_stage  # noqa: E402


# ---------------------------------------------------------------------------------------
# Pure: plan, drivers, histogram, smoothing, page.


def _pool(n, seed=0, shards=30):
  """Hand-made whole-pool arrays: three noise types, 20 clusters, rows in shard order."""
  rng = np.random.default_rng(seed)
  score = rng.normal(size=n)
  times = np.zeros(n, np.int64)
  times[np.argsort(-score)[:round(0.36 * n)]] = 1
  times[np.argsort(-score)[:5]] = 2  # sampling with repetition
  columns = {
      'score': score, 'times_selected': times,
      'cluster': rng.integers(0, 20, n).astype(np.int32),
      'clip_score': rng.normal(0.3, 0.05, n).astype(np.float32),
      'sharpness': rng.exponential(1.0, n),
      'exact_duplicate': rng.random(n) < 0.05,
      'width': np.full(n, 64, np.int32),
  }
  noise = rng.choice(np.array(['clean', 'spam', 'blank']), n, p=[0.7, 0.2, 0.1])
  shard_codes = np.arange(n) * shards // n
  return columns, noise, shard_codes


def test_plan_groups_hold_their_members_and_bounded_picks():
  columns, noise, shard_codes = _pool(3000)
  kept = columns['times_selected'] > 0
  plan = html_report.plan(columns, noise=noise, shard_codes=shard_codes, per_group=4,
                          max_clusters=5, seed=1)
  groups = plan['groups']
  labels = [(g['section'], g['label']) for g in groups]
  assert [l for s, l in labels if s == 'noise'] == ['clean', 'blank', 'spam']
  assert sum(s == 'cluster' for s, _ in labels) == 5
  assert sum(s == 'decile' for s, _ in labels) == 10
  # Deciles by score rank, independently: the i-th tenth of the descending order.
  order = np.argsort(-columns['score'], kind='stable')
  decile_of = np.empty(3000, int)
  decile_of[order] = np.arange(3000) // 300
  cluster = columns['cluster']
  share = {c: kept[cluster == c].mean() for c in range(20)}
  shown_clusters = [int(l.split()[1]) for s, l in labels if s == 'cluster']
  assert max(share, key=share.get) in shown_clusters  # the spread includes both ends
  assert min(share, key=share.get) in shown_clusters
  for g in groups:
    if g['section'] == 'noise':
      member = noise == g['label']
    elif g['section'] == 'cluster':
      member = cluster == int(g['label'].split()[1])
    else:
      member = decile_of == int(g['label'].split('-')[0]) // 10
    assert g['size'] == member.sum() and g['kept'] == (member & kept).sum(), g['label']
    assert len(g['show_kept']) == min(4, (member & kept).sum())
    assert len(g['show_dropped']) == min(4, (member & ~kept).sum())
    assert all(member[r] and kept[r] for r in g['show_kept'])
    assert all(member[r] and not kept[r] for r in g['show_dropped'])
  assert plan['rows'] == sorted({r for g in groups for r in g['show_kept'] + g['show_dropped']})
  assert set(plan['samples']) == set(plan['rows'])
  # Few shards to open: far fewer than picking the same number of rows uniformly.
  touched = len(set(shard_codes[plan['rows']]))
  rng = np.random.default_rng(0)
  uniform = len(set(shard_codes[rng.choice(3000, len(plan['rows']), replace=False)]))
  assert touched <= uniform // 2, (touched, uniform)


def test_plan_is_deterministic_and_needs_no_ground_truth_or_clusters():
  columns, noise, shard_codes = _pool(500)
  a = html_report.plan(columns, noise=noise, shard_codes=shard_codes, seed=3)
  b = html_report.plan(columns, noise=noise, shard_codes=shard_codes, seed=3)
  assert a['rows'] == b['rows']
  # The same ground truth as dictionary codes (what the stage passes): the same page.
  labels = ['spam', 'clean', 'blank']
  codes = np.array([labels.index(v) for v in noise])
  c = html_report.plan(columns, noise=codes, noise_labels=labels, shard_codes=shard_codes,
                       seed=3)
  assert c['rows'] == a['rows'] and c['samples'] == a['samples']
  assert [g['label'] for g in c['groups']] == [g['label'] for g in a['groups']]
  bare = {k: v for k, v in columns.items() if k != 'cluster'}
  plan = html_report.plan(bare)
  assert {g['section'] for g in plan['groups']} == {'decile'}


def test_drivers_are_the_largest_contributions_or_z_scores():
  z = {'clip_score': -2.0, 'sharpness': 0.5, 'words': 1.5, 'width': 0.0}
  values = {'clip_score': 0.1, 'sharpness': 3.0, 'words': 12.0, 'width': 64.0}
  plain = html_report.drivers(z, values, top=2)
  assert [d['feature'] for d in plain] == ['clip_score', 'words']
  assert plain[0]['value'] == 0.1 and plain[0]['contribution'] is None
  # With weights: |w z| = clip 0.2, sharpness 1.5, words 0.15; width has no weight.
  weighted = html_report.drivers(z, values, {'clip_score': 0.1, 'sharpness': 3.0,
                                             'words': 0.1}, top=3)
  assert [d['feature'] for d in weighted] == ['sharpness', 'clip_score', 'words']
  assert weighted[1]['contribution'] == pytest.approx(-0.2)


def test_sample_drivers_use_pool_z_scores():
  columns, _, _ = _pool(400)
  plan = html_report.plan(columns, per_group=2)
  row = plan['rows'][0]
  x = columns['sharpness']
  expected = (x[row] - x.mean()) / x.std()
  for d in plan['samples'][row]['drivers']:
    if d['feature'] == 'sharpness':
      assert d['z'] == pytest.approx(np.clip(expected, -5, 5), rel=1e-6)
  # A constant column has z 0 everywhere and so never drives a score.
  assert all(d['feature'] != 'width' or d['z'] == 0 for s in plan['samples'].values()
             for d in s['drivers'])


def test_histogram_counts_every_finite_value_once():
  x = np.concatenate([np.linspace(0, 1, 1000), [50.0, -50.0, np.nan]])
  kept = np.zeros(len(x), bool)
  kept[::3] = True
  h = html_report.histogram(x, kept, bins=10)
  finite = np.isfinite(x)
  assert sum(h['kept']) == (kept & finite).sum()
  assert sum(h['dropped']) == (~kept & finite).sum()
  assert h['missing'] == 1
  assert h['edges'][0] >= 0 and h['edges'][-1] <= 1  # outliers went to the edge bins
  assert html_report.histogram(np.full(5, np.nan), np.ones(5, bool)) is None


def test_smooth_is_the_debiased_moving_average():
  values = [4.0, 2.0, 3.0, 1.0]
  w = 0.5
  expected, acc, norm = [], 0.0, 0.0
  for v in values:
    acc = w * acc + (1 - w) * v
    norm = w * norm + (1 - w)
    expected.append(acc / norm)
  np.testing.assert_allclose(html_report.smooth(values, w), expected)
  assert html_report.smooth([2.0] * 50) == pytest.approx([2.0] * 50)


_JPEG = None


def _jpeg():
  global _JPEG
  if _JPEG is None:
    out = io.BytesIO()
    Image.new('RGB', (96, 96), (200, 30, 30)).save(out, format='JPEG')
    _JPEG = out.getvalue()
  return _JPEG


def _report(with_learn=True):
  seeds = {'mean': 0.4, 'std': 0.01}
  run = {'average': seeds, 'seeds': [0, 1], 'train': {'samples_seen': 100},
         'subset': {'entries': 10, 'unique': 10},
         'tasks': {'shapes': {'kind': 'classification', 'mean': {'main': 0.5}}}}
  report = {
      'workdir': '/tmp/w',
      'pool': {'format': 'webdataset', 'sources': 3, 'samples': 100,
               'skips': {'corrupt_image': 2}},
      'selection': {'selector': 'tads', 'method': 'topk', 'fraction': 0.36, 'pool': 100,
                    'selected_unique': 36, 'subset_entries': 36},
      'ground_truth': {
          'by_noise': [{'noise': 'clean', 'pool': 70, 'ingested': 70, 'kept': 30,
                        'kept_fraction': 30 / 70}],
          'by_on_task': [{'on_task': True, 'pool': 70, 'ingested': 70, 'kept': 30,
                          'kept_fraction': 30 / 70}]},
      'evaluation': dict(run, selector='tads', proxy='embedding', baselines={'random': run}),
      'comparison_kept': {'random': {
          'by_noise': [{'noise': 'clean', 'kept_fraction': 0.36}],
          'by_on_task': [{'on_task': True, 'kept_fraction': 0.36}]}},
  }
  if with_learn:
    report['learn'] = {
        'history': {'outer_loss': list(np.linspace(2, 1, 40)),
                    'task_losses': {'shapes': list(np.linspace(2, 1.2, 40))},
                    'task_weights': {'shapes': [1.0] * 40}},
        'feature_weights': [{'feature': 'clip_score', 'group': 'quality', 'prior': 1.0,
                             'learned': 1.3}]}
  return report


def _page(n, caption='a red square', seed=0):
  columns, noise, shard_codes = _pool(n, seed)
  plan = html_report.plan(columns, noise=noise, shard_codes=shard_codes,
                          weights={'clip_score': 1.3})
  shown = {r: {'uid': f'{r:032x}', 'caption': caption, 'thumb': _jpeg()}
           for r in plan['rows']}
  return html_report.render(_report(), plan, shown, {'evaluation': _png()}), plan


def _png():
  out = io.BytesIO()
  Image.new('RGB', (40, 20), (0, 0, 255)).save(out, format='PNG')
  return out.getvalue()


def test_page_size_does_not_grow_with_the_pool():
  small, plan_small = _page(2_000)
  large, plan_large = _page(200_000)
  assert _cards(plan_large) == _cards(plan_small)  # same groups, full picks
  assert abs(len(large) - len(small)) < 0.02 * len(small), (len(small), len(large))
  assert len(large) < 2_000_000


def _cards(plan):
  return sum(len(g['show_kept']) + len(g['show_dropped']) for g in plan['groups'])


class _Collect(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.tags = []

  def handle_starttag(self, tag, attrs):
    self.tags.append((tag, dict(attrs)))


def test_page_is_self_contained_and_escapes_captions():
  page, plan = _page(1_000, caption='<script>alert(1)</script> & more')
  parser = _Collect()
  parser.feed(page)
  images = [a for t, a in parser.tags if t == 'img']
  assert len(images) == _cards(plan) + 1  # every thumbnail and the evaluation plot
  for a in images:
    assert a['src'].startswith(('data:image/jpeg;base64,', 'data:image/png;base64,'))
    Image.open(io.BytesIO(base64.b64decode(a['src'].split(',', 1)[1]))).verify()
  assert not [t for t, a in parser.tags if t in ('script', 'link', 'iframe')]
  assert 'http://' not in page and 'https://' not in page
  assert '<script>alert' not in page and '&lt;script&gt;alert(1)' in page
  for anchor in ('selection', 'gallery', 'features', 'learn', 'comparison',
                 'gallery-noise', 'gallery-cluster', 'gallery-decile'):
    assert f'id="{anchor}"' in page, anchor
  assert page.count('<svg') == len(plan['histograms']) + 3  # + outer, task losses, weights


def test_gallery_fragment_keeps_its_style_to_itself():
  _, plan = _page(500)
  fragment = html_report.gallery_html(plan, {}, sections=('noise',))
  assert 'body{' not in fragment and 'table{' not in fragment
  assert 'id="gallery-noise"' in fragment and 'id="gallery-decile"' not in fragment
  assert fragment.count('class="tg-noimg"') == sum(
      len(g['show_kept']) + len(g['show_dropped']) for g in plan['groups']
      if g['section'] == 'noise')


def _checked_page(pixel_selected):
  """The page of _report() whose evaluation has a pixel check (test_report.checked_eval)."""
  columns, noise, shard_codes = _pool(500)
  plan = html_report.plan(columns, noise=noise, shard_codes=shard_codes)
  report = dict(_report(), evaluation=test_report.checked_eval(pixel_selected))
  return html_report.render(report, plan, {})


def test_page_shows_the_pixel_check_and_where_the_proxies_disagree():
  page = _checked_page(0.20)
  check = page[page.index('<h3>Pixel check'):]
  assert 'pixel proxy: a tiny CLIP (conv stem, 32 px) trained from scratch' in check
  assert '2 seeds; 96 samples seen per run' in check
  for cells in (('tads (selected)', '10', '8', '0.2000 ± 0.0100', '0.300', 'pixel proxy'),
                ('clip_score', '10', '8', '0.2500 ± 0.0100', '0.350', 'pixel proxy'),
                ('full', '30', '28', '0.1000 ± 0.0100', '0.200', 'pixel proxy')):
    assert '<tr>' + ''.join(f'<td>{c}</td>' for c in cells) + '</tr>' in check, cells
  # The embedding proxy's table above it is unchanged.
  main = page[page.index('id="comparison"'):page.index('<h3>Pixel check')]
  assert '<td>tads (selected)</td><td>10</td><td>8</td><td>0.4000 ± 0.0100</td>' in main
  assert ('<p>The embedding proxy and the pixel proxy order these subsets differently '
          '(average main metric, mean over seeds): tads (selected) is above clip_score under '
          'the embedding proxy (0.4000 vs 0.3500) but below it under the pixel proxy (0.2000 '
          'vs 0.2500).</p>') in check
  agree = _checked_page(0.30)
  assert 'order these subsets differently' not in agree
  assert 'order these subsets the same way' in agree
  assert 'Pixel check' not in html_report.render(_report(), html_report.plan(_pool(500)[0]),
                                                 {})


# ---------------------------------------------------------------------------------------
# The stage: thumbnails from a tar, and report.html on a tiny world.


def _add(tar, name, data):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def test_thumbnails_come_from_the_wanted_members_only(tmp_path):
  colours = {'a': (255, 0, 0), 'b': (0, 255, 0), 'c': (0, 0, 255)}
  path = str(tmp_path / '00000000.tar')
  with tarfile.open(path, 'w') as tar:
    for key, colour in colours.items():
      out = io.BytesIO()
      Image.new('RGB', (300, 150), colour).save(out, format='PNG')
      _add(tar, f'{key}.png', out.getvalue())
      _add(tar, f'{key}.txt', b'caption')
    _add(tar, 'd.jpg', b'not a jpeg')
  shown = {0: {'key': 'a', 'shard': path}, 1: {'key': 'c', 'shard': path},
           2: {'key': 'd', 'shard': path}, 3: {'key': 'z', 'shard': path},
           4: {'key': 'a', 'shard': str(tmp_path / 'meta.parquet')},
           5: {'key': 'a', 'shard': str(tmp_path / 'gone.tar')}}
  report_stage.thumbnails(shown, size=64)
  for row, key in ((0, 'a'), (1, 'c')):
    with Image.open(io.BytesIO(shown[row]['thumb'])) as img:
      assert img.format == 'JPEG' and img.size == (64, 32)  # aspect kept
      mean = np.asarray(img.convert('RGB'), float).reshape(-1, 3).mean(0)
    np.testing.assert_allclose(mean, colours[key], atol=8)
  assert shown[2]['note'] == 'unreadable image'
  assert shown[3]['note'] == 'image not found'
  assert shown[4]['note'] == 'no image in this pool format'
  assert shown[5]['note'] == 'image not found' and 'thumb' not in shown[5]


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """The cheap chain (ingest, select, report) on a 120-sample world with ground truth."""
  c = test_main.small_config()
  c.pool.synthetic.update(dict(num_samples=120, shard_size=40))
  c.stages = ('ingest', 'select', 'report')
  workdir = str(tmp_path_factory.mktemp('html'))
  main.run(c, workdir)
  return workdir


def test_report_stage_writes_a_gallery_of_the_pool(tiny_run):
  with open(os.path.join(tiny_run, 'report.json')) as f:
    report = json.load(f)
  with open(os.path.join(tiny_run, report_stage.HTML), encoding='utf-8') as f:
    page = f.read()
  parser = _Collect()
  parser.feed(page)
  thumbs = [a for t, a in parser.tags if t == 'img' and a['src'].startswith('data:image/jpeg')]
  cards = [a for t, a in parser.tags if t == 'div' and 'tg-card' in a.get('class', '')]
  assert cards and len(thumbs) == len(cards)  # every shown sample has its image
  # Every noise type of the ground truth has its group, with the stage's kept counts.
  for row in report['ground_truth']['by_noise']:
    assert f'{row["noise"]}: kept {row["kept"]} of {row["ingested"]} ' in page, row
  # The captions shown are the pool's own.
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  captions = set(pq.read_table(os.path.join(tiny_run, 'scores.parquet'),
                               columns=['caption']).column('caption').to_pylist())
  shown = re.findall(r'class="tg-cap" title="([^"]*)"', page)
  assert shown and all(html.unescape(c) in captions for c in shown)
  fragment = report_stage.gallery(tiny_run, sections=('noise',), per_group=2)
  assert 'tg-card' in fragment and 'data:image/jpeg;base64,' in fragment


# ---------------------------------------------------------------------------------------
# In a real browser (slow): headless Chromium from Debian's packages.


CHROMIUM_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu',
                  '--disable-background-networking', '--disable-component-update',
                  '--disable-sync', '--no-first-run', '--hide-scrollbars',
                  '--disable-dev-shm-usage', '--mute-audio')
SCREEN = (1280, 1700)

# Appended to a copy of the page: once everything loaded, writes what rendered into the DOM.
_CHECK = """<script>
window.addEventListener('load', () => {
  const images = [...document.images];
  const tables = [...document.querySelectorAll('table')];
  const charts = [...document.querySelectorAll('svg.chart')];
  const out = {
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    tables: tables.length,
    empty_tables: tables.filter(t => t.offsetHeight === 0 || t.rows.length < 2).length,
    charts: charts.length,
    empty_charts: charts.filter(s => s.getBoundingClientRect().height === 0).length,
    cards: document.querySelectorAll('.tg-card').length,
  };
  const pre = document.createElement('pre');
  pre.id = 'tads-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
  for name in ('chromium', 'chromium-browser', 'google-chrome'):
    path = shutil.which(name)
    if path:
      return path
  return None


def _chromium(args, profile, **kwargs):
  return subprocess.run([chromium(), *CHROMIUM_FLAGS, f'--user-data-dir={profile}', *args],
                        check=True, capture_output=True, timeout=120, **kwargs)


def _probe(page_path: str, script: str, profile: str) -> dict:
  """Runs `script` (which must write JSON into <pre id="tads-check">) in a copy of the page
  once it loaded; returns that JSON (dump-dom)."""
  probe = page_path + '.check.html'
  with open(page_path, encoding='utf-8') as f:
    page = f.read()
  with open(probe, 'w', encoding='utf-8') as f:
    f.write(page.replace('</body>', script + '</body>'))
  dom = _chromium(['--virtual-time-budget=20000', '--dump-dom', 'file://' + probe], profile,
                  text=True).stdout
  os.remove(probe)
  m = re.search(r'<pre id="tads-check">(.*?)</pre>', dom, re.S)
  assert m, 'the check script did not run: ' + dom[-500:]
  return json.loads(html.unescape(m.group(1)))


def browser_check(page_path: str, screenshot: str, size=SCREEN) -> dict:
  """Opens the page in headless Chromium: a screenshot, then what rendered (dump-dom)."""
  with tempfile.TemporaryDirectory() as profile:
    _chromium([f'--window-size={size[0]},{size[1]}', f'--screenshot={screenshot}',
               'file://' + page_path], profile)
    return _probe(page_path, _CHECK, profile)


_GALLERY_TOP = """<script>
window.addEventListener('load', () => {
  const pre = document.createElement('pre');
  pre.id = 'tads-check';
  pre.textContent = JSON.stringify(
      document.getElementById('gallery').getBoundingClientRect().top + window.scrollY);
  document.body.appendChild(pre);
});
</script>"""


def docs_screenshots(page_path: str, directory: str, width: int = 1280) -> list[str]:
  """The README's pictures: the top of the page and the start of the gallery, 256-colour
  PNGs (docs/report_html.png, docs/report_gallery.png)."""
  os.makedirs(directory, exist_ok=True)
  out = []
  with tempfile.TemporaryDirectory() as profile:
    top = int(_probe(page_path, _GALLERY_TOP, profile))
    tall = os.path.join(profile, 'tall.png')
    _chromium([f'--window-size={width},{top + 1200}', f'--screenshot={tall}',
               'file://' + page_path], profile)
    with Image.open(tall) as img:
      img = img.convert('RGB')
      for name, box in (('report_html.png', (0, 0, width, SCREEN[1])),
                        ('report_gallery.png', (0, top - 10, width, top + 1140))):
        path = os.path.join(directory, name)
        img.crop(box).quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                               dither=Image.Dither.NONE).save(path, optimize=True)
        out.append(path)
  return out


def _rich_config():
  """TADS with meta-learning, and three baselines evaluated: every section of the page."""
  import test_tads_pipeline  # pylint: disable=g-import-not-at-top
  c = test_tads_pipeline.config(steps=6)
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'learn', 'select', 'evaluate',
              'report')
  c.evaluate.update(dict(samples_seen=16 * 12, seeds=2, batch_size=16, lr=1e-3, warmup=2,
                         head='mlp', baselines=('full', 'random', 'clip_score')))
  return c


@pytest.mark.slow
def test_report_opens_in_headless_chromium(tmp_path_factory):
  if chromium() is None:
    pytest.skip('headless Chromium is not installed (apt-get install -y chromium; '
                '`make test-all` installs it)')
  workdir = str(tmp_path_factory.mktemp('browser'))
  main.run(_rich_config(), workdir)
  page_path = os.path.join(workdir, report_stage.HTML)
  with open(page_path, encoding='utf-8') as f:
    page = f.read()
  parser = _Collect()
  parser.feed(page)
  screenshot = os.path.join(workdir, 'screenshot.png')
  result = browser_check(page_path, screenshot)
  assert result['broken'] == [], result
  assert result['images'] == sum(t == 'img' for t, _ in parser.tags) > 0
  assert result['tables'] == page.count('<table>') and result['empty_tables'] == 0
  assert result['charts'] == page.count('<svg') and result['empty_charts'] == 0
  assert result['cards'] > 0
  for section in ('gallery-noise', 'gallery-cluster', 'gallery-decile', 'learn',
                  'comparison'):
    assert f'id="{section}"' in page, section
  with Image.open(screenshot) as img:
    assert img.size == SCREEN
    pixels = np.asarray(img.convert('L'), float)
  assert pixels.std() > 10  # not a blank page
  if os.environ.get('TADS_DOCS'):  # TADS_DOCS=docs: refresh the README's screenshots
    docs_screenshots(page_path, os.environ['TADS_DOCS'])


def test_datacomp_pool_thumbnails_come_from_the_tar_beside_the_metadata(tmp_path):
  """A DataComp pool's rows name their metadata parquet as the shard; the images are in the
  same-named tar beside it. Without the tar, the page says so instead of a thumbnail."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  meta = str(tmp_path / '00000000.parquet')
  keys = [f'{i:09d}' for i in range(6)]
  scores = str(tmp_path / 'scores.parquet')
  pq.write_table(pa.table({
      'uid': [f'{i:032x}' for i in range(6)], 'key': keys, 'shard': [meta] * 6,
      'caption': ['a red square'] * 6, 'score': np.arange(6, dtype=np.float64),
      'times_selected': np.array([0, 0, 0, 1, 1, 1])}), scores)
  report = {'config': {'pool': {'format': 'datacomp'}}}
  _, shown, _ = report_stage.html_parts(report, scores, per_group=2)
  assert shown and all(info.get('note') == 'no image in this pool format'
                       for info in shown.values())
  with tarfile.open(str(tmp_path / '00000000.tar'), 'w') as tar:
    for key in keys:
      _add(tar, f'{key}.jpg', _jpeg())
  _, shown, _ = report_stage.html_parts(report, scores, per_group=2)
  assert all('thumb' in info for info in shown.values())
