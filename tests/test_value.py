"""Value function: feature groups, prior, standardizer, V at init, feature weights."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pytest

from tads_jax import value

COLUMNS = ('uid', 'width', 'clip_score', 'near_uniform', 'relevance_cars_image',
           'relevance_cars_text', 'relevance_coco_image', 'relevance_coco_text', 'cluster',
           'cluster_weight', 'semantic_duplicate', 'exact_duplicate', 'extra_column')


def test_groups_and_ablation():
  assert value.input_columns(COLUMNS) == (
      'width', 'clip_score', 'near_uniform', 'relevance_cars_image', 'relevance_cars_text',
      'relevance_coco_image', 'relevance_coco_text', 'cluster_weight', 'semantic_duplicate',
      'exact_duplicate')
  assert value.input_columns(COLUMNS, ('quality',)) == ('width', 'clip_score',
                                                        'near_uniform')
  assert value.input_columns(COLUMNS, ('diversity', 'relevance')) == (
      'relevance_cars_image', 'relevance_cars_text', 'relevance_coco_image',
      'relevance_coco_text', 'cluster_weight', 'semantic_duplicate', 'exact_duplicate')
  for bad in ((), ('quality', 'quality'), ('style',)):
    with pytest.raises(ValueError, match='groups'):
      value.input_columns(COLUMNS, bad)


def test_prior_weights_by_hand():
  names = value.input_columns(COLUMNS)
  got = dict(zip(names, value.prior_weights(names)))
  # quality: clip_score +1, near_uniform -1, width 0 -> L1 2; relevance: 4 columns +1 ->
  # L1 4; diversity: +1 -1 -1 -> L1 3.
  expected = {'width': 0.0, 'clip_score': 0.5, 'near_uniform': -0.5,
              'relevance_cars_image': 0.25, 'relevance_cars_text': 0.25,
              'relevance_coco_image': 0.25, 'relevance_coco_text': 0.25,
              'cluster_weight': 1 / 3, 'semantic_duplicate': -1 / 3,
              'exact_duplicate': -1 / 3}
  for name, weight in expected.items():
    assert got[name] == pytest.approx(weight), name
  scaled = dict(zip(names, value.prior_weights(
      names, {'quality': 2.0, 'relevance': 0.0, 'diversity': 0.3})))
  assert scaled['clip_score'] == pytest.approx(1.0)
  assert scaled['relevance_coco_text'] == 0.0
  assert scaled['exact_duplicate'] == pytest.approx(-0.1)
  with pytest.raises(ValueError, match='group_weights.quality'):
    value.prior_weights(names, {'quality': -1.0})
  with pytest.raises(ValueError, match="'extra_column' is not a value-function feature"):
    value.prior_weights(('clip_score', 'extra_column'))


def test_every_named_prior_sign_is_a_known_feature():
  for name in value.PRIOR_SIGNS:
    assert value.feature_group(name) in ('quality', 'diversity'), name


def test_value_at_init_equals_prior_combination():
  names = ('clip_score', 'near_uniform', 'relevance_t_image', 'cluster_weight')
  # Weights by hand: 0.5, -0.5 (quality), 1 (one relevance column), 1 (diversity).
  z = np.array([[1.0, 2.0, -1.0, 0.5],
                [0.0, -1.0, 3.0, 2.0],
                [-2.0, 0.5, 0.0, -1.0]], np.float32)
  expected = [0.5 - 1.0 - 1.0 + 0.5, 0.0 + 0.5 + 3.0 + 2.0, -1.0 - 0.25 + 0.0 - 1.0]
  module = value.make_value_function(names, hidden=(16, 8))
  params = value.init_params(module, seed=3)
  assert np.abs(np.asarray(params['hidden_0']['kernel'])).sum() > 0  # the MLP is not zero
  np.testing.assert_allclose(module.apply({'params': params}, z), expected, rtol=1e-6)
  zero = value.make_value_function(names, hidden=(16,), zero_prior=True)
  np.testing.assert_array_equal(zero.apply({'params': value.init_params(zero)}, z), 0.0)


def test_per_task_form_is_logsumexp_over_tasks_of_relevance_plus_traded_quality():
  """The per-task form worked by hand: V = d + log sum_t exp(r_t + a_t q), with q, d, r_t
  the prior's terms (each task's relevance weighing what the group weighs additively)."""
  names = ('clip_score', 'near_uniform', 'relevance_a_image', 'relevance_a_text',
           'relevance_b_image', 'relevance_b_text', 'cluster_weight')
  rng = np.random.default_rng(0)
  z = rng.normal(size=(5, len(names))).astype(np.float32)
  module = value.make_value_function(names, hidden=(8,), form='per_task')
  # Quality 0.5, -0.5; relevance 1/4 each column additively, times 2 tasks here; diversity 1.
  np.testing.assert_allclose(module.prior, [0.5, -0.5, 0.5, 0.5, 0.5, 0.5, 1.0])
  params = value.init_params(module, seed=1)
  assert params['trade'].shape == (2,)
  q = 0.5 * z[:, 0] - 0.5 * z[:, 1]
  r = np.stack([0.5 * (z[:, 2] + z[:, 3]), 0.5 * (z[:, 4] + z[:, 5])], axis=1)
  d = z[:, 6]

  def expected(rates):
    return d + np.log(np.exp(r + rates * q[:, None]).sum(axis=1))

  np.testing.assert_allclose(module.apply({'params': params}, z), expected(np.ones(2)),
                             rtol=1e-5, atol=1e-6)
  traded = dict(params, trade=np.log(np.array([3.0, 0.5], np.float32)))
  np.testing.assert_allclose(module.apply({'params': traded}, z),
                             expected(np.array([3.0, 0.5])), rtol=1e-5, atol=1e-6)
  # Without relevance columns it is the additive form.
  plain = value.make_value_function(names[:2], hidden=(8,), form='per_task')
  np.testing.assert_allclose(plain.apply({'params': value.init_params(plain)}, z[:, :2]), q,
                             rtol=1e-6)
  with pytest.raises(ValueError, match='form: one of'):
    value.make_value_function(names, form='max')


def test_prior_signs_clip_each_signed_weight_to_its_side_of_zero():
  """signs='prior': a weight whose prior is + (clip_score, a relevance column) or -
  (near_uniform, exact_duplicate) cannot cross 0; a feature without a prior sign (width)
  keeps any weight; the MLP is untouched. 'free' changes nothing."""
  names = ('width', 'near_uniform', 'clip_score', 'relevance_a_image', 'exact_duplicate')
  moved = np.array([-0.7, 0.3, -0.2, -0.05, -0.4], np.float32)  # what an update made
  for signs, expected in (('prior', [-0.7, 0.0, 0.0, 0.0, -0.4]), ('free', moved)):
    module = value.make_value_function(names, hidden=(4,), signs=signs)
    params = value.init_params(module)
    params = {**params, 'linear': jnp.asarray(moved)}
    out = module.constrain(params)
    np.testing.assert_array_equal(np.asarray(out['linear']), np.asarray(expected, np.float32))
    for a, b in zip(jax.tree_util.tree_leaves(params['hidden_0']),
                    jax.tree_util.tree_leaves(out['hidden_0'])):
      np.testing.assert_array_equal(a, b)
  # A weight already on its side is kept bit for bit, zeros included.
  module = value.make_value_function(names, signs='prior')
  params = value.init_params(module)
  np.testing.assert_array_equal(module.constrain(params)['linear'], params['linear'])
  with pytest.raises(ValueError, match='signs: one of'):
    value.make_value_function(names, signs='sticky')


def test_two_sided_terms_by_hand():
  """two_sided=('sharpness',): V also weighs |z_sharpness|, its prior -1 in the quality
  group's L1 norm (clip_score +1, near_uniform -1: each 1/3); signs='prior' keeps that
  weight <= 0; the report's weights list the term; bad names are refused."""
  names = ('sharpness', 'clip_score', 'near_uniform', 'relevance_t_image')
  module = value.make_value_function(names, hidden=(8,), two_sided=('sharpness',))
  np.testing.assert_allclose(module.prior, [0.0, 1 / 3, -1 / 3, 1.0, -1 / 3], rtol=1e-6)
  z = np.array([[2.0, 1.0, 0.0, 0.5], [-2.0, 1.0, 0.0, 0.5], [1.0, -1.0, 3.0, 0.0]],
               np.float32)
  # Rows 0 and 1 differ only in the sign of z_sharpness: V is the same at both tails.
  expected = [-2 / 3 + 1 / 3 + 0.5, -2 / 3 + 1 / 3 + 0.5, -1 / 3 - 1 / 3 - 1.0]
  params = value.init_params(module, seed=2)
  np.testing.assert_allclose(module.apply({'params': params}, z), expected, rtol=1e-6)
  weights = value.feature_weights(module, params, z)
  assert weights['|sharpness|'] == {'linear': pytest.approx(-1 / 3),
                                     'effective': pytest.approx(-1 / 3)}
  # The slope in z_sharpness is the term's: -1/3 at rows 0 and 2 (z > 0), +1/3 at row 1.
  assert weights['sharpness']['effective'] == pytest.approx(-1 / 9, abs=1e-6)
  signed = value.make_value_function(names, hidden=(), signs='prior', two_sided=('sharpness',))
  moved = {'linear': jnp.asarray([0.4, 0.2, -0.1, 0.3, 0.25], jnp.float32)}
  np.testing.assert_array_equal(np.asarray(signed.constrain(moved)['linear']),
                                np.asarray([0.4, 0.2, -0.1, 0.3, 0.0], np.float32))
  for two_sided, message in ((('width',), "'width' is not a quality feature among"),
                             (('clip_score',), "'clip_score' has a one-sided prior"),
                             (('sharpness', 'sharpness'), 'names repeat')):
    with pytest.raises(ValueError, match=f'^two_sided: {message}'):
      value.make_value_function(names, two_sided=two_sided)
  with pytest.raises(ValueError, match='^two_sided: the additive form only'):
    value.make_value_function(names, form='per_task', two_sided=('sharpness',))


