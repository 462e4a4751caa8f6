"""The embed stage end to end through tads_jax.main.run on a small synthetic pool.

The encoder is a tiny random-weight Hugging Face CLIP folder (written with the helpers of
test_hf_convert.py); the reference is `load_clip(folder).encode_images / encode_texts` on the
same images and texts, read back from the shards independently of the stage.
"""

import collections
import io
import os
import shutil
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_hf_convert as hf_helpers  # noqa: E402  pylint: disable=wrong-import-position

from tads_jax import main  # noqa: E402
from tads_jax.data import datacomp  # noqa: E402
from tads_jax.data import tar_writer  # noqa: E402
from tads_jax.data import tasks as tasks_lib  # noqa: E402
from tads_jax.data import webdataset  # noqa: E402
from tads_jax.models import api  # noqa: E402
from tads_jax.stages import embed  # noqa: E402
from configs import default  # noqa: E402

# Stored float16: a unit vector's components round by at most 2**-12 of their size.
ATOL = 1e-3


def small_config(checkpoint):
  c = default.get_config()
  c.stages = ('ingest', 'encoder', 'embed')
  c.selector.name = 'random'
  c.pool.synthetic.update(dict(
      num_samples=50, shard_size=20, trusted_size=4, train_per_class=1,
      eval_per_class=1, retrieval_train=3, retrieval_eval=2))
  c.encoder.checkpoint = checkpoint
  c.embed.batch_size = 8  # 20-sample shards: two full batches and a padded tail
  return c


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  model = hf_helpers.torch_model(hf_helpers.hf_config())
  return hf_helpers.write_folder(tmp_path_factory.mktemp('clip'), model)


@pytest.fixture(scope='module')
def run(checkpoint, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('work'))
  status = main.run(small_config(checkpoint), workdir)
  return workdir, status


@pytest.fixture(scope='module')
def reference(checkpoint):
  return api.load_clip(checkpoint, batch_size=4)


