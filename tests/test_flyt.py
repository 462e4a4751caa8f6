"""FLYT, M-FLYT and hard cap sampling (selectors/flyt.py, meta.py's scorer, selection.py).

The scorer's meta-gradient against central finite differences (float64); the weighted CLIP
loss against a numpy transcription of FLYT's NegativeWeightedClipLoss and, at uniform
weights, against the plain CLIP loss; the differentiable AdamW step against optax; FLYT
learning to score swapped captions lower and M-FLYT weighting the one informative score
on toys; resume; hard cap sampling against a transcription of FLYT's loop and hand cases;
config checks. XLA's CPU optimizations are off while this module runs (conftest.py's
fast_compiles).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pyarrow as pa
import pytest
from scipy import stats

from tads_jax import config as config_lib
from tads_jax import losses
from tads_jax import meta
from tads_jax import selection
from tads_jax import selectors
from tads_jax.models import proxy as proxy_lib
from tads_jax.selectors import flyt
from tads_jax.stages import learn
from configs import default
from conftest import assert_matches_finite_differences, auroc, unit, validate

pytestmark = pytest.mark.usefixtures('fast_compiles')


# The blocks configs/default.py carries, at toy scale (meta settings chosen on the toy).
def _meta_block(**overrides):
  return dict(dict(
      steps=200, batch_size=64, unroll=1, inner_optimizer='adam', inner_lr=0.01,
      inner_weight_decay=0.2, tau=1.0, value_lr=0.03, value_warmup=0,
      value_weight_decay=0.2, value_grad_clip=0.0, task_weight_rate=0.0,
      task_batch_size=64, templates='random', outer_logit_scale=2.65926, head='linear',
      checkpoint_every=0, log_every=1000), **overrides)


def _config(**meta_overrides):
  return ml_collections.ConfigDict({
      'seed': 0,
      'clip_score': {'threshold': None},
      'flyt': dict(hidden_mult=1.0, layers=1, activation='silu', init='default',
                   noise_std=0.01, meta=_meta_block(**meta_overrides)),
      'mflyt': dict(inputs=('test_noise', 'clip_score', 'random'),
                    meta=_meta_block(**meta_overrides)),
      'selection': dict(fraction=0.5, method='hard_cap', dedup='none',
                        hard_cap=dict(batch_size=64, cap=3, temperature=1.0)),
  })


def _toy(seed=0, n=512, classes=8, dim=16, noise=0.1):
  """Half the pool's captions name a wrong class; the task classifies the same classes.
  -> (Inputs with a clip_score and a noise column, swapped [N] bool)."""
  rng = np.random.default_rng(seed)
  centroids = unit(rng.normal(size=(classes, dim)))
  label = rng.integers(0, classes, n)
  swapped = np.arange(n) % 2 == 1
  caption = np.where(swapped, (label + rng.integers(1, classes, n)) % classes, label)
  image = unit(centroids[label] + noise * rng.normal(size=(n, dim)))
  text = unit(centroids[caption] + noise * rng.normal(size=(n, dim)))
  task_label = rng.integers(0, classes, 256)
  task = {'name': 'cls', 'kind': 'classification',
          'image_emb': unit(centroids[task_label] + noise * rng.normal(size=(256, dim))),
          'labels': task_label,
          'class_text_emb': unit(centroids[:, None] + 0.1 * rng.normal(
              size=(classes, 3, dim)))}
  features = pa.table({'uid': [f'{i:032x}' for i in range(n)],
                       'clip_score': np.sum(image * text, axis=1).astype(np.float64),
                       'noise': rng.normal(size=n)})
  return selectors.Inputs(features=features, image_emb=image, text_emb=text,
                          tasks=(task,)), swapped


@pytest.fixture()
def noise_selector():
  """A score selector reading the features' pure-noise column, registered for one test."""
  selectors.register(selectors.Selector(
      name='test_noise', needs=('features',), doc='test only',
      score=lambda config, state, inputs: inputs.column('noise', 'test_noise')))
  yield
  del selectors.SELECTORS['test_noise']