def test_excluded_groups_are_not_inputs():
  rng = np.random.default_rng(0)
  table = {name: rng.normal(size=10) for name in COLUMNS if name != 'uid'}
  names = value.input_columns(list(table), ('quality',))
  x = value.feature_matrix(table, names)
  assert x.shape == (10, 3)
  module = value.make_value_function(names)
  params = value.init_params(module)
  assert params['linear'].shape == (3,) and params['hidden_0']['kernel'].shape == (3, 64)
  v = module.apply({'params': params}, x)
  table['cluster_weight'] = table['cluster_weight'] + 100.0  # a diversity column changes
  np.testing.assert_array_equal(
      module.apply({'params': params}, value.feature_matrix(table, names)), v)
  with pytest.raises(ValueError, match=r'expected \[B, 3\] features'):
    module.apply({'params': params}, np.zeros((2, 4), np.float32))


def test_feature_matrix_from_arrow_with_bools_and_nulls():
  table = pa.table({'uid': ['a', 'b', 'c'], 'clip_score': [0.1, None, 0.3],
                    'exact_duplicate': [True, False, True]})
  x = value.feature_matrix(table, ('clip_score', 'exact_duplicate'))
  assert x.dtype == np.float32
  np.testing.assert_array_equal(x[:, 1], [1, 0, 1])
  assert np.isnan(x[1, 0]) and x[2, 0] == np.float32(0.3)
  with pytest.raises(ValueError, match="features: column 'near_uniform' is missing"):
    value.feature_matrix(table, ('near_uniform',))
  with pytest.raises(ValueError, match=r'features\.uid: expected numbers'):
    value.feature_matrix(table, ('uid',))


