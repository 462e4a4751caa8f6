import collections
import hashlib
import io
import json
import os
import re
import tarfile

import ml_collections
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tads_jax.data import synthetic
from tads_jax.data import tasks as tasks_lib
from tads_jax.data import webdataset

# Boosted noise so that a 400-sample world holds every noise type many times over.
_BOOSTED = dict(misaligned=0.10, partial=0.10, corrupt_noise=0.06, corrupt_blur=0.06,
                blank=0.06, extreme_aspect=0.06, exact_dup=0.08, near_dup=0.08,
                text_in_image=0.06, spam=0.06)
_SMALL_TASKS = dict(train_per_class=2, eval_per_class=3, retrieval_train=6,
                    retrieval_eval=7, captions_per_image=2)


def _cfg(**override):
  fields = dict(seed=3, num_samples=400, shard_size=150, trusted_size=40, noise=_BOOSTED,
                **_SMALL_TASKS)
  fields.update(override)
  return synthetic.WorldConfig.from_dict(fields)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('world'))
  cfg = _cfg()
  summary = synthetic.generate_world(out, cfg)
  gt = pq.read_table(os.path.join(out, 'ground_truth.parquet')).to_pylist()
  samples = {}  # uid -> {ext: bytes}, from the tars alone
  for name in sorted(os.listdir(os.path.join(out, 'pool'))):
    if name.endswith('.tar'):
      for key, files in _read_tar(os.path.join(out, 'pool', name)).items():
        meta = json.loads(files['json'])
        assert meta['uid'] not in samples
        samples[meta['uid']] = dict(files, _shard=name, _key=key)
  return dict(out=out, cfg=cfg, summary=summary, gt=gt, samples=samples,
              by_uid={row['uid']: row for row in gt})


def _read_tar(path):
  groups = {}
  with tarfile.open(path) as tar:
    for member in tar.getmembers():
      key, ext = member.name.split('.', 1)
      groups.setdefault(key, {})[ext] = tar.extractfile(member).read()
  return groups


def _image_of(files):
  for ext in ('jpg', 'png', 'webp'):
    if ext in files:
      return ext, files[ext]
  raise AssertionError(f'no image in {sorted(files)}')


def _decode(data):
  return np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))


def _laplacian_var(img):
  grey = img.astype(np.float64).mean(-1)
  lap = (grey[:-2, 1:-1] + grey[2:, 1:-1] + grey[1:-1, :-2] + grey[1:-1, 2:]
         - 4 * grey[1:-1, 1:-1])
  return lap.var()


def _phrase_tables():
  textures = {v: synthetic.TEXTURE_ADJ[v] + synthetic.TEXTURE_WITH[v]
              for v in synthetic.TEXTURES}
  return {'shape': synthetic.SHAPE_WORDS, 'color': synthetic.COLOR_WORDS,
          'texture': textures, 'size': synthetic.SIZE_WORDS}


def _parse(caption):
  """attribute -> set of values the caption names (word-boundary phrase matches)."""
  out = {}
  for attr, table in _phrase_tables().items():
    out[attr] = {value for value, phrases in table.items()
                 if any(re.search(rf'(?<![\w-]){re.escape(p)}(?![\w])', caption.lower())
                        for p in phrases)}
  return out


def _rows(world, noise):
  rows = [r for r in world['gt'] if r['noise'] == noise]
  assert rows, f'no {noise} sample in the test world'
  return rows


# --- vocabulary ---------------------------------------------------------------------------


def test_vocabulary_is_unambiguous():
  # Every phrase parses back to exactly its own value and names no other attribute.
  for attr, table in _phrase_tables().items():
    for value, phrases in table.items():
      for phrase in phrases:
        parsed = _parse(f'x {phrase} x')
        assert parsed[attr] == {value}, (phrase, parsed)
        assert all(not v for a, v in parsed.items() if a != attr), (phrase, parsed)
  for text in synthetic.TEMPLATES + synthetic.FILLERS + synthetic.SPAM_PHRASES:
    stripped = re.sub(r'\{\w+\}', ' ', text)
    assert not any(_parse(stripped).values()), text


# --- ground truth against the shards ------------------------------------------------------


