"""The features stage end to end through tads_jax.main.run on a tiny synthetic world.

The encoder is the tiny CLIP of test_encoder_stage.py, trained on the world's trusted set.
References are computed independently of the stage: clip_score from the embed npz rows,
sharpness by scoring.quality on images read back from the shards, exact duplicates from the
world's ground truth.
"""

import collections
import json
import os
import shutil

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tads_jax import config as config_lib
from tads_jax import main
from tads_jax import pipeline
from tads_jax.data import images as images_lib
from tads_jax.data import webdataset
from tads_jax.scoring import quality
from tads_jax.stages import features as features_stage
from tads_jax.stages import ingest
from conftest import tiny_world_config
from conftest import validate

OPERATORS = ('width', 'aspect_ratio', 'sharpness', 'words', 'clip_score',
             'flipped_clip_score', 'caption_specificity')


def config():
  c = tiny_world_config()
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'select', 'report')
  c.embed.batch_size = 32
  c.features = ml_collections.ConfigDict(dict(
      operators=OPERATORS, chunk=32, kmeans_k=4, kmeans_iters=3, alpha=0.5,
      semdedup_eps=0.05, relevance_top_m=2, retrieval_prototypes=2,
      relevance_calibration='none', target_relevance=False))
  c.selector.name = 'clip_score'
  c.selection.fraction = 0.3
  # No target-relevance columns here, so TADS's gate (where a test runs TADS on this
  # world) passes the top 72% by clip_score, then the top half of the pool by relevance
  # among those (both passes, shard at a time and on several processes).
  c.tads.gate.update(dict(column='clip_score', then_column='relevance_*', then_fraction=0.5))
  return c


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('features'))
  status = main.run(config(), workdir)
  return workdir, status


def _features(workdir):
  return pq.read_table(os.path.join(workdir, 'features', 'features.parquet'))


def test_read_features_joins_the_files_and_leaves_out_uids_not_asked_for(run):
  workdir, _ = run
  ctx = pipeline.Context(config=config(), workdir=workdir)
  samples = pq.read_table(os.path.join(workdir, 'ingest', ingest.SAMPLES))
  features = _features(workdir)
  table = features_stage.read_features(ctx, ('uid', 'width', 'clip_score'))
  assert table.column_names == ['uid', 'width', 'clip_score']
  assert table.column('uid').equals(samples.column('uid'))
  assert table.column('clip_score').equals(features.column('clip_score'))
  # The learn stage asks for no uids (no fit reads them): the column is not held.
  table = features_stage.read_features(ctx, ('width', 'clip_score'))
  assert table.column_names == ['width', 'clip_score']
  assert table.column('width').equals(samples.column('width'))
  parts = list(features_stage.iter_features(ctx, [3, samples.num_rows - 3], ('clip_score',)))
  assert [p.column_names for p in parts] == [['clip_score'], ['clip_score']]
  assert pa.concat_tables(parts).column('clip_score').equals(features.column('clip_score'))


def test_one_row_per_sample_and_the_columns(run):
  workdir, status = run
  assert status['features'] == 'ran'
  table = _features(workdir)
  samples = pq.read_table(os.path.join(workdir, 'ingest', ingest.SAMPLES))
  assert table.column('uid').to_pylist() == samples.column('uid').to_pylist()
  tasks = json.load(open(os.path.join(workdir, 'ingest', 'world', 'tasks.json')))
  names = [t['name'] for t in (tasks['tasks'] if isinstance(tasks, dict) else tasks)]
  relevance = [f'relevance_{n}_{side}' for n in names for side in ('image', 'text')]
  assert table.column_names == ['uid', *OPERATORS, *relevance, *features_stage.GLOBAL_COLUMNS]
  for name in table.column_names[1:]:
    assert not np.isnan(table.column(name).to_numpy().astype(float)).any(), name
  np.testing.assert_array_equal(table.column('width').to_numpy(),
                                samples.column('width').to_numpy())
  weights = table.column('cluster_weight').to_numpy()
  counts = np.bincount(table.column('cluster').to_numpy(), minlength=4)
  share = counts[table.column('cluster').to_numpy()] / len(weights)
  np.testing.assert_allclose(weights, share ** -0.5, rtol=1e-5)