def test_standardizer_nan_constant_and_clip():
  x = np.array([[1.0, 7.0, np.nan, 0.0],
                [2.0, 7.0, np.nan, 0.0],
                [3.0, 7.0, np.nan, 0.0],
                [np.nan, 7.0, np.nan, 1000.0]])
  names = ('a', 'const', 'missing', 'outlier')
  s = value.Standardizer.fit(x, names)
  # 'a' from its finite values only: mean 2, population std sqrt(2/3).
  assert s.mean[0] == pytest.approx(2.0) and s.std[0] == pytest.approx(np.sqrt(2 / 3))
  assert s.std[1] == 1.0 and s.std[2] == 1.0  # constant and all-missing: no division by 0
  z = s.transform(x)
  assert z.dtype == np.float32 and np.all(np.isfinite(z))
  np.testing.assert_allclose(z[:3, 0], [-1.2247449, 0.0, 1.2247449], rtol=1e-6)
  assert z[3, 0] == 0.0  # NaN -> 0
  np.testing.assert_array_equal(z[:, 1:3], 0.0)
  # The outlier's z is (1000 - 250) / 433 = 1.73 in the fitted pool; a new row at 1e6 is
  # clipped, and so is inf.
  z_new = s.transform(np.array([[0.0, 7.0, 1.0, 1e6], [0.0, 7.0, 1.0, -np.inf]]))
  assert z_new[0, 3] == 5.0 and z_new[1, 3] == -5.0
  # Feature 'missing' has no pool values: a new value is z-scored around 0 with std 1.
  assert z_new[0, 2] == 1.0


