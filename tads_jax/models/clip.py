"""CLIP in Flax linen: a ViT image tower and a causal text transformer.

Follows OpenAI CLIP / Hugging Face `CLIPModel` exactly (pre-LayerNorm blocks, class-token
pooling with a post LayerNorm on the image side, EOS pooling on the text side, bias-free
projections, a learned log logit scale), so that converted checkpoints give the same
embeddings. Every parameter and the main activations carry logical axis names; the mesh
layout is decided by the rules in `tads_jax.sharding`, not here.

The image tower's stem is CLIP's patch embedding (`vision_stem='patch'`, what Hugging Face
checkpoints hold) or, for proxies trained from scratch, a convolutional stem
(`vision_stem='conv'`, Xiao et al. 2021, "Early convolutions help transformers see better"):
log2(patch_size) 3x3 stride-2 convolutions, each followed by a LayerNorm over channels and
a ReLU, then a 1x1 projection to the width, giving the same token grid as the patches. The
paper normalizes with BatchNorm; LayerNorm keeps the model stateless and each sample's
embedding independent of the batch it is contrasted with (batch statistics would carry
information between the samples of a contrastive batch).

Precision: `param_dtype` is how weights are stored, `dtype` is what matmul inputs are cast
to. Matmuls accumulate in float32 (`preferred_element_type`), and LayerNorm, softmax and
the residual stream stay in float32, so bfloat16 compute changes speed more than results.
"""

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

ACTIVATIONS = ('quick_gelu', 'gelu', 'gelu_new', 'gelu_pytorch_tanh')
STEMS = ('patch', 'conv')
TOWERS = ('vit', 'cnn')


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Architecture only (hashable, so it can be a static jit argument)."""
  embed_dim: int = 512            # shared image-text embedding (HF projection_dim)
  # Image tower.
  image_size: int = 224
  patch_size: int = 32
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  vision_mlp_dim: int = 3072
  vision_act: str = 'quick_gelu'
  vision_ln_eps: float = 1e-5
  # 'patch' (CLIP's, Hugging Face compatible) | 'conv' (log2(patch_size) 3x3 stride-2
  # convolutions of vision_stem_width, 2x, 4x, ... channels, then a 1x1 projection).
  vision_stem: str = 'patch'
  vision_stem_width: int = 32
  # 'vit' (the transformer above) | 'cnn' (CNNTower: the 3x3 convolutions of vision_cnn,
  # (channels, stride) each, with GroupNorm of vision_cnn_groups and a ReLU, then the mean
  # over positions; vision_width/layers/heads/mlp_dim and the stem are then unused).
  vision_tower: str = 'vit'
  vision_cnn: tuple = ((32, 2), (32, 2), (64, 1), (64, 2), (128, 1), (128, 2))
  vision_cnn_groups: int = 8
  # Text tower.
  vocab_size: int = 49408
  context_length: int = 77        # HF max_position_embeddings
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  text_mlp_dim: int = 2048
  text_act: str = 'quick_gelu'
  text_ln_eps: float = 1e-5
  # HF pools at argmax(input_ids) when this is 2 (configs written before the fix of
  # transformers PR #24773) and at the first eos_token_id otherwise.
  eos_token_id: int = 49407
  logit_scale_init: float = math.log(1 / 0.07)

  def __post_init__(self):
    try:  # lists (JSON, the command line) become the hashable form
      layers = tuple(tuple(pair) for pair in self.vision_cnn)
    except TypeError:
      layers = ()
    positive = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
    if not layers or not all(len(p) == 2 and all(map(positive, p)) for p in layers):
      raise ValueError(f'CLIPConfig.vision_cnn: expected a non-empty list of (channels, '
                       f'stride) pairs of integers >= 1, got {self.vision_cnn!r}')
    object.__setattr__(self, 'vision_cnn', layers)
    if self.vision_tower not in TOWERS:
      raise ValueError(f'CLIPConfig.vision_tower: {self.vision_tower!r} is not one of '
                       f'{", ".join(TOWERS)}')
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.type is int:
        lowest = 0 if field.name == 'eos_token_id' else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
          raise ValueError(f'CLIPConfig.{field.name}: expected an integer >= {lowest}, '
                           f'got {value!r}')
    for tower in ('vision', 'text'):
      width, heads = getattr(self, f'{tower}_width'), getattr(self, f'{tower}_heads')
      if width % heads:
        raise ValueError(f'CLIPConfig.{tower}_heads: {heads} does not divide '
                         f'{tower}_width={width}')
      act = getattr(self, f'{tower}_act')
      if act not in ACTIVATIONS:
        raise ValueError(f'CLIPConfig.{tower}_act: {act!r} is not one of '
                         f'{", ".join(ACTIVATIONS)}')
    bad = [ch for ch, _ in self.vision_cnn if ch % self.vision_cnn_groups]
    if self.vision_tower == 'cnn' and bad:
      raise ValueError(f'CLIPConfig.vision_cnn_groups: {self.vision_cnn_groups} does not '
                       f'divide the channels {bad[0]} of vision_cnn')
    if self.image_size % self.patch_size:
      raise ValueError(f'CLIPConfig.patch_size: {self.patch_size} does not divide '
                       f'image_size={self.image_size}')
    if self.vision_stem not in STEMS:
      raise ValueError(f'CLIPConfig.vision_stem: {self.vision_stem!r} is not one of '
                       f'{", ".join(STEMS)}')
    if self.vision_stem == 'conv' and (self.patch_size < 2
                                       or self.patch_size & (self.patch_size - 1)):
      raise ValueError(f"CLIPConfig.patch_size: the 'conv' stem downsamples by 2 per "
                       f'convolution, so patch_size must be a power of two >= 2, got '
                       f'{self.patch_size}')

  @property
  def num_patches(self) -> int:
    return (self.image_size // self.patch_size) ** 2

  @property
  def stem_channels(self) -> tuple:
    """Output channels of the conv stem's 3x3 convolutions (empty for 'patch')."""
    if self.vision_stem != 'conv':
      return ()
    return tuple(self.vision_stem_width * 2**i
                 for i in range(self.patch_size.bit_length() - 1))


