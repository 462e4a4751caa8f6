r"""Meta-learning cost: ms per meta step, and the compiled temp memory of one meta step at
K = 2 and K = 16 unrolled proxy updates with and without jax.checkpoint (XLA's memory
analysis), in one invocation.

  python tools/bench_meta.py

Setup: pool batch 256, D = 128 reference embeddings, 20 features, 4 tasks (2 classification
with 100 classes x 8 templates, 2 retrieval with 1,000 images x 5 captions), task batch 256,
Adam inner steps; random data (cost does not depend on the values).
"""

import argparse
import time

import jax
import numpy as np

from tads_jax import meta
from tads_jax import value

FEATURES = ('width', 'height', 'aspect_ratio', 'sharpness', 'contrast', 'colourfulness',
            'entropy', 'near_uniform', 'characters', 'words', 'alnum_ratio',
            'special_char_ratio', 'word_repetition', 'char_repetition', 'clip_score',
            'flipped_clip_score', 'caption_specificity', 'relevance_a_image',
            'relevance_a_text', 'cluster_weight')
D = 128


def _unit(x):
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def problem(n=20_000, seed=0):
  rng = np.random.default_rng(seed)
  pool = {'z': rng.normal(size=(n, len(FEATURES))).astype(np.float32),
          'image_emb': _unit(rng.normal(size=(n, D))).astype(np.float16),
          'text_emb': _unit(rng.normal(size=(n, D))).astype(np.float16)}
  tasks = []
  for i in range(4):
    if i % 2 == 0:
      tasks.append({'name': f'cls{i}', 'image_emb': _unit(rng.normal(size=(2000, D))),
                    'labels': rng.integers(0, 100, 2000),
                    'class_text_emb': _unit(rng.normal(size=(100, 8, D)))})
    else:
      tasks.append({'name': f'ret{i}', 'image_emb': _unit(rng.normal(size=(1000, D))),
                    'text_emb': _unit(rng.normal(size=(5000, D))),
                    'text_image': np.repeat(np.arange(1000), 5)})
  return pool, tasks


def ms_per_step(head, remat, steps, pool, tasks, module):
  cfg = meta.MetaConfig(steps=steps, batch_size=256, unroll=4, head=head, remat=remat,
                        task_batch_size=256, log_every=steps // 4)
  stamps = []
  meta.learn(cfg, (module, value.init_params(module)), pool, tasks,
             log=lambda s: stamps.append(time.perf_counter()))
  # The first log comes after compilation and steps//4 steps; time the rest.
  return (stamps[-1] - stamps[0]) / (steps - steps // 4) * 1000


def temp_bytes(head, remat, k, pool, tasks, module):
  cfg = meta.MetaConfig(batch_size=256, unroll=k, head=head, remat=remat, task_batch_size=256)
  checked = meta.check_tasks(tasks, D)
  proxy = meta.make_proxy(cfg, D)
  optimizer = meta.make_value_optimizer(cfg)
  state = meta.init_state(cfg, value.init_params(module), proxy, D, len(checked), optimizer)
  step = jax.jit(meta.make_meta_step(cfg, module, proxy, [t['kind'] for t in checked],
                                     optimizer))
  batch = {key: np.asarray(v[:256], np.float32) for key, v in pool.items()}
  feedback = [meta.task_batch(t, np.arange(256), t.get('class_text_emb')) for t in checked]
  compiled = step.lower(state, batch, feedback).compile()
  carry = sum(x.nbytes for x in jax.tree_util.tree_leaves((state.proxy_params,
                                                            state.inner_state)))
  return compiled.memory_analysis().temp_size_in_bytes, carry


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=80)
  args = parser.parse_args()
  pool, tasks = problem()
  module = value.make_value_function(value.input_columns(FEATURES))
  print('| proxy head | remat | ms per meta step (K=4) | temp MB K=2 | temp MB K=16 | '
        'growth per step MB | carry MB |')
  print('|---|---|---|---|---|---|---|')
  for head in ('linear', 'mlp'):
    for remat in (True, False):
      ms = ms_per_step(head, remat, args.steps, pool, tasks, module)
      t2, carry = temp_bytes(head, remat, 2, pool, tasks, module)
      t16, _ = temp_bytes(head, remat, 16, pool, tasks, module)
      print(f'| {head} | {remat} | {ms:.1f} | {t2 / 1e6:.2f} | {t16 / 1e6:.2f} | '
            f'{(t16 - t2) / 14 / 1e6:.3f} | {carry / 1e6:.3f} |', flush=True)
  print(f'\ncommand: python tools/bench_meta.py --steps {args.steps}')


if __name__ == '__main__':
  main()