def test_ground_truth_matches_shards(world):
  gt, samples = world['gt'], world['samples']
  assert len(gt) == world['cfg'].num_samples
  assert {r['uid'] for r in gt} == set(samples)
  assert len({r['uid'] for r in gt}) == len(gt)
  for index, row in enumerate(gt):
    files = samples[row['uid']]
    assert row['uid'] == hashlib.md5(f'3:{index}'.encode()).hexdigest()
    assert re.fullmatch(r'[0-9a-f]{32}', row['uid'])
    shard, k = divmod(index, world['cfg'].shard_size)
    assert row['key'] == files['_key'] == f'{shard:05d}{k:04d}'
    assert row['shard'] == files['_shard'] == f'{shard:08d}.tar'
    assert files['txt'].decode() == row['caption']
    ext, data = _image_of(files)
    assert ext == row['image_format']
    meta = json.loads(files['json'])
    assert meta['key'] == row['key'] and meta['caption'] == row['caption']
    assert meta['sha256'] == hashlib.sha256(data).hexdigest()
    img = _decode(data)
    assert (meta['height'], meta['width']) == img.shape[:2]
    assert row['on_task'] == (row['shape'] in synthetic.ON_TASK_SHAPES)
    assert (row['dup_of'] != '') == (row['noise'] in ('exact_dup', 'near_dup'))


def test_shard_parquet_and_stats(world):
  pool = os.path.join(world['out'], 'pool')
  by_key = {r['key']: r for r in world['gt']}
  total = 0
  for shard in range(3):
    table = pq.read_table(os.path.join(pool, f'{shard:08d}.parquet')).to_pylist()
    with open(os.path.join(pool, f'{shard:08d}_stats.json')) as f:
      stats = json.load(f)
    assert stats['count'] == stats['successes'] == len(table)
    assert stats['failed_to_download'] == 0
    for row in table:
      truth = by_key[row['key']]
      assert row['uid'] == truth['uid'] and row['caption'] == truth['caption']
      assert row['status'] == 'success'
      meta = json.loads(world['samples'][row['uid']]['json'])
      assert (row['width'], row['height']) == (meta['width'], meta['height'])
    total += len(table)
  assert total == 400


def test_the_project_pool_reader_reads_every_sample(world):
  skips = collections.Counter()
  read = {}
  for path in webdataset.expand_shards(os.path.join(world['out'], 'pool', '*.tar')):
    for sample in webdataset.iter_shard(path, skips, decode=True):
      read[sample.uid] = sample
  assert not skips
  assert set(read) == set(world['by_uid'])
  for uid, sample in read.items():
    assert sample.caption == world['by_uid'][uid]['caption']
    assert sample.image_ext == world['by_uid'][uid]['image_format']


def test_summary_and_world_json_count_the_ground_truth(world):
  counts = {n: 0 for n in synthetic.NOISE_TYPES}
  for row in world['gt']:
    counts[row['noise']] += 1
  assert world['summary']['counts'] == counts
  with open(os.path.join(world['out'], 'world.json')) as f:
    meta = json.load(f)
  assert meta['counts'] == counts and meta['seed'] == 3
  assert meta['version'] == synthetic.VERSION and meta['complete']
  assert synthetic.WorldConfig.from_dict(meta['config']) == world['cfg']
  assert meta['on_task'] == sum(r['on_task'] for r in world['gt'])
  for noise, n in counts.items():  # boosted fractions: each type shows up
    assert n > 0, noise


def test_every_noise_type_at_default_fractions():
  # The plan is the ground truth without the pixels, so 2000 samples are cheap.
  cfg = synthetic.WorldConfig(num_samples=2000, shard_size=500)
  plan = synthetic.plan_pool(cfg, np.arange(2000))
  counts = {n: 0 for n in synthetic.NOISE_TYPES}
  for p in plan:
    counts[p['noise']] += 1
  for name, fraction in cfg.noise_fractions.items():
    sigma = np.sqrt(fraction * (1 - fraction) / 2000)
    assert abs(counts[name] / 2000 - fraction) < 4 * sigma + 0.005, (name, counts[name])
  off = sum(not p['on_task'] for p in plan) / 2000
  assert abs(off - 0.3) < 4 * np.sqrt(0.21 / 2000)
  formats = [p['image_format'] for p in plan]
  assert 0.02 < formats.count('png') / 2000 < 0.09
  assert 0.02 < formats.count('webp') / 2000 < 0.09