# ---------------------------------------------------------------------------------------
# The weighted loss and the differentiable AdamW step.


def _flyt_negative_weighted_loss(image, text, scale, weight):
  """numpy transcription of formll/FLYT flyt/loss.py NegativeWeightedClipLoss.forward."""
  logits = scale * image @ text.T

  def loss(inputs, w):
    exp_inputs = np.exp(inputs)
    denominator = (w * exp_inputs).sum(axis=1)
    targets = (w[:, None] * exp_inputs)[np.arange(len(w)), np.arange(len(w))]
    return (-w * np.log(targets / denominator)).sum()
  return (loss(logits, weight) + loss(logits.T, weight)) / 2


def _clip_loss(image, text, scale):
  logits = scale * image @ text.T
  ce = lambda l: np.mean(np.log(np.exp(l).sum(axis=1)) - np.diag(l))
  return 0.5 * (ce(logits) + ce(logits.T))


def test_weighted_loss_is_flyts_and_uniform_weights_give_the_clip_loss():
  rng = np.random.default_rng(0)
  image, text = unit(rng.normal(size=(12, 6))), unit(rng.normal(size=(12, 6)))
  w = np.asarray(jax.nn.softmax(jnp.asarray(rng.normal(size=12))), np.float64)
  got = losses.weighted_clip_loss(image, text, jnp.log(20.0), jnp.asarray(w))
  expected = _flyt_negative_weighted_loss(image.astype(np.float64), text, 20.0, w)
  assert float(got) == pytest.approx(expected, rel=1e-5)
  # Uniform weights (softmax of equal scores): the plain CLIP loss, as without weights.
  uniform = losses.weighted_clip_loss(image, text, jnp.log(20.0), jnp.full(12, 1 / 12))
  assert float(uniform) == pytest.approx(_clip_loss(image.astype(np.float64), text, 20.0),
                                         rel=1e-5)
  assert float(uniform) == pytest.approx(float(losses.weighted_clip_loss(
      image, text, jnp.log(20.0))), rel=1e-6)


def test_inner_adamw_matches_optax_adamw_on_matrices_only():
  cfg = meta.MetaConfig(inner_optimizer='adam', inner_lr=0.05, inner_weight_decay=0.2)
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            'b': jnp.asarray(rng.normal(size=2), jnp.float32),
            'logit_scale': jnp.asarray(2.0, jnp.float32)}
  opt = optax.adamw(cfg.inner_lr, b1=cfg.inner_b1, b2=cfg.inner_b2, eps=cfg.inner_eps,
                    weight_decay=0.2,
                    mask=lambda p: jax.tree_util.tree_map(lambda x: x.ndim >= 2, p))
  ref, ref_state, state = params, opt.init(params), meta.inner_init(cfg, params)
  for _ in range(3):
    grads = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    params, state = meta.inner_update(cfg, params, grads, state)
    updates, ref_state = opt.update(grads, ref_state, ref)
    ref = optax.apply_updates(ref, updates)
  for key in params:
    np.testing.assert_allclose(params[key], ref[key], rtol=1e-5, atol=1e-6)


def test_random_templates_pick_one_per_class_reproducibly():
  class_text = np.arange(4 * 3 * 2, dtype=np.float32).reshape(4, 3, 2)
  got = meta.random_templates(class_text, seed=0, t=0, step=5)
  assert got.shape == (4, 1, 2)
  for c in range(4):
    assert any(np.array_equal(got[c, 0], class_text[c, k]) for k in range(3))
  np.testing.assert_array_equal(got, meta.random_templates(class_text, 0, 0, 5))
  draws = {tuple(meta.random_templates(class_text, 0, 0, s)[:, 0, 0]) for s in range(20)}
  assert len(draws) > 1  # a new draw per step


