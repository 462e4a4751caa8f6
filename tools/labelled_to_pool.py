r"""Writes a labelled image-classification set as a webdataset pool: the setting of the
CLIP-powered selector's paper (Yang et al., ICLR 2025), where the pool to select from is a
classification training set (CIFAR-10, Tiny-ImageNet) whose labels may be noisy.

  python tools/labelled_to_pool.py --source /data/cifar10/train --out /data/cifar10-pool \
      --label_noise 0.4 --seed 0
  python tools/labelled_to_pool.py --source tfds:cifar10:train --out /data/cifar10-pool

The source is read by the task loaders (data/tasks.py: an image folder with one sub-folder
per class, or tfds:NAME:SPLIT), so the images are resized CLIP-style to --image_size and
the whole split is held in memory (CIFAR-10 at 64 px: 600 MB). Each sample becomes
`<key>.png` (lossless, so nothing is lost beyond the resize), `<key>.txt`, the class prompt of
its label (--template filled with the class name: the caption the selector's SAS reads, as
in the paper) and `<key>.json`, {"uid", "label"}, which the ingest stage keeps as the
`label` column of samples.parquet.

--label_noise r flips exactly round(r N) labels, drawn at random from --seed, each to a
uniformly drawn other class (symmetric noise; every flipped sample is mislabelled).
Beside the shards: ground_truth.parquet (uid, noise 'clean' | 'mislabelled', on_task,
label, true_label) for config.pool.ground_truth, so the report counts what a selector kept
of each, and labelled_pool.json (class names, template, counts) for the task of the same
classes. Then:

  --config.pool.format=webdataset --config.pool.shards='/data/cifar10-pool/*.tar'
  --config.pool.ground_truth=/data/cifar10-pool/ground_truth.parquet
  --config.selector.name=clip_powered --config.clip_powered.groups=label
  and config.tasks: a classification task with labelled_pool.json's classnames whose train
  split is a clean split of the same classes (the adapters train on it).
"""

import hashlib
import io
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tads_jax.data import tar_writer  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.data import tasks  # noqa: E402  pylint: disable=wrong-import-position

GROUND_TRUTH = 'ground_truth.parquet'
RECORD = 'labelled_pool.json'
_GT_SCHEMA = pa.schema([('uid', pa.string()), ('noise', pa.string()), ('on_task', pa.bool_()),
                        ('label', pa.int32()), ('true_label', pa.int32())])


def symmetric_noise(labels: np.ndarray, num_classes: int, rate: float,
                    seed: int) -> np.ndarray:  # [N] -> [N] int32
  """Labels with exactly round(rate N) of them, chosen uniformly, moved to a uniformly drawn
  other class."""
  labels = np.asarray(labels, np.int32)
  if not 0 <= rate <= 1:
    raise ValueError(f'label_noise: a fraction in [0, 1], got {rate}')
  flips = int(round(rate * labels.size))
  if flips and num_classes < 2:
    raise ValueError(f'label_noise: {rate} needs at least 2 classes, got {num_classes}')
  rng = np.random.default_rng([seed, 0x5E7])
  chosen = rng.permutation(labels.size)[:flips]
  noisy = labels.copy()
  noisy[chosen] = (labels[chosen] + rng.integers(1, num_classes, flips)) % num_classes
  return noisy


def source_classnames(source: str, tfds_data_dir: str | None = None) -> tuple:
  """An image folder's class names (its sub-folders, '_' read as ' ', as the task loader
  matches them), or a TFDS dataset's label names."""
  if source.startswith('tfds:'):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
    name = source[len('tfds:'):].partition(':')[0]
    return tuple(tfds.builder(name, data_dir=tfds_data_dir).info.features['label'].names)
  if not os.path.isdir(source):
    raise ValueError(f'{source}: not an image folder or tfds:NAME:SPLIT')
  return tuple(d.replace('_', ' ') for d in sorted(os.listdir(source))
               if not d.startswith('.') and os.path.isdir(os.path.join(source, d)))


def _png(image: np.ndarray) -> bytes:  # uint8 [S, S, 3]
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, 'PNG')
  return buf.getvalue()


