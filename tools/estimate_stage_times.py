r"""Expected time per stage of configs/datacomp_small.py, datacomp_medium.py and cc12m.py on
one H100 and on a TPU v5e-8, from rates measured in this invocation on this CPU.

How the estimate is made (every line of the table is host work and device work):

- Device work is FLOPs from XLA's cost analysis of the project's own jitted programs,
  lowered at the configs' shapes (nothing is guessed from parameter counts): the ViT-B/32
  image and text forward the embed and features stages run, the pixel proxy's train step
  (forward, backward and AdamW at evaluate.pixels' batch), the embedding proxy's train
  step, one TADS meta step at config.tads.meta's batches with the four tasks, the image
  quality operators on a chunk and task relevance on a chunk. k-means (Lloyd passes and
  k-means++), whose loops XLA's analysis counts once, and SemDeDup's within-cluster scans
  are counted by formula: (iters + 1) x N x 2kD, k x R x 2D, 2D x N^2 / k (equal clusters;
  skewed ones cost more). Device seconds = FLOPs / (peak bf16 FLOP/s x --mfu), or bytes /
  (HBM bandwidth x --mfu) where the program reads more than it computes (the operators).
  --mfu (default 0.4) is an ASSUMPTION: no GPU or TPU was measured. Kernel-launch latency
  is not modelled, which flatters the small programs (meta steps, the embedding proxy),
  nor is tokenizing captions (transformers' fast tokenizer, once per caption).
- Host work is per-row CPU time measured here, on generated data of the pools' shapes,
  through the stages' own functions: ingest's row readers on an img2dataset shard
  (CC12M, 256 px shorter side) and on a DataComp metadata file with its tar (512 px longer
  side); JPEG decode + resize as the features stage and the pixel cache do; decode +
  CLIP preprocessing (224 px) as the embed stage does; the flipped copy the features stage
  makes on its main thread and its preprocessing; the text operators; the read of
  stored float16 embeddings; the TADS standardizer and top-k; the batch gathers of the
  meta steps and the proxies. Each is divided by the parallelism the config gives that
  part on the target's host (ingest: --processes; embed and the preprocessing of the
  flipped images: embed.workers threads; features' decode and the pixel cache:
  data.grain_workers decode processes, 1 when 0; the rest: one thread), capped by the
  host's vCPUs (per-vCPU rates: this machine's CPUs are vCPUs too). Host parts of a stage
  are added; a stage's estimate is max(host, device): its input pipeline overlaps the
  device. The generated JPEGs have about the bytes per pixel of the real pools
  (REAL_JPEG_KB, printed beside them); DataComp's are often smaller than 512 px, so its
  decode times here lean high.
- Sizes: DataComp small and medium pools 12.8M and 128M (mlfoundations/datacomp README);
  CC12M 11M downloaded (configs/cc12m.py DOWNLOADED); task sets below (TASK_SETS).
- Accelerators: H100 SXM 989 TFLOP/s dense bf16, 3.35 TB/s HBM, on a host with 26 vCPUs
  (GCP a3-highgpu-1g: a3-highgpu-8g's 208 vCPUs per 8 GPUs); TPU v5e-8: 8 x 197 TFLOP/s
  bf16 and 8 x 819 GB/s HBM, host ct5lp-hightpu-8t with 224 vCPUs (Cloud TPU v5e docs).

  python tools/estimate_stage_times.py
  python tools/estimate_stage_times.py --mfu 0.3 --grain-workers 16 --processes 4
"""

import argparse
import collections
import dataclasses
import io
import math
import os
import shlex
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'configs'))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  pylint: disable=wrong-import-position

# Pools: (config module, samples, image side of the downloaded tars, embeddings shipped).
TARGETS = {
    'DataComp small': ('datacomp_small', 12_800_000, 'datacomp', True),
    'DataComp medium': ('datacomp_medium', 128_000_000, 'datacomp', True),
    'CC12M': ('cc12m', None, 'cc12m', False),  # None: cc12m.DOWNLOADED
}
# JPEG shapes of the downloaded pools: DataComp's download_upstream.py resizes to 512 px on
# the longer side (keep_ratio_largest, only if bigger); configs/cc12m.py's img2dataset
# command to 256 px on the shorter side (keep_ratio, only if bigger). A 4:3 photo each.
IMAGE_SHAPES = {'datacomp': (384, 512), 'cc12m': (256, 341)}
# What the real pools hold per image: DataComp small's tars, 450 GB for 12.8M samples
# (mlfoundations/datacomp README); CC12M, 331 GB for ~11M at 256 x 256 in img2dataset's
# default border mode (its dataset_examples/cc12m.md).
REAL_JPEG_KB = {'datacomp': 450e6 / 12.8e6, 'cc12m': 331e6 / 11e6}
# Images and captions of the tasks (embed: every split; evaluate: the eval splits, per
# run). ImageNet (10,000 train, 50,000 validation) and CIFAR-100 (10,000 and 10,000) are
# configs/datacomp.py's splits; the retrieval sets are ASSUMED to be COCO 2014 train
# (82,783 images) with the Karpathy test split (5,000) and Flickr30k's Karpathy splits
# (29,000 and 1,000), 5 captions per image. Class prompts come from the configs.
TASK_SETS = {'classification_images': 10_000 + 50_000 + 10_000 + 10_000,
             'retrieval_images': 82_783 + 5_000 + 29_000 + 1_000,
             'eval_images': 50_000 + 10_000 + 5_000 + 1_000,
             'eval_retrieval_images': 5_000 + 1_000,
             'captions_per_image': 5}