_B32 = CLIPConfig()
PRESETS = {
    # OpenAI CLIP shapes (HF openai/clip-vit-*). LAION/OpenCLIP checkpoints of the same
    # shapes use act='gelu': get_config('vit_b32', vision_act='gelu', text_act='gelu').
    'vit_b32': _B32,
    'vit_b16': dataclasses.replace(_B32, patch_size=16),
    'vit_l14': dataclasses.replace(
        _B32, embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24,
        vision_heads=16, vision_mlp_dim=4096, text_width=768, text_heads=12,
        text_mlp_dim=3072),
    'vit_l14_336': dataclasses.replace(
        _B32, embed_dim=768, image_size=336, patch_size=14, vision_width=1024,
        vision_layers=24, vision_heads=16, vision_mlp_dim=4096, text_width=768,
        text_heads=12, text_mlp_dim=3072),
    # Proxies trained from scratch on small images (the synthetic world is 64 px).
    'small': dataclasses.replace(
        _B32, embed_dim=256, image_size=64, patch_size=8, vision_width=384,
        vision_layers=6, vision_heads=6, vision_mlp_dim=1536, text_width=256,
        text_layers=6, text_heads=4, text_mlp_dim=1024, vision_act='gelu',
        text_act='gelu'),
    'tiny': dataclasses.replace(
        _B32, embed_dim=32, image_size=32, patch_size=8, vision_width=64,
        vision_layers=2, vision_heads=4, vision_mlp_dim=256, context_length=16,
        text_width=64, text_layers=2, text_heads=4, text_mlp_dim=256),
}


