"""The TADS value function: V(z) = prior . z + MLP(z) over standardized per-sample features.

Inputs are the columns of features.parquet, in three groups (design section 5):

  quality    the registered quality operators (scoring/quality.py): width ... caption_specificity
  relevance  'relevance_<task>_image' / 'relevance_<task>_text', one pair per task, and
             'relevance_<task>_target' with features.target_relevance
  diversity  'cluster_weight', 'semantic_duplicate', 'exact_duplicate'

'uid' and 'cluster' (an id) are never inputs; nor is any column outside the three groups.
An ablation picks a subset of the groups: the other groups' columns are not inputs at all.

The prior is a weak-supervision guess of each feature's sign (PRIOR_SIGNS), so that an
untrained value function is already a sane selector; meta-learning (meta.py) refines it.
The MLP's last layer starts at zero, so at init V is exactly the prior combination.

    names = input_columns(table.column_names, groups=('quality', 'diversity'))
    x = feature_matrix(table, names)                       # [N, F]
    standardizer = Standardizer.fit(x, names)
    z = standardizer.transform(x)                          # [N, F] float32 in [-5, 5]
    module = ValueFunction(names, tuple(prior_weights(names)), hidden=(64,))
    params = init_params(module)
    values = module.apply({'params': params}, z)           # [N]
"""

import functools
import math
from typing import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa

from tads_jax.scoring import registry

GROUPS = ('quality', 'relevance', 'diversity')
DIVERSITY_COLUMNS = ('cluster_weight', 'semantic_duplicate', 'exact_duplicate')
NOT_FEATURES = ('uid', 'cluster')
RELEVANCE_PREFIX = 'relevance_'
# A task's relevance columns: its image and caption against its prototypes, and (with
# features.target_relevance) its image against its train images.
RELEVANCE_SIDES = ('_image', '_text', '_target')
Z_CLIP = 5.0

# Prior signs of the quality and diversity features; every other quality operator gets 0
# (its good direction depends on the pool). Relevance columns are all +1 (prior_weights).
PRIOR_SIGNS = {
    # Image-caption cosine under the reference CLIP: the strongest single filter (DataComp).
    'clip_score': 1.0,
    # Alignment that survives mirroring is depiction, not caption text rendered in the image
    # (T-MARS).
    'flipped_clip_score': 1.0,
    # A caption that singles out its image over the others carries more than a generic one.
    'caption_specificity': 1.0,
    # Blank or flat images carry no visual content.
    'near_uniform': -1.0,
    # Repeated words are keyword stuffing and spam.
    'word_repetition': -1.0,
    # Repeated character n-grams are spam, markup or broken text.
    'char_repetition': -1.0,
    # Symbol-heavy captions are URLs, markup or garbage.
    'special_char_ratio': -1.0,
    # Extreme aspect (long over short side) marks banners and strips that crop badly
    # (DataComp's basic filter drops aspect > 3).
    'aspect_ratio': -1.0,
    # Samples from sparse clusters add coverage; (|C|/N)^-alpha is large there.
    'cluster_weight': 1.0,
    # A near-duplicate of a kept sample repeats it (SemDeDup).
    'semantic_duplicate': -1.0,
    # An exact copy repeats a sample byte for byte.
    'exact_duplicate': -1.0,
}


def two_sided_term(name: str) -> str:
  """The name of the |z| term of a two-sided feature (see ValueFunction.two_sided)."""
  return f'|{name}|'


def check_two_sided(names: Sequence[str], two_sided: Sequence[str]) -> tuple[str, ...]:
  """two_sided as a tuple, each a quality feature among `names` without a named prior
  sign (a one-sided prior already says which tail is bad), none twice."""
  two_sided = (two_sided,) if isinstance(two_sided, str) else tuple(two_sided)
  for name in two_sided:
    if name not in names or feature_group(name) != 'quality':
      raise ValueError(f'two_sided: {name!r} is not a quality feature among the value '
                       f'function\'s inputs ({", ".join(names)})')
    if name in PRIOR_SIGNS:
      raise ValueError(f'two_sided: {name!r} has a one-sided prior sign '
                       f'({PRIOR_SIGNS[name]:+g}); only a feature without one can be '
                       'two-sided')
  if len(set(two_sided)) != len(two_sided):
    raise ValueError(f'two_sided: names repeat in {two_sided}')
  return two_sided


