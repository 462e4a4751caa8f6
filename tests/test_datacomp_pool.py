"""DataComp pools with tasks: tars beside the metadata parquet + npz, tasks embedded in the
pool's own CLIP space, checks at config validation, and configs/datacomp.py.

The end-to-end test builds a DataComp-format pool from the synthetic world (its tars, a
metadata parquet in another row order, and an npz written by `load_clip` of the project's
own reference encoder, trained on the world's trusted set) and runs TADS through relevance,
learn, select and evaluate; the reference is the subset the webdataset route picks from the
same world and encoder.
"""

import collections
import hashlib
import io
import json
import os
import shutil

import ml_collections
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tads_jax import config as config_lib
from tads_jax import main
from tads_jax.data import datacomp
from tads_jax.data import subset as subset_lib
from tads_jax.data import tar_writer
from tads_jax.data import tasks as tasks_lib
from tads_jax.data import webdataset
from tads_jax.models import api
from tads_jax.stages import embed
from tads_jax.stages import ingest
from tads_jax.stages import learn
from configs import datacomp as datacomp_config
from configs import default
from conftest import tiny_world_config, validate

OPERATORS = ('width', 'aspect_ratio', 'sharpness', 'words', 'clip_score',
             'flipped_clip_score', 'caption_specificity')
IMAGE_OPERATORS = ('width', 'aspect_ratio', 'sharpness', 'flipped_clip_score')


