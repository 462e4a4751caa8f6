"""The pixel proxy (evaluate.proxy='pixels'): the conv stem, masking repeats (the masked
loss itself: test_losses.py), the evaluate stage end to end on the tiny world, the shared
image cache, resume and the config errors.

References are independent of the code under test: the conv stem's shape from the
arithmetic of stride-2 convolutions; the
stage's metrics from a proxy retrained here with train.train and scored with eval.py.
"""

import dataclasses
import json
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_same_training, read_eval_json, tiny_world_config, validate
from tads_jax import config as config_lib
from tads_jax import eval as eval_lib
from tads_jax import main
from tads_jax import pipeline
from tads_jax import report as report_lib
from tads_jax import train
from tads_jax.data import subset as subset_lib
from tads_jax.models import clip
from tads_jax.models import hf_export
from tads_jax.stages import evaluate


pytestmark = pytest.mark.usefixtures('fast_compiles')


# ---------------------------------------------------------------------------------------
# The conv stem.


def _flat(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat(v, f'{prefix}{k}/'))
    else:
      out[prefix + k] = tuple(v.shape)
  return out


def test_conv_stem_gives_the_patch_grid_and_patch_params_are_unchanged():
  patch = clip.get_config('tiny')  # 32 px, patch 8, width 64
  conv = dataclasses.replace(patch, vision_stem='conv', vision_stem_width=8)
  assert conv.stem_channels == (8, 16, 32)  # log2(8) = 3 stride-2 convolutions, doubling
  shapes = {}
  for name, c in (('patch', patch), ('conv', conv)):
    shapes[name] = _flat(nn.unbox(clip.abstract_params(clip.CLIP(c))))
  # The default stem's tree is the one Hugging Face checkpoints map onto, field for field.
  assert shapes['patch']['vision/patch_embed/kernel'] == (8 * 8 * 3, 64)
  assert not any('stem' in k for k in shapes['patch'])
  stem = {k: v for k, v in shapes['conv'].items() if k.startswith('vision/stem/')}
  assert stem == {'vision/stem/conv_0': (3, 3, 3, 8), 'vision/stem/conv_1': (3, 3, 8, 16),
                  'vision/stem/conv_2': (3, 3, 16, 32),
                  'vision/stem/norm_0/scale': (8,), 'vision/stem/norm_0/bias': (8,),
                  'vision/stem/norm_1/scale': (16,), 'vision/stem/norm_1/bias': (16,),
                  'vision/stem/norm_2/scale': (32,), 'vision/stem/norm_2/bias': (32,),
                  'vision/stem/proj/kernel': (32, 64)}
  rest = {k: v for k, v in shapes['conv'].items() if not k.startswith('vision/stem/')}
  assert rest == {k: v for k, v in shapes['patch'].items() if k != 'vision/patch_embed/kernel'}
  # Forward: 32 px -> 16 -> 8 -> 4, i.e. the 4 x 4 grid of 8 px patches.
  model = clip.CLIP(conv)
  params = nn.unbox(clip.init_params(model, jax.random.key(0)))
  pixels = jnp.asarray(np.random.default_rng(0).normal(size=(3, 32, 32, 3)), jnp.float32)
  tokens = model.apply({'params': params}, pixels, method=lambda m, x: m.vision(x))
  assert tokens.shape == (3, conv.embed_dim)
  stem_out = clip.ConvStem(conv.stem_channels, conv.vision_width, 1e-5).apply(
      {'params': params['vision']['stem']}, pixels)
  assert stem_out.shape == (3, 4, 4, 64)
  # Images that differ get different embeddings (the stem does not wash them out).
  assert float(jnp.abs(tokens[0] - tokens[1]).max()) > 1e-4


