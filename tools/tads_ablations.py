r"""TADS ablations on one finished default run: each variant reruns learn, select and evaluate
in a copy of the run's workdir (ingest, encoder, embed and features are reused, since
their config is unchanged), then prints one Markdown table.

  python tools/tads_ablations.py --workdir workdir/default --out /tmp/ablations

The base run's own subset (the default TADS) and its baselines (full, random, clip_score)
come from its eval.json. Variants (config overrides of configs/default.py):
  tads               the default again (a check that a rerun reproduces the base run)
  prior_only         tads.meta.steps = 0: the weak-supervision prior alone
  no_quality         tads.groups ('relevance', 'diversity')
  no_relevance       tads.groups ('quality', 'diversity')
  no_diversity       tads.groups ('quality', 'relevance'): the default since session 18
  with_diversity     tads.groups ('quality', 'relevance', 'diversity'): the default before
                     session 18
  tau_0.3, tau_0.3_600_steps, linear_proxy, value_lr_*, steps_600, prior_quality_heavy: other
                     meta-learning and prior settings (--variants)
  relevance_zscore, per_task, dedup_exact and their combinations: calibrated relevance,
                     the per-task value form, exact duplicates never selected
  no_dedup, dedup_semantic, dedup_both, dedup_both_eps_*: tads.dedup's other modes (and
                     the SemDeDup flag's eps)
  gate_0.54, gate_0.72 tads.gate.fraction: only the top 54% / 72% by clip_score ranked
  gate_target_0.54, _0.72  the same by the largest target-relevance column (NormSim_inf)
  no_gate            tads.gate.fraction None: every row ranked
  then_clip_score_0.45, _0.54  the relevance gate at 72%, then a second pass in series:
                     the top 45% / 54% of the pool by clip_score among those
  no_then            the gate's second pass left out
  clip_score_then_target_0.45  ncl_normsim's order: clip_score at 54%, then the top 45%
                     of the pool by target relevance among those
  ensemble_3, _5      tads.ensemble: 3 / 5 value functions meta-learned from as many seeds,
                     scored by the mean of their standardized values
  prior_signs, two_sided, two_sided_prior_signs  the prior's signs kept (tads.linear_signs);
                     |z| terms with a negative prior on sharpness, contrast and entropy
                     (tads.two_sided); both

These figures are on the eval splits: they report ablations, they do not choose settings.
tools/tads_sweep.py chooses settings on a validation split (tads.validation_fraction) with
the helpers here, and scores only its choice on the eval splits.
"""

import argparse
import json
import os
import shutil
import sys

from absl import logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import default  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import main  # noqa: E402  pylint: disable=wrong-import-position