def test_standardizer_round_trip_and_errors():
  rng = np.random.default_rng(1)
  x = rng.normal(3.0, 2.0, size=(50, 2))
  s = value.Standardizer.fit(x, ('clip_score', 'words'))
  back = value.Standardizer.from_dict(json.loads(json.dumps(s.to_dict())))
  assert back.names == s.names
  np.testing.assert_array_equal(back.transform(x), s.transform(x))
  with pytest.raises(ValueError, match="standardizer: field 'std' is missing"):
    value.Standardizer.from_dict({'names': ['a'], 'mean': [0.0]})
  with pytest.raises(ValueError, match=r'Standardizer\.mean: expected 2 finite values'):
    value.Standardizer.from_dict({'names': ['a', 'b'], 'mean': [0.0], 'std': [1.0, 1.0]})
  with pytest.raises(ValueError, match=r'expected \[N, 2\] features'):
    s.transform(np.zeros((3, 3)))
  # In place (the learn stage's one copy of the features), rows past a block boundary too.
  big = rng.normal(3.0, 2.0, size=(value._BLOCK + 7, 2)).astype(np.float32)  # pylint: disable=protected-access
  expected = s.transform(big)
  assert s.transform(big, out=big) is big
  np.testing.assert_array_equal(big, expected)
  with pytest.raises(ValueError, match=r'out must be float32 \(3, 2\)'):
    s.transform(np.zeros((3, 2)), out=np.zeros((3, 2)))

  # Moments per part, added in part order: with one part fit's bytes; with several the
  # moments of the whole pool up to float rounding, whatever holds which part.
  parts = [(0, x[:20]), (1, x[20:21]), (2, x[21:])]
  one = value.Standardizer.fit_parts(lambda: iter([(0, x)]), s.names)
  np.testing.assert_array_equal(one.mean, s.mean)
  np.testing.assert_array_equal(one.std, s.std)
  split = value.Standardizer.fit_parts(lambda: iter(parts), s.names)
  np.testing.assert_allclose(split.mean, x.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(split.std, x.std(axis=0), rtol=1e-12)


def test_feature_weights_linear_at_init_then_gradient():
  names = ('clip_score', 'near_uniform', 'cluster_weight')
  module = value.make_value_function(names, hidden=(8,))
  params = value.init_params(module, seed=1)
  z = np.random.default_rng(2).normal(size=(20, 3)).astype(np.float32)
  at_init = value.feature_weights(module, params, z)
  for i, name in enumerate(names):
    assert at_init[name]['linear'] == pytest.approx(float(params['linear'][i]))
    assert at_init[name]['effective'] == pytest.approx(at_init[name]['linear'], abs=1e-6)
  # With a non-zero output layer the effective weight is the mean slope of V, checked by
  # central differences on each feature.
  params = jax.tree_util.tree_map(lambda p: p, params)
  params['out']['kernel'] = jnp.asarray(
      np.random.default_rng(3).normal(size=(8, 1)).astype(np.float32))
  got = value.feature_weights(module, params, z, chunk=7)  # several chunks
  z64 = z.astype(np.float64)
  with jax.enable_x64(True):
    p64 = jax.tree_util.tree_map(lambda p: jnp.asarray(p, jnp.float64), params)
    for i, name in enumerate(names):
      step = np.zeros(3)
      step[i] = 1e-5
      slope = (module.apply({'params': p64}, z64 + step)
               - module.apply({'params': p64}, z64 - step)) / 2e-5
      assert got[name]['effective'] == pytest.approx(float(np.mean(slope)), rel=1e-4)
  assert any(abs(got[n]['effective'] - got[n]['linear']) > 1e-2 for n in names)


def test_target_relevance_columns_belong_to_their_task():
  """relevance_<task>_target joins the task's image and text columns: the relevance group,
  the same task in the per-task form, and a third of the task's prior weight."""
  names = ('clip_score', 'relevance_a_image', 'relevance_a_text', 'relevance_a_target',
           'relevance_b_c_target')
  assert [value.task_of(n) for n in names] == [None, 'a', 'a', 'a', 'b_c']
  assert value.task_names(names) == ['a', 'b_c']
  assert value.input_columns(names, groups=('relevance',)) == names[1:]
  np.testing.assert_allclose(value.prior_weights(names), [1.0, 0.25, 0.25, 0.25, 0.25])