# --- captions -----------------------------------------------------------------------------


def test_clean_captions_name_the_true_attributes(world):
  for row in world['gt']:
    if row['noise'] in ('misaligned', 'partial', 'spam'):
      assert row['true_caption'] != '' and row['caption'] != row['true_caption']
      parsed = _parse(row['true_caption'])
    else:
      assert row['caption'] == row['true_caption']
      parsed = _parse(row['caption'])
    assert parsed['shape'] == {row['shape']}, row
    assert parsed['color'] == {row['color']}, row
    for attr in ('texture', 'size'):  # some templates leave these out
      assert parsed[attr] in (set(), {row[attr]}), row


def test_off_task_samples_are_off_every_task(world):
  # The default world: an off-task sample's shape, colour and texture are values no task
  # asks for, an on-task sample's all values some task asks for, and captions name them.
  groups = {'shape': (synthetic.ON_TASK_SHAPES, synthetic.OFF_TASK_SHAPES),
            'color': (synthetic.ON_TASK_COLORS, synthetic.OFF_TASK_COLORS),
            'texture': (synthetic.ON_TASK_TEXTURES, synthetic.OFF_TASK_TEXTURES)}
  assert world['cfg'].offtask_attributes == ('shape', 'color', 'texture')
  off = [r for r in world['gt'] if not r['on_task']]
  assert 0.2 < len(off) / len(world['gt']) < 0.4  # offtask_fraction 0.3
  for row in world['gt']:
    for attr, (on_values, off_values) in groups.items():
      assert row[attr] in (on_values if row['on_task'] else off_values), (attr, row)
  assert {r['color'] for r in off} == set(synthetic.OFF_TASK_COLORS)
  assert {r['texture'] for r in off} == set(synthetic.OFF_TASK_TEXTURES)


def test_shape_only_off_task_keeps_every_colour_and_texture_on_task():
  # offtask_attributes=('shape',): the world before issue 13 (off-task by shape alone).
  cfg = _cfg(offtask_attributes=('shape',))
  plan = synthetic.plan_pool(cfg, np.arange(400))
  assert any(not p['on_task'] for p in plan)
  assert all(p['color'] in synthetic.ON_TASK_COLORS for p in plan)
  assert all(p['texture'] in synthetic.ON_TASK_TEXTURES for p in plan)
  # The same samples are off-task either way; only their colour and texture differ.
  default = synthetic.plan_pool(_cfg(), np.arange(400))
  assert [p['on_task'] for p in plan] == [p['on_task'] for p in default]
  assert [p['shape'] for p in plan] == [p['shape'] for p in default]


def test_off_task_textures_render_a_pattern():
  # wavy and concentric fill the object with two colours, as striped or checkered do.
  base = synthetic.Scene(shape='circle', color='navy', texture='solid', size='large',
                         rgb=(15, 20, 120), rgb2=(7, 10, 60), cx=0.5, cy=0.5, radius=0.35,
                         rotation=0.0, tex_angle=0.0, tex_period=0.5, bg_kind='grey',
                         bg0=(128, 128, 128), bg1=(128, 128, 128), bg_angle=0.0)
  solid = synthetic.render_scene(base, 64)
  inside = np.hypot(*np.meshgrid(np.arange(64) + 0.5 - 32, np.arange(64) + 0.5 - 32)) < 20
  for texture in synthetic.OFF_TASK_TEXTURES:
    img = synthetic.render_scene(base._replace(texture=texture), 64)
    dark = (img[inside] == (7, 10, 60)).all(-1).mean()
    assert 0.2 < dark < 0.8, (texture, dark)
    assert (img[~inside & (solid == 128).all(-1)] == 128).all()  # the background is kept
  wavy, concentric = (synthetic.render_scene(base._replace(texture=t), 64)
                      for t in synthetic.OFF_TASK_TEXTURES)
  assert not np.array_equal(wavy, concentric)


def test_misaligned_captions_describe_another_sample(world):
  true_captions = {r['true_caption'] for r in world['gt']}
  for row in _rows(world, 'misaligned'):
    assert row['caption'] != row['true_caption']
    assert _parse(row['caption'])['shape'] != {row['shape']}
    assert row['caption'] in true_captions  # another sample's own caption