def feature_group(name: str) -> str | None:
  """'quality' | 'relevance' | 'diversity', or None for a column that is not an input."""
  if name in NOT_FEATURES:
    return None
  if name in DIVERSITY_COLUMNS:
    return 'diversity'
  if name.startswith(RELEVANCE_PREFIX):
    return 'relevance'
  if name in registry.OPERATORS:
    return 'quality'
  return None


def check_groups(groups: Sequence[str], field: str = 'groups') -> tuple[str, ...]:
  groups = (groups,) if isinstance(groups, str) else tuple(groups)
  unknown = [g for g in groups if g not in GROUPS]
  if unknown or not groups or len(set(groups)) != len(groups):
    raise ValueError(f'{field}: expected a non-empty subset of {GROUPS} without repeats, '
                     f'got {groups}')
  return groups


def input_columns(columns: Sequence[str], groups: Sequence[str] = GROUPS) -> tuple[str, ...]:
  """The columns (in table order) that feed the value function under an ablation."""
  groups = check_groups(groups)
  names = tuple(c for c in columns if feature_group(c) in groups)
  if not names:
    raise ValueError(f'groups: none of the columns {list(columns)} is a feature of the '
                     f'groups {groups}')
  return names


def prior_weights(names: Sequence[str],
                  group_weights: Mapping[str, float] | None = None,
                  two_sided: Sequence[str] = ()) -> np.ndarray:
  """The prior's weight per feature [F] float32, then per two-sided term [S] ([F + S]).

  Within each group the signed weights are scaled to an L1 norm of 1 (quality: the named
  signs and -1 on each two-sided term |z_f|; relevance: +1 on the image and the text side
  of every task, so all tasks together weigh like the quality group; diversity: the named
  signs), then multiplied by the group's weight (default 1; 0 removes the group from the
  prior but keeps its features as MLP inputs). Quality operators without a named sign get
  0 (on z; a two-sided one's |z| term gets its -1).
  """
  group_weights = dict(group_weights or {})
  for group, weight in group_weights.items():
    if group not in GROUPS:
      raise ValueError(f'group_weights: unknown group {group!r}; one of {GROUPS}')
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
      raise ValueError(f'group_weights.{group}: expected a finite number >= 0, got '
                       f'{weight!r}')
  groups = [feature_group(n) for n in names]
  for name, group in zip(names, groups):
    if group is None:
      raise ValueError(f'names: {name!r} is not a value-function feature')
  two_sided = check_two_sided(names, two_sided)
  weights = np.array([1.0 if group == 'relevance' else PRIOR_SIGNS.get(name, 0.0)
                      for name, group in zip(names, groups)] + [-1.0] * len(two_sided),
                     np.float64)  # [F + S]
  groups += ['quality'] * len(two_sided)
  for group in GROUPS:
    members = np.array([g == group for g in groups])
    norm = np.abs(weights[members]).sum()
    if norm > 0:
      weights[members] *= group_weights.get(group, 1.0) / norm
  return weights.astype(np.float32)


_BLOCK = 65536  # rows per block of the Standardizer's float64 arithmetic


def _row_blocks(x):
  for start in range(0, len(x), _BLOCK):
    yield np.asarray(x[start:start + _BLOCK], np.float64)


