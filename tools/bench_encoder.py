r"""Encoder throughput: our Flax CLIP against transformers' PyTorch CLIPModel, same CPU.

For each model config (--models) and compute dtype (--dtypes), one random-weight
transformers CLIPModel is built and converted to our params with hf_convert, so both sides
run the same weights on the same random pixels and token ids at the same batch size. Ours
runs through tads_jax.embedding.Encoder (the jitted, masked, fixed-shape step the embed
stage uses; host-to-device copy and read-back included); PyTorch runs
get_image_features / get_text_features under inference_mode. bfloat16 means bf16 weights
and matmul inputs on both sides (ours accumulates every dot in float32); outputs are
compared as a sanity check (min cosine between the two sides' embeddings).

The box is shared, so the two sides are timed alternately, batch by batch, and the
medians compared; only ratios from one run mean anything. FLOP/s are matmul FLOPs of the
tower (counted from the config) over the median time, and the peak is the best GEMM rate
of numpy, jax and torch measured in the same run: float32 for float32 rows; for bfloat16
rows, the best of jax (bf16 inputs, float32 result) and torch bf16 GEMMs.

  nice python tools/bench_encoder.py                              # everything (minutes)
  nice python tools/bench_encoder.py --models small --dtypes float32 --iters 3
  XLA_FLAGS=--xla_cpu_enable_fast_math=true nice python tools/bench_encoder.py ...
"""

import argparse
import os
import platform
import shlex
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _command() -> str:
  flags = os.environ.get('XLA_FLAGS')
  prefix = f'XLA_FLAGS={shlex.quote(flags)} ' if flags else ''
  return prefix + 'python ' + ' '.join(shlex.quote(a) for a in sys.argv)


def _load() -> str:
  return '/'.join(f'{v:.1f}' for v in os.getloadavg())


def _cpu() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      info = f.read()
  except OSError:
    return platform.processor()
  name = next((line.split(':', 1)[1].strip() for line in info.splitlines()
               if line.startswith('model name')), platform.processor())
  flags = next((line.split(':', 1)[1].split() for line in info.splitlines()
                if line.startswith('flags')), [])
  simd = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile') if f in flags]
  return f'{name}, {os.cpu_count()} cpus, {" ".join(simd) or "no avx2"}'


def hf_config(c):
  """transformers.CLIPConfig with the shapes of our CLIPConfig `c`."""
  import transformers  # pylint: disable=import-outside-toplevel
  return transformers.CLIPConfig(
      text_config=dict(vocab_size=c.vocab_size, hidden_size=c.text_width,
                       intermediate_size=c.text_mlp_dim, num_hidden_layers=c.text_layers,
                       num_attention_heads=c.text_heads,
                       max_position_embeddings=c.context_length, hidden_act=c.text_act,
                       eos_token_id=c.eos_token_id, bos_token_id=c.eos_token_id - 1,
                       pad_token_id=c.eos_token_id),
      vision_config=dict(hidden_size=c.vision_width, intermediate_size=c.vision_mlp_dim,
                         num_hidden_layers=c.vision_layers,
                         num_attention_heads=c.vision_heads, image_size=c.image_size,
                         patch_size=c.patch_size, hidden_act=c.vision_act),
      projection_dim=c.embed_dim)


def tower_flops(c, tower: str) -> float:
  """Matmul FLOPs (2 x multiply-adds) of one example through a tower."""
  if tower == 'image':
    t, d, f, layers = c.num_patches + 1, c.vision_width, c.vision_mlp_dim, c.vision_layers
    stem = 2 * c.num_patches * (c.patch_size ** 2 * 3) * d
  else:
    t, d, f, layers = c.context_length, c.text_width, c.text_mlp_dim, c.text_layers
    stem = 0
  per_layer = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * f
  return float(stem + layers * per_layer + 2 * d * c.embed_dim)


