"""Bad configs fail before any work, with a message naming the field."""

import os
import subprocess
import sys

import pytest

from tads_jax import config as config_lib
from tads_jax import main

from configs import default
from conftest import REPO, validate


def test_default_config_is_valid():
  validate(default.get_config())


@pytest.mark.parametrize('field,value,message', [
    ('selector.name', 'nope', r"config.selector.name: unknown selector 'nope'"),
    ('stages', ('ingest', 'teleport'), r"config.stages: unknown stage 'teleport'"),
    ('stages', ('select', 'ingest'), r'config.stages: stages must be distinct and in the order'),
    ('pool.format', 'csv', r"config.pool.format: unknown format 'csv'"),
    ('selection.fraction', 1.5, r'config.selection.fraction: must be in \(0, 1\]'),
    ('selection.fraction', 0.0, r'config.selection.fraction: must be in \(0, 1\]'),
    ('encoder.checkpoint', '/no/such/ckpt', r'config.encoder.checkpoint: no such file'),
    ('tasks', '/no/such/tasks.json', r'config.tasks: no such task-list file'),
    ('pool.image_size', 4, r'config.pool.image_size: must be >= 8'),
    ('selection.method', 'lottery', r"config.selection.method: unknown method 'lottery'"),
    ('features.operator_settings.entropy.bin', 8,
     r'config.features.operator_settings.entropy.bin: unknown setting; entropy has bins'),
])
def test_bad_values_name_the_field(field, value, message, tmp_path):
  c = default.get_config()
  node = c
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  with c.unlocked():
    node[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    main.run(c, str(tmp_path / 'work'))
  assert not (tmp_path / 'work').exists()  # failed before any work


def test_webdataset_pool_needs_matching_shards(tmp_path):
  c = default.get_config()
  c.pool.format = 'webdataset'
  del c['tasks']  # the default holds a string; a list is a different type
  c.tasks = []
  with pytest.raises(config_lib.ConfigError, match='config.pool.shards: required'):
    validate(c)
  c.pool.shards = str(tmp_path / 'missing' / '*.tar')
  with pytest.raises(config_lib.ConfigError, match='config.pool.shards: .*missing'):
    validate(c)


def _cli(tmp_path, *flags):
  return subprocess.run(
      [sys.executable, '-m', 'tads_jax.main', '--config', os.path.join(REPO, 'configs',
       'default.py'), '--workdir', str(tmp_path / 'work'), *flags],
      capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_wrong_type_and_unknown_field_name_the_field(tmp_path):
  r = _cli(tmp_path, '--config.selection.fraction=lots')
  assert r.returncode != 0 and 'selection.fraction' in r.stderr
  r = _cli(tmp_path, '--config.selection.fractoin=0.2')
  assert r.returncode != 0 and 'fractoin' in r.stderr
  r = _cli(tmp_path, '--config.selector.name=nope')
  assert r.returncode != 0 and "config.selector.name: unknown selector 'nope'" in r.stderr
  assert not (tmp_path / 'work').exists()


def test_task_entries_are_checked(tmp_path):
  c = default.get_config()
  c.pool.format = 'webdataset'
  (tmp_path / 'p.tar').write_bytes(b'')
  c.pool.shards = str(tmp_path / 'p.tar')
  del c['tasks']
  c.tasks = [dict(name='cls', kind='classification', classnames=['a', 'b'],
                  templates=['a photo of a {}.'], train=str(tmp_path / 'missing-*.tar'),
                  eval=str(tmp_path))]
  with pytest.raises(config_lib.ConfigError, match=r'config.tasks\[cls\].train: .*missing'):
    validate(c)
  c.tasks[0]['kind'] = 'segmentation'
  with pytest.raises(config_lib.ConfigError, match=r'config.tasks: .*kind'):
    validate(c)


@pytest.mark.parametrize('field,value,message', [
    ('batch_size', 0, r'config.selection.soft_cap.batch_size: must be >= 1'),
    ('penalty', -0.1, r'config.selection.soft_cap.penalty: must be >= 0'),
    ('temperature', 0.0, r'config.selection.soft_cap.temperature: must be > 0'),
])
def test_soft_cap_settings_are_checked(field, value, message):
  c = default.get_config()
  c.selection.method = 'soft_cap'
  validate(c)
  c.selection.soft_cap[field] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    validate(c)


def test_task_folder_without_images_fails_validation_before_any_work(tmp_path):
  """Found at validation, so the embed stage never starts (and never discards the pool's
  embeddings for a task it then cannot load)."""
  c = default.get_config()
  c.pool.format = 'webdataset'
  (tmp_path / 'p.tar').write_bytes(b'')
  c.pool.shards = str(tmp_path / 'p.tar')
  for name in ('a', 'b'):
    (tmp_path / 'train' / name).mkdir(parents=True)
    (tmp_path / 'train' / name / 'readme.txt').write_text('no image here')
  (tmp_path / 'train' / 'a' / 'x.png').write_bytes(b'listed, not decoded at validation')
  del c['tasks']
  c.tasks = [dict(name='cls', kind='classification', classnames=['a', 'b'],
                  templates=['a photo of a {}.'], train=str(tmp_path / 'train'),
                  eval=str(tmp_path / 'eval'))]
  (tmp_path / 'eval' / 'a').mkdir(parents=True)
  (tmp_path / 'eval' / 'b').mkdir(parents=True)
  with pytest.raises(config_lib.ConfigError,
                     match=r'config.tasks\[cls\].eval: .*no image file .* of '):
    validate(c)
  (tmp_path / 'eval' / 'c').mkdir()
  with pytest.raises(config_lib.ConfigError, match=r"config.tasks\[cls\].eval: .*\['c'\]"):
    validate(c)


def test_build_names_the_config_field_of_a_bad_value():
  import ml_collections  # pylint: disable=import-outside-toplevel
  from tads_jax import meta  # pylint: disable=import-outside-toplevel
  block = ml_collections.ConfigDict(dict(unroll=2, tau=0.5))
  cfg = config_lib.build(meta.MetaConfig, block, 'config.tads.meta', seed=3)
  assert (cfg.unroll, cfg.tau, cfg.seed) == (2, 0.5, 3)
  with pytest.raises(config_lib.ConfigError,
                     match=r'^config\.tads\.meta\.unroll: expected an integer >= 1, got 0$'):
    config_lib.build(meta.MetaConfig, dict(unroll=0), 'config.tads.meta')
  with pytest.raises(config_lib.ConfigError,
                     match=r'^config\.flyt\.meta\.unrol: unknown field; known fields: '):
    config_lib.build(meta.MetaConfig, dict(unrol=2), 'config.flyt.meta')


@pytest.mark.parametrize('message, where, classes, renames, expected', [
    ('TrainConfig.lr: bad', 'config.encoder', ('TrainConfig',), None,
     'config.encoder.lr: bad'),
    ("CLIP preset 'huge' unknown", 'config.encoder', ('TrainConfig',), None,
     "config.encoder: CLIP preset 'huge' unknown"),
    ('TrainConfig.__init__() missing 1 argument', 'config.encoder', ('TrainConfig',), None,
     'config.encoder: TrainConfig.__init__() missing 1 argument'),
    ('group_weights.quality: < 0', 'config.tads', (), {'group_weights': 'config.tads.prior'},
     'config.tads.prior.quality: < 0'),
    ('CLIPConfig.image_size: a; CLIPConfig.patch_size: b', 'config.evaluate.pixels',
     ('TrainConfig',), {'CLIPConfig.image_size': 'config.evaluate.pixels.image_size',
                        'CLIPConfig': 'config.evaluate.pixels.model_overrides'},
     'config.evaluate.pixels.image_size: a; '
     'config.evaluate.pixels.model_overrides.patch_size: b'),
])
def test_field_error_rewrites_the_code_names_to_config_fields(message, where, classes,
                                                              renames, expected):
  error = config_lib.field_error(ValueError(message), where, *classes, renames=renames)
  assert isinstance(error, config_lib.ConfigError) and str(error) == expected


def test_bad_world_field_is_named_in_the_config():
  c = default.get_config()
  c.pool.synthetic.num_samples = 0
  with pytest.raises(config_lib.ConfigError, match=r'^config\.pool\.synthetic\.num_samples: '):
    validate(c)


def _pixel_check_config(**check):
  c = default.get_config()
  c.evaluate.pixel_check.update(check)
  return c


@pytest.mark.parametrize('change,message', [
    (dict(seeds=-1), r'^config\.evaluate\.pixel_check\.seeds: expected an integer >= 0, '
                     r'got -1$'),
    (dict(baselines=('tads',)), r"^config\.evaluate\.pixel_check\.baselines: 'tads' is not "
                                r'one of config\.evaluate\.baselines \(full, random, '
                                r'clip_score\)$'),
    (dict(seeds=1, baselines=('random', 'random')),
     r"^config\.evaluate\.pixel_check\.baselines: names repeat in \('random', 'random'\)$"),
])
def test_bad_pixel_check_values_name_the_field(change, message):
  c = _pixel_check_config(**change)
  with pytest.raises(config_lib.ConfigError, match=message):
    validate(c)


def test_pixel_check_field_types_and_when_it_conflicts_or_reads_the_pixel_settings():
  c = default.get_config()
  del c.evaluate.pixel_check['seeds']
  c.evaluate.pixel_check.seeds = 'two'
  with pytest.raises(config_lib.ConfigError, match=r"^config\.evaluate\.pixel_check\.seeds: "
                     r"expected an integer >= 0, got 'two'$"):
    validate(c)
  c = default.get_config()
  del c.evaluate.pixel_check['baselines']
  c.evaluate.pixel_check.baselines = 3
  with pytest.raises(config_lib.ConfigError, match=r'^config\.evaluate\.pixel_check\.'
                     r'baselines: expected a list of names, got int 3$'):
    validate(c)
  # The main proxy already is the pixel proxy: the check is off whatever it says.
  c = _pixel_check_config(seeds=1)
  c.evaluate.proxy = 'pixels'
  validate(c)
  from tads_jax.stages import evaluate  # pylint: disable=g-import-not-at-top
  assert evaluate.pixel_check(c) == (0, ('clip_score',))
  # The pixel settings are checked when the check is on, and only then.
  c = _pixel_check_config(seeds=0, baselines=('clip_score,full',))  # as the CLI gives it
  c.evaluate.pixels.batch_size = 0
  validate(c)
  c.evaluate.pixel_check.seeds = 2
  with pytest.raises(config_lib.ConfigError,
                     match=r'^config\.evaluate\.pixels\.batch_size: expected an integer >= 1'):
    validate(c)
  c.evaluate.pixels.batch_size = 64
  validate(c)
  # A config written before the field existed: no check.
  del c.evaluate['pixel_check']
  validate(c)


def test_validation_fraction_and_evaluate_split_are_checked():
  """tads.validation_fraction in [0, 1); evaluate.split 'eval' | 'validation', the latter
  only with a validation split; the synthetic world's tasks need two train examples per
  class and retrieval images to cut one; one-line errors naming the field."""
  c = default.get_config()
  assert c.tads.validation_fraction == 0.0 and c.evaluate.split == 'eval'
  validate(c)
  for value, message in ((1.0, r'must be in \[0, 1\)'), (-0.1, r'must be in \[0, 1\)'),
                         ('0.2', 'expected a number'), (True, 'expected a number')):
    c = default.get_config()
    del c.tads['validation_fraction']  # a ConfigDict field keeps its type
    c.tads.validation_fraction = value
    with pytest.raises(config_lib.ConfigError,
                       match=rf'^config\.tads\.validation_fraction: {message}'):
      validate(c)
  c = default.get_config()
  c.evaluate.split = 'validation'
  c.tads.validation_fraction = 0.0
  with pytest.raises(config_lib.ConfigError, match=r"^config\.evaluate\.split: 'validation' "
                     r'.*config\.tads\.validation_fraction is 0'):
    validate(c)
  c.tads.validation_fraction = 0.2
  validate(c)
  c.evaluate.split = 'test'
  with pytest.raises(config_lib.ConfigError,
                     match=r"^config\.evaluate\.split: 'test' is not one of eval, validation$"):
    validate(c)
  for field in ('train_per_class', 'retrieval_train'):
    c = default.get_config()
    c.tads.validation_fraction = 0.2
    c.pool.synthetic[field] = 1
    with pytest.raises(config_lib.ConfigError, match=r'^config\.tads\.validation_fraction: '
                       rf'0\.2 .*config\.pool\.synthetic\.{field}=1 leaves none to fit on'):
      validate(c)
    c.tads.validation_fraction = 0.0  # no cut: one example is enough
    validate(c)
  # Configs written before the fields existed.
  c = default.get_config()
  del c.tads['validation_fraction']
  del c.evaluate['split']
  validate(c)
