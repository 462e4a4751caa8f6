r"""One comparison table of selectors on a finished workdir (issue: one comparison).

Reuses W's ingest, encoder, embed, features (and learn) outputs: sets
config.evaluate.baselines to the given selectors and reruns the evaluate and report
stages, so each selector picks its subset under the run's selection rules (same fraction,
method and dedup; filters keep what they keep), a proxy is trained on each for the same
samples seen over config.evaluate.seeds seeds, and report.md gets the table (mean +- std,
per task, entries, kept share of every noise type where ground truth exists) and its plot.
With --ground_truth, the world's clean on-task samples (the best subset a selector could
pick, when it fits the budget) are evaluated on the same footing and get the table's last
row, so each table shows the headroom above its leader.

  python tools/compare_selectors.py --config configs/default.py --workdir workdir/default \
      --selectors full,random,clip_score,basic_filter,semdedup,normsim --seeds 3 \
      --ground_truth

Prints the Markdown tables that go into BENCHMARKS.md, with the command.
"""

import json
import os
import shlex
import sys

from absl import app
from absl import flags
import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tads_jax import config as config_lib  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import main as main_lib  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import pipeline  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import report as report_lib  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.data import subset as subset_lib  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.stages import report as report_stage  # noqa: E402  pylint: disable=wrong-import-position
from tools import evaluate_subset  # noqa: E402  pylint: disable=wrong-import-position
from tools import ground_truth_subsets  # noqa: E402  pylint: disable=wrong-import-position
from tools import machine  # noqa: E402  pylint: disable=wrong-import-position

GROUND_TRUTH = 'clean_on_task'  # the ground-truth subset the table ends with


def compare(config, workdir: str, names, seeds: int | None = None) -> dict:
  """Runs the comparison in `workdir`; returns report.json's dict."""
  if not os.path.isdir(workdir):
    raise ValueError(f'{workdir}: no such workdir (run the pipeline there first)')
  config = config.copy_and_resolve_references()
  config.unlock()
  config.evaluate.baselines = tuple(names)
  if 'pixel_check' in config.evaluate:  # one proxy per table (pixels: configs/pixels_cnn.py)
    config.evaluate.pixel_check.seeds = 0
  if seeds is not None:
    config.evaluate.seeds = seeds
  stages = pipeline.stage_names(config)
  for needed in ('select', 'evaluate', 'report'):
    if needed not in stages:
      raise ValueError(f'config.stages: the comparison needs the {needed} stage')
  main_lib.run(config, workdir)
  with open(os.path.join(workdir, 'report.json')) as f:
    return json.load(f)


def evaluate_ground_truth(config, workdir: str, seeds: int | None = None) -> dict:
  """eval.json's dict for the world's clean on-task samples, each once, written to
  <workdir>/compare/clean_on_task.npy and evaluated there as tools/evaluate_subset.py does."""
  ctx = pipeline.Context(config=config, workdir=os.path.abspath(workdir))
  path = report_stage.ground_truth_path(ctx)
  if not path or not os.path.exists(path):
    raise ValueError(f'{workdir}: no ground truth for this pool (pool.ground_truth or a '
                     'synthetic world), so no ground-truth row')
  gt = pq.read_table(path, columns=['uid', 'noise', 'on_task']).to_pydict()
  mask = ground_truth_subsets.ground_truth_masks(
      np.asarray(gt['noise'], object), np.asarray(gt['on_task'], bool), 1.0, 0)[GROUND_TRUTH]
  out = os.path.join(workdir, 'compare')
  os.makedirs(out, exist_ok=True)
  subset = os.path.join(out, f'{GROUND_TRUTH}.npy')
  subset_lib.write_subset(subset, list(np.asarray(gt['uid'], object)[mask]))
  return evaluate_subset.evaluate_subset(config, workdir, subset, seeds=seeds)


def markdown(report: dict, ground_truth: dict | None = None) -> str:
  """The comparison and kept-share tables of a report, as Markdown; ground_truth (an
  eval.json dict) adds the ground-truth row under the selectors."""
  ev = report['evaluation']
  rows = report_lib.comparison_rows(ev)
  tasks = list(ev['tasks'])
  lines = ['| subset | entries | unique | average (mean ± std) | ' + ' | '.join(tasks)
           + ' | proxy |', '|' + '---|' * (5 + len(tasks))]
  runs = list(zip((row['subset'] for row in rows),
                  [ev] + list(ev.get('baselines', {}).values())))
  if ground_truth is not None:
    runs.append(('ground truth: clean on-task', ground_truth))
  for name, run in runs:
    cells = [f"{run['tasks'][t]['mean']['main']:.3f} ± {run['tasks'][t]['std']['main']:.3f}"
             for t in tasks]
    lines.append(f"| {name} | {run['subset']['entries']} | {run['subset']['unique']} | "
                 f"{run['average']['mean']:.4f} ± {run['average']['std']:.4f} | "
                 + ' | '.join(cells) + f" | {report_lib.proxy_label(run)} |")
  kept = report_lib.comparison_kept_rows(report)
  if kept:
    columns = list(dict.fromkeys(c for r in kept for c in r))
    lines += ['', '| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    for r in kept:
      lines.append('| ' + ' | '.join(
          r[c] if c == 'subset' else f"{r.get(c, float('nan')):.3f}" for c in columns) + ' |')
  return '\n'.join(lines)


def _define_flags():
  """--config and --workdir are tads_jax.main's (the config the workdir ran with)."""
  flags.DEFINE_list('selectors', None, "Selectors to compare ('full' = the whole pool).")
  flags.DEFINE_integer('seeds', None, 'Proxy seeds (default config.evaluate.seeds).')
  flags.DEFINE_bool('ground_truth', False, "Also evaluate the world's clean on-task "
                    'samples (needs ground truth) as the last row.')
  flags.mark_flags_as_required(['selectors'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  try:
    report = compare(f.config, f.workdir, f.selectors, f.seeds)
    best = evaluate_ground_truth(f.config, f.workdir, f.seeds) if f.ground_truth else None
  except (ValueError, config_lib.ConfigError) as e:
    sys.exit(f'error: {e}')
  print(markdown(report, best))
  print(f'\ncommand: python {" ".join(shlex.quote(a) for a in sys.argv)}')
  print(f'CPU: {machine.cpu_model()}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
