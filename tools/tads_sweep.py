r"""Chooses TADS's settings on the validation split, then scores only the choice on the eval split.

Given a finished run whose config holds out a validation split (tads.validation_fraction >
0; the selection side never saw those examples), each candidate setting reruns learn,
select and evaluate with evaluate.split='validation' in a copy of the run's workdir (as
tools/tads_ablations.py does: ingest, encoder, embed and features are reused). The
candidate with the best validation average (main metric averaged over tasks, mean over
seeds) is chosen, the first listed on a tie; then that one alone is evaluated on the eval
splits, to report. Nothing else ever touches the eval splits.

  python tools/tads_sweep.py --config configs/default.py \
      --config.tads.validation_fraction=0.2 --workdir /tmp/tads-val --out /tmp/sweep

--draws K scores every candidate on K validation splits of the same world (cuts seeded
tads.validation_seed, then the next K - 1 integers; the run's own cut is the first, the
others rerun the features stage once each in --out/_draw_<seed>), and the validation mean
is over every draw's seeds. Why: with a few examples per class one draw holds out, which
examples it holds out moves a candidate's score by more than the proxy's seed spread, so
one draw cannot order settings that differ by less than that.

Writes --out/sweep.json: {tried: [{name, overrides, validation: {mean, std, per_seed}
(and per_draw: [{validation_seed, mean, std, per_seed}] with several draws), tasks,
paired (when 'tads' was tried: the candidate minus it, pair by pair; see paired())}],
chosen, chosen_overrides, eval: {mean, std, per_seed, tasks}, rule, proxy, seeds,
validation_fraction, validation_seeds} and prints a Markdown table. Candidates
(`--variants`, default all of candidates(); any name of tads_ablations.VARIANTS also
works), relative to the config's own values:
  tads                 the config as it is
  prior_only           tads.meta.steps = 0: the weak-supervision prior alone
  value_lr_x3 / _div3  tads.meta.value_lr times 3 / divided by 3; likewise tau_*, steps_*
  relevance_zscore, per_task, zscore_per_task: calibrated relevance, the per-task value
                       form, both
  prior_signs, no_mlp, no_mlp_prior_signs: the prior's signs kept through meta-learning
                       (tads.linear_signs), no value MLP (tads.hidden ()), both
  words_proxy, reference_text (by name only): the meta-learning proxy's text side
                       (tads.meta.text) 'words' / 'reference'
  ensemble_3, ensemble_5 (by name only): 3 / 5 meta-learned value functions
                       (tads.ensemble)
  target_relevance     features.target_relevance flipped (no_target_relevance when the
                       config has it on): relevance against each task's train images
  gate_<share>, no_gate  a gate (tads.gate.fraction, on tads.gate.column) at 1.5x and 2x
                       the budget when the config has none; none when it has one
  then_clip_score_<share>  with a one-pass gate: a second pass in series
                       (tads.gate.then_*), clip_score at 1.25x and 1.5x the budget, those
                       within the first pass; no_then with a two-pass gate: the first alone
  no_dedup, dedup_exact, dedup_semantic, dedup_both  tads.dedup's modes other than the
                       config's
  no_<group>           that group of tads.groups left out
  with_<group>         a group of value.GROUPS that tads.groups leaves out, added
  prior_<group>_heavy  that group's prior weight doubled, the others' halved
  two_sided, two_sided_prior_signs, no_two_sided: |z| terms with a negative prior on
                       sharpness, contrast and entropy (tads.two_sided), those with the
                       prior's signs kept; none when the config has some
The proxy is the embedding one unless --proxy pixels.
"""

import itertools
import json
import os
import shlex
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tads_ablations  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import main as main_lib  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import pipeline  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import value  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.data import task_split  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.selectors import tads as tads_selector  # noqa: E402  pylint: disable=wrong-import-position

