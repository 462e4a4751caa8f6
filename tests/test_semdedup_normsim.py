"""SemDeDup, NormSim, negCLIPLoss and their combination against hand-worked cases: the
expectations come from the papers' formulas written out in numpy here, not from the
selectors' code."""

import dataclasses

import ml_collections
import numpy as np
import pyarrow as pa
import pytest

from tads_jax import selectors
from tads_jax.selectors import normsim
from tads_jax.selectors import semdedup  # noqa: F401  (registers 'semdedup')


def _unit(x):
  x = np.asarray(x, np.float64)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _inputs(image_emb, text_emb=None, tasks=()):
  n = image_emb.shape[0]
  features = pa.table({'uid': [f'{i:032x}' for i in range(n)], 'caption': ['c'] * n,
                       'width': [64] * n, 'height': [64] * n, 'sha256': [''] * n})
  return selectors.Inputs(features=features, image_emb=image_emb,
                          text_emb=image_emb if text_emb is None else text_emb, tasks=tasks)


def _tasks(*image_embs):
  """A classification and a retrieval task around the given train image embeddings."""
  first, second = image_embs
  e = first.shape[1]
  return ({'name': 'cls', 'kind': 'classification', 'image_emb': first,
           'labels': np.zeros(len(first), np.int32),
           'class_text_emb': np.ones((1, 1, e), np.float32)},
          {'name': 'ret', 'kind': 'retrieval', 'image_emb': second,
           'text_emb': second, 'text_image': np.arange(len(second))})


def _config(**blocks):
  return ml_collections.ConfigDict(dict({'seed': 0}, **blocks))


def _lse(x, axis):
  m = x.max(axis=axis, keepdims=True)
  return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _negclip_reference(image_emb, text_emb, permutations, batch_size, tau):
  """The authors' cal_new_clip_score averaged over partitions, in float64."""
  img, txt = image_emb.astype(np.float64), text_emb.astype(np.float64)
  n = len(img)
  norm = np.zeros(n)
  for perm in permutations:
    for start in range(0, n, batch_size):
      idx = perm[start:start + batch_size]
      s = img[idx] @ txt[idx].T / tau  # [b, b], row = image, column = text
      norm[idx] += 0.5 * tau * (_lse(s, 1) + _lse(s, 0))
  return np.sum(img * txt, axis=1) - norm / len(permutations)


def _partitions(seed, n, k):
  """The selectors' batch draw, reproduced: k permutations from default_rng([seed, tag])."""
  rng = np.random.default_rng([seed, 0x9C11])
  return [rng.permutation(n) for _ in range(k)]


# ---------------------------------------------------------------- SemDeDup

def _plane(angles_deg, a, b, dim=4):
  """Unit vectors at the given angles in the plane of axes a and b."""
  t = np.deg2rad(np.asarray(angles_deg, np.float64))
  x = np.zeros((len(t), dim))
  x[:, a], x[:, b] = np.cos(t), np.sin(t)
  return x.astype(np.float32)


def _semdedup_config(**kw):
  return _config(semdedup=dict(dict(k=2, iters=10, eps=float(1 - np.cos(np.deg2rad(3.0))),
                                    init='kmeans++'), **kw))


