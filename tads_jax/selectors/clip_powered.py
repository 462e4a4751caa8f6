"""The CLIP-powered selector (Yang et al., ICLR 2025, "A CLIP-Powered Framework for Robust
and Generalizable Data Selection"): keep what the reference CLIP, adapted to the tasks, sees
as well aligned with its text, with a push towards diverse samples, at exactly the budget.

Three modules, as in the paper:
  (a) dataset adaptation: dimension-preserving adapters A_I, A_T on the frozen reference image
      and text embeddings, trained contrastively (InfoNCE) on the tasks' train splits
      (classification: an image against every class's prompt embedding, cross-entropy over
      the classes; retrieval: the symmetric CLIP loss over a batch of image-caption pairs);
  (b) sample scoring: the semantic alignment score SAS_i = cos(A_I(image_i), A_T(text_i)) and
      the sample diversity score SDS_i = mean distance of A_I(image_i) to its K nearest
      neighbours in the same group, each min-max normalized over the pool;
  (c) selection optimization: a relaxed mask m = sigmoid(s d), d initialized at d0, minimizing
        L(d) = -mean(m SAS) / mean(SAS) - beta mean(m SDS) / mean(SDS)
               + gamma |sum(STE(m)) - k| / N
      with SGD with momentum until the count term is below its tolerance, then the k
      largest m are kept (exactly k). STE(m) is 1[m > 0.5] forward and the identity in the
      backward pass (a straight-through estimator), so the count term pushes every d down
      while too many are kept and up while too few are.

What (c) converges to: all d start equal and every d_i moves at the same rate times
(gamma sgn(count - k) - SAS_i / mean SAS - beta SDS_i / mean SDS), so the order of the d's
stays that of SAS_i / mean SAS + beta SDS_i / mean SDS, and the mask ends as (nearly) the
top k of that sum. The gradient of each d_i carries 1/N, so the number of steps to reach the
tolerance grows linearly with N (~5,000 at N = 100,000 with the paper's constants); the
max_steps guard bounds it, and the k largest m are kept either way.

In the pool setting (the `clip_powered` selector, clip_powered.groups='cluster') text_i is
the pool caption and the SDS groups are the features stage's k-means clusters (`cluster`;
the paper's groups are classes). The paper's own setting runs through the same selector:
a labelled classification set written as a pool by tools/labelled_to_pool.py has the class
prompt of each sample's (possibly noisy) label as its caption, so text_i is that prompt as
the paper has it, and with clip_powered.groups='label' the classes (ingest's `label`
column) are the SDS groups; the adapters train on the tasks' train splits (a clean split of
the same classes). `select_labelled` is that setting on embeddings alone, with the adapters
trained on the set itself.

Differences from the paper, and why:
  - The authors' public code (github.com/Jackbrocp/clip-powered-data-selection) and the
    body of the paper could not be read where this was written, so nothing here was
    checked against them; the constants are the paper's as design.md (section 5) states
    them: m = sigmoid(100 d), d0 = 0.01, beta = 0.1, gamma = 2, SGD lr 1e-3 momentum 0.9,
    stop at count term < 1e-3.
  - Adapters are linear maps initialized at the identity (an untrained adapter leaves the
    reference space as it is), as design.md asks; summaries of the paper describe its
    dimension-preserving adapters as MLP layers. Their optimizer (Adam), steps, batch and
    lr are ours: the paper adapts on its target dataset, which has no counterpart for a
    set of task splits.
  - A class's text embedding is the prompt-ensemble prototype of the task (the zero-shot
    classifier weight, relevance.class_prototypes) rather than the single "a photo of a
    [class]" prompt.
  - K (clip_powered.neighbours) defaults to 10: not a value we could confirm from the paper.
  - SDS distances are Euclidean between the unit-normalized adapted image embeddings. A
    sample alone in its group has no neighbour: it gets the largest SDS of the pool (no
    sample of its group is near it), before normalization.
  - The min-max normalizations divide by max(range, 1e-12), and mean(SAS), mean(SDS) are
    clipped at 1e-12, so a constant score contributes nothing instead of a NaN.
  - max_steps bounds the mask optimization (the paper runs until the count term is small).

Memory: the selector reads the pool's embeddings through Inputs.embedding_rows (from disk
in the stages): SAS one chunk of rows at a time, SDS one pack of whole groups at a time
(their rows, adapted, and the kNN buffer: max(16,384, the largest group) rows); the mask
optimization holds per-sample scalars. Never [N, E].
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tads_jax import selectors
from tads_jax.scoring import kmeans
from tads_jax.scoring import relevance

NAME = 'clip_powered'
# clip_powered.groups -> the features column of SDS groups: k-means clusters of a pretraining
# pool (the features stage), or the class labels of a labelled pool (the ingest stage).
GROUP_COLUMNS = {'cluster': 'cluster', 'label': 'label'}
_EPS = 1e-12
# The zero-shot classifier of a task ([C, T, E] -> [C, E]), compiled once per shape.
_class_prototypes = jax.jit(relevance.class_prototypes)


@dataclasses.dataclass(frozen=True)
class Params:
  """The constants of all three modules (config.clip_powered.<field>)."""
  adapter_steps: int = 300      # ours: Adam steps of the adapters on the task splits
  adapter_batch: int = 256      # ours: samples (classification) or pairs (retrieval) per task
  adapter_lr: float = 1e-4      # ours
  temperature: float = 0.07     # InfoNCE temperature (CLIP's initial 0.07)
  neighbours: int = 10          # K of SDS
  mask_scale: float = 100.0     # paper: m = sigmoid(100 d)
  mask_init: float = 0.01       # paper: d initialized at 0.01
  beta: float = 0.1             # paper: weight of the SDS term
  gamma: float = 2.0            # paper: weight of the count term
  lr: float = 1e-3              # paper: SGD learning rate
  momentum: float = 0.9         # paper: SGD momentum
  tol: float = 1e-3             # paper: stop when |count - k| / N < tol
  max_steps: int = 1_000_000    # ours: guard on the mask optimization
  chunk: int = 1024             # ours: rows per kNN block (memory ~ chunk x (chunk + K))
  groups: str = 'cluster'       # SDS groups: 'cluster' (a pretraining pool) | 'label' (paper)


# field -> (low, high, integer, low_open)
_BOUNDS = {
    'adapter_steps': (0, None, True, False),
    'adapter_batch': (1, None, True, False),
    'adapter_lr': (0.0, None, False, True),
    'temperature': (0.0, None, False, True),
    'neighbours': (1, None, True, False),
    'mask_scale': (0.0, None, False, True),
    'mask_init': (None, None, False, False),
    'beta': (0.0, None, False, False),
    'gamma': (0.0, None, False, False),
    'lr': (0.0, None, False, True),
    'momentum': (0.0, 1.0, False, False),
    'tol': (0.0, None, False, True),
    'max_steps': (1, None, True, False),
    'chunk': (8, None, True, False),
}


def params_from_config(config) -> Params:
  """config.clip_powered as Params; ValueError names the first field that cannot work."""
  if NAME not in config:
    raise ValueError(f'config.{NAME}: missing block ({", ".join(_BOUNDS)})')
  values = {}
  for field, (low, high, integer, low_open) in _BOUNDS.items():
    values[field] = selectors.number(config, NAME, field, low=low, high=high, integer=integer,
                                     low_open=low_open)
  groups = selectors.option(config, NAME, 'groups')
  if groups not in GROUP_COLUMNS:
    raise ValueError(f'config.{NAME}.groups: one of {", ".join(map(repr, GROUP_COLUMNS))}, '
                     f'got {groups!r}')
  return Params(**values, groups=groups)


def needs(config) -> tuple:
  """Class groups come with the pool (ingest); clusters from the features stage."""
  if selectors.block(config, NAME).get('groups') == 'label':
    return ('embeddings', 'tasks')
  return ('features', 'embeddings', 'tasks')


def check_config(config) -> None:
  params_from_config(config)
  fraction = config.selection.fraction
  if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
      or not 0 <= fraction <= 1:
    raise ValueError(f'config.selection.fraction: must be in [0, 1] for {NAME}, got '
                     f'{fraction!r}')


def budget(fraction: float, n: int) -> int:
  """k = round(fraction * N), as the select stage's top-k counts it."""
  return min(max(int(round(fraction * n)), 0), n)


