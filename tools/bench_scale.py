r"""Wall time and peak memory per stage as the pool grows (issue 17 item 4).

Generates a DataComp-format embedding pool of N rows (metadata parquet + npz of 512-d
float16 b32 embeddings, 10,000 rows per file, no tars) and runs the pipeline on it:
ingest -> encoder -> embed -> features, then select with clip_score, normsim and semdedup
and learn + select with tads (meta-learning on, the default's settings). Every stage runs
in its own process (`python -m tads_jax.main`, the earlier stages skipped as done), so its
peak RSS is that process's own (VmHWM), imports and XLA included; its time is the
stage's own `seconds` from _done.json.

The pool: image embeddings around 2,000 random centres (so k-means and SemDeDup see
clusters), 2% of rows near copies of another row, captions' embeddings the image's plus
noise, captions of 4-12 random words. The tasks (for relevance, normsim's targets and
TADS's feedback) are a tiny synthetic world's, embedded by a random tiny CLIP with 512-d
projections saved as a Hugging Face folder: the tasks' cost does not grow with N.

  python tools/bench_scale.py --rows 500000,1000000,2000000 --out /tmp/bench_scale

The same file is the run's config: `--config tools/bench_scale.py:<out>/<rows>`.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'configs'))
sys.path.insert(0, os.path.join(REPO, 'tools'))

DIM = 512
SHARD_ROWS = 10_000
CENTRES = 2_000
SELECTORS = ('clip_score', 'normsim', 'semdedup', 'tads')
WORDS = ('photo red blue green dog cat car tree house river street city night sky flower '
         'person woman man child food table chair book phone sign logo map shirt shoe bird '
         'boat plane train beach mountain snow field road window door wall art drawing '
         'poster sale free new best design vintage').split()


def get_config(spec: str):
  """The run on the pool under `spec` (<out>/<rows>, as `generate` wrote it)."""
  import default  # pylint: disable=import-outside-toplevel
  root = spec
  c = default.get_config()
  c.pool.format = 'datacomp'
  c.pool.metadata = os.path.join(root, 'pool', '*.parquet')
  c.encoder.checkpoint = os.path.join(os.path.dirname(root), 'clip')
  with open(os.path.join(os.path.dirname(root), 'tasks', 'tasks_path.txt')) as f:
    tasks = f.read().strip()
  del c['tasks']
  c.tasks = tasks
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'select')
  return c


def _pool_shard(rng, centres, start: int, rows: int) -> tuple[dict, dict]:
  """One metadata file's columns and npz arrays."""
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  centre = rng.integers(0, len(centres), rows)
  image = unit(centres[centre] + 0.6 * rng.standard_normal((rows, DIM), np.float32) /
               np.sqrt(DIM))
  copies = np.flatnonzero(rng.random(rows) < 0.02)
  if len(copies):  # near duplicates of another row of the same file
    image[copies] = unit(image[rng.integers(0, rows, len(copies))] +
                         0.01 * rng.standard_normal((len(copies), DIM), np.float32))
  text = unit(image + 1.2 * rng.standard_normal((rows, DIM), np.float32) / np.sqrt(DIM))
  uids = [f'{start + i:032x}' for i in range(rows)]
  lengths = rng.integers(4, 13, rows)
  words = rng.integers(0, len(WORDS), (rows, 12))
  captions = [' '.join(WORDS[w] for w in words[i, :lengths[i]]) for i in range(rows)]
  table = {'uid': uids, 'url': [f'http://example.com/{u}.jpg' for u in uids],
           'text': captions,
           'original_width': rng.integers(64, 1024, rows).tolist(),
           'original_height': rng.integers(64, 1024, rows).tolist(),
           'clip_b32_similarity_score': np.sum(image * text, 1).tolist(),
           'clip_l14_similarity_score': np.zeros(rows).tolist(),
           'sha256': [''] * rows}
  return table, {'b32_img': image.astype(np.float16), 'b32_txt': text.astype(np.float16)}


