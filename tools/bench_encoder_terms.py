"""What the encoder stage's extra loss terms cost per step; prints Markdown rows for
BENCHMARKS.md.

Times the default config's reference-encoder step (configs/default.py's encoder block:
the CNN tower at 64 px, batch 128, 24 tokens) with each of TrainConfig.word_loss and
view_loss off and on, in one invocation, as ratios to the plain CLIP step: the host's
share of a step (gather, flip-and-shift augmentation, the second views) and the jitted
AdamW step, waited for. Median over timed steps after warmup steps (the first compiles).
Data are random (131 one-token words stand for the trusted captions' vocabulary):
throughput does not depend on the values.

  python tools/bench_encoder_terms.py
  python tools/bench_encoder_terms.py --steps 10 --warmup 2
  python tools/bench_encoder_terms.py --terms 'CLIP only,+ word loss' --dtypes float32,bfloat16

--dtypes times each variant at each matmul compute dtype (TrainConfig.dtype), ratios to
the first row. XLA's CPU flags (XLA_FLAGS) apply to the whole invocation, so compare them
across invocations only by their rows' ratios to a row both ran.
"""

import argparse
import dataclasses
import os
import shlex
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = (('CLIP only', 0.0, 0.0), ('+ word loss', 1.0, 0.0), ('+ two-view loss', 0.0, 1.0),
            ('+ both', 1.0, 1.0))


def bench(cfg, words, steps, warmup):
  """Median seconds per step of `cfg` (TrainConfig) on random data."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  from tads_jax import train
  from tads_jax.models import preprocess
  c = cfg.clip_config()
  rng = np.random.default_rng(0)
  n = 4 * cfg.batch_size
  images = rng.integers(0, 256, (n, c.image_size, c.image_size, 3), dtype=np.uint8)
  ids = rng.integers(1, c.eos_token_id, (n, c.context_length)).astype(np.int32)
  ids[:, -1] = c.eos_token_id
  word_ids = np.stack([rng.integers(1, c.eos_token_id, words),
                       np.full(words, c.eos_token_id)], 1).astype(np.int32)  # [V, 2]
  targets = rng.random((n, words)).astype(np.float32)
  targets /= targets.sum(1, keepdims=True)
  model = train.make_model(cfg)
  optimizer = train.make_optimizer(cfg)
  params = nn.unbox(train.init_params(model, cfg))
  state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                           opt_state=optimizer.init(params))
  step = jax.jit(train.make_train_step(model, optimizer, 'pixels', False, cfg.word_loss,
                                       cfg.view_loss), donate_argnums=0)
  batches = train.batch_rows(np.arange(n), cfg.batch_size, seed=0)
  weights = np.ones(cfg.batch_size, np.float32)
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    idx = next(batches)
    batch = preprocess.augment(images[idx], np.random.default_rng([0, i, 1]),
                               cfg.augment_flip, cfg.augment_shift)
    aux = {}
    if cfg.view_loss:
      aux['views'] = preprocess.second_view(batch, np.random.default_rng([0, i, 2]),
                                            cfg.view_shift, cfg.view_brightness)
    if cfg.word_loss:
      aux.update(word_ids=word_ids, word_targets=targets[idx])
    state, metrics = step(state, batch, ids[idx], weights, None, aux)
    jax.block_until_ready(metrics['loss'])
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=10, help='timed steps per variant')
  parser.add_argument('--warmup', type=int, default=2, help='untimed steps (compile)')
  parser.add_argument('--words', type=int, default=131, help='word vocabulary size')
  parser.add_argument('--terms', default=','.join(name for name, _, _ in VARIANTS),
                      help='comma-separated variant names, of: ' +
                      ', '.join(name for name, _, _ in VARIANTS))
  parser.add_argument('--dtypes', default='float32', help='comma-separated compute dtypes')
  args = parser.parse_args()
  known = {name: (w, v) for name, w, v in VARIANTS}
  terms = [t.strip() for t in args.terms.split(',')]
  dtypes = [d.strip() for d in args.dtypes.split(',')]
  for name in terms:
    if name not in known:
      parser.error(f'--terms: {name!r} is not one of {list(known)}')
  from configs import default
  from tads_jax.stages import encoder
  base = encoder.train_config(default.get_config(), vocab_size=2000)
  print(f'| terms | dtype | ms/step (median) | x {terms[0]}, {dtypes[0]} |')
  print('|---|---|---|---|')
  reference = None
  for name in terms:
    for dtype in dtypes:
      word_loss, view_loss = known[name]
      cfg = dataclasses.replace(base, word_loss=word_loss, view_loss=view_loss, dtype=dtype)
      seconds = bench(cfg, args.words, args.steps, args.warmup)
      reference = reference or seconds
      print(f'| {name} | {dtype} | {1000 * seconds:.0f} | {seconds / reference:.2f} |',
            flush=True)
  print(f"\n`python {' '.join(shlex.quote(a) for a in sys.argv)}`")


if __name__ == '__main__':
  main()