def test_conv_stem_config_errors_and_no_hf_export(tmp_path):
  with pytest.raises(ValueError, match=r"CLIPConfig.vision_stem: 'dense' is not one of"):
    clip.get_config('tiny', vision_stem='dense')
  with pytest.raises(ValueError, match=r'CLIPConfig.patch_size: .* power of two'):
    clip.get_config('tiny', vision_stem='conv', image_size=36, patch_size=12)
  config = clip.get_config('tiny', vision_stem='conv', vision_stem_width=8)
  params = clip.init_params(clip.CLIP(config), jax.random.key(0))
  with pytest.raises(ValueError, match=r"CLIPConfig.vision_stem: 'conv' cannot be exported"):
    hf_export.save_hf_checkpoint(str(tmp_path / 'clip'), config, params)
  assert not (tmp_path / 'clip').exists()


# ---------------------------------------------------------------------------------------
# Masking repeats in training.


def test_train_masks_repeats_only_when_asked():
  """A pixel run's fingerprint carries mask_repeats; an embedding run's dict is unchanged
  (so its checkpoints and cached results keep their keys)."""
  plain = train.TrainConfig(kind='embedding', batch_size=8, samples_seen=64)
  assert 'mask_repeats' not in plain.to_dict()
  masked = dataclasses.replace(plain, mask_repeats=True)
  assert masked.to_dict()['mask_repeats'] is True
  with pytest.raises(ValueError, match='TrainConfig.mask_repeats'):
    dataclasses.replace(plain, mask_repeats=1)


# ---------------------------------------------------------------------------------------
# The evaluate stage with the pixel proxy, on the tiny world.

STAGES = ('ingest', 'encoder', 'embed', 'select', 'evaluate')


def config():
  c = tiny_world_config()
  c.stages = STAGES
  c.embed.batch_size = 32
  c.selection.fraction = 0.5
  c.evaluate.update(dict(proxy='pixels', seeds=2, baselines=('full',)))
  c.evaluate.pixels.update(dict(
      model='tiny', image_size=32, context_length=16, batch_size=16, samples_seen=16 * 6,
      lr=1e-3, warmup=2, checkpoint_every=3))
  c.evaluate.pixels.model_overrides = {'vision_stem': 'conv', 'vision_stem_width': 8,
                                       'vision_layers': 1, 'text_layers': 1}
  return c


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('pixels'))
  status = main.run(config(), workdir)
  return workdir, status


def test_eval_json_records_the_pixel_proxy_with_finite_metrics(run):
  workdir, status = run
  assert status['evaluate'] == 'ran'
  result = read_eval_json(workdir)
  assert result['proxy'] == 'pixels'
  assert result['train']['kind'] == 'pixels' and result['train']['mask_repeats'] is True
  overrides = dict(result['train']['model_overrides'])
  assert overrides['vision_stem'] == 'conv' and overrides['image_size'] == 32
  assert result['seeds'] == [0, 1]
  for name, task in result['tasks'].items():
    assert len(task['per_seed']) == 2, name
    for r in task['per_seed']:
      assert all(np.isfinite(v) for v in r.values()), name
      assert 0 <= r['main'] <= 1
  assert np.all(np.isfinite(result['final_loss']))
  full = result['baselines']['full']
  assert full['proxy'] == 'pixels' and full['subset']['entries'] == full['subset']['pool']
  # The checkpoints sit beside where an embedding proxy's would, in a folder of their own.
  seed_dir = os.path.join(workdir, 'evaluate', 'selected', 'seed_1')
  assert os.listdir(seed_dir) == ['pixels']
  assert 6 in [int(d) for d in os.listdir(os.path.join(seed_dir, 'pixels', 'checkpoints'))
               if d.isdigit()]


