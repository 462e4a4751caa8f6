"""DataComp's medium scale: the small config (configs/datacomp_small.py) with medium's pool
and budgets; only the fields that differ are set here.

The pool's files go in the layout configs/datacomp.py describes; mlfoundations/datacomp's
`python download_upstream.py --scale medium --download_npz` fetches them (128M samples:
30 GB of parquet, 750 GB of npz, 4.5 TB of tars, says their README).

  python -m tads_jax.main --config configs/datacomp_medium.py:/data/datacomp_medium \
      --workdir /tmp/dc_medium

tools/estimate_stage_times.py gives the expected time of each stage on one H100 and on a
TPU v5e-8.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datacomp_small  # pylint: disable=g-import-not-at-top,wrong-import-position

DATA = '/path/to/datacomp_medium'
POOL = 128_000_000   # samples: mlfoundations/datacomp README, "medium: 128M pool size"


def get_config(data: str | None = None):
  c = datacomp_small.get_config(data or DATA)
  # mlfoundations/datacomp scale_configs.py 'medium': train_num_samples 128_000_000 (the
  # pool's size); batch_size 4096, learning_rate 5e-4, warmup 500, model ViT-B-32 and beta2
  # None are 'small''s, so the pixel preset's other fields carry over (31,250 steps).
  c.evaluate.samples_seen = POOL
  c.evaluate.pixels.samples_seen = POOL
  # Diversity clusters: ~12,800 samples per cluster, as small's 1,000 clusters of 12.8M.
  # k-means++ then starts from 64 x k = 640,000 sampled rows (features._init_rows).
  c.features.kmeans_k = 10_000
  # Not changed: image_based.k stays 100,000, DataComp's at every scale (their
  # baselines/image_based_clustering.md runs --num_clusters 100000 and changes only
  # --sample_ratio for the larger pools: 0.3 for large, 0.03 for xlarge); the TADS
  # meta-learning budget (tads.meta: 900 steps of 1,024 pool samples) is a fixed cost
  # whatever the pool, and no source gives TADS's at this scale.
  return c
