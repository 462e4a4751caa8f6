"""A labelled classification set as a pool (tools/labelled_to_pool.py, ingest's `label`
column) and the CLIP-powered selector in its paper's setting (clip_powered.groups='label')
through tads_jax.main.run.

The images are solid colours with jitter, one colour per class, so each image's true class
is read back from its pixels, independently of the tool's record; the slow test trains the
tiny reference CLIP on clean images and checks that the selector keeps fewer of the 40%
mislabelled samples than random at the same budget.
"""

import collections
import dataclasses
import json
import os

import ml_collections
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tads_jax import main
from tads_jax import pipeline
from tads_jax import selectors
from tads_jax.data import tar_writer
from tads_jax.data import webdataset
from tads_jax.selectors import clip_powered
from tads_jax.stages import ingest
from conftest import load_tool, tiny_world_config

tool = load_tool('labelled_to_pool')

# Class i is colour i; folder names sort in this order, so label i is COLOURS[i].
COLOURS = {'blue': (40, 60, 220), 'green': (40, 170, 60), 'purple': (140, 50, 170),
           'red': (220, 40, 40), 'yellow': (225, 215, 40)}
CLASSNAMES = tuple(COLOURS)
TEMPLATE = 'a {} image.'


def _image_folder(root, per_class, seed, size=32):
  """root/<colour>/<i>.png: the class colour, jittered per image and per pixel."""
  rng = np.random.default_rng(seed)
  for name, rgb in COLOURS.items():
    os.makedirs(os.path.join(root, name))
    for i in range(per_class):
      base = np.asarray(rgb) + rng.integers(-25, 26, 3)
      pixels = base + rng.integers(-8, 9, (size, size, 3))
      Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
          os.path.join(root, name, f'{i:03d}.png'))
  return str(root)


def _true_class(image):  # uint8 [H, W, 3] -> the nearest class colour's index
  mean = image.reshape(-1, 3).mean(0)
  return int(np.argmin([np.sum((mean - np.asarray(c)) ** 2) for c in COLOURS.values()]))


def _pool_config(pool_dir):
  c = tiny_world_config()
  c.stages = ('ingest',)
  c.pool.format = 'webdataset'
  c.pool.shards = os.path.join(pool_dir, '*.tar')
  c.pool.image_size = 32
  del c['tasks']
  c.tasks = []
  return c


# ---------------------------------------------------------------------------------------
# The tool and ingest.


def test_symmetric_noise_flips_exactly_the_share_to_other_classes():
  labels = np.repeat(np.arange(4), 250)
  noisy = tool.symmetric_noise(labels, 4, 0.4, seed=3)
  flipped = noisy != labels
  assert flipped.sum() == 400 and noisy.min() >= 0 and noisy.max() <= 3
  # Flips hit every class alike, and land on each other class about equally often.
  np.testing.assert_allclose(np.bincount(labels[flipped], minlength=4) / 400, 0.25, atol=0.06)
  moves = np.bincount((noisy[flipped] - labels[flipped]) % 4, minlength=4)
  assert moves[0] == 0
  np.testing.assert_allclose(moves[1:] / 400, 1 / 3, atol=0.07)
  np.testing.assert_array_equal(noisy, tool.symmetric_noise(labels, 4, 0.4, seed=3))
  np.testing.assert_array_equal(tool.symmetric_noise(labels, 4, 0.0, seed=3), labels)
  with pytest.raises(ValueError, match='at least 2 classes'):
    tool.symmetric_noise(np.zeros(5, int), 1, 0.4, seed=0)