def get_config(name: str, **overrides) -> CLIPConfig:
  """A preset by name, with field overrides (e.g. vision_act='gelu')."""
  if name not in PRESETS:
    raise ValueError(f'CLIP preset {name!r} unknown; one of {", ".join(PRESETS)}')
  return dataclasses.replace(PRESETS[name], **overrides)


def _activation(name: str, x):
  if name == 'quick_gelu':
    return x * jax.nn.sigmoid(1.702 * x)
  if name == 'gelu':
    return jax.nn.gelu(x, approximate=False)
  return jax.nn.gelu(x, approximate=True)  # gelu_new, gelu_pytorch_tanh


def _kernel_init(names):
  return nn.with_logical_partitioning(nn.initializers.normal(0.02), names)


def _zeros_init(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def _dot(spec, x, kernel, dtype):
  """einsum with inputs cast to the compute dtype and a float32 accumulator and result."""
  return jnp.einsum(spec, x.astype(dtype), kernel.astype(dtype),
                    preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def project(x, kernel, dtype):
  """x [..., D] @ kernel [D, F] -> float32 [..., F] (inputs cast to `dtype`), the
  projections of the CLIP towers. The same as _dot('...d,df->...f', ...) in value and
  gradient; only how the kernel's gradient x^T dy is computed differs (_project_bwd)."""
  return _dot('...d,df->...f', x, kernel, dtype)


def _project_fwd(x, kernel, dtype):
  return project(x, kernel, dtype), (x, kernel)


def _project_bwd(dtype, residuals, dy):
  """dx = dy kernel^T; dkernel = x^T dy over every leading axis.

  On CPU both operands of x^T dy are materialized first (lax.optimization_barrier):
  otherwise XLA fuses the LayerNorm / GELU backward that produces dy into a transposing
  copy and runs the product outside its YNNPACK kernels: a pixel-proxy step ran at 0.87x
  PyTorch's speed that way, 1.1-1.16x this way (BENCHMARKS.md, "Pixel proxy speed").
  Accelerators keep their fusions.
  """
  x, kernel = residuals
  dx = _dot('...f,df->...d', dy, kernel, dtype).astype(x.dtype)
  x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])  # [N, D], [N, F]
  if jax.default_backend() == 'cpu':
    x2, dy2 = jax.lax.optimization_barrier((x2, dy2))
  dkernel = _dot('nd,nf->df', x2, dy2, dtype)  # [D, F]
  return dx, dkernel.astype(kernel.dtype)


project.defvjp(_project_fwd, _project_bwd)


class Dense(nn.Module):
  """Dense layer over the last axis whose kernel carries logical axis names.

  project=True computes it with `project` (the CLIP towers); False with plain autodiff
  (the embedding proxy's heads, proxy.EmbeddingHead, whose numerics stay as they were)."""
  features: int
  axes: tuple[str, str]
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  project: bool = False

  @nn.compact
  def __call__(self, x):
    kernel = self.param('kernel', _kernel_init(self.axes), (x.shape[-1], self.features),
                        self.param_dtype)
    if self.project:
      y = project(x, kernel, self.dtype)
    else:
      y = _dot('...d,df->...f', x, kernel, self.dtype)
    if self.use_bias:
      bias = self.param('bias', _zeros_init(self.axes[1:]), (self.features,),
                        self.param_dtype)
      y = y + bias.astype(jnp.float32)
    return y


class LayerNorm(nn.Module):
  """LayerNorm in float32 with two-pass variance, as torch.nn.LayerNorm computes it."""
  epsilon: float
  param_dtype: Dtype = jnp.float32
  axis_name: str = 'embed'  # logical name of the normalized axis (its params')

  @nn.compact
  def __call__(self, x):  # [..., D] -> float32 [..., D]
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    width = x.shape[-1]
    scale = self.param('scale', nn.with_logical_partitioning(
        nn.initializers.ones_init(), (self.axis_name,)), (width,), self.param_dtype)
    bias = self.param('bias', _zeros_init((self.axis_name,)), (width,), self.param_dtype)
    return y * scale.astype(jnp.float32) + bias.astype(jnp.float32)