def convert(source: str, out_dir: str, classnames=None, template: str = 'a photo of a {}.',
            image_size: int = 64, label_noise: float = 0.0, seed: int = 0,
            shard_size: int = 10_000, max_examples: int | None = None,
            tfds_data_dir: str | None = None) -> dict:
  """Writes the pool (shards, ground truth, record) into out_dir; returns the record."""
  if template.count('{}') != 1:
    raise ValueError(f"template: {template!r} must contain '{{}}' once")
  if shard_size < 1:
    raise ValueError(f'shard_size: must be >= 1, got {shard_size}')
  if os.path.isdir(out_dir) and any(n.endswith('.tar') for n in os.listdir(out_dir)):
    raise ValueError(f'{out_dir}: holds shards already; write the pool into an empty folder')
  classnames = tuple(classnames or source_classnames(source, tfds_data_dir))
  spec = tasks.TaskSpec(name='pool', kind='classification', classnames=classnames,
                        templates=(template,), train=source, eval=source)
  data = tasks.load_split(spec, 'train', image_size, max_examples, tfds_data_dir)
  true_labels = data.labels  # [N]
  labels = symmetric_noise(true_labels, len(classnames), label_noise, seed)  # [N]
  # uids from where each image came from (relative to a folder), so a rerun gives the same.
  where = [k if k.startswith('tfds:') else os.path.relpath(k, source) for k in data.keys]
  uids = [hashlib.md5(w.encode('utf-8')).hexdigest() for w in where]
  os.makedirs(out_dir, exist_ok=True)
  shards = []
  for first in range(0, len(uids), shard_size):
    path = os.path.join(out_dir, f'{first // shard_size:08d}.tar')
    rows = range(first, min(first + shard_size, len(uids)))
    tar_writer.write_shard(path, ((f'{i:09d}', {
        'png': _png(data.images[i]), 'txt': template.format(classnames[labels[i]]),
        'json': {'uid': uids[i], 'label': int(labels[i])}}) for i in rows))
    shards.append(path)
  mislabelled = labels != true_labels  # [N]
  pq.write_table(pa.table({
      'uid': uids, 'noise': np.where(mislabelled, 'mislabelled', 'clean').tolist(),
      'on_task': [True] * len(uids), 'label': labels, 'true_label': true_labels},
                          schema=_GT_SCHEMA), os.path.join(out_dir, GROUND_TRUTH))
  record = {'source': source, 'classnames': list(classnames), 'template': template,
            'image_size': image_size, 'label_noise': label_noise, 'seed': seed,
            'samples': len(uids), 'mislabelled': int(mislabelled.sum()),
            'skips': dict(data.skips), 'shards': shards,
            'ground_truth': os.path.join(out_dir, GROUND_TRUTH)}
  with open(os.path.join(out_dir, RECORD), 'w') as f:
    json.dump(record, f, indent=2)
  return record


def _define_flags():
  """Flags only when run as a script: importing the module (tests) defines none."""
  flags.DEFINE_string('source', None, 'Image folder (a sub-folder per class) or '
                      'tfds:NAME[:SPLIT] (split default train).')
  flags.DEFINE_string('out', None, 'Folder to write the pool into (no shards in it yet).')
  flags.DEFINE_list('classnames', None, 'Class names in label order (default: the '
                    "folder's sub-folders, sorted, or the TFDS label names).")
  flags.DEFINE_string('template', 'a photo of a {}.', 'The class prompt: the caption.')
  flags.DEFINE_integer('image_size', 64, 'Side of the stored square images.')
  flags.DEFINE_float('label_noise', 0.0, 'Share of labels flipped to another class.')
  flags.DEFINE_integer('seed', 0, 'Draws the flipped samples and their classes.')
  flags.DEFINE_integer('shard_size', 10_000, 'Samples per tar shard.')
  flags.DEFINE_integer('max_examples', None, 'Only the first N examples of the source.')
  flags.DEFINE_string('tfds_data_dir', None, 'TFDS data_dir (prepared as array_record).')
  flags.mark_flags_as_required(['source', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  try:
    record = convert(f.source, f.out, f.classnames, f.template, f.image_size, f.label_noise,
                     f.seed, f.shard_size, f.max_examples, f.tfds_data_dir)
  except ValueError as e:
    sys.exit(f'error: {e}')
  print(f"{record['samples']} samples ({record['mislabelled']} mislabelled) of "
        f"{len(record['classnames'])} classes in {len(record['shards'])} shards under {f.out}")
  print(f"--config.pool.format=webdataset --config.pool.shards='{f.out}/*.tar' "
        f"--config.pool.ground_truth={record['ground_truth']} "
        '--config.selector.name=clip_powered --config.clip_powered.groups=label')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