def feature_matrix(table, names: Sequence[str], where: str = 'features') -> np.ndarray:
  """[N, F] float32 from a pyarrow Table or a {column: array} mapping; bools become 0/1,
  nulls NaN (the Standardizer maps them to 0). Filled a column at a time: memory holds
  the matrix and one column."""
  out = None
  available = table.column_names if hasattr(table, 'column_names') else list(table)
  for i, name in enumerate(names):
    if name not in available:
      raise ValueError(f'{where}: column {name!r} is missing (have {list(available)})')
    column = table[name]
    if isinstance(column, (pa.ChunkedArray, pa.Array)):  # nulls -> NaN (or None)
      column = column.to_numpy(zero_copy_only=False)
    array = np.asarray(column)
    if array.ndim != 1:
      raise ValueError(f'{where}.{name}: expected one value per row, got shape {array.shape}')
    if array.dtype == object:  # pyarrow bools with nulls arrive as objects
      if not all(v is None or isinstance(v, (bool, int, float, np.number)) for v in array):
        raise ValueError(f'{where}.{name}: expected numbers or bools, got objects')
      array = np.array([np.nan if v is None else v for v in array], np.float64)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
      raise ValueError(f'{where}.{name}: expected numbers or bools, got {array.dtype}')
    if out is None:
      out = np.empty((len(array), len(names)), np.float32)  # [N, F]
    elif len(array) != len(out):
      raise ValueError(f'{where}: columns have different lengths '
                       f'{sorted({len(out), len(array)})}')
    out[:, i] = array
  return out if out is not None else np.zeros((0, 0), np.float32)  # [N, F]