def test_tool_writes_a_pool_that_ingest_reads_with_its_labels(tmp_path):
  folder = _image_folder(tmp_path / 'images', per_class=4, seed=0)
  out = str(tmp_path / 'pool')
  record = tool.convert(folder, out, template=TEMPLATE, image_size=32, label_noise=0.4,
                        seed=1, shard_size=7)
  assert record['classnames'] == list(CLASSNAMES)
  assert record['samples'] == 20 and record['mislabelled'] == 8 and len(record['shards']) == 3
  truth = pq.read_table(record['ground_truth']).to_pydict()
  gt = {u: (n, lab, t) for u, n, lab, t in zip(truth['uid'], truth['noise'], truth['label'],
                                               truth['true_label'])}
  # Read back from the tars: the caption is the prompt of the json's label, and the image's
  # own colour (not the tool's record) says whether that label is wrong.
  seen = {}
  for shard in record['shards']:
    for s in webdataset.iter_shard(shard, collections.Counter(), decode=True):
      label, colour = s.meta['label'], _true_class(s.image)
      assert s.caption == TEMPLATE.format(CLASSNAMES[label])
      assert gt[s.uid] == ('mislabelled' if label != colour else 'clean', label, colour)
      seen[s.uid] = label
  assert len(seen) == 20 and sum(n == 'mislabelled' for n, _, _ in gt.values()) == 8
  with pytest.raises(ValueError, match='holds shards already'):
    tool.convert(folder, out)

  # Ingest keeps each sample's label; the same images without labels in their json get -1.
  work = str(tmp_path / 'work')
  main.run(_pool_config(out), work)
  samples = pq.read_table(os.path.join(work, 'ingest', ingest.SAMPLES)).to_pydict()
  assert dict(zip(samples['uid'], samples['label'])) == seen
  assert pipeline.read_done(os.path.join(work, 'ingest'))['summary']['labelled'] == 20

  bare = tmp_path / 'bare'
  bare.mkdir()
  tar_writer.write_shard(str(bare / '00000000.tar'), [
      (f'k{i}', {'png': open(os.path.join(folder, 'red', f'{i:03d}.png'), 'rb').read(),
                 'txt': 'a red image.', 'json': {'uid': f'{i:032x}', **extra}})
      for i, extra in enumerate([{}, {'label': 'red'}, {'label': True}, {'label': -2}])])
  main.run(_pool_config(str(bare)), str(tmp_path / 'bare_work'))
  samples = pq.read_table(os.path.join(tmp_path, 'bare_work', 'ingest', ingest.SAMPLES))
  assert samples.schema.field('label').type == pa.int32()
  assert samples.column('label').to_pylist() == [-1] * 4
  assert 'labelled' not in pipeline.read_done(str(tmp_path / 'bare_work' / 'ingest'))['summary']


def test_a_resumed_ingest_gives_items_written_before_labels_the_label_column(tmp_path):
  """A killed run's finished items from before ingest kept labels are reused as they are:
  their rows get label -1 and the merge still works."""
  folder = _image_folder(tmp_path / 'images', per_class=2, seed=0)
  out = str(tmp_path / 'pool')
  tool.convert(folder, out, template=TEMPLATE, image_size=32, shard_size=5)
  work = str(tmp_path / 'work')
  main.run(_pool_config(out), work)
  items = os.path.join(work, 'ingest', 'shards')
  first = os.path.join(items, ingest.item_name(os.path.join(out, '00000000.tar')) + '.parquet')
  pq.write_table(pq.read_table(first).drop(['label']), first)  # as the old ingest wrote it
  os.remove(os.path.join(work, 'ingest', pipeline.DONE))
  assert main.run(_pool_config(out), work) == {'ingest': 'ran'}
  labels = pq.read_table(os.path.join(work, 'ingest', ingest.SAMPLES)).column('label')
  assert labels.to_pylist() == [-1] * 5 + [2, 3, 3, 4, 4]


# ---------------------------------------------------------------------------------------
# clip_powered.groups.


def _selector_config(groups):
  return ml_collections.ConfigDict({
      'seed': 0, 'selection': {'fraction': 0.5},
      'clip_powered': dict(dataclasses.asdict(clip_powered.Params()), groups=groups,
                           adapter_steps=10, chunk=64)})