# ---------------------------------------------------------------------------------------
# (a) Dataset adaptation.


def init_adapters(dim: int) -> dict:
  """Identity maps: an untrained adapter leaves the reference space as it is."""
  eye, zero = jnp.eye(dim, dtype=jnp.float32), jnp.zeros((dim,), jnp.float32)
  return {'image': {'w': eye, 'b': zero}, 'text': {'w': eye, 'b': zero}}


def adapt(side: dict, emb):  # [B, E] -> [B, E] unit rows
  return kmeans.normalize(jnp.dot(emb, side['w'].astype(emb.dtype)) + side['b'].astype(emb.dtype))


def _classification_loss(adapters, image_emb, labels, prototypes, scale):
  """Cross-entropy of each image against every class's prompt embedding (InfoNCE with the
  class texts as the candidates)."""
  logits = scale * adapt(adapters['image'], image_emb) @ adapt(adapters['text'], prototypes).T
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def _retrieval_loss(adapters, image_emb, text_emb, scale):
  """The symmetric CLIP loss over a batch of image-caption pairs."""
  logits = scale * adapt(adapters['image'], image_emb) @ adapt(adapters['text'], text_emb).T
  labels = jnp.arange(logits.shape[0])
  return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())


def task_arrays(tasks) -> tuple[tuple, tuple]:
  """(kinds, arrays) of the tasks' train splits, in the form train_adapters takes."""
  kinds, arrays = [], []
  for task in tasks:
    image_emb = np.asarray(task['image_emb'], np.float32)
    if task['kind'] == 'classification':
      arrays.append({'image_emb': image_emb,
                     'labels': np.asarray(task['labels'], np.int32),
                     'prototypes': np.asarray(_class_prototypes(task['class_text_emb']))})
    elif task['kind'] == 'retrieval':
      arrays.append({'image_emb': image_emb,
                     'text_emb': np.asarray(task['text_emb'], np.float32),
                     'text_image': np.asarray(task['text_image'], np.int32)})
    else:
      raise ValueError(f'selector {NAME}: task {task.get("name")!r} has unknown kind '
                       f'{task["kind"]!r}')
    kinds.append(task['kind'])
  return tuple(kinds), tuple(arrays)


