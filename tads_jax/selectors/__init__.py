"""Selectors: one pure interface and one registry (design section 5).

A selector is a `Selector` record of two pure functions of arrays:

  fit(config, inputs) -> state          what it learns from the pool; {} when nothing
  score(config, state, inputs) -> [N]   one value per pool row of `inputs`

`inputs` (an `Inputs`) holds only arrays the stages read for it: the features table
(ingest's samples joined with the features stage's columns), the pool's reference
embeddings and the tasks' train-split embeddings. `state` is a dict of numpy arrays,
numbers, strings and nested dicts of those, so that the learn stage can save it and the
select stage restore it without knowing the selector. Selectors never open a file.

Two kinds of output (`Selector.output`):
  'scores': float, higher = more worth training on; NaN ranks below every number (top-k
            keeps it only to fill the budget; the cap samplers never draw it). The select
            stage turns them into a subset at `selection.fraction` (top-k or soft cap
            sampling).
  'counts': int times each sample is kept; a filter (DataComp's basic filter, SemDeDup,
            ...) decides its own subset size, and `selection.fraction` does not apply.

`config` is the whole run config; a selector reads its own block `config.<name>` (declared
in `Selector.config_fields`, checked by `Selector.check_config` before any work) and
`config.seed`.
"""

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import pyarrow as pa

from tads_jax import distributed
# What a selector may need from the run, so that config validation can say what is missing
# before any work: 'features' (the features stage's columns), 'embeddings' (pool image and
# text embeddings from the embed stage or the pool's npz), 'tasks' (task train-split
# embeddings), 'images' (pixel sizes from the pool; DataComp's original_width/height).
NEEDS = ('features', 'embeddings', 'tasks')
OUTPUTS = ('scores', 'counts')
# Which duplicate flags of the features stage exclude a sample (selection.dedup for every
# selector of a run, tads.dedup for TADS's own scores). Of each group of duplicates the
# features stage flags all copies but one, so one is always left.
DEDUP = {'none': (), 'exact': ('exact_duplicate',), 'semantic': ('semantic_duplicate',),
         'both': ('exact_duplicate', 'semantic_duplicate')}


@dataclasses.dataclass(frozen=True)
class Inputs:
  """The arrays a selector sees; rows follow ingest/samples.parquet.

  The pool's embeddings come either as arrays (image_emb, text_emb: the Python API, tests)
  or as `embedding_source`, which the stages pass (stages/embed.EmbeddingFiles): it reads
  them from the embed stage's files, so that a selector that reads a batch or a chunk of
  rows at a time (embedding_rows) never holds [N, E].
  """
  features: pa.Table                       # uid, caption, width, height, ... + features
  image_emb: np.ndarray | None = None      # [N, E] float32 unit rows, the pool's images
  text_emb: np.ndarray | None = None       # [N, E] float32 unit rows, the pool's captions
  # Per task: {'name', 'kind', 'image_emb' [n, E], and 'labels' [n] + 'class_text_emb'
  # [C, T, E] (classification) or 'text_emb' [M, E] + 'text_image' [M] (retrieval)},
  # from the tasks' train splits (never eval: selection must not see what scores it).
  tasks: tuple = ()
  # Where a long fit keeps resumable checkpoints (the learn stage's directory), or None.
  checkpoints: str | None = None
  # The pool's embeddings on disk, instead of image_emb / text_emb: rows() gives two
  # array-likes with .shape, .dtype and [idx] row gathers.
  embedding_source: Any = None
  # Rows of each pool shard, in row order, given only where every process runs the
  # selector (the stages, for a Selector.multiprocess); None: the pool is one part and this
  # process runs it alone (the Python API, evaluate's baselines). With them a selector adds
  # its pool-wide sums per shard, over the shards each process owns (distributed.owns), in
  # shard order, through collectives.
  shard_rows: tuple | None = None

  @property
  def num_rows(self) -> int:
    return self.features.num_rows

  @property
  def uids(self) -> list:
    return self.features.column('uid').to_pylist()

  def column(self, name: str, selector: str) -> np.ndarray:
    """A features column as a numpy array; ValueError names what is missing."""
    if name not in self.features.column_names:
      raise ValueError(f'selector {selector}: the features have no {name!r} column; run the '
                       f"features stage with {name!r} in config.features.operators (or the "
                       'ingest stage for pool columns)')
    return self.features.column(name).to_numpy(zero_copy_only=False)

  def embedding_rows(self, selector: str) -> tuple[Any, Any]:
    """(image rows, text rows): [N, E] float32 array-likes that gather rows by index
    (`rows[idx]`, or a slice), for batches drawn from anywhere in the pool."""
    if self.embedding_source is not None:
      return self.embedding_source.rows()
    if self.image_emb is None or self.text_emb is None:
      raise ValueError(f'selector {selector}: needs the pool embeddings (config.stages: '
                       'embed)')
    return self.image_emb, self.text_emb

  def owned_shards(self):
    """(shard index, its row slice) of each non-empty shard of shard_rows this process
    owns (distributed.owns), in shard order."""
    starts = np.cumsum((0,) + tuple(self.shard_rows))
    if starts[-1] != self.num_rows:
      raise ValueError(f'Inputs.shard_rows: {starts[-1]} rows in all, the features have '
                       f'{self.num_rows}')
    for index in range(len(starts) - 1):
      if starts[index + 1] > starts[index] and distributed.owns(index):
        yield index, slice(starts[index], starts[index + 1])

  def task_list(self, selector: str, kind: str | None = None) -> list:
    tasks = [t for t in self.tasks if kind is None or t['kind'] == kind]
    if not tasks:
      raise ValueError(f'selector {selector}: needs at least one '
                       f'{kind + " " if kind else ""}task with a train split (config.tasks)')
    return tasks