def generate_pool(root: str, rows: int, seed: int = 0) -> None:
  """The pool of `rows` rows under root/pool (skipped when complete)."""
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  folder = os.path.join(root, 'pool')
  marker = os.path.join(folder, 'complete')
  if os.path.exists(marker):
    return
  os.makedirs(folder, exist_ok=True)
  centres = np.random.default_rng(seed).standard_normal((CENTRES, DIM), np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  for shard, start in enumerate(range(0, rows, SHARD_ROWS)):
    rng = np.random.default_rng([seed, shard])
    table, arrays = _pool_shard(rng, centres, start, min(SHARD_ROWS, rows - start))
    name = os.path.join(folder, f'{shard:08d}')
    pq.write_table(pa.table(table), name + '.parquet')
    np.savez(name + '.npz', **arrays)
  open(marker, 'w').close()


def generate_tasks_and_encoder(out: str) -> None:
  """A tiny synthetic world's tasks and a random tiny CLIP with 512-d projections."""
  import jax  # pylint: disable=import-outside-toplevel
  from tads_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  from tads_jax.models import bpe, clip, hf_export  # pylint: disable=import-outside-toplevel
  path_file = os.path.join(out, 'tasks', 'tasks_path.txt')
  if not os.path.exists(path_file):
    cfg = synthetic.WorldConfig(num_samples=8, shard_size=8, trusted_size=0,
                                train_per_class=8, eval_per_class=2, retrieval_train=64,
                                retrieval_eval=8)
    world = synthetic.generate_world(os.path.join(out, 'tasks'), cfg)
    with open(path_file, 'w') as f:
      f.write(world['paths']['tasks_json'])
  folder = os.path.join(out, 'clip')
  if not os.path.exists(os.path.join(folder, 'config.json')):
    vocab = bpe.train_bpe(WORDS * 4, 600, folder + '.tokenizer', model_max_length=16)
    config = clip.get_config('tiny', vocab_size=len(vocab), eos_token_id=len(vocab) - 1,
                             embed_dim=DIM)
    params = clip.init_params(clip.CLIP(config), jax.random.PRNGKey(0))
    hf_export.save_hf_checkpoint(folder, config, params, tokenizer_dir=folder + '.tokenizer')


def run_stage(root: str, stages: str, selector: str) -> dict:
  """One process running `stages` (the earlier ones skip as done); its peak RSS and the
  last stage's seconds."""
  cmd = [sys.executable, __file__, '--child', root, stages, selector]
  start = time.perf_counter()
  with open(os.path.join(root, 'log.txt'), 'a') as log:
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True,
                          check=False)
  wall = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f'{" ".join(cmd)} failed; see {root}/log.txt')
  last = stages.split(',')[-1]
  with open(os.path.join(root, 'work', last, '_done.json')) as f:
    seconds = json.load(f)['seconds']
  peak = json.loads(proc.stdout.strip().splitlines()[-1])['peak_rss_mb']
  return {'stage': last, 'seconds': seconds, 'process_seconds': round(wall, 1),
          'peak_rss_mb': peak}


def child(root: str, stages: str, selector: str) -> None:
  """Runs the stages in this process, then prints its peak RSS: the kernel's high-water
  mark of this process's own memory (VmHWM), which, unlike the ru_maxrss that wait4
  reports, does not start from the parent's size at fork."""
  from absl import logging  # pylint: disable=import-outside-toplevel
  from tads_jax import main as main_lib  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  config = get_config(root)
  config.stages = tuple(stages.split(','))
  config.selector.name = selector
  main_lib.run(config, os.path.join(root, 'work'))
  with open('/proc/self/status') as f:
    hwm = next(line for line in f if line.startswith('VmHWM:'))
  print(json.dumps({'peak_rss_mb': round(int(hwm.split()[1]) / 1024, 1)}))


def bench(out: str, rows: int, selectors=SELECTORS) -> list:
  root = os.path.join(out, str(rows))
  t = time.perf_counter()
  generate_pool(root, rows)
  print(f'pool of {rows} rows ready ({time.perf_counter() - t:.0f} s)', flush=True)
  results = []
  base = 'ingest,encoder,embed,features'
  plan = [('ingest', 'clip_score'), ('ingest,encoder', 'clip_score'),
          ('ingest,encoder,embed', 'clip_score'), (base, 'clip_score')]
  plan += [(f'{base},select', s) for s in selectors if s != 'tads']
  if 'tads' in selectors:
    plan += [(f'{base},learn', 'tads'), (f'{base},learn,select', 'tads')]
  for stages, selector in plan:
    r = dict(run_stage(root, stages, selector), rows=rows, selector=selector)
    results.append(r)
    print(json.dumps(r), flush=True)
  return results


def main():
  if len(sys.argv) == 5 and sys.argv[1] == '--child':
    child(*sys.argv[2:])
    return
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rows', default='500000,1000000,2000000')
  parser.add_argument('--out', default='/tmp/bench_scale')
  parser.add_argument('--selectors', default=','.join(SELECTORS),
                      help="after features; 'none': measure ingest to features only")
  args = parser.parse_args()
  selectors = tuple(s for s in args.selectors.split(',') if s and s != 'none')
  import machine  # pylint: disable=import-outside-toplevel
  os.makedirs(args.out, exist_ok=True)
  generate_tasks_and_encoder(args.out)
  results = []
  for rows in [int(r) for r in args.rows.split(',')]:
    results += bench(args.out, rows, selectors)
  sizes = sorted({r['rows'] for r in results})
  print(f'\n{machine.cpu_model()}; load {os.getloadavg()[0]:.2f}')
  print('| stage | selector | ' + ' | '.join(f'{n:,} rows: s / peak RSS MB' for n in sizes)
        + ' | RSS largest / smallest | s per row largest / smallest |')
  print('|---|---|' + '---|' * len(sizes) + '---|---|')
  keys = list(dict.fromkeys((r['stage'], r['selector']) for r in results))
  for stage, selector in keys:
    row = {r['rows']: r for r in results if (r['stage'], r['selector']) == (stage, selector)}
    cells = ' | '.join(f'{row[n]["seconds"]:.1f} / {row[n]["peak_rss_mb"]:.0f}' for n in sizes)
    small, large = row[sizes[0]], row[sizes[-1]]
    per_row = ((large['seconds'] / sizes[-1]) / max(small['seconds'] / sizes[0], 1e-12))
    print(f'| {stage} | {selector if stage in ("learn", "select") else "-"} | {cells} | '
          f'{large["peak_rss_mb"] / small["peak_rss_mb"]:.2f}x | {per_row:.2f}x |')
  print(f'\ncommand: `python tools/bench_scale.py --rows {args.rows} --out {args.out} '
        f'--selectors {args.selectors}`')


if __name__ == '__main__':
  main()