def _embed_rows(workdir):
  summary = json.load(open(os.path.join(workdir, 'ingest', '_done.json')))['summary']
  paths = [r['path'] for r in summary['per_source']]
  uids, image_emb, text_emb = [], [], []
  for path in paths:
    npz = np.load(os.path.join(workdir, 'embed', 'shards', ingest.item_name(path) + '.npz'))
    uids += npz['uid'].tolist()
    image_emb.append(npz['image_emb'].astype(np.float32))
    text_emb.append(npz['text_emb'].astype(np.float32))
  return paths, uids, np.concatenate(image_emb), np.concatenate(text_emb)


def test_clip_score_is_the_dot_of_the_embed_rows(run):
  workdir, _ = run
  table = _features(workdir)
  _, uids, image_emb, text_emb = _embed_rows(workdir)
  assert uids == table.column('uid').to_pylist()
  np.testing.assert_allclose(table.column('clip_score').to_numpy(),
                             np.sum(image_emb * text_emb, axis=1), atol=1e-5)
  # Flipped images are different inputs: the score moves, but stays a cosine.
  flipped = table.column('flipped_clip_score').to_numpy()
  assert np.all(np.abs(flipped) <= 1 + 1e-5)
  assert not np.allclose(flipped, table.column('clip_score').to_numpy())


def test_sharpness_matches_quality_on_the_same_images(run):
  workdir, _ = run
  table = _features(workdir)
  paths, _, _, _ = _embed_rows(workdir)
  kept = set(table.column('uid').to_pylist())
  size = config().pool.image_size
  got = {}
  for path in paths:
    for s in webdataset.iter_shard(path, collections.Counter(), decode=True):
      if s.uid in kept and s.uid not in got:
        got[s.uid] = images_lib.resize_center_crop(s.image, size).astype(np.float32) / 255
  uids = table.column('uid').to_pylist()
  expected = np.asarray(quality.sharpness(np.stack([got[u] for u in uids])))
  np.testing.assert_allclose(table.column('sharpness').to_numpy(), expected, rtol=1e-4,
                             atol=1e-7)


def test_exact_duplicates_match_the_ground_truth(run):
  workdir, _ = run
  table = _features(workdir)
  samples = pq.read_table(os.path.join(workdir, 'ingest', ingest.SAMPLES))
  truth = pq.read_table(os.path.join(workdir, 'ingest', 'world', 'ground_truth.parquet'))
  noise = dict(zip(truth.column('uid').to_pylist(), truth.column('noise').to_pylist()))
  dup_of = dict(zip(truth.column('uid').to_pylist(), truth.column('dup_of').to_pylist()))
  uids = samples.column('uid').to_pylist()
  sha = dict(zip(uids, samples.column('sha256').to_pylist()))
  flagged = {u for u, f in zip(uids, table.column('exact_duplicate').to_pylist()) if f}
  # Ground-truth exact duplicates whose original was ingested: one copy of each pair goes.
  pairs = [(u, dup_of[u]) for u in uids if noise[u] == 'exact_dup' and dup_of[u] in sha]
  assert pairs, 'the tiny world has no exact duplicates to find'
  for u, original in pairs:
    assert sha[u] == sha[original]
    assert (u in flagged) != (original in flagged)
  # Precision 1: every flagged sample belongs to a ground-truth exact-duplicate pair.
  in_pairs = {u for pair in pairs for u in pair}
  assert flagged and flagged <= in_pairs


