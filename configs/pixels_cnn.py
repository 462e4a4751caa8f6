"""The default run evaluated with the pixel proxy whose image tower is the reference
encoder's CNN (clip.CNNTower) at the pool's 64 px instead of the conv-stem ViT.

On the default world it learns shape from clean data where the ViT proxy does not
(BENCHMARKS.md, issue 13 item 4), but its training step runs at 0.76x PyTorch's on CPU
(tools/bench_pixel_proxy.py --tower cnn), so it is not the default pixel proxy yet.

Run: python -m tads_jax.main --config configs/pixels_cnn.py --workdir /tmp/tads-px
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config():
  c = default.get_config()
  c.evaluate.proxy = 'pixels'
  c.evaluate.pixels.image_size = c.encoder.image_size
  c.evaluate.pixels.model_overrides = c.encoder.model_overrides
  return c
