r"""The pixel proxy's training speed here and in PyTorch, side by side on this CPU.

The model is the pixel proxy of configs/default.py (evaluate.pixels: the reference
encoder's CNN image tower at 64 px and its text tower, 24 tokens; `--tower vit`: the
conv-stem ViT at 32 px of configs/pixels_vit.py) with the vocabulary of the default world's
tokenizer at most (encoder.vocab_size); the PyTorch side restates it in plain torch (3x3
Conv2d, GroupNorm and ReLU layers for the CNN; a Conv2d stem with a LayerNorm over
channels and ReLU for the ViT; pre-LN transformer blocks with
scaled_dot_product_attention, EOS pooling, bias-free projections), with the same loss (the
symmetric CLIP loss that masks a data row's other copies in the batch) and the same AdamW
(decay on matrices only, b2 0.98, eps 1e-6, warmup then cosine), float32, on the same
shapes and batches. Each step does what tads_jax.train's loop does: gather a batch of uint8
images and token ids from a host pool (rows drawn with repeats, as a subset repeats
samples), hand it to the framework, run forward, backward and the update. torch gets as
many threads as XLA's CPU client uses (the cores this process may run on).

Timed: `--steps` steps after `--warmup` (compilation; torch's first steps), alternating
ours / torch `--rounds` times so that a load change on a shared machine hits both; the best
round of each is reported. Each round also prints the minor page faults per timed step: a
step of ours touches its temporaries in memory freshly mapped from the kernel (glibc maps
allocations over 32 MB afresh), and on this machine those faults cost ~0.7 us each. With
glibc's allocator told to keep its memory (the last command) they mostly go away.

  python tools/bench_pixel_proxy.py
  python tools/bench_pixel_proxy.py --steps 20 --rounds 3
  GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:\
glibc.malloc.trim_threshold=4000000000 python tools/bench_pixel_proxy.py
"""

import argparse
import math
import os
import resource
import shlex
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402  pylint: disable=wrong-import-position


def _command() -> str:
  return 'python ' + ' '.join(shlex.quote(a) for a in sys.argv)


def _load() -> str:
  return '/'.join(f'{v:.2f}' for v in os.getloadavg())


def _page_faults() -> int:
  """Minor page faults of this process so far. XLA:CPU allocates a step's temporaries
  (hundreds of MB) afresh each step, and glibc maps allocations that large from the kernel
  each time, so every page they touch faults; torch's reuse its freed blocks."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _cpu_flags() -> str:
  """lscpu's SIMD flags that decide matmul speed (the rest of the list says nothing here)."""
  import subprocess  # pylint: disable=import-outside-toplevel
  try:
    out = subprocess.run(['lscpu'], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'
  fields = dict(line.split(':', 1) for line in out.splitlines() if ':' in line)
  flags = fields.get('Flags', '').split()
  return ' '.join(f for f in flags if f.startswith(('avx', 'amx', 'fma', 'sse4', 'f16c')))


def train_config(vocab_size: int, tower: str = 'cnn'):
  """The pixel proxy's TrainConfig as the evaluate stage builds it: configs/default.py's
  (the reference encoder's CNN tower at 64 px) or, for 'vit', configs/pixels_vit.py's."""
  from configs import default, pixels_vit  # pylint: disable=import-outside-toplevel
  from tads_jax.stages import evaluate  # pylint: disable=import-outside-toplevel
  c = (pixels_vit if tower == 'vit' else default).get_config()
  c.evaluate.proxy = 'pixels'
  return evaluate.train_config(c, 0, (vocab_size, vocab_size - 1))


def data(cfg, pool: int, seed: int = 0):
  """Host pool: uint8 images [P, S, S, 3], token ids [P, L] ending in EOS at random
  lengths, and the rows of an 'epoch' drawn with repeats."""
  c = cfg.clip_config()
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (pool, c.image_size, c.image_size, 3), dtype=np.uint8)
  ids = rng.integers(1, c.eos_token_id, (pool, c.context_length)).astype(np.int32)
  ends = rng.integers(3, c.context_length, pool)
  ids[np.arange(pool), ends] = c.eos_token_id
  rows = rng.integers(0, pool, pool)  # repeats, as a subset that repeats samples
  return images, ids, rows