def test_clip_score_selector_keeps_the_top_fraction(run):
  workdir, _ = run
  scores = pq.read_table(os.path.join(workdir, 'scores.parquet'))
  assert set(_features(workdir).column_names) <= set(scores.column_names)
  np.testing.assert_array_equal(scores.column('width').to_numpy(),  # ingest's, not doubled
                                _features(workdir).column('width').to_numpy())
  clip = scores.column('clip_score').to_numpy()
  np.testing.assert_array_equal(scores.column('score').to_numpy(), clip)
  kept = scores.column('times_selected').to_numpy() > 0
  assert kept.sum() == round(0.3 * len(clip))
  assert clip[kept].min() >= clip[~kept].max()


def test_resume_recomputes_only_the_deleted_shard(run, tmp_path):
  import shutil
  workdir = str(tmp_path / 'w')
  shutil.copytree(run[0], workdir)
  before = _features(workdir)
  shards = os.path.join(workdir, 'features', 'shards')
  items = sorted(f[:-5] for f in os.listdir(shards) if f.endswith('.json'))
  assert len(items) == 2
  kept_mtime = os.stat(os.path.join(shards, items[1] + '.parquet')).st_mtime_ns
  os.remove(os.path.join(shards, items[0] + '.parquet'))
  os.remove(os.path.join(shards, items[0] + '.json'))
  os.remove(os.path.join(workdir, 'features', '_done.json'))
  status = main.run(config(), workdir)
  assert status['embed'] == 'skipped' and status['features'] == 'ran'
  summary = json.load(open(os.path.join(workdir, 'features', '_done.json')))['summary']
  assert summary['shards'] == 2 and summary['shards_computed'] == 1
  assert os.stat(os.path.join(shards, items[1] + '.parquet')).st_mtime_ns == kept_mtime
  after = _features(workdir)
  assert after.column_names == before.column_names
  for name in before.column_names:
    a, b = after.column(name).to_pylist(), before.column(name).to_pylist()
    if isinstance(a[0], float):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    else:
      assert a == b, name


def test_clip_score_selector_names_the_missing_column():
  import pyarrow as pa
  from tads_jax import selectors
  selector = selectors.get('clip_score')
  inputs = selectors.Inputs(features=pa.table({'uid': ['a']}))
  with pytest.raises(ValueError, match="'clip_score' column.*features stage"):
    selector.score(config(), {}, inputs)


def test_semantic_duplicates_are_close_to_a_kept_sample_of_their_cluster(run):
  workdir, _ = run
  table = _features(workdir)
  _, _, image_emb, text_emb = _embed_rows(workdir)
  joint = image_emb + text_emb
  joint /= np.linalg.norm(joint, axis=1, keepdims=True)
  cluster = table.column('cluster').to_numpy()
  dup = table.column('semantic_duplicate').to_numpy()
  threshold = 1 - config().features.semdedup_eps
  sims = joint @ joint.T
  same = cluster[:, None] == cluster[None, :]
  for i in np.flatnonzero(dup):  # each dropped sample has a kept near-copy in its cluster
    assert np.any(same[i] & ~dup & (sims[i] >= threshold - 1e-4))
  kept = np.flatnonzero(~dup)  # and no two kept samples of a cluster are near-copies
  close = same[np.ix_(kept, kept)] & (sims[np.ix_(kept, kept)] >= threshold + 1e-4)
  assert not np.any(close & ~np.eye(len(kept), dtype=bool))


