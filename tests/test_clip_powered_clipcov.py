"""The CLIP-powered selector (selectors/clip_powered.py) and ClipCov (selectors/clipcov.py),
each against something independent: SAS and SDS on a 6-sample pool worked out by hand, the
mask loss's gradient against central finite differences of its formula in float64, the
mask at exactly k, ClipCov's greedy against brute force and against a greedy on the
objective itself, and the paper's own setting on a labelled set with 40% label noise.
"""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pyarrow as pa
import pytest

from tads_jax import selectors
from tads_jax.selectors import clip_powered
from tads_jax.selectors import clipcov


def _unit(x):
  x = np.asarray(x, np.float64)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _config(fraction=0.5, **blocks):
  base = {'seed': 0, 'selection': {'fraction': fraction},
          'clip_powered': dataclasses.asdict(clip_powered.Params()),
          'clipcov': {'easiness': 2.0, 'min_cosine': None, 'normalize': True, 'block': 64,
                      'chunk': 1024}}
  for name, fields in blocks.items():
    base[name] = dict(base[name], **fields)
  return ml_collections.ConfigDict(base)


def _classification_task(rng, centres, n_per, templates=2, spread=0.05, name='cls'):
  """Images around class centres and prompt embeddings near each centre."""
  c, e = centres.shape
  labels = np.repeat(np.arange(c), n_per)
  image_emb = _unit(centres[labels] + spread * rng.normal(size=(len(labels), e)))
  class_text_emb = _unit(centres[:, None, :] + 0.05 * rng.normal(size=(c, templates, e)))
  return {'name': name, 'kind': 'classification', 'image_emb': image_emb, 'labels': labels,
          'class_text_emb': class_text_emb}


# ---------------------------------------------------------------------------------------
# clip_powered: scoring.


def test_sas_and_sds_on_a_six_sample_pool_by_hand():
  e1, e2, e3 = np.eye(3)
  r2 = math.sqrt(2.0)
  image = _unit([e1, e2, e1 + e2, e3, e3 + e1, e3 - e1])
  text = _unit([e1, e1, e1, -e3, e3, e2])
  groups = np.array([0, 0, 0, 1, 1, 1])
  adapters = clip_powered.init_adapters(3)  # identity: cosines of the reference space
  # SAS: cos(image_i, text_i) = 1, 0, 1/sqrt2, -1, 1/sqrt2, 0; min-max over [-1, 1].
  raw = clip_powered.alignment(adapters, image, text)
  np.testing.assert_allclose(raw, [1, 0, 1 / r2, -1, 1 / r2, 0], atol=1e-6)
  np.testing.assert_allclose(clip_powered.min_max(raw),
                             [1, 0.5, (1 + 1 / r2) / 2, 0, (1 + 1 / r2) / 2, 0.5], atol=1e-6)
  # SDS with K = 2 (both other members of the group): |e1 - e2| = sqrt2, the distance of a
  # unit vector to one at 45 degrees is a = sqrt(2 - sqrt2), and (e3 + e1), (e3 - e1) are
  # orthogonal (sqrt2).
  a = math.sqrt(2 - r2)
  want = [(r2 + a) / 2, (r2 + a) / 2, a, a, (a + r2) / 2, (a + r2) / 2]
  sds = clip_powered.knn_diversity(image, groups, neighbours=2)
  np.testing.assert_allclose(sds, want, atol=1e-6)
  np.testing.assert_allclose(clip_powered.min_max(sds), [1, 1, 0, 0, 1, 1], atol=1e-5)
  # K = 1: the nearest only; sample 3 (e3) is at a from both others.
  np.testing.assert_allclose(clip_powered.knn_diversity(image, groups, neighbours=1),
                             [a, a, a, a, a, a], atol=1e-6)
  # A sample alone in its group gets the pool's largest value.
  lonely = clip_powered.knn_diversity(image, np.array([0, 0, 0, 1, 1, 2]), neighbours=2)
  np.testing.assert_allclose(lonely[5], lonely[:5].max(), atol=1e-7)
  np.testing.assert_allclose(lonely[3:5], [math.sqrt(2 - r2)] * 2, atol=1e-6)


def test_blocked_knn_matches_brute_force():
  rng = np.random.default_rng(0)
  emb = _unit(rng.normal(size=(300, 6)))
  groups = rng.integers(0, 3, 300)
  got = clip_powered.knn_diversity(emb, groups, neighbours=5, chunk=32)  # many blocks
  want = np.empty(300)
  for i in range(300):
    others = np.flatnonzero((groups == groups[i]) & (np.arange(300) != i))
    dist = np.sort(np.linalg.norm(emb[others].astype(np.float64) - emb[i], axis=1))
    want[i] = dist[:5].mean()
  np.testing.assert_allclose(got, want, atol=1e-5)