SWEEP = 'sweep.json'
RULE = 'best validation mean'
# Meta-learning settings tried at 3x and 1/3 of the config's value.
SCALED = ('value_lr', 'tau', 'steps')
# Variants of tads_ablations.VARIANTS tried as named: calibrated relevance, the per-task
# value form, exact dedup, the first two together; the prior's signs kept, no value MLP,
# both.
NAMED_VARIANTS = ('relevance_zscore', 'per_task', 'zscore_per_task', 'prior_signs',
                  'no_mlp', 'no_mlp_prior_signs')


# Meta-learning settings counted in whole numbers.
INTEGERS = ('steps', 'unroll', 'batch_size', 'task_batch_size')


def scaled(config, fields) -> dict:
  """{'<field>_x3' / '<field>_div3': {'tads.meta.<field>': value}}: each of
  config.tads.meta's `fields` at 3x and 1/3 of its value (whole numbers rounded, at least
  1); a field at 0 (steps: the prior alone) is left out."""
  out = {}
  for field in fields:
    value = config.tads.meta[field]
    if not value:
      continue
    for tag, factor in (('x3', 3.0), ('div3', 1 / 3)):
      moved = max(1, round(value * factor)) if field in INTEGERS else value * factor
      out[f'{field}_{tag}'] = {f'tads.meta.{field}': moved}
  return out


def dedups(config) -> dict:
  """tads.dedup's other modes: 'no_dedup', 'dedup_exact', 'dedup_semantic', 'dedup_both',
  less the config's own."""
  mode = tads_selector.dedup(config)
  return {name: dict(tads_ablations.VARIANTS[name])
          for name in ('no_dedup', 'dedup_exact', 'dedup_semantic', 'dedup_both')
          if tads_ablations.VARIANTS[name]['tads.dedup'] != mode}


def gates(config) -> dict:
  """The gate's candidates: with none in the config, a gate on the config's column
  passing 1.5x and 2x the budget (ncl_normsim's pass is 1.5x; named by the share, e.g.
  'gate_0.54'), those at most the whole pool; with one, 'no_gate', and with one pass, a
  second on clip_score (ncl_normsim's other filter) at 1.25x and 1.5x the budget, those
  below the first pass; with two, 'no_gate' and 'no_then' (the first pass alone)."""
  budget = config.selection.fraction
  passes = tads_selector.gate(config)
  if passes:
    out = {'no_gate': dict(tads_ablations.VARIANTS['no_gate'])}
    if len(passes) == 1:
      out.update({f'then_clip_score_{round(budget * k, 4):g}': {
          'tads.gate.then_column': 'clip_score', 'tads.gate.then_fraction': round(budget * k, 4)}
                  for k in (1.25, 1.5) if budget * k < passes[0][1]})
    else:
      out['no_then'] = dict(tads_ablations.VARIANTS['no_then'])
    return out
  return {f'gate_{round(budget * k, 4):g}': {'tads.gate.fraction': round(budget * k, 4)}
          for k in (1.5, 2.0) if budget * k <= 1}


def two_sideds(config) -> dict:
  """tads.two_sided's candidates: with none in the config (and quality among its groups),
  'two_sided' and 'two_sided_prior_signs' (tads_ablations.VARIANTS); with some,
  'no_two_sided'."""
  if tads_selector.two_sided(config):
    return {'no_two_sided': {'tads.two_sided': ()}}
  if 'quality' not in tuple(config.tads.groups):
    return {}
  return {name: dict(tads_ablations.VARIANTS[name])
          for name in ('two_sided', 'two_sided_prior_signs')}