def test_semdedup_keeps_the_member_farthest_from_the_centroid():
  # Cluster A in the (x0, x2) plane at -20, 0, 20, 21 degrees: its centroid sits at their
  # mean angle, 5.25 degrees, so SemDeDup's keep-hard order (farthest first) is
  # -20 (25.25 away), 21 (15.75), 20 (14.75), 0 (5.25). 20 and 21 are 1 degree apart,
  # within eps (3 degrees): 21 is visited first and kept, 20 dropped.
  # Cluster B in the (x1, x3) plane at 0, 0.5, 30 degrees: centroid at 10.17, order
  # 30, 0, 0.5; 0.5 is 0.5 degrees from the kept 0 and dropped.
  image_emb = np.concatenate([_plane([-20, 0, 20, 21], 0, 2), _plane([0, 0.5, 30], 1, 3)])
  config, inputs = _semdedup_config(), _inputs(image_emb)
  selector = selectors.get('semdedup')
  assert selector.output_for(config) == 'counts'
  state = selector.fit(config, inputs)
  counts = selectors.run_selector(selector, config, state, inputs)
  np.testing.assert_array_equal(counts, [1, 1, 0, 1, 1, 0, 1])
  # The centroids are the clusters' normalized means.
  means = _unit(np.stack([image_emb[:4].mean(0), image_emb[4:].mean(0)]))
  sims = np.sort(np.max(state['centroids'] @ means.T, axis=0))
  np.testing.assert_allclose(sims, [1, 1], atol=1e-5)
  # As the stages run it, over the pool's shards (sums per shard, assignment per shard):
  # the same k-means up to rounding and the same counts, shards empty or not.
  sharded = dataclasses.replace(inputs, shard_rows=(2, 0, 3, 2))
  by_shard = selector.fit(config, sharded)
  np.testing.assert_allclose(by_shard['centroids'], state['centroids'], atol=1e-6)
  np.testing.assert_array_equal(selectors.run_selector(selector, config, by_shard, sharded),
                                [1, 1, 0, 1, 1, 0, 1])


def test_semdedup_k_is_capped_at_the_pool_size_and_compares_only_within_a_cluster():
  # Two samples 1 degree apart (duplicates at eps = 3 degrees), k = 10 capped to 2: each is
  # its own cluster, and SemDeDup never compares across clusters, so both stay.
  image_emb = _plane([0, 1], 0, 1)
  config, inputs = _semdedup_config(k=10), _inputs(image_emb)
  selector = selectors.get('semdedup')
  state = selector.fit(config, inputs)
  assert state['k'] == 2
  np.testing.assert_array_equal(selector.score(config, state, inputs), [1, 1])


@pytest.mark.parametrize('field,value', [('k', 0), ('iters', -1), ('eps', -0.1),
                                         ('eps', 1.5), ('init', 'faiss'), ('k', 2.5)])
def test_semdedup_config_errors_name_the_field(field, value):
  with pytest.raises(ValueError, match=f'config.semdedup.{field}'):
    selectors.get('semdedup').check_config(_semdedup_config(**{field: value}))


def test_semdedup_missing_field_is_named():
  config = _config(semdedup=dict(k=2, iters=1, init='random'))
  with pytest.raises(ValueError, match='config.semdedup.eps'):
    selectors.get('semdedup').check_config(config)


# ---------------------------------------------------------------- NormSim

def test_normsim_is_the_p_norm_of_the_target_cosines(monkeypatch):
  monkeypatch.setattr(normsim, '_CHUNK', 8)          # 3 pool chunks, the last padded
  monkeypatch.setattr(normsim, '_TARGET_BLOCK', 8)   # 2 target blocks, the last padded
  rng = np.random.default_rng(0)
  pool = _unit(rng.normal(size=(20, 5)))
  first, second = _unit(rng.normal(size=(9, 5))), _unit(rng.normal(size=(4, 5)))
  pool[0] = -first[0]  # anti-aligned with a target: |cosine| = 1
  inputs = _inputs(pool, tasks=_tasks(first, second))
  sims = pool.astype(np.float64) @ np.concatenate([first, second]).astype(np.float64).T
  selector = selectors.get('normsim')
  two = selectors.run_selector(selector, _config(normsim={'p': 2}), {}, inputs)
  np.testing.assert_allclose(two, np.sqrt(np.sum(sims ** 2, axis=1)), rtol=1e-5)
  inf = selectors.run_selector(selector, _config(normsim={'p': 'inf'}), {}, inputs)
  # torch.norm(p=inf), as the authors compute it: the largest absolute cosine.
  np.testing.assert_allclose(inf, np.max(np.abs(sims), axis=1), rtol=1e-5)
  assert inf[0] == pytest.approx(1.0, abs=1e-5)


