"""The default run evaluated with the pixel proxy alone (its CNN image tower, the
reference encoder's, at the pool's 64 px: configs/default.py evaluate.pixels) over the
selected subset and every baseline at 3 seeds: the full pixel-proxy comparison that the
demo's pixel check (2 subsets, 1 seed) samples. About 20 minutes from an empty workdir on
2 CPU cores (README).

Run: python -m tads_jax.main --config configs/pixels_cnn.py --workdir /tmp/tads-px
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config():
  c = default.get_config()
  c.evaluate.proxy = 'pixels'
  return c