def candidates(config) -> dict:
  """{name: {dotted field: value}}: the settings the sweep tries by default (the module
  docstring lists them), derived from the config's own values."""
  out = {name: dict(tads_ablations.VARIANTS[name]) for name in ('tads', 'prior_only')}
  out.update(scaled(config, SCALED))
  for name in NAMED_VARIANTS:
    out[name] = dict(tads_ablations.VARIANTS[name])
  flip = 'no_target_relevance' if config.features.get('target_relevance') else 'target_relevance'
  out[flip] = dict(tads_ablations.VARIANTS[flip])
  out.update(gates(config))
  out.update(dedups(config))
  groups = tuple(config.tads.groups)
  several = groups if len(groups) > 1 else ()  # one group: none to leave out or reweigh
  for group in several:
    out[f'no_{group}'] = {'tads.groups': tuple(g for g in groups if g != group)}
  for group in value.GROUPS:
    if group not in groups:
      out[f'with_{group}'] = {'tads.groups': tuple(g for g in value.GROUPS
                                                   if g in groups or g == group)}
  for group in several:
    out[f'prior_{group}_heavy'] = {
        f'tads.prior.{g}': config.tads.prior[g] * (2.0 if g == group else 0.5)
        for g in groups}
  out.update(two_sideds(config))
  if tads_selector.two_sided(config):  # two-sided terms need the additive form and quality
    for overrides in out.values():
      if (overrides.get('tads.value_form') == 'per_task'
          or 'quality' not in overrides.get('tads.groups', ('quality',))):
        overrides['tads.two_sided'] = ()
  return out


def paired(entry: dict, reference: dict) -> dict:
  """entry's validation figures minus the reference's, pair by pair (the same draw and
  proxy seed: the same held-out examples and the same proxy init and batch order, so what
  both share cancels): {against, mean, std (ddof 1), wins: draws (or, with one draw, seeds)
  whose difference is > 0, of}. Why: the draw moves every candidate together by more than
  the candidates differ, so the unpaired std over draws hides a consistent difference."""
  a = np.asarray(entry['validation']['per_seed'], np.float64)
  b = np.asarray(reference['validation']['per_seed'], np.float64)
  if a.shape != b.shape:
    raise ValueError(f"paired: {entry['name']} has {a.size} figures, {reference['name']} "
                     f'{b.size}; pairs need the same draws and seeds')
  diff = a - b
  draws = entry['validation'].get('per_draw')
  if draws:
    per_draw = [d['mean'] - r['mean']
                for d, r in zip(draws, reference['validation']['per_draw'])]
  else:
    per_draw = diff.tolist()
  return {'against': reference['name'], 'mean': float(diff.mean()),
          'std': float(diff.std(ddof=1)) if diff.size > 1 else 0.0,
          'wins': int(sum(d > 0 for d in per_draw)), 'of': len(per_draw)}


def choose(tried: list) -> int:
  """The index of the entry with the best validation mean, the first of equals."""
  means = [entry['validation']['mean'] for entry in tried]
  return means.index(max(means))


def _config(base, overrides: dict, seeds: int, proxy: str, split: str):
  """The base config with the overrides, scoring `split` with `proxy` and no baselines;
  stages up to evaluate (export and the report are not needed to choose)."""
  c = tads_ablations.variant_config(overrides, seeds, base=base)
  c.unlock()  # a config from the command line is locked; split may be new to it
  c.stages = tuple(s for s in pipeline.stage_names(c) if s not in ('export', 'report'))
  c.evaluate.proxy = proxy
  c.evaluate.split = split
  return c


def _evaluate(base_config, base_workdir: str, workdir: str, overrides: dict, seeds: int,
              proxy: str, split: str) -> dict:
  """eval.json of one candidate scored on `split` in its copy of the base workdir."""
  tads_ablations.copy_workdir(base_workdir, workdir)
  main_lib.run(_config(base_config, overrides, seeds, proxy, split), workdir)
  with open(os.path.join(workdir, 'eval.json')) as f:
    result = json.load(f)
  if result.get('split', 'eval') != split:
    raise ValueError(f"{workdir}/eval.json: scored the {result.get('split', 'eval')!r} "
                     f'split, not {split!r}')
  return result


def _figures(result: dict) -> tuple:
  """({mean, std, per_seed} of the average main metric, {task: mean main metric})."""
  average = {k: result['average'][k] for k in ('mean', 'std', 'per_seed')}
  return average, {name: t['mean']['main'] for name, t in result['tasks'].items()}


