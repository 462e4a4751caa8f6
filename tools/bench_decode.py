r"""Image decode throughput: today's shard reader against the Grain pipeline, same tars.

Today's reader is what the stages run: webdataset.iter_shard(decode=True) over each shard,
then images.resize_center_crop to 224 (the embed stage's CLIP input) and to 64 (the
features stage's pool.image_size), one sample at a time in this process. The Grain path is
grain_source.TarShardSource (its header index built inside the timing) -> DecodeAndResize
to the same two sizes -> batches, with `--workers` worker processes (0: this process) and
`--read-threads` threads per process. Both paths must give the same samples (uids and a
checksum of both resized images) and the same skip counts, or the benchmark stops.

The tars are made here: JPEG photographs-like images (a smooth random colour field with
grain, sides drawn from --min-side..--max-side), captions and json uids, with one sample
in 100 a cut JPEG (corrupt_image) and one in 100 without caption (missing_caption).

Timed: each configuration `--rounds` times, alternating, best round kept (other jobs share
this machine's cores; the load average is printed beside each figure), in wall-clock
samples/s and in samples per CPU-second (this process and its workers: what the work
costs, whatever else runs). Grain's time includes building its index and starting its
worker processes; 'first batch' says how much of it that was. A second table times reading
alone (no decode), which is what the embed stage's shard_images does.

  python tools/bench_decode.py
  python tools/bench_decode.py --samples 2000 --shards 4 --workers 0 2 --read-threads 1 2
"""

import argparse
import collections
import io
import os
import resource
import shlex
import sys
import tempfile
import time
import zlib

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.data import grain_source  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.data import images  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.data import tar_writer  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.data import webdataset  # noqa: E402  pylint: disable=wrong-import-position

SIZES = (224, 64)


def _command() -> str:
  return 'python ' + ' '.join(shlex.quote(a) for a in sys.argv)


def _load() -> str:
  return '/'.join(f'{x:.1f}' for x in os.getloadavg())


def _cpu_seconds() -> float:
  """User + system time of this process and its reaped children (Grain's workers, which
  are joined when their iterator closes)."""
  total = 0.0
  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
    usage = resource.getrusage(who)
    total += usage.ru_utime + usage.ru_stime
  return total


# ---------------------------------------------------------------------------------------
# The tars.


def _photo(rng, grain_texture: np.ndarray, min_side: int, max_side: int) -> np.ndarray:
  """uint8 [H, W, 3]: a bicubic-upsampled random colour field plus film-grain-like noise,
  so that JPEG sizes and decode times are those of photographs rather than flat shapes."""
  h, w = (int(x) for x in rng.integers(min_side, max_side + 1, size=2))
  low = rng.integers(0, 256, (int(rng.integers(3, 10)), int(rng.integers(3, 10)), 3),
                     dtype=np.uint8)
  field = np.asarray(Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC),
                     np.int16)  # [H, W, 3]
  top, left = (int(x) for x in rng.integers(0, grain_texture.shape[0] - max_side, size=2))
  noise = grain_texture[top:top + h, left:left + w]  # [H, W, 3] int16
  return np.clip(field + noise, 0, 255).astype(np.uint8)


