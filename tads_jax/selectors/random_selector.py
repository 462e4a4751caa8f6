"""The random baseline: every sample equally likely, a seed-determined permutation."""

import numpy as np

from tads_jax import selectors


def score(config, state, inputs: selectors.Inputs) -> np.ndarray:  # -> [N]
  """i.i.d. uniform draws from config.seed: top-k of them is a uniform subset."""
  del state
  rng = np.random.default_rng([config.seed, 0x5E1EC7])
  return rng.random(inputs.num_rows)


selectors.register(selectors.Selector(
    name='random', score=score, config_fields=('seed',),
    doc='a uniform random subset at the budget (seeded by config.seed)'))
