"""The paper-scale configs on tiny stand-in data: configs/datacomp_small.py,
configs/datacomp_medium.py and configs/cc12m.py validate, read their tasks (TFDS mock data
for ImageNet-1k and CIFAR-100, generated retrieval shards) and fail on bad data naming the
field; cc12m.py runs every stage on two img2dataset-style shards with a tiny Hugging Face
CLIP as its given reference; and the FLOP counts tools/estimate_stage_times.py scales by
agree with the ViT-B/32 architecture counted by hand.
"""

import hashlib
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_hf_convert as hf_helpers  # noqa: E402  pylint: disable=wrong-import-position

from tads_jax import config as config_lib  # noqa: E402
from tads_jax import main  # noqa: E402
from tads_jax.data import tar_writer  # noqa: E402
from tads_jax.data import tasks as tasks_lib  # noqa: E402
from tads_jax.stages import evaluate  # noqa: E402
from tads_jax.stages import ingest  # noqa: E402
from configs import cc12m  # noqa: E402
from configs import datacomp_medium  # noqa: E402
from configs import datacomp_small  # noqa: E402
from conftest import load_tool, read_eval_json, validate  # noqa: E402
from test_datacomp_pool import _jpeg, _retrieval_shards, _stub_checkpoint, _tiny_pool  # noqa: E402

pytestmark = pytest.mark.usefixtures('fast_compiles')

TASKS = ['imagenet1k', 'cifar100', 'mscoco', 'flickr30k']


def _retrieval_sets(data):
  for name in ('wds_mscoco_captions', 'wds_flickr30k'):
    for split in ('train', 'test'):
      _retrieval_shards(str(data / name / split))


def _check_tasks(c):
  """The paper's four tasks, ImageNet-1k and CIFAR-100 with TFDS's class counts; every
  split loads (TFDS mock data for the two classification sets)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  specs = tasks_lib.parse_tasks(list(c.tasks))
  assert [s.name for s in specs] == TASKS
  assert [s.kind for s in specs] == ['classification'] * 2 + ['retrieval'] * 2
  assert len(specs[0].classnames) == 1000 and len(specs[1].classnames) == 100
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    for spec in specs:
      for split in tasks_lib.SPLITS:
        assert len(tasks_lib.load_split(spec, split, 16).keys) == 3


# ---- DataComp small and medium -----------------------------------------------------------


@pytest.mark.parametrize('module,samples_seen,kmeans_k', [
    (datacomp_small, 12_800_000, 1_000), (datacomp_medium, 128_000_000, 10_000)])
@pytest.mark.usefixtures('tfds_tmp')
def test_datacomp_scales_validate_with_stand_in_data(tmp_path, module, samples_seen, kmeans_k):
  """Each scale on a small pool with tars and a checkpoint of the npz's width: DataComp's
  budget (samples seen = the pool; batch 4096, lr 5e-4, 500 warmup steps: scale_configs.py)
  in both proxies, and a checkpoint of another width named before any work."""
  data = tmp_path / 'data'
  _tiny_pool(str(data / 'shards'), dim=8)
  _stub_checkpoint(data / 'clip-vit-base-patch32', 8)
  _retrieval_sets(data)
  c = module.get_config(str(data))
  assert c.pool.format == 'datacomp' and c.selector.name == 'tads'
  validate(c)
  _check_tasks(c)
  assert c.evaluate.samples_seen == c.evaluate.pixels.samples_seen == samples_seen
  pixels = evaluate.train_config(c, 0, proxy='pixels')
  assert (pixels.batch_size, pixels.lr, pixels.warmup) == (4096, 5e-4, 500)
  assert pixels.steps == samples_seen // 4096  # 3,125 and 31,250
  assert pixels.clip_config().image_size == 224 and pixels.clip_config().patch_size == 32
  assert c.features.kmeans_k == kmeans_k and c.image_based.k == 100_000
  c.encoder.checkpoint = _stub_checkpoint(tmp_path / 'clip512', 512)
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config\.encoder\.checkpoint: .*clip512' embeds in 512 "):
    validate(c)


def test_medium_differs_from_small_only_in_its_scale(tmp_path):
  small = datacomp_small.get_config(str(tmp_path)).to_dict()
  medium = datacomp_medium.get_config(str(tmp_path)).to_dict()

  def flat(d, prefix=''):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from flat(v, f'{prefix}{k}.')
      else:
        yield f'{prefix}{k}', v
  small, medium = dict(flat(small)), dict(flat(medium))
  assert small.keys() == medium.keys()
  changed = {k for k in small if small[k] != medium[k]}
  assert changed == {'evaluate.samples_seen', 'evaluate.pixels.samples_seen',
                     'features.kmeans_k'}


# ---- CC12M -------------------------------------------------------------------------------


def _img2dataset_shards(folder, counts=(13, 12)):
  """CC12M as img2dataset writes it: `{shard:05d}.tar` with <key>.jpg/.txt/.json (no uid:
  img2dataset's json fields), a parquet and a _stats.json beside each tar. Keys are the
  shard number then the row, so unique across shards."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  keys = []
  for shard, count in enumerate(counts):
    samples, rows = [], []
    for i in range(count):
      key = f'{shard:05d}{i:04d}'
      image = _jpeg(rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8))
      caption = f'a photo of thing {i} from shard {shard}'
      samples.append((key, {'jpg': image, 'txt': caption, 'json': {
          'url': f'http://example.com/{key}.jpg', 'caption': caption, 'key': key,
          'status': 'success', 'error_message': None, 'width': 40, 'height': 30 + i,
          'original_width': 80, 'original_height': 60 + 2 * i, 'exif': '{}',
          'sha256': hashlib.sha256(image).hexdigest()}}))
      rows.append(key)
    tar_writer.write_shard(os.path.join(folder, f'{shard:05d}.tar'), samples)
    pq.write_table(pa.table({'key': rows, 'status': ['success'] * count}),
                   os.path.join(folder, f'{shard:05d}.parquet'))
    with open(os.path.join(folder, f'{shard:05d}_stats.json'), 'w') as f:
      json.dump({'count': count, 'successes': count, 'failed_to_download': 0}, f)
    keys += rows
  return keys