class Peak:
  """This machine's matmul peak per dtype: the best GEMM rate seen during the run.

  The box is shared, so one early measurement can land in a busy moment; the fastest
  library per dtype is chosen once, then sampled again in every timing round, and the
  best sample counts.
  """

  def __init__(self, n: int, budget: float):
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    ja16, jb16 = ja.astype(jnp.bfloat16), jb.astype(jnp.bfloat16)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ta16, tb16 = ta.bfloat16(), tb.bfloat16()
    f32_dot = jax.jit(lambda x, y: x @ y)
    bf16_dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    bf16_bf16 = jax.jit(lambda x, y: jnp.dot(x, y))
    self.cases = {
        ('numpy', 'float32'): lambda: a @ b,
        ('jax', 'float32'): lambda: f32_dot(ja, jb).block_until_ready(),
        ('torch', 'float32'): lambda: ta @ tb,
        ('jax (f32 result)', 'bfloat16'): lambda: bf16_dot(ja16, jb16).block_until_ready(),
        ('jax (bf16 result)', 'bfloat16'): lambda: bf16_bf16(ja16, jb16).block_until_ready(),
        ('torch', 'bfloat16'): lambda: ta16 @ tb16,
    }
    self.flops = 2.0 * n ** 3
    self.best = {}
    with torch.inference_mode():
      for key, fn in self.cases.items():
        fn()
        spent = 0.0
        for _ in range(3):
          spent += self.sample(key)
          if spent > budget:
            break

  def sample(self, key) -> float:
    t = time.perf_counter()
    self.cases[key]()
    dt = time.perf_counter() - t
    self.best[key] = max(self.best.get(key, 0.0), self.flops / dt)
    return dt

  def fastest(self, dtype: str):
    return max((k for k in self.best if k[1] == dtype), key=self.best.get)

  def __getitem__(self, dtype: str) -> float:
    return self.best[self.fastest(dtype)]


def timed_pairs(ours, theirs, warmup: int, iters: int, budget: float, probe=None):
  """Alternates ours() and theirs() (and a peak `probe`); returns per-call seconds.

  Stops early when a side has used `budget` seconds (slow bf16 PyTorch on CPUs without
  bf16 hardware), keeping at least one timed call of each.
  """
  for _ in range(warmup):
    ours()
    if theirs is not None:
      theirs()
  times_ours, times_theirs = [], []
  probe = probe or (lambda: None)
  for _ in range(iters):
    t = time.perf_counter()
    ours()
    times_ours.append(time.perf_counter() - t)
    probe()
    if theirs is not None:
      t = time.perf_counter()
      theirs()
      times_theirs.append(time.perf_counter() - t)
      probe()
    if max(sum(times_ours), sum(times_theirs)) > budget:
      break
  return times_ours, times_theirs