def train_adapters(kinds: tuple, arrays: tuple, params: Params, seed: int):
  """(adapters, losses [steps]): Adam on the mean over tasks of their contrastive losses,
  one batch per task per step (indices drawn from `seed` on the host, so the compiled step
  holds no random number generator)."""
  if not arrays:
    raise ValueError(f'selector {NAME}: no task to adapt on')
  dim = arrays[0]['image_emb'].shape[1]
  adapters = init_adapters(dim)
  if params.adapter_steps == 0:
    return jax.device_get(adapters), np.zeros(0, np.float32)
  rng = np.random.default_rng([seed, 0xADA9])
  batches = []
  for data in arrays:
    n = (data['labels'] if 'labels' in data else data['text_image']).shape[0]
    batches.append(rng.integers(0, n, (params.adapter_steps, min(params.adapter_batch, n)),
                                dtype=np.int32))  # [steps, B]
  adapters, losses = _train_adapters(adapters, arrays, tuple(batches), kinds=kinds,
                                     lr=params.adapter_lr, scale=1.0 / params.temperature)
  return jax.device_get(adapters), np.asarray(losses)


@functools.partial(jax.jit, static_argnames=('kinds', 'lr', 'scale'))
def _train_adapters(adapters, arrays, batches, kinds, lr, scale):
  optimizer = optax.adam(lr)

  def loss_fn(params, batch):
    total = 0.0
    for kind, data, idx in zip(kinds, arrays, batch):
      if kind == 'classification':
        total += _classification_loss(params, data['image_emb'][idx], data['labels'][idx],
                                      data['prototypes'], scale)
      else:
        total += _retrieval_loss(params, data['image_emb'][data['text_image'][idx]],
                                 data['text_emb'][idx], scale)
    return total / len(kinds)

  def step(carry, batch):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  (adapters, _), losses = jax.lax.scan(step, (adapters, optimizer.init(adapters)), batches)
  return adapters, losses


