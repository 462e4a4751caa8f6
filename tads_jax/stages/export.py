"""Export: the subset as resharded webdataset shards, as DataComp's resharder writes them.

Each selected sample is written once per time it is in subset.npy, keyed `<uid>-<j>`, in
shards of `export.shard_size` samples named `{:08d}.tar` with a `{:08d}_stats.json` beside.
Runs only with `export.shards=True`; memory is one sample plus the subset array.
"""

import collections
import itertools
import os

from tads_jax import pipeline
from tads_jax.data import subset as subset_lib
from tads_jax.data import tar_writer
from tads_jax.data import webdataset
from tads_jax.stages import ingest
from tads_jax.stages import select


def _selected_samples(paths, subset, skips):
  """Yields (key, files) for every copy of every selected sample, in pool order."""
  for path in paths:
    for s in webdataset.iter_shard(path, skips, decode=False):
      (count,) = subset_lib.times_selected(subset, [s.uid])
      for j in range(int(count)):
        files = {s.image_ext: s.image_bytes, 'txt': s.caption}
        if s.meta:
          files['json'] = {k: v for k, v in s.meta.items() if k != 'uid_source'}
        yield f'{s.uid}-{j}', files


def run(ctx) -> dict:
  config = ctx.config
  if not config.export.shards:
    return {'enabled': False}
  out_dir = ctx.stage_dir('export')
  subset = subset_lib.read_subset(ctx.path(select.SUBSET))
  # Pool shards, or the tars beside a DataComp pool's metadata (validation requires them).
  paths = [ingest.image_shard(ctx, r['path'])
           for r in ctx.summary('ingest')['per_source']]
  if None in paths:
    raise ValueError('config.export.shards: a DataComp pool is exported from the tars beside '
                     'its metadata (config.pool.metadata), and this one has none')
  skips = collections.Counter()
  samples = _selected_samples(paths, subset, skips)
  shard, total = 0, 0
  while batch := list(itertools.islice(samples, config.export.shard_size)):
    tar = os.path.join(out_dir, f'{shard:08d}.tar')
    tar_writer.write_shard(tar, batch)
    pipeline.write_json_atomic(os.path.join(out_dir, f'{shard:08d}_stats.json'),
                               {'successes': len(batch), 'count': len(batch)})
    total += len(batch)
    shard += 1
  return {'enabled': True, 'shards': shard, 'samples': total, 'subset_entries': len(subset),
          'skips': dict(skips)}


STAGE = pipeline.Stage(name='export', run=run, inputs=('ingest', 'select'),
                       config_keys=('export',))