def test_streamed_clusters_and_flags_match_the_in_memory_functions(run):
  """The stage streams the pool from disk; on a pool smaller than its k-means++ sample it
  gives what the in-memory functions give on the concatenated embeddings."""
  import jax
  from tads_jax.scoring import dedup
  from tads_jax.scoring import kmeans
  workdir, _ = run
  table = _features(workdir)
  _, _, image_emb, text_emb = _embed_rows(workdir)
  c = config()
  assert len(image_emb) <= features_stage._init_rows(c, c.features.kmeans_k)
  joint = np.asarray(kmeans.normalize(image_emb + text_emb))  # [N, E]
  key = jax.random.split(jax.random.PRNGKey(c.seed))[1]
  fit = kmeans.fit(joint, c.features.kmeans_k, c.features.kmeans_iters, key)
  clusters = table.column('cluster').to_numpy()
  # The same assignment, but for a point whose two nearest centroids tie to float32
  # rounding (streamed and whole-array matmuls round differently on some CPUs).
  cos = joint @ fit.centroids.T  # [N, k]
  differ = np.flatnonzero(clusters != fit.assignment)
  assert len(differ) <= 1
  np.testing.assert_allclose(cos[differ, clusters[differ]], cos[differ, fit.assignment[differ]],
                             atol=1e-5)
  summary = json.load(open(os.path.join(workdir, 'features', '_done.json')))['summary']
  np.testing.assert_allclose(summary['kmeans']['objective'], fit.objective, rtol=1e-6)
  flags = dedup.semdedup_flags(joint, clusters, table.column('clip_score').to_numpy(),
                               c.features.semdedup_eps)
  np.testing.assert_array_equal(table.column('semantic_duplicate').to_numpy(), flags)
  assert not [f for f in os.listdir(os.path.join(workdir, 'features'))
              if 'tmp' in f or f.startswith('semdedup_scratch')]


def test_classification_relevance_is_the_top_m_mean_cosine_to_class_prototypes(run):
  workdir, _ = run
  table = _features(workdir)
  _, _, image_emb, text_emb = _embed_rows(workdir)
  tasks_dir = os.path.join(workdir, 'embed', 'tasks')
  checked = 0
  for name in sorted(os.listdir(tasks_dir)):
    if not name.endswith('_train.npz'):
      continue
    npz = np.load(os.path.join(tasks_dir, name))
    if 'class_text_emb' not in npz.files:
      continue
    prompts = npz['class_text_emb'].astype(np.float32)  # [C, T, E]
    prompts /= np.linalg.norm(prompts, axis=-1, keepdims=True)
    protos = prompts.mean(1)
    protos /= np.linalg.norm(protos, axis=-1, keepdims=True)  # [C, E]
    task = name[:-len('_train.npz')]
    for side, emb in (('image', image_emb), ('text', text_emb)):
      top2 = np.sort(emb @ protos.T, axis=1)[:, -2:].mean(1)
      np.testing.assert_allclose(table.column(f'relevance_{task}_{side}').to_numpy(), top2,
                                 atol=1e-4)
    checked += 1
  assert checked


def test_target_relevance_is_each_image_s_largest_cosine_to_the_task_s_train_images(
    run, tmp_path):
  """target_relevance=True (the same run's features redone in a copy): one more column per
  task, relevance_<task>_target, the max over the task's stored train image embeddings of
  the cosine with the sample's stored image embedding, worked here in numpy; every other
  column as before."""
  workdir, _ = run
  copy = str(tmp_path / 'targets')
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('features', 'select'))
  c = config()
  c.stages = ('ingest', 'encoder', 'embed', 'features')
  c.features.target_relevance = True
  status = main.run(c, copy)
  assert status['embed'] == 'skipped' and status['features'] == 'ran'
  raw, table = _features(workdir), _features(copy)
  _, _, image_emb, _ = _embed_rows(copy)
  tasks_dir = os.path.join(copy, 'embed', 'tasks')
  tasks = sorted(n[:-len('_train.npz')] for n in os.listdir(tasks_dir)
                 if n.endswith('_train.npz'))
  assert tasks
  assert sorted(table.column_names) == sorted(
      raw.column_names + [f'relevance_{t}_target' for t in tasks])
  for name in raw.column_names:
    assert table.column(name).equals(raw.column(name)), name
  for task in tasks:
    targets = np.load(os.path.join(tasks_dir, f'{task}_train.npz'))['image_emb']
    expected = (image_emb.astype(np.float64) @ targets.astype(np.float64).T).max(axis=1)
    np.testing.assert_allclose(table.column(f'relevance_{task}_target').to_numpy(), expected,
                               atol=1e-4)
  bad = config()
  del bad.features['target_relevance']  # ml_collections itself refuses a str for a bool field
  bad.features.target_relevance = 'yes'
  with pytest.raises(config_lib.ConfigError, match=r'config\.features\.target_relevance'):
    validate(bad)


