"""Config validation: every bad value fails before any work, naming the field.

build / field_error turn a settings dataclass's own checks (MetaConfig, TrainConfig, ...)
into errors naming the config field the value came from. At import this module reads only
pipeline (which reads nothing of tads_jax), the rest inside functions, so that any module
(meta, train, a stage) may use them without an import cycle.
"""

import dataclasses
import os
import re

import ml_collections

from tads_jax import pipeline

POOL_FORMATS = ('synthetic', 'webdataset', 'datacomp')


class ConfigError(ValueError):
  """A config value that cannot work; the message starts with the field's dotted name."""


def field_error(error: Exception, where: str, *classes,
                renames: dict | None = None) -> ConfigError:
  """`error`, raised while building the settings dataclasses `classes` (or their names)
  from the config block `where`, as a ConfigError naming the config field.

  The dataclasses name a bad field `Class.field: ...`; that reads `where.field: ...`.
  renames maps other names the code gives a setting to its config field, the first that
  matches winning (value.prior_weights' 'group_weights' is 'config.tads.prior'). A
  message that names no config field gets `where: ` in front.
  """
  names = dict(renames or {})
  for cls in classes:
    names[cls if isinstance(cls, str) else cls.__name__] = where
  message = str(error)
  if names:  # one pass, so that a replacement is never replaced again
    pattern = '|'.join(re.escape(name) for name in names)
    message = re.sub(rf'(?<![\w.])({pattern})(?=[.:])(?!\._)',
                     lambda m: names[m.group(1)], message)
  if not re.match(rf'{re.escape(where)}[.:\[]', message):
    message = f'{where}: {message}'
  return ConfigError(message)


def build(cls, block, where: str, **fields):
  """cls(**block, **fields): a settings dataclass from a config block (a ConfigDict or a
  dict), checked by its own __post_init__; a bad value raises ConfigError naming the
  config field, e.g. build(meta.MetaConfig, config.tads.meta, 'config.tads.meta',
  seed=config.seed) fails with 'config.tads.meta.unroll: ...'."""
  values = dict(block.to_dict() if hasattr(block, 'to_dict') else block)
  values.update(fields)
  known = [f.name for f in dataclasses.fields(cls)]
  for name in values:
    if name not in known:
      raise ConfigError(f'{where}.{name}: unknown field; known fields: '
                        f'{", ".join(sorted(known))}')
  try:
    return cls(**values)
  except (TypeError, ValueError) as e:
    raise field_error(e, where, cls) from None


def _get(config, dotted):
  node = config
  for part in dotted.split('.'):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      raise ConfigError(f'config.{dotted}: missing field') from None
  return node


def _expect_type(config, dotted, types, what):
  value = _get(config, dotted)
  # bool is an int subclass; a flag like --config.seed=True is still a mistake.
  if isinstance(value, bool) and bool not in types:
    raise ConfigError(f'config.{dotted}: expected {what}, got {value!r}')
  if not isinstance(value, types):
    raise ConfigError(f'config.{dotted}: expected {what}, got {type(value).__name__} '
                      f'{value!r}')
  return value