def test_partial_captions_get_exactly_one_attribute_wrong(world):
  for row in _rows(world, 'partial'):
    parsed = _parse(row['caption'])
    wrong = [a for a in synthetic.ATTRIBUTES if parsed[a] and parsed[a] != {row[a]}]
    assert len(wrong) == 1 and wrong[0] != 'shape', (row['caption'], row)
    named = next(iter(parsed[wrong[0]]))  # an off-task sample's wrong value is off-task too
    if wrong[0] == 'color':
      assert (named in synthetic.ON_TASK_COLORS) == row['on_task'], row
    elif wrong[0] == 'texture':
      assert (named in synthetic.ON_TASK_TEXTURES) == row['on_task'], row
    assert all(len(v) <= 1 for v in parsed.values())


def test_spam_captions_are_spam(world):
  for row in _rows(world, 'spam'):
    caption = row['caption'].lower()
    assert re.search(r'(https?://|www\.)\S+', caption), caption
    assert any(w in caption for w in ('buy', 'price', 'shipping', 'click', 'offer',
                                      'discount', 'sale', 'deal', 'order', 'off'))
    assert not _parse(caption)['shape']
    words = re.findall(r'[a-z]+', caption)
    assert max(words.count(w) for w in words) >= 3  # a repeated word


# --- images -------------------------------------------------------------------------------


def test_exact_dups_are_byte_identical_to_a_clean_original(world):
  by_uid, samples = world['by_uid'], world['samples']
  for row in _rows(world, 'exact_dup'):
    original = by_uid[row['dup_of']]
    assert original['noise'] == 'clean'
    assert world['gt'].index(original) < world['gt'].index(row)
    assert _image_of(samples[row['uid']]) == _image_of(samples[original['uid']])
    assert row['caption'] == original['caption']
    assert samples[row['uid']]['txt'] == samples[original['uid']]['txt']
    for attr in synthetic.ATTRIBUTES:
      assert row[attr] == original[attr]


def test_near_dups_are_close_but_not_identical(world):
  by_uid, samples = world['by_uid'], world['samples']
  for row in _rows(world, 'near_dup'):
    original = by_uid[row['dup_of']]
    assert original['noise'] == 'clean'
    ext, data = _image_of(samples[row['uid']])
    _, original_data = _image_of(samples[original['uid']])
    assert ext == 'jpg' and data != original_data
    a, b = _decode(data).astype(int), _decode(original_data).astype(int)
    assert a.shape == b.shape
    diff = np.abs(a - b).mean()
    assert 0 < diff < 25, diff  # a jitter, not another image
    for attr in synthetic.ATTRIBUTES:
      assert row[attr] == original[attr]
    parsed = _parse(row['caption'])
    assert parsed['shape'] == {original['shape']}


def test_blank_images_are_near_uniform(world):
  for row in _rows(world, 'blank'):
    img = _decode(_image_of(world['samples'][row['uid']])[1])
    assert img.astype(float).std() < 2.0


def _clean_render(world, row):
  return synthetic.clean_render(world['cfg'], world['gt'].index(row))


def test_blurred_images_are_less_sharp_than_their_clean_render(world):
  for row in _rows(world, 'corrupt_blur'):
    img = _decode(_image_of(world['samples'][row['uid']])[1])
    clean = _clean_render(world, row)
    assert _laplacian_var(img) < 0.2 * _laplacian_var(clean)


def test_noisy_images_are_far_from_their_clean_render(world):
  for row in _rows(world, 'corrupt_noise'):
    img = _decode(_image_of(world['samples'][row['uid']])[1]).astype(float)
    clean = _clean_render(world, row).astype(float)
    assert np.abs(img - clean).mean() > 25
    assert _laplacian_var(img) > 5 * _laplacian_var(clean)


def test_clean_images_are_their_render(world):
  # Independent of the recipe code path: the clean re-render matches the stored image.
  for row in _rows(world, 'clean')[:40]:
    if row['image_format'] == 'png':  # lossless
      img = _decode(_image_of(world['samples'][row['uid']])[1])
      np.testing.assert_array_equal(img, _clean_render(world, row))
    else:
      img = _decode(_image_of(world['samples'][row['uid']])[1]).astype(float)
      assert np.abs(img - _clean_render(world, row)).mean() < 4


