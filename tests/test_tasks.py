import io
import json
import os

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from tads_jax.data import images
from tads_jax.data import tar_writer
from tads_jax.data import tasks

# Distinct solid colours: after resizing, the colour tells which class an image came from.
COLOURS = {'apple': (200, 30, 30), 'zebra': (20, 20, 20), 'sky blue': (60, 140, 240)}


def _png(colour, h=10, w=14, fmt='PNG'):
  buf = io.BytesIO()
  Image.fromarray(np.full((h, w, 3), colour, np.uint8)).save(buf, format=fmt)
  return buf.getvalue()


def _task(**kw):
  task = dict(name='t', kind='classification', classnames=['zebra', 'apple'],
              templates=['a photo of a {}.'], train='train.tar', eval='eval.tar')
  task.update(kw)
  return task


# --- images.resize_center_crop ----------------------------------------------------------


def test_resize_center_crop_geometry():
  # Vertical thirds: red | green | blue. The centre crop of a 30x90 image at 30 is the
  # green third exactly (no resize needed: the shorter side is already 30).
  wide = np.zeros((30, 90, 3), np.uint8)
  wide[:, :30, 0] = 255
  wide[:, 30:60, 1] = 255
  wide[:, 60:, 2] = 255
  out = images.resize_center_crop(wide, 30)
  np.testing.assert_array_equal(out, wide[:, 30:60])
  # Shrinking to 10: the crop is still inside the green third, away from its edges.
  out = images.resize_center_crop(wide, 10)
  assert out.shape == (10, 10, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[:, 3:7], np.broadcast_to([0, 255, 0], (10, 4, 3)))
  # Portrait, upscaled; a constant image stays constant.
  tall = np.full((40, 7, 3), 77, np.uint8)
  np.testing.assert_array_equal(images.resize_center_crop(tall, 16), np.full((16, 16, 3), 77))
  # Grayscale [H, W, 1] (TFDS MNIST) becomes three equal channels.
  gray = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
  np.testing.assert_array_equal(images.resize_center_crop(gray, 8), np.repeat(gray, 3, -1))
  with pytest.raises(ValueError):
    images.resize_center_crop(np.zeros((4, 4, 2), np.uint8), 4)


# --- parse_tasks ------------------------------------------------------------------------


def test_parse_list_resolves_against_base_dir(tmp_path):
  (spec,) = tasks.parse_tasks([_task()], base_dir=str(tmp_path))
  assert spec == tasks.TaskSpec(name='t', kind='classification', classnames=('zebra', 'apple'),
                                templates=('a photo of a {}.',),
                                train=str(tmp_path / 'train.tar'),
                                eval=str(tmp_path / 'eval.tar'))
  (spec,) = tasks.parse_tasks([_task(eval='tfds:cifar10:test', train='/abs/x.tar')])
  assert spec.eval == 'tfds:cifar10:test' and spec.train == '/abs/x.tar'
  retrieval = dict(name='r', kind='retrieval', train='a.tar', eval='b.tar')
  config = ml_collections.ConfigDict({'tasks': [_task(), retrieval]})
  specs = tasks.parse_tasks(config.tasks)
  assert [s.kind for s in specs] == ['classification', 'retrieval']
  assert specs[1].classnames == () and specs[1].train == 'a.tar'


def test_parse_json_file_resolves_against_its_folder(tmp_path):
  sub = tmp_path / 'conf'
  sub.mkdir()
  (sub / 'tasks.json').write_text(json.dumps([_task(train='data/{0..1}.tar')]))
  (spec,) = tasks.parse_tasks(str(sub / 'tasks.json'))
  assert spec.train == str(sub / 'data/{0..1}.tar')
  (sub / 'bad.json').write_text('[{"name": ')
  with pytest.raises(ValueError, match='bad.json'):
    tasks.parse_tasks(str(sub / 'bad.json'))
  with pytest.raises(ValueError, match='none.json'):
    tasks.parse_tasks(str(sub / 'none.json'))


@pytest.mark.parametrize('items, pattern', [
    ([_task(colour='red')], r"task 0 \('t'\): unknown field.*colour"),
    ([{k: v for k, v in _task().items() if k != 'eval'}], r"task 0 \('t'\): missing field 'eval'"),
    ([_task(kind='detection')], r"task 0 \('t'\): field 'kind'.*'detection'"),
    ([_task(classnames=[])], r"task 0 \('t'\): field 'classnames' must not be empty"),
    ([{k: v for k, v in _task().items() if k != 'templates'}], r"missing field 'templates'"),
    ([_task(templates=['a photo'])], r"field 'templates': 'a photo' must contain"),
    ([_task(templates=['{} {}'])], r"field 'templates'"),
    ([_task(classnames=['a', 'a'])], r"duplicate class names \['a'\]"),
    ([_task(), _task()], r"duplicate task name\(s\) \['t'\]"),
    ([_task(name='r', kind='retrieval')], r"task 0 \('r'\): field 'classnames'"),
    ([_task(), _task(name='u', train=3)], r"task 1 \('u'\): field 'train'"),
    ([], 'empty'),
    (['x'], 'task 0'),
])
def test_parse_errors_name_task_and_field(items, pattern):
  with pytest.raises(ValueError, match=pattern):
    tasks.parse_tasks(items)


