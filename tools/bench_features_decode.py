"""Times the features stage's per-shard pass (decode, resize, the quality operators) with
each image reader, on a workdir whose ingest, encoder and embed stages are done.

  python tools/bench_features_decode.py REPO WORKDIR MODE ROUNDS KEEP

REPO: the checkout whose tads_jax runs (this one, or `git worktree add /tmp/gbase dd56a98`
for the reader before Grain); MODE: 'old' (that checkout's reader, no config.data) or a
Grain worker count (config.data.grain_workers). Round 0 warms up (compiles); the best of
the ROUNDS after it is printed with the load average. The last round's features/shards is
copied to KEEP, so that the readers' outputs can be compared with cmp. Run one process per
mode and alternate the modes (issue 17 item 2, BENCHMARKS.md "Input pipeline on Grain").
"""

import os
import shutil
import sys
import time


def main():
  repo, workdir, mode, rounds, keep = sys.argv[1:6]
  sys.path.insert(0, repo)
  from configs import default  # pylint: disable=g-import-not-at-top
  from tads_jax import pipeline  # pylint: disable=g-import-not-at-top
  from tads_jax.stages import features  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import machine  # pylint: disable=g-import-not-at-top
  if not features.__file__.startswith(os.path.abspath(repo)):
    raise SystemExit(f'{features.__file__} is not in {repo}')

  config = default.get_config()
  if mode != 'old':
    config.data.grain_workers = int(mode)
  ctx = pipeline.Context(config=config, workdir=workdir)
  names = features.left_out_operators(config)[0]
  shards = os.path.join(workdir, 'features', 'shards')
  samples = ctx.summary('ingest')['samples']
  times = []
  for _ in range(int(rounds) + 1):
    shutil.rmtree(shards, ignore_errors=True)
    start = time.perf_counter()
    features._shard_pass(ctx, names)  # pylint: disable=protected-access
    times.append(time.perf_counter() - start)
  shutil.rmtree(keep, ignore_errors=True)
  shutil.copytree(shards, keep)
  best = min(times[1:])
  print(f'mode={mode} samples={samples} best_s={best:.2f} samples_per_s={samples / best:.0f} '
        f'rounds_s={[round(t, 2) for t in times]} load={os.getloadavg()[0]:.2f} '
        f'[{machine.cpu_model()}]', flush=True)


if __name__ == '__main__':  # Grain's workers are spawned processes: they import this file
  main()