ACCELERATORS = {
    'H100': dict(peak=989e12, hbm=3.35e12),
    'v5e-8': dict(peak=8 * 197e12, hbm=8 * 819e9),
}


# ---------------------------------------------------------------------------------------
# Device FLOPs: XLA's cost analysis of the lowered programs (nothing is compiled).


def _cost(lowered) -> tuple[float, float]:
  analysis = lowered.cost_analysis()
  return float(analysis['flops']), float(analysis.get('bytes accessed', 0.0))


def clip_forward_flops(preset: str = 'vit_b32') -> dict:
  """{'image', 'text'}: FLOPs of one example through each tower of a tads_jax CLIP preset
  (224 px, 77 tokens for vit_b32), from the lowered forward at batch 4."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from tads_jax.models import clip  # pylint: disable=import-outside-toplevel
  config = clip.get_config(preset)
  module = clip.CLIP(config)
  params = clip.abstract_params(module)
  batch = 4
  pixels = jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, 3), jnp.float32)
  ids = jax.ShapeDtypeStruct((batch, config.context_length), jnp.int32)
  image = jax.jit(lambda p, x: module.apply({'params': p}, x, method=clip.CLIP.encode_image))
  text = jax.jit(lambda p, x: module.apply({'params': p}, x, method=clip.CLIP.encode_text))
  return {'image': _cost(image.lower(params, pixels))[0] / batch,
          'text': _cost(text.lower(params, ids))[0] / batch}


def _one_device_mesh():
  import jax  # pylint: disable=import-outside-toplevel
  from tads_jax import sharding  # pylint: disable=import-outside-toplevel
  return sharding.make_mesh(1, 1, devices=jax.devices()[:1])


def train_step_flops(cfg, width: int | None) -> float:
  """FLOPs per sample of tads_jax.train's jitted step (forward, backward, update) at
  cfg.batch_size: the proxies of the evaluate stage."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from tads_jax import train  # pylint: disable=import-outside-toplevel
  mesh = _one_device_mesh()
  program = train._program(train._compute_key(cfg), width, mesh)  # pylint: disable=protected-access
  b = cfg.batch_size
  s = jax.ShapeDtypeStruct
  with jax.set_mesh(mesh), nn.logical_axis_rules(program.rules):
    params = jax.eval_shape(program.init, jax.random.key(0, impl='rbg'))
    state = train.TrainState(step=s((), jnp.int32), params=params,
                             opt_state=jax.eval_shape(program.init_opt, params))
    if cfg.kind == 'pixels':
      c = cfg.clip_config()
      images = s((b, c.image_size, c.image_size, 3), jnp.uint8)
      texts = s((b, c.context_length), jnp.int32)
    else:
      images, texts = s((b, width), jnp.float16), s((b, width), jnp.float16)
    flops, _ = _cost(program.step.lower(state, images, texts, s((b,), jnp.float32),
                                        s((b,), jnp.int32)))
  return flops / b


def tads_feature_names(config) -> list:
  """The columns TADS's value function reads for these tasks: the operators, two
  relevance columns per task (three with features.target_relevance), the diversity
  columns (value.feature_group)."""
  from tads_jax import value  # pylint: disable=import-outside-toplevel
  names = list(config.features.operators)
  sides = ('image', 'text') + (('target',) if config.features.get('target_relevance') else ())
  names += [f'{value.RELEVANCE_PREFIX}{t["name"]}_{side}' for t in config.tasks
            for side in sides]
  return names + list(value.DIVERSITY_COLUMNS)