def test_extreme_aspect(world):
  for row in _rows(world, 'extreme_aspect'):
    img = _decode(_image_of(world['samples'][row['uid']])[1])
    h, w = img.shape[:2]
    assert max(h, w) / min(h, w) >= 4


def test_text_in_image_differs_from_the_plain_render(world):
  for row in _rows(world, 'text_in_image'):
    img = _decode(_image_of(world['samples'][row['uid']])[1]).astype(float)
    assert img.shape == (64, 64, 3)
    assert np.abs(img - _clean_render(world, row)).mean() > 5
    assert row['caption'] == row['true_caption']


def test_image_formats_are_what_they_say(world):
  seen = set()
  for row in world['gt']:
    _, data = _image_of(world['samples'][row['uid']])
    fmt = Image.open(io.BytesIO(data)).format
    assert fmt == {'jpg': 'JPEG', 'png': 'PNG', 'webp': 'WEBP'}[row['image_format']]
    seen.add(row['image_format'])
  assert seen == {'jpg', 'png', 'webp'}


def test_objects_stay_visible_at_32_pixels():
  cfg = synthetic.WorldConfig(image_size=32)
  plans = [p for p in synthetic.plan_pool(cfg, np.arange(120)) if p['noise'] == 'clean']
  assert len(plans) > 40
  for plan in plans:
    index, scene = plan['index'], plan['recipe'].scene
    img = synthetic.clean_render(cfg, index).reshape(-1, 3)
    is_object = (np.all(img == scene.rgb, -1) | np.all(img == scene.rgb2, -1))
    # A small object has radius >= 0.18 of the side (~6 px): at least 10 pixels of its colours.
    assert is_object.sum() >= 10, (index, scene.shape, scene.size, is_object.sum())


# --- trusted set and tasks ----------------------------------------------------------------


def test_trusted_set(world):
  trusted = os.path.join(world['out'], 'trusted', '00000000.tar')
  groups = _read_tar(trusted)
  assert len(groups) == 40
  uids = set()
  shapes = set()
  for files in groups.values():
    meta = json.loads(files['json'])
    uids.add(meta['uid'])
    parsed = _parse(files['txt'].decode())
    assert len(parsed['shape']) == 1 and len(parsed['color']) == 1
    shapes |= parsed['shape']
    assert meta['sha256'] == hashlib.sha256(files['jpg']).hexdigest()
  assert len(uids) == 40 and not uids & set(world['by_uid'])
  assert shapes & set(synthetic.OFF_TASK_SHAPES) and shapes & set(synthetic.ON_TASK_SHAPES)
  with open(os.path.join(world['out'], 'trusted', '00000000_stats.json')) as f:
    assert json.load(f)['count'] == 40


def _expand(pattern):
  match = re.search(r'\{(\d+)\.\.(\d+)\}', pattern)
  lo, hi = match.group(1), match.group(2)
  return [pattern[:match.start()] + f'{i:0{len(lo)}d}' + pattern[match.end():]
          for i in range(int(lo), int(hi) + 1)]


def test_tasks_json_resolves_and_labels_are_in_range(world):
  path = os.path.join(world['out'], 'tasks.json')
  with open(path) as f:
    specs = json.load(f)
  assert [s['name'] for s in specs] == ['shapes', 'colors', 'textures', 'captions']
  sizes = {'train': 2, 'eval': 3}
  for spec in specs:
    for split in ('train', 'eval'):
      tars = _expand(spec[split])
      assert not os.path.isabs(spec[split])
      groups = {}
      for tar in tars:
        full = os.path.join(world['out'], tar)
        assert os.path.isfile(full), full
        groups.update(_read_tar(full))
      for files in groups.values():
        assert _decode(files['jpg']).shape == (64, 64, 3)
      if spec['kind'] == 'classification':
        assert all('{}' in t for t in spec['templates']) and len(spec['templates']) >= 3
        labels = [int(files['cls']) for files in groups.values()]
        assert all(0 <= c < len(spec['classnames']) for c in labels)
        # Balanced: each class has its per-class count.
        assert np.bincount(labels, minlength=len(spec['classnames'])).tolist() == [
            sizes[split]] * len(spec['classnames'])
      else:
        assert spec['kind'] == 'retrieval' and spec['classnames'] == spec['templates'] == []
        assert len(groups) == {'train': 6, 'eval': 7}[split]
        for files in groups.values():
          captions = files['txt'].decode().split('\n')
          assert len(captions) == 2
          assert all(_parse(c)['shape'] & set(synthetic.ON_TASK_SHAPES) for c in captions)
  # The project's own task loader accepts the file.
  parsed = tasks_lib.parse_tasks(path)
  assert [t.name for t in parsed] == [s['name'] for s in specs]