def draw_seeds(config, draws: int) -> list:
  """The seeds of `draws` validation cuts: the config's own (task_split.validation_seed)
  first, then the next integers."""
  if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
    raise ValueError(f'draws: a count of validation splits >= 1, got {draws!r}')
  first = task_split.validation_seed(config)
  return [first + d for d in range(draws)]


def _draw_overrides(config, seed: int) -> dict:
  """The override that cuts validation split `seed` ({} for the config's own)."""
  return {} if seed == task_split.validation_seed(config) else {'tads.validation_seed': seed}


def _draw_base(config, workdir: str, out: str, seed: int, seeds: int, proxy: str) -> str:
  """The finished run a draw's candidates copy: `workdir` for the config's own cut, else a
  copy of it in out/_draw_<seed> whose features stage reran with that cut (ingest,
  encoder and embed do not read the cut, so they are reused; each candidate runs learn)."""
  overrides = _draw_overrides(config, seed)
  if not overrides:
    return workdir
  path = os.path.join(out, f'_draw_{seed}')
  tads_ablations.copy_workdir(workdir, path)
  c = _config(config, overrides, seeds, proxy, 'validation')
  c.stages = tuple(itertools.takewhile(lambda s: s != 'learn', c.stages))
  main_lib.run(c, path)
  return path


def combine(figures: list, seeds: list) -> tuple:
  """One candidate's figures over draws: figures [(average, tasks) per draw] (_figures),
  seeds the draws' validation seeds. One draw: its own figures. Several: mean and std
  (ddof 1, as eval.json's) over every draw's per-seed averages, per_draw the draws' own,
  and each task's mean over the draws."""
  if len(figures) == 1:
    return figures[0]
  values = np.asarray([v for average, _ in figures for v in average['per_seed']], np.float64)
  per_draw = [{'validation_seed': seed, **a} for seed, (a, _) in zip(seeds, figures)]
  average = {'mean': float(values.mean()), 'std': float(values.std(ddof=1)),
             'per_seed': values.tolist(), 'per_draw': per_draw}
  tasks = {name: float(np.mean([t[name] for _, t in figures])) for name in figures[0][1]}
  return average, tasks


def sweep(config, workdir: str, out: str, names=None, seeds: int | None = None,
          proxy: str = 'embedding', draws: int = 1) -> dict:
  """Runs the sweep (see the module docstring); writes and returns sweep.json's dict.

  config: the config `workdir` finished with. names: candidates to try, in order (default
  every one of candidates(config)). seeds: proxy seeds (default config.evaluate.seeds).
  draws: validation splits each candidate is scored on (draw_seeds).
  """
  fraction = task_split.validation_fraction(config)
  if not fraction:
    raise ValueError(f'{task_split.FIELD}: 0; the sweep chooses on the validation split, '
                     'so the run must hold one out (set it in (0, 1) and run the pipeline)')
  if config.selector.name != 'tads':
    raise ValueError(f'config.selector.name: {config.selector.name!r}; the sweep chooses '
                     "settings of 'tads'")
  if proxy not in ('embedding', 'pixels'):
    raise ValueError(f"proxy: {proxy!r} is not 'embedding' or 'pixels'")
  known = {**tads_ablations.VARIANTS, **candidates(config)}
  names = list(names or candidates(config))
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f'variants: unknown {unknown}; known: {", ".join(known)}')
  if len(set(names)) != len(names):
    raise ValueError(f'variants: names repeat in {names}')
  seeds = seeds or config.evaluate.seeds
  cuts = draw_seeds(config, draws)
  os.makedirs(out, exist_ok=True)
  bases = [_draw_base(config, workdir, out, seed, seeds, proxy) for seed in cuts]
  tried = []
  for name in names:
    figures = []
    for seed, base in zip(cuts, bases):
      where = name if base == workdir else f'{name}_draw{seed}'
      result = _evaluate(config, base, os.path.join(out, where),
                         {**known[name], **_draw_overrides(config, seed)}, seeds, proxy,
                         'validation')
      figures.append(_figures(result))
    validation, tasks = combine(figures, cuts)
    tried.append({'name': name, 'overrides': known[name], 'validation': validation,
                  'tasks': tasks})
    logging.warning('sweep: %s: validation %.4f +- %.4f', name, validation['mean'],
                    validation['std'])
  reference = next((e for e in tried if e['name'] == 'tads'), None)
  if reference is not None:  # the config's own setting: every other's paired difference
    for entry in tried:
      if entry is not reference:
        entry['paired'] = paired(entry, reference)
  chosen = tried[choose(tried)]
  result = _evaluate(config, workdir, os.path.join(out, chosen['name']), chosen['overrides'],
                     seeds, proxy, 'eval')
  evaluation, tasks = _figures(result)
  summary = {'tried': tried, 'chosen': chosen['name'],
             'chosen_overrides': chosen['overrides'], 'eval': {**evaluation, 'tasks': tasks},
             'rule': RULE, 'proxy': proxy, 'seeds': seeds, 'validation_fraction': fraction,
             'validation_seeds': cuts}
  pipeline.write_json_atomic(os.path.join(out, SWEEP), summary)
  return summary


