"""Learn: fit the selector's learnable parts before select scores the pool (design section 3).

Only selectors with `learns = True` (tads) have anything to fit; the stage hands them the
pool's features (ingest/samples.parquet joined with features/features.parquet, as select
sees them) and the workdir, and records what they return. Their outputs live in learn/;
meta-learning checkpoints there too, so a killed run resumes.
"""

from tads_jax import pipeline
from tads_jax import selectors
from tads_jax.stages import select


def run(ctx) -> dict:
  selector = selectors.get(ctx.config.selector.name, ctx.config)
  if not selector.learns:
    raise ValueError(f'config.stages: selector {selector.name!r} has nothing to learn; '
                     'remove learn from config.stages')
  return selector.learn(ctx, select.features_table(ctx))


def config_keys(config) -> tuple:
  """The selector's own block (config.tads for tads) when it has one."""
  name = config.selector.name
  return ('seed', 'selector', 'mesh.rules') + ((name,) if name in config else ())


STAGE = pipeline.Stage(name='learn', run=run, inputs=select.learn_inputs, config_keys=config_keys,
                       version=1)