class Standardizer:
  """Per-feature z-scores fitted on the pool.

  mean and std come from the finite values of each column; a constant (or all-missing)
  column gets std 1, so its z is 0 rather than a division by zero. After scaling, NaN
  becomes 0 (the pool mean: a missing signal says nothing either way) and z is clipped to
  [-5, 5] so that one wild value (an inf, a corrupt size) cannot dominate V.
  """

  def __init__(self, names: Sequence[str], mean, std, clip: float = Z_CLIP):
    self.names = tuple(names)
    self.mean = np.asarray(mean, np.float64)
    self.std = np.asarray(std, np.float64)
    self.clip = float(clip)
    f = len(self.names)
    for field, value in (('mean', self.mean), ('std', self.std)):
      if value.shape != (f,) or not np.all(np.isfinite(value)):
        raise ValueError(f'Standardizer.{field}: expected {f} finite values, got '
                         f'{value.shape}')
    if (self.std <= 0).any():
      raise ValueError('Standardizer.std: every std must be > 0')
    if not self.clip > 0:
      raise ValueError(f'Standardizer.clip: expected > 0, got {clip!r}')

  @classmethod
  def fit(cls, x, names: Sequence[str], clip: float = Z_CLIP) -> 'Standardizer':
    x = np.asarray(x)  # [N, F]
    if x.ndim != 2 or x.shape[1] != len(names):
      raise ValueError(f'Standardizer.fit: expected [N, {len(names)}] features, got '
                       f'{x.shape}')
    return cls.fit_parts(lambda: iter([(0, x)]), names, clip=clip)

  @classmethod
  def fit_parts(cls, parts, names: Sequence[str], gather=None,
                clip: float = Z_CLIP) -> 'Standardizer':
    """fit over a pool split into parts (its shards), which may live on several processes.

    parts() returns an iterator over (part index, [n_i, F]) of this process's parts, in
    index order; it is called twice (the mean, then the squared deviations from it).
    gather({index: value}) -> every part's value in index order, on every process
    (distributed.gather_by_shard; default: this process's parts alone). Each part's sums
    start from zero and the parts' sums are added in index order, so the moments do not
    depend on which process holds which part; with one part they are fit's.
    """
    gather = gather or (lambda per_part: [per_part[i] for i in sorted(per_part)])
    f = len(names)

    def checked():
      for index, x in parts():
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != f:
          raise ValueError(f'Standardizer.fit: expected [N, {f}] features, got {x.shape} '
                           f'(part {index})')
        yield index, x

    def add(values, dtype):  # the parts' sums in index order (0 + a is a: fit's bytes)
      return functools.reduce(np.add, values, np.zeros(f, dtype))

    # Column sums a block of rows at a time (memory: one block), in numpy's order for a
    # sum over axis 0 (row after row), so a part's moments are those of the whole part.
    stats = {}
    for index, x in checked():
      count, total = np.zeros(f, np.int64), np.zeros(f, np.float64)
      for block in _row_blocks(x):
        finite = np.isfinite(block)
        count += finite.sum(axis=0)
        total = np.add.reduce(np.vstack([total[None], np.where(finite, block, 0.0)]), axis=0)
      stats[index] = (count, total)
    gathered = gather(stats)
    count = add((part[0] for part in gathered), np.int64)
    total = add((part[1] for part in gathered), np.float64)
    mean = total / np.maximum(count, 1)
    squares = {}
    for index, x in checked():
      part = np.zeros(f, np.float64)
      for block in _row_blocks(x):
        deviation = np.where(np.isfinite(block), block - mean, 0.0)
        part = np.add.reduce(np.vstack([part[None], deviation ** 2]), axis=0)
      squares[index] = part
    var = add(gather(squares), np.float64) / np.maximum(count, 1)
    std = np.sqrt(var)
    # Relative test: a column like width=256 everywhere gets a variance of float noise.
    constant = (count == 0) | (std <= 1e-7 * np.maximum(np.abs(mean), 1.0))
    return cls(names, mean, np.where(constant, 1.0, std), clip)

  def transform(self, x, out=None) -> np.ndarray:
    """z [N, F] float32 of x; out: where to write it, e.g. x itself (float32 [N, F]) when
    x is not needed after, so that the pool's features are held once."""
    x = np.asarray(x)  # [N, F]
    if x.ndim != 2 or x.shape[1] != len(self.names):
      raise ValueError(f'Standardizer.transform: expected [N, {len(self.names)}] features '
                       f'({", ".join(self.names)}), got {x.shape}')
    if out is None:
      out = np.empty(x.shape, np.float32)
    elif out.shape != x.shape or out.dtype != np.float32:
      raise ValueError(f'Standardizer.transform: out must be float32 {x.shape}, got '
                       f'{out.dtype} {out.shape}')
    for start, block in zip(range(0, len(x), _BLOCK), _row_blocks(x)):  # one block at once
      with np.errstate(invalid='ignore'):
        z = (block - self.mean) / self.std
      z = np.where(np.isnan(z), 0.0, z)
      out[start:start + _BLOCK] = np.clip(z, -self.clip, self.clip)
    return out  # [N, F]

  def to_dict(self) -> dict:
    return {'names': list(self.names), 'mean': self.mean.tolist(),
            'std': self.std.tolist(), 'clip': self.clip}

  @classmethod
  def from_dict(cls, d: Mapping, where: str = 'standardizer') -> 'Standardizer':
    for field in ('names', 'mean', 'std'):
      if field not in d:
        raise ValueError(f'{where}: field {field!r} is missing')
    try:
      return cls(d['names'], d['mean'], d['std'], d.get('clip', Z_CLIP))
    except ValueError as e:
      raise ValueError(f'{where}: {e}') from None


FORMS = ('additive', 'per_task')
# 'free': the linear weights take any sign; 'prior': a feature with a prior sign keeps its
# weight on that side of zero (or at it) through meta-learning (ValueFunction.constrain).
SIGNS = ('free', 'prior')


def task_of(name: str) -> str | None:
  """The task of a relevance column 'relevance_<task>_image' / '_text' / '_target' (else
  None)."""
  if not name.startswith(RELEVANCE_PREFIX):
    return None
  for side in RELEVANCE_SIDES:
    if name.endswith(side):
      return name[len(RELEVANCE_PREFIX):-len(side)]
  return None


def task_names(names: Sequence[str]) -> list[str]:
  """The tasks that have relevance columns among `names`, sorted."""
  return sorted({t for t in map(task_of, names) if t is not None})


