r"""Meta-learning cost of FLYT and M-FLYT beside TADS's: ms per meta step and the compiled
memory of one meta step (XLA's memory analysis), with the ratios to TADS, in one
invocation.

  python tools/bench_flyt.py

Setup (tools/bench_meta.py's): pool batch 256, D = 128 reference embeddings, 4 tasks (2
classification with 100 classes x 8 templates, 2 retrieval with 1,000 images x 5
captions), task batch 256, the residual MLP proxy, random data (cost does not depend on
the values). TADS: the default config's K = 4 Adam steps under remat, a value function
over 20 features (hidden 32), the 8-template classifier. FLYT: one AdamW step, FLYT's GLU
head over the concatenated embeddings (hidden 2D = 256), one random template per class.
M-FLYT: one AdamW step, a linear layer over 3 scores.
"""

import argparse
import dataclasses
import os
import shlex
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tads_jax import meta  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import value  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.selectors import flyt  # noqa: E402  pylint: disable=wrong-import-position
from tools import bench_meta  # noqa: E402  pylint: disable=wrong-import-position
from tools import machine  # noqa: E402  pylint: disable=wrong-import-position

D = bench_meta.D


def methods():
  """name -> (MetaConfig, scorer, its initial params)."""
  tads_module = value.make_value_function(value.input_columns(bench_meta.FEATURES),
                                          hidden=(32,))
  common = dict(batch_size=256, task_batch_size=256, head='mlp')
  flyt_meta = dict(common, unroll=1, inner_weight_decay=0.2, templates='random',
                   outer_logit_scale=2.65926, task_weight_rate=0.0, value_grad_clip=0.0,
                   value_weight_decay=0.2)
  glu = flyt.FlytScorer()
  return {
      'tads': (meta.MetaConfig(unroll=4, **common), meta.as_scorer(tads_module),
               value.init_params(tads_module)),
      'flyt': (meta.MetaConfig(**flyt_meta), flyt.flyt_scorer(glu),
               flyt._init(glu, 0, (D,), (D,))),  # pylint: disable=protected-access
      'mflyt': (meta.MetaConfig(**flyt_meta), flyt.mflyt_scorer(3),
                flyt._init(flyt.MixingScorer(), 0, (3,))),  # pylint: disable=protected-access
  }


def pool_for(name, pool):
  if name == 'tads':
    return pool
  if name == 'mflyt':
    return dict(pool, z=pool['z'][:, :3])
  return {k: v for k, v in pool.items() if k != 'z'}


def ms_per_step(cfg, scorer, params, pool, tasks, steps: int) -> float:
  stamps = []
  cfg = dataclasses.replace(cfg, steps=steps, log_every=steps // 4)
  meta.learn(cfg, (scorer, params), pool, tasks, log=lambda s: stamps.append(time.perf_counter()))
  # The first log comes after compilation and steps//4 steps; time the rest.
  return (stamps[-1] - stamps[0]) / (steps - steps // 4) * 1000


def compiled_memory(cfg, scorer, params, pool, tasks) -> tuple[int, int]:
  """(temp bytes, argument bytes) of the compiled meta step."""
  checked = meta.check_tasks(tasks, D)
  proxy = meta.make_proxy(cfg, D)
  optimizer = meta.make_value_optimizer(cfg)
  state = meta.init_state(cfg, params, proxy, D, len(checked), optimizer)
  step = jax.jit(meta.make_meta_step(cfg, scorer, proxy, [t['kind'] for t in checked],
                                     optimizer))
  batch = {key: np.asarray(v[:256], np.float32) for key, v in pool.items()}
  feedback = []
  for t, task in enumerate(checked):
    templates = (meta.random_templates(task['class_text_emb'], 0, t, 1)
                 if task['kind'] == 'classification' and cfg.templates == 'random'
                 else task.get('class_text_emb'))
    feedback.append(meta.task_batch(task, np.arange(256), templates))
  analysis = step.lower(state, batch, feedback).compile().memory_analysis()
  return analysis.temp_size_in_bytes, analysis.argument_size_in_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--steps', type=int, default=80)
  args = parser.parse_args()
  pool, tasks = bench_meta.problem()
  rows = {}
  for name, (cfg, scorer, params) in methods().items():
    data = pool_for(name, pool)
    ms = ms_per_step(cfg, scorer, params, data, tasks, args.steps)
    temp, arguments = compiled_memory(cfg, scorer, params, data, tasks)
    n_params = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
    rows[name] = (cfg.unroll, n_params, ms, temp, arguments)
  load = '/'.join(f'{v:.1f}' for v in os.getloadavg())
  print(f'CPU: {machine.cpu_model()}; load average {load}; jax {jax.__version__}, backend '
        f'{jax.default_backend()}\n')
  print('| selector | K | scorer params | ms per meta step | x TADS | temp MB | x TADS | '
        'arguments MB |')
  print('|---|---|---|---|---|---|---|---|')
  base = rows['tads']
  for name, (k, n_params, ms, temp, arguments) in rows.items():
    print(f'| {name} | {k} | {n_params:,} | {ms:.1f} | {ms / base[2]:.2f} | '
          f'{temp / 1e6:.2f} | {temp / base[3]:.2f} | {arguments / 1e6:.2f} |', flush=True)
  print(f'\ncommand: python {" ".join(shlex.quote(a) for a in sys.argv)}')


if __name__ == '__main__':
  main()
