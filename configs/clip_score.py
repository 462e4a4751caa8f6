"""The default synthetic world, scored end to end: reference encoder, embeddings, features,
and DataComp's CLIP-score baseline keeping the top 36%.

Run: python -m tads_jax.main --config configs/clip_score.py --workdir /tmp/tads-clip
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config():
  c = default.get_config()
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'select', 'export', 'report')
  c.selector.name = 'clip_score'
  return c