@pytest.fixture(scope='module')
def cc12m_data(tmp_path_factory):
  """(data folder, pool keys, reference folder): two img2dataset shards, a tiny random
  Hugging Face CLIP with its tokenizer as clip-vit-base-patch32, retrieval shards."""
  data = tmp_path_factory.mktemp('cc12m_data')
  keys = _img2dataset_shards(str(data / 'cc12m'))
  folder = hf_helpers.write_folder(data / 'clip-vit-base-patch32',
                                   hf_helpers.torch_model(hf_helpers.hf_config()))
  _retrieval_sets(data)
  return data, keys, folder


def _two_shards(data) -> str:
  return os.path.join(data, 'cc12m', '{00000..00001}.tar')


@pytest.mark.usefixtures('tfds_tmp')
def test_cc12m_config_validates_and_loads_its_reference(cc12m_data, tmp_path):
  """The paper's setting: a webdataset pool of every tar img2dataset writes for cc12m.tsv
  (1,243; the first missing one named), 36% kept, the four tasks, DataComp small's
  budget and ViT-B/32 pixel preset; the encoder stage records the given Hugging Face CLIP
  instead of training one, and ingest reads img2dataset's shards (uids from the keys)."""
  data, keys, folder = cc12m_data
  c = cc12m.get_config(str(data))
  assert c.pool.format == 'webdataset' and c.selector.name == 'tads'
  assert c.selection.fraction == 0.36 and c.selection.method == 'topk'
  assert c.encoder.checkpoint == folder
  assert c.evaluate.samples_seen == c.evaluate.pixels.samples_seen == 12_800_000
  assert evaluate.train_config(c, 0, proxy='pixels').clip_config().image_size == 224
  with pytest.raises(config_lib.ConfigError,
                     match=r'^config\.pool\.shards: .*cc12m/00002\.tar: listed by '
                           r".*cc12m/\{00000\.\.01242\}\.tar' but no such file$"):
    validate(c)
  c.pool.shards = _two_shards(data)
  validate(c)
  _check_tasks(c)

  c.stages = ('ingest', 'encoder')
  c.selector.name = 'random'  # tads learns: its stages are the end-to-end test's
  work = tmp_path / 'work'
  assert main.run(c, str(work)) == {'ingest': 'ran', 'encoder': 'ran'}
  done = lambda stage: main.pipeline.read_done(str(work / stage))['summary']  # noqa: E731
  assert done('encoder') == {'checkpoint': os.path.abspath(folder), 'trained': False}
  assert not (work / 'encoder' / 'train').exists()
  assert done('ingest')['samples'] == len(keys) and done('ingest')['skips'] == {}
  samples = pq.read_table(work / 'ingest' / ingest.SAMPLES).to_pydict()
  assert samples['key'] == keys
  assert samples['uid'] == [hashlib.md5(k.encode()).hexdigest() for k in keys]
  assert set(samples['uid_source']) == {'key'}

  c.encoder.checkpoint = str(data / 'no-such-folder')
  with pytest.raises(config_lib.ConfigError,
                     match=r'^config\.encoder\.checkpoint: no such file or directory'):
    validate(c)