def _npz(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def test_pool_embeddings_match_load_clip(run, reference):
  workdir, status = run
  assert status == {'ingest': 'ran', 'encoder': 'ran', 'embed': 'ran'}
  samples = pq.read_table(os.path.join(workdir, 'ingest', 'samples.parquet'))
  shards = sorted(set(samples.column('shard').to_pylist()))
  assert len(shards) == 3  # 50 samples in shards of 20
  total = 0
  for shard in shards:
    rows = samples.filter(np.asarray(samples.column('shard').to_pylist()) == shard)
    uids, captions = rows.column('uid').to_pylist(), rows.column('caption').to_pylist()
    out = _npz(embed.shard_item(_ctx(workdir), shard) + '.npz')
    assert out['uid'].tolist() == uids
    assert out['image_emb'].dtype == np.float16 and out['image_emb'].shape == (len(uids), 40)
    decoded = {s.uid: s.image
               for s in webdataset.iter_shard(shard, collections.Counter(), decode=True)}
    ref_image = reference.encode_images([decoded[u] for u in uids])
    ref_text = reference.encode_texts(captions)
    np.testing.assert_allclose(out['image_emb'], ref_image, atol=ATOL)
    np.testing.assert_allclose(out['text_emb'], ref_text, atol=ATOL)
    total += len(uids)
  summary = main.pipeline.read_done(os.path.join(workdir, 'embed'))['summary']
  assert summary['samples'] == summary['samples_computed'] == total == 50
  assert summary['store_dtype'] == 'float16' and summary['encoder']['embed_dim'] == 40
  assert summary['encoder']['batch_size'] == 8 and summary['encoder']['dtype'] == 'float32'


def test_task_embeddings_match_load_clip(run, reference):
  workdir, _ = run
  specs = tasks_lib.parse_tasks(os.path.join(workdir, 'ingest', 'world', 'tasks.json'))
  assert {s.kind for s in specs} == {'classification', 'retrieval'}
  for spec in specs:
    for split in ('train', 'eval'):
      out = _npz(embed.task_item(_ctx(workdir), spec.name, split) + '.npz')
      data = tasks_lib.load_split(spec, split, hf_helpers.IMAGE)
      np.testing.assert_allclose(out['image_emb'], reference.encode_images(list(data.images)),
                                 atol=ATOL)
      if spec.kind == 'classification':
        np.testing.assert_array_equal(out['labels'], data.labels)
        prompts = [t.format(c) for c in spec.classnames for t in spec.templates]
        ref = reference.encode_texts(prompts).reshape(len(spec.classnames),
                                                      len(spec.templates), 40)
        np.testing.assert_allclose(out['class_text_emb'], ref, atol=ATOL)
        assert out['classnames'].tolist() == list(spec.classnames)
      else:
        flat = [c for caps in data.captions for c in caps]
        np.testing.assert_allclose(out['text_emb'], reference.encode_texts(flat), atol=ATOL)
        assert out['text_image'].tolist() == [i for i, caps in enumerate(data.captions)
                                              for _ in caps]


def test_rerun_skips_and_killed_run_redoes_only_the_lost_shard(run, checkpoint, tmp_path):
  workdir, _ = run
  work = str(tmp_path / 'w')
  shutil.copytree(workdir, work)
  assert main.run(small_config(checkpoint), work) == {'ingest': 'skipped', 'encoder': 'skipped', 'embed': 'skipped'}

  items = os.path.join(work, 'embed', 'shards')
  names = sorted(n[:-4] for n in os.listdir(items) if n.endswith('.npz'))
  lost = names[1]
  before = _npz(os.path.join(items, lost + '.npz'))
  kept = {n: os.stat(os.path.join(items, n + '.npz')).st_mtime_ns for n in names if n != lost}
  os.remove(os.path.join(work, 'embed', '_done.json'))  # killed before the end ...
  os.remove(os.path.join(items, lost + '.npz'))         # ... and mid-way through this shard
  os.remove(os.path.join(items, lost + '.json'))
  assert main.run(small_config(checkpoint), work) == {'ingest': 'skipped', 'encoder': 'skipped', 'embed': 'ran'}
  assert {n: os.stat(os.path.join(items, n + '.npz')).st_mtime_ns for n in kept} == kept
  after = _npz(os.path.join(items, lost + '.npz'))
  for key in ('uid', 'image_emb', 'text_emb'):
    np.testing.assert_array_equal(after[key], before[key])
  summary = main.pipeline.read_done(os.path.join(work, 'embed'))['summary']
  assert summary['samples_computed'] == len(before['uid']) < summary['samples']


def test_webdataset_pool_with_corrupt_and_repeated_samples(checkpoint, reference, tmp_path):
  """Rows stay aligned with samples.parquet: a corrupt image mid-shard was skipped at
  ingest, a uid whose first occurrence is corrupt is kept at its second, and a uid whose
  two occurrences decode is kept at its first."""
  rng = np.random.default_rng(7)
  images = [rng.integers(0, 256, (40 + 4 * i, 36, 3), dtype=np.uint8) for i in range(6)]
  data = [_jpeg(im) for im in images]
  uids = [f'{i:032x}' for i in range(6)]
  data[1] = data[1][:150]          # corrupt ...
  uids[3] = uids[1]                # ... and its uid comes back, decodable, at k3
  uids[5] = uids[4]
  samples = [(f'k{i}', {'jpg': data[i], 'txt': f'photo {i} of the cat',
                        'json': {'uid': uids[i]}}) for i in range(6)]
  tar_writer.write_shard(str(tmp_path / '00000000.tar'), samples)
  c = small_config(checkpoint)
  c.pool.format = 'webdataset'
  c.pool.shards = str(tmp_path / '*.tar')
  del c['tasks']
  c.tasks = []
  work = str(tmp_path / 'work')
  assert main.run(c, work) == {'ingest': 'ran', 'encoder': 'ran', 'embed': 'ran'}
  kept = [0, 2, 3, 4]
  assert pq.read_table(os.path.join(work, 'ingest', 'samples.parquet')).column(
      'uid').to_pylist() == [uids[i] for i in kept]
  out = _npz(embed.shard_item(_ctx(work), str(tmp_path / '00000000.tar')) + '.npz')
  assert out['uid'].tolist() == [uids[i] for i in kept]
  decoded = [np.asarray(Image.open(io.BytesIO(data[i])).convert('RGB')) for i in kept]
  np.testing.assert_allclose(out['image_emb'], reference.encode_images(decoded), atol=ATOL)
  np.testing.assert_allclose(
      out['text_emb'], reference.encode_texts([f'photo {i} of the cat' for i in kept]),
      atol=ATOL)


def _jpeg(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=90)
  return buf.getvalue()


def test_datacomp_pool_ships_embeddings(tmp_path):
  rng = np.random.default_rng(0)
  uids = [f'{i:032x}' for i in range(6)]
  datacomp.write_metadata(str(tmp_path / '00000000.parquet'), {
      'uid': uids, 'url': ['http://x'] * 6, 'text': ['a red circle'] * 6},
      {k: rng.normal(size=(6, 8)) for k in ('b32_img', 'b32_txt')})
  c = small_config('')
  c.pool.format = 'datacomp'
  c.pool.metadata = str(tmp_path / '*.parquet')
  del c['tasks']
  c.tasks = []
  assert main.run(c, str(tmp_path / 'work')) == {'ingest': 'ran', 'encoder': 'ran', 'embed': 'ran'}
  summary = main.pipeline.read_done(str(tmp_path / 'work' / 'embed'))['summary']
  assert summary['pool_ships_embeddings'] and summary['embedded'] == 0
  assert not os.path.exists(tmp_path / 'work' / 'embed' / 'shards')


def _ctx(workdir):
  return main.pipeline.Context(config=None, workdir=workdir)


def test_a_task_change_reembeds_the_tasks_and_keeps_the_pool(run, checkpoint, tmp_path):
  """Tasks are part of embed's fingerprint, the pool's embeddings are not their function:
  changing the task list reruns embed on the tasks only, and changing it back does not
  re-embed the pool either."""
  import json  # pylint: disable=g-import-not-at-top
  workdir, _ = run
  work = str(tmp_path / 'w')
  shutil.copytree(workdir, work)
  items = os.path.join(work, 'embed', 'shards')
  pool = {n: os.stat(os.path.join(items, n)).st_mtime_ns for n in os.listdir(items)
          if n.endswith('.npz')}
  tasks_json = os.path.join(work, 'ingest', 'world', 'tasks.json')
  first = json.load(open(tasks_json))[:1]
  fewer = os.path.join(work, 'ingest', 'world', 'one_task.json')  # sources are relative
  with open(fewer, 'w') as f:
    json.dump(first, f)
  c = small_config(checkpoint)
  c.tasks = fewer
  assert main.run(c, work)['embed'] == 'ran'
  assert {n: os.stat(os.path.join(items, n)).st_mtime_ns for n in pool} == pool
  summary = main.pipeline.read_done(os.path.join(work, 'embed'))['summary']
  assert summary['samples_computed'] == 0
  assert {r['task'] for r in summary['tasks']} == {first[0]['name']}
  assert sorted(os.listdir(os.path.join(work, 'embed', 'tasks'))) == sorted(
      f'{first[0]["name"]}_{s}.{e}' for s in ('train', 'eval') for e in ('json', 'npz'))
  # Back to the original tasks: the pool is still not re-embedded.
  assert main.run(small_config(checkpoint), work)['embed'] == 'ran'
  assert {n: os.stat(os.path.join(items, n)).st_mtime_ns for n in pool} == pool
  # A change the pool does depend on (the compute dtype) does re-embed it.
  c = small_config(checkpoint)
  c.embed.dtype = 'bfloat16'
  main.run(c, work)
  assert {n: os.stat(os.path.join(items, n)).st_mtime_ns for n in pool} != pool