def test_the_pool_is_decoded_once_for_every_subset_and_seed(run, tmp_path):
  workdir, _ = run
  result = read_eval_json(workdir)
  cache = result['pixel_cache']['dir']
  ingested = pipeline.read_done(os.path.join(workdir, 'ingest'))['summary']
  shards = len(ingested['per_source'])
  # The selected subset (first, half of each shard) decoded every shard; 'full' after it
  # decoded none, though it reads every shard.
  assert result['pixel_cache']['shards_decoded'] == shards
  assert result['baselines']['full']['pixel_cache']['shards_decoded'] == 0
  npys = sorted(f for f in os.listdir(cache) if f.endswith('.npy'))
  assert len(npys) == shards
  assert not [f for f in os.listdir(cache) if '.tmp-' in f]
  # The cached rows are the shards' images at the proxy's size, in ingest order.
  arrays = [np.load(os.path.join(cache, f), mmap_mode='r') for f in npys]
  assert sum(len(a) for a in arrays) == ingested['samples']
  assert all(a.dtype == np.uint8 and a.shape[1:] == (32, 32, 3) for a in arrays)
  # A third seed, in another copy of the workdir: trains one proxy per subset, decodes
  # nothing (the cache files are not rewritten).
  work = str(tmp_path / 'w')
  shutil.copytree(workdir, work)
  copied = os.path.join(work, os.path.relpath(cache, workdir))
  mtimes = {f: os.stat(os.path.join(copied, f)).st_mtime_ns for f in os.listdir(copied)}
  c = config()
  c.evaluate.seeds = 3
  assert main.run(c, work)['evaluate'] == 'ran'
  third = read_eval_json(work)
  assert third['pixel_cache']['shards_decoded'] == 0
  assert third['baselines']['full']['pixel_cache']['shards_decoded'] == 0
  assert {f: os.stat(os.path.join(copied, f)).st_mtime_ns for f in os.listdir(copied)} == mtimes
  assert third['average']['per_seed'][:2] == result['average']['per_seed']


def _seed_1(workdir):
  """What the stage trains seed 1 on, rebuilt from the workdir: (ctx, tokenizer, subset,
  uids, images, token_ids, train config)."""
  c = config()
  ctx = pipeline.Context(config=c, workdir=workdir)
  evaluate.check_embedded(ctx)
  tokenizer = evaluate.pixel_tokenizer(ctx, 16)
  subset = subset_lib.read_subset(os.path.join(workdir, 'subset.npy'))
  uids, images, token_ids, _, _ = evaluate.pixel_data(ctx, subset, tokenizer, 32)
  cfg = evaluate.train_config(c, 1, (len(tokenizer.tokenizer), tokenizer.eos_token_id))
  return ctx, tokenizer, subset, uids, images, token_ids, cfg


def test_metrics_match_a_pixel_proxy_trained_and_scored_independently(run):
  """Seed 1 retrained here from the cache's images, the tokenizer of the encoder folder and
  rows_from_subset; the tasks scored with eval.evaluate_tasks."""
  workdir, _ = run
  ctx, tokenizer, subset, uids, images, token_ids, cfg = _seed_1(workdir)
  params, _ = train.train(cfg, (images[np.arange(len(images))], token_ids),
                          rows=train.rows_from_subset(subset, uids))
  specs, splits = evaluate.pixel_tasks(ctx, 32)
  expected = eval_lib.evaluate_tasks(*train.encoders(cfg, params, tokenizer=tokenizer),
                                     specs, splits)['tasks']
  result = read_eval_json(workdir)
  for name, task in expected.items():
    assert result['tasks'][name]['per_seed'][1]['main'] == pytest.approx(task['main']), name


def test_a_killed_seed_resumes_to_the_same_result(run, tmp_path):
  workdir = str(tmp_path / 'w')
  shutil.copytree(run[0], workdir)
  before = read_eval_json(workdir)
  os.remove(os.path.join(workdir, 'evaluate', pipeline.DONE))
  os.remove(os.path.join(workdir, evaluate.EVAL))
  shutil.rmtree(os.path.join(workdir, evaluate.CACHE))  # results and images both gone
  # Seed 1 killed after step 4: its checkpoint at step 3 is all that is left.
  ctx, _, subset, uids, images, token_ids, cfg = _seed_1(workdir)
  seed_dir = os.path.join(workdir, 'evaluate', 'selected', 'seed_1', 'pixels')
  shutil.rmtree(seed_dir)
  train.train(cfg, (images, token_ids), workdir=seed_dir,
              rows=train.rows_from_subset(subset, uids), stop_after=4)
  checkpoints = os.path.join(seed_dir, 'checkpoints')
  assert sorted(int(d) for d in os.listdir(checkpoints) if d.isdigit()) == [3]
  assert main.run(ctx.config, workdir)['evaluate'] == 'ran'
  assert 6 in [int(d) for d in os.listdir(checkpoints) if d.isdigit()]
  after = read_eval_json(workdir)
  for name, task in before['tasks'].items():
    for s in range(2):
      assert after['tasks'][name]['per_seed'][s] == pytest.approx(task['per_seed'][s]), name


