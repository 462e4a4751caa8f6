r"""TADS's margin over clip_score when each main meta-learning setting moves 3x either way.

Given a finished run of configs/default.py (its eval.json holds TADS and the clip_score
baseline, scored with the same proxy seeds), each variant moves one setting of
config.tads.meta to 3x or 1/3 of its value (tads_sweep.scaled) and reruns learn, select
and evaluate in a copy of the run's workdir, as tools/tads_ablations.py does (ingest,
encoder, embed and features are reused). It prints one Markdown table: each variant's
average over the tasks (mean and std over seeds), its margin over clip_score, and that
margin in units of the larger of the two stds.

  python tools/tads_robustness.py --workdir workdir/default --out /tmp/robustness

These figures are on the eval splits: they report how much the result depends on each
setting, they choose nothing (tools/tads_sweep.py chooses, on a validation split).
"""

import argparse
import json
import math
import os
import sys

from absl import logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tads_ablations  # noqa: E402  pylint: disable=wrong-import-position
import tads_sweep  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import main  # noqa: E402  pylint: disable=wrong-import-position

# The meta-learning settings a user would reach for first.
FIELDS = ('steps', 'value_lr', 'tau', 'inner_lr', 'unroll', 'batch_size')
REFERENCE = 'clip_score'


def margin_row(name: str, overrides: dict, result: dict, reference: dict) -> dict:
  """One table row: the variant's average (mean, std over seeds) and its margin over the
  reference's mean, also as a multiple of the larger std."""
  mean, std = result['average']['mean'], result['average']['std']
  ref_mean, ref_std = reference['average']['mean'], reference['average']['std']
  margin = mean - ref_mean
  spread = max(std, ref_std)
  return {'variant': name, 'overrides': json.dumps(overrides) if overrides else '',
          'average': mean, 'std': std, f'margin over {REFERENCE}': margin,
          'margin / larger std': (margin / spread if spread > 0 else
                                  math.copysign(math.inf, margin) if margin else 0.0)}


def robustness(base_workdir: str, out: str, fields=FIELDS, seeds: int = 3,
               config=None) -> list:
  """The rows of the table (see the module docstring): the base run's TADS first, then
  every variant of tads_sweep.scaled(config, fields) in order. config: the one the base
  run finished with (default: configs/default.py)."""
  with open(os.path.join(base_workdir, 'eval.json')) as f:
    base = json.load(f)
  reference = base.get('baselines', {}).get(REFERENCE)
  if reference is None:
    raise ValueError(f'{base_workdir}/eval.json: no {REFERENCE!r} baseline to compare with; '
                     f'run with {REFERENCE} in config.evaluate.baselines')
  if len(reference['average']['per_seed']) != seeds:
    raise ValueError(f'{base_workdir}/eval.json: {REFERENCE} was scored with '
                     f"{len(reference['average']['per_seed'])} seeds, not {seeds}")
  base_config = config or tads_ablations.default.get_config()
  rows = [margin_row(f"{base.get('selector', 'tads')} (base run)", {}, base, reference)]
  for name, overrides in tads_sweep.scaled(base_config, fields).items():
    workdir = os.path.join(out, name)
    tads_ablations.copy_workdir(base_workdir, workdir)
    main.run(tads_ablations.variant_config(overrides, seeds, base=base_config), workdir)
    with open(os.path.join(workdir, 'eval.json')) as f:
      rows.append(margin_row(name, overrides, json.load(f), reference))
    logging.warning('robustness: %s: %.4f, margin %+.4f', name, rows[-1]['average'],
                    rows[-1][f'margin over {REFERENCE}'])
  return rows


def main_(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='a finished run of configs/default.py')
  parser.add_argument('--out', required=True, help='where the variant workdirs go')
  parser.add_argument('--fields', default=','.join(FIELDS),
                      help='config.tads.meta fields to move 3x either way')
  parser.add_argument('--seeds', type=int, default=3)
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  try:
    rows = robustness(args.workdir, args.out, tuple(args.fields.split(',')), args.seeds)
  except (ValueError, KeyError) as e:
    sys.exit(f'error: {e}')
  print('\n'.join(tads_ablations.markdown_table(rows)))
  print(f'\ncommand: python tools/tads_robustness.py --workdir {args.workdir} --out {args.out}'
        f' --fields {args.fields} --seeds {args.seeds}')


if __name__ == '__main__':
  main_()