def _jpeg(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def _metadata(uids, captions, image_emb, text_emb, sizes=None, sha=None, dim_l14=12):
  """A DataComp metadata table and npz arrays (l14 keys of another width, unused)."""
  n = len(uids)
  sizes = sizes or [(-1, -1)] * n
  with np.errstate(invalid='ignore'):  # a zero row: NaN, as a broken score would be
    cos = np.sum(image_emb * text_emb, 1) / (np.linalg.norm(image_emb, axis=1) *
                                             np.linalg.norm(text_emb, axis=1))
  table = {'uid': list(uids), 'url': [f'http://x/{i}' for i in range(n)],
           'text': list(captions),
           'original_width': [w for w, _ in sizes], 'original_height': [h for _, h in sizes],
           'clip_b32_similarity_score': cos.tolist(),
           'clip_l14_similarity_score': [0.0] * n,
           'sha256': sha or [''] * n}
  rng = np.random.default_rng(1)
  emb = {'b32_img': image_emb, 'b32_txt': text_emb,
         'l14_img': rng.normal(size=(n, dim_l14)), 'l14_txt': rng.normal(size=(n, dim_l14))}
  return table, emb


def _stub_checkpoint(folder, dim):
  """A checkpoint folder as validation sees it: config.json's projection_dim only."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    json.dump({'projection_dim': dim, 'model_type': 'clip'}, f)
  return str(folder)


def _tiny_pool(root, dim=8, n=6, tars=True):
  """A small DataComp pool: 00000000.{parquet,npz[,tar]}; returns the parquet path."""
  rng = np.random.default_rng(0)
  os.makedirs(root, exist_ok=True)
  uids = [f'{i:032x}' for i in range(n)]
  captions = [f'a photo of thing {i}' for i in range(n)]
  path = os.path.join(root, '00000000.parquet')
  table, emb = _metadata(uids, captions, rng.normal(size=(n, dim)), rng.normal(size=(n, dim)))
  datacomp.write_metadata(path, table, emb)
  if tars:
    images = [rng.integers(0, 256, (24, 20, 3), dtype=np.uint8) for _ in range(n)]
    tar_writer.write_shard(datacomp.tar_path(path), [
        (f'{i:09d}', {'jpg': _jpeg(images[i]), 'txt': captions[i], 'json': {'uid': uids[i]}})
        for i in range(n)])
  return path


# ---- ingest: the tars beside the metadata ------------------------------------------------


def test_ingest_joins_tars_to_metadata_by_uid(tmp_path):
  """Rows follow the tar; captions, sizes and embeddings the metadata; sha256 the tar's
  bytes. A metadata row without an image (not downloaded), a tar sample without metadata,
  a corrupt image and a row with an unusable embedding are skipped and counted once."""
  rng = np.random.default_rng(3)
  images = [rng.integers(0, 256, (30 + i, 26, 3), dtype=np.uint8) for i in range(7)]
  data = [_jpeg(im) for im in images]
  data[2] = data[2][:120]  # corrupt
  uids = [f'{i:032x}' for i in range(8)]
  tar = [(f'k{i}', {'jpg': data[i], 'txt': f'tar caption {i}', 'json': {'uid': uids[i]}})
         for i in range(7)]
  tar.append(('stray', {'jpg': data[0], 'txt': 'no metadata',
                        'json': {'uid': 'f' * 32}}))
  path = str(tmp_path / 'pool' / '00000000.parquet')
  os.makedirs(os.path.dirname(path))
  tar_writer.write_shard(datacomp.tar_path(path), tar)
  # Metadata: reversed order, uid 7 never downloaded, uid 4 with a zero embedding.
  order = [7, 6, 5, 4, 3, 2, 1, 0]
  image_emb, text_emb = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
  image_emb[order.index(4)] = 0
  table, emb = _metadata([uids[i] for i in order], [f'metadata caption {i}' for i in order],
                         image_emb, text_emb, sizes=[(500 + i, 400 + i) for i in order],
                         sha=['0' * 64] * 8)
  datacomp.write_metadata(path, table, emb)
  c = default.get_config()
  c.stages = ('ingest',)
  c.selector.name = 'random'
  c.pool.format = 'datacomp'
  c.pool.metadata = str(tmp_path / 'pool' / '*.parquet')
  del c['tasks']
  c.tasks = []
  work = str(tmp_path / 'work')
  main.run(c, work)
  samples = pq.read_table(os.path.join(work, 'ingest', ingest.SAMPLES)).to_pydict()
  kept = [0, 1, 3, 5, 6]
  assert samples['uid'] == [uids[i] for i in kept]  # tar order
  assert samples['key'] == [f'k{i}' for i in kept]
  assert samples['caption'] == [f'metadata caption {i}' for i in kept]
  assert samples['width'] == [500 + i for i in kept]  # original sizes, as DataComp's filters
  assert samples['sha256'] == [hashlib.sha256(data[i]).hexdigest() for i in kept]
  assert samples['image_format'] == ['jpg'] * 5
  summary = main.pipeline.read_done(os.path.join(work, 'ingest'))['summary']
  assert summary['skips'] == {'bad_embedding': 1, 'corrupt_image': 1, 'no_image': 1,
                              'not_in_metadata': 1}
  assert summary['images'] and summary['embedding_dim'] == 8
  assert summary['per_source'][0]['tar'] == datacomp.tar_path(path)
  # The images are read back where the features stage reads them.
  assert ingest.image_shard(main.pipeline.Context(c, work), path) == datacomp.tar_path(path)


def test_ingest_refuses_metadata_files_of_two_widths(tmp_path):
  _tiny_pool(str(tmp_path / 'a'), dim=8, tars=False)
  _tiny_pool(str(tmp_path / 'b'), dim=10, tars=False)
  for ext in ('parquet', 'npz'):
    os.rename(tmp_path / 'b' / f'00000000.{ext}', tmp_path / 'a' / f'00000001.{ext}')
  c = _datacomp_config(str(tmp_path / 'a' / '*.parquet'))
  c.stages = ('ingest',)
  c.selector.name = 'random'
  with pytest.raises(ValueError, match=r'00000001\.npz: b32 embeddings of dimension 10, but '
                                       r'.*00000000\.npz has 8'):
    main.run(c, str(tmp_path / 'work'))


def test_tasks_are_embedded_with_the_pools_checkpoint(tmp_path, tasks_json):
  """The pool is read from its npz (not embedded); every task split is embedded with
  encoder.checkpoint, as load_clip of that folder embeds it."""
  pytest.importorskip('torch')
  import test_hf_convert as hf_helpers  # pylint: disable=g-import-not-at-top
  folder = hf_helpers.write_folder(str(tmp_path / 'clip'),
                                   hf_helpers.torch_model(hf_helpers.hf_config()))
  path = _tiny_pool(str(tmp_path / 'pool'), dim=40, tars=False)  # projection_dim 40
  c = _datacomp_config(str(tmp_path / 'pool' / '*.parquet'), folder, tasks_json)
  c.stages = ('ingest', 'encoder', 'embed')
  c.selector.name = 'random'
  c.embed.batch_size = 8
  work = str(tmp_path / 'work')
  assert main.run(c, work) == {'ingest': 'ran', 'encoder': 'ran', 'embed': 'ran'}
  summary = main.pipeline.read_done(os.path.join(work, 'embed'))['summary']
  assert summary['pool_ships_embeddings'] and summary['embedded'] == 0
  assert summary['encoder']['embed_dim'] == 40
  assert not os.path.exists(os.path.join(work, 'embed', 'shards'))
  ctx = main.pipeline.Context(config=c, workdir=work)
  uids, image_emb, _, _ = embed.pool_embeddings(ctx)
  shard = datacomp.read_metadata(path)
  assert uids == shard.uids
  np.testing.assert_allclose(image_emb, shard.image_emb, atol=1e-3)  # float16-rounded
  reference = api.load_clip(folder, batch_size=4)
  specs = tasks_lib.parse_tasks(tasks_json)
  assert {r['task'] for r in summary['tasks']} == {s.name for s in specs}
  got = dict(embed.task_embeddings(ctx, 'train'))
  for spec, split in [(s, split) for s in specs for split in tasks_lib.SPLITS]:
    arrays = dict(embed.task_embeddings(ctx, split))[spec] if split == 'eval' else got[spec]
    data = tasks_lib.load_split(spec, split, hf_helpers.IMAGE)
    np.testing.assert_allclose(arrays['image_emb'], reference.encode_images(list(data.images)),
                               atol=1e-3)
    if spec.kind == 'classification':
      prompts = [t.format(n) for n in spec.classnames for t in spec.templates]
      np.testing.assert_allclose(
          arrays['class_text_emb'].reshape(len(prompts), -1), reference.encode_texts(prompts),
          atol=1e-3)
    else:
      flat = [t for caps in data.captions for t in caps]
      np.testing.assert_allclose(arrays['text_emb'], reference.encode_texts(flat), atol=1e-3)


# ---- config validation: before any work, naming the fields -------------------------------


def _datacomp_config(metadata, checkpoint='', tasks=None):
  c = default.get_config()
  c.pool.format = 'datacomp'
  c.pool.metadata = metadata
  c.encoder.checkpoint = checkpoint
  del c['tasks']
  c.tasks = tasks if tasks is not None else []
  return c


def _world_tasks(tmp_path_factory):
  """The synthetic world's task list (webdataset shards), generated once."""
  from tads_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  out = str(tmp_path_factory.mktemp('tasks_world'))
  cfg = synthetic.WorldConfig(num_samples=4, shard_size=4, trusted_size=0,
                              train_per_class=1, eval_per_class=1, retrieval_train=2,
                              retrieval_eval=2)
  return synthetic.generate_world(out, cfg)['paths']['tasks_json']


@pytest.fixture(scope='module')
def tasks_json(tmp_path_factory):
  return _world_tasks(tmp_path_factory)


def test_npz_dims_reads_headers_without_loading(tmp_path, monkeypatch):
  path = _tiny_pool(str(tmp_path), dim=8, tars=False)
  monkeypatch.setattr(np, 'load', None)  # a loaded array would need it
  assert datacomp.npz_dims(path, 'b32') == {'b32_img': (6, 8), 'b32_txt': (6, 8)}
  assert datacomp.npz_dims(path, 'l14') == {'l14_img': (6, 12), 'l14_txt': (6, 12)}
  monkeypatch.undo()
  np.savez(datacomp.npz_path(path), b32_img=np.zeros((6, 8), np.float16))
  with pytest.raises(ValueError, match=r"00000000\.npz: no key 'b32_txt'"):
    datacomp.npz_dims(path, 'b32')


def test_tasks_need_the_pools_checkpoint_before_any_work(tmp_path, tasks_json):
  path = _tiny_pool(str(tmp_path / 'pool'), dim=8)
  c = _datacomp_config(str(tmp_path / 'pool' / '*.parquet'), tasks=tasks_json)
  c.selector.name = 'tads'
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.encoder\.checkpoint: config\.tasks .*embed, features, "
                           r"evaluate.*config\.pool\.format='datacomp'.*"
                           r"openai/clip-vit-base-patch32"):
    main.run(c, str(tmp_path / 'work'))
  assert not (tmp_path / 'work').exists()
  # A selector reading task embeddings names itself, even without those stages.
  c.stages = ('ingest', 'encoder', 'select')
  c.selector.name = 'normsim'
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.encoder\.checkpoint: selector 'normsim'"):
    validate(c)
  # A checkpoint of another width than the npz fails, naming both fields and the file.
  c = _datacomp_config(str(tmp_path / 'pool' / '*.parquet'),
                       _stub_checkpoint(tmp_path / 'clip512', 512), tasks_json)
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.encoder\.checkpoint: .*clip512' embeds in 512 dimensions "
                           r".*00000000\.npz key 'b32_img' has shape \(6, 8\) "
                           r"\(config\.pool\.embedding_model='b32'\)"):
    main.run(c, str(tmp_path / 'work'))
  assert not (tmp_path / 'work').exists()
  c.pool.embedding_model = 'l14'  # 12 wide in this npz
  with pytest.raises(config_lib.ConfigError, match=r"'l14_img' has shape \(6, 12\)"):
    validate(c)
  c.encoder.checkpoint = _stub_checkpoint(tmp_path / 'clip12', 12)
  validate(c)
  # With the right checkpoint TADS validates on a DataComp pool.
  c = _datacomp_config(str(tmp_path / 'pool' / '*.parquet'),
                       _stub_checkpoint(tmp_path / 'clip8', 8), tasks_json)
  c.selector.name = 'tads'
  validate(c)
  assert os.path.exists(path)