# ---------------------------------------------------------------------------------------
# The meta-gradient against central finite differences, in float64.


@pytest.mark.parametrize('which', ['flyt', 'mflyt'])
def test_scorer_meta_gradient_matches_finite_differences(which, float64_proxy):
  del float64_proxy  # the whole path from the scores to the outer loss in float64
  rng = np.random.default_rng(0)
  n, dim = 8, 5
  cfg = meta.MetaConfig(unroll=1, inner_optimizer='adam', inner_lr=0.05,
                        inner_weight_decay=0.2, inner_eps=1e-3, task_weight_rate=0.0,
                        outer_logit_scale=2.65926, templates='random')
  tasks = meta.check_tasks([
      {'name': 'cls', 'image_emb': unit(rng.normal(size=(6, dim))),
       'labels': rng.integers(0, 3, 6),
       'class_text_emb': unit(rng.normal(size=(3, 4, dim)))},
      {'name': 'ret', 'image_emb': unit(rng.normal(size=(6, dim))),
       'text_emb': unit(rng.normal(size=(6, dim))), 'text_image': np.arange(6)}], dim)
  with jax.enable_x64(True):
    f64 = lambda tree: jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64 if np.issubdtype(np.asarray(x).dtype,
                                                                np.floating) else None),
        tree)
    pool = f64({'image_emb': unit(rng.normal(size=(n, dim))),
                'text_emb': unit(rng.normal(size=(n, dim))),
                'z': rng.normal(size=(n, 3))})
    if which == 'flyt':
      scorer = flyt.flyt_scorer(flyt.FlytScorer())
      params = flyt._init(scorer.module, 0, (dim,), (dim,))  # pylint: disable=protected-access
      params = jax.tree_util.tree_map(lambda x: 3.0 * x, params)  # scores of O(1)
    else:
      scorer = flyt.mflyt_scorer(3)
      params = flyt._init(scorer.module, 0, (3,))  # pylint: disable=protected-access
    params = f64(params)
    proxy = proxy_lib.EmbeddingCLIP(head='linear', out_dim=4, hidden=1, dtype=jnp.float64)
    pparams = nn.unbox(proxy.init(jax.random.key(0), jnp.zeros((1, dim)),
                                  jnp.zeros((1, dim)))['params'])
    pparams = f64(jax.tree_util.tree_map(lambda x: x * 20.0 if x.ndim == 2 else x, pparams))
    # A carried proxy: Adam moments from earlier steps, as after the first meta step.
    inner = f64(meta.inner_init(cfg, pparams))
    inner['count'] = jnp.asarray(3, jnp.int32)
    inner['mu'] = jax.tree_util.tree_map(lambda p: 0.1 * jnp.ones_like(p), pparams)
    inner['nu'] = jax.tree_util.tree_map(lambda p: 0.01 * jnp.ones_like(p), pparams)
    feedback = [f64(meta.task_batch(tasks[0], np.arange(6),
                                    meta.random_templates(tasks[0]['class_text_emb'], 0, 0,
                                                          1))),
                f64(meta.task_batch(tasks[1], np.arange(6)))]
    outer = meta.make_outer_loss(cfg, scorer, proxy, [t['kind'] for t in tasks])
    # One compiled program gives both the loss (for the differences) and the gradient.
    value_and_grad = jax.jit(jax.value_and_grad(
        lambda p: outer(p, pparams, inner, jnp.zeros(2), pool, feedback)[0]))
    f = lambda p: value_and_grad(p)[0]
    loss, grad = value_and_grad(params)
    assert loss.dtype == jnp.float64
    # The outer loss does depend on the scorer here (the floor).
    assert_matches_finite_differences(f, grad, params, rng, floor=1e-5)


# ---------------------------------------------------------------------------------------
# Learning on toys whose answer is known, through the selector interface.


@pytest.mark.slow  # 10-15 s of meta-learning: make test-all runs it
def test_flyt_scores_swapped_captions_lower_and_round_trips(tmp_path, on_1_device):
  on_1_device(lambda: _check_flyt_swapped(tmp_path))