def meta_step_flops(config, width: int = 512) -> float:
  """FLOPs of one TADS meta step (K unrolled proxy updates, the outer loss on every task,
  its gradient, the value function's update) at config.tads.meta's batch sizes."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from tads_jax import meta, sharding, value  # pylint: disable=import-outside-toplevel
  from tads_jax.selectors import tads  # pylint: disable=import-outside-toplevel
  cfg, _ = tads.meta_config(config)
  names = tads_feature_names(config)
  module = value.make_value_function(names, dict(config.tads.prior), tuple(config.tads.hidden))
  params = value.init_params(module, 0)
  kinds = tuple(t['kind'] for t in config.tasks)
  mesh = _one_device_mesh()
  rules = sharding.get_rules('data_parallel', where='rules')
  # pylint: disable-next=protected-access
  program = meta._program(meta._compute_key(cfg), meta.as_scorer(module), width, kinds,
                          mesh, rules)
  s = jax.ShapeDtypeStruct
  b, tb = cfg.batch_size, cfg.task_batch_size
  feedback = []
  for t in config.tasks:
    if t['kind'] == 'classification':
      templates = len(t['templates']) if cfg.templates == 'all' else 1
      feedback.append({'image_emb': s((tb, width), jnp.float32),
                       'labels': s((tb,), jnp.int32),
                       'class_text_emb': s((len(t['classnames']), templates, width),
                                           jnp.float32)})
    else:
      feedback.append({'image_emb': s((tb, width), jnp.float32),
                       'text_emb': s((tb, width), jnp.float32)})
  pool = {'z': s((b, len(names)), jnp.float32), 'image_emb': s((b, width), jnp.float16),
          'text_emb': s((b, width), jnp.float16)}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.eval_shape(lambda: meta.init_state(cfg, params, program.proxy, width,
                                                   len(kinds), program.optimizer))
    return _cost(program.step.lower(state, pool, feedback))[0]


def operator_cost(config, chunk: int = 256) -> tuple[float, float]:
  """(FLOPs, bytes) per row of the image and cross-modal operators (jitted, so device
  work), on a chunk of pool.image_size images."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from tads_jax.scoring import registry  # pylint: disable=import-outside-toplevel
  size, width = config.pool.image_size, 512
  ops = [registry.OPERATORS[n] for n in config.features.operators
         if registry.OPERATORS[n].kind != 'text']
  shapes = {'images': (chunk, size, size, 3), 'sizes': (chunk, 2), 'mask': (chunk,),
            'image_emb': (chunk, width), 'text_emb': (chunk, width),
            'flipped_image_emb': (chunk, width)}
  dtypes = {'sizes': jnp.int32, 'mask': jnp.bool_}
  used = sorted({i for op in ops for i in op.inputs if i in shapes})
  arrays = {i: jax.ShapeDtypeStruct(shapes[i], dtypes.get(i, jnp.float32)) for i in used}
  spec = tuple((op.name, ()) for op in ops)
  run = registry._jitted_device_ops(spec, tuple(used))  # pylint: disable=protected-access
  flops, bytes_ = _cost(run.lower(arrays))
  return flops / chunk, bytes_ / chunk


def relevance_flops(config, width: int = 512, chunk: int = 1024) -> float:
  """FLOPs per row and side of task relevance: cosines to every task's prototypes (class
  prompt ensembles; features.retrieval_prototypes k-means centres per retrieval task)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from tads_jax.scoring import relevance  # pylint: disable=import-outside-toplevel
  total = 0.0
  for t in config.tasks:
    count = (len(t['classnames']) if t['kind'] == 'classification'
             else config.features.retrieval_prototypes)
    total += _cost(relevance.relevance.lower(
        jax.ShapeDtypeStruct((chunk, width), jnp.float32),
        jax.ShapeDtypeStruct((count, width), jnp.float32),
        top_m=config.features.relevance_top_m))[0] / chunk
  return total


# ---------------------------------------------------------------------------------------
# Host rates: seconds per row of the stages' own functions on generated data.


def _best(fn, repeats: int = 3) -> float:
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def photo_jpegs(shape, count: int, seed: int = 0) -> list:
  """JPEGs (quality 95, img2dataset's default) of smooth random scenes with grain: a
  stand-in for photos (pure noise would compress and decode like no photo does)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  h, w = shape
  out = []
  for _ in range(count):
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((w, h), Image.BICUBIC), np.float32)
    pixels = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format='JPEG', quality=95)
    out.append(buf.getvalue())
  return out


CAPTIONS = ('a photo of a golden retriever playing in the snow with a red ball',
            'Modern kitchen interior with white cabinets, marble countertop and wooden floor',
            'Vintage 1960s poster of a jazz festival in New Orleans, printed on canvas',
            '<PERSON> smiling at the camera during the award ceremony in 2019',
            'aerial view of the old town and the river at sunset, Prague, Czech Republic',
            'hand drawn vector illustration of a cute cartoon cat sleeping on a pillow')