def test_missing_tars_and_tasks_fail_before_any_work(tmp_path, tasks_json):
  _tiny_pool(str(tmp_path / 'pool'), dim=8, tars=False)
  c = _datacomp_config(str(tmp_path / 'pool' / '*.parquet'),
                       _stub_checkpoint(tmp_path / 'clip8', 8), tasks_json)
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'learn', 'select', 'export')
  c.export.shards = True
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.export\.shards: .*config\.pool\.metadata; e\.g\. no '
                           r'.*00000000\.tar'):
    main.run(c, str(tmp_path / 'work'))
  c.export.shards = False
  validate(c)  # parquet + npz alone: the image operators are left out, not an error
  # Only some metadata files with their tars: the first missing one is named.
  _tiny_pool(str(tmp_path / 'pool2'), dim=8, tars=True)
  os.rename(tmp_path / 'pool2' / '00000000.parquet', tmp_path / 'pool' / '00000001.parquet')
  os.rename(tmp_path / 'pool2' / '00000000.npz', tmp_path / 'pool' / '00000001.npz')
  os.rename(tmp_path / 'pool2' / '00000000.tar', tmp_path / 'pool' / '00000001.tar')
  with pytest.raises(config_lib.ConfigError,
                     match=r'config\.pool\.metadata: .*00000000\.tar: missing, while 1 of the 2'):
    validate(c)
  # The evaluate stage needs tasks, which a DataComp pool does not bring.
  os.remove(tmp_path / 'pool' / '00000001.tar')
  c = _datacomp_config(str(tmp_path / 'pool' / '*.parquet'))
  c.stages = ('ingest', 'encoder', 'embed', 'select', 'evaluate')
  c.selector.name = 'random'
  with pytest.raises(config_lib.ConfigError, match=r'config\.tasks: the evaluate stage'):
    main.run(c, str(tmp_path / 'work'))
  assert not (tmp_path / 'work').exists()


