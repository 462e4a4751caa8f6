"""Peak RSS of one selector's fit + score on a pool of N rows (E = 512) read from row files,
as the stages give it (Inputs.embedding_source with RowFile rows): whether a selector holds
the pool's [N, E] embeddings shows as a peak that grows with N.

  python tools/bench_selector_memory.py REPO SELECTOR N

REPO: the checkout whose tads_jax runs (this one, or a worktree of an older commit to
compare). Prints one line: selector, N, RSS before fit, peak RSS, fit + score seconds. The
pool (200 class centres, noisy unit image and text embeddings) is written a block at a
time; the settings are scaled down so that each run takes seconds (issue 17 item 3,
BENCHMARKS.md "Scale").
"""

import resource
import shutil
import sys
import tempfile
import time

repo, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, repo)
import numpy as np
import pyarrow as pa
from configs import default
from tads_jax import selectors
from tads_jax.stages import embed

E, CLASSES, BLOCK = 512, 200, 8192
rng = np.random.default_rng(0)
centres = rng.standard_normal((CLASSES, E)).astype(np.float32)
folder = tempfile.mkdtemp()
labels = rng.integers(0, CLASSES, n)
with open(f'{folder}/image', 'wb') as fi, open(f'{folder}/text', 'wb') as ft:
  for s in range(0, n, BLOCK):  # written a block at a time: the script never holds [N, E]
    lab = labels[s:s + BLOCK]
    img = centres[lab] + 2.0 * rng.standard_normal((len(lab), E), np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt = img + 0.8 * rng.standard_normal(img.shape, np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    fi.write(img.astype(np.float16).tobytes()); ft.write(txt.astype(np.float16).tobytes())
    del img, txt
rows = (embed.RowFile(f'{folder}/image', n, E), embed.RowFile(f'{folder}/text', n, E))

class Source:  # what stages/embed.EmbeddingFiles offers: blocks() and rows()
  def rows(self): return rows
  def blocks(self):
    for s in range(0, n, BLOCK):
      yield rows[0][s:s + BLOCK], rows[1][s:s + BLOCK]

names = ['dog', 'cat', 'car', 'tree']
features = pa.table({'uid': [f'{i:032x}' for i in range(n)],
                     'caption': [f'a photo of a small {names[i % 4]} in the park' for i in range(n)],
                     'clip_score': rng.random(n), 'cluster': rng.integers(0, 400, n),
                     'label': labels})
tl = rng.integers(0, CLASSES, 2000)
tasks = ({'name': 'cls', 'kind': 'classification',
          'image_emb': (centres[tl] / np.linalg.norm(centres[tl], axis=1, keepdims=True)),
          'labels': tl, 'classnames': np.asarray([f'c{i}' for i in range(CLASSES)]),
          'class_text_emb': np.repeat((centres / np.linalg.norm(centres, axis=1, keepdims=True))[:, None], 2, 1)},)
inputs = selectors.Inputs(features=features, tasks=tasks, embedding_source=Source())

meta = dict(steps=5, batch_size=256, unroll=1, head='linear', checkpoint_every=0, log_every=1000)
c = default.get_config()
c.selection.fraction = 0.002
c.negclipscore.update(dict(batch_size=1024, batches=1))
c.ncl_normsim.update(dict(batch_size=1024, batches=1, ncl_fraction=0.5, fraction=0.2))
c.image_based.update(dict(k=100, iters=3))
c.flyt.hidden_mult = 0.25
c.flyt.meta.update(meta); c.mflyt.meta.update(meta)
c.mflyt.inputs = ('clip_score',)
c.clip_powered.update(dict(adapter_steps=5, max_steps=200))
selector = selectors.get(name)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.time()
state = selector.fit(c, inputs)
out = selectors.run_selector(selector, c, state, inputs)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f'{name} N={n} rss_before_fit={before:.0f}MiB peak={peak:.0f}MiB fit+score={time.time() - t:.1f}s sum={np.nansum(out):.6g}', flush=True)
for r in rows: r.close()
shutil.rmtree(folder)