# --- load_split: image folder -----------------------------------------------------------


def _folder(root, per_class=2):
  for name in ('apple', 'zebra', 'sky_blue'):
    d = root / name
    d.mkdir(parents=True)
    for i in range(per_class):
      (d / f'{i}.png').write_bytes(_png(COLOURS[name.replace('_', ' ')], 10 + i, 14))
    (d / 'notes.txt').write_text('not an image')
  return str(root)


def _colour_label(image, classnames):
  colour = tuple(int(c) for c in image[image.shape[0] // 2, image.shape[1] // 2])
  return classnames.index(next(n for n, c in COLOURS.items() if c == colour))


def test_image_folder_labels_follow_classnames(tmp_path):
  root = _folder(tmp_path / 'train')
  (tmp_path / 'train' / 'zebra' / 'broken.jpg').write_bytes(b'\xff\xd8 not a jpeg')
  classnames = ['zebra', 'sky blue', 'apple']  # not sorted; folder 'sky_blue' is 'sky blue'
  (spec,) = tasks.parse_tasks([_task(classnames=classnames, train=root)])
  split = tasks.load_split(spec, 'train', image_size=8)
  assert split.images.shape == (6, 8, 8, 3) and split.images.dtype == np.uint8
  assert split.labels.dtype == np.int32
  np.testing.assert_array_equal(split.labels, [0, 0, 1, 1, 2, 2])
  assert [_colour_label(im, classnames) for im in split.images] == split.labels.tolist()
  assert split.skips == {'corrupt_image': 1}
  assert split.captions is None and split.keys[0].endswith(os.path.join('zebra', '0.png'))
  assert len(tasks.load_split(spec, 'train', 8, max_examples=3).labels) == 3


def test_image_folder_mismatch_is_an_error(tmp_path):
  root = _folder(tmp_path / 'train')
  (spec,) = tasks.parse_tasks([_task(classnames=['zebra', 'apple'], train=root)])
  with pytest.raises(ValueError, match=r"folders without a class: \['sky_blue'\]"):
    tasks.load_split(spec, 'train', 8)
  (spec,) = tasks.parse_tasks([_task(classnames=['zebra', 'apple', 'sky blue', 'pear'],
                                     train=root)])
  with pytest.raises(ValueError, match=r"classes without a folder: \['pear'\]"):
    tasks.load_split(spec, 'train', 8)
  (spec,) = tasks.parse_tasks([dict(name='r', kind='retrieval', train=root, eval=root)])
  with pytest.raises(ValueError, match='retrieval'):
    tasks.load_split(spec, 'eval', 8)


# --- load_split: webdataset -------------------------------------------------------------


def test_webdataset_classification(tmp_path):
  classnames = ['zebra', 'apple', 'sky blue']
  samples = []
  for i in range(7):  # odd samples JPEG, even PNG
    fmt = 'JPEG' if i % 2 else 'PNG'
    samples.append((f'{i:04d}', {fmt.lower().replace('jpeg', 'jpg'):
                                 _png(COLOURS[classnames[i % 3]], fmt=fmt), 'cls': i % 3}))
  samples.insert(3, ('nolabel', {'png': _png(COLOURS['apple'])}))
  samples.insert(4, ('broken', {'png': b'\x89PNG broken', 'cls': 1}))
  tar_writer.write_shard(str(tmp_path / '00000000.tar'), samples[:5])
  tar_writer.write_shard(str(tmp_path / '00000001.tar'), samples[5:])
  (spec,) = tasks.parse_tasks([_task(classnames=classnames, eval='{00000000..00000001}.tar')],
                              base_dir=str(tmp_path))
  split = tasks.load_split(spec, 'eval', image_size=6)
  np.testing.assert_array_equal(split.labels, [i % 3 for i in range(7)])
  # JPEG is lossy: compare colours within a tolerance.
  for image, label in zip(split.images, split.labels):
    assert np.abs(image.astype(int) - COLOURS[classnames[label]]).max() <= 3
  assert split.skips == {'missing_label': 1, 'corrupt_image': 1}
  assert split.keys[0] == str(tmp_path / '00000000.tar') + ':0000'
  split = tasks.load_split(spec, 'eval', image_size=6, max_examples=2)
  assert split.labels.tolist() == [0, 1]


def test_webdataset_bad_label_names_file_and_key(tmp_path):
  tar_writer.write_shard(str(tmp_path / 'e.tar'), [('k7', {'png': _png((1, 2, 3)), 'cls': 2})])
  (spec,) = tasks.parse_tasks([_task(eval=str(tmp_path / 'e.tar'))])
  with pytest.raises(ValueError, match=r'e\.tar: k7\.cls: label 2 is outside \[0, 2\)'):
    tasks.load_split(spec, 'eval', 4)
  tar_writer.write_shard(str(tmp_path / 'f.tar'), [('k8', {'png': _png((1, 2, 3)),
                                                           'cls': 'cat'})])
  (spec,) = tasks.parse_tasks([_task(eval=str(tmp_path / 'f.tar'))])
  with pytest.raises(ValueError, match=r"f\.tar: k8\.cls: label 'cat'"):
    tasks.load_split(spec, 'eval', 4)
  (spec,) = tasks.parse_tasks([_task(eval=str(tmp_path / 'nothing-*.tar'))])
  with pytest.raises(ValueError, match=r"task 't' eval.*nothing-\*\.tar"):
    tasks.load_split(spec, 'eval', 4)
  (spec,) = tasks.parse_tasks([_task(eval=str(tmp_path / 'plainfile'))])
  with pytest.raises(ValueError, match='not a webdataset shard pattern'):
    tasks.load_split(spec, 'eval', 4)


def test_webdataset_retrieval_multiple_captions(tmp_path):
  two_captions = 'a red apple\n\nan apple on a table\n'
  samples = [('a', {'jpg': _png(COLOURS['apple'], fmt='JPEG'), 'txt': two_captions}),
             ('b', {'png': _png(COLOURS['zebra']), 'txt': 'a zebra'}),
             ('c', {'png': _png(COLOURS['zebra']), 'txt': ' \n'}),
             ('d', {'txt': 'no image'})]
  tar_writer.write_shard(str(tmp_path / 'r.tar'), samples)
  (spec,) = tasks.parse_tasks([dict(name='coco', kind='retrieval', train='r.tar',
                                    eval='r.tar')], base_dir=str(tmp_path))
  split = tasks.load_split(spec, 'train', image_size=5)
  assert split.captions == [['a red apple', 'an apple on a table'], ['a zebra']]
  assert split.labels is None and split.images.shape == (2, 5, 5, 3)
  assert split.skips == {'missing_caption': 1, 'missing_image': 1}


# --- load_split: TFDS -------------------------------------------------------------------
# tfds.testing.mock_data (policy USE_CODE: features from the builder's code, random
# examples, no files, no network) works with tfds.data_source without TensorFlow.


@pytest.mark.usefixtures('tfds_tmp')
def test_tfds_source_matches_data_source(tmp_path):
  cifar = [str(i) for i in range(10)]
  (spec,) = tasks.parse_tasks([_task(classnames=cifar, eval='tfds:cifar10:test',
                                     train='tfds:mnist')])
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    ref = tfds.data_source('cifar10', split='test')
    split = tasks.load_split(spec, 'eval', image_size=32, tfds_data_dir=str(tmp_path))
    # 32x32 at size 32: no resampling, so the pixels must be the source's exactly.
    np.testing.assert_array_equal(split.images, np.stack([ref[i]['image'] for i in range(4)]))
    np.testing.assert_array_equal(split.labels, [ref[i]['label'] for i in range(4)])
    assert split.keys == [f'tfds:cifar10:test[{i}]' for i in range(4)]
    mnist = tfds.data_source('mnist', split='train')  # no split given: 'train' for train
    split = tasks.load_split(spec, 'train', image_size=28, max_examples=3)
    np.testing.assert_array_equal(split.images[..., 2], np.stack(
        [mnist[i]['image'][..., 0] for i in range(3)]))
    np.testing.assert_array_equal(split.labels, [mnist[i]['label'] for i in range(3)])


@pytest.mark.usefixtures('tfds_tmp')
def test_tfds_errors(tmp_path):
  (spec,) = tasks.parse_tasks([_task(classnames=['a', 'b'], eval='tfds:cifar10:test')])
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError, match=r"'label' has 10 classes but task 't' has 2"):
      tasks.load_split(spec, 'eval', 8)
  (spec,) = tasks.parse_tasks([dict(name='r', kind='retrieval', train='tfds:coco',
                                    eval='tfds:coco')])
  with pytest.raises(ValueError, match='classification tasks only'):
    tasks.load_split(spec, 'eval', 8)
  # Not prepared in data_dir, and nothing may be downloaded: a clear error.
  (spec,) = tasks.parse_tasks([_task(classnames=[str(i) for i in range(10)],
                                     eval='tfds:cifar10:test')])
  with pytest.raises(ValueError, match=r"tfds:cifar10:test.*cannot open TFDS 'cifar10'"):
    tasks.load_split(spec, 'eval', 8, tfds_data_dir=str(tmp_path))