class Attention(nn.Module):
  """Multi-head self-attention with a fused q/k/v kernel [D, 3, H, Dh]."""
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, causal: bool):  # x [B, N, D]
    width = x.shape[-1]
    head_dim = width // self.num_heads
    qkv_kernel = self.param('qkv_kernel', _kernel_init(('embed', 'qkv', 'heads', 'kv')),
                            (width, 3, self.num_heads, head_dim), self.param_dtype)
    qkv_bias = self.param('qkv_bias', _zeros_init(('qkv', 'heads', 'kv')),
                          (3, self.num_heads, head_dim), self.param_dtype)
    # One [D, H*3*Dh] matmul (heads major, so a 'heads' sharding survives the reshape):
    # `project`'s backward is what makes the projections fast on CPU.
    b, n = x.shape[:2]
    kernel = jnp.transpose(qkv_kernel, (0, 2, 1, 3)).reshape(width, 3 * width)
    qkv = project(x, kernel, self.dtype).reshape(b, n, self.num_heads, 3, head_dim)
    qkv = qkv + jnp.transpose(qkv_bias, (1, 0, 2)).astype(jnp.float32)  # [B, N, H, 3, Dh]
    names = ('activation_batch', 'activation_length', 'activation_heads', 'activation_kv')
    q, k, v = (nn.with_logical_constraint(qkv[:, :, :, i], names) for i in range(3))

    logits = _dot('bqhk,bshk->bhqs', q, k, self.dtype) * head_dim**-0.5  # [B, H, N, N]
    if causal:
      n = x.shape[1]
      mask = jnp.tril(jnp.ones((n, n), dtype=bool))
      logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1)
    out = _dot('bhqs,bshk->bqhk', weights, v, self.dtype)  # [B, N, H, Dh]
    out = nn.with_logical_constraint(out, names)

    out_kernel = self.param('out_kernel', _kernel_init(('heads', 'kv', 'embed')),
                            (self.num_heads, head_dim, width), self.param_dtype)
    out_bias = self.param('out_bias', _zeros_init(('embed',)), (width,), self.param_dtype)
    out = project(out.reshape(b, n, width), out_kernel.reshape(width, width), self.dtype)
    return out + out_bias.astype(jnp.float32)  # [B, N, D]


class Block(nn.Module):
  """Pre-LayerNorm transformer block (CLIP's ResidualAttentionBlock)."""
  num_heads: int
  mlp_dim: int
  act: str
  ln_eps: float
  causal: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, N, D] float32
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = LayerNorm(self.ln_eps, self.param_dtype, name='ln1')(x)
    x = x + Attention(self.num_heads, name='attn', **kw)(y, causal=self.causal)
    x = nn.with_logical_constraint(
        x, ('activation_batch', 'activation_length', 'activation_embed'))
    y = LayerNorm(self.ln_eps, self.param_dtype, name='ln2')(x)
    y = Dense(self.mlp_dim, ('embed', 'mlp'), name='fc1', project=True, **kw)(y)  # [B, N, F]
    y = nn.with_logical_constraint(
        y, ('activation_batch', 'activation_length', 'activation_mlp'))
    y = _activation(self.act, y)
    x = x + Dense(x.shape[-1], ('mlp', 'embed'), name='fc2', project=True, **kw)(y)
    return nn.with_logical_constraint(
        x, ('activation_batch', 'activation_length', 'activation_embed'))