def test_a_moved_workdir_reads_its_own_world_not_the_original(run, tmp_path):
  """Ingest recorded the world's files where the workdir was. A copy whose original world
  is gone embeds, decodes, exports and reports from its own ingest/world, and trains the
  same proxies as the original."""
  workdir = str(tmp_path / 'w')
  shutil.copytree(run[0], workdir)
  before = read_eval_json(workdir)
  for stage in ('embed', 'evaluate'):  # redone: each reads the pool's images again
    shutil.rmtree(os.path.join(workdir, stage))
  shutil.rmtree(os.path.join(workdir, evaluate.CACHE))
  os.remove(os.path.join(workdir, evaluate.EVAL))
  c = config()
  c.stages = STAGES + ('export', 'report')
  c.export.shards = True
  original_world = os.path.join(run[0], 'ingest', 'world')
  os.rename(original_world, original_world + '.away')
  try:
    status = main.run(c, workdir)
  finally:
    os.rename(original_world + '.away', original_world)
  assert status['ingest'] == status['encoder'] == status['select'] == 'skipped'
  assert status['embed'] == status['evaluate'] == status['report'] == 'ran'
  after = read_eval_json(workdir)
  assert after['pixel_cache']['shards_decoded'] == 2
  for name, task in before['tasks'].items():
    for s in range(2):
      assert after['tasks'][name]['per_seed'][s] == pytest.approx(task['per_seed'][s]), name
  entries = subset_lib.read_subset(os.path.join(workdir, 'subset.npy'))
  exported = pipeline.read_done(os.path.join(workdir, 'export'))['summary']
  assert exported['samples'] == len(entries)
  with open(os.path.join(workdir, 'report.json')) as f:
    report = json.load(f)
  assert report['ground_truth']  # read from this workdir's world
  with open(os.path.join(workdir, 'report.html'), encoding='utf-8') as f:
    page = f.read()
  assert 'data:image/jpeg;base64' in page and 'image not found' not in page


def test_pixel_and_embedding_results_never_mix(run, tmp_path):
  """The same workdir evaluated with the embedding proxy: its own cache entries and
  checkpoints, its own numbers; the pixel entries stay."""
  workdir = str(tmp_path / 'w')
  shutil.copytree(run[0], workdir)
  pixels = read_eval_json(workdir)
  cache = os.path.join(workdir, evaluate.CACHE)
  before = {f for f in os.listdir(cache) if f.endswith('.json')}
  c = config()
  c.evaluate.update(dict(proxy='embedding', samples_seen=16 * 4, batch_size=16, lr=1e-3,
                         warmup=2, head='mlp'))
  assert main.run(c, workdir)['evaluate'] == 'ran'
  emb = read_eval_json(workdir)
  assert emb['proxy'] == 'embedding' and emb['train']['kind'] == 'embedding'
  after = {f for f in os.listdir(cache) if f.endswith('.json')}
  assert before < after and len(after - before) == 4  # 2 subsets x 2 seeds, all new
  # Its own numbers: the training losses (continuous; the tiny world's metrics can tie at
  # chance between two proxies).
  assert not np.allclose(emb['final_loss'], pixels['final_loss'])
  # Every figure of report.md's evaluation tables names the proxy that produced it.
  for result, label in ((pixels, 'pixel proxy'), (emb, 'embedding proxy')):
    lines = report_lib._evaluation_lines(result)  # pylint: disable=protected-access
    figures = [l for l in lines if l.startswith('| ') and not l.startswith(('| task',
                                                                           '| subset'))]
    assert len(figures) > len(result['tasks']), label
    assert all(l.endswith(f'| {label} |') for l in figures), label
    assert lines[0].startswith(f'{label}: 2 seeds;'), label