# ---- configs/datacomp.py ------------------------------------------------------------------


def _retrieval_shards(folder, n=3):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  tar_writer.write_shard(os.path.join(folder, '00000.tar'), [
      (f's{i}', {'jpg': _jpeg(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)),
                 'txt': f'caption one of {i}\ncaption two of {i}'}) for i in range(n)])


@pytest.mark.usefixtures('tfds_tmp')
def test_datacomp_config_validates_with_stand_in_data(tmp_path):
  """The ready config, its paths pointed at stand-in data: a small pool with tars, a
  checkpoint of the npz's width, retrieval shards, and TFDS mock data for ImageNet and
  CIFAR-100 (whose class counts must be TFDS's)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data = tmp_path / 'data'
  _tiny_pool(str(data / 'shards'), dim=8)
  _stub_checkpoint(data / 'clip-vit-base-patch32', 8)
  for name in ('wds_mscoco_captions', 'wds_flickr30k'):
    for split in ('train', 'test'):
      _retrieval_shards(str(data / name / split))
  c = datacomp_config.get_config(str(data))
  assert c.pool.format == 'datacomp' and c.selector.name == 'tads'
  validate(c)
  specs = tasks_lib.parse_tasks(list(c.tasks))
  assert [s.name for s in specs] == ['imagenet1k', 'cifar100', 'mscoco', 'flickr30k']
  assert len(specs[0].classnames) == 1000 and len(specs[1].classnames) == 100
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    for spec in specs:
      for split in tasks_lib.SPLITS:
        got = tasks_lib.load_split(spec, split, 16)  # class counts checked against TFDS
        assert len(got.keys) == 3
  # Without the DataComp checkpoint the tasks cannot be embedded: named before any work.
  c.encoder.checkpoint = ''
  with pytest.raises(config_lib.ConfigError, match=r'config\.encoder\.checkpoint'):
    validate(c)


# ---- end to end: the DataComp route against the webdataset route ---------------------------


def _route_config(world: str, checkpoint: str) -> ml_collections.ConfigDict:
  """The webdataset route over the world's pool tars, with the given reference encoder."""
  c = default.get_config()
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'learn', 'select', 'evaluate',
              'report')
  c.pool.format = 'webdataset'
  c.pool.shards = os.path.join(world, 'pool', '*.tar')
  c.pool.ground_truth = os.path.join(world, 'ground_truth.parquet')
  c.encoder.checkpoint = checkpoint
  c.embed.batch_size = 32
  del c['tasks']
  c.tasks = os.path.join(world, 'tasks.json')
  c.features = ml_collections.ConfigDict(dict(
      operators=OPERATORS, chunk=32, kmeans_k=4, kmeans_iters=3, alpha=0.5,
      semdedup_eps=0.05, relevance_top_m=2, retrieval_prototypes=2))
  c.selector.name = 'tads'
  c.tads.meta.update(dict(steps=6, batch_size=16, unroll=2, task_batch_size=8,
                          checkpoint_every=3, head_hidden=32))
  c.evaluate.update(dict(samples_seen=16 * 12, seeds=1, batch_size=16, lr=1e-3, warmup=2,
                         baselines=('full',)))
  return c