class ConvStem(nn.Module):
  """Xiao et al. 2021's convolutional stem: [B, H, W, 3] -> [B, H/p, W/p, D] (NHWC).

  Each 3x3 convolution has stride 2 and padding 1 on every side (torch's Conv2d(k=3, s=2,
  p=1)), no bias (the LayerNorm after it has one), and He-normal weights for the ReLU.
  """
  channels: tuple            # output channels of the 3x3 convolutions
  width: int                 # the transformer width, reached by a 1x1 projection
  ln_eps: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, H, W, C] float32
    names = ('activation_batch', None, None, None)
    for i, out in enumerate(self.channels):
      kernel = self.param(f'conv_{i}', nn.with_logical_partitioning(
          nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
          (None, None, 'conv_in', 'conv_out')), (3, 3, x.shape[-1], out),
                          self.param_dtype)  # [3, 3, C_in, C_out] (HWIO)
      x = jax.lax.conv_general_dilated(
          x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(2, 2),
          padding=((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
          preferred_element_type=jnp.float32)  # [B, H/2, W/2, C_out]
      x = nn.with_logical_constraint(x, names)
      x = LayerNorm(self.ln_eps, self.param_dtype, axis_name='conv_out',
                    name=f'norm_{i}')(x)
      x = jax.nn.relu(x)
    return Dense(self.width, ('conv_in', 'embed'), use_bias=False, name='proj', project=True,
                 dtype=self.dtype, param_dtype=self.param_dtype)(x)  # [B, H/p, W/p, D]


class _ImageTower(nn.Module):
  """What both image towers are given: [B, S, S, 3] normalized pixels -> [B, E]."""
  config: CLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def check_pixels(self, pixels):
    c = self.config
    if pixels.shape[1:] != (c.image_size, c.image_size, 3):
      raise ValueError(f'{type(self).__name__}: pixels of shape {pixels.shape}; this '
                       f'config expects [B, {c.image_size}, {c.image_size}, 3]')


class GroupNorm(nn.Module):
  """GroupNorm (Wu & He 2018) over NHWC in float32: per sample, each group of channels
  normalized over its positions and channels (two-pass variance); scale and bias per
  channel. The moments are taken per channel first and then per group, which XLA:CPU runs
  faster than reducing a [B, H, W, G, C/G] view (BENCHMARKS.md, issue 13)."""
  groups: int
  epsilon: float
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):  # [B, H, W, C] -> float32 [B, H, W, C]
    b, _, _, ch = x.shape
    x = x.astype(jnp.float32)
    per_group = lambda t: t.reshape(b, self.groups, ch // self.groups).mean(-1)  # noqa: E731
    to_channels = lambda t: jnp.repeat(t, ch // self.groups, axis=1)[:, None, None]  # noqa: E731
    centred = x - to_channels(per_group(jnp.mean(x, axis=(1, 2))))
    var = per_group(jnp.mean(jnp.square(centred), axis=(1, 2)))  # [B, G]
    y = centred * to_channels(jax.lax.rsqrt(var + self.epsilon))
    scale = self.param('scale', nn.with_logical_partitioning(
        nn.initializers.ones_init(), ('conv_out',)), (ch,), self.param_dtype)
    bias = self.param('bias', _zeros_init(('conv_out',)), (ch,), self.param_dtype)
    return y * scale.astype(jnp.float32) + bias.astype(jnp.float32)


def _xla_conv3x3(x, kernel, stride: int, dtype):
  """XLA's 3x3 convolution, padding 1 on every side: NHWC x, HWIO kernel -> float32."""
  return jax.lax.conv_general_dilated(
      x.astype(dtype), kernel.astype(dtype), window_strides=(stride, stride),
      padding=((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      preferred_element_type=jnp.float32)


def _im2col(x, stride: int):
  """[B, H, W, C] -> [B*H'*W', 9C]: the nine shifted views of x padded by 1, (row, column,
  channel) order as an HWIO kernel flattens its first three axes. With stride 2 and an even
  width a row's three column taps are its columns (2p, 2p+1) and 2p+2: two slices of the row
  viewed [W/2 + 1, 2C] instead of three strided ones (XLA:CPU copies them faster)."""
  b, h, w, ch = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # [B, H+2, W+2, C]
  ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
  views = []
  for i in range(3):
    rows = padded[:, i:i + stride * (ho - 1) + 1:stride]  # [B, H', W+2, C]
    if stride == 2 and w % 2 == 0:
      pairs = rows.reshape(b, ho, wo + 1, 2 * ch)  # columns (2p, 2p+1) side by side
      views += [pairs[:, :, :wo], pairs[:, :, 1:, :ch]]
    else:
      views += [rows[:, :, j:j + stride * (wo - 1) + 1:stride] for j in range(3)]
  return jnp.concatenate(views, axis=-1).reshape(b * ho * wo, 9 * ch)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _cpu_conv3x3(x, kernel, stride, dtype, x_type):
  del x_type  # x's jax.ShapeDtypeStruct, for the backward
  return _xla_conv3x3(x, kernel, stride, dtype)


def _cpu_conv3x3_fwd(x, kernel, stride, dtype, x_type):
  """Under differentiation: one matmul over the im2col matrix, which the kernel's gradient
  reuses."""
  del x_type
  b, h, w, ch = x.shape
  cols = _im2col(x.astype(dtype), stride)  # [N, 9C]
  y = _dot('nd,df->nf', cols, kernel.reshape(9 * ch, -1), dtype)  # [N, F]
  ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
  return y.reshape(b, ho, wo, -1), (cols, kernel)


def _cpu_conv3x3_bwd(stride, dtype, x_type, residuals, dy):
  """dx by XLA's transposed convolution; dkernel = cols^T dy, computed as (dy^T cols)^T when
  9C >= F: XLA:CPU's dot runs that orientation 1.4-2.4x faster for these shapes (a
  [32768, 288]^T [32768, 32] product: 7.7 ms, its transpose 3.3 ms), and the barrier keeps
  XLA from folding the transpose back into the dot."""
  cols, kernel = residuals
  dx = jax.linear_transpose(lambda t: _xla_conv3x3(t, kernel, stride, dtype), x_type)(dy)[0]
  dy2 = dy.reshape(-1, dy.shape[-1]).astype(dtype)  # [N, F]
  cols, dy2 = jax.lax.optimization_barrier((cols, dy2))
  if cols.shape[1] >= dy2.shape[1]:
    dkernel = jax.lax.optimization_barrier(_dot('nf,nd->fd', dy2, cols, dtype)).T
  else:
    dkernel = _dot('nd,nf->df', cols, dy2, dtype)  # [9C, F]
  return dx.astype(x_type.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


_cpu_conv3x3.defvjp(_cpu_conv3x3_fwd, _cpu_conv3x3_bwd)


def conv3x3(x, kernel, stride: int, dtype):
  """A 3x3 convolution with padding 1 on every side (torch's Conv2d(k=3, p=1)), NHWC x
  [B, H, W, C] and HWIO kernel [3, 3, C, F] -> float32 [B, H', W', F]: XLA's convolution,
  with the same value and gradient up to float rounding.

  On CPU (_cpu_conv3x3) the gradient is computed another way. Autodiff of XLA's
  convolution gets the kernel's gradient from a convolution over the batch, which needs x
  transposed batch-minor, and XLA:CPU fuses the GroupNorm that made x into those
  transposes (35 ms of a ~150 ms tower step, batch 128 at 64 px, one core); autodiff of an
  im2col matmul spends ~25 ms scattering the columns' gradient back (BENCHMARKS.md, "Pixel
  proxy speed"). So under differentiation the forward is one matmul over the im2col
  matrix, the kernel's gradient a second matmul over that same matrix, and dx XLA's
  transposed convolution; without differentiation (embedding) it is XLA's convolution.
  Accelerators keep XLA's convolution and its gradient.
  """
  if jax.default_backend() == 'cpu':
    return _cpu_conv3x3(x, kernel, stride, dtype, jax.ShapeDtypeStruct(x.shape, x.dtype))
  return _xla_conv3x3(x, kernel, stride, dtype)


class CNNTower(_ImageTower):
  """A plain convolutional image tower: [B, H, W, 3] -> [B, E].

  Each layer of config.vision_cnn is a 3x3 convolution (padding 1 on every side, no bias,
  He-normal weights), GroupNorm and a ReLU; the last map is averaged over positions and
  projected. Why it exists: trained from scratch on a few thousand pairs, the ViT towers
  here matched captions by colour and size and never learned shape (BENCHMARKS.md, issue
  13), while this tower's locality and translation equivariance let shape be learned
  within the default run's budget.
  """

  @nn.compact
  def __call__(self, pixels):  # [B, H, W, 3] normalized float
    self.check_pixels(pixels)
    c = self.config
    x = pixels.astype(jnp.float32)
    for i, (out, stride) in enumerate(c.vision_cnn):
      kernel = self.param(f'conv_{i}', nn.with_logical_partitioning(
          nn.initializers.variance_scaling(2.0, 'fan_in', 'normal'),
          (None, None, 'conv_in', 'conv_out')), (3, 3, x.shape[-1], out),
                          self.param_dtype)  # [3, 3, C_in, C_out] (HWIO)
      x = conv3x3(x, kernel, stride, self.dtype)  # [B, H', W', C_out]
      x = nn.with_logical_constraint(x, ('activation_batch', None, None, None))
      x = jax.nn.relu(GroupNorm(c.vision_cnn_groups, c.vision_ln_eps, self.param_dtype,
                                name=f'norm_{i}')(x))
    pooled = jnp.mean(x, axis=(1, 2))  # [B, C]
    return Dense(c.embed_dim, ('conv_in', 'proj'), use_bias=False, name='proj', project=True,
                 dtype=self.dtype, param_dtype=self.param_dtype)(pooled)  # [B, E]


class VisionTower(_ImageTower):
  """ViT: patchify (or a conv stem), class token, learned positions, blocks, class-token
  pooling."""

  @nn.compact
  def __call__(self, pixels):  # [B, H, W, 3] normalized float
    self.check_pixels(pixels)
    c = self.config
    b, h, w, _ = pixels.shape
    p, kw = c.patch_size, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if c.vision_stem == 'conv':
      x = ConvStem(c.stem_channels, c.vision_width, c.vision_ln_eps, name='stem',
                   **kw)(pixels.astype(jnp.float32))  # [B, H/p, W/p, D]
      x = x.reshape(b, c.num_patches, c.vision_width)  # [B, N, D], row-major as patches
    else:
      # Patches flattened in (row, column, channel) order; the conversion from a torch
      # Conv2d kernel [D, 3, p, p] transposes it to match.
      patches = pixels.reshape(b, h // p, p, w // p, p, 3).transpose(0, 1, 3, 2, 4, 5)
      patches = patches.reshape(b, c.num_patches, p * p * 3)  # [B, N, p*p*3]
      x = Dense(c.vision_width, ('patch', 'embed'), use_bias=False, name='patch_embed',
                project=True, **kw)(patches)  # [B, N, D]
    cls = self.param('cls', _kernel_init(('embed',)), (c.vision_width,), self.param_dtype)
    cls = jnp.broadcast_to(cls.astype(jnp.float32), (b, 1, c.vision_width))
    x = jnp.concatenate([cls, x], axis=1)  # [B, N+1, D]
    pos = self.param('pos_embedding', _kernel_init((None, 'embed')),
                     (c.num_patches + 1, c.vision_width), self.param_dtype)
    x = x + pos.astype(jnp.float32)
    x = nn.with_logical_constraint(
        x, ('activation_batch', 'activation_length', 'activation_embed'))
    x = LayerNorm(c.vision_ln_eps, self.param_dtype, name='pre_ln')(x)
    for i in range(c.vision_layers):
      x = Block(c.vision_heads, c.vision_mlp_dim, c.vision_act, c.vision_ln_eps,
                name=f'block_{i}', **kw)(x)
    pooled = LayerNorm(c.vision_ln_eps, self.param_dtype, name='post_ln')(x[:, 0])
    return Dense(c.embed_dim, ('embed', 'proj'), use_bias=False, name='proj', project=True,
                 **kw)(pooled)  # [B, E]


def eos_positions(token_ids, eos_token_id: int):  # [B, L] -> [B]
  """Where Hugging Face's CLIPTextModel pools (its two cases, kept as they are)."""
  if eos_token_id == 2:  # legacy configs: the EOS token has the largest id
    return jnp.argmax(token_ids, axis=-1)
  return jnp.argmax(token_ids == eos_token_id, axis=-1)


class TextTower(nn.Module):
  """Causal transformer over token ids, pooled at the end-of-text token."""
  config: CLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, token_ids):  # [B, L] int32
    c = self.config
    b, length = token_ids.shape
    if length > c.context_length:
      raise ValueError(f'TextTower: {length} tokens; the context length is '
                       f'{c.context_length}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    table = self.param('token_embedding', _kernel_init(('vocab', 'embed')),
                       (c.vocab_size, c.text_width), self.param_dtype)
    pos = self.param('pos_embedding', _kernel_init((None, 'embed')),
                     (c.context_length, c.text_width), self.param_dtype)
    x = jnp.take(table, token_ids, axis=0).astype(jnp.float32)  # [B, L, D]
    x = x + pos[:length].astype(jnp.float32)
    x = nn.with_logical_constraint(
        x, ('activation_batch', 'activation_length', 'activation_embed'))
    for i in range(c.text_layers):
      x = Block(c.text_heads, c.text_mlp_dim, c.text_act, c.text_ln_eps, causal=True,
                name=f'block_{i}', **kw)(x)
    x = LayerNorm(c.text_ln_eps, self.param_dtype, name='final_ln')(x)
    pooled = x[jnp.arange(b), eos_positions(token_ids, c.eos_token_id)]  # [B, D]
    return Dense(c.embed_dim, ('embed', 'proj'), use_bias=False, name='proj', project=True,
                 **kw)(pooled)  # [B, E]


class CLIP(nn.Module):
  """Both towers and the logit scale; embeddings are returned unnormalized."""
  config: CLIPConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    tower = CNNTower if self.config.vision_tower == 'cnn' else VisionTower
    self.vision = tower(self.config, **kw)
    self.text = TextTower(self.config, **kw)
    self.logit_scale = self.param(
        'logit_scale',
        nn.with_logical_partitioning(nn.initializers.constant(self.config.logit_scale_init),
                                     ()),
        (), self.param_dtype)

  def encode_image(self, pixels):  # [B, H, W, 3] -> [B, E]
    return self.vision(pixels)

  def encode_text(self, token_ids):  # [B, L] -> [B, E]
    return self.text(token_ids)

  def __call__(self, pixels, token_ids):
    """Returns (image_emb [B, E], text_emb [B, E], logit_scale []) (log scale, as HF)."""
    return self.encode_image(pixels), self.encode_text(token_ids), self.logit_scale


def init_params(module: CLIP, rng, batch_size: int = 1):
  """Boxed params (nn.LogicallyPartitioned leaves) from dummy inputs."""
  c = module.config
  pixels = jnp.zeros((batch_size, c.image_size, c.image_size, 3), jnp.float32)
  ids = jnp.zeros((batch_size, c.context_length), jnp.int32)
  return jax.jit(module.init)(rng, pixels, ids)['params']


def abstract_params(module: CLIP):
  """Shapes, dtypes and logical axis names of the params, without allocating them."""
  return jax.eval_shape(lambda: init_params(module, jax.random.PRNGKey(0)))