# ---------------------------------------------------------------------------------------
# (b) Sample scoring.


def _in_chunks(fn, arrays, chunk: int) -> np.ndarray:
  """fn over fixed-size float32 row blocks of the arrays (the tail padded), so one program
  is compiled and memory holds one block (the arrays may be row gathers,
  Inputs.embedding_rows); results concatenated as numpy."""
  n = arrays[0].shape[0]
  out = []
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    block = [np.asarray(a[start:stop], np.float32) for a in arrays]
    block = [np.pad(b, ((0, chunk - (stop - start)),) + ((0, 0),) * (b.ndim - 1))
             for b in block]
    out.append(np.asarray(fn(*block))[:stop - start])
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


@jax.jit
def _alignment(adapters, image_emb, text_emb):  # [B, E], [B, E] -> [B]
  return jnp.sum(adapt(adapters['image'], image_emb) * adapt(adapters['text'], text_emb), -1)


@jax.jit
def _adapt_images(adapters, image_emb):  # [B, E] -> [B, E]
  return adapt(adapters['image'], image_emb)


def alignment(adapters, image_emb, text_emb, chunk: int = 8192) -> np.ndarray:  # -> [N]
  """cos(A_I(image_i), A_T(text_i)): the raw (unnormalized) SAS."""
  return _in_chunks(functools.partial(_alignment, adapters), (image_emb, text_emb),
                    chunk).astype(np.float32)


def adapted_images(adapters, image_emb, chunk: int = 8192) -> np.ndarray:  # -> [N, E]
  return _in_chunks(functools.partial(_adapt_images, adapters), (image_emb,),
                    chunk).astype(np.float32)


