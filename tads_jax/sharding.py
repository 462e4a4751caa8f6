"""Device mesh and logical-axis rules (MaxText / big_vision style).

Models name their parameter and activation axes ('embed', 'mlp', 'heads', ...); one rule
table maps those names to the mesh axes 'data' and 'model'. The same model then runs
data-parallel, FSDP or tensor-parallel by choosing a table, not by editing the model.
"""

from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ('data', 'model')

_REPLICATED_ACTIVATIONS = (
    ('activation_length', None),
    ('activation_embed', None),
    ('activation_kv', None),
)

# The conv stem's channels (clip.ConvStem): a few thousand weights, never worth splitting.
_REPLICATED_STEM = (('conv_in', None), ('conv_out', None))

RULES = {
    # Params replicated, batch split over every device.
    'data_parallel': (
        ('activation_batch', 'data'),
        ('activation_heads', None),
        ('activation_mlp', None),
        *_REPLICATED_ACTIVATIONS,
        ('embed', None), ('mlp', None), ('heads', None), ('kv', None), ('qkv', None),
        ('vocab', None), ('patch', None), ('proj', None), *_REPLICATED_STEM,
    ),
    # ZeRO-3 style: every weight split along its model width over 'data' (gathered per
    # layer by XLA), batch split over 'data'.
    'fsdp': (
        ('activation_batch', 'data'),
        ('activation_heads', None),
        ('activation_mlp', None),
        *_REPLICATED_ACTIVATIONS,
        ('embed', 'data'), ('mlp', None), ('heads', None), ('kv', None), ('qkv', None),
        ('vocab', None), ('patch', None), ('proj', None), *_REPLICATED_STEM,
    ),
    # Megatron style: attention heads, MLP hidden units and the vocabulary split over
    # 'model'; batch over 'data'.
    'tensor_parallel': (
        ('activation_batch', 'data'),
        ('activation_heads', 'model'),
        ('activation_mlp', 'model'),
        *_REPLICATED_ACTIVATIONS,
        ('embed', None), ('mlp', 'model'), ('heads', 'model'), ('kv', None), ('qkv', None),
        ('vocab', 'model'), ('patch', None), ('proj', None), *_REPLICATED_STEM,
    ),
}


def get_rules(rules: str | Sequence[tuple[str, Any]],
              where: str | None = None) -> tuple[tuple[str, Any], ...]:
  """A preset name or an explicit table of (logical name, mesh axis or None); errors name
  the config field `where` when given."""
  if isinstance(rules, str):
    if rules not in RULES:
      head = f'{where}: {rules!r}' if where else f'sharding rules {rules!r}'
      raise ValueError(f'{head} unknown; one of {", ".join(RULES)}')
    return RULES[rules]
  table = _rule_table(rules)
  if table is None:
    raise ValueError(f'{where or "sharding rules"}: expected a preset '
                     f'({", ".join(RULES)}) or a table of (logical name, mesh axis) pairs '
                     f'with mesh axes in {MESH_AXES} or None, got {rules!r}')
  return table


def _rule_table(rules) -> tuple | None:
  """rules as a tuple of (name, axes) pairs, or None when it is not such a table. A list of
  axes (as a config file writes it) becomes a tuple, so that the table is hashable (a key
  of the jitted programs' caches)."""
  try:
    table = tuple(tuple(rule) for rule in rules)
  except TypeError:
    return None
  out = []
  for rule in table:
    if len(rule) != 2 or not isinstance(rule[0], str):
      return None
    axes = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
    if not all(a is None or a in MESH_AXES for a in axes):
      return None
    out.append((rule[0], tuple(rule[1]) if isinstance(rule[1], list) else rule[1]))
  return tuple(out)


def make_mesh(data: int = -1, model: int = 1, devices=None, where: str = 'mesh') -> Mesh:
  """A ('data', 'model') mesh; data=-1 takes all devices left after `model`. Errors name
  `where`.data / `where`.model.

  Axis types are Auto (jax.make_mesh now defaults to Explicit), so plain jit with
  in/out shardings and with_sharding_constraint work. The default devices are this
  process's (jax.local_devices()): in a multi-process job each process runs its own
  programs on the shards it owns, and what crosses processes goes through distributed.py.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  n = len(devices)
  for field, value in ((f'{where}.data', data), (f'{where}.model', model)):
    if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value != -1):
      raise ValueError(f'{field}: expected a positive integer or -1, got {value!r}')
  if model == -1:
    raise ValueError(f'{where}.model: -1 is only allowed for {where}.data')
  if data == -1:
    if n % model:
      raise ValueError(f'{where}.model: {model} does not divide the {n} devices')
    data = n // model
  if data * model != n:
    raise ValueError(f'{where}.data x {where}.model: {data} x {model} = {data * model}, but '
                     f'there are {n} devices')
  grid = np.array(devices, dtype=object).reshape(data, model)
  return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


class Layout(NamedTuple):
  """Where a stage's arrays live: the mesh, and the rules placing logical axes on it."""
  mesh: Mesh
  rules: str | tuple  # a RULES name, or an explicit table of (logical name, mesh axis)