def build_datacomp_pool(world: str, checkpoint: str, out: str) -> list:
  """The world's pool in DataComp's layout: each tar copied, beside it a metadata parquet
  (rows reversed, plus one row never downloaded) and an npz of float16 b32 embeddings from
  load_clip(checkpoint), independently of the embed stage. Returns the parquet paths."""
  clip = api.load_clip(checkpoint, batch_size=32)
  rng = np.random.default_rng(0)
  os.makedirs(out, exist_ok=True)
  paths = []
  for tar in webdataset.expand_shards(os.path.join(world, 'pool', '*.tar')):
    path = os.path.join(out, os.path.basename(tar)[:-len('.tar')] + '.parquet')
    shutil.copy(tar, datacomp.tar_path(path))
    first = {}
    for s in webdataset.iter_shard(tar, collections.Counter(), decode=True):
      first.setdefault(s.uid, s)
    samples = list(first.values())[::-1]
    image_emb = clip.encode_images([s.image for s in samples])  # [n, E]
    text_emb = clip.encode_texts([s.caption for s in samples])
    uids = [s.uid for s in samples] + [f'{rng.integers(2**62):032x}']  # not downloaded
    captions = [s.caption for s in samples] + ['an image that failed to download']
    image_emb = np.concatenate([image_emb, rng.normal(size=(1, image_emb.shape[1]))])
    text_emb = np.concatenate([text_emb, rng.normal(size=(1, text_emb.shape[1]))])
    sizes = [(s.image.shape[1], s.image.shape[0]) for s in samples] + [(64, 64)]
    sha = [hashlib.sha256(s.image_bytes).hexdigest() for s in samples] + ['0' * 64]
    table, emb = _metadata(uids, captions, image_emb, text_emb, sizes, sha)
    datacomp.write_metadata(path, table, emb)
    paths.append(path)
  return paths