# ---------------------------------------------------------------------------------------
# clip_powered: the mask.


def test_mask_loss_gradient_matches_finite_differences():
  beta, gamma, scale = 0.1, 2.0, 100.0
  rng = np.random.default_rng(0)
  n, k = 9, 4
  d0 = rng.normal(scale=0.01, size=n)
  sas, sds = rng.random(n), rng.random(n)

  def relaxed(d, sign):  # the loss with the count's straight-through backward: sum(m)
    m = 1 / (1 + np.exp(-scale * d))
    return (-np.mean(m * sas) / np.mean(sas) - beta * np.mean(m * sds) / np.mean(sds)
            + gamma * sign * (np.sum(m) - k) / n)

  with jax.enable_x64(True):
    loss = lambda d: clip_powered.mask_loss(d, jnp.asarray(sas), jnp.asarray(sds), k, beta,
                                            gamma, scale)
    value, count_term = jax.jit(loss)(jnp.asarray(d0))
    assert value.dtype == jnp.float64
    grad = np.asarray(jax.jit(jax.grad(lambda d: loss(d)[0]))(jnp.asarray(d0)))
  count = int((d0 > 0).sum())
  assert count != k  # the count term is active
  m0 = 1 / (1 + np.exp(-scale * d0))
  np.testing.assert_allclose(float(count_term), abs(count - k) / n, rtol=1e-12)
  np.testing.assert_allclose(
      float(value), -np.mean(m0 * sas) / np.mean(sas) - beta * np.mean(m0 * sds) / np.mean(sds)
      + gamma * abs(count - k) / n, rtol=1e-12)
  eps = 1e-7
  numeric = np.array([(relaxed(d0 + eps * np.eye(n)[i], np.sign(count - k))
                       - relaxed(d0 - eps * np.eye(n)[i], np.sign(count - k))) / (2 * eps)
                      for i in range(n)])
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-10)


def test_mask_ends_at_exactly_k_and_follows_the_weighted_scores():
  rng = np.random.default_rng(1)
  n = 3000
  sas, sds = rng.random(n).astype(np.float32), rng.random(n).astype(np.float32)
  params = clip_powered.Params()
  k = clip_powered.budget(0.3, n)
  out = clip_powered.optimize_mask(sas, sds, k, params)
  assert out['counts'].sum() == k == 900
  assert out['converged'] and 0 < out['steps'] < params.max_steps
  assert out['count_term'] < params.tol
  # The mask keeps (nearly) the top k of SAS / mean SAS + beta SDS / mean SDS.
  weighted = sas / sas.mean() + params.beta * sds / sds.mean()
  top = np.zeros(n, bool)
  top[np.argsort(-weighted)[:k]] = True
  assert (top & (out['counts'] > 0)).sum() >= 0.98 * k
  # The max-steps guard stops early, and still exactly k are kept.
  guarded = clip_powered.optimize_mask(sas, sds, k, clip_powered.Params(max_steps=3))
  assert guarded['steps'] == 3 and not guarded['converged']
  assert guarded['counts'].sum() == k


def test_paper_setting_keeps_fewer_mislabelled_samples_than_random():
  rng = np.random.default_rng(0)
  classes, n_per, dim = 5, 120, 16
  centres = _unit(rng.normal(size=(classes, dim)))
  task = _classification_task(rng, centres, n_per, spread=0.3)
  labels = task['labels'].copy()
  n = len(labels)
  flip = rng.random(n) < 0.4  # 40% symmetric noise: a uniformly drawn other class
  labels[flip] = (labels[flip] + rng.integers(1, classes, flip.sum())) % classes
  fraction = 0.5
  params = clip_powered.Params(adapter_steps=100, adapter_batch=128, chunk=64)
  out = clip_powered.select_labelled(task['image_emb'], task['class_text_emb'], labels,
                                     fraction, params, seed=0)
  kept = out['counts'] > 0
  k = clip_powered.budget(fraction, n)
  assert kept.sum() == k
  noisy_kept = int((kept & flip).sum())
  random_kept = flip.mean() * k  # a uniform subset of k keeps this many on average
  print(f'\npaper setting: N={n}, {int(flip.sum())} mislabelled ({flip.mean():.0%}), k={k}: '
        f'clip_powered keeps {noisy_kept} mislabelled ({noisy_kept / k:.1%}), random '
        f'{random_kept:.0f} ({flip.mean():.1%}); mask steps {out["steps"]}, adapter loss '
        f'{out["adapter_losses"][:10].mean():.3f} -> {out["adapter_losses"][-10:].mean():.3f} '
        f'(first and last 10 steps)')
  assert noisy_kept < 0.25 * random_kept