def from_config(config, devices=None) -> Layout:
  """The mesh of config.mesh.data x config.mesh.model and the rules of config.mesh.rules.

  Every stage that places arrays on devices takes both from here, so that mesh.rules means
  the same thing in each. A missing block or field takes the default (-1, 1,
  'data_parallel'); a bad value raises ValueError naming config.mesh.<field>. devices:
  make_mesh's (default this process's; jax.devices() for a mesh over every process).
  """
  block = config.get('mesh') if hasattr(config, 'get') else None
  block = {} if block is None else block
  mesh = make_mesh(data=block.get('data', -1), model=block.get('model', 1), devices=devices,
                   where='config.mesh')
  rules = block.get('rules', 'data_parallel')
  table = get_rules(rules, where='config.mesh.rules')
  if not isinstance(rules, str):
    rules = table
  return Layout(mesh, rules)


def logical_axes(tree):
  """Tree of logical PartitionSpecs from boxed params (concrete or from jax.eval_shape)."""
  return nn.get_partition_spec(tree)


def _is_spec(x):
  return isinstance(x, P)


def param_shardings(tree, mesh: Mesh, rules) -> Any:
  """NamedSharding per parameter, from boxed params or a tree of logical PartitionSpecs.

  Raises a ValueError naming the parameter when a mesh axis does not divide the
  dimension it would split (device_put would fail later with a less helpful message).
  """
  rules = get_rules(rules)
  is_boxed = lambda x: isinstance(x, nn.spmd.LogicallyPartitioned)
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: is_boxed(x) or _is_spec(x))
  boxed = any(is_boxed(x) for x in leaves)
  specs = logical_axes(tree) if boxed else tree
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  if boxed:
    shapes = jax.tree_util.tree_map(lambda x: np.shape(nn.unbox(x)), tree, is_leaf=is_boxed)
    flat_shapes = jax.tree_util.tree_flatten_with_path(
        shapes, is_leaf=lambda x: isinstance(x, tuple))[0]
    flat_shardings = jax.tree_util.tree_leaves(shardings)
    for (path, shape), sharding in zip(flat_shapes, flat_shardings):
      _check_divisible(jax.tree_util.keystr(path), shape, sharding)
  return shardings


def _check_divisible(name: str, shape, sharding: NamedSharding):
  for dim, axes in zip(shape, sharding.spec):
    if axes is None:
      continue
    size = int(np.prod([sharding.mesh.shape[a] for a in
                        ((axes,) if isinstance(axes, str) else axes)]))
    if dim % size:
      raise ValueError(f'param {name}: dimension {dim} of shape {tuple(shape)} cannot be '
                       f'split over mesh axis {axes!r} of size {size}; choose other '
                       'sharding rules or mesh sizes')


def shard_params(params, mesh: Mesh, rules, axes=None):
  """Places params on the mesh; returns plain (unboxed) sharded arrays.

  `params` may be boxed (logical names inside) or plain, with `axes` the matching tree of
  logical PartitionSpecs (e.g. `logical_axes(clip.abstract_params(module))`).
  """
  if axes is None:
    shardings = param_shardings(params, mesh, rules)
  else:
    shardings = param_shardings(axes, mesh, rules)
    for (path, value), sharding in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                       jax.tree_util.tree_leaves(shardings)):
      _check_divisible(jax.tree_util.keystr(path), np.shape(value), sharding)
  return jax.device_put(nn.unbox(params), shardings)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', the rest replicated."""
  return NamedSharding(mesh, P('data'))


def local_batch_rows(sharding: NamedSharding, batch: int) -> np.ndarray:
  """[b] the positions of a global batch of `batch` rows that this process's devices hold
  under `sharding` (all of them in a one-process job), in the order
  jax.make_array_from_process_local_data expects this process's rows."""
  spans = sorted({(s[0].start or 0, batch if s[0].stop is None else s[0].stop)
                  for s in sharding.addressable_devices_indices_map((batch,)).values()})
  return np.concatenate([np.arange(lo, hi) for lo, hi in spans])


def global_batch(sharding: NamedSharding, local: dict, batch: int) -> dict:
  """{name: jax.Array [batch, ...]} from this process's rows of each (local_batch_rows):
  the batch a jitted step takes, with each process reading only its part."""
  return {name: jax.make_array_from_process_local_data(sharding, value,
                                                       (batch,) + value.shape[1:])
          for name, value in local.items()}


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