def validate(config: ml_collections.ConfigDict, known_stages, known_selectors) -> None:
  """Raises ConfigError naming the first field that cannot work."""
  _expect_type(config, 'seed', (int,), 'an integer')
  _check_distributed(config)

  stages = _get(config, 'stages')
  if isinstance(stages, (str, tuple, list)):
    stages = pipeline.name_list(stages)
  if not isinstance(stages, (tuple, list)) or not stages:
    raise ConfigError(f'config.stages: expected a non-empty list of stage names, got '
                      f'{stages!r}')
  for name in stages:
    if name not in known_stages:
      raise ConfigError(f'config.stages: unknown stage {name!r}; known stages, in order: '
                        f'{", ".join(known_stages)}')
  order = [known_stages.index(s) for s in stages]
  if order != sorted(order) or len(set(order)) != len(order):
    raise ConfigError(f'config.stages: stages must be distinct and in the order '
                      f'{", ".join(known_stages)}; got {", ".join(stages)}')

  fmt = _expect_type(config, 'pool.format', (str,), 'a string')
  if fmt not in POOL_FORMATS:
    raise ConfigError(f'config.pool.format: unknown format {fmt!r}; one of '
                      f'{", ".join(POOL_FORMATS)}')
  size = _expect_type(config, 'pool.image_size', (int,), 'an integer')
  if size < 8:
    raise ConfigError(f'config.pool.image_size: must be >= 8, got {size}')
  if fmt == 'synthetic':
    _check_world(config)
  if fmt == 'webdataset':
    _check_spec(config, 'pool.shards')
  if fmt == 'datacomp':
    _check_spec(config, 'pool.metadata')
    model = _expect_type(config, 'pool.embedding_model', (str,), 'a string')
    if model not in ('b32', 'l14'):
      raise ConfigError(f"config.pool.embedding_model: 'b32' or 'l14', got {model!r}")
  _check_optional_path(config, 'pool.ground_truth')
  _check_optional_path(config, 'encoder.checkpoint')
  _expect_type(config, 'encoder.train_on', (str,), 'a string')
  if not config.encoder.checkpoint and 'encoder' in stages and fmt != 'datacomp':
    _check_encoder_training(config)
  if 'features' in stages:
    _check_features(config)
  if 'embed' in stages:
    dtype = _expect_type(config, 'embed.dtype', (str,), 'a string')
    if dtype not in ('float32', 'bfloat16'):
      raise ConfigError(f"config.embed.dtype: 'float32' or 'bfloat16', got {dtype!r}")
    for field in ('embed.batch_size', 'embed.workers'):
      if _expect_type(config, field, (int,), 'an integer') < 1:
        raise ConfigError(f'config.{field}: must be positive')
  if config.get('data') is not None:  # no block: the reader's defaults
    if _expect_type(config, 'data.grain_workers', (int,), 'an integer') < 0:
      raise ConfigError(f'config.data.grain_workers: must be >= 0, got '
                        f'{config.data.grain_workers}')

  tasks = _get(config, 'tasks')
  if isinstance(tasks, str):
    if tasks == 'synthetic':
      if fmt != 'synthetic':
        raise ConfigError("config.tasks: 'synthetic' needs pool.format='synthetic'; give "
                          'a task list or a JSON file instead')
    elif not os.path.isfile(tasks):
      raise ConfigError(f'config.tasks: no such task-list file {tasks!r}')
    else:
      _check_tasks(tasks)
  elif not isinstance(tasks, (list, tuple)):
    raise ConfigError(f"config.tasks: expected a task list, a JSON path or 'synthetic', "
                      f'got {type(tasks).__name__}')
  elif tasks:  # an empty list is allowed: selectors that need tasks say so themselves
    _check_tasks(tasks)
  _check_validation_split(config)

  if fmt == 'datacomp':
    _check_datacomp(config, stages)

  name = _expect_type(config, 'selector.name', (str,), 'a string')
  if name not in known_selectors:
    raise ConfigError(f'config.selector.name: unknown selector {name!r}; known: '
                      f'{", ".join(sorted(known_selectors))}')
  learns = known_selectors[name].learns
  if learns and 'select' in stages and 'learn' not in stages:
    raise ConfigError(f'config.stages: selector {name!r} learns from the pool before it '
                      'selects; add learn (after features, before select)')
  if not learns and 'learn' in stages:
    raise ConfigError(f'config.stages: selector {name!r} has nothing to learn; remove learn')
  if 'select' in stages or 'learn' in stages:
    check_selector(config, known_selectors[name], stages, 'config.selector.name')
  from tads_jax import selection  # pylint: disable=g-import-not-at-top
  fraction = _expect_type(config, 'selection.fraction', (float, int), 'a number')
  if not 0 < fraction <= 1:
    raise ConfigError(f'config.selection.fraction: must be in (0, 1], got {fraction}')
  method = _expect_type(config, 'selection.method', (str,), 'a string')
  if method not in selection.METHODS:
    raise ConfigError(f'config.selection.method: unknown method {method!r}; one of '
                      f'{", ".join(selection.METHODS)}')
  try:
    selection.dedup_mode(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if config.selection.get('dedup', 'none') != 'none' and 'features' not in stages:
    raise ConfigError(f'config.selection.dedup: {config.selection.dedup!r} reads the '
                      'features stage\'s duplicate flags; add features to config.stages')
  if method == 'soft_cap':
    if _expect_type(config, 'selection.soft_cap.batch_size', (int,), 'an integer') < 1:
      raise ConfigError('config.selection.soft_cap.batch_size: must be >= 1')
    if _expect_type(config, 'selection.soft_cap.penalty', (float, int), 'a number') < 0:
      raise ConfigError('config.selection.soft_cap.penalty: must be >= 0')
    if _expect_type(config, 'selection.soft_cap.temperature', (float, int), 'a number') <= 0:
      raise ConfigError('config.selection.soft_cap.temperature: must be > 0')
  if method == 'hard_cap':
    for field in ('batch_size', 'cap'):
      if _expect_type(config, f'selection.hard_cap.{field}', (int,), 'an integer') < 1:
        raise ConfigError(f'config.selection.hard_cap.{field}: must be >= 1')
    if _expect_type(config, 'selection.hard_cap.temperature', (float, int), 'a number') <= 0:
      raise ConfigError('config.selection.hard_cap.temperature: must be > 0')
  seen = _expect_type(config, 'evaluate.samples_seen', (int,), 'an integer')
  if seen <= 0:
    raise ConfigError(f'config.evaluate.samples_seen: must be positive, got {seen}')
  if 'evaluate' in stages:
    _check_evaluate(config, stages)
  _expect_type(config, 'export.shards', (bool,), 'true or false')
  shard_size = _expect_type(config, 'export.shard_size', (int,), 'an integer')
  if shard_size <= 0:
    raise ConfigError(f'config.export.shard_size: must be positive, got {shard_size}')


def _check_distributed(config):
  """config.distributed, with the TADS_* variables it would read (no block: one process)."""
  from tads_jax import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.settings(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _check_evaluate(config, stages):
  from tads_jax.stages import evaluate  # pylint: disable=g-import-not-at-top
  if _expect_type(config, 'evaluate.seeds', (int,), 'an integer') < 1:
    raise ConfigError('config.evaluate.seeds: must be >= 1')
  _expect_type(config, 'evaluate.lr', (float, int), 'a number')
  try:
    proxy = evaluate.proxy_kind(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if proxy == 'pixels':
    _check_pixel_proxy(config, "config.evaluate.proxy: 'pixels' trains",
                       "use evaluate.proxy='embedding'")
  try:
    evaluate.eval_split(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  try:
    evaluate.train_config(config, config.seed)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _expect_type(config, 'evaluate.baselines', (tuple, list, str), 'a list of names')
  try:
    names = evaluate.baseline_names(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  from tads_jax import selectors  # pylint: disable=g-import-not-at-top
  for name in names:
    if name != evaluate.FULL:
      check_selector(config, selectors.get(name), stages, 'config.evaluate.baselines')
  _check_pixel_check(config)


def _check_pixel_check(config):
  """evaluate.pixel_check: its fields, and, when it is on, the pixel proxy it trains."""
  from tads_jax.stages import evaluate  # pylint: disable=g-import-not-at-top
  try:
    seeds, _ = evaluate.pixel_check(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if not seeds:
    return
  _check_pixel_proxy(config, f'config.evaluate.pixel_check.seeds: {seeds} trains the pixel '
                     'proxy', 'set evaluate.pixel_check.seeds=0')
  try:
    evaluate.train_config(config, config.seed, proxy='pixels')
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _check_pixel_proxy(config, trains: str, instead: str):
  """The pixel proxy trains on the pool's images: a DataComp pool needs its tars. trains:
  the message's start (the field that asks for the pixel proxy); instead: the way out."""
  from tads_jax.stages import ingest  # pylint: disable=g-import-not-at-top
  for field in ('image_size', 'context_length', 'batch_size', 'samples_seen', 'warmup',
                'checkpoint_every'):
    _expect_type(config, f'evaluate.pixels.{field}', (int,), 'an integer')
  for field in ('lr', 'weight_decay', 'b2', 'eps'):
    _expect_type(config, f'evaluate.pixels.{field}', (float, int), 'a number')
  if config.pool.format == 'datacomp' and not ingest.has_images(config):
    raise ConfigError(f"{trains} on the pool's images, and this DataComp pool has no tars "
                      'beside its metadata (config.pool.metadata); add the tars or '
                      f'{instead}')


def check_selector(config, selector, stages, field: str) -> None:
  """What `selector` needs from the run (stages, tasks) is configured, and its own block
  is valid; ConfigError names the field."""
  needs = selector.needs_for(config)
  fmt = config.pool.format
  if 'features' in needs and 'features' not in stages:
    raise ConfigError(f'{field}: selector {selector.name!r} reads the features stage\'s '
                      'columns; add features to config.stages')
  if 'embeddings' in needs and 'embed' not in stages and fmt != 'datacomp':
    raise ConfigError(f'{field}: selector {selector.name!r} reads the pool embeddings; add '
                      'embed to config.stages')
  if 'tasks' in needs:
    if not config.tasks:
      raise ConfigError(f'config.tasks: selector {selector.name!r} ({field}) needs at least '
                        'one task with a train split')
    if fmt == 'datacomp' and not config.encoder.checkpoint:
      raise ConfigError(f'config.encoder.checkpoint: selector {selector.name!r} ({field}) '
                        'reads task embeddings, which for a DataComp pool '
                        "(config.pool.format='datacomp') are made in the pool's own space "
                        f'with {_datacomp_checkpoint(config)}; set config.encoder.checkpoint')
    if 'embed' not in stages:
      raise ConfigError(f'{field}: selector {selector.name!r} reads the task embeddings; add '
                        'embed to config.stages')
  try:
    selector.check_config(config)
    selector.output_for(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _datacomp_checkpoint(config) -> str:
  """Which checkpoint made a DataComp pool's embeddings, for messages."""
  from tads_jax.data import datacomp  # pylint: disable=g-import-not-at-top
  model = config.pool.embedding_model
  return (f'the Hugging Face CLIP folder of {datacomp.HF_CHECKPOINTS.get(model, "?")} '
          f'(config.pool.embedding_model={model!r})')


def _check_datacomp(config, stages):
  """A DataComp pool: what its tasks, operators and export need is there, before any work.

  Tasks are embedded in the pool's own space with encoder.checkpoint, whose dimension must
  be the npz's; exported shards are copied from the tars beside the metadata.
  """
  from tads_jax.data import datacomp  # pylint: disable=g-import-not-at-top
  try:
    paths = datacomp.list_metadata(config.pool.metadata)
    tars = datacomp.image_tars(paths)
  except ValueError as e:
    raise ConfigError(f'config.pool.metadata: {e}') from None
  if 'export' in stages and config.export.get('shards') is True and tars is None:
    raise ConfigError(f'config.export.shards: a DataComp pool is exported from its tars, and '
                      f'none is beside its metadata (config.pool.metadata; e.g. no '
                      f'{datacomp.tar_path(paths[0])}); add the tars or set '
                      'export.shards=False')
  checkpoint = config.encoder.checkpoint
  tasks = config.tasks
  if 'evaluate' in stages and not tasks:
    raise ConfigError('config.tasks: the evaluate stage scores the proxy on the tasks\' eval '
                      'splits, and a DataComp pool brings none; give the task list (see '
                      'configs/datacomp.py)')
  readers = [s for s in ('embed', 'features', 'evaluate') if s in stages]
  if tasks and readers and not checkpoint:
    raise ConfigError(f'config.encoder.checkpoint: config.tasks are embedded (and read by '
                      f'{", ".join(readers)}) in a DataComp pool\'s own space '
                      f"(config.pool.format='datacomp'), with {_datacomp_checkpoint(config)}; "
                      'set config.encoder.checkpoint, or config.tasks=[] for no tasks')
  if not checkpoint:
    return
  model = config.pool.embedding_model
  try:
    dim = datacomp.checkpoint_dim(checkpoint)
    shapes = datacomp.npz_dims(paths[0], model)
  except ValueError as e:
    raise ConfigError(f'config.encoder.checkpoint: {e}') from None
  for key, shape in shapes.items():
    if len(shape) != 2 or shape[1] != dim:
      raise ConfigError(f'config.encoder.checkpoint: {checkpoint!r} embeds in {dim} dimensions '
                        f'(config.json projection_dim), but {datacomp.npz_path(paths[0])} key '
                        f'{key!r} has shape {shape} (config.pool.embedding_model={model!r}); '
                        f'the pool\'s embeddings come from {datacomp.HF_CHECKPOINTS[model]}')


def _check_features(config):
  from tads_jax.stages import features as features_stage  # pylint: disable=g-import-not-at-top
  try:
    features_stage.operator_settings(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  for field in ('features.chunk', 'features.kmeans_k', 'features.relevance_top_m',
                'features.retrieval_prototypes'):
    if _expect_type(config, field, (int,), 'an integer') < 1:
      raise ConfigError(f'config.{field}: must be positive')
  if _expect_type(config, 'features.kmeans_iters', (int,), 'an integer') < 0:
    raise ConfigError('config.features.kmeans_iters: must be >= 0')
  if _expect_type(config, 'features.alpha', (float, int), 'a number') < 0:
    raise ConfigError('config.features.alpha: must be >= 0')
  try:
    features_stage.relevance_calibration(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if not isinstance(config.features.get('target_relevance', False), bool):
    raise ConfigError(f'config.features.target_relevance: expected True or False, got '
                      f'{config.features.target_relevance!r}')
  eps = _expect_type(config, 'features.semdedup_eps', (float, int), 'a number')
  if not 0 <= eps < 2:
    raise ConfigError(f'config.features.semdedup_eps: must be in [0, 2), got {eps}')


def _check_encoder_training(config):
  """The reference CLIP to train from scratch: every field must make a valid run."""
  from tads_jax.stages import encoder  # pylint: disable=g-import-not-at-top
  vocab = _expect_type(config, 'encoder.vocab_size', (int,), 'an integer')
  if vocab < 514:  # the 256 byte tokens, their end-of-word forms and 2 special tokens
    raise ConfigError(f'config.encoder.vocab_size: must be >= 514, got {vocab}')
  try:
    encoder.train_config(config, vocab).clip_config()
  except (ValueError, TypeError, KeyError) as e:
    raise field_error(e, 'config.encoder', 'TrainConfig') from None
  if config.encoder.get('word_loss', 0.0):
    count = _expect_type(config, 'encoder.word_min_count', (int,), 'an integer')
    if count < 1:
      raise ConfigError(f'config.encoder.word_min_count: must be >= 1, got {count}')


def _check_world(config):
  from tads_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  fields = dict(_get(config, 'pool.synthetic').to_dict())
  fields.update(seed=config.seed, image_size=config.pool.image_size)
  try:
    synthetic.WorldConfig.from_dict(fields)
  except (ValueError, TypeError) as e:
    raise field_error(e, 'config.pool.synthetic', synthetic.WorldConfig) from None


def _check_validation_split(config):
  """config.tads.validation_fraction in [0, 1); above 0 with the synthetic world's own
  tasks, every class and the retrieval task need two train examples (one to fit on, one
  to validate on), known here before any work (other task lists are checked when read)."""
  from tads_jax.data import task_split  # pylint: disable=g-import-not-at-top
  try:
    fraction = task_split.validation_fraction(config)
    task_split.validation_seed(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if not fraction or config.tasks != 'synthetic' or config.pool.format != 'synthetic':
    return
  for field in ('train_per_class', 'retrieval_train'):
    value = _get(config, f'pool.synthetic.{field}')
    if isinstance(value, int) and value < 2:
      raise ConfigError(f'{task_split.FIELD}: {fraction} holds out part of every class and '
                        f'of the retrieval images of the train splits, and '
                        f'config.pool.synthetic.{field}={value} leaves none to fit on; set '
                        'it >= 2 or the fraction to 0')


def _check_tasks(value):
  """Every task entry well formed and every local source present."""
  from tads_jax.data import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  from tads_jax.data import webdataset  # pylint: disable=g-import-not-at-top
  try:
    specs = tasks_lib.parse_tasks(value)
  except ValueError as e:
    raise ConfigError(f'config.tasks: {e}') from None
  for spec in specs:
    for split in ('train', 'eval'):
      source = getattr(spec, split)
      if source.startswith('tfds:'):
        continue
      if os.path.isdir(source):
        try:
          tasks_lib.check_folder(spec, source, f'task {spec.name!r} {split} source')
        except ValueError as e:
          raise ConfigError(f'config.tasks[{spec.name}].{split}: {e}') from None
        continue
      try:
        webdataset.expand_shards(source)
      except (ValueError, OSError) as e:
        raise ConfigError(f'config.tasks[{spec.name}].{split}: {e}') from None


def _check_spec(config, dotted):
  """A shard spec must be given and match at least one file."""
  from tads_jax.data import webdataset  # pylint: disable=g-import-not-at-top
  spec = _expect_type(config, dotted, (str, list, tuple), 'a shard pattern')
  if not spec:
    raise ConfigError(f'config.{dotted}: required for this pool.format')
  try:
    webdataset.expand_shards(spec)
  except (ValueError, OSError) as e:
    raise ConfigError(f'config.{dotted}: {e}') from None


def _check_optional_path(config, dotted):
  path = _expect_type(config, dotted, (str,), 'a path string')
  if path and not os.path.exists(path):
    raise ConfigError(f'config.{dotted}: no such file or directory {path!r}')