def test_normsim_hand_case():
  # Targets e0 and (e0 + e1)/sqrt2; a sample at e1 has cosines (0, 1/sqrt2): NormSim_2 =
  # NormSim_inf = 1/sqrt2; at e0: (1, 1/sqrt2): NormSim_2 = sqrt(1.5), NormSim_inf = 1.
  e = np.eye(3, dtype=np.float32)
  targets = (e[:1], _unit([[1, 1, 0]]))
  inputs = _inputs(e[[1, 0, 2]], tasks=_tasks(*targets))
  two = normsim.normsim_score(_config(normsim={'p': 2}), {}, inputs)
  inf = normsim.normsim_score(_config(normsim={'p': 'inf'}), {}, inputs)
  np.testing.assert_allclose(two, [np.sqrt(0.5), np.sqrt(1.5), 0.0], atol=1e-6)
  np.testing.assert_allclose(inf, [np.sqrt(0.5), 1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize('value', [1, 3, 'two', True, None, -np.inf])
def test_normsim_p_must_be_2_or_inf(value):
  with pytest.raises(ValueError, match='config.normsim.p'):
    selectors.get('normsim').check_config(_config(normsim={'p': value}))


@pytest.mark.parametrize('value,parsed', [(2, 2.0), (2.0, 2.0), ('2', 2.0), ('inf', np.inf),
                                          (float('inf'), np.inf)])
def test_normsim_p_takes_numbers_and_strings(value, parsed):
  # ml_collections keeps a field's type: a command-line override arrives as that type.
  assert normsim.p_option(_config(normsim={'p': value}), 'normsim') == parsed


def test_normsim_needs_tasks():
  with pytest.raises(ValueError, match='task'):
    normsim.normsim_score(_config(normsim={'p': 2}), {}, _inputs(np.eye(3, dtype=np.float32)))


# ---------------------------------------------------------------- negCLIPLoss

def test_negclip_two_sample_hand_case():
  # One batch of two orthogonal matched pairs, tau = 1: s = identity, each row and column
  # normaliser is log(e + 1), so negCLIPLoss = 1 - (log(1 + e) + log(1 + e)) / 2.
  e = np.eye(2, dtype=np.float32)
  out = normsim.negclip_loss(e, e, [np.array([1, 0])], batch_size=2, temperature=1.0)
  np.testing.assert_allclose(out, [1 - np.log1p(np.e)] * 2, rtol=1e-6)


def test_negclip_matches_a_loop_over_the_same_batches(monkeypatch):
  monkeypatch.setattr(normsim, '_ROW_BLOCK', 8)  # batch 20 -> 3 row blocks of 8, padded
  rng = np.random.default_rng(1)
  image_emb = _unit(rng.normal(size=(45, 6)))
  text_emb = _unit(image_emb + 0.8 * rng.normal(size=(45, 6)))
  perms = [rng.permutation(45) for _ in range(3)]  # batches of 20, 20, 5
  for tau in (0.01, 0.07):
    out = normsim.negclip_loss(image_emb, text_emb, perms, batch_size=20, temperature=tau)
    np.testing.assert_allclose(out, _negclip_reference(image_emb, text_emb, perms, 20, tau),
                               atol=2e-5)


def test_negclipscore_selector_draws_its_batches_from_the_seed():
  rng = np.random.default_rng(2)
  image_emb = _unit(rng.normal(size=(11, 4)))
  text_emb = _unit(image_emb + rng.normal(size=(11, 4)))
  block = dict(temperature=0.01, batch_size=4, batches=5)
  config = _config(negclipscore=block)
  config.seed = 3
  out = selectors.run_selector(selectors.get('negclipscore'), config, {},
                               _inputs(image_emb, text_emb))
  expected = _negclip_reference(image_emb, text_emb, _partitions(3, 11, 5), 4, 0.01)
  np.testing.assert_allclose(out, expected, atol=2e-5)
  # A batch as large as the pool: every partition is the whole pool, the seed is moot.
  config.negclipscore.batch_size = 32768
  whole = normsim.negclip_score(config, {}, _inputs(image_emb, text_emb))
  np.testing.assert_allclose(
      whole, _negclip_reference(image_emb, text_emb, [np.arange(11)], 11, 0.01), atol=2e-5)


@pytest.mark.parametrize('field,value', [('temperature', 0.0), ('temperature', 'hot'),
                                         ('batch_size', 1), ('batch_size', 2.5),
                                         ('batches', 0)])
def test_negclipscore_config_errors_name_the_field(field, value):
  block = dict(temperature=0.01, batch_size=32768, batches=10)
  block[field] = value
  with pytest.raises(ValueError, match=f'config.negclipscore.{field}'):
    selectors.get('negclipscore').check_config(_config(negclipscore=block))


# ---------------------------------------------------------------- negCLIPLoss then NormSim

def _combined_block(**kw):
  return dict(dict(ncl_fraction=0.5, fraction=0.25, p='inf', temperature=0.01,
                   batch_size=32768, batches=10), **kw)


def test_ncl_normsim_filters_by_negclip_then_normsim():
  rng = np.random.default_rng(4)
  n = 16
  image_emb = _unit(rng.normal(size=(n, 5)))
  # Half the captions match their image well, half poorly.
  text_emb = _unit(image_emb + rng.uniform(0.2, 3.0, size=(n, 1)) * rng.normal(size=(n, 5)))
  first, second = _unit(rng.normal(size=(3, 5))), _unit(rng.normal(size=(2, 5)))
  inputs = _inputs(image_emb, text_emb, _tasks(first, second))
  # By hand: one batch (the pool is smaller than 32768), negCLIPLoss top int(16 * .5) = 8,
  # then of those the NormSim_inf top int(16 * .25) = 4.
  ncl = _negclip_reference(image_emb, text_emb, [np.arange(n)], n, 0.01)
  passed = np.argsort(-ncl)[:8]
  sims = np.max(np.abs(image_emb @ np.concatenate([first, second]).T), axis=1)
  kept = passed[np.argsort(-sims[passed])[:4]]
  expected = np.zeros(n, np.int64)
  expected[kept] = 1
  config = _config(ncl_normsim=_combined_block())
  selector = selectors.get('ncl_normsim')
  assert selector.output_for(config) == 'counts'
  counts = selectors.run_selector(selector, config, {}, inputs)
  np.testing.assert_array_equal(counts, expected)
  # The order matters: NormSim alone would keep a different set here.
  assert set(np.argsort(-sims)[:4]) != set(kept)

  # fraction = None: scores for the select stage, NormSim inside the negCLIPLoss top.
  config = _config(ncl_normsim=_combined_block(fraction=None), selection={'fraction': 0.25})
  assert selector.output_for(config) == 'scores'
  scores = selectors.run_selector(selector, config, {}, inputs)
  inside = np.zeros(n, bool)
  inside[passed] = True
  assert np.isnan(scores[~inside]).all()
  np.testing.assert_allclose(scores[inside], sims[inside], rtol=1e-5)


@pytest.mark.parametrize('field,value', [('ncl_fraction', 0.0), ('ncl_fraction', 1.5),
                                         ('fraction', 0.6), ('fraction', 0.0), ('p', 1),
                                         ('batches', 0), ('temperature', -1.0)])
def test_ncl_normsim_config_errors_name_the_field(field, value):
  config = _config(ncl_normsim=_combined_block(**{field: value}))
  with pytest.raises(ValueError, match=f'config.ncl_normsim.{field}'):
    selectors.get('ncl_normsim').check_config(config)


def test_ncl_normsim_scores_form_needs_a_budget_within_the_first_pass():
  config = _config(ncl_normsim=_combined_block(fraction=None), selection={'fraction': 0.6})
  with pytest.raises(ValueError, match='config.ncl_normsim.ncl_fraction'):
    selectors.get('ncl_normsim').check_config(config)