def test_groups_label_reads_the_pool_labels_and_says_when_there_are_none():
  selector = selectors.get('clip_powered')
  with pytest.raises(ValueError, match=r"config.clip_powered.groups: one of 'cluster', "
                     r"'label', got 'class'"):
    selector.check_config(_selector_config('class'))
  assert selector.needs_for(_selector_config('label')) == ('embeddings', 'tasks')
  assert 'features' in selector.needs_for(_selector_config('cluster'))

  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  labels = np.repeat(np.arange(3), 20)
  image_emb = unit(rng.normal(size=(60, 8))).astype(np.float32)
  task = {'name': 'cls', 'kind': 'classification', 'image_emb': image_emb,
          'labels': labels, 'class_text_emb': unit(rng.normal(size=(3, 1, 8)))}
  table = pa.table({'uid': [f'{i:032x}' for i in range(60)],
                    'label': pa.array(labels, pa.int32())})
  inputs = selectors.Inputs(features=table, image_emb=image_emb, text_emb=image_emb,
                            tasks=(task,))
  config = _selector_config('label')
  state = selector.fit(config, inputs)
  assert selector.summary(state)['groups'] == 'label' and state['counts'].sum() == 30
  # SDS within each class: the same as knn_diversity on the labels by hand.
  adapted = clip_powered.adapted_images(state['adapters'], image_emb)
  np.testing.assert_allclose(state['sds'], clip_powered.min_max(
      clip_powered.knn_diversity(adapted, labels, 10, 64)), atol=1e-6)

  with pytest.raises(ValueError, match="has no 'label' column .* delete the workdir's "
                     'ingest folder'):
    selector.fit(config, dataclasses.replace(inputs, features=table.drop(['label'])))
  unlabelled = table.set_column(1, 'label', pa.array([-1] * 5 + [0] * 55, pa.int32()))
  with pytest.raises(ValueError, match=r"5 of 60 pool samples have no class label .* "
                     r"groups='cluster'"):
    selector.fit(config, dataclasses.replace(inputs, features=unlabelled))


# ---------------------------------------------------------------------------------------
# The paper's setting through the pipeline.


@pytest.mark.slow
def test_paper_setting_through_the_pipeline_keeps_fewer_mislabelled_than_random(tmp_path):
  """5 colour classes x 50 pool images, 40% of labels flipped; the tiny reference CLIP
  trained on 200 clean images, the adapters on 50 clean held-out ones; budget half the
  pool (125, fewer than the 150 clean samples)."""
  pool = tool.convert(_image_folder(tmp_path / 'pool_images', 50, seed=0),
                      str(tmp_path / 'pool'), template=TEMPLATE, image_size=32,
                      label_noise=0.4, seed=0, shard_size=100)
  tool.convert(_image_folder(tmp_path / 'clean_images', 40, seed=1),
               str(tmp_path / 'trusted'), template=TEMPLATE, image_size=32)
  heldout = _image_folder(tmp_path / 'heldout', 10, seed=2)
  c = _pool_config(str(tmp_path / 'pool'))
  c.stages = ('ingest', 'encoder', 'embed', 'select', 'report')
  c.pool.ground_truth = pool['ground_truth']
  c.encoder.train_on = str(tmp_path / 'trusted' / '*.tar')
  c.encoder.samples_seen = 32 * 60
  c.embed.batch_size = 64
  c.tasks = [{'name': 'colours', 'kind': 'classification', 'classnames': list(CLASSNAMES),
              'templates': [TEMPLATE], 'train': heldout, 'eval': heldout}]
  c.selector.name = 'clip_powered'
  c.clip_powered.groups = 'label'
  c.selection.fraction = 0.5
  work = str(tmp_path / 'work')
  truth = pq.read_table(pool['ground_truth']).to_pydict()
  mislabelled = {u for u, n in zip(truth['uid'], truth['noise']) if n == 'mislabelled'}
  assert len(mislabelled) == 100

  kept, fits = {}, {}
  for name in ('clip_powered', 'random'):
    c.selector.name = name
    status = main.run(c, work)
    assert status['select'] == status['report'] == 'ran'
    scores = pq.read_table(os.path.join(work, 'scores.parquet')).to_pydict()
    chosen = [u for u, t in zip(scores['uid'], scores['times_selected']) if t > 0]
    assert len(chosen) == 125
    kept[name] = len(mislabelled.intersection(chosen))
    fits[name] = pipeline.read_done(os.path.join(work, 'select'))['summary']['fit']
    # The report counts the same from pool.ground_truth, the tool's record.
    with open(os.path.join(work, 'report.json')) as f:
      by_noise = {r['noise']: r['kept'] for r in json.load(f)['ground_truth']['by_noise']}
    assert by_noise == {'clean': 125 - kept[name], 'mislabelled': kept[name]}
  fit = fits['clip_powered']
  print(f"\npaper setting through the pipeline: 250 samples, 100 mislabelled, budget 125: "
        f"clip_powered keeps {kept['clip_powered']} mislabelled, random {kept['random']} "
        f"(adapter loss {fit['adapter_loss_first']:.3f} -> {fit['adapter_loss_last']:.3f}, "
        f"{fit['mask_steps']} mask steps)")
  assert fit['groups'] == 'label' and fit['kept'] == 125
  assert kept['clip_powered'] < 0.25 * kept['random']