@dataclasses.dataclass
class HostRates:
  """Seconds per row (or per step) on one vCPU of this machine."""
  jpeg_bytes: dict          # pool kind -> mean bytes of the generated JPEGs
  ingest: dict              # pool kind -> s per sample (ingest's row reader)
  decode_resize: dict       # pool kind -> s per image: decode + resize to pool.image_size
  decode_224: dict          # pool kind -> s per image: decode + resize to 224 (pixel cache)
  load_224: dict            # pool kind -> s per image: decode + CLIP preprocessing (embed)
  flip: dict               # pool kind -> s per image: the contiguous flipped copy (features'
                            # main thread)
  preprocess_224: dict      # pool kind -> s per decoded image: CLIP preprocessing
  text_ops: float           # s per caption: the configured text operators
  embedding_read: float     # s per row: np.load of float16 image + text embeddings
  standardize: float        # s per row: features.parquet read, Standardizer fit + transform
  select: float             # s per row: top-k at selection.fraction, scores.parquet written
  meta_gather: float        # s per meta step: the pool batch and the task batches
  embedding_gather: float   # s per embedding-proxy step
  pixel_gather: float       # s per pixel-proxy step (uint8 images from the cache)


def measure_host(config, rows: int = 48) -> HostRates:
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  from tads_jax import selection, value  # pylint: disable=import-outside-toplevel
  from tads_jax.data import datacomp, images, tar_writer  # pylint: disable=import-outside-toplevel
  from tads_jax.models import preprocess  # pylint: disable=import-outside-toplevel
  from tads_jax.scoring import registry  # pylint: disable=import-outside-toplevel
  from tads_jax.stages import ingest  # pylint: disable=import-outside-toplevel
  cfg224 = preprocess.default_config(224)
  size = config.pool.image_size
  rng = np.random.default_rng(0)
  out = collections.defaultdict(dict)
  with tempfile.TemporaryDirectory() as tmp:
    for kind, shape in IMAGE_SHAPES.items():
      jpegs = photo_jpegs(shape, rows, seed=len(kind))
      captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(rows)]
      out['jpeg_bytes'][kind] = float(np.mean([len(j) for j in jpegs]))
      uids = [f'{rng.integers(2**62):016x}{i:016x}' for i in range(rows)]
      if kind == 'cc12m':  # img2dataset's layout: no uid in the json
        tar = os.path.join(tmp, '00000.tar')
        tar_writer.write_shard(tar, [
            (f'{i:09d}', {'jpg': jpegs[i], 'txt': captions[i], 'json': {
                'key': f'{i:09d}', 'status': 'success', 'caption': captions[i],
                'width': shape[1], 'height': shape[0]}}) for i in range(rows)])
        read = lambda tar=tar: ingest._rows_from_shard(  # pylint: disable=protected-access
            tar, collections.Counter())
      else:  # DataComp: metadata parquet + npz, the tar beside them
        path = os.path.join(tmp, '00000000.parquet')
        emb = rng.normal(size=(rows, 512)).astype(np.float16)
        datacomp.write_metadata(path, {
            'uid': uids, 'url': ['http://x'] * rows, 'text': captions,
            'original_width': [shape[1]] * rows, 'original_height': [shape[0]] * rows,
            'clip_b32_similarity_score': [0.3] * rows, 'clip_l14_similarity_score': [0.3] * rows,
            'sha256': [''] * rows}, {'b32_img': emb, 'b32_txt': emb,
                                     'l14_img': emb[:, :8], 'l14_txt': emb[:, :8]})
        tar_writer.write_shard(datacomp.tar_path(path), [
            (f'{i:09d}', {'jpg': jpegs[i], 'txt': captions[i], 'json': {'uid': uids[i]}})
            for i in range(rows)])
        read = lambda path=path: ingest._rows_from_metadata(  # pylint: disable=protected-access
            path, 'b32', collections.Counter(), datacomp.tar_path(path))
      out['ingest'][kind] = _best(read) / rows
      decoded = [images.decode_image(j, where='bench') for j in jpegs]
      out['decode_resize'][kind] = _best(lambda: [images.resize_center_crop(
          images.decode_image(j, where='bench'), size) for j in jpegs]) / rows
      out['decode_224'][kind] = _best(lambda: [images.resize_center_crop(
          images.decode_image(j, where='bench'), 224) for j in jpegs]) / rows
      out['load_224'][kind] = _best(lambda: [preprocess.preprocess_image(
          images.decode_image(j, where='bench'), cfg224) for j in jpegs]) / rows
      out['flip'][kind] = _best(lambda: [np.ascontiguousarray(d[:, ::-1])
                                         for d in decoded]) / rows
      out['preprocess_224'][kind] = _best(lambda: [preprocess.preprocess_image(d, cfg224)
                                                   for d in decoded]) / rows

    text_ops = [n for n in config.features.operators if registry.OPERATORS[n].kind == 'text']
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(256)]
    registry.compute(text_ops, captions=captions)
    text_s = _best(lambda: registry.compute(text_ops, captions=captions)) / len(captions)

    n = 20_000
    npz = os.path.join(tmp, 'emb.npz')
    np.savez(npz, image_emb=rng.normal(size=(n, 512)).astype(np.float16),
             text_emb=rng.normal(size=(n, 512)).astype(np.float16))

    def read_npz():
      with np.load(npz) as f:
        return f['image_emb'].astype(np.float32), f['text_emb'].astype(np.float32)
    read_s = _best(read_npz) / n

  # learn reads the features table and standardizes it; select writes a score per row
  # (scores.parquet: uid, score, times selected) after the top-k.
  names = tads_feature_names(config)
  x = rng.normal(size=(200_000, len(names))).astype(np.float32)
  uid_column = pa.array([f'{i:032x}' for i in range(len(x))])
  with tempfile.TemporaryDirectory() as tmp:
    features = os.path.join(tmp, 'features.parquet')
    pq.write_table(pa.table({'uid': uid_column, **{n: x[:, i] for i, n in enumerate(names)}}),
                   features)

    def standardize():
      table = pq.read_table(features, columns=names)
      z = np.stack([table.column(n).to_numpy() for n in names], axis=1)  # [N, F]
      value.Standardizer.fit(z, names).transform(z, out=z)
    standardize_s = _best(standardize) / len(x)
    scores = rng.normal(size=len(x))

    def select():
      counts = selection.topk_counts(scores, uid_column, config.selection.fraction)
      pq.write_table(pa.table({'uid': uid_column, 'score': scores, 'selected': counts}),
                     os.path.join(tmp, 'scores.parquet'))
    select_s = _best(select) / len(x)

  meta_cfg = config.tads.meta
  pool_emb = rng.normal(size=(200_000, 512)).astype(np.float16)
  task_emb = rng.normal(size=(20_000, 512)).astype(np.float32)

  def meta_batch():
    idx = rng.integers(0, len(x), meta_cfg.batch_size)
    _ = x[idx], pool_emb[idx], pool_emb[idx]
    for _ in config.tasks:
      _ = task_emb[rng.integers(0, len(task_emb), meta_cfg.task_batch_size)]
  meta_s = _best(meta_batch)

  def embedding_batch():
    idx = rng.integers(0, len(pool_emb), config.evaluate.batch_size)
    return pool_emb[idx], pool_emb[idx]
  embedding_s = _best(embedding_batch)

  side = config.evaluate.pixels.image_size
  cache = rng.integers(0, 256, (512, side, side, 3), dtype=np.uint8)
  gather = 64
  pixel_s = _best(lambda: cache[rng.integers(0, len(cache), gather)]) * (
      config.evaluate.pixels.batch_size / gather)
  return HostRates(text_ops=text_s, embedding_read=read_s, standardize=standardize_s,
                   select=select_s, meta_gather=meta_s, embedding_gather=embedding_s,
                   pixel_gather=pixel_s, **out)