# ---------------------------------------------------------------------------------------
# The pixel check: the pixel proxy on a few subsets beside the embedding proxy.


def check_config(seeds=1):
  """The embedding proxy (as test_pixel_and_embedding_results_never_mix) on the selected
  subset and 'full', 2 seeds; the pixel check on both at `seeds` seeds (0: off)."""
  c = config()
  c.evaluate.update(dict(proxy='embedding', samples_seen=16 * 4, batch_size=16, lr=1e-3,
                         warmup=2, head='mlp'))
  c.evaluate.pixel_check.update(dict(seeds=seeds, baselines=('full',)))
  return c


def _forget_results(workdir):
  """Removes every per-seed result and the decoded images: what a stage run then reports
  it trained (or restored from its checkpoints) itself."""
  shutil.rmtree(os.path.join(workdir, evaluate.CACHE), ignore_errors=True)


def _per_seed(result, seed):
  """{(task, metric): value} of one seed, and its final training loss (continuous, unlike
  the tiny world's near-chance metrics)."""
  out = {(name, metric): value for name, task in result['tasks'].items()
         for metric, value in task['per_seed'][seed].items()}
  return dict(out, final_loss=result['final_loss'][seed])


def test_pixel_check_equals_the_pixel_proxy_and_leaves_the_embedding_proxy_alone(run,
                                                                                 tmp_path):
  """The pixel check retrained from scratch gives the numbers the evaluate.proxy='pixels'
  run gave for seed 0 of the same subsets; the embedding results equal a run without the
  check; a rerun is skipped, and one that lost the results restores them from the
  checkpoints, kept apart from the embedding proxy's."""
  workdir = str(tmp_path / 'w')
  shutil.copytree(run[0], workdir)
  pixels = read_eval_json(workdir)
  _forget_results(workdir)
  assert main.run(check_config(seeds=0), workdir)['evaluate'] == 'ran'
  plain = read_eval_json(workdir)
  assert 'pixel_check' not in plain
  assert 'pixel_check' not in pipeline.read_done(os.path.join(workdir, 'evaluate'))['summary']
  _forget_results(workdir)
  c = check_config(seeds=1)
  assert main.run(c, workdir)['evaluate'] == 'ran'
  checked = read_eval_json(workdir)
  # The embedding proxy's results, retrained, are those of the run without the check.
  for run_plain, run_checked in ((plain, checked),
                                 (plain['baselines']['full'], checked['baselines']['full'])):
    assert run_checked['proxy'] == 'embedding'
    for s in range(2):
      assert _per_seed(run_checked, s) == pytest.approx(_per_seed(run_plain, s))
    assert run_checked['average']['per_seed'] == pytest.approx(run_plain['average']['per_seed'])
  # The pixel check: seed 0 of what evaluate.proxy='pixels' produced on the same subsets.
  check = checked['pixel_check']
  assert check['seeds'] == 1 and sorted(check['baselines']) == ['full']
  for mine, theirs in ((check['selected'], pixels),
                       (check['baselines']['full'], pixels['baselines']['full'])):
    assert mine['proxy'] == 'pixels' and mine['seeds'] == [0]
    assert mine['train'] == theirs['train']
    assert mine['subset']['sha256'] == theirs['subset']['sha256']
    assert _per_seed(mine, 0) == pytest.approx(_per_seed(theirs, 0))
  summary = pipeline.read_done(os.path.join(workdir, 'evaluate'))['summary']
  assert summary['pixel_check'] == {
      'seeds': 1, 'average_mean': check['selected']['average']['mean'],
      'average_std': 0.0, 'baselines': {'full': {
          'mean': check['baselines']['full']['average']['mean'], 'std': 0.0}}}
  # Both proxies' checkpoints, apart: seed_0/checkpoints and seed_0/pixels/checkpoints.
  for folder in ('selected', os.path.join('baselines', 'full')):
    seed_dir = os.path.join(workdir, 'evaluate', folder, 'seed_0')
    assert sorted(os.listdir(seed_dir)) == ['checkpoints', 'pixels'], folder
  assert os.listdir(os.path.join(workdir, 'evaluate', 'selected', 'seed_1')) == ['checkpoints']
  # The same config again: nothing to do.
  assert set(main.run(c, workdir).values()) == {'skipped'}
  # A run that lost eval.json and every cached result (a kill before the stage was done):
  # the finished seeds are restored from their checkpoints, not retrained.
  pixel_step = os.path.join(workdir, 'evaluate', 'selected', 'seed_0', 'pixels',
                            'checkpoints', '6')
  mtime = os.stat(pixel_step).st_mtime_ns
  os.remove(os.path.join(workdir, 'evaluate', pipeline.DONE))
  os.remove(os.path.join(workdir, evaluate.EVAL))
  _forget_results(workdir)
  assert main.run(c, workdir)['evaluate'] == 'ran'
  assert os.stat(pixel_step).st_mtime_ns == mtime
  again = read_eval_json(workdir)['pixel_check']
  assert _per_seed(again['selected'], 0) == pytest.approx(_per_seed(check['selected'], 0))


