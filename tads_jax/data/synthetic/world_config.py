"""WorldConfig: everything a world is a function of, checked when it is built, so that a field
that cannot work fails (naming itself) before any file is written."""

import dataclasses
from typing import Any, Mapping

import numpy as np

from tads_jax.data.synthetic.vocabulary import DEFAULT_NOISE, TASK_NAMES, TASK_VALUE_GROUPS

OFFTASK_ATTRIBUTES = tuple(TASK_VALUE_GROUPS)  # those with values no task asks for


class WorldError(ValueError):
  """An output directory that cannot take this world (names the file)."""


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Everything the world is a function of (the output is byte-identical for equal configs)."""
  seed: int = 0
  num_samples: int = 10_000        # pool size
  image_size: int = 64             # side of the square renders
  shard_size: int = 1_000          # samples per tar (<= 10000: keys hold 4 digits for it)
  trusted_size: int = 5_000        # clean DFN-style trusted pairs
  offtask_fraction: float = 0.3    # pool and trusted samples no task asks for
  # What makes a sample off-task: a value no task asks for in each of these attributes.
  # Shape alone (the world before issue 13) leaves an off-task red hexagon as relevant to
  # the colors task as an on-task red circle, so its on_task label was wrong for that task.
  offtask_attributes: tuple = ('shape', 'color', 'texture')
  # Fraction of the pool per noise type; the rest is clean. A mapping in from_dict / CLI.
  noise: tuple = DEFAULT_NOISE
  png_fraction: float = 0.05       # the rest of the pool is JPEG; exercises the readers
  webp_fraction: float = 0.05
  jpeg_quality: int = 90
  tasks: tuple = TASK_NAMES
  train_per_class: int = 20        # classification tasks, per class
  eval_per_class: int = 50
  retrieval_train: int = 300       # retrieval task, image-caption pairs
  retrieval_eval: int = 500
  captions_per_image: int = 2      # retrieval: captions per image, one per line

  def __post_init__(self):
    _validate(self)

  @property
  def noise_fractions(self) -> dict:
    return dict(self.noise)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d['noise'] = dict(self.noise)
    d['tasks'] = list(self.tasks)
    d['offtask_attributes'] = list(self.offtask_attributes)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'WorldConfig':
    """Builds a config from a plain dict (e.g. ConfigDict.to_dict()); missing = default.

    `noise` is a mapping {noise type: fraction}; types it leaves out keep their defaults.
    """
    if hasattr(d, 'to_dict'):
      d = d.to_dict()
    if not isinstance(d, Mapping):
      raise ValueError(f'WorldConfig: expected a dict of fields, got {type(d).__name__}')
    known = {f.name for f in dataclasses.fields(cls)}
    for name in d:
      if name not in known:
        raise ValueError(f'WorldConfig.{name}: unknown field; known fields: '
                         f'{", ".join(sorted(known))}')
    fields = dict(d)
    if 'noise' in fields:
      noise = fields['noise']
      if hasattr(noise, 'to_dict'):
        noise = noise.to_dict()
      if not isinstance(noise, Mapping):
        raise ValueError(f'WorldConfig.noise: expected a mapping {{noise type: fraction}}, '
                         f'got {noise!r}')
      for name in noise:
        if name not in dict(DEFAULT_NOISE):
          raise ValueError(f'WorldConfig.noise.{name}: unknown noise type; known: '
                           f'{", ".join(n for n, _ in DEFAULT_NOISE)}')
      merged = dict(DEFAULT_NOISE)
      merged.update(noise)
      fields['noise'] = tuple((n, merged[n]) for n, _ in DEFAULT_NOISE)
    for name, what in (('tasks', 'task names'), ('offtask_attributes', 'attributes')):
      if name in fields:
        values = fields[name]
        if isinstance(values, str):
          values = tuple(v for v in values.split(',') if v)
        if not isinstance(values, (list, tuple)):
          raise ValueError(f'WorldConfig.{name}: expected a list of {what}, got {values!r}')
        fields[name] = tuple(values)
    return cls(**fields)


_INT_FIELDS = {'seed': 0, 'num_samples': 1, 'image_size': 16, 'shard_size': 1,
               'trusted_size': 0, 'jpeg_quality': 1, 'train_per_class': 1,
               'eval_per_class': 1, 'retrieval_train': 1, 'retrieval_eval': 1,
               'captions_per_image': 1}  # name -> minimum
_FRACTION_FIELDS = ('offtask_fraction', 'png_fraction', 'webp_fraction')


def _check_fraction(where: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f'{where}: expected a fraction (float), got {type(value).__name__} '
                     f'{value!r}')
  if not 0.0 <= value <= 1.0:
    raise ValueError(f'{where}: fraction {value!r} is outside [0, 1]')
  return float(value)


def _validate(cfg: WorldConfig) -> None:
  """Raises ValueError naming the first field that cannot work."""
  for name, minimum in _INT_FIELDS.items():
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise ValueError(f'WorldConfig.{name}: expected an integer, got '
                       f'{type(value).__name__} {value!r}')
    if value < minimum:
      raise ValueError(f'WorldConfig.{name}: must be >= {minimum}, got {value}')
  if cfg.shard_size > 10_000:
    raise ValueError(f'WorldConfig.shard_size: at most 10000 (img2dataset keys give the '
                     f'index in a shard 4 digits), got {cfg.shard_size}')
  if cfg.jpeg_quality > 100:
    raise ValueError(f'WorldConfig.jpeg_quality: must be <= 100, got {cfg.jpeg_quality}')
  if -(-cfg.num_samples // cfg.shard_size) > 99_999:
    raise ValueError(f'WorldConfig.num_samples: {cfg.num_samples} needs more than 99999 '
                     f'shards of {cfg.shard_size} (keys give the shard 5 digits)')
  for name in _FRACTION_FIELDS:
    _check_fraction(f'WorldConfig.{name}', getattr(cfg, name))
  if cfg.png_fraction + cfg.webp_fraction > 1.0 + 1e-9:
    raise ValueError(f'WorldConfig.webp_fraction: png_fraction + webp_fraction = '
                     f'{cfg.png_fraction + cfg.webp_fraction:g} exceeds 1')
  if not isinstance(cfg.noise, tuple) or [n for n, _ in cfg.noise] != [
      n for n, _ in DEFAULT_NOISE]:
    raise ValueError(f'WorldConfig.noise: expected one (name, fraction) pair per noise type '
                     f'in the order {", ".join(n for n, _ in DEFAULT_NOISE)} (use from_dict '
                     f'to give a mapping), got {cfg.noise!r}')
  total = 0.0
  for name, fraction in cfg.noise:
    total += _check_fraction(f'WorldConfig.noise.{name}', fraction)
  if total > 1.0 + 1e-9:
    raise ValueError(f'WorldConfig.noise: fractions sum to {total:g}, more than 1')
  if not isinstance(cfg.tasks, tuple):
    raise ValueError(f'WorldConfig.tasks: expected a tuple of task names, got {cfg.tasks!r}')
  for name in cfg.tasks:
    if name not in TASK_NAMES:
      raise ValueError(f'WorldConfig.tasks: unknown task {name!r}; known: '
                       f'{", ".join(TASK_NAMES)}')
  if len(set(cfg.tasks)) != len(cfg.tasks):
    raise ValueError(f'WorldConfig.tasks: duplicate task names in {cfg.tasks!r}')
  attrs = cfg.offtask_attributes
  if not isinstance(attrs, tuple) or 'shape' not in attrs or not set(attrs) <= set(
      OFFTASK_ATTRIBUTES) or len(set(attrs)) != len(attrs):
    raise ValueError(f'WorldConfig.offtask_attributes: expected distinct names from '
                     f'{", ".join(OFFTASK_ATTRIBUTES)}, shape among them (the ground truth\'s '
                     f'on_task reads the shape), got {attrs!r}')