def min_max(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if not x.size:
    return x.astype(np.float32)
  return ((x - x.min()) / max(x.max() - x.min(), _EPS)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=('neighbours', 'block'))
def _grouped_knn(x, starts, sizes, neighbours, block):
  """Mean Euclidean distance of each row to its K nearest other rows of its group.

  x [M + block, E]: unit rows sorted by group, then `block` rows of padding (so that no
  slice is clipped); the group g is rows starts[g] .. starts[g] + sizes[g] (empty groups
  cost nothing: knn_diversity pads starts and sizes with them to a static shape). Each
  group goes in row blocks and, for each, column blocks with a running top-K of cosines:
  memory holds [block, block + K], never [n, n], and the work is sum over groups of
  n_g^2 E. Returns [M + block]; rows with no neighbour get 0.
  """
  total = x.shape[0]

  def group(g, out):
    start, size = starts[g], sizes[g]
    n_blocks = (size + block - 1) // block

    def row_block(r, out):
      xr = jax.lax.dynamic_slice_in_dim(x, start + r * block, block)  # [block, E]
      row = r * block + jnp.arange(block)  # within the group

      def col_block(c, best):  # best [block, K] cosines, -inf where none yet
        xc = jax.lax.dynamic_slice_in_dim(x, start + c * block, block)
        col = c * block + jnp.arange(block)
        sims = jnp.dot(xr, xc.T, preferred_element_type=jnp.float32)  # [block, block]
        sims = jnp.where((col[None, :] < size) & (col[None, :] != row[:, None]), sims,
                         -jnp.inf)
        return jax.lax.top_k(jnp.concatenate([best, sims], axis=1), neighbours)[0]

      best = jax.lax.fori_loop(0, n_blocks, col_block,
                               jnp.full((block, neighbours), -jnp.inf, jnp.float32))
      found = jnp.isfinite(best)
      dist = jnp.where(found, jnp.sqrt(jnp.maximum(2.0 - 2.0 * best, 0.0)), 0.0)
      mean = dist.sum(axis=1) / jnp.maximum(found.sum(axis=1), 1)
      old = jax.lax.dynamic_slice_in_dim(out, start + r * block, block)
      return jax.lax.dynamic_update_slice_in_dim(out, jnp.where(row < size, mean, old),
                                                 start + r * block, 0)

    return jax.lax.fori_loop(0, n_blocks, row_block, out)

  return jax.lax.fori_loop(0, starts.shape[0], group, jnp.zeros((total,), jnp.float32))


def knn_diversity(emb, groups: np.ndarray, neighbours: int, chunk: int = 1024,
                  transform=None, pack: int = 16384) -> np.ndarray:  # [N, E], [N] -> [N]
  """The raw (unnormalized) SDS: mean distance of each unit row of emb to its K nearest
  neighbours with the same group id (fewer when its group is smaller). A sample alone in
  its group gets the largest value of the pool.

  emb may be a row gather (Inputs.embedding_rows), and `transform` ([b, E] -> [b, E], e.g.
  the image adapter) maps the rows read before the neighbours are found. Groups go in
  packs of whole consecutive groups (in group order) of at most max(pack, the largest
  group) rows, so memory holds one pack, not [N, E].
  """
  groups = np.asarray(groups)
  n = emb.shape[0]
  if groups.shape != (n,):
    raise ValueError(f'knn_diversity: groups must be [{n}], got {groups.shape}')
  if not n:
    return np.zeros(0, np.float32)
  order = np.argsort(groups, kind='stable')
  starts = np.concatenate([[0], np.flatnonzero(np.diff(groups[order])) + 1])
  sizes = np.diff(np.append(starts, n))
  # Row blocks of min(chunk, the largest group rounded up to a power of two): one compiled
  # program for the whole pool, and small groups are not padded to a big block.
  block = min(chunk, max(8, 1 << (int(sizes.max()) - 1).bit_length()))
  capacity = max(int(sizes.max()), min(pack, n))  # rows of a pack, and at most its groups
  x = np.zeros((capacity + block, emb.shape[1]), np.float32)  # [capacity + block, E]
  sorted_out = np.zeros(n, np.float32)
  first = 0
  while first < len(starts):
    last = first + 1  # the pack is groups first .. last - 1
    while last < len(starts) and starts[last] + sizes[last] - starts[first] <= capacity:
      last += 1
    lo, hi = starts[first], starts[last - 1] + sizes[last - 1]
    rows = np.asarray(emb[order[lo:hi]], np.float32)  # [hi - lo, E]
    x[:hi - lo] = rows if transform is None else transform(rows)
    x[hi - lo:] = 0.0
    pack_starts = np.zeros(capacity, np.int32)
    pack_sizes = np.zeros(capacity, np.int32)  # empty groups: no work
    pack_starts[:last - first] = starts[first:last] - lo
    pack_sizes[:last - first] = sizes[first:last]
    sorted_out[lo:hi] = np.asarray(_grouped_knn(
        x, pack_starts, pack_sizes, neighbours=int(neighbours), block=block))[:hi - lo]
    first = last
  lonely = np.repeat(sizes < 2, sizes)
  if lonely.any():
    sorted_out[lonely] = sorted_out[~lonely].max() if (~lonely).any() else 0.0
  out = np.empty(n, np.float32)
  out[order] = sorted_out
  return out


# ---------------------------------------------------------------------------------------
# (c) Selection optimization.


def mask_loss(d, sas, sds, k, beta, gamma, scale):
  """(loss, count term) of the relaxed mask m = sigmoid(scale d) ([N] each; k the budget).

  The count uses the straight-through estimator: forward the hard count of m > 0.5,
  backward d(count)/dm = 1.
  """
  n = d.shape[0]
  m = jax.nn.sigmoid(scale * d)
  hard = m + jax.lax.stop_gradient((m > 0.5).astype(m.dtype) - m)
  sas_term = jnp.mean(m * sas) / jnp.maximum(jnp.mean(sas), _EPS)
  sds_term = jnp.mean(m * sds) / jnp.maximum(jnp.mean(sds), _EPS)
  count_term = jnp.abs(jnp.sum(hard) - k) / n
  return -sas_term - beta * sds_term + gamma * count_term, count_term


@jax.jit
def _optimize_mask(sas, sds, k, beta, gamma, scale, init, lr, momentum, tol, max_steps):
  # Every constant is traced: one compiled program per pool size, whatever the config.
  n = sas.shape[0]
  optimizer = optax.sgd(lr, momentum=momentum)
  grad_fn = jax.grad(lambda d: mask_loss(d, sas, sds, k, beta, gamma, scale)[0])

  def term(d):  # the count term, from the integer count of m > 0.5
    kept = jnp.sum(jax.nn.sigmoid(scale * d) > 0.5).astype(jnp.float32)
    return jnp.abs(kept - k) / n

  def cond(state):
    _, _, step, current = state
    return (current >= tol) & (step < max_steps)

  def body(state):
    d, opt_state, step, _ = state
    updates, opt_state = optimizer.update(grad_fn(d), opt_state, d)
    d = optax.apply_updates(d, updates)
    return d, opt_state, step + 1, term(d)

  d = jnp.full((n,), init, sas.dtype)
  d, _, steps, final = jax.lax.while_loop(cond, body, (d, optimizer.init(d), 0, term(d)))
  return d, steps, final


def optimize_mask(sas: np.ndarray, sds: np.ndarray, k: int, params: Params) -> dict:
  """Runs (c) on normalized SAS and SDS [N]; returns d [N], steps, the final count term,
  whether it reached the tolerance, and counts [N] int64: exactly the k largest m (ties by
  row order)."""
  sas, sds = np.asarray(sas, np.float32), np.asarray(sds, np.float32)
  n = sas.shape[0]
  if not n:
    return {'d': np.zeros(0, np.float32), 'steps': 0, 'count_term': 0.0, 'converged': True,
            'counts': np.zeros(0, np.int64)}
  f32 = jnp.float32
  d, steps, final = _optimize_mask(
      sas, sds, f32(k), f32(params.beta), f32(params.gamma), f32(params.mask_scale),
      f32(params.mask_init), f32(params.lr), f32(params.momentum), f32(params.tol),
      jnp.int32(params.max_steps))
  d = np.asarray(d)
  counts = np.zeros(n, np.int64)
  counts[np.argsort(-d, kind='stable')[:k]] = 1  # the order of m is the order of d
  return {'d': d, 'steps': int(steps), 'count_term': float(final),
          'converged': bool(final < params.tol), 'counts': counts}


# ---------------------------------------------------------------------------------------
# The whole method.


def select(adapters, image_emb, text_emb, groups, k: int, params: Params) -> dict:
  """(b) and (c) with fitted adapters: SAS and SDS (normalized), the mask and the counts."""
  sas = min_max(alignment(adapters, image_emb, text_emb))
  sds = min_max(knn_diversity(image_emb, groups, params.neighbours, params.chunk,
                              transform=functools.partial(adapted_images, adapters)))
  return dict(optimize_mask(sas, sds, k, params), sas=sas, sds=sds)


def select_labelled(image_emb, class_text_emb, labels, fraction: float,
                    params: Params = Params(), seed: int = 0) -> dict:
  """The paper's setting: a labelled classification set (images [N, E], class prompt
  embeddings [C, T, E], labels [N], possibly noisy). Adapters are trained on the set itself,
  the caption of a sample is its label's class prompt, and classes are the SDS groups.
  Returns select's dict plus the adapter losses."""
  image_emb = np.asarray(image_emb, np.float32)
  labels = np.asarray(labels)
  task = {'kind': 'classification', 'image_emb': image_emb, 'labels': labels,
          'class_text_emb': class_text_emb}
  kinds, arrays = task_arrays([task])
  adapters, losses = train_adapters(kinds, arrays, params, seed)
  text_emb = arrays[0]['prototypes'][labels]  # [N, E]
  out = select(adapters, image_emb, text_emb, labels, budget(fraction, len(labels)), params)
  return dict(out, adapter_losses=losses)


# ---------------------------------------------------------------------------------------
# The selector.


def pool_groups(inputs: selectors.Inputs, groups: str) -> np.ndarray:  # -> [N]
  """The SDS group of every pool row; ValueError says why a pool has no class labels."""
  column = GROUP_COLUMNS[groups]
  if groups != 'label':
    return inputs.column(column, NAME)
  if column not in inputs.features.column_names:
    raise ValueError(f"config.{NAME}.groups='label': ingest/samples.parquet has no 'label' "
                     'column (ingested before ingest kept labels); delete the workdir\'s '
                     'ingest folder to ingest the pool again')
  labels = inputs.features.column(column).to_numpy(zero_copy_only=False)
  unlabelled = int((labels < 0).sum())
  if unlabelled:
    raise ValueError(f"config.{NAME}.groups='label': {unlabelled} of {labels.size} pool "
                     "samples have no class label (their json has no integer 'label'; "
                     'tools/labelled_to_pool.py writes a labelled classification set as a '
                     "pool); use groups='cluster' for a pool without labels")
  return labels


def fit(config, inputs: selectors.Inputs) -> dict:
  params = params_from_config(config)
  image_emb, text_emb = inputs.embedding_rows(NAME)  # read a chunk, then a pack of groups
  groups = pool_groups(inputs, params.groups)
  kinds, arrays = task_arrays(inputs.task_list(NAME))
  adapters, losses = train_adapters(kinds, arrays, params, config.seed)
  k = budget(config.selection.fraction, inputs.num_rows)
  out = select(adapters, image_emb, text_emb, groups, k, params)
  window = max(1, losses.size // 10)  # a tenth of the steps: one batch's loss is noisy
  return {
      'adapters': {side: {name: np.asarray(v) for name, v in adapters[side].items()}
                   for side in ('image', 'text')},
      'adapter_loss_first': float(losses[:window].mean()) if losses.size else float('nan'),
      'adapter_loss_last': float(losses[-window:].mean()) if losses.size else float('nan'),
      'sas': out['sas'], 'sds': out['sds'], 'd': out['d'], 'counts': out['counts'],
      'k': k, 'steps': out['steps'], 'count_term': out['count_term'],
      'converged': out['converged'], 'groups': params.groups,
  }


def score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N] int64
  del config
  return selectors.fitted_counts(NAME, state, inputs)


def summary(state) -> dict:
  kept = np.asarray(state['counts']) > 0
  sas, sds = np.asarray(state['sas']), np.asarray(state['sds'])
  return {
      'kept': int(kept.sum()), 'k': int(state['k']), 'groups': str(state['groups']),
      'mask_steps': int(state['steps']),
      'count_term': float(state['count_term']), 'converged': bool(state['converged']),
      'adapter_loss_first': float(state['adapter_loss_first']),
      'adapter_loss_last': float(state['adapter_loss_last']),
      'sas_mean_kept': float(sas[kept].mean()) if kept.any() else float('nan'),
      'sas_mean_pool': float(sas.mean()) if sas.size else float('nan'),
      'sds_mean_kept': float(sds[kept].mean()) if kept.any() else float('nan'),
      'sds_mean_pool': float(sds.mean()) if sds.size else float('nan'),
  }


selectors.register(selectors.Selector(
    name=NAME, fit=fit, score=score, needs=needs,
    output='counts', check_config=check_config, summary=summary,
    config_fields=('seed', 'selection'),
    doc='task-adapted CLIP alignment (SAS) and in-cluster (or in-class) kNN diversity (SDS) '
        'traded off by a relaxed mask optimized to exactly the budget (Yang et al., ICLR '
        '2025)'))