def _check_flyt_swapped(tmp_path):
  inputs, swapped = _toy()
  config = _config()
  selector = selectors.get('flyt')
  state = selector.fit(config, inputs)
  scores = selectors.run_selector(selector, config, state, inputs)
  assert auroc(swapped, -scores) > 0.9
  history = state['history']
  assert len(history['outer_loss']) == 200 and history['tasks'] == ['cls']
  assert history['weight_entropy'][-1] < history['weight_entropy'][0]
  # The learn stage's files: the restored state scores the same; hard cap selects from it.
  path = str(tmp_path / learn.STATE)
  learn.save_state(path, state)
  restored = learn.load_state(path)
  np.testing.assert_allclose(selectors.run_selector(selector, config, restored, inputs),
                             scores, rtol=1e-6)
  summary = selector.summary(restored)
  assert summary['width'] == 16 and summary['parameters'] == 2 * (32 * 32 + 32) + 32 + 1
  _, counts = selection.select(config, selector, restored, inputs)
  assert counts.sum() == 256 and counts.max() <= 3
  assert counts[swapped].sum() < counts[~swapped].sum() / 2


@pytest.mark.slow  # 10-15 s of meta-learning: make test-all runs it
def test_mflyt_weights_the_informative_score_most(noise_selector, on_1_device):
  on_1_device(lambda: _check_mflyt_weights(noise_selector))


def _check_mflyt_weights(noise_selector):
  del noise_selector
  inputs, swapped = _toy(seed=1, noise=0.2)
  config = _config(steps=200)
  selector = selectors.get('mflyt')
  assert set(selector.needs_for(config)) == {'features', 'embeddings', 'tasks'}
  assert selector.score_needs_for(config) == ('features',)
  state = selector.fit(config, inputs)
  summary = selector.summary(state)
  weights = {w['input']: w['weight'] for w in summary['weights']}
  assert list(weights) == ['test_noise', 'clip_score', 'random']
  assert weights['clip_score'] > 0
  assert abs(weights['clip_score']) > 2 * max(abs(weights['test_noise']),
                                              abs(weights['random'])), weights
  scores = selectors.run_selector(selector, config, state, inputs)
  assert auroc(swapped, -scores) > 0.9
  # score recomputes the inputs from their states: the same mix by hand.
  x = np.stack([inputs.column(c, 't') for c in ('noise', 'clip_score')] +
               [selectors.run_selector(selectors.get('random'), config, {}, inputs)], 1)
  z = np.clip((x - state['standardizer']['mean']) / state['standardizer']['std'], -5, 5)
  kernel = np.asarray(state['params']['linear']['kernel'])[:, 0]
  np.testing.assert_allclose(scores, z @ kernel + state['bias'], rtol=1e-4, atol=1e-5)


def test_mflyt_fills_a_never_select_score_with_its_lowest_value():
  x = np.array([[1.0, np.nan], [np.nan, 2.0], [3.0, 0.5]])
  fill = [1.0, 0.5]
  np.testing.assert_array_equal(flyt._fill_missing(x, fill),  # pylint: disable=protected-access
                                [[1.0, 0.5], [1.0, 2.0], [3.0, 0.5]])


def test_cosine_init_scores_near_the_clip_cosine():
  """FLYT's cos_sim_init: before any learning the head ranks pairs like their cosine."""
  inputs, swapped = _toy(n=256)
  module = flyt.FlytScorer()
  params = flyt.cosine_init(flyt._init(module, 0, (16,), (16,)),  # pylint: disable=protected-access
                            16, noise_std=0.01, seed=0)
  scores = flyt.apply_chunked(
      lambda p, i, t: flyt.flyt_scorer(module)(p, {'image_emb': i, 'text_emb': t}),
      params, [inputs.image_emb, inputs.text_emb], chunk=100)  # 3 chunks, last padded
  cosine = inputs.column('clip_score', 't')
  assert stats.spearmanr(scores, cosine)[0] > 0.95
  assert auroc(swapped, -scores) > 0.95