def bench_model(name, dtype, args, rows, peak):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  from tads_jax import embedding  # pylint: disable=import-outside-toplevel
  from tads_jax.models import api, clip, hf_convert  # pylint: disable=import-outside-toplevel
  from tads_jax.models import preprocess  # pylint: disable=import-outside-toplevel

  c = clip.get_config(name)
  torch.manual_seed(args.seed)
  model = transformers.CLIPModel(hf_config(c)).eval()
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = hf_convert.convert_state_dict(state, c)
  jdtype = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[dtype]
  loaded = api.LoadedCLIP(c, params, None, preprocess.default_config(c.image_size),
                          dtype=jdtype, param_dtype=jdtype, batch_size=args.batch)
  encoder = embedding.Encoder(loaded)
  if dtype == 'bfloat16':
    model = model.to(torch.bfloat16)
  tdtype = torch.bfloat16 if dtype == 'bfloat16' else torch.float32

  rng = np.random.default_rng(args.seed)
  b = args.batch
  pixels = rng.standard_normal((b, c.image_size, c.image_size, 3), dtype=np.float32)
  ids = rng.integers(0, c.eos_token_id - 1, size=(b, c.context_length)).astype(np.int32)
  ids[np.arange(b), rng.integers(2, c.context_length, b)] = c.eos_token_id
  ids[:, 0] = c.eos_token_id - 1
  image_batch = next(embedding.array_batches(pixels, b))
  text_batch = next(embedding.array_batches(ids, b))
  torch_pixels = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()).to(tdtype)
  torch_ids = torch.from_numpy(ids.astype(np.int64))

  def features(out):
    out = getattr(out, 'pooler_output', out)
    out = out.float().numpy()
    return out / np.linalg.norm(out, axis=-1, keepdims=True)

  towers = {
      'image': (lambda: encoder.encode_image_batches([image_batch])[1],
                lambda: features(model.get_image_features(pixel_values=torch_pixels))),
      'text': (lambda: encoder.encode_text_batches([text_batch])[1],
               lambda: features(model.get_text_features(input_ids=torch_ids))),
  }
  for tower in args.towers:
    ours, theirs = towers[tower]
    with torch.inference_mode():
      agree = float(np.min(np.sum(ours() * theirs(), axis=-1))) if not args.skip_torch \
          else float('nan')
      fastest = {d: peak.fastest(d) for d in ('float32', 'bfloat16')}
      t_ours, t_theirs = timed_pairs(
          ours, None if args.skip_torch else theirs, args.warmup, args.iters, args.budget,
          probe=lambda: [peak.sample(k) for k in fastest.values()])
    ours_rate = b / np.median(t_ours)
    theirs_rate = b / np.median(t_theirs) if t_theirs else float('nan')
    flops = tower_flops(c, tower)
    row = dict(model=name, tower=tower, dtype=dtype, batch=b, ours=ours_rate,
               torch=theirs_rate, ours_n=len(t_ours), torch_n=len(t_theirs),
               ours_flops=ours_rate * flops, torch_flops=theirs_rate * flops,
               gflop=flops / 1e9, agree=agree, load=_load())
    rows.append(row)
    print(f'{name} {tower} {dtype}: ours {ours_rate:.2f}/s ({len(t_ours)} batches), '
          f'PyTorch {theirs_rate:.2f}/s ({len(t_theirs)}), min cosine {agree:.5f}, '
          f'load {_load()}', flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default='vit_b32,small',
                      help='comma-separated tads_jax.models.clip presets')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--towers', default='image,text')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--iters', type=int, default=5, help='timed batches per side')
  parser.add_argument('--budget', type=float, default=60.0,
                      help='stop timing a side after this many seconds (>= 1 batch)')
  parser.add_argument('--peak-size', type=int, default=1024, help='GEMM side for the peak')
  parser.add_argument('--skip-torch', action='store_true')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  args.towers = [t for t in args.towers.split(',') if t]
  for t in args.towers:
    if t not in ('image', 'text'):
      parser.error(f'--towers: unknown tower {t!r}')
  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  print(f'cpu: {_cpu()}; jax {jax.__version__} ({jax.device_count()} device), torch '
        f'{torch.__version__} ({torch.get_num_threads()} threads); load {_load()}',
        flush=True)
  peak = Peak(args.peak_size, budget=10.0)
  print('matmul (GFLOP/s, best of a few %d^3 GEMMs): %s' % (args.peak_size, ', '.join(
      f'{lib} {d} {v / 1e9:.0f}' for (lib, d), v in peak.best.items())), flush=True)
  rows = []
  for name in args.models.split(','):
    for dtype in args.dtypes.split(','):
      bench_model(name, dtype, args, rows, peak)

  print()
  print('| model | tower | dtype | batch | ours (items/s) | PyTorch (items/s) | ours / PyTorch '
        '| GFLOP/item | ours GFLOP/s (% of peak) | PyTorch GFLOP/s (% of peak) '
        '| min cosine | load |')
  print('|---|---|---|---|---|---|---|---|---|---|---|---|')
  for r in rows:
    p = peak[r['dtype']]
    print(f"| {r['model']} | {r['tower']} | {r['dtype']} | {r['batch']} | {r['ours']:.2f} "
          f"| {r['torch']:.2f} | {r['ours'] / r['torch']:.2f} | {r['gflop']:.2f} "
          f"| {r['ours_flops'] / 1e9:.0f} ({100 * r['ours_flops'] / p:.0f}%) "
          f"| {r['torch_flops'] / 1e9:.0f} ({100 * r['torch_flops'] / p:.0f}%) "
          f"| {r['agree']:.4f} | {r['load']} |")
  print(f"\npeak: float32 {peak['float32'] / 1e9:.0f} GFLOP/s ({peak.fastest('float32')[0]}), "
        f"bfloat16 {peak['bfloat16'] / 1e9:.0f} GFLOP/s ({peak.fastest('bfloat16')[0]}): best "
        f"{args.peak_size}^3 GEMM seen in the run; cpu: {_cpu()}")
  print(f'\ncommand: `{_command()}`')


if __name__ == '__main__':
  main()