def make_shards(out: str, samples: int, shards: int, min_side: int, max_side: int,
                seed: int) -> list[str]:
  rng = np.random.default_rng(seed)
  texture = rng.normal(0, 10, (max_side + 256, max_side + 256, 3)).astype(np.int16)
  per_shard = -(-samples // shards)
  paths = []
  for shard in range(shards):
    rows = []
    for i in range(shard * per_shard, min(samples, (shard + 1) * per_shard)):
      img = Image.fromarray(_photo(rng, texture, min_side, max_side))
      buf = io.BytesIO()
      img.save(buf, format='JPEG', quality=90)
      jpg = buf.getvalue()
      if i % 100 == 37:
        jpg = jpg[:len(jpg) // 2]  # corrupt_image
      files = {'jpg': jpg, 'txt': f'a photograph, number {i}',
               'json': {'uid': f'{i:032x}', 'width': img.width, 'height': img.height}}
      if i % 100 == 71:
        del files['txt']  # missing_caption
      rows.append((f'{i:09d}', files))
    path = os.path.join(out, f'{shard:08d}.tar')
    tar_writer.write_shard(path, rows)
    paths.append(path)
  return paths


# ---------------------------------------------------------------------------------------
# The two readers. Each returns ([(uid, checksum of both images)], skips).


def _checksum(*arrays: np.ndarray) -> int:
  value = 0
  for array in arrays:
    value = zlib.adler32(np.ascontiguousarray(array).data, value)
  return value


def todays_reader(paths: list[str]):
  skips, out = collections.Counter(), []
  for path in paths:
    for sample in webdataset.iter_shard(path, skips, decode=True):
      resized = [images.resize_center_crop(sample.image, size) for size in SIZES]
      out.append((sample.uid, _checksum(*resized)))
  return out, skips, None


def grain_reader(paths: list[str], workers: int, threads: int, batch_size: int):
  start = time.perf_counter()
  source = grain_source.TarShardSource(paths)
  dataset = grain_source.decode_pipeline(source, batch_size, image_sizes=SIZES,
                                         worker_count=workers, read_threads=threads)
  skips, out, first = collections.Counter(), [], None
  iterator = iter(dataset)
  try:
    for batch in iterator:
      if first is None:
        first = time.perf_counter() - start
      grain_source.count_skips(batch, skips)
      for row in np.flatnonzero(batch['skip'] == ''):
        out.append((str(batch['uid'][row]),
                    _checksum(*(batch[f'image_{size}'][row] for size in SIZES))))
  finally:
    iterator.close()
  return out, skips, first


def todays_bytes(paths: list[str]):
  skips, out = collections.Counter(), []
  for path in paths:
    out.extend((s.uid, zlib.adler32(s.image_bytes))
               for s in webdataset.iter_shard(path, skips, decode=False))
  return out, skips, None


def grain_bytes(paths: list[str]):
  source = grain_source.TarShardSource(paths)
  skips, out = collections.Counter(), []
  for record in grain_source.iter_records(source):
    if record['skip']:
      skips[record['skip']] += 1
    else:
      out.append((record['uid'], zlib.adler32(record['image_bytes'])))
  return out, skips, None


def _time_rounds(configs: dict, rounds: int) -> tuple[dict, tuple]:
  """{name: (best seconds, first-batch seconds, CPU seconds, load; of the best round)} and
  the output; checks that every configuration gives the first one's output."""
  best, reference = {}, None
  for _ in range(rounds):
    for name, run in configs.items():
      cpu, start = _cpu_seconds(), time.perf_counter()
      out, skips, first = run()
      seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
      if reference is None:
        reference = (out, skips)
      elif (out, skips) != reference:
        raise SystemExit(f'{name}: output differs from {next(iter(configs))} '
                         f'({len(out)} vs {len(reference[0])} samples, skips {dict(skips)} '
                         f'vs {dict(reference[1])})')
      if name not in best or seconds < best[name][0]:
        best[name] = (seconds, first, cpu, _load())
  return best, reference


def _table(title: str, best: dict, records: int, baseline: str):
  print(f'\n{title}\n')
  print('| reader | samples/s | vs today | samples per CPU-s | vs today | seconds '
        '| first batch (s) | load 1/5/15 min |')
  print('|---|---|---|---|---|---|---|---|')
  base_seconds, _, base_cpu, _ = best[baseline]
  for name, (seconds, first, cpu, load) in best.items():
    first_text = '-' if first is None else f'{first:.2f}'
    print(f'| {name} | {records / seconds:,.0f} | {base_seconds / seconds:.2f} '
          f'| {records / cpu:,.0f} | {base_cpu / cpu:.2f} | {seconds:.2f} | {first_text} '
          f'| {load} |')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--samples', type=int, default=8000)
  parser.add_argument('--shards', type=int, default=8)
  parser.add_argument('--min-side', type=int, default=256)
  parser.add_argument('--max-side', type=int, default=512)
  parser.add_argument('--batch-size', type=int, default=64)
  parser.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
  parser.add_argument('--read-threads', type=int, nargs='+', default=[1])
  parser.add_argument('--rounds', type=int, default=2, help='best of this many runs')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--out', help='directory for the tars (default: a temporary one)')
  args = parser.parse_args(argv)
  if min(args.samples, args.shards, args.rounds, args.batch_size, args.min_side) < 1 or (
      args.max_side < args.min_side):
    parser.error('sizes and counts must be positive, --max-side >= --min-side')

  print(machine.cpu_model())
  print(f'command: {_command()}')
  with tempfile.TemporaryDirectory(prefix='bench_decode_') as tmp:
    out = args.out or tmp
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    paths = make_shards(out, args.samples, args.shards, args.min_side, args.max_side,
                        args.seed)
    mib = sum(os.path.getsize(p) for p in paths) / 2 ** 20
    print(f'tars: {args.samples} samples in {args.shards} shards, {mib:.0f} MiB, JPEG '
          f'q90 {args.min_side}-{args.max_side} px, made in '
          f'{time.perf_counter() - start:.1f} s; batch {args.batch_size}; '
          f'resized to {" and ".join(map(str, SIZES))}; best of {args.rounds}')

    decode = {'today: iter_shard(decode=True) + resize': lambda: todays_reader(paths)}
    for workers in args.workers:
      for threads in args.read_threads:
        decode[f'grain, worker_count={workers}, read_threads={threads}'] = (
            lambda w=workers, t=threads: grain_reader(paths, w, t, args.batch_size))
    best, (rows, skips) = _time_rounds(decode, args.rounds)
    print(f'same output: {len(rows)} samples, skips {dict(sorted(skips.items()))}, in '
          'every configuration')
    _table('Decode + resize to 224 and 64:', best, args.samples, next(iter(decode)))

    read = {'today: iter_shard(decode=False)': lambda: todays_bytes(paths),
            'grain source records (index + pread)': lambda: grain_bytes(paths)}
    best, _ = _time_rounds(read, args.rounds)
    _table('Reading only (no decode):', best, args.samples, next(iter(read)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