@pytest.mark.slow  # 10-15 s of meta-learning: make test-all runs it
def test_flyt_resume_equals_uninterrupted(tmp_path, on_1_device):
  on_1_device(lambda: _check_flyt_resume(tmp_path))


def _check_flyt_resume(tmp_path):
  """Stopped after step 150 (checkpoint at 100) and rerun: the same scorer and history,
  the random templates drawn as an uninterrupted run draws them. (The toy and settings of
  the test above: its compiled step is reused.)"""
  inputs, _ = _toy()
  cfg = meta.config_from(_meta_block(checkpoint_every=100), 0, 'flyt.meta')
  scorer = flyt.flyt_scorer(flyt.FlytScorer())
  params = flyt._init(scorer.module, 0, (16,), (16,))  # pylint: disable=protected-access
  pool = {'image_emb': inputs.image_emb, 'text_emb': inputs.text_emb}
  tasks = [dict(t) for t in inputs.tasks]
  full, full_history = meta.learn(cfg, (scorer, params), pool, tasks, workdir=tmp_path / 'a')
  meta.learn(cfg, (scorer, params), pool, tasks, workdir=tmp_path / 'b', stop_after=150)
  lines = []
  resumed, history = meta.learn(cfg, (scorer, params), pool, tasks, workdir=tmp_path / 'b',
                                log=lines.append)
  assert any('resumed at meta step 100 of 200' in line for line in lines)
  for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert history == full_history
  assert not np.allclose(full['layer_0']['w2']['kernel'], params['layer_0']['w2']['kernel'])
  with pytest.raises(ValueError, match=r"MetaConfig\.templates='random', this run has"):
    meta.learn(meta.config_from(_meta_block(checkpoint_every=100, templates='all'), 0,
                                'flyt.meta'),
               (scorer, params), pool, tasks, workdir=tmp_path / 'b')


def test_scorer_input_errors_name_the_field():
  inputs, _ = _toy(n=64)
  cfg = meta.config_from(_meta_block(steps=1, batch_size=16, task_batch_size=8), 0, 'm')
  tasks = [dict(t) for t in inputs.tasks]
  mix = flyt.mflyt_scorer(3)
  params = flyt._init(mix.module, 0, (3,))  # pylint: disable=protected-access
  pool = {'z': np.zeros((64, 2), np.float32), 'image_emb': inputs.image_emb,
          'text_emb': inputs.text_emb}
  with pytest.raises(ValueError, match=r'pool\.z: expected floats \[N, 3\] \(the '
                     r'standardized input scores\)'):
    meta.learn(cfg, (mix, params), pool, tasks)
  with pytest.raises(ValueError, match=r"pool: field 'z' is missing"):
    meta.learn(cfg, (mix, params), {'image_emb': inputs.image_emb,
                                    'text_emb': inputs.text_emb}, tasks)
  with pytest.raises(ValueError, match='expected a meta.Scorer'):
    meta.learn(cfg, (flyt.MixingScorer(), params), pool, tasks)


# ---------------------------------------------------------------------------------------
# Hard cap sampling.


def _uids(n):
  return [f'{i:032x}' for i in range(n)]


def _hard_cap(scores, fraction, **kw):
  kw = dict(dict(batch_size=4, cap=2, temperature=1.0, seed=0), **kw)
  return selection.hard_cap_counts(np.asarray(scores, float), _uids(len(scores)), fraction,
                                   **kw)