def test_colour_task_labels_match_the_pixels(world):
  # An image labelled c in the colours task holds pixels near classnames[c]'s RGB.
  with open(os.path.join(world['out'], 'tasks.json')) as f:
    specs = {s['name']: s for s in json.load(f)}
  spec = specs['colors']
  for tar in _expand(spec['eval']):
    for files in _read_tar(os.path.join(world['out'], tar)).values():
      rgb = np.asarray(synthetic.COLORS[spec['classnames'][int(files['cls'])]], float)
      img = _decode(files['jpg']).reshape(-1, 3).astype(float)
      assert (np.abs(img - rgb).max(-1) < 40).sum() >= 10


def test_task_images_are_not_pool_images(world):
  pool_hashes = {hashlib.sha256(_image_of(f)[1]).hexdigest() for f in world['samples'].values()}
  for name in ('shapes', 'captions'):
    for split in ('train', 'eval'):
      for files in _read_tar(os.path.join(world['out'], 'tasks', name, split,
                                          '00000000.tar')).values():
        assert hashlib.sha256(files['jpg']).hexdigest() not in pool_hashes


# --- determinism and resume ---------------------------------------------------------------


def _tree(root):
  out = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_same_seed_gives_byte_identical_worlds(world, tmp_path):
  out = str(tmp_path / 'again')
  synthetic.generate_world(out, _cfg())
  first, second = _tree(world['out']), _tree(out)
  assert sorted(first) == sorted(second)
  for name in first:
    assert first[name] == second[name], name
  assert not any('.tmp-' in name for name in first)


def test_another_seed_gives_another_world(tmp_path):
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  synthetic.generate_world(a, _cfg(num_samples=30, trusted_size=5, tasks=()))
  synthetic.generate_world(b, _cfg(num_samples=30, trusted_size=5, tasks=(), seed=4))
  ta, tb = _tree(a), _tree(b)
  assert ta['pool/00000000.tar'] != tb['pool/00000000.tar']


def test_resume_regenerates_only_missing_shards(world, tmp_path):
  out = str(tmp_path / 'resume')
  cfg = _cfg()
  synthetic.generate_world(out, cfg)
  pool = os.path.join(out, 'pool')
  old = 1_000_000_000  # mark every existing file, to see which ones get rewritten
  for name in os.listdir(pool):
    os.utime(os.path.join(pool, name), (old, old))
  os.remove(os.path.join(pool, '00000001.tar'))
  os.remove(os.path.join(pool, '00000001_stats.json'))  # as if killed mid-shard
  summary = synthetic.generate_world(out, cfg)
  assert summary['shards_written'] == 1 and summary['shards_kept'] == 2
  assert summary['counts'] == world['summary']['counts']
  for name in os.listdir(pool):
    rewritten = name.startswith('00000001')
    assert (os.stat(os.path.join(pool, name)).st_mtime != old) == rewritten, name
  first, second = _tree(world['out']), _tree(out)
  assert sorted(first) == sorted(second)
  for name in first:
    assert first[name] == second[name], name


def test_parallel_workers_give_the_same_world(tmp_path):
  cfg = _cfg(num_samples=60, shard_size=20, trusted_size=10, tasks=('shapes',))
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  synthetic.generate_world(a, cfg)
  synthetic.generate_world(b, cfg, num_workers=2)
  assert _tree(a) == _tree(b)