@pytest.fixture(scope='module')
def routes(tmp_path_factory):
  """(webdataset workdir, DataComp workdir, DataComp config) over one world and encoder."""
  base = tmp_path_factory.mktemp('routes')
  trained = str(base / 'encoder')
  c = tiny_world_config()
  c.pool.synthetic.update(dict(num_samples=200, train_per_class=2, eval_per_class=2,
                               retrieval_train=8, retrieval_eval=8))
  main.run(c, trained)  # ingest (the world) and the reference encoder trained on it
  world = os.path.join(trained, 'ingest', 'world')
  checkpoint = os.path.join(trained, 'encoder', 'clip')

  wds = str(base / 'webdataset')
  assert set(main.run(_route_config(world, checkpoint), wds).values()) == {'ran'}

  build_datacomp_pool(world, checkpoint, str(base / 'datacomp'))
  dc = _route_config(world, checkpoint)
  dc.pool.format = 'datacomp'
  dc.pool.metadata = str(base / 'datacomp' / '*.parquet')
  dc.stages = dc.stages[:-1] + ('export', 'report')
  dc.export.shards = True
  work = str(base / 'datacomp_work')
  assert set(main.run(dc, work).values()) == {'ran'}
  return wds, work, dc


def _agreement(wds: str, work: str) -> dict:
  a = set(subset_lib.array_to_uids(subset_lib.read_subset(os.path.join(wds, 'subset.npy'))))
  b = set(subset_lib.array_to_uids(subset_lib.read_subset(os.path.join(work, 'subset.npy'))))
  fa = pq.read_table(os.path.join(wds, 'scores.parquet'))
  fb = pq.read_table(os.path.join(work, 'scores.parquet'))
  diffs = {}
  for name in fa.column_names:
    if name in fb.column_names and (name.startswith('relevance_') or name in (
        'clip_score', 'flipped_clip_score', 'score', 'cluster_weight')):
      x = fa.column(name).to_numpy().astype(np.float64)
      y = fb.column(name).to_numpy().astype(np.float64)
      diffs[name] = float(np.max(np.abs(x - y)))
  score_a, score_b = fa.column('score').to_numpy(), fb.column('score').to_numpy()
  ranks = [np.argsort(np.argsort(s)) for s in (score_a, score_b)]
  return {'subset': len(a), 'overlap': len(a & b), 'share': len(a & b) / len(a),
          'score_rank_corr': float(np.corrcoef(*ranks)[0, 1]), 'max_abs_diff': diffs,
          'same_clusters': bool(np.array_equal(fa.column('cluster').to_numpy(),
                                               fb.column('cluster').to_numpy()))}