def _flyt_hard_cap_loop(scores, fraction, batch_size, cap, seed):
  """formll/FLYT examples.ipynb hard_cap_sampling, draw for draw with our generator."""
  n = len(scores)
  probs = np.exp(scores - scores.max())
  probs /= probs.sum()
  counts = np.zeros(n, np.int64)
  total, kept = int(round(fraction * n)), 0
  rng = np.random.default_rng([seed, 0x4CA9])
  while kept < total:
    masked = probs * (counts < cap)
    masked = masked / masked.sum()
    batch = rng.choice(n, size=min(batch_size, total - kept), replace=True, p=masked)
    for idx in batch:
      if kept >= total:
        break
      if counts[idx] < cap:
        counts[idx] += 1
        kept += 1
  return counts


@pytest.mark.parametrize('batch_size,cap,fraction', [(7, 2, 0.8), (50, 1, 0.5), (3, 4, 1.0)])
def test_hard_cap_is_flyts_loop(batch_size, cap, fraction):
  scores = np.random.default_rng(0).normal(scale=1.5, size=60)
  got = _hard_cap(scores, fraction, batch_size=batch_size, cap=cap)
  expected = _flyt_hard_cap_loop(scores, fraction, batch_size, cap, seed=0)
  np.testing.assert_array_equal(got, expected)
  assert got.sum() == round(fraction * 60) and got.max() <= cap


def test_hard_cap_hand_cases():
  # Two samples far ahead, budget 2, cap 1: each once.
  np.testing.assert_array_equal(_hard_cap([100, 99, -100, -100], 0.5, cap=1), [1, 1, 0, 0])
  # Budget 4, cap 2: the two best fill it, twice each.
  np.testing.assert_array_equal(_hard_cap([50, 49, -50, -50], 1.0, cap=2), [2, 2, 0, 0])
  # One dominant sample in a batch of 5: its first 2 draws are kept, the other 3 dropped
  # (the cap binds inside a batch); the next batch, without it, fills the budget of 5.
  counts = _hard_cap([100.0] + [0.0] * 9, 0.5, batch_size=5, cap=2)
  assert counts[0] == 2 and counts.sum() == 5 and counts.max() == 2
  # NaN is never drawn; when budget > cap * drawable, each drawable sample gets the cap.
  np.testing.assert_array_equal(_hard_cap([1.0, np.nan, np.nan, np.nan], 1.0, cap=3),
                                [3, 0, 0, 0])
  # A probability that underflows to 0 is still drawn once the others are capped.
  np.testing.assert_array_equal(_hard_cap([0.0, -2000.0], 1.0, cap=1), [1, 1])


def test_hard_cap_follows_softmax_frequencies_and_not_row_order():
  # Cap not binding: i.i.d. draws from softmax; logits differ by log 3 -> 3:1 of the draws.
  scores = np.r_[np.full(1000, np.log(3.0)), np.zeros(1000)]
  counts = _hard_cap(scores, 1.0, batch_size=256, cap=2000)
  share = counts[:1000].sum() / 2000
  assert abs(share - 0.75) < 0.05, share  # std of the share ~0.01
  # Temperature 2 halves the logit gap: sqrt(3):1.
  counts = _hard_cap(scores, 1.0, batch_size=256, cap=2000, temperature=2.0)
  assert abs(counts[:1000].sum() / 2000 - np.sqrt(3) / (1 + np.sqrt(3))) < 0.05
  rng = np.random.default_rng(3)
  scores, uids = rng.normal(size=200), _uids(200)
  base = selection.hard_cap_counts(scores, uids, 0.6, batch_size=16, cap=2)
  perm = rng.permutation(200)
  permuted = selection.hard_cap_counts(scores[perm], [uids[i] for i in perm], 0.6,
                                       batch_size=16, cap=2)
  np.testing.assert_array_equal(permuted, base[perm])


