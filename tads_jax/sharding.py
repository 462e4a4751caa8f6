"""Device mesh and logical-axis rules (MaxText / big_vision style).

Models name their parameter and activation axes ('embed', 'mlp', 'heads', ...); one rule
table maps those names to the mesh axes 'data' and 'model'. The same model then runs
data-parallel, FSDP or tensor-parallel by choosing a table, not by editing the model.
"""

from typing import Any, Sequence

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

RULES = {
    # Params replicated, batch split over every device.
    'data_parallel': (
        ('activation_batch', 'data'),
        ('activation_heads', None),
        ('activation_mlp', None),
        *_REPLICATED_ACTIVATIONS,
        ('embed', None), ('mlp', None), ('heads', None), ('kv', None), ('qkv', None),
        ('vocab', None), ('patch', None), ('proj', None),
    ),
    # ZeRO-3 style: every weight split along its model width over 'data' (gathered per
    # layer by XLA), batch split over 'data'.
    'fsdp': (
        ('activation_batch', 'data'),
        ('activation_heads', None),
        ('activation_mlp', None),
        *_REPLICATED_ACTIVATIONS,
        ('embed', 'data'), ('mlp', None), ('heads', None), ('kv', None), ('qkv', None),
        ('vocab', None), ('patch', None), ('proj', None),
    ),
    # Megatron style: attention heads, MLP hidden units and the vocabulary split over
    # 'model'; batch over 'data'.
    'tensor_parallel': (
        ('activation_batch', 'data'),
        ('activation_heads', 'model'),
        ('activation_mlp', 'model'),
        *_REPLICATED_ACTIVATIONS,
        ('embed', None), ('mlp', 'model'), ('heads', 'model'), ('kv', None), ('qkv', None),
        ('vocab', 'model'), ('patch', None), ('proj', None),
    ),
}


def get_rules(rules: str | Sequence[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
  """A preset name or an explicit table of (logical name, mesh axis or None)."""
  if isinstance(rules, str):
    if rules not in RULES:
      raise ValueError(f'sharding rules {rules!r} unknown; one of {", ".join(RULES)}')
    return RULES[rules]
  return tuple(tuple(rule) for rule in rules)


def make_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
  """A ('data', 'model') mesh; data=-1 takes all devices left after `model`.

  Axis types are Auto (jax.make_mesh now defaults to Explicit), so plain jit with
  in/out shardings and with_sharding_constraint work.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  for field, value in (('mesh.data', data), ('mesh.model', model)):
    if not isinstance(value, int) or isinstance(value, bool) or (value < 1 and value != -1):
      raise ValueError(f'{field}: expected a positive integer or -1, got {value!r}')
  if model == -1:
    raise ValueError('mesh.model: -1 is only allowed for mesh.data')
  if data == -1:
    if n % model:
      raise ValueError(f'mesh.model: {model} does not divide the {n} devices')
    data = n // model
  if data * model != n:
    raise ValueError(f'mesh.data x mesh.model: {data} x {model} = {data * model}, but there '
                     f'are {n} devices')
  grid = np.array(devices, dtype=object).reshape(data, model)
  return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def mesh_from_config(config) -> Mesh:
  """Mesh from `config.mesh.data` / `config.mesh.model` (defaults -1 and 1)."""
  mesh_cfg = config.get('mesh') if hasattr(config, 'get') else None
  if mesh_cfg is None:
    return make_mesh()
  return make_mesh(data=mesh_cfg.get('data', -1), model=mesh_cfg.get('model', 1))


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


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
