"""Mesh and logical-axis rules: sharded CLIP encoders equal the single-device ones.

The sharded checks run on 8 (fake CPU) devices (conftest.py's on_8_devices).
"""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tads_jax import sharding
from tads_jax.models import api, clip, preprocess

# One block per tower: the layout is the same for every block, and compiles are slow.
TINY = clip.get_config('tiny', vocab_size=512, eos_token_id=511, vision_layers=1,
                       text_layers=1)
BATCH = 16


def _random_params(seed=0):
  abstract = clip.abstract_params(clip.CLIP(TINY))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: (0.1 * rng.standard_normal(x.shape)).astype(np.float32), nn.unbox(abstract))


def _inputs(seed=1):
  rng = np.random.default_rng(seed)
  pixels = rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32)
  ids = rng.integers(0, 511, size=(BATCH, TINY.context_length)).astype(np.int32)
  ids[np.arange(BATCH), rng.integers(1, TINY.context_length, BATCH)] = 511
  return pixels, ids


def _encoder(params, **kwargs):
  return api.LoadedCLIP(TINY, params, None, preprocess.default_config(32),
                        batch_size=BATCH, **kwargs)


def check_sharded_encoders():
  """All 8-device checks; raises AssertionError on any mismatch."""
  assert jax.device_count() >= 8, jax.devices()
  params = _random_params()
  pixels, ids = _inputs()
  single = _encoder(params)
  ref_image, ref_text = single.encode_pixels(pixels), single.encode_token_ids(ids)

  cases = [((8, 1), 'data_parallel'), ((4, 2), 'tensor_parallel'), ((8, 1), 'fsdp')]
  for (data, model), rules in cases:
    mesh = sharding.make_mesh(data, model)
    enc = _encoder(params, mesh=mesh, rules=rules)
    where = f'{rules} on {data}x{model}'
    # The params really are laid out as the rules say.
    qkv = enc.params['vision']['block_0']['attn']['qkv_kernel']  # [D, 3, H, Dh]
    fc1 = enc.params['text']['block_0']['fc1']['kernel']  # [D, F]
    table = enc.params['text']['token_embedding']  # [V, D]
    local = lambda x: x.addressable_shards[0].data.shape
    if rules == 'data_parallel':
      assert qkv.sharding.spec == P(None, None, None, None), where
      assert local(fc1) == fc1.shape, where
    elif rules == 'tensor_parallel':
      assert qkv.sharding.spec == P(None, None, 'model', None), where
      assert local(qkv) == (64, 3, 4 // model, 16), where
      assert local(fc1) == (64, 256 // model), where
      assert local(table) == (512 // model, 64), where
    else:
      assert fc1.sharding.spec == P('data', None), where
      assert local(fc1) == (64 // data, 256), where
      assert local(table) == (512, 64 // data), where
    image, text = enc.encode_pixels(pixels), enc.encode_token_ids(ids)
    np.testing.assert_allclose(image, ref_image, atol=1e-5, err_msg=where)
    np.testing.assert_allclose(text, ref_text, atol=1e-5, err_msg=where)
    # Odd counts pad the tail of a data-split batch and drop it again.
    np.testing.assert_allclose(enc.encode_token_ids(ids[:5]), ref_text[:5], atol=1e-5,
                               err_msg=where)

  mesh = sharding.make_mesh(2, 4)
  out = jax.jit(lambda x: x * 2, in_shardings=sharding.batch_sharding(mesh))(pixels)
  assert out.sharding.spec == P('data') and local(out)[0] == BATCH // 2

  # A mesh axis that does not divide a param is named before device_put fails.
  bad = sharding.make_mesh(1, 8)
  with pytest.raises(ValueError, match=r"param \['text'\]\['block_0'\]\['attn'\]"
                     r"\['out_kernel'\]: dimension 4 .* mesh axis 'model' of size 8"):
    _encoder(params, mesh=bad, rules='tensor_parallel')


def test_sharded_encoders_match_single_device(on_8_devices):
  on_8_devices(check_sharded_encoders)


def test_make_mesh_shapes_and_errors():
  n = jax.device_count()
  mesh = sharding.make_mesh()
  assert mesh.axis_names == ('data', 'model') and mesh.devices.shape == (n, 1)
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 2
  with pytest.raises(ValueError, match=rf'mesh.data x mesh.model: {n + 1} x 1'):
    sharding.make_mesh(data=n + 1)
  with pytest.raises(ValueError, match=rf'mesh.model: {n + 1} does not divide'):
    sharding.make_mesh(model=n + 1)
  with pytest.raises(ValueError, match='mesh.data: expected a positive integer'):
    sharding.make_mesh(data=0)
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict({'mesh': {'data': -1, 'model': 1}})
  assert sharding.from_config(config).mesh.devices.shape == (n, 1)


def test_from_config_gives_the_configured_mesh_and_rules():
  import ml_collections  # pylint: disable=import-outside-toplevel
  n = jax.device_count()
  config = ml_collections.ConfigDict({'mesh': {'data': -1, 'model': 1, 'rules': 'fsdp'}})
  mesh, rules = sharding.from_config(config)
  assert mesh.devices.shape == (n, 1) and rules == 'fsdp'
  table = (('activation_batch', 'data'), ('embed', None), ('mlp', ('data', 'model')))
  config = ml_collections.ConfigDict({'mesh': {'data': -1, 'model': 1, 'rules': table}})
  assert sharding.from_config(config).rules == table
  assert sharding.get_rules(sharding.from_config(config).rules) == table
  assert sharding.from_config(ml_collections.ConfigDict()).rules == 'data_parallel'


@pytest.mark.parametrize('field, value, message', [
    ('data', 0, r'config\.mesh\.data: expected a positive integer or -1, got 0'),
    ('data', 'all', r'config\.mesh\.data: expected a positive integer'),
    ('model', 3, r'config\.mesh\.(model: 3 does not divide|data x config\.mesh\.model)'),
    ('model', -1, r'config\.mesh\.model: -1 is only allowed for config\.mesh\.data'),
    ('rules', 'zero', r"config\.mesh\.rules: 'zero' unknown; one of data_parallel"),
    ('rules', (('embed', 'tensor'),), r'config\.mesh\.rules: expected a preset'),
])
def test_from_config_errors_name_the_field(field, value, message):
  import ml_collections  # pylint: disable=import-outside-toplevel
  mesh = {'data': -1, 'model': 1, 'rules': 'data_parallel'}
  mesh[field] = value
  config = ml_collections.ConfigDict({'mesh': mesh})
  with pytest.raises(ValueError, match=message):
    sharding.from_config(config)


def test_rules_map_logical_names():
  abstract = clip.abstract_params(clip.CLIP(TINY))
  mesh = sharding.make_mesh()
  tp = sharding.param_shardings(abstract, mesh, 'tensor_parallel')
  assert tp['vision']['block_0']['attn']['out_kernel'].spec == P('model', None, None)
  assert tp['text']['token_embedding'].spec == P('model', None)
  assert tp['logit_scale'].spec == P()
  fsdp = sharding.param_shardings(abstract, mesh, 'fsdp')
  assert fsdp['vision']['patch_embed']['kernel'].spec == P(None, 'data')
  dp = sharding.param_shardings(abstract, mesh, 'data_parallel')
  assert all(s.spec == P(*[None] * len(s.spec)) for s in jax.tree_util.tree_leaves(dp))
  # A tree of logical PartitionSpecs gives the same result as the boxed params.
  specs = sharding.logical_axes(abstract)
  assert sharding.param_shardings(specs, mesh, 'tensor_parallel') == tp
  with pytest.raises(ValueError, match="sharding rules 'zero' unknown"):
    sharding.get_rules('zero')



def test_an_explicit_rules_table_from_a_config_is_hashable_and_reaches_train():
  """A table written in a config (axes as lists) must serve as a key of the jitted
  programs' caches, in train as in meta: lists of axes become tuples."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from tads_jax import train  # pylint: disable=import-outside-toplevel
  table = [('activation_batch', 'data'), ('embed', None), ('mlp', ['model'])]
  layout = sharding.from_config(ml_collections.ConfigDict(
      {'mesh': {'data': -1, 'model': 1, 'rules': table}}))
  assert layout.rules == (('activation_batch', 'data'), ('embed', None), ('mlp', ('model',)))
  cfg = train.TrainConfig(kind='embedding', batch_size=8, samples_seen=16, rules=layout.rules)
  hash(train._compute_key(cfg))  # pylint: disable=protected-access  (TypeError before)
