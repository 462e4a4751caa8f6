"""The random baseline: every sample equally likely, a seed-determined permutation."""

import numpy as np
import pyarrow as pa

from tads_jax import selectors


@selectors.register('random')
class RandomSelector(selectors.Selector):
  """Scores are i.i.d. uniform draws from config.seed: top-k of them is a uniform subset."""

  def score(self, features: pa.Table) -> np.ndarray:
    rng = np.random.default_rng([self.config.seed, 0x5E1EC7])
    return rng.random(features.num_rows)