def _no_fit(config, inputs) -> dict:
  del config, inputs
  return {}


def _no_check(config) -> None:
  del config


@dataclasses.dataclass(frozen=True)
class Selector:
  name: str
  score: Callable[[Any, Mapping, Inputs], np.ndarray]
  fit: Callable[[Any, Inputs], dict] = _no_fit
  # From NEEDS, or a function of the config giving them: what fit and score read.
  needs: tuple | Callable[[Any], tuple] = ()
  # What score alone reads (a learning selector's score may need less than its fit);
  # None: the same as needs.
  score_needs: tuple | Callable[[Any], tuple] | None = None
  # From OUTPUTS, or a function of the config giving it.
  output: str | Callable[[Any], str] = 'scores'
  learns: bool = False       # fit is long (meta-learning): the learn stage runs and saves it
  # Raises ValueError naming the config field of any value of the selector's own block that
  # cannot work (config validation calls it before any work).
  check_config: Callable[[Any], None] = _no_check
  # The JSON-able part of a fitted state for the report (learned weights, thresholds, ...).
  summary: Callable[[Mapping], dict] = lambda state: {}
  # Config fields the selector reads besides its own block (fingerprints include them), or
  # a function of the config giving them.
  config_fields: tuple | Callable[[Any], tuple] = ()
  doc: str = ''              # one line: what it keeps, and its source
  # The features columns fit and score read ('uid' always comes), or a function of (the
  # config, the available column names) giving them; None: every column. The stages read
  # only these, so that memory follows the columns a selector uses, not the table.
  columns: tuple | Callable[[Any, tuple], tuple] | None = None
  # score of a row reads only that row (its features and embeddings), the tasks and the
  # fitted state, and fit is empty or learned in the learn stage: the select stage then
  # scores the pool one shard at a time, so memory follows a shard.
  rowwise: bool = False
  # fit runs on every process of a multi-process job, each reading the shards it owns
  # (Inputs.shard_rows), with its pool-wide quantities from collectives (distributed.py);
  # otherwise the writer fits alone while the others wait.
  multiprocess: bool = False

  def __post_init__(self):
    if self.rowwise and not self.learns and self.fit is not _no_fit:
      raise ValueError(f'selector {self.name}: rowwise, so its fit must be empty or learned '
                       '(the select stage never holds the pool for it)')

  def needs_for(self, config) -> tuple:
    needs = tuple(self.needs(config) if callable(self.needs) else self.needs)
    for need in needs:
      if need not in NEEDS:
        raise ValueError(f'selector {self.name}: unknown need {need!r}; one of {NEEDS}')
    return needs

  def score_needs_for(self, config) -> tuple:
    if self.score_needs is None:
      return self.needs_for(config)
    return tuple(self.score_needs(config) if callable(self.score_needs)
                 else self.score_needs)

  def config_fields_for(self, config) -> tuple:
    """Dotted config fields its results depend on: its own block (when the config has
    one) and the fields it declares."""
    fields = (self.config_fields(config) if callable(self.config_fields)
              else self.config_fields)
    own = (self.name,) if self.name in config else ()
    return tuple(dict.fromkeys(own + tuple(f for f in fields if f.split('.')[0] in config)))

  def columns_for(self, config, available) -> tuple | None:
    """The features columns to read (with 'uid'), or None for every one."""
    if self.columns is None:
      return None
    columns = self.columns(config, tuple(available)) if callable(self.columns) else self.columns
    return tuple(dict.fromkeys(('uid',) + tuple(columns)))

  def output_for(self, config) -> str:
    output = self.output(config) if callable(self.output) else self.output
    if output not in OUTPUTS:
      raise ValueError(f'selector {self.name}: output {output!r} not in {OUTPUTS}')
    return output