def test_hard_cap_through_select_excludes_ineligible_rows():
  table = pa.table({'uid': _uids(6), 'clip_score': [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
                    'exact_duplicate': [True, False, False, False, False, False]})
  config = ml_collections.ConfigDict({
      'seed': 0, 'clip_score': {'threshold': None},
      'selection': dict(fraction=1.0, method='hard_cap', dedup='exact',
                        hard_cap=dict(batch_size=2, cap=2, temperature=0.01)),
  })
  _, counts = selection.select(config, selectors.get('clip_score'), {},
                               selectors.Inputs(features=table))
  # Temperature 0.01: the best eligible samples (rows 1, 2, 3) take the budget of 6.
  np.testing.assert_array_equal(counts, [0, 2, 2, 2, 0, 0])


# ---------------------------------------------------------------------------------------
# Config checks.


def _default(selector):
  c = default.get_config()
  c.selector.name = selector
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'learn', 'select')
  toy = _config()
  for name in ('flyt', 'mflyt'):
    if name not in c:  # configs/default.py may carry the blocks already
      c[name] = ml_collections.ConfigDict(toy[name].to_dict())
  c.mflyt.inputs = ('clip_score', 'normsim', 'negclipscore')
  if 'hard_cap' not in c.selection:
    c.selection.hard_cap = ml_collections.ConfigDict(dict(batch_size=256, cap=15,
                                                          temperature=1.0))
  return c


@pytest.mark.parametrize('field,value,message', [
    ('selection.hard_cap.cap', 0, r'config.selection.hard_cap.cap: must be >= 1'),
    ('selection.hard_cap.batch_size', 0, r'config.selection.hard_cap.batch_size: must be'),
    ('selection.hard_cap.temperature', 0.0, r'config.selection.hard_cap.temperature: must be'),
])
def test_hard_cap_settings_are_checked(field, value, message):
  c = _default('flyt')
  c.selection.method = 'hard_cap'
  validate(c)
  block, key = field.rsplit('.', 1)
  node = c
  for part in block.split('.'):
    node = node[part]
  node[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    validate(c)


@pytest.mark.parametrize('selector,field,value,message', [
    ('flyt', 'flyt.layers', 0, r'config.flyt.layers: must be >= 1'),
    ('flyt', 'flyt.activation', 'tanh', r'config.flyt.activation: one of silu, relu'),
    ('flyt', 'flyt.init', 'cosine', None),  # valid at layers 1, hidden_mult 1
    ('flyt', 'flyt.hidden_mult', 0.0, r'config.flyt.hidden_mult: must be > 0'),
    ('flyt', 'flyt.meta.inner_lr', -1.0, r'config.flyt.meta.inner_lr: expected a finite'),
    ('flyt', 'flyt.meta.templates', 'some', r'config.flyt.meta.templates: .some. is not'),
    ('flyt', 'flyt.meta.text', 'words', r"config.flyt.meta.text: 'words'; flyt reads the "
     'reference embeddings only'),
    ('mflyt', 'mflyt.inputs', ('clip_score', 'nope'), r"config.mflyt.inputs: unknown "
     r"selector 'nope'"),
    ('mflyt', 'mflyt.inputs', ('semdedup',), r"config.mflyt.inputs: 'semdedup' is configured "
     'as a filter'),
    ('mflyt', 'mflyt.inputs', ('normsim', 'normsim'), 'lists a selector twice'),
    ('mflyt', 'mflyt.inputs', ('mflyt',), 'mflyt cannot mix its own score'),
    ('mflyt', 'mflyt.meta.batch_size', 0, r'config.mflyt.meta.batch_size: expected an '
     'integer >= 1'),
])
def test_flyt_config_errors_name_the_field(selector, field, value, message):
  c = _default(selector)
  validate(c)
  block, key = field.rsplit('.', 1)
  node = c
  for part in block.split('.'):
    node = node[part]
  node[key] = value
  if message is None:
    validate(c)
    return
  with pytest.raises(config_lib.ConfigError, match=message):
    validate(c)


def test_cosine_init_needs_one_layer_of_hidden_mult_one():
  c = _default('flyt')
  c.flyt.init = 'cosine'
  c.flyt.layers = 2
  with pytest.raises(config_lib.ConfigError, match="config.flyt.init: 'cosine' needs"):
    validate(c)