# ---------------------------------------------------------------------------------------
# This CPU: the ViT-B/32 steps timed, against a GEMM, to show what the FLOP counts buy here.


def cpu_throughput(config, batch: int = 4) -> dict:
  """Seconds of the embed stage's ViT-B/32 image and text steps (tads_jax.embedding.Encoder)
  and of the pixel proxy's train step at `batch`, float32 (this CPU has no bf16 units
  worth using, BENCHMARKS.md), and the best 1024^3 float32 GEMM rate."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from tads_jax import embedding, train  # pylint: disable=import-outside-toplevel
  from tads_jax.models import api, preprocess  # pylint: disable=import-outside-toplevel
  from tads_jax.stages import evaluate  # pylint: disable=import-outside-toplevel
  a = jnp.asarray(np.random.default_rng(0).normal(size=(1024, 1024)), jnp.float32)
  dot = jax.jit(lambda x, y: x @ y)
  dot(a, a).block_until_ready()
  gemm = 2 * 1024 ** 3 / _best(lambda: dot(a, a).block_until_ready(), repeats=5)

  pixel_cfg = evaluate.train_config(config, 0, proxy='pixels')
  cfg = dataclasses.replace(train._compute_key(pixel_cfg),  # pylint: disable=protected-access
                            batch_size=batch, dtype='float32')
  mesh = _one_device_mesh()
  program = train._program(cfg, None, mesh)  # pylint: disable=protected-access
  c = cfg.clip_config()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, c.image_size, c.image_size, 3), dtype=np.uint8)
  ids = rng.integers(1, c.eos_token_id, (batch, c.context_length)).astype(np.int32)
  ids[:, -1] = c.eos_token_id
  with jax.set_mesh(mesh), nn.logical_axis_rules(program.rules):
    params = program.init(jax.random.key(0, impl='rbg'))
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=program.init_opt(params))
    args = (images, ids, np.ones(batch, np.float32), np.arange(batch, dtype=np.int32))
    step = program.step.lower(state, *args).compile()
    state, metrics = step(state, *args)
    jax.block_until_ready(metrics)
    holder = [state]

    def one_step():
      holder[0], m = step(holder[0], *args)
      jax.block_until_ready(m)
    train_s = _best(one_step, repeats=2)
    weights = jax.device_get(nn.unbox(holder[0].params))
  loaded = api.LoadedCLIP(c, weights, None, preprocess.default_config(c.image_size),
                          batch_size=batch)
  encoder = embedding.Encoder(loaded)
  pixels = rng.normal(size=(batch, c.image_size, c.image_size, 3)).astype(np.float32)
  image_batch = next(embedding.array_batches(pixels, batch))
  text_batch = next(embedding.array_batches(ids, batch))
  encoder.encode_image_batches([image_batch])
  encoder.encode_text_batches([text_batch])
  image_s = _best(lambda: encoder.encode_image_batches([image_batch]), repeats=2)
  text_s = _best(lambda: encoder.encode_text_batches([text_batch]), repeats=2)
  return {'batch': batch, 'gemm': gemm, 'image': image_s / batch, 'text': text_s / batch,
          'train': train_s / batch}


# ---------------------------------------------------------------------------------------
# The model of each stage.


@dataclasses.dataclass
class Part:
  """Work of one stage: host seconds on one vCPU per parallel lane, lanes, device FLOPs
  (and bytes, for programs that read more than they compute)."""
  host: list            # [(seconds on one vCPU, parallel lanes the config gives)]
  flops: float = 0.0
  hbm_bytes: float = 0.0
  per_run: float = 0.0  # FLOPs of one of several identical runs (the proxies' seeds)


def stage_parts(config, pool: int, kind: str, ships: bool, flops: dict,
                host: HostRates, args) -> dict:
  """{stage: (what it does, Part)} for one target."""
  ev, px = config.evaluate, config.evaluate.pixels
  workers = config.embed.workers
  grain = max(1, args.grain_workers if args.grain_workers is not None
              else config.data.grain_workers)
  classes = sum(len(t['classnames']) * len(t['templates']) for t in config.tasks
                if t['kind'] == 'classification')
  per_image = TASK_SETS['captions_per_image']
  task_images = TASK_SETS['classification_images'] + TASK_SETS['retrieval_images']
  task_texts = classes + per_image * TASK_SETS['retrieval_images']
  eval_texts = classes + per_image * TASK_SETS['eval_retrieval_images']
  pool_embed = 0 if ships else pool
  k, d, iters = config.features.kmeans_k, 512, config.features.kmeans_iters
  init_rows = max(64 * config.features.chunk, 64 * k)   # features._init_rows
  passes = iters + 6  # embedding reads: relevance 2, k-means iters + 2, SemDeDup 2
  runs = ev.seeds * (1 + len(ev.baselines))
  selected = round(config.selection.fraction * pool)
  meta = config.tads.meta
  out = {}
  out['ingest'] = (
      f'{pool / 1e6:.1f}M samples read, images decoded', Part(
          host=[(pool * host.ingest[kind], args.processes)]))
  out['encoder + embed'] = (
      (f'{pool_embed / 1e6:.1f}M pool + ' if pool_embed else 'pool shipped; ')
      + f'{task_images / 1e3:.0f}k task images, {task_texts / 1e3:.0f}k texts', Part(
          host=[(pool_embed * host.load_224[kind] + task_images * host.load_224['datacomp'],
                 workers)],
          flops=(pool_embed + task_images) * flops['image']
          + (pool_embed + task_texts) * flops['text']))
  out['features'] = (
      f'decode + operators + flipped ViT-B/32 on {pool / 1e6:.1f}M; k-means k={k}', Part(
          host=[(pool * host.decode_resize[kind], grain),
                (pool * host.flip[kind], 1),
                (pool * host.preprocess_224[kind], workers),
                (pool * host.text_ops, args.processes),
                (pool * passes * host.embedding_read, args.processes)],
          flops=pool * (flops['image'] + flops['operators'] + 4 * flops['relevance'])
          + (iters + 1) * pool * 2 * k * d + k * init_rows * 2 * d
          + 2 * d * pool ** 2 / k,
          hbm_bytes=pool * flops['operator_bytes']))
  out['learn'] = (
      f'TADS: {meta.steps} meta steps of {meta.batch_size} (K={meta.unroll})', Part(
          host=[(pool * host.standardize + meta.steps * host.meta_gather, 1)],
          flops=meta.steps * flops['meta_step']))
  out['select'] = (f'top {config.selection.fraction:.0%}: {selected / 1e6:.2f}M', Part(
      host=[(pool * host.select, 1)]))
  steps = math.ceil(ev.samples_seen / ev.batch_size)
  out['evaluate, embedding proxy'] = (
      f'{runs} runs x {ev.samples_seen / 1e6:.1f}M samples seen', Part(
          host=[(runs * steps * host.embedding_gather, 1)],
          flops=runs * ev.samples_seen * flops['embedding_step']))
  pixel_steps = math.ceil(px.samples_seen / px.batch_size)
  per_run = (px.samples_seen * flops['pixel_step'] + TASK_SETS['eval_images'] * flops['image']
             + eval_texts * flops['text'])
  out['evaluate, pixel proxy ViT-B/32'] = (
      f'{runs} runs x {px.samples_seen / 1e6:.1f}M samples seen ({pixel_steps} steps of '
      f'{px.batch_size}); pool decoded once into a '
      f'{pool * px.image_size ** 2 * 3 / 1e12:.1f} TB cache', Part(
          host=[(pool * host.decode_224[kind], grain),
                (runs * pixel_steps * host.pixel_gather, 1)],
          flops=runs * per_run, per_run=per_run))
  return out


def seconds(part: Part, accelerator: dict, vcpus: int, mfu: float) -> tuple[float, float]:
  """(host s, device s) of a stage on an accelerator host."""
  host = sum(s / min(max(lanes, 1), vcpus) for s, lanes in part.host)
  device = max(part.flops / (accelerator['peak'] * mfu),
               part.hbm_bytes / (accelerator['hbm'] * mfu))
  return host, device


def human(s: float) -> str:
  if s == 0:
    return '-'
  if s < 60:
    return f'{s:.0f} s' if s >= 1 else f'{s:.1f} s'
  if s < 3600:
    return f'{s / 60:.0f} min'
  if s < 48 * 3600:
    return f'{s / 3600:.1f} h'
  return f'{s / 86400:.1f} d'


def _command() -> str:
  return 'python ' + ' '.join(shlex.quote(a) for a in sys.argv)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--mfu', type=float, default=0.4,
                      help='ASSUMED fraction of peak FLOP/s (and of HBM bandwidth) reached')
  parser.add_argument('--h100-host-vcpus', type=int, default=26,
                      help='vCPUs beside one H100 (GCP a3-highgpu-1g: 26)')
  parser.add_argument('--v5e-host-vcpus', type=int, default=224,
                      help='vCPUs of the v5e-8 host (ct5lp-hightpu-8t: 224)')
  parser.add_argument('--processes', type=int, default=1,
                      help='tads_jax processes on the host (ingest reads its shards in one '
                      'thread per process)')
  parser.add_argument('--grain-workers', type=int, default=None,
                      help="decode processes of features and the pixel cache (default: the "
                      "config's data.grain_workers; 0 decodes in one thread)")
  parser.add_argument('--skip-cpu-timing', action='store_true',
                      help="don't time the ViT-B/32 steps on this CPU (the estimate does not "
                      'use them)')
  args = parser.parse_args()
  if not 0 < args.mfu <= 1:
    parser.error(f'--mfu: must be in (0, 1], got {args.mfu}')
  for field in ('h100_host_vcpus', 'v5e_host_vcpus', 'processes'):
    if getattr(args, field) < 1:
      parser.error(f'--{field.replace("_", "-")}: must be >= 1')
  if args.grain_workers is not None and args.grain_workers < 0:
    parser.error('--grain-workers: must be >= 0')

  import jax  # pylint: disable=import-outside-toplevel
  import cc12m  # pylint: disable=import-outside-toplevel
  from tads_jax.stages import evaluate  # pylint: disable=import-outside-toplevel
  started = time.perf_counter()
  configs = {name: __import__(module).get_config('/stand-in')
             for name, (module, *_rest) in TARGETS.items()}
  small = configs['DataComp small']
  print(f'cpu: {machine.cpu_model()}; jax {jax.__version__}; load '
        f'{"/".join(f"{v:.1f}" for v in os.getloadavg())}', flush=True)

  forward = clip_forward_flops(small.evaluate.pixels.model)
  flops = {
      'image': forward['image'], 'text': forward['text'],
      'pixel_step': train_step_flops(evaluate.train_config(small, 0, proxy='pixels'), None),
      'embedding_step': train_step_flops(evaluate.train_config(small, 0), 512),
      'meta_step': meta_step_flops(small),
      'relevance': relevance_flops(small),
  }
  flops['operators'], flops['operator_bytes'] = operator_cost(small)
  print('FLOPs from XLA cost analysis: ViT-B/32 image forward %.2f G, text forward (77 '
        'tokens) %.2f G; pixel proxy train step %.1f G/sample; embedding proxy step %.1f '
        'M/sample; TADS meta step %.1f G; relevance %.2f M/row/side; image operators %.2f '
        'M and %.2f MB/row' % (flops['image'] / 1e9, flops['text'] / 1e9,
                               flops['pixel_step'] / 1e9, flops['embedding_step'] / 1e6,
                               flops['meta_step'] / 1e9, flops['relevance'] / 1e6,
                               flops['operators'] / 1e6, flops['operator_bytes'] / 1e6),
        flush=True)
  if not args.skip_cpu_timing:
    cpu = cpu_throughput(small)
    print('this CPU (float32, batch %d): ViT-B/32 image %.1f img/s (%.0f GFLOP/s), text '
          '%.1f/s (%.0f GFLOP/s), pixel proxy train step %.2f samples/s (%.0f GFLOP/s); '
          'best 1024^3 GEMM %.0f GFLOP/s, so the train step ran at %.0f%% of it'
          % (cpu['batch'], 1 / cpu['image'], flops['image'] / cpu['image'] / 1e9,
             1 / cpu['text'], flops['text'] / cpu['text'] / 1e9, 1 / cpu['train'],
             flops['pixel_step'] / cpu['train'] / 1e9, cpu['gemm'] / 1e9,
             100 * flops['pixel_step'] / cpu['train'] / cpu['gemm']), flush=True)
  host = measure_host(small)
  print('host, per vCPU: ' + '; '.join(
      f'{kind} JPEG {IMAGE_SHAPES[kind][1]}x{IMAGE_SHAPES[kind][0]} '
      f'({host.jpeg_bytes[kind] / 1e3:.0f} KB; real {REAL_JPEG_KB[kind]:.0f} KB): '
      f'ingest {host.ingest[kind] * 1e3:.2f} ms, '
      f'decode+resize {small.pool.image_size} px {host.decode_resize[kind] * 1e3:.2f} ms, '
      f'decode+CLIP preprocess {host.load_224[kind] * 1e3:.2f} ms, flipped copy '
      f'{host.flip[kind] * 1e3:.2f} ms + CLIP preprocess {host.preprocess_224[kind] * 1e3:.2f} ms'
      for kind in IMAGE_SHAPES) + (
      f'; text operators {host.text_ops * 1e6:.0f} us/caption; float16 embeddings read '
      f'{host.embedding_read * 1e6:.2f} us/row; standardize {host.standardize * 1e6:.2f} '
      f'us/row; top-k + scores.parquet {host.select * 1e6:.2f} us/row; meta batch '
      f'{host.meta_gather * 1e3:.1f} ms; embedding-proxy batch '
      f'{host.embedding_gather * 1e3:.1f} ms; pixel-proxy batch '
      f'{host.pixel_gather * 1e3:.0f} ms'), flush=True)

  hosts = {'H100': args.h100_host_vcpus, 'v5e-8': args.v5e_host_vcpus}
  print()
  print('| target | stage | work | H100: host / device | **one H100** | v5e-8: host / '
        'device | **TPU v5e-8** |')
  print('|---|---|---|---|---|---|---|')
  for name, (module, pool, kind, ships) in TARGETS.items():
    config = configs[name]
    pool = pool or cc12m.DOWNLOADED
    totals = collections.Counter()
    for stage, (what, part) in stage_parts(config, pool, kind, ships, flops, host, args).items():
      cells = []
      for acc, spec in ACCELERATORS.items():
        h, dev = seconds(part, spec, hosts[acc], args.mfu)
        estimate = max(h, dev)
        if 'pixel' not in stage:
          totals[acc] += estimate
        cells += [f'{human(h)} / {human(dev)}', f'**{human(estimate)}**']
        if part.per_run:
          cells[-1] += f' ({human(part.per_run / (spec["peak"] * args.mfu))} device per run)'
      print(f'| {name} | {stage} | {what} | ' + ' | '.join(cells) + ' |')
    print(f'| {name} | **all but the pixel proxy** | configs/{module}.py | | '
          f'**{human(totals["H100"])}** | | **{human(totals["v5e-8"])}** |')
  px = small.evaluate.pixels
  step_bytes = px.batch_size * px.image_size ** 2 * 3
  step_seconds = {acc: px.batch_size * flops['pixel_step'] / (spec['peak'] * args.mfu)
                  for acc, spec in ACCELERATORS.items()}
  rates = ', '.join(f'{acc} {step_bytes / s / 1e9:.1f} GB/s' for acc, s in step_seconds.items())
  print(f'\nThe pixel proxy reads {step_bytes / 1e6:.0f} MB of cached uint8 images per step '
        f'(memory-mapped .npy); the gather above was timed from RAM. To keep the device busy '
        f'the cache must give {rates} of random reads.')
  print(f'assumed: MFU {args.mfu} of bf16 peak (H100 SXM 989 TFLOP/s, v5e 197 TFLOP/s per '
        f'chip) and of HBM bandwidth; hosts {args.h100_host_vcpus} vCPUs (H100) and '
        f'{args.v5e_host_vcpus} (v5e-8); {args.processes} process(es); grain workers '
        f'{args.grain_workers if args.grain_workers is not None else "as configured"}.')
  print(f'tool time {time.perf_counter() - started:.0f} s')
  print(f'\n`{_command()}`')


if __name__ == '__main__':
  main()
