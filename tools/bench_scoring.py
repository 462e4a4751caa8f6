"""Benchmarks of the scoring functions; prints Markdown rows for BENCHMARKS.md.

  kmeans:   spherical k-means (tads_jax.scoring.kmeans.fit) against faiss-cpu's k-means on
            the same unit vectors and the same initial centroids, all points used (faiss's
            max_points_per_centroid raised so that it does not subsample). Both end with an
            assignment of every point (ours: fit's final pass; faiss: train + index.search),
            and both are scored by the same float64 objective: mean cosine of each point to
            its nearest final centroid, and faiss's sum of squared distances (2 - 2 cos).
  features: samples/s of relevance vectors (T tasks x P prototypes, image and text side)
            plus the cross-modal operators on precomputed embeddings, in fixed-size chunks,
            against the same computation in plain numpy, and as a fraction of the measured
            float32 matmul peak of this machine.

faiss-cpu is a benchmark-only dependency (pip install faiss-cpu).

  python tools/bench_scoring.py --job kmeans --points 200000 --k 1000 --iters 5
  nice python tools/bench_scoring.py --job kmeans          # the full 1M x 512, k=1000, 20 it
  python tools/bench_scoring.py --job features --points 200000
"""

import argparse
import os
import shlex
import sys
import time

import numpy as np


def _command() -> str:
  return 'python ' + ' '.join(shlex.quote(a) for a in sys.argv)


def _load() -> str:
  return '/'.join(f'{v:.1f}' for v in os.getloadavg())