def test_pixel_settings_rerun_the_stage_only_when_they_are_the_proxy():
  from configs import default  # pylint: disable=g-import-not-at-top
  upstream = {name: name for name in ('ingest', 'embed', 'features', 'select')}
  fingerprint = lambda c: pipeline.fingerprint(evaluate.STAGE, c, upstream)
  c = default.get_config()
  c.evaluate.pixel_check.seeds = 0  # the pixel check reads the pixel settings when on
  before = fingerprint(c)
  c.evaluate.pixels.lr = 1e-4
  assert fingerprint(c) == before  # an embedding evaluation is not redone (nor cleared)
  c.evaluate.proxy = 'pixels'
  pixels = fingerprint(c)
  assert pixels != before
  c.evaluate.pixels.lr = 2e-4
  assert fingerprint(c) != pixels


# ---------------------------------------------------------------------------------------
# Config errors.


@pytest.mark.parametrize('field,value,message', [
    ('proxy', 'tokens', r"config.evaluate.proxy: 'tokens' is not one of embedding, pixels"),
    ('pixels.model', 'vit_huge', r"config.evaluate.pixels.model: 'vit_huge' is not one of"),
    ('pixels.batch_size', 0, r'config.evaluate.pixels.batch_size: expected an integer >= 1'),
    ('pixels.samples_seen', 8, r'config.evaluate.pixels.samples_seen: 8 is less than one'),
    ('pixels.lr', -1.0, r'config.evaluate.pixels.lr: expected a finite number >= 0'),
    ('pixels.dtype', 'float16', r"config.evaluate.pixels.dtype: 'float16' is not one of"),
    ('pixels.image_size', 36, r'config.evaluate.pixels.model_overrides.patch_size: .* does '
                              r'not divide image_size=36'),
    ('pixels.model_overrides', {'vision_stem': 'fancy'},
     r"config.evaluate.pixels.model_overrides.vision_stem: 'fancy' is not one of"),
    ('pixels.model_overrides', {'image_size': 64},
     r'config.evaluate.pixels.model_overrides.image_size: set by '
     r'config.evaluate.pixels.image_size'),
])
def test_bad_pixel_settings_fail_validation_in_one_line_naming_the_field(field, value,
                                                                         message):
  c = config()
  node = c.evaluate
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  with c.unlocked():
    node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=message) as error:
    validate(c)
  assert '\n' not in str(error.value)


