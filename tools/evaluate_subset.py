r"""Evaluates any DataComp subset file on the same footing as the evaluate stage.

Reuses a workdir where ingest, encoder and embed ran with the same config: the proxy
(config.evaluate.proxy) is trained on that workdir's pool embeddings or, for 'pixels', on
its pool images (decoded once into the workdir's evaluate_cache/) and captions, the
subset's uids picking the rows, repeats included, and scored on the tasks exactly as the
evaluate stage does.

  python tools/evaluate_subset.py --config configs/clip_score.py \
      --workdir /tmp/tads-clip --subset my_subset.npy --seeds 3

Writes eval.json to --out (default <subset>.eval.json; checkpoints beside it in
<out>.checkpoints/seed_<s>, so a killed run resumes) and prints a Markdown row.
"""

import os
import shlex
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tads_jax import pipeline  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import sharding  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.stages import evaluate as evaluate_stage  # noqa: E402  pylint: disable=wrong-import-position

def evaluate_subset(config, workdir: str, subset: str, out: str | None = None,
                    seeds: int | None = None) -> dict:
  """Trains and evaluates the proxy on `subset`; writes and returns eval.json's dict."""
  if not os.path.isdir(workdir):
    raise ValueError(f'{workdir}: no such workdir')
  ctx = pipeline.Context(config=config, workdir=os.path.abspath(workdir))
  evaluate_stage.check_embedded(ctx)
  out = out or subset + '.eval.json'
  result = evaluate_stage.evaluate_subset(ctx, subset, out + '.checkpoints', seeds=seeds,
                                          mesh=sharding.from_config(config).mesh)
  pipeline.write_json_atomic(out, result)
  return result


def markdown_row(result: dict, name: str) -> str:
  """| subset | entries | unique | seeds | samples seen | average | task means... | proxy |"""
  def cell(mean, std):
    return f'{mean:.3f} ± {std:.3f}'
  tasks = [cell(t['mean']['main'], t['std']['main']) for t in result['tasks'].values()]
  return '| ' + ' | '.join([name, str(result['subset']['entries']),
                            str(result['subset']['unique']), str(len(result['seeds'])),
                            str(result['train']['samples_seen']),
                            cell(result['average']['mean'], result['average']['std']),
                            *tasks, result.get('proxy', 'embedding')]) + ' |'


def markdown_header(result: dict) -> str:
  columns = ['subset', 'entries', 'unique', 'seeds', 'samples seen', 'average',
             *result['tasks'], 'proxy']
  return '| ' + ' | '.join(columns) + ' |\n|' + '---|' * len(columns)


def _define_flags():
  """Flags only when run as a script: importing the module (tests) defines none."""
  config_flags.DEFINE_config_file('config', None, 'Path to the config file the workdir '
                                  'ran with.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Workdir where ingest, encoder and embed ran.')
  flags.DEFINE_string('subset', None, 'DataComp subset file (.npy, dtype u8,u8).')
  flags.DEFINE_integer('seeds', None, 'Proxy seeds (default config.evaluate.seeds).')
  flags.DEFINE_string('out', None, 'eval.json path (default <subset>.eval.json).')
  flags.mark_flags_as_required(['config', 'workdir', 'subset'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  f = flags.FLAGS
  out = f.out or f.subset + '.eval.json'
  try:
    result = evaluate_subset(f.config, f.workdir, f.subset, out, f.seeds)
  except ValueError as e:
    sys.exit(f'error: {e}')
  print(markdown_header(result))
  print(markdown_row(result, os.path.basename(f.subset)))
  print(f'\neval.json: {out}')
  print(f'command: python {" ".join(shlex.quote(a) for a in sys.argv)}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
