"""Streaming, sharded CLIP embedding: decode on threads, encode fixed-shape batches.

A pool is too large to hold decoded, and a CPU host decodes JPEGs about as fast as a small
accelerator encodes them, so the two must overlap. A background thread reads the items and
has a thread pool decode and preprocess them (PIL releases the GIL) into fixed-size batches;
the caller's thread dispatches each batch to the jitted encoder and, since dispatch is
asynchronous, collects batch k only after dispatching batch k+1. Every batch has the same
shape (the tail padded with zeros and masked), so each tower compiles once; with a mesh,
batches are split over its 'data' axis and params placed by the sharding rules. Outputs are
float32 unit rows whatever the compute dtype.

    clip = api.load_clip(path, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    encoder = embedding.Encoder(clip, batch_size=256)
    uids, image_emb = encoder.embed_images(items, embedding.image_loader(encoder.clip))
    text_emb = encoder.embed_texts(captions)
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import queue
import threading
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tads_jax import losses
from tads_jax import sharding
from tads_jax.data import images as images_lib
from tads_jax.models import api, clip as clip_lib, preprocess

# Load errors that drop one item (counted under this reason) instead of failing the stream.
SKIP_ERRORS = {images_lib.CorruptImageError: 'corrupt_image'}


@dataclasses.dataclass
class Batch:
  inputs: np.ndarray   # [B, ...] fixed shape; rows past len(ids) are zeros
  mask: np.ndarray     # [B] bool, True for the real rows (which come first)
  ids: list            # ids of the real rows, in input order


def _make_batch(rows: list, ids: list, batch_size: int) -> Batch:
  inputs = np.zeros((batch_size,) + rows[0].shape, rows[0].dtype)
  inputs[:len(rows)] = np.stack(rows)
  mask = np.zeros((batch_size,), bool)
  mask[:len(rows)] = True
  return Batch(inputs, mask, list(ids))


def array_batches(array: np.ndarray, batch_size: int) -> Iterator[Batch]:
  """Fixed-size batches over the rows of an array already in memory (ids: row numbers)."""
  for lo in range(0, len(array), batch_size):
    rows = array[lo:lo + batch_size]
    yield _make_batch(list(rows), list(range(lo, lo + len(rows))), batch_size)


class _Failed:
  def __init__(self, error):
    self.error = error


_END = object()


def iter_batches(items: Iterable[tuple[Hashable, Any]], load: Callable[[Any], np.ndarray],
                 batch_size: int, *, workers: int = 2, prefetch: int = 2,
                 skips: collections.Counter | None = None,
                 skip_errors: dict | None = None) -> Iterator[Batch]:
  """Batches of `load(payload)` for `(id, payload)` items, in item order.

  A background thread iterates `items` (so reading a shard happens off the caller's
  thread too) and keeps up to `(prefetch + 1) * batch_size` loads running on `workers`
  threads; at most `prefetch` finished batches wait in the queue, so host memory is bounded
  by a few batches. An item whose load raises one of `skip_errors` (default: a corrupt
  image) is dropped and counted in `skips` under that error's reason; any other error ends
  the stream and is raised here.
  """
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f'batch_size: expected a positive integer, got {batch_size!r}')
  if not isinstance(workers, int) or workers < 1:
    raise ValueError(f'workers: expected a positive integer, got {workers!r}')
  skips = collections.Counter() if skips is None else skips
  skip_errors = SKIP_ERRORS if skip_errors is None else skip_errors
  skip_types = tuple(skip_errors)
  out = queue.Queue(maxsize=max(prefetch, 1))
  stop = threading.Event()

  def put(x) -> bool:
    while not stop.is_set():
      try:
        out.put(x, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    try:
      with concurrent.futures.ThreadPoolExecutor(workers, 'decode') as pool:
        pending = collections.deque()  # (id, future) in item order
        source = iter(items)
        exhausted = False
        rows, ids, shape = [], [], None
        while not stop.is_set():
          while not exhausted and len(pending) < (prefetch + 1) * batch_size:
            try:
              item_id, payload = next(source)
            except StopIteration:
              exhausted = True
              break
            pending.append((item_id, pool.submit(load, payload)))
          if not pending:
            break
          item_id, future = pending.popleft()
          try:
            row = np.asarray(future.result())
          except skip_types as e:
            reason = next(r for t, r in skip_errors.items() if isinstance(e, t))
            skips[reason] += 1
            continue
          if shape is None:
            shape = (row.shape, row.dtype)
          elif (row.shape, row.dtype) != shape:
            raise ValueError(f'item {item_id!r}: loaded as {row.dtype} {row.shape}, but '
                             f'earlier items gave {shape[1]} {shape[0]}')
          rows.append(row)
          ids.append(item_id)
          if len(rows) == batch_size:
            if not put(_make_batch(rows, ids, batch_size)):
              return
            rows, ids = [], []
        if rows and not stop.is_set():
          put(_make_batch(rows, ids, batch_size))
      put(_END)
    except BaseException as e:  # pylint: disable=broad-except  (re-raised by the consumer)
      put(_Failed(e))

  thread = threading.Thread(target=produce, name='iter_batches', daemon=True)
  thread.start()
  try:
    while True:
      x = out.get()
      if x is _END:
        return
      if isinstance(x, _Failed):
        raise x.error
      yield x
  finally:
    stop.set()
    thread.join()


def image_loader(clip: api.LoadedCLIP) -> Callable[[Any], np.ndarray]:
  """payload -> [H, W, 3] float32 pixels as the checkpoint preprocesses them.

  A payload is encoded image bytes with a name for errors (`(bytes, where)`), or an
  already decoded uint8 [H, W, 3] array or PIL image.
  """
  cfg = clip.preprocess_config

  def load(payload):
    if isinstance(payload, tuple):
      data, where = payload
      payload = images_lib.decode_image(data, where=where)  # [H, W, 3] uint8
    return preprocess.preprocess_image(payload, cfg)
  return load


# Jitted steps by (architecture, dtypes, tower, mesh, rules): params are arguments, so
# encoders that differ only in their weights share compiled code.
_STEPS = {}


class Encoder:
  """The image and text towers of a loaded CLIP as jitted masked steps over fixed batches.

  `batch_size` (default: the CLIP's) is rounded up to a multiple of the mesh's data axis
  so that every device gets the same rows. The compute dtype is the LoadedCLIP's.
  """

  def __init__(self, clip: api.LoadedCLIP, batch_size: int | None = None,
               workers: int = 2, prefetch: int = 2):
    self.clip = clip
    self.mesh = clip.mesh
    batch_size = clip.batch_size if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f'batch_size: expected a positive integer, got {batch_size!r}')
    if self.mesh is not None:
      shards = self.mesh.shape['data']
      batch_size = -(-batch_size // shards) * shards
    self.batch_size = batch_size
    self.workers, self.prefetch = workers, prefetch
    self.embed_dim = clip.config.embed_dim
    self.image_step = self._make_step(clip_lib.CLIP.encode_image)
    self.text_step = self._make_step(clip_lib.CLIP.encode_text)

  def _make_step(self, method):
    module = self.clip.module
    key = (module.config, module.dtype, module.param_dtype, method.__name__, self.mesh,
           self.clip.rules)
    if key in _STEPS:  # the same encoder loaded again (a rerun, a notebook) compiles once
      return _STEPS[key]

    def step(params, inputs, mask):  # [B, ...], [B] -> [B, E] float32, zero where masked
      emb = losses.normalize(module.apply({'params': params}, inputs, method=method))
      return jnp.where(mask[:, None], emb, 0.0)

    if self.mesh is None:
      _STEPS[key] = jax.jit(step)
    else:
      param_sh = jax.tree_util.tree_map(lambda x: x.sharding, self.clip.params)
      batch_sh = sharding.batch_sharding(self.mesh)
      _STEPS[key] = jax.jit(step, in_shardings=(param_sh, batch_sh, batch_sh),
                            out_shardings=batch_sh)
    return _STEPS[key]

  @contextlib.contextmanager
  def scope(self):
    """Mesh and logical-axis rules in scope while tracing (nothing without a mesh)."""
    with contextlib.ExitStack() as stack:
      if self.mesh is not None:
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(nn.logical_axis_rules(self.clip.rules))
      yield

  def _run(self, step, batches: Iterable[Batch]) -> tuple[list, np.ndarray]:
    """Encodes batches with one in flight: batch k is read back after k+1 is dispatched."""
    ids, chunks = [], []
    inflight = None

    def collect(result, batch):
      n = len(batch.ids)
      chunks.append(np.asarray(result)[:n])  # [n, E]; the padded tail is dropped
      ids.extend(batch.ids)

    with self.scope():
      for batch in batches:
        if batch.inputs.shape[0] != self.batch_size:
          raise ValueError(f'batch of {batch.inputs.shape[0]} rows; this encoder runs '
                           f'batches of {self.batch_size}')
        result = step(self.clip.params, batch.inputs, batch.mask)
        if inflight is not None:
          collect(*inflight)
        inflight = (result, batch)
      if inflight is not None:
        collect(*inflight)
    emb = (np.concatenate(chunks) if chunks
           else np.zeros((0, self.embed_dim), np.float32))  # [N, E]
    return ids, emb

  def encode_image_batches(self, batches: Iterable[Batch]) -> tuple[list, np.ndarray]:
    """Batches of preprocessed pixels [B, S, S, 3] -> (ids, [N, E] float32 unit rows)."""
    return self._run(self.image_step, _as_dtype(batches, np.float32))

  def encode_text_batches(self, batches: Iterable[Batch]) -> tuple[list, np.ndarray]:
    """Batches of token ids [B, L] -> (ids, [N, E] float32 unit rows)."""
    return self._run(self.text_step, _as_dtype(batches, np.int32))

  def embed_images(self, items: Iterable[tuple[Hashable, Any]],
                   load: Callable[[Any], np.ndarray] | None = None,
                   skips: collections.Counter | None = None) -> tuple[list, np.ndarray]:
    """(id, payload) items -> (ids kept, [N, E] float32), decoded on background threads.

    `load` defaults to `image_loader(self.clip)`. Items that fail to decode are left out
    of the ids and counted in `skips`.
    """
    load = image_loader(self.clip) if load is None else load
    batches = iter_batches(items, load, self.batch_size, workers=self.workers,
                           prefetch=self.prefetch, skips=skips)
    with contextlib.closing(batches):  # an encode error stops the decode threads at once
      return self.encode_image_batches(batches)

  def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
    """Strings -> [N, E] float32 unit rows (tokenized up front: ids are small)."""
    token_ids = self.clip.tokenize(list(texts))  # [N, L] int32
    return self.encode_text_batches(array_batches(token_ids, self.batch_size))[1]


def _as_dtype(batches, dtype):
  for batch in batches:
    if batch.inputs.dtype != dtype:
      batch = dataclasses.replace(batch, inputs=batch.inputs.astype(dtype))
    yield batch


DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  """'float32' | 'bfloat16' -> the jnp dtype for matmul inputs and stored params."""
  if name not in DTYPES:
    raise ValueError(f'config.encoder.dtype: {name!r} unknown; one of {", ".join(DTYPES)}')
  return DTYPES[name]