def markdown(summary: dict) -> list:
  """The sweep as Markdown lines: one row per candidate (validation figures), then the
  chosen one's eval figures."""
  rows = []
  against = next((e['paired']['against'] for e in summary['tried'] if e.get('paired')), None)
  for e in summary['tried']:
    draws = e['validation'].get('per_draw')
    rows.append({
        'variant': e['name'] + (' (chosen)' if e['name'] == summary['chosen'] else ''),
        'overrides': json.dumps(e['overrides'], default=list) if e['overrides'] else '',
        'validation': e['validation']['mean'], 'std': e['validation']['std'],
        **({'per draw': ', '.join(f"{d['mean']:.4f}" for d in draws)} if draws else {}),
        **({'paired vs ' + against: _paired_text(e.get('paired'), bool(draws))}
           if against else {}),
        **e['tasks']})
  ev = summary['eval']
  cuts = summary.get('validation_seeds', [])
  return tads_ablations.markdown_table(rows) + [
      '', f"Chosen by the {summary['rule']} ({summary['proxy']} proxy, {summary['seeds']} "
      f"seeds, validation_fraction {summary['validation_fraction']}"
      + (f", {len(cuts)} validation splits (seeds {', '.join(map(str, cuts))})"
         if len(cuts) > 1 else '')
      + f"): {summary['chosen']}; on the eval split {ev['mean']:.4f} +- {ev['std']:.4f}."]


def _paired_text(p: dict | None, draws: bool) -> str:
  """'+0.0049 +- 0.0240, ahead on 2 of 3 draws' ('' for the reference itself)."""
  if not p:
    return ''
  return (f"{p['mean']:+.4f} +- {p['std']:.4f}, ahead on {p['wins']} of {p['of']} "
          + ('draws' if draws else 'seeds'))


def _define_flags():
  """Flags only when run as a script: importing the module (tests) defines none. --config
  (the config file the run used, with its --config.* overrides) and --workdir (the
  finished run) are tads_jax.main's own flags."""
  flags.DEFINE_string('out', None, 'Where the candidate workdirs and sweep.json go.')
  flags.DEFINE_list('variants', None, 'Candidates to try (default: all of candidates()).')
  flags.DEFINE_integer('seeds', None, 'Proxy seeds (default config.evaluate.seeds).')
  flags.DEFINE_enum('proxy', 'embedding', ['embedding', 'pixels'], 'The proxy that scores.')
  flags.DEFINE_integer('draws', 1, 'Validation splits each candidate is scored on.')
  flags.mark_flags_as_required(['out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  try:
    summary = sweep(f.config, f.workdir, f.out, f.variants, f.seeds, f.proxy, f.draws)
  except ValueError as e:
    sys.exit(f'error: {e}')
  print('\n'.join(markdown(summary)))
  print(f'\nsweep.json: {os.path.join(f.out, SWEEP)}')
  print(f'command: python {" ".join(shlex.quote(a) for a in sys.argv)}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