class ValueFunction(nn.Module):
  """V(z): one score per sample, in one of two forms.

  'additive': V = linear . z + MLP(z). `linear` starts at the prior and is learned; the MLP
  (gelu hidden layers, then a zero-initialized output) adds interactions the linear part
  cannot express.
  'per_task': V = d + logsumexp_t(r_t + exp(trade_t) q) + MLP(z), where q, d and r_t are
  the linear part's quality, diversity and task-t relevance sums (linear_f z_f over the
  group's features). A sample is worth what it is worth to the task it serves best, and
  each task t learns its own exchange rate exp(trade_t) (1 at init) between quality and
  its relevance: a task that tolerates noisy captions can take more relevant, rougher
  samples than one that does not. Without relevance columns it is the additive form.
  A constant added to V changes no softmax over a batch, so there is no output bias.

  two_sided names features whose both tails are bad (an image statistic: blur and noise
  are the two ends of sharpness): the linear part also reads |z_f| of each, its weight
  starting at the prior's negative one, so that V can fall toward either tail, which a
  weight on z_f alone cannot express. `prior` and `linear` run over the features, then
  these terms. The additive form only.

  signs='prior' keeps the linear weight of every feature the prior gives a sign (the named
  quality and diversity features, every relevance column) on the prior's side of zero:
  meta-learning may shrink such a weight to 0 but not flip it (constrain, applied after
  each meta update). The meta-learning feedback comes from a proxy on the reference's
  embeddings, which can reward what a model trained on the pixels cannot use (blank
  images, say); the signs are the part of the prior that knowledge, not that feedback,
  decides. The MLP is not constrained: with hidden=() V is monotone in those features.
  """
  names: tuple[str, ...]
  prior: tuple[float, ...]
  hidden: tuple[int, ...] = (64,)
  form: str = 'additive'
  signs: str = 'free'
  two_sided: tuple[str, ...] = ()

  def terms(self, z):  # [B, F] -> [B, F + S]
    """z, then |z_f| of each two-sided feature: what the linear part weighs."""
    if not self.two_sided:
      return z
    index = np.asarray([self.names.index(n) for n in self.two_sided])
    return jnp.concatenate([z, jnp.abs(z[:, index])], axis=-1)

  def constrain(self, params):
    """params with each signed feature's linear weight clipped to its prior's side of 0
    (signs='prior'; params as they are for 'free'): the projection step of projected
    gradient descent, a pure function of the params."""
    if self.signs not in SIGNS:
      raise ValueError(f'ValueFunction.signs: one of {SIGNS}, got {self.signs!r}')
    if self.signs == 'free':
      return params
    sign = np.sign(np.asarray(self.prior, np.float32))  # [F]: +1, -1, or 0 (free)
    linear = params['linear']  # [F]
    clipped = jnp.where(sign > 0, jnp.maximum(linear, 0.0),
                        jnp.where(sign < 0, jnp.minimum(linear, 0.0), linear))
    return {**params, 'linear': clipped.astype(linear.dtype)}

  @nn.compact
  def __call__(self, z):  # [B, F] -> [B]
    check_two_sided(self.names, self.two_sided)
    if len(self.prior) != len(self.names) + len(self.two_sided):
      raise ValueError(f'ValueFunction: {len(self.prior)} prior weights for '
                       f'{len(self.names)} features and {len(self.two_sided)} two-sided '
                       'terms')
    if z.shape[-1] != len(self.names):
      raise ValueError(f'ValueFunction: expected [B, {len(self.names)}] features '
                       f'({", ".join(self.names)}), got {z.shape}')
    if self.form not in FORMS:
      raise ValueError(f'ValueFunction.form: one of {FORMS}, got {self.form!r}')
    if self.two_sided and self.form != 'additive':
      raise ValueError(f'two_sided: the additive form only, not {self.form!r}')
    prior = np.asarray(self.prior, np.float32)
    linear = self.param('linear', lambda _: jnp.asarray(prior))  # [F + S]
    tasks = task_names(self.names)
    if self.form == 'additive' or not tasks:
      value = self.terms(z) @ linear.astype(z.dtype)  # [B]
    else:
      parts = z * linear.astype(z.dtype)  # [B, F]: each feature's term
      groups = [feature_group(n) for n in self.names]

      def total(members):  # [B]: the terms of the features where members is True
        return parts @ jnp.asarray(members, parts.dtype)

      quality = total([g == 'quality' for g in groups])
      diversity = total([g == 'diversity' for g in groups])
      per_task = jnp.stack([total([task_of(n) == t for n in self.names]) for t in tasks],
                           axis=-1)  # [B, T]
      trade = self.param('trade', nn.initializers.zeros, (len(tasks),))  # [T]
      value = diversity + jax.nn.logsumexp(
          per_task + jnp.exp(trade).astype(z.dtype) * quality[:, None], axis=-1)
    h = z
    for i, width in enumerate(self.hidden):
      h = jax.nn.gelu(nn.Dense(width, name=f'hidden_{i}')(h))  # [B, width]
    if self.hidden:
      out = nn.Dense(1, use_bias=False, kernel_init=nn.initializers.zeros, name='out')(h)
      value = value + out[:, 0]
    return value