# The pixel statistics whose both tails are corruption (a blurred and a noisy image at the
# two ends of sharpness; a blank and a noisy one of contrast and entropy): the two-sided
# terms (tads.two_sided) the variants below try.
TWO_SIDED = ('sharpness', 'contrast', 'entropy')
VARIANTS = {
    'tads': {},
    'prior_only': {'tads.meta.steps': 0},
    'no_quality': {'tads.groups': ('relevance', 'diversity')},
    'no_relevance': {'tads.groups': ('quality', 'diversity')},
    'no_diversity': {'tads.groups': ('quality', 'relevance')},
    'with_diversity': {'tads.groups': ('quality', 'relevance', 'diversity')},
    # Method settings tried beside the default (reported, not picked silently):
    'tau_0.3': {'tads.meta.tau': 0.3},
    'tau_0.3_600_steps': {'tads.meta.tau': 0.3, 'tads.meta.steps': 600},
    'linear_proxy': {'tads.meta.head': 'linear'},
    'value_lr_0.003': {'tads.meta.value_lr': 0.003},
    'value_lr_0.03': {'tads.meta.value_lr': 0.03},
    'steps_600': {'tads.meta.steps': 600},
    'prior_quality_heavy': {'tads.prior.quality': 2.0, 'tads.prior.relevance': 0.5,
                            'tads.prior.diversity': 0.5},
    # What the world showed TADS misses (issue 14 item 2), each alone and together:
    'relevance_zscore': {'features.relevance_calibration': 'zscore'},
    'per_task': {'tads.value_form': 'per_task'},
    # Duplicates kept out of TADS's subset (tads.dedup; the baselines keep theirs). Near
    # duplicates too (session 16): meta-learning moves the duplicate flags' weights to
    # about 0, since a copy of a clean sample trains the proxy as well as the sample does
    # within a batch; only the budget sees that a copy displaces a new sample.
    'no_dedup': {'tads.dedup': 'none'},
    'dedup_exact': {'tads.dedup': 'exact'},
    'dedup_semantic': {'tads.dedup': 'semantic'},
    'dedup_both': {'tads.dedup': 'both'},
    'dedup_both_eps_0.05': {'tads.dedup': 'both', 'features.semdedup_eps': 0.05},
    'dedup_both_eps_0.01': {'tads.dedup': 'both', 'features.semdedup_eps': 0.01},
    'zscore_per_task': {'features.relevance_calibration': 'zscore',
                        'tads.value_form': 'per_task'},
    'zscore_per_task_dedup': {'features.relevance_calibration': 'zscore',
                              'tads.value_form': 'per_task', 'tads.dedup': 'exact'},
    # The prior's signs kept through meta-learning, the value MLP left out, both (a value
    # monotone in every signed feature): what world 2 showed the embedding proxy's
    # feedback can flip (session 9).
    'prior_signs': {'tads.linear_signs': 'prior'},
    # TWO_SIDED as two-sided terms |z| with a negative prior (session 19), alone and with
    # the prior's signs kept: what world 2 showed TADS keeps, noisy images whose high
    # contrast meta-learning turned into a reward.
    'two_sided': {'tads.two_sided': TWO_SIDED},
    'two_sided_prior_signs': {'tads.two_sided': TWO_SIDED, 'tads.linear_signs': 'prior'},
    'no_mlp': {'tads.hidden': ()},
    'no_mlp_prior_signs': {'tads.hidden': (), 'tads.linear_signs': 'prior'},
    # Meta-learning's proxy learns its text side from the captions' words (session 11): the
    # feedback a CLIP trained on the subset gets from partial and wrong captions.
    'words_proxy': {'tads.meta.text': 'words'},
    'reference_text': {'tads.meta.text': 'reference'},
    'words_proxy_prior_signs': {'tads.meta.text': 'words', 'tads.linear_signs': 'prior'},
    # Relevance against each task's train images too (session 12): NormSim's signal, the
    # one that keeps ncl_normsim's subsets mostly on-task, as a value-function input.
    'target_relevance': {'features.target_relevance': True},
    'no_target_relevance': {'features.target_relevance': False},
    # A hard CLIP-score gate before the value function (session 13): ncl_normsim's
    # filter-then-rank, its pass at the paper's 3:2 ratio to the budget (0.54 at 36%) and
    # at twice the budget.
    'gate_0.54': {'tads.gate.column': 'clip_score', 'tads.gate.fraction': 0.54},
    'gate_0.72': {'tads.gate.column': 'clip_score', 'tads.gate.fraction': 0.72},
    # The gate on task relevance instead: NormSim_inf over every task's train images (the
    # largest target-relevance column), the rest ranked by the value function.
    'gate_target_0.54': {'tads.gate.column': 'relevance_*_target', 'tads.gate.fraction': 0.54},
    'gate_target_0.72': {'tads.gate.column': 'relevance_*_target', 'tads.gate.fraction': 0.72},
    'no_gate': {'tads.gate.fraction': None},
    # Two passes in series (session 14): relevance, then clip_score among those, as
    # ncl_normsim filters on alignment and on the tasks both, the value function ranking
    # what is left. Inside the relevance gate TADS kept blank, blurred and partial-caption
    # samples that a CLIP-score filter drops.
    **{f'then_clip_score_{share:g}': {
        'tads.gate.column': 'relevance_*_target', 'tads.gate.fraction': 0.72,
        'tads.gate.then_column': 'clip_score', 'tads.gate.then_fraction': share}
       for share in (0.45, 0.54)},
    'no_then': {'tads.gate.then_column': None, 'tads.gate.then_fraction': None},
    # The same two passes in ncl_normsim's order (session 16): alignment first, at the
    # paper's 54%, then relevance among those, the value function ranking what is left.
    'clip_score_then_target_0.45': {
        'tads.gate.column': 'clip_score', 'tads.gate.fraction': 0.54,
        'tads.gate.then_column': 'relevance_*_target', 'tads.gate.then_fraction': 0.45},
    # Several meta-learned value functions, one per seed (session 14): meta-learning's
    # outcome moved with small changes of its rows; the mean of several is steadier.
    'ensemble_3': {'tads.ensemble': 3},
    'ensemble_5': {'tads.ensemble': 5},
}