def test_a_directory_with_another_world_is_refused(tmp_path):
  out = str(tmp_path / 'w')
  synthetic.generate_world(out, _cfg(num_samples=20, trusted_size=0, tasks=()))
  with pytest.raises(synthetic.WorldError, match=r'world\.json.*num_samples'):
    synthetic.generate_world(out, _cfg(num_samples=21, trusted_size=0, tasks=()))


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize('fields, field', [
    ({'num_sample': 10}, 'WorldConfig.num_sample'),
    ({'num_samples': '10'}, 'WorldConfig.num_samples'),
    ({'num_samples': 10.0}, 'WorldConfig.num_samples'),
    ({'seed': True}, 'WorldConfig.seed'),
    ({'image_size': 4}, 'WorldConfig.image_size'),
    ({'offtask_fraction': 1.5}, 'WorldConfig.offtask_fraction'),
    ({'png_fraction': -0.1}, 'WorldConfig.png_fraction'),
    ({'png_fraction': 0.6, 'webp_fraction': 0.6}, 'WorldConfig.webp_fraction'),
    ({'noise': {'spam': 1.2}}, 'WorldConfig.noise.spam'),
    ({'noise': {'spam': 'lots'}}, 'WorldConfig.noise.spam'),
    ({'noise': {'typos': 0.1}}, 'WorldConfig.noise.typos'),
    ({'noise': {'misaligned': 0.6, 'partial': 0.5}}, 'WorldConfig.noise'),
    ({'noise': 0.1}, 'WorldConfig.noise'),
    ({'shard_size': 10_001}, 'WorldConfig.shard_size'),
    ({'tasks': ['shapes', 'animals']}, 'WorldConfig.tasks'),
    ({'offtask_attributes': ['color']}, 'WorldConfig.offtask_attributes'),
    ({'offtask_attributes': 'shape,size'}, 'WorldConfig.offtask_attributes'),
    ({'offtask_attributes': ['shape', 'shape']}, 'WorldConfig.offtask_attributes'),
    ({'offtask_attributes': 3}, 'WorldConfig.offtask_attributes'),
])
def test_config_errors_name_the_field(fields, field):
  with pytest.raises(ValueError, match=re.escape(field)):
    synthetic.WorldConfig.from_dict(fields)


def test_config_from_config_dict_and_back():
  c = ml_collections.ConfigDict()
  c.num_samples = 500
  c.seed = 7
  c.noise = ml_collections.ConfigDict({'spam': 0.1})
  cfg = synthetic.WorldConfig.from_dict(c.to_dict())
  assert cfg.num_samples == 500 and cfg.seed == 7
  assert cfg.noise_fractions['spam'] == 0.1
  assert cfg.noise_fractions['misaligned'] == 0.15  # untouched types keep their default
  assert synthetic.WorldConfig.from_dict(cfg.to_dict()) == cfg
  assert synthetic.WorldConfig.from_dict({}) == synthetic.WorldConfig()
  with pytest.raises(ValueError, match='shard_size'):
    synthetic.WorldConfig(shard_size=20_000)


# --- CLI ------------------------------------------------------------------------------------


def test_cli(tmp_path, capsys):
  out = str(tmp_path / 'cli')
  assert synthetic.main(['--out', out, '--num-samples', '30', '--seed', '5',
                         '--shard-size', '10', '--trusted-size', '4', '--image-size', '32',
                         '--tasks', 'captions', '--noise', 'misaligned=0.3,spam=0.1',
                         '--quiet']) == 0
  summary = json.loads(capsys.readouterr().out)
  assert sum(summary['counts'].values()) == 30
  with open(os.path.join(out, 'world.json')) as f:
    meta = json.load(f)
  assert meta['config']['noise']['misaligned'] == 0.3
  assert meta['config']['noise']['spam'] == 0.1
  assert meta['config']['image_size'] == 32 and meta['seed'] == 5
  assert sorted(n for n in os.listdir(os.path.join(out, 'pool')) if n.endswith('.tar')) == [
      '00000000.tar', '00000001.tar', '00000002.tar']
  img = _decode(_image_of(next(iter(_read_tar(
      os.path.join(out, 'pool', '00000000.tar')).values())))[1])
  assert max(img.shape[:2]) >= 32


def test_cli_rejects_bad_noise(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    synthetic.main(['--out', str(tmp_path), '--noise', 'spam=2'])
  assert e.value.code == 2
  assert 'WorldConfig.noise.spam' in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    synthetic.main(['--out', str(tmp_path), '--noise', 'spam'])
  assert e.value.code == 2


def test_cli_help(capsys):
  with pytest.raises(SystemExit) as e:
    synthetic.main(['--help'])
  assert e.value.code == 0
  assert '--num-samples' in capsys.readouterr().out