def test_calibrated_relevance_z_scores_each_prototype_over_the_pool(run, tmp_path):
  """relevance_calibration='zscore' (the same run's features redone in a copy): each class
  prototype's cosines become z-scores over the whole pool before the top-2 mean, worked
  here in numpy from the stored embeddings; the retrieval columns change too."""
  workdir, _ = run
  copy = str(tmp_path / 'zscore')
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('features', 'select'))
  c = config()
  c.stages = ('ingest', 'encoder', 'embed', 'features')
  c.features.relevance_calibration = 'zscore'
  status = main.run(c, copy)
  assert status['embed'] == 'skipped' and status['features'] == 'ran'  # reused, redone
  raw, table = _features(workdir), _features(copy)
  _, _, image_emb, text_emb = _embed_rows(copy)
  tasks_dir = os.path.join(copy, 'embed', 'tasks')
  kinds = set()
  for name in sorted(os.listdir(tasks_dir)):
    if not name.endswith('_train.npz'):
      continue
    npz = np.load(os.path.join(tasks_dir, name))
    task = name[:-len('_train.npz')]
    columns = [f'relevance_{task}_{side}' for side in ('image', 'text')]
    if 'class_text_emb' not in npz.files:
      kinds.add('retrieval')  # k-means prototypes: only that calibration moved them
      assert not all(np.allclose(raw.column(col).to_numpy(), table.column(col).to_numpy())
                     for col in columns)
      continue
    kinds.add('classification')
    prompts = npz['class_text_emb'].astype(np.float64)  # [C, T, E]
    prompts /= np.linalg.norm(prompts, axis=-1, keepdims=True)
    protos = prompts.mean(1)
    protos /= np.linalg.norm(protos, axis=-1, keepdims=True)  # [C, E]
    for column, emb in zip(columns, (image_emb, text_emb)):
      sims = emb.astype(np.float64) @ protos.T  # [N, C]
      z = (sims - sims.mean(0)) / sims.std(0)
      top2 = np.sort(z, axis=1)[:, -2:].mean(1)
      # z divides cosine errors of ~1e-5 (the jitted float32 matmul) by stds of ~1e-2.
      np.testing.assert_allclose(table.column(column).to_numpy(), top2, atol=5e-3)
  assert kinds == {'classification', 'retrieval'}
  bad = config()
  bad.features.relevance_calibration = 'pool'
  with pytest.raises(config_lib.ConfigError, match=r'config\.features\.relevance_calibration'):
    validate(bad)


def test_datacomp_pool_leaves_out_image_operators(tmp_path):
  from tads_jax.data import datacomp
  rng = np.random.default_rng(0)
  uids = [f'{i:032x}' for i in range(8)]
  emb = {k: rng.normal(size=(8, 8)) for k in ('b32_img', 'b32_txt')}
  emb['b32_img'][3] = 0  # an unusable row: ingest skips it
  datacomp.write_metadata(str(tmp_path / '00000000.parquet'), {
      'uid': uids, 'url': ['http://x'] * 8, 'text': ['a red circle', 'two words'] * 4,
      'sha256': ['a', 'b', 'c', 'd', 'a', 'e', 'f', 'g']}, emb)
  c = config()
  c.stages = ('ingest', 'encoder', 'embed', 'features')
  c.pool.format = 'datacomp'
  c.pool.metadata = str(tmp_path / '*.parquet')
  del c['tasks']
  c.tasks = []
  c.features.kmeans_k = 2
  main.run(c, str(tmp_path / 'work'))
  table = _features(str(tmp_path / 'work'))
  summary = main.pipeline.read_done(str(tmp_path / 'work' / 'features'))['summary']
  assert summary['operators_left_out'] == ['width', 'aspect_ratio', 'sharpness',
                                           'flipped_clip_score']
  assert table.column_names == ['uid', 'words', 'clip_score', 'caption_specificity',
                                *features_stage.GLOBAL_COLUMNS]
  keep = [i for i in range(8) if i != 3]
  assert table.column('uid').to_pylist() == [uids[i] for i in keep]
  image = emb['b32_img'][keep].astype(np.float16).astype(np.float32)
  text = emb['b32_txt'][keep].astype(np.float16).astype(np.float32)
  cos = np.sum(image * text, 1) / np.linalg.norm(image, axis=1) / np.linalg.norm(text, axis=1)
  np.testing.assert_allclose(table.column('clip_score').to_numpy(), cos, atol=1e-5)
  # uids 0 and 4 share a sha256: the one with the lower clip_score is the duplicate.
  flags = dict(zip(table.column('uid').to_pylist(), table.column('exact_duplicate').to_pylist()))
  worse = uids[0] if cos[0] < cos[keep.index(4)] else uids[4]
  assert [u for u, f in flags.items() if f] == [worse]