def test_default_and_datacomp_pixel_settings_validate_and_datacomp_needs_tars(tmp_path):
  from configs import default  # pylint: disable=g-import-not-at-top
  from configs import pixels_vit  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.evaluate.proxy = 'pixels'
  c.evaluate.pixel_check.seeds = 0
  validate(c)
  model = evaluate.train_config(c, 0).clip_config()
  assert (model.vision_tower, model.image_size) == ('cnn', c.encoder.image_size)
  assert model.vision_cnn == tuple(map(tuple, c.encoder.model_overrides.vision_cnn))
  c = pixels_vit.get_config()
  validate(c)
  model = evaluate.train_config(c, 0).clip_config()
  assert (model.vision_tower, model.vision_stem, model.image_size) == ('vit', 'conv', 32)
  import test_datacomp_pool as dc  # pylint: disable=g-import-not-at-top
  from configs import datacomp as datacomp_config  # pylint: disable=g-import-not-at-top
  data = tmp_path / 'data'
  dc._tiny_pool(str(data / 'shards'), dim=8)  # pylint: disable=protected-access
  dc._stub_checkpoint(data / 'clip-vit-base-patch32', 8)  # pylint: disable=protected-access
  for name in ('wds_mscoco_captions', 'wds_flickr30k'):
    for split in ('train', 'test'):
      dc._retrieval_shards(str(data / name / split))  # pylint: disable=protected-access
  c = datacomp_config.get_config(str(data))
  c.evaluate.proxy = 'pixels'
  validate(c)  # DataComp small's ViT-B/32 settings validate on a CPU host
  cfg = evaluate.train_config(c, 0)
  model = cfg.clip_config()
  assert (cfg.model, model.vision_stem, model.image_size, cfg.batch_size, cfg.samples_seen,
          cfg.lr, cfg.warmup, cfg.weight_decay, cfg.b2, cfg.eps) == (
              'vit_b32', 'patch', 224, 4096, 12_800_000, 5e-4, 500, 0.2, 0.98, 1e-6)
  os.remove(data / 'shards' / '00000000.tar')
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config\.evaluate\.proxy: 'pixels' trains on the pool's images, "
                           r'and this DataComp pool has no tars') as error:
    validate(c)
  assert '\n' not in str(error.value)
  c.evaluate.proxy = 'embedding'
  validate(c)
  c.evaluate.pixel_check.seeds = 1  # the pixel check trains on the images too
  with pytest.raises(config_lib.ConfigError,
                     match=r'^config\.evaluate\.pixel_check\.seeds: 1 trains the pixel proxy '
                           r"on the pool's images, and this DataComp pool has no tars .*"
                           r'set evaluate\.pixel_check\.seeds=0$') as error:
    validate(c)
  assert '\n' not in str(error.value)


# ---------------------------------------------------------------------------------------
# Sharding: the pixel proxy over 8 devices equals one device.


def check_sharded_pixel_proxy():
  """The conv-stem CLIP with repeats masked, data-parallel over 8 devices, equals one
  device (the batch's row ids are split over the devices like the batch)."""
  from tads_jax import sharding  # pylint: disable=g-import-not-at-top
  assert jax.device_count() >= 8, jax.devices()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
  ids = rng.integers(1, 60, size=(12, 8)).astype(np.int32)
  ids[:, -1] = 63
  rows = np.repeat(np.arange(12), 2)  # every row twice: batches of 16 hold repeats
  cfg = train.TrainConfig(
      kind='pixels', model='tiny', batch_size=16, samples_seen=16 * 3, lr=1e-3, warmup=1,
      eps=1e-3, mask_repeats=True, model_overrides=dict(
          vocab_size=64, eos_token_id=63, context_length=8, vision_layers=1, text_layers=1,
          vision_stem='conv', vision_stem_width=8))
  ref = train.train(cfg, (images, ids), rows=rows)
  got = train.train(cfg, (images, ids), rows=rows, mesh=sharding.make_mesh(8, 1))
  assert_same_training(got, ref)


@pytest.mark.slow
def test_sharded_pixel_proxy_matches_single_device(on_8_devices):
  on_8_devices(check_sharded_pixel_proxy)