# ---------------------------------------------------------------------------------------
# clip_powered: the selector.


def _pool(rng, n=600, dim=16, classes=4):
  centres = _unit(rng.normal(size=(classes, dim)))
  task = _classification_task(rng, centres, 30)
  image_emb = _unit(rng.normal(size=(n, dim)))
  text_emb = _unit(image_emb + 0.5 * rng.normal(size=(n, dim)))
  features = pa.table({'uid': [f'{i:032x}' for i in range(n)], 'caption': ['x'] * n,
                       'cluster': rng.integers(0, 5, n)})
  return selectors.Inputs(features=features, image_emb=image_emb, text_emb=text_emb,
                          tasks=(task,))


def test_clip_powered_selector_keeps_exactly_the_budget():
  rng = np.random.default_rng(2)
  inputs = _pool(rng)
  # The pool's size and width are the paper-setting test's: the compiled kNN and mask
  # programs are shared.
  retrieval = {'name': 'ret', 'kind': 'retrieval',
               'image_emb': _unit(rng.normal(size=(10, 16))),
               'text_emb': _unit(rng.normal(size=(20, 16))), 'text_image': np.arange(20) // 2}
  inputs = selectors.Inputs(features=inputs.features, image_emb=inputs.image_emb,
                            text_emb=inputs.text_emb, tasks=inputs.tasks + (retrieval,))
  config = _config(0.3, clip_powered={'adapter_steps': 20, 'chunk': 64})
  selector = selectors.get('clip_powered')
  selector.check_config(config)
  assert selector.output_for(config) == 'counts'
  state = selector.fit(config, inputs)
  counts = selectors.run_selector(selector, config, state, inputs)
  assert counts.sum() == 180 and set(np.unique(counts)) <= {0, 1}
  assert state['adapter_loss_last'] < state['adapter_loss_first']
  assert selector.summary(state)['kept'] == 180
  with pytest.raises(ValueError, match="'cluster' column"):
    selector.fit(config, selectors.Inputs(features=inputs.features.drop(['cluster']),
                                          image_emb=inputs.image_emb,
                                          text_emb=inputs.text_emb, tasks=inputs.tasks))


@pytest.mark.parametrize('field, value, message', [
    ('beta', -0.1, 'config.clip_powered.beta: must be >= 0'),
    ('momentum', 1.5, 'config.clip_powered.momentum: must be <= 1'),
    ('lr', 0.0, 'config.clip_powered.lr: must be > 0'),
    ('neighbours', 2.5, 'config.clip_powered.neighbours: expected an integer'),
    ('tol', 'small', 'config.clip_powered.tol: expected a number'),
])
def test_clip_powered_config_errors_name_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    clip_powered.check_config(_config(clip_powered={field: value}))


def test_clip_powered_config_needs_its_block_and_a_fraction():
  config = _config()
  del config['clip_powered']
  with pytest.raises(ValueError, match='config.clip_powered: missing block'):
    clip_powered.check_config(config)
  with pytest.raises(ValueError, match='config.selection.fraction'):
    clip_powered.check_config(_config(fraction=1.5))


# ---------------------------------------------------------------------------------------
# ClipCov.


def test_objective_by_hand():
  # Two pairs in 2-d: S = max(image @ text.T, 0) = [[1, 0], [0.6, 0.8]] (the clip zeroes
  # nothing here); S + S^T = [[2, 0.6], [0.6, 1.6]].
  image = np.array([[1.0, 0.0], [0.6, 0.8]])
  text = np.array([[1.0, 0.0], [0.0, 1.0]])
  # F({1}) = (0.6 + 1.6 - 0.5 * 1.6) / 2 + 2 * 0.8 = 0.7 + 1.6
  assert clipcov.objective(image, text, [1]) == pytest.approx(2.3)
  # F({0, 1}) = (4.8 - 0.5 * 4.8) / 2 + 2 * (1 + 0.8)
  assert clipcov.objective(image, text, [0, 1]) == pytest.approx(1.2 + 3.6)
  # A negative cosine is clipped in S but counts in full in the easiness.
  image = np.array([[1.0, 0.0], [-1.0, 0.0]])
  text = np.array([[1.0, 0.0], [-0.6, -0.8]])
  # S = [[1, 0], [0, 0.6]] (-1 and -0.6 clipped): F({0}) = (2 - 1) / 2 + 2.
  assert clipcov.objective(image, text, [0]) == pytest.approx(2.5)
  assert clipcov.objective(image, text, [0], easiness=0.0, normalize=False) == \
      pytest.approx(1.0)


def _objective_greedy(image, text, budget, **kw):
  """Reference: greedy on F itself, one item at a time, n x n matrices allowed."""
  chosen = []
  for _ in range(budget):
    rest = [i for i in range(len(image)) if i not in chosen]
    gains = [clipcov.objective(image, text, chosen + [i], **kw) for i in rest]
    chosen.append(rest[int(np.argmax(gains))])
  return chosen


def test_greedy_on_five_items_equals_brute_force():
  rng = np.random.default_rng(3)
  # Captions near their images, the five pairs spread: easy pairs and coverage agree.
  image = _unit(rng.normal(size=(5, 4)))
  text = _unit(image + 0.6 * rng.normal(size=(5, 4)))
  for budget in (1, 2, 3, 4):
    got = clipcov.greedy(image, text, budget)
    assert list(got) == _objective_greedy(image, text, budget)
    best = max(itertools.combinations(range(5), budget),
               key=lambda s: clipcov.objective(image, text, list(s)))
    assert sorted(got) == sorted(best), budget
    assert clipcov.objective(image, text, got) == pytest.approx(
        clipcov.objective(image, text, list(best)))


@pytest.mark.parametrize('easiness, normalize', [(2.0, True), (0.0, False)])
def test_blocked_greedy_matches_the_reference_greedy(easiness, normalize):
  rng = np.random.default_rng(4)
  centres = _unit(rng.normal(size=(3, 6)))
  image = _unit(centres[rng.integers(0, 3, 90)] + 0.4 * rng.normal(size=(90, 6)))
  text = _unit(image + 0.8 * rng.normal(size=(90, 6)))
  # Small blocks and row chunks: many rounds, several row blocks, the bound in use.
  got = clipcov.greedy(image, text, 40, easiness=easiness, normalize=normalize, block=8,
                       chunk=16)
  want = _objective_greedy(image, text, 40, easiness=easiness, normalize=normalize)
  assert list(got) == want


def test_partition_and_budget_split():
  centres = np.eye(3, dtype=np.float32)
  prototypes = centres  # three classes along the axes
  image = _unit([[1, 0.1, 0], [0.9, 0, 0.2], [0, 1, 0], [0.1, 0.9, 0], [0, 0.1, 1],
                 [1, 1, 1]])
  np.testing.assert_array_equal(clipcov.partition(image, prototypes), [0, 0, 1, 1, 2, 0])
  # The last image is at cos 1/sqrt3 ~ 0.577 from every class: far at threshold 0.6.
  np.testing.assert_array_equal(clipcov.partition(image, prototypes, 0.6),
                                [0, 0, 1, 1, 2, -1])
  np.testing.assert_array_equal(clipcov.split_budget(np.array([50, 30, 20]), 10), [5, 3, 2])
  # 7 of 100: 3.5, 2.1, 1.4 -> floors 3, 2, 1 and the largest remainder (0.5) gets one more.
  np.testing.assert_array_equal(clipcov.split_budget(np.array([50, 30, 20]), 7), [4, 2, 1])
  assert clipcov.split_budget(np.array([1, 1, 1]), 2).tolist() == [1, 1, 0]


def test_clipcov_selector_keeps_the_budget_split_by_class():
  rng = np.random.default_rng(5)
  inputs = _pool(rng, n=240)
  config = _config(0.25, clipcov={'min_cosine': 0.3, 'block': 16, 'chunk': 64})
  selector = selectors.get('clipcov')
  selector.check_config(config)
  state = selector.fit(config, inputs)
  counts = selectors.run_selector(selector, config, state, inputs)
  assert counts.sum() == 60
  parts = state['partition']
  for part, size, budget in zip(state['partition_ids'], state['partition_sizes'],
                                state['partition_budgets']):
    assert counts[parts == part].sum() == budget
    assert abs(budget - size * 60 / 240) < 1
  assert (parts == clipcov.FAR).any()
  assert selector.summary(state)['kept'] == 60
  no_classes = selectors.Inputs(features=inputs.features, image_emb=inputs.image_emb,
                                text_emb=inputs.text_emb, tasks=())
  with pytest.raises(ValueError, match='classification task'):
    selector.fit(config, no_classes)


@pytest.mark.parametrize('field, value, message', [
    ('easiness', -1.0, 'config.clipcov.easiness: must be >= 0'),
    ('min_cosine', 1.5, 'config.clipcov.min_cosine: must be <= 1'),
    ('normalize', 'yes', 'config.clipcov.normalize: expected True or False'),
    ('block', 0, 'config.clipcov.block: must be >= 1'),
    ('chunk', 4, 'config.clipcov.chunk: must be >= 8'),
])
def test_clipcov_config_errors_name_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    clipcov.check_config(_config(clipcov={field: value}))