def test_operator_settings_reach_the_operators_and_bad_ones_name_the_field():
  c = config()
  c.features.operator_settings = ml_collections.ConfigDict(dict(
      near_uniform=dict(threshold=0.5), word_repetition=dict(n=3)))
  # Settings of an operator that is not run stay in the config without effect.
  assert features_stage.operator_settings(c) == {}
  c.features.operators = ('near_uniform', 'words')
  assert features_stage.operator_settings(c) == {'near_uniform': {'threshold': 0.5}}
  images = np.full((2, 8, 8, 3), 0.5, np.float32)
  images[1] = np.random.default_rng(0).uniform(size=(8, 8, 3))  # contrast ~0.2-0.3
  table = {'height': [8, 8], 'width': [8, 8], 'caption': ['a b', 'c d']}
  emb = np.zeros((2, 4), np.float32)
  default = features_stage._score_chunk(['near_uniform'], {}, 0, 2, 4, table, emb, emb,
                                        images)
  looser = features_stage._score_chunk(['near_uniform'], features_stage.operator_settings(c),
                                       0, 2, 4, table, emb, emb, images)
  np.testing.assert_array_equal(default['near_uniform'], [1, 0])
  np.testing.assert_array_equal(looser['near_uniform'], [1, 1])
  for settings, message in [
      (dict(near_uniform=dict(thresh=0.1)),
       r'config\.features\.operator_settings\.near_uniform\.thresh: unknown setting; '
       r'near_uniform has threshold'),
      (dict(sparkle=dict(level=1)), r'config\.features\.operator_settings\.sparkle: unknown'),
      (dict(near_uniform=0.1), r'config\.features\.operator_settings\.near_uniform: expected'),
  ]:
    c.features.operator_settings = ml_collections.ConfigDict(settings)
    with pytest.raises(ValueError, match=message):
      features_stage.operator_settings(c)


def test_vocab_share_runs_only_with_a_vocabulary():
  c = config()
  c.features.operators = ('vocab_share',)
  with pytest.raises(ValueError, match=r"'vocab_share' needs "
                     r'config\.features\.operator_settings\.vocab_share\.vocab'):
    features_stage.operators(c)
  c.features.operator_settings = ml_collections.ConfigDict(
      dict(vocab_share=dict(vocab=('red', 'circle'))))
  settings = features_stage.operator_settings(c)
  table = {'height': [8], 'width': [8], 'caption': ['a red circle']}
  emb = np.zeros((1, 4), np.float32)
  out = features_stage._score_chunk(['vocab_share'], settings, 0, 1, 2, table, emb, emb)
  np.testing.assert_allclose(out['vocab_share'], [2 / 3])


def test_global_signals_run_in_order_and_give_the_global_columns():
  assert list(features_stage.SIGNALS) == ['relevance', 'target_relevance', 'clusters',
                                          'semantic_duplicate', 'exact_duplicate']
  assert features_stage.GLOBAL_COLUMNS == ('cluster', 'cluster_weight', 'semantic_duplicate',
                                           'exact_duplicate')
  fields = set(config().features)
  for s in features_stage.SIGNALS.values():  # every setting a signal reads is a field
    assert set(s.settings) <= fields, s.name