SELECTORS: dict[str, Selector] = {}


def register(selector: Selector) -> Selector:
  if selector.name in SELECTORS:
    raise ValueError(f'selector {selector.name!r} registered twice')
  SELECTORS[selector.name] = selector
  return selector


def get(name: str) -> Selector:
  if name not in SELECTORS:
    raise ValueError(f'unknown selector {name!r}; known: {", ".join(sorted(SELECTORS))}')
  return SELECTORS[name]


def config_keys(config, base: tuple) -> tuple:
  """`base` plus the config fields of config.selector.name (its block and declared fields):
  what a stage that runs the configured selector fingerprints."""
  name = config.selector.name
  extra = SELECTORS[name].config_fields_for(config) if name in SELECTORS else ()
  return tuple(dict.fromkeys(tuple(base) + extra))


def block(config, name: str):
  """config.<name>, the selector's own settings (an empty dict when it has none)."""
  return config[name] if name in config else {}


def option(config, selector: str, field: str):
  """config.<selector>.<field>; ValueError names the field when it is missing."""
  own = block(config, selector)
  if field not in own:
    raise ValueError(f'config.{selector}.{field}: missing field')
  return own[field]


def number(config, selector: str, field: str, low=None, high=None, integer=False,
           low_open=False):
  """A numeric option, range-checked; ValueError names the field."""
  value = option(config, selector, field)
  kinds = (int,) if integer else (int, float)
  if isinstance(value, bool) or not isinstance(value, kinds):
    raise ValueError(f'config.{selector}.{field}: expected {"an integer" if integer else "a number"}, '
                     f'got {value!r}')
  if low is not None and (value <= low if low_open else value < low):
    raise ValueError(f'config.{selector}.{field}: must be {">" if low_open else ">="} {low}, '
                     f'got {value}')
  if high is not None and value > high:
    raise ValueError(f'config.{selector}.{field}: must be <= {high}, got {value}')
  return value


def dedup_mode(mode, field: str) -> str:
  """mode, checked to be a DEDUP key; `field` names the setting in the error."""
  if mode not in DEDUP:
    raise ValueError(f'{field}: one of {", ".join(DEDUP)}, got {mode!r}')
  return mode


def eligible_rows(features, mode: str, field: str = 'config.selection.dedup'):
  """bool [N]: rows no duplicate flag of `mode` (a DEDUP key) excludes (None: every
  row); `field` names the setting in the error when a flag column is missing."""
  columns = DEDUP[mode]
  if not columns:
    return None
  keep = np.ones(features.num_rows, bool)
  for column in columns:
    if column not in features.column_names:
      raise ValueError(f'{field}: {mode!r} needs the features column {column!r}; add the '
                       'features stage to config.stages')
    keep &= ~features.column(column).to_numpy(zero_copy_only=False).astype(bool)
  return keep


def fitted_counts(name: str, state: Mapping, inputs: Inputs) -> np.ndarray:  # -> [N]
  """The keep counts a filter's fit chose (state['counts']), checked against the pool it
  now scores: a selector whose fit already decides the subset scores with this."""
  counts = np.asarray(state['counts'], np.int64)
  if counts.shape != (inputs.num_rows,):
    raise ValueError(f'selector {name}: the fitted subset has {counts.shape[0]} rows, the '
                     f'pool {inputs.num_rows}; refit on this pool')
  return counts


def run_selector(selector: Selector, config, state: Mapping, inputs: Inputs) -> np.ndarray:
  """selector.score, checked: [N] float64 scores or int64 counts for the N rows."""
  out = np.asarray(selector.score(config, state, inputs))
  if out.shape != (inputs.num_rows,):
    raise ValueError(f'selector {selector.name!r} returned {out.shape} values for '
                     f'{inputs.num_rows} samples')
  if selector.output_for(config) == 'counts':
    if not np.issubdtype(out.dtype, np.integer) and not np.issubdtype(out.dtype, np.bool_):
      raise ValueError(f'selector {selector.name!r} returned {out.dtype} counts')
    out = out.astype(np.int64)
    if (out < 0).any():
      raise ValueError(f'selector {selector.name!r} returned negative counts')
    return out
  return out.astype(np.float64)


# Importing the modules registers the selectors.
from tads_jax.selectors import clip_score, normsim, random_selector, semdedup, tads  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from tads_jax.selectors import datacomp_baselines  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from tads_jax.selectors import clip_powered, clipcov  # noqa: E402,F401  pylint: disable=g-import-not-at-top
from tads_jax.selectors import flyt  # noqa: E402,F401  pylint: disable=g-import-not-at-top
