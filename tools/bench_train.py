"""Proxy training throughput (samples/s); prints Markdown rows for BENCHMARKS.md.

Each row times the train loop's real work per step: gather a batch from a host pool,
put it on the device(s), run the jitted AdamW step of tads_jax.train (the weighted CLIP
loss, forward and backward), wait for it. Median over timed steps after warmup steps (the
first compiles). Data are random: throughput does not depend on the values.

  embedding: heads on frozen reference embeddings (default 512-d, the MLP head with a
             residual, hidden 1024) - what meta-learning and large pools use.
  pixels:    the Flax CLIP 'small' preset (64 px, patch 8, 6+6 layers, 77 tokens) from
             scratch on uint8 images and token ids.

  python tools/bench_train.py                                  # both kinds, default sizes
  python tools/bench_train.py --kind pixels --steps 5 --warmup 1  # quicker on 2 cores
  python tools/bench_train.py --kind embedding --batch-sizes 256,512,1024
  python tools/bench_train.py --kind pixels --batch-sizes 64,128 --dtype bfloat16
"""

import argparse
import os
import shlex
import statistics
import sys
import time

import numpy as np


def _command() -> str:
  return 'python ' + ' '.join(shlex.quote(a) for a in sys.argv)


def _load() -> str:
  return '/'.join(f'{v:.1f}' for v in os.getloadavg())


def _gemm_gflops(repeats=5) -> float:
  """This moment's float32 GEMM rate of jax (the machine is shared: rows measured under
  load are slower, and this column says by how much)."""
  import jax
  a = np.random.default_rng(0).standard_normal((2048, 512), dtype=np.float32)
  b = np.random.default_rng(1).standard_normal((512, 2048), dtype=np.float32)
  dot = jax.jit(lambda a, b: a @ b)
  dot(a, b).block_until_ready()
  best = min(_timed(lambda: dot(a, b).block_until_ready()) for _ in range(repeats))
  return 2 * 2048 * 512 * 2048 / best / 1e9


def _timed(fn) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def _pool(cfg, n, dim, rng):
  """Host data the loop gathers batches from, in the stored dtypes train() accepts."""
  if cfg.kind == 'embedding':
    x = rng.standard_normal((2, n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x[0], x[1]
  c = cfg.clip_config()
  images = rng.integers(0, 256, (n, c.image_size, c.image_size, 3), dtype=np.uint8)
  ids = rng.integers(1, c.eos_token_id, (n, c.context_length)).astype(np.int32)
  ids[np.arange(n), rng.integers(4, c.context_length, n)] = c.eos_token_id  # caption end
  return images, ids


def bench(kind, batch_size, args):
  import jax
  import jax.numpy as jnp
  import flax.linen as nn
  from tads_jax import train

  if kind == 'embedding':
    cfg = train.TrainConfig(kind='embedding', head=args.head, head_hidden=args.hidden,
                            batch_size=batch_size, samples_seen=batch_size * 1000,
                            dtype=args.dtype)
    width = args.dim
  else:
    cfg = train.TrainConfig(kind='pixels', model=args.model, batch_size=batch_size,
                            samples_seen=batch_size * 1000, dtype=args.dtype)
    width = None
  rng = np.random.default_rng(0)
  images, texts = _pool(cfg, max(args.pool, batch_size), args.dim, rng)
  model = train.make_model(cfg, width)
  optimizer = train.make_optimizer(cfg)
  params = nn.unbox(train.init_params(model, cfg, width))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init(params))
  step = jax.jit(train.make_train_step(model, optimizer, kind), donate_argnums=0)
  weights = np.ones(batch_size, np.float32)
  batches = train.batch_rows(np.arange(len(images)), batch_size, seed=0)

  times = []
  for i in range(args.warmup + args.steps):
    t = time.perf_counter()
    idx = next(batches)
    state, metrics = step(state, jax.device_put(images[idx]), jax.device_put(texts[idx]),
                          jax.device_put(weights))
    jax.block_until_ready(metrics['loss'])
    if i >= args.warmup:
      times.append(time.perf_counter() - t)
  seconds = statistics.median(times)
  if kind == 'embedding':
    model_name = f'{args.head} head, {args.dim}-d' + (
        f', hidden {args.hidden}' if args.head == 'mlp' else '')
  else:
    c = cfg.clip_config()
    model_name = f'{args.model} CLIP, {c.image_size} px, {c.context_length} tokens'
  return (f'| {kind} | {model_name} | {n_params / 1e6:.2f}M | {batch_size} | {args.dtype} '
          f'| {batch_size / seconds:,.1f} | {1000 * seconds:.1f} | {jax.device_count()} '
          f'{jax.devices()[0].platform} | {_gemm_gflops():.0f} | {_load()} |')


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--kind', choices=('embedding', 'pixels', 'both'), default='both')
  parser.add_argument('--batch-sizes', default=None,
                      help='comma-separated; default 256,512 (embedding), 64,128 (pixels)')
  parser.add_argument('--dim', type=int, default=512, help='reference embedding width')
  parser.add_argument('--head', choices=('mlp', 'linear'), default='mlp')
  parser.add_argument('--hidden', type=int, default=1024, help='MLP head hidden width')
  parser.add_argument('--model', default='small', help='CLIP preset for pixels')
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--steps', type=int, default=20, help='timed steps')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps (compile)')
  parser.add_argument('--pool', type=int, default=4096, help='host rows to draw from')
  args = parser.parse_args()

  kinds = ('embedding', 'pixels') if args.kind == 'both' else (args.kind,)
  print('| proxy | model | params | batch | dtype | samples/s | ms/step (median) | devices '
        '| f32 GEMM GFLOP/s then | load 1/5/15 |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for kind in kinds:
    sizes = args.batch_sizes or ('256,512' if kind == 'embedding' else '64,128')
    for batch_size in (int(b) for b in sizes.split(',')):
      print(bench(kind, batch_size, args), flush=True)
  print(f'\n`{_command()}`')


if __name__ == '__main__':
  main()