@pytest.mark.usefixtures('tfds_tmp')
def test_cc12m_config_runs_end_to_end_on_stand_in_data(cc12m_data, tmp_path):
  """Every stage of configs/cc12m.py on the stand-in data, its budgets cut to seconds:
  the pool and the tasks are embedded with the given checkpoint (its 40-d projection),
  TADS meta-learns on the four tasks and keeps round(0.36 x 25) = 9 samples."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  data, keys, folder = cc12m_data
  c = cc12m.get_config(str(data))
  c.pool.shards = _two_shards(data)
  c.pool.image_size = 32
  c.embed.update(dtype='float32', batch_size=8, workers=2)
  c.features.update(chunk=16, kmeans_k=2, kmeans_iters=3, retrieval_prototypes=2)
  c.tads.meta.update(steps=4, batch_size=8, unroll=2, task_batch_size=4, checkpoint_every=2)
  c.evaluate.update(samples_seen=8 * 6, seeds=1, batch_size=8, warmup=1, baselines=('full',))
  work = tmp_path / 'work'
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    status = main.run(c, str(work))
  assert set(status) == set(c.stages) and set(status.values()) == {'ran'}
  done = lambda stage: main.pipeline.read_done(str(work / stage))['summary']  # noqa: E731
  assert done('encoder') == {'checkpoint': os.path.abspath(folder), 'trained': False}
  embedded = done('embed')
  assert not embedded['pool_ships_embeddings'] and embedded['samples'] == len(keys)
  assert embedded['encoder']['checkpoint'] == os.path.abspath(folder)
  assert embedded['encoder']['embed_dim'] == 40  # hf_helpers.hf_config's projection_dim
  assert {r['task'] for r in embedded['tasks']} == set(TASKS)
  assert done('learn')['selector'] == 'tads'
  subset = np.load(work / 'subset.npy')
  assert len(subset) == round(0.36 * len(keys)) == 9
  assert set(read_eval_json(str(work))['tasks']) == set(TASKS)


# ---- tools/estimate_stage_times.py -------------------------------------------------------


def test_estimate_counts_vit_b32_flops_as_the_architecture_does():
  """XLA's cost analysis of our ViT-B/32 against its matmuls counted by hand (2 FLOPs per
  multiply-add; 224 px in 32 px patches: 49 + 1 tokens of width 768, 12 layers, MLP 3072;
  77 tokens of width 512, MLP 2048 for text; 512-d projections); the rest is layer norms,
  softmax and activations. The pixel proxy's train step must count the backward too:
  about 3x the forward of both towers."""
  tool = load_tool('estimate_stage_times')
  forward = tool.clip_forward_flops('vit_b32')

  def tower(tokens, width, mlp, stem):
    layer = tokens * width * 3 * width + 2 * tokens * tokens * width \
        + tokens * width * width + 2 * tokens * width * mlp
    return 2 * (stem + 12 * layer + width * 512)
  image = tower(50, 768, 3072, stem=49 * 32 * 32 * 3 * 768)  # 8.818 GFLOP
  text = tower(77, 512, 2048, stem=0)                         # 5.960 GFLOP
  assert image == pytest.approx(8.8176e9, rel=1e-4) and text == pytest.approx(5.9595e9, rel=1e-4)
  assert forward['image'] == pytest.approx(image, rel=0.01)
  assert forward['text'] == pytest.approx(text, rel=0.01)
  c = datacomp_small.get_config('/stand-in')
  step = tool.train_step_flops(evaluate.train_config(c, 0, proxy='pixels'), None)
  assert 2.9 < step / (forward['image'] + forward['text']) < 3.2