# ---------------------------------------------------------------------------------------
# Ours.


def run_ours(cfg, images, ids, rows, warmup: int, steps: int) -> tuple[float, int]:
  """Seconds and minor page faults for `steps` steps of tads_jax.train's jitted step (mesh
  of this host's CPU device), after `warmup` steps; each batch gathered and put on the
  device as train() does."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  from tads_jax import sharding  # pylint: disable=import-outside-toplevel
  from tads_jax import train  # pylint: disable=import-outside-toplevel

  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  # What train.train runs: the cached jitted step with its shardings and donation.
  program = train._program(train._compute_key(cfg), None, mesh)  # pylint: disable=protected-access
  batch_sh = sharding.batch_sharding(mesh)
  with jax.set_mesh(mesh), nn.logical_axis_rules(program.rules):
    params = program.init(jax.random.key(cfg.seed, impl='rbg'))
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             opt_state=program.init_opt(params))
    batches = train.batch_rows(rows, cfg.batch_size, cfg.seed)
    weights = np.ones(cfg.batch_size, np.float32)

    def step(state):
      idx = next(batches)
      return program.step(state, jax.device_put(images[idx], batch_sh),
                          jax.device_put(ids[idx], batch_sh),
                          jax.device_put(weights, batch_sh),
                          jax.device_put(idx.astype(np.int32), batch_sh))

    for _ in range(warmup):
      state, metrics = step(state)
    jax.block_until_ready(metrics)
    faults, start = _page_faults(), time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state)
    jax.block_until_ready((state, metrics))
    seconds, faults = time.perf_counter() - start, _page_faults() - faults
  if not math.isfinite(float(metrics['loss'])):
    raise RuntimeError(f'ours: loss {float(metrics["loss"])}')
  return seconds, faults


# ---------------------------------------------------------------------------------------
# PyTorch.


def torch_model(cfg):
  """The same CLIP in plain torch (float32)."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn as tnn  # pylint: disable=import-outside-toplevel
  from torch.nn import functional as F  # pylint: disable=import-outside-toplevel

  c = cfg.clip_config()
  act = {'gelu': lambda x: F.gelu(x), 'quick_gelu': lambda x: x * torch.sigmoid(1.702 * x),
         'gelu_new': lambda x: F.gelu(x, approximate='tanh'),
         'gelu_pytorch_tanh': lambda x: F.gelu(x, approximate='tanh')}

  class Block(tnn.Module):
    def __init__(self, width, heads, mlp, act_name, eps, causal):
      super().__init__()
      self.heads, self.causal, self.act = heads, causal, act[act_name]
      self.ln1, self.ln2 = tnn.LayerNorm(width, eps=eps), tnn.LayerNorm(width, eps=eps)
      self.qkv, self.out = tnn.Linear(width, 3 * width), tnn.Linear(width, width)
      self.fc1, self.fc2 = tnn.Linear(width, mlp), tnn.Linear(mlp, width)

    def forward(self, x):  # [B, N, D]
      b, n, d = x.shape
      q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(
          2, 0, 3, 1, 4)  # 3 x [B, H, N, Dh]
      y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
      x = x + self.out(y.transpose(1, 2).reshape(b, n, d))
      return x + self.fc2(self.act(self.fc1(self.ln2(x))))

  class CNNVision(tnn.Module):
    """clip.CNNTower: Conv2d (padding 1, no bias), GroupNorm, ReLU; mean; projection."""
    def __init__(self):
      super().__init__()
      layers, prev = [], 3
      for out, stride in c.vision_cnn:
        layers += [tnn.Conv2d(prev, out, 3, stride=stride, padding=1, bias=False),
                   tnn.GroupNorm(c.vision_cnn_groups, out, eps=c.vision_ln_eps), tnn.ReLU()]
        prev = out
      self.body = tnn.Sequential(*layers)
      self.proj = tnn.Linear(prev, c.embed_dim, bias=False)

    def forward(self, x):  # [B, 3, S, S] normalized
      return self.proj(self.body(x).mean(dim=(2, 3)))

  class Vision(tnn.Module):
    def __init__(self):
      super().__init__()
      chans, prev = [], 3
      self.convs, self.norms = tnn.ModuleList(), tnn.ModuleList()
      for out in c.stem_channels:
        self.convs.append(tnn.Conv2d(prev, out, 3, stride=2, padding=1, bias=False))
        self.norms.append(tnn.LayerNorm(out, eps=c.vision_ln_eps))
        chans.append(out)
        prev = out
      self.stem_proj = tnn.Linear(prev, c.vision_width, bias=False)
      self.cls = tnn.Parameter(0.02 * torch.randn(c.vision_width))
      self.pos = tnn.Parameter(0.02 * torch.randn(c.num_patches + 1, c.vision_width))
      self.pre_ln = tnn.LayerNorm(c.vision_width, eps=c.vision_ln_eps)
      self.blocks = tnn.ModuleList([
          Block(c.vision_width, c.vision_heads, c.vision_mlp_dim, c.vision_act,
                c.vision_ln_eps, False) for _ in range(c.vision_layers)])
      self.post_ln = tnn.LayerNorm(c.vision_width, eps=c.vision_ln_eps)
      self.proj = tnn.Linear(c.vision_width, c.embed_dim, bias=False)

    def forward(self, x):  # [B, 3, S, S] normalized
      for conv, norm in zip(self.convs, self.norms):  # LayerNorm over channels, per pixel
        x = F.relu(norm(conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
      x = self.stem_proj(x.flatten(2).transpose(1, 2))  # [B, N, D], row-major as ours
      x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.pos
      x = self.pre_ln(x)
      for block in self.blocks:
        x = block(x)
      return self.proj(self.post_ln(x[:, 0]))

  class Text(tnn.Module):
    def __init__(self):
      super().__init__()
      self.tok = tnn.Embedding(c.vocab_size, c.text_width)
      self.pos = tnn.Parameter(0.02 * torch.randn(c.context_length, c.text_width))
      self.blocks = tnn.ModuleList([
          Block(c.text_width, c.text_heads, c.text_mlp_dim, c.text_act, c.text_ln_eps, True)
          for _ in range(c.text_layers)])
      self.final_ln = tnn.LayerNorm(c.text_width, eps=c.text_ln_eps)
      self.proj = tnn.Linear(c.text_width, c.embed_dim, bias=False)

    def forward(self, ids):  # [B, L] int64
      x = self.tok(ids) + self.pos[:ids.shape[1]]
      for block in self.blocks:
        x = block(x)
      x = self.final_ln(x)
      eos = (ids == c.eos_token_id).int().argmax(dim=-1)
      return self.proj(x[torch.arange(ids.shape[0]), eos])

  class CLIP(tnn.Module):
    def __init__(self):
      super().__init__()
      self.vision = CNNVision() if c.vision_tower == 'cnn' else Vision()
      self.text = Text()
      self.logit_scale = tnn.Parameter(torch.tensor(c.logit_scale_init))

  return CLIP()


def run_torch(cfg, images, ids, rows, warmup: int, steps: int,
              threads: int) -> tuple[float, int]:
  import torch  # pylint: disable=import-outside-toplevel
  from torch.nn import functional as F  # pylint: disable=import-outside-toplevel
  from tads_jax import train  # pylint: disable=import-outside-toplevel
  from tads_jax.models import preprocess  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(threads)
  torch.manual_seed(cfg.seed)
  model = torch_model(cfg)
  decay = [p for p in model.parameters() if p.ndim >= 2]
  other = [p for p in model.parameters() if p.ndim < 2]
  optimizer = torch.optim.AdamW([{'params': decay, 'weight_decay': cfg.weight_decay},
                                 {'params': other, 'weight_decay': 0.0}], lr=cfg.lr,
                                betas=(cfg.b1, cfg.b2), eps=cfg.eps)
  schedule = train.make_schedule(cfg.lr, cfg.warmup, cfg.steps, xp=np)
  mean = torch.tensor(preprocess.OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
  std = torch.tensor(preprocess.OPENAI_CLIP_STD).view(1, 3, 1, 1)
  batches = train.batch_rows(rows, cfg.batch_size, cfg.seed)
  max_scale = math.log(100)
  state = {'step': 0}

  def step():
    idx = next(batches)
    pixels = torch.from_numpy(images[idx]).permute(0, 3, 1, 2).float()  # [B, 3, S, S]
    pixels = (pixels / 255.0 - mean) / std
    tokens = torch.from_numpy(ids[idx]).long()
    row = torch.from_numpy(idx)
    for group in optimizer.param_groups:
      group['lr'] = float(schedule(state['step']))
    image = F.normalize(model.vision(pixels), dim=-1)
    text = F.normalize(model.text(tokens), dim=-1)
    logits = model.logit_scale.exp() * image @ text.T  # [B, B]
    repeat = (row[:, None] == row[None, :]) & ~torch.eye(len(idx), dtype=torch.bool)
    logits = logits.masked_fill(repeat, -1e30)
    labels = torch.arange(len(idx))
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
      model.logit_scale.clamp_(0.0, max_scale)
    state['step'] += 1
    return loss.detach()

  for _ in range(warmup):
    step()
  faults, start = _page_faults(), time.perf_counter()
  for _ in range(steps):
    loss = step()
  seconds, faults = time.perf_counter() - start, _page_faults() - faults
  if not math.isfinite(loss.item()):
    raise RuntimeError(f'torch: loss {loss.item()}')
  return seconds, faults


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--steps', type=int, default=30, help='timed steps per round')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps (compile)')
  parser.add_argument('--rounds', type=int, default=2, help='ours/torch alternations')
  parser.add_argument('--pool', type=int, default=2048, help='host rows to draw from')
  parser.add_argument('--vocab', type=int, default=None,
                      help='tokenizer size (default configs/default.py encoder.vocab_size)')
  parser.add_argument('--tower', choices=('cnn', 'vit'), default='cnn',
                      help="vit: the conv-stem ViT of configs/pixels_vit.py instead of the "
                      "default pixel proxy's CNN")
  args = parser.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  vocab = args.vocab or default.get_config().encoder.vocab_size
  cfg = train_config(vocab, args.tower)
  c = cfg.clip_config()
  threads = len(os.sched_getaffinity(0))  # XLA's CPU client runs one thread per core
  images, ids, rows = data(cfg, args.pool)
  print(f'cpu: {machine.cpu_model()}')
  print(f'flags: {_cpu_flags()}')
  print(f'jax {jax.__version__} ({jax.devices()[0].platform}, {threads} cores), torch '
        f'{torch.__version__} ({threads} threads); load before {_load()}')
  print(f'model: {cfg.model} + {dict(cfg.model_overrides)}; batch {cfg.batch_size}, '
        f'{cfg.dtype}, {c.image_size} px, {c.context_length} tokens, vocab {vocab}')
  if os.environ.get('GLIBC_TUNABLES'):
    print(f'GLIBC_TUNABLES={os.environ["GLIBC_TUNABLES"]}')
  ours, theirs = [], []
  for r in range(args.rounds):
    # A fresh first round compiles; later rounds reuse the compiled step.
    seconds, our_faults = run_ours(cfg, images, ids, rows, args.warmup, args.steps)
    ours.append(seconds)
    seconds, their_faults = run_torch(cfg, images, ids, rows, args.warmup, args.steps,
                                      threads)
    theirs.append(seconds)
    print(f'round {r + 1}: ours {cfg.batch_size * args.steps / ours[-1]:.1f} samples/s, '
          f'torch {cfg.batch_size * args.steps / theirs[-1]:.1f} samples/s; minor page '
          f'faults per step: ours {our_faults // args.steps}, torch '
          f'{their_faults // args.steps}; load {_load()}', flush=True)
  ours_rate = cfg.batch_size * args.steps / min(ours)
  torch_rate = cfg.batch_size * args.steps / min(theirs)
  print()
  print('| model | batch | steps timed | ours samples/s | torch samples/s | ours/torch | '
        'load 1/5/15 after |')
  print('|---|---|---|---|---|---|---|')
  tower = 'CNN tower' if c.vision_tower == 'cnn' else f'{c.vision_stem} stem'
  print(f'| pixel proxy ({cfg.model}, {tower}, {c.image_size} px) | '
        f'{cfg.batch_size} | {args.steps} x {args.rounds} | {ours_rate:.1f} | '
        f'{torch_rate:.1f} | {ours_rate / torch_rate:.2f} | {_load()} |')
  print(f'\n`{_command()}`')


if __name__ == '__main__':
  main()