def make_value_function(names: Sequence[str], group_weights=None, hidden=(64,),
                        zero_prior: bool = False, form: str = 'additive',
                        signs: str = 'free', two_sided: Sequence[str] = ()) -> ValueFunction:
  """ValueFunction over `names` with the prior of prior_weights (or all zeros).

  In the per-task form each task's relevance weighs, at the prior, what the whole group
  weighs in the additive form (there the tasks' columns share the group's weight, as V sums
  them; here one task, the best, counts)."""
  if form not in FORMS:
    raise ValueError(f'form: one of {FORMS}, got {form!r}')
  if signs not in SIGNS:
    raise ValueError(f'signs: one of {SIGNS}, got {signs!r}')
  two_sided = check_two_sided(names, two_sided)
  if two_sided and form != 'additive':
    raise ValueError(f'two_sided: the additive form only, not {form!r}')
  prior = (np.zeros(len(names) + len(two_sided)) if zero_prior
           else prior_weights(names, group_weights, two_sided))
  if form == 'per_task':
    prior = np.where([task_of(n) is not None for n in names],
                     prior * max(len(task_names(names)), 1), prior)
  for width in hidden:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
      raise ValueError(f'hidden: expected positive integers, got {tuple(hidden)}')
  return ValueFunction(tuple(names), tuple(float(w) for w in prior), tuple(hidden), form,
                       signs, two_sided)


def init_params(module: ValueFunction, seed: int = 0):
  """Params of the hidden layers from seed; `linear` is the prior, `out` is zero."""
  z = jnp.zeros((1, len(module.names)), jnp.float32)
  return module.init(jax.random.key(seed), z)['params']


def feature_weights(module: ValueFunction, params, z, chunk: int = 65536) -> dict:
  """{name: {'linear': w_f, 'effective': mean over rows of dV/dz_f}} for the report, then
  {'|f|': {'linear': w, 'effective': w}} per two-sided term (V is linear in it).

  'effective' includes the MLP, so it tells how V actually responds to each feature on
  these rows; it equals 'linear' while the MLP is at its zero init and no two-sided term
  reads the feature (then it is the mean slope of both). Rows are independent, so the
  gradient of sum(V) w.r.t. z holds every row's dV/dz_f at once.
  """
  z = np.asarray(z, np.float32)  # [N, F]
  if z.ndim != 2 or not len(z):
    raise ValueError(f'feature_weights: expected a non-empty [N, F] array, got {z.shape}')
  grad_fn = jax.jit(jax.grad(lambda x: jnp.sum(module.apply({'params': params}, x))))
  total = np.zeros(z.shape[1], np.float64)
  for lo in range(0, len(z), chunk):
    total += np.asarray(grad_fn(z[lo:lo + chunk]), np.float64).sum(axis=0)
  effective = total / len(z)  # [F]
  linear = np.asarray(params['linear'])  # [F + S]
  out = {name: {'linear': float(linear[i]), 'effective': float(effective[i])}
         for i, name in enumerate(module.names)}
  for j, name in enumerate(module.two_sided):
    w = float(linear[len(module.names) + j])
    out[two_sided_term(name)] = {'linear': w, 'effective': w}
  return out