@pytest.mark.slow
def test_tads_on_a_datacomp_pool_agrees_with_the_webdataset_route(routes):
  wds, work, dc = routes
  done = lambda stage: main.pipeline.read_done(os.path.join(work, stage))['summary']
  # The pool: the same samples in the same order, its rows' bytes hashed from the tars.
  a = pq.read_table(os.path.join(wds, 'ingest', ingest.SAMPLES))
  b = pq.read_table(os.path.join(work, 'ingest', ingest.SAMPLES))
  for column in ('uid', 'key', 'caption', 'width', 'height', 'sha256'):
    assert a.column(column).to_pylist() == b.column(column).to_pylist(), column
  assert done('ingest')['skips'] == {'no_image': 4}  # one never-downloaded row per file
  # The pool was not re-embedded; the tasks were, with the pool's checkpoint.
  embed = done('embed')
  assert embed['pool_ships_embeddings'] and embed['embedded'] == 0
  assert embed['encoder']['checkpoint'] == os.path.abspath(dc.encoder.checkpoint)
  assert {r['task'] for r in embed['tasks']} == {
      t['name'] for t in json.load(open(dc.tasks))}
  # Every operator ran (the tars give pixels), and task relevance too.
  features = done('features')
  assert features['operators'] == list(OPERATORS) and features['operators_left_out'] == []
  assert any(c.startswith('relevance_') for c in features['columns'])
  assert done('learn')['selector'] == 'tads'
  history = learn.load_state(os.path.join(work, 'learn', 'state.msgpack'))
  assert history['history']['step'] == list(range(1, 7))
  evaluation = json.load(open(os.path.join(work, 'eval.json')))
  assert set(evaluation['tasks']) == set(json.load(open(os.path.join(wds, 'eval.json')))['tasks'])
  assert done('export')['samples'] == len(subset_lib.read_subset(
      os.path.join(work, 'subset.npy')))

  # Same subset up to float16 rounding: the npz and the embed stage both store float16,
  # but the DataComp rows are renormalized on load (and rounded again), so cosines differ
  # by ~1e-3 and near-ties at the budget's edge can swap.
  agreement = _agreement(wds, work)
  print('subset agreement:', json.dumps(agreement, indent=1))
  for name, diff in agreement['max_abs_diff'].items():
    if name != 'score':
      assert diff < 5e-3, (name, diff)
  assert agreement['share'] >= 0.9, agreement


@pytest.mark.slow
def test_parquet_and_npz_alone_leave_out_the_image_operators(routes, tmp_path):
  """Without the tars the same pool runs with the image operators left out, and the
  features summary (and so report.json) says why."""
  _, _, dc = routes
  source = os.path.dirname(dc.pool.metadata)
  pool = tmp_path / 'pool'
  pool.mkdir()
  for name in os.listdir(source):
    if name.endswith(('.parquet', '.npz')):
      os.symlink(os.path.join(source, name), pool / name)
  c = ml_collections.ConfigDict(dc.to_dict())
  c.pool.metadata = str(pool / '*.parquet')
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'learn', 'select', 'report')
  c.export.shards = False
  main.run(c, str(tmp_path / 'work'))
  report = json.load(open(tmp_path / 'work' / 'report.json'))
  features = report['stages']['features']['summary']
  assert features['operators_left_out'] == list(IMAGE_OPERATORS)
  assert 'no tars' in features['operators_left_out_reason']
  assert report['pool']['skips'] == {}