def _clustered_unit_vectors(n, d, n_centres, seed, noise=0.05, chunk=65536):  # -> [n, d]
  """A mixture of n_centres directions with Gaussian spread, like embeddings that have
  structure (isotropic noise would make any k-means objective flat). noise is per
  coordinate: 0.05 x sqrt(512) ~ 1.1 puts a point at cosine ~0.65 from its centre.
  n_centres = 0 gives isotropic unit vectors."""
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((max(n_centres, 1), d), dtype=np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  x = np.empty((n, d), np.float32)
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    block = noise * rng.standard_normal((stop - start, d), dtype=np.float32)
    if n_centres:
      block += centres[rng.integers(0, n_centres, stop - start)]
    x[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
  return x


def _mean_best_cosine(x, centroids, chunk=32768) -> float:
  """Independent scorer (numpy, float64 accumulation) for both implementations."""
  total = 0.0
  for start in range(0, len(x), chunk):
    total += np.max(x[start:start + chunk] @ centroids.T, axis=1).astype(np.float64).sum()
  return total / len(x)


def _matmul_peak(d=512, rows=8192, cols=1000, repeats=5) -> float:
  """Best float32 GEMM rate (FLOP/s) of numpy and of jax on this machine, on the shape the
  scoring matmuls have."""
  import jax
  rng = np.random.default_rng(0)
  a = rng.standard_normal((rows, d), dtype=np.float32)
  b = rng.standard_normal((cols, d), dtype=np.float32)
  flops = 2.0 * rows * d * cols
  best = 0.0
  jdot = jax.jit(lambda a, b: a @ b.T)
  for fn in (lambda: a @ b.T, lambda: jdot(a, b).block_until_ready()):
    fn()
    for _ in range(repeats):
      t = time.perf_counter()
      fn()
      best = max(best, flops / (time.perf_counter() - t))
  return best


def bench_kmeans(args):
  import faiss
  import jax
  import jax.numpy as jnp

  from tads_jax.scoring import kmeans

  n, d, k = args.points, args.dim, args.k
  t = time.perf_counter()
  if args.data == 'clustered':
    x = _clustered_unit_vectors(n, d, 2 * k, args.seed)
  else:  # no structure at all: the worst case for the bounds, which then prune nothing
    x = _clustered_unit_vectors(n, d, 0, args.seed)
  rng = np.random.default_rng(args.seed + 1)
  init = x[np.sort(rng.choice(n, k, replace=False))].copy()  # [k, d], shared by both
  print(f'data {n} x {d}: {time.perf_counter() - t:.1f} s; load {_load()}', flush=True)

  results = {}
  matmul_dtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[args.matmul_dtype]
  all_points = -(-n // k) + 1  # faiss subsamples to 256 points per centroid unless raised
  if args.sequential or args.skip_ours or args.skip_faiss:
    callback = None
  else:
    # Interleaved: after each of our passes, faiss runs the same iteration from its own
    # centroids, so both see the same machine load (this machine is shared); each side is
    # timed on its own share. One faiss Clustering.train with niter=1 is one faiss iteration.
    cp = faiss.ClusteringParameters()
    cp.niter, cp.spherical, cp.verbose = 1, True, False
    cp.max_points_per_centroid, cp.seed = all_points, args.seed
    state = dict(centroids=init.copy(), train=0.0, search=0.0)

    def callback(i, mean_cos, share):
      t = time.perf_counter()
      if i < args.iters:
        clus = faiss.Clustering(d, k, cp)
        faiss.copy_array_to_vector(state['centroids'].ravel(), clus.centroids)
        clus.train(x, faiss.IndexFlatIP(d))
        state['centroids'] = faiss.vector_to_array(clus.centroids).reshape(k, d)
        state['train'] += time.perf_counter() - t
      else:
        index = faiss.IndexFlatIP(d)
        index.add(state['centroids'])
        index.search(x, 1)  # the assignment of every point, as fit returns it
        state['search'] += time.perf_counter() - t

  if not args.skip_ours:
    t = time.perf_counter()
    ours = kmeans.fit(x, k, args.iters, jax.random.key(0), chunk=args.chunk,
                      init_centroids=init, matmul_dtype=matmul_dtype, prune=not args.no_prune,
                      callback=callback)
    seconds = time.perf_counter() - t
    if callback is not None:
      seconds -= state['train'] + state['search']
      results['faiss'] = dict(seconds=state['train'] + state['search'], train=state['train'],
                              centroids=state['centroids'])
    results['ours'] = dict(seconds=seconds, centroids=ours.centroids,
                           computed=sum(ours.computed))
    print(f'ours: {seconds:.1f} s (fit incl. compile and final assignment); '
          f'rows computed per pass: {" ".join(f"{c:.2f}" for c in ours.computed)}; '
          f'load {_load()}', flush=True)
    del ours

  if not args.skip_faiss and 'faiss' not in results:
    km = faiss.Kmeans(d, k, niter=args.iters, spherical=True, seed=args.seed,
                      max_points_per_centroid=all_points, verbose=False)
    t = time.perf_counter()
    km.train(x, init_centroids=init)
    train = time.perf_counter() - t
    km.index.search(x, 1)  # the assignment of every point, as fit returns it
    total = time.perf_counter() - t
    results['faiss'] = dict(seconds=total, train=train, centroids=km.centroids.copy())
  if 'faiss' in results:
    r = results['faiss']
    print(f'faiss {faiss.__version__}: train {r["train"]:.1f} s, train + assign '
          f'{r["seconds"]:.1f} s, {faiss.omp_get_max_threads()} threads; load {_load()}',
          flush=True)

  for r in results.values():
    r['cos'] = _mean_best_cosine(x, r['centroids'])
    r['sse'] = n * (2.0 - 2.0 * r['cos'])  # faiss's objective: sum of squared L2 distances

  print()
  print('| job | points x dim | k | iters | ours (s) | faiss train + assign (s) | faiss / ours '
        '| mean cos ours / faiss | SSE ours vs faiss | notes |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  ours, ref = results.get('ours'), results.get('faiss')
  cell = lambda r, key, fmt: format(r[key], fmt) if r else 'n/a'
  ratio = f'{ref["seconds"] / ours["seconds"]:.2f}x' if ours and ref else 'n/a'
  cos = (f'{ours["cos"]:.5f} / {ref["cos"]:.5f}' if ours and ref else
         f'{(ours or ref)["cos"]:.5f}')
  sse = f'{100 * (ours["sse"] / ref["sse"] - 1):+.3f}%' if ours and ref else 'n/a'
  faiss_cell = (f'{ref["train"]:.1f} + {ref["seconds"] - ref["train"]:.1f}' if ref else 'n/a')
  rows = (f'similarity rows computed: {ours["computed"]:.2f} of {args.iters + 1} passes; '
          if ours else '')
  mode = 'all rows' if args.no_prune else 'bounds'
  mode += ', interleaved' if callback is not None else ''
  print(f'| k-means ({args.data}, {args.matmul_dtype}, {mode}, chunk {args.chunk}) | {n} x {d} | {k} '
        f'| {args.iters} | {cell(ours, "seconds", ".1f")} | {faiss_cell} | {ratio} | {cos} '
        f'| {sse} | {rows}2 cores, load {_load()} |')
  print(f'\ncommand: `{_command()}`')


def bench_features(args):
  from tads_jax.scoring import registry, relevance

  n, d, b = args.points, args.dim, args.chunk
  rng = np.random.default_rng(args.seed)
  unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
  image_emb = unit(rng.standard_normal((n, d), dtype=np.float32))
  text_emb = unit(rng.standard_normal((n, d), dtype=np.float32))
  flipped_emb = unit(image_emb + 0.1 * rng.standard_normal((n, d), dtype=np.float32))
  # Tasks alternate: one prototype set for both sides (classification), or a pair.
  tasks = []
  for t in range(args.tasks):
    protos = unit(rng.standard_normal((2, args.prototypes, d), dtype=np.float32))
    tasks.append(protos[0] if t % 2 == 0 else (protos[0], protos[1]))
  cross = ['clip_score', 'flipped_clip_score', 'caption_specificity']

  def ours(lo, hi):
    size = hi - lo
    # Fixed shape, one compile: only the last chunk is padded.
    pad = lambda a: a[lo:hi] if size == b else np.pad(a[lo:hi], ((0, b - size), (0, 0)))
    img, txt, flp = pad(image_emb), pad(text_emb), pad(flipped_emb)
    mask = np.arange(b) < size
    rel = relevance.relevance_vector(img, txt, tasks, top_m=args.top_m)
    out = registry.compute(cross, image_emb=img, text_emb=txt, flipped_image_emb=flp,
                           mask=mask)
    return np.concatenate([np.asarray(rel), np.stack([out[c] for c in cross], 1)], 1)[:size]

  def reference(lo, hi):
    img, txt, flp = image_emb[lo:hi], text_emb[lo:hi], flipped_emb[lo:hi]
    cols = []
    for protos in tasks:
      pi, pt = protos if isinstance(protos, tuple) else (protos, protos)
      for emb, p in ((img, pi), (txt, pt)):
        sims = emb @ p.T
        m = min(args.top_m, p.shape[0])
        cols.append(np.partition(sims, -m, axis=1)[:, -m:].mean(axis=1))
    clip = np.sum(img * txt, axis=1)
    background = (txt @ img.sum(axis=0) - clip) / max(hi - lo - 1, 1)
    cols += [clip, np.sum(flp * txt, axis=1), clip - background]
    return np.stack(cols, axis=1)

  def run(fn):
    fn(0, min(b, n))  # compile / warm up
    t = time.perf_counter()
    outs = [fn(lo, min(lo + b, n)) for lo in range(0, n, b)]
    return time.perf_counter() - t, np.concatenate(outs)

  ours_s, ours_out = run(ours)
  ref_s, ref_out = run(reference)
  err = float(np.abs(ours_out - ref_out).max())
  if err > 1e-4:
    raise SystemExit(f'features: ours and numpy disagree by {err}')
  peak = _matmul_peak(d)
  flops_per_sample = 2 * 2 * d * args.tasks * args.prototypes + 8 * d  # two sides + cross
  rate = n / ours_s
  print()
  print('| job | pool | chunk | tasks x prototypes | top-m | ours (samples/s) '
        '| numpy (samples/s) | ours / numpy | of f32 matmul peak | notes |')
  print('|---|---|---|---|---|---|---|---|---|---|')
  print(f'| features (relevance + cross-modal) | {n} x {d} | {b} | {args.tasks} x '
        f'{args.prototypes} | {args.top_m} | {rate:,.0f} | {n / ref_s:,.0f} '
        f'| {ref_s / ours_s:.2f}x | {100 * rate * flops_per_sample / peak:.0f}% of '
        f'{peak / 1e9:.0f} GFLOP/s | max diff {err:.1e}; 2 cores, load {_load()} |')
  print(f'\ncommand: `{_command()}`')


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--job', choices=('kmeans', 'features'), default='kmeans')
  parser.add_argument('--points', type=int, default=1_000_000)
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--k', type=int, default=1000, help='k-means clusters')
  parser.add_argument('--iters', type=int, default=20, help='k-means iterations')
  parser.add_argument('--chunk', type=int, default=None,
                      help='rows per jitted block (default: 2048 k-means, 4096 features)')
  parser.add_argument('--matmul-dtype', choices=('float32', 'bfloat16'), default='float32',
                      help='k-means assignment matmul inputs (accumulation is float32)')
  parser.add_argument('--data', choices=('clustered', 'isotropic'), default='clustered',
                      help='k-means data: a mixture of 2k directions, or isotropic noise')
  parser.add_argument('--no-prune', action='store_true',
                      help='compute every similarity row in every pass (no bounds)')
  parser.add_argument('--sequential', action='store_true',
                      help='k-means: run ours, then faiss (default: alternate iterations)')
  parser.add_argument('--skip-faiss', action='store_true')
  parser.add_argument('--skip-ours', action='store_true')
  parser.add_argument('--tasks', type=int, default=5)
  parser.add_argument('--prototypes', type=int, default=100, help='per task')
  parser.add_argument('--top-m', type=int, default=3)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  if args.chunk is None:
    args.chunk = 2048 if args.job == 'kmeans' else 4096
  (bench_kmeans if args.job == 'kmeans' else bench_features)(args)


if __name__ == '__main__':
  main()