def variant_config(overrides: dict, seeds: int, base=None):
  """A copy of `base` (configs/default.py when None) with the overrides ({dotted field:
  value}) set, no baselines (evaluated once, in the base run) and `seeds` proxy seeds."""
  c = default.get_config() if base is None else base.copy_and_resolve_references()
  c.evaluate.baselines = ()
  if 'pixel_check' in c.evaluate:  # one proxy: the variants are compared with it alone
    c.evaluate.pixel_check.update(dict(seeds=0, baselines=()))
  c.evaluate.seeds = seeds
  for dotted, value in overrides.items():
    node = c
    *parents, leaf = dotted.split('.')
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


def copy_workdir(base: str, workdir: str) -> None:
  """A copy of the finished run `base` without what a variant recomputes (learn and
  evaluate; select, export and report rerun as their inputs change), unless `workdir`
  exists already (a rerun of the tool continues where it stopped)."""
  if not os.path.exists(workdir):
    shutil.copytree(base, workdir,
                    ignore=shutil.ignore_patterns('learn', 'evaluate', 'eval.json'))


def markdown_table(rows: list) -> list:
  """Lines of a Markdown table of dicts (the columns of the last row), floats at 4
  places."""
  columns = list(rows[-1])
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(f'{v:.4f}' if isinstance(v, float) else str(v)
                              for v in (r[c] for c in columns)) + ' |' for r in rows]
  return lines


def row(name, result, overrides=None):
  tasks = result['tasks']
  return {'subset': name, 'overrides': overrides or '',
          'entries': result['subset']['entries'], 'average': result['average']['mean'],
          'std': result['average']['std'],
          **{t: tasks[t]['mean']['main'] for t in sorted(tasks)}}


def main_(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True, help='a finished run of configs/default.py')
  parser.add_argument('--out', required=True, help='where the variant workdirs go')
  parser.add_argument('--variants',
                      default='prior_only,no_quality,no_relevance,no_diversity')
  parser.add_argument('--seeds', type=int, default=3)
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  with open(os.path.join(args.workdir, 'eval.json')) as f:
    base = json.load(f)
  rows = [row(f'{name} (baseline)', r) for name, r in base.get('baselines', {}).items()]
  rows.append(row(f"{base.get('selector', 'selected')} (base run)", base))
  for name in args.variants.split(','):
    overrides = VARIANTS[name]
    workdir = os.path.join(args.out, name)
    copy_workdir(args.workdir, workdir)
    main.run(variant_config(overrides, args.seeds), workdir)
    with open(os.path.join(workdir, 'eval.json')) as f:
      rows.append(row(name, json.load(f), json.dumps(overrides) if overrides else ''))
    print(f'{name}: {rows[-1]["average"]:.4f} +- {rows[-1]["std"]:.4f}', flush=True)
  print('\n'.join(markdown_table(rows)))
  print(f'\ncommand: python tools/tads_ablations.py --workdir {args.workdir} --out {args.out}'
        f' --seeds {args.seeds} --variants {args.variants}')


if __name__ == '__main__':
  main_()
