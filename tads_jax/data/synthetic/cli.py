"""The command line: python -m tads_jax.data.synthetic --out DIR [--num-samples N ...]."""

import argparse
import json
import sys

from tads_jax.data.synthetic.generate import generate_world
from tads_jax.data.synthetic.vocabulary import DEFAULT_NOISE, TASK_NAMES
from tads_jax.data.synthetic.world_config import WorldConfig, WorldError


def _parse_noise(text: str) -> dict:
  out = {}
  for part in filter(None, (p.strip() for p in text.split(','))):
    name, sep, value = part.partition('=')
    if not sep:
      raise ValueError(f'--noise: expected name=fraction, got {part!r}')
    try:
      out[name.strip()] = float(value)
    except ValueError:
      raise ValueError(f'--noise: fraction for {name.strip()!r} is not a number: '
                       f'{value!r}') from None
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m tads_jax.data.synthetic',
      formatter_class=argparse.ArgumentDefaultsHelpFormatter,
      description='Generate the synthetic web world: pool shards with ground truth, a trusted '
                  'set, and downstream tasks. Shards already in --out are kept.')
  parser.add_argument('--out', required=True, help='output directory')
  parser.add_argument('--num-samples', type=int, default=WorldConfig.num_samples,
                      help='pool samples')
  parser.add_argument('--seed', type=int, default=WorldConfig.seed, help='world seed')
  parser.add_argument('--image-size', type=int, default=WorldConfig.image_size,
                      help='side of the square images, pixels')
  parser.add_argument('--shard-size', type=int, default=WorldConfig.shard_size,
                      help='samples per tar, at most 10000')
  parser.add_argument('--trusted-size', type=int, default=WorldConfig.trusted_size,
                      help='clean trusted pairs (DFN-style)')
  parser.add_argument('--offtask-fraction', type=float, default=WorldConfig.offtask_fraction,
                      help='fraction of samples no task asks for')
  parser.add_argument('--offtask-attributes', default=','.join(WorldConfig.offtask_attributes),
                      help='attributes in which an off-task sample takes a value no task '
                           'asks for (comma-separated; shape among them)')
  parser.add_argument('--noise', default='',
                      help='override noise fractions, e.g. misaligned=0.2,spam=0.05; types: '
                           + ', '.join(n for n, _ in DEFAULT_NOISE))
  parser.add_argument('--tasks', default=','.join(TASK_NAMES),
                      help='comma-separated subset of ' + ', '.join(TASK_NAMES))
  parser.add_argument('--workers', type=int, default=1,
                      help='processes making shards (the output does not depend on it)')
  parser.add_argument('--quiet', action='store_true', help='no per-shard progress')
  args = parser.parse_args(argv)
  try:
    cfg = WorldConfig.from_dict({
        'seed': args.seed, 'num_samples': args.num_samples, 'image_size': args.image_size,
        'shard_size': args.shard_size, 'trusted_size': args.trusted_size,
        'offtask_fraction': args.offtask_fraction,
        'offtask_attributes': args.offtask_attributes, 'noise': _parse_noise(args.noise),
        'tasks': args.tasks})
  except ValueError as e:
    parser.error(str(e))
  if args.workers < 1:
    parser.error(f'--workers: must be >= 1, got {args.workers}')
  try:
    summary = generate_world(args.out, cfg, num_workers=args.workers, verbose=not args.quiet)
  except WorldError as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(json.dumps({k: summary[k] for k in ('out_dir', 'num_samples', 'counts', 'on_task',
                                            'off_task', 'formats', 'shards_written',
                                            'shards_kept')}, indent=2))
  return 0
