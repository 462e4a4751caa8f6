"""Named quality operators: a recipe is a list of names, as in Data-Juicer.

An operator is a pure function over a batch that returns one float32 score per sample [B].
It declares what it reads through its parameter names, so a new operator plugs in with one
decorated function and the stage that runs them never changes:

  images             float32 [B, H, W, 3] in [0, 1], one fixed square size per chunk
  sizes              int32 [B, 2], the original (height, width) before resizing
  captions           list of B str
  image_emb          float32 [B, D], L2-normalized reference CLIP image embeddings
  text_emb           float32 [B, D], L2-normalized caption embeddings
  flipped_image_emb  float32 [B, D], embeddings of the horizontally flipped images
  mask               bool [B], False on the padding rows of the last chunk

Any other parameter is a setting with a default (a threshold, an n-gram length, a
vocabulary); `compute` passes it from `params`. Image and cross-modal operators are jitted
together, one XLA program per (operators, settings, shapes), so that shared work such as the
grayscale conversion is done once per chunk; text operators run as numpy/Python (see
quality.py for why).
"""

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

KINDS = ('image', 'text', 'crossmodal')
INPUTS = ('images', 'sizes', 'captions', 'image_emb', 'text_emb', 'flipped_image_emb', 'mask')


@dataclasses.dataclass(frozen=True)
class Operator:
  name: str
  kind: str
  fn: Callable[..., Any]
  inputs: tuple[str, ...]      # the batch arrays it reads, by name
  required: tuple[str, ...]    # those among them that have no default
  settings: tuple[str, ...]    # the other parameters, each with a default


OPERATORS: dict[str, Operator] = {}


def register(name: str, kind: str):
  """Decorator adding `fn` to OPERATORS under `name`; the function itself is unchanged."""
  if kind not in KINDS:
    raise ValueError(f'operator {name!r}: kind must be one of {KINDS}, got {kind!r}')

  def wrap(fn):
    if name in OPERATORS:
      raise ValueError(f'operator {name!r} is already registered')
    inputs, required, settings = [], [], []
    for p in inspect.signature(fn).parameters.values():
      if p.name in INPUTS:
        inputs.append(p.name)
        if p.default is inspect.Parameter.empty:
          required.append(p.name)
      elif p.default is inspect.Parameter.empty:
        raise ValueError(f'operator {name!r}: parameter {p.name!r} is not one of the batch '
                         f'inputs {INPUTS} and has no default')
      else:
        settings.append(p.name)
    OPERATORS[name] = Operator(name, kind, fn, tuple(inputs), tuple(required), tuple(settings))
    return fn

  return wrap


def names(kind: str | None = None) -> list[str]:
  """Registered operator names (of one kind), in registration order."""
  return [n for n, op in OPERATORS.items() if kind is None or op.kind == kind]


def compute(operator_names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None = None,
            **inputs) -> dict[str, np.ndarray]:
  """Runs the named operators on one chunk: {name: float32 [B]} as numpy arrays.

  `params` maps an operator name to settings overriding its defaults, e.g.
  {'near_uniform': {'threshold': 0.01}}. Inputs an operator does not read may be omitted.
  """
  params = dict(params or {})
  ops = []
  for name in operator_names:
    if name not in OPERATORS:
      raise ValueError(f'unknown quality operator {name!r}; registered: {sorted(OPERATORS)}')
    op = OPERATORS[name]
    missing = [i for i in op.required if inputs.get(i) is None]
    if missing:
      raise ValueError(f'operator {name!r} needs input(s) {missing}')
    unknown = set(params.get(name, {})) - set(op.settings)
    if unknown:
      raise ValueError(f'operator {name!r}: unknown setting(s) {sorted(unknown)}; '
                       f'it has {list(op.settings)}')
    ops.append(op)
  for name in params:
    if name not in operator_names:
      raise ValueError(f'params given for operator {name!r}, which is not being run')

  out = {}
  host_ops = [op for op in ops if op.kind == 'text']
  for op in host_ops:
    out[op.name] = np.asarray(op.fn(**_args(op, inputs), **params.get(op.name, {})),
                              dtype=np.float32)
  device_ops = [op for op in ops if op.kind != 'text']
  if device_ops:
    spec = tuple((op.name, _freeze(params.get(op.name, {}))) for op in device_ops)
    used = sorted({i for op in device_ops for i in op.inputs if inputs.get(i) is not None})
    arrays = {i: inputs[i] for i in used}
    results = _jitted_device_ops(spec, tuple(used))(arrays)
    out.update({k: np.asarray(v, dtype=np.float32) for k, v in results.items()})
  return {name: out[name] for name in operator_names}


def _args(op: Operator, inputs: Mapping[str, Any]) -> dict[str, Any]:
  return {i: inputs[i] for i in op.inputs if inputs.get(i) is not None}


def _freeze(settings: Mapping[str, Any]) -> tuple:
  """Settings become part of the jit cache key, so they must be hashable."""
  frozen = []
  for k, v in sorted(settings.items()):
    if isinstance(v, (list, set, frozenset)):
      v = tuple(sorted(v)) if isinstance(v, (set, frozenset)) else tuple(v)
    frozen.append((k, v))
  return tuple(frozen)


_DEVICE_CACHE: dict[tuple, Callable] = {}


def _jitted_device_ops(spec: tuple, used: tuple[str, ...]) -> Callable:
  key = (spec, used)
  if key not in _DEVICE_CACHE:

    def run(arrays):
      return {name: OPERATORS[name].fn(**_args(OPERATORS[name], arrays), **dict(settings))
              for name, settings in spec}

    _DEVICE_CACHE[key] = jax.jit(run)
  return _DEVICE_CACHE[key]
