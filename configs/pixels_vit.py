"""The default run evaluated with the conv-stem ViT pixel proxy (the default pixel proxy
before issue 13): the 'small' CLIP cut down, a convolutional stem, 32 px images.

It trains at 1.16x PyTorch's speed on CPU (tools/bench_pixel_proxy.py --tower vit), but on
the default world it never learned shape from clean data, so it could not tell on-task
data from the rest (BENCHMARKS.md, issue 13 item 4); the default pixel proxy is now the
reference encoder's CNN (configs/default.py, evaluate.pixels).

Run: python -m tads_jax.main --config configs/pixels_vit.py --workdir /tmp/tads-vit
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config():
  c = default.get_config()
  c.evaluate.proxy = 'pixels'
  c.evaluate.pixels.image_size = 32
  c.evaluate.pixels.model_overrides = ml_collections.ConfigDict(dict(
      vision_stem='conv', vision_stem_width=32, embed_dim=128, vision_width=128,
      vision_layers=4, vision_heads=4, vision_mlp_dim=512, text_width=128, text_layers=3,
      text_heads=4, text_mlp_dim=512))
  return c
