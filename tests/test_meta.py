"""Meta-learning: config and task checks, inner optimizers against optax, the meta-gradient
against finite differences (float64), memory under remat, learning on a toy with known
answers, resume, and 8-device sharding (conftest.py's on_8_devices).

XLA's CPU optimizations are off while this module runs (conftest.py's fast_compiles).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tads_jax import meta
from tads_jax import sharding
from tads_jax import train
from tads_jax import value
from tads_jax.models import proxy as proxy_lib
from conftest import assert_matches_finite_differences, auroc, unit

pytestmark = pytest.mark.usefixtures('fast_compiles')


def _random_problem(n=128, dim=8, features=3, seed=0):
  """A pool and one task of each kind, all random (for mechanics, not learning)."""
  rng = np.random.default_rng(seed)
  pool = {'z': rng.normal(size=(n, features)).astype(np.float32),
          'image_emb': unit(rng.normal(size=(n, dim))).astype(np.float16),
          'text_emb': unit(rng.normal(size=(n, dim))).astype(np.float16)}
  tasks = [{'name': 'cls', 'image_emb': unit(rng.normal(size=(40, dim))),
            'labels': rng.integers(0, 5, 40), 'class_text_emb': unit(rng.normal(
                size=(5, 3, dim)))},
           {'name': 'ret', 'image_emb': unit(rng.normal(size=(30, dim))),
            'text_emb': unit(rng.normal(size=(60, dim))),
            'text_image': np.repeat(np.arange(30), 2)}]
  return pool, tasks


NAMES3 = ('clip_score', 'near_uniform', 'cluster_weight')


def _value_function(names=NAMES3, hidden=(4,), seed=0, out_scale=0.0):
  module = value.make_value_function(names, hidden=hidden)
  params = value.init_params(module, seed)
  if out_scale:
    rng = np.random.default_rng(seed + 1)
    params['out']['kernel'] = jnp.asarray(
        out_scale * rng.normal(size=params['out']['kernel'].shape), jnp.float32)
  return module, params


# ---------------------------------------------------------------------------------------
# Config and inputs.


@pytest.mark.parametrize('field, bad', [
    ('steps', 0), ('batch_size', 2.0), ('unroll', 0), ('inner_optimizer', 'rmsprop'),
    ('inner_lr', 0.0), ('tau', -1.0), ('value_lr', float('nan')),
    ('value_weight_decay', -1e-3), ('task_weight_rate', -1.0), ('head', 'conv'),
    ('seed', -1), ('checkpoint_every', True), ('remat', 1), ('inner_b2', 1.0)])
def test_config_errors_name_the_field(field, bad):
  with pytest.raises(ValueError, match=rf'MetaConfig\.{field}:'):
    meta.MetaConfig(**{field: bad})


def test_task_errors_name_task_and_field():
  _, tasks = _random_problem()
  bad = dict(tasks[0], labels=np.full(40, 5))
  with pytest.raises(ValueError, match=r'tasks\[0\] \(cls\)\.labels: must be in \[0, 5\)'):
    meta.check_tasks([bad], 8)
  bad = dict(tasks[1], text_emb=np.zeros((60, 7), np.float32))
  with pytest.raises(ValueError, match=r'tasks\[0\] \(ret\)\.text_emb: .*D=8'):
    meta.check_tasks([bad], 8)
  bad = {k: v for k, v in tasks[1].items() if k != 'text_emb'}
  with pytest.raises(ValueError, match=r"tasks\[0\] \(ret\): field 'text_emb' is missing"):
    meta.check_tasks([bad], 8)
  with pytest.raises(ValueError, match=r"tasks\[0\] \(task0\)\.kind"):
    meta.check_tasks([{'image_emb': np.zeros((2, 8))}], 8)


def test_task_weights_rule_by_hand():
  got = meta.task_weights(2.0, jnp.array([1.0, 3.0]), jnp.array([1.0, 2.0]))
  # softmax(2 * [1/1, 3/2]) = softmax([2, 3])
  np.testing.assert_allclose(got, np.exp([2, 3]) / np.exp([2, 3]).sum(), rtol=1e-6)
  np.testing.assert_allclose(meta.task_weights(0.0, jnp.array([1.0, 9.0]),
                                               jnp.array([1.0, 1.0])), [0.5, 0.5])


def test_task_losses_match_numpy():
  """Zero-shot cross-entropy and retrieval CLIP loss of an identity proxy, by hand."""
  pool, tasks = _random_problem(dim=6)
  tasks = meta.check_tasks(tasks, 6)
  proxy = meta.make_proxy(meta.MetaConfig(head='linear'), 6)
  params = {'image': {'proj': {'kernel': jnp.eye(6)}}, 'text': {'proj': {'kernel': jnp.eye(6)}},
            'logit_scale': jnp.asarray(np.log(20.0), jnp.float32)}
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  batch = meta.task_batch(tasks[0], np.arange(10))
  classes = unit(unit(batch['class_text_emb']).mean(axis=1))  # [C, D]
  logits = 20.0 * unit(batch['image_emb']) @ classes.T
  log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  expected = -np.mean(log_p[np.arange(10), batch['labels']])
  assert float(meta.classification_loss(proxy, params, batch)) == pytest.approx(expected,
                                                                               rel=1e-5)
  batch = meta.task_batch(tasks[1], np.arange(0, 12, 2))  # texts of images 0..5
  np.testing.assert_array_equal(batch['image_emb'], tasks[1]['image_emb'][:6])
  logits = 20.0 * unit(batch['image_emb']) @ unit(batch['text_emb']).T
  ce = lambda l: np.mean(np.log(np.exp(l).sum(axis=1)) - np.diag(l))
  expected = 0.5 * (ce(logits) + ce(logits.T))
  assert float(meta.retrieval_loss(proxy, params, batch)) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------------------
# Inner optimizers and the carried proxy.


@pytest.mark.parametrize('name, reference', [
    ('sgd', lambda c: optax.sgd(c.inner_lr)),
    ('adam', lambda c: optax.adam(c.inner_lr, b1=c.inner_b1, b2=c.inner_b2, eps=c.inner_eps))])
def test_inner_optimizer_matches_optax(name, reference):
  cfg = meta.MetaConfig(inner_optimizer=name, inner_lr=0.05)
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
            'logit_scale': jnp.asarray(2.0, jnp.float32)}
  opt = reference(cfg)
  ref_params, ref_state = params, opt.init(params)
  state = meta.inner_init(cfg, params)
  for _ in range(4):
    grads = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    params, state = meta.inner_update(cfg, params, grads, state)
    updates, ref_state = opt.update(grads, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
  assert int(state['count']) == 4
  for key in ('w', 'logit_scale'):
    np.testing.assert_allclose(params[key], ref_params[key], rtol=1e-5, atol=1e-6)


def test_meta_steps_carry_the_proxy_like_plain_training():
  """Two meta steps leave the proxy where 2K optax Adam steps on the value-weighted loss of
  the two batches would (FLYT's update_reference_model, optimizer state carried)."""
  pool, tasks = _random_problem()
  tasks = meta.check_tasks(tasks, 8)
  cfg = meta.MetaConfig(steps=2, batch_size=16, unroll=3, inner_lr=0.02, tau=0.5,
                        task_batch_size=8)
  module, vparams = _value_function(out_scale=0.5)
  proxy = meta.make_proxy(cfg, 8)
  optimizer = meta.make_value_optimizer(cfg)
  state = meta.init_state(cfg, vparams, proxy, 8, len(tasks), optimizer)
  step = jax.jit(meta.make_meta_step(cfg, module, proxy, [t['kind'] for t in tasks],
                                     optimizer))
  adam = optax.adam(cfg.inner_lr, b1=cfg.inner_b1, b2=cfg.inner_b2, eps=cfg.inner_eps)
  ref_params, ref_state = state.proxy_params, adam.init(state.proxy_params)
  grad_fn = jax.jit(jax.grad(train.make_loss_fn(proxy, 'embedding')))
  for s in range(2):
    rows = np.arange(16) + 16 * s
    batch = {k: v[rows] for k, v in pool.items()}
    # The weights the step must use, from the value params it starts with.
    w = jax.nn.softmax(module.apply({'params': state.value_params}, batch['z']) / cfg.tau)
    for _ in range(cfg.unroll):
      grads = grad_fn(ref_params, batch['image_emb'], batch['text_emb'], w)
      updates, ref_state = adam.update(grads, ref_state, ref_params)
      ref_params = optax.apply_updates(ref_params, updates)
    state, metrics = step(state, batch, [meta.task_batch(t, np.arange(8)) for t in tasks])
    assert int(state.step) == s + 1
  assert int(state.inner_state['count']) == 2 * cfg.unroll
  for a, b in zip(jax.tree_util.tree_leaves(ref_params),
                  jax.tree_util.tree_leaves(state.proxy_params)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  np.testing.assert_allclose(np.sum(metrics['task_weights']), 1.0, rtol=1e-6)


# ---------------------------------------------------------------------------------------
# The meta-gradient against central finite differences, in float64.


def _with_word_ids(pool, tasks, vocab=12, words=5, seed=2):
  """The problem with random word ids beside the embeddings (MetaConfig.text='words')."""
  rng = np.random.default_rng(seed)
  ids = lambda *shape: rng.integers(0, vocab, size=shape + (words,)).astype(np.int32)
  pool = dict(pool, text_ids=ids(len(pool['image_emb'])))
  tasks = [dict(t, class_text_ids=ids(*t['class_text_emb'].shape[:2])) if 'labels' in t
           else dict(t, text_ids=ids(len(t['text_emb']))) for t in tasks]
  return pool, tasks


@pytest.mark.parametrize('text', ['reference', 'words'])
@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_meta_gradient_matches_finite_differences(optimizer, text, float64_proxy):
  """Through either text side of the proxy: the reference's embeddings under a head, or a
  word-bag tower over word ids."""
  del float64_proxy  # the whole path from V to the outer loss in float64
  pool, tasks = _random_problem(n=8, dim=5)
  if text == 'words':
    pool, tasks = _with_word_ids(pool, tasks)
  tasks = meta.check_tasks(tasks, 5, text)
  cfg = meta.MetaConfig(unroll=3, inner_optimizer=optimizer, text=text,
                        inner_lr=0.5 if optimizer == 'sgd' else 0.05, tau=0.7,
                        task_weight_rate=0.0, inner_eps=1e-3)
  module, vparams = _value_function(hidden=(4,), out_scale=0.7)
  with jax.enable_x64(True):
    f64 = lambda tree: jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64 if np.issubdtype(np.asarray(x).dtype,
                                                                np.floating) else None),
        tree)
    proxy = proxy_lib.EmbeddingCLIP(head='linear', out_dim=4, hidden=1, dtype=jnp.float64,
                                    text_vocab=12 if text == 'words' else 0)
    pparams = nn.unbox(proxy.init(jax.random.key(0), jnp.zeros((1, 5)), jnp.zeros(
        (1, 5), jnp.int32 if text == 'words' else jnp.float32))['params'])
    # The inits are 0.02 * N(0, 1): scaled to O(1) so that the proxy's updates matter.
    pparams = f64(jax.tree_util.tree_map(lambda x: x * 20.0 if x.ndim == 2 else x,
                                         pparams))
    vparams = f64(vparams)
    pool_batch = f64(pool)
    feedback = [f64(meta.task_batch(tasks[0], np.arange(5))),
                f64(meta.task_batch(tasks[1], np.arange(0, 12, 2)))]
    inner_state = f64(meta.inner_init(cfg, pparams))
    losses0 = jnp.zeros(2, jnp.float64)

    def loss_at(cfg_, params):
      return meta.make_outer_loss(cfg_, module, proxy, [t['kind'] for t in tasks])(
          params, pparams, inner_state, losses0, pool_batch, feedback)[0]

    f = jax.jit(lambda p: loss_at(cfg, p))
    grad = jax.jit(jax.grad(lambda p: loss_at(cfg, p)))(vparams)
    assert f(vparams).dtype == jnp.float64
    # remat changes memory, not the gradient.
    no_remat = jax.jit(jax.grad(
        lambda p: loss_at(dataclasses.replace(cfg, remat=False), p)))(vparams)
    for a, b in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(no_remat)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
    # The outer loss does depend on V here (the floor).
    assert_matches_finite_differences(f, grad, vparams, np.random.default_rng(1), floor=1e-4)


# ---------------------------------------------------------------------------------------
# Memory.


def _temp_bytes(cfg, tasks, module, vparams):
  kinds = [t['kind'] for t in tasks]
  proxy = meta.make_proxy(cfg, 32)
  optimizer = meta.make_value_optimizer(cfg)
  state = meta.init_state(cfg, vparams, proxy, 32, len(tasks), optimizer)
  step = jax.jit(meta.make_meta_step(cfg, module, proxy, kinds, optimizer))
  rng = np.random.default_rng(0)
  pool = {'z': np.zeros((cfg.batch_size, 3), np.float32),
          'image_emb': unit(rng.normal(size=(cfg.batch_size, 32))),
          'text_emb': unit(rng.normal(size=(cfg.batch_size, 32)))}
  feedback = [meta.task_batch(t, np.arange(16)) for t in tasks]
  compiled = step.lower(state, pool, feedback).compile()
  carry = sum(x.nbytes for x in jax.tree_util.tree_leaves(
      (state.proxy_params, state.inner_state)))
  return compiled.memory_analysis().temp_size_in_bytes, carry


def test_remat_keeps_only_the_carry_per_unrolled_step():
  """The backward pass through K inner steps needs the K carries (proxy params and Adam
  moments); with remat that is all it keeps, without it every step's activations (the
  [B, B] logits, ...) too."""
  rng = np.random.default_rng(0)
  tasks = meta.check_tasks([{'image_emb': unit(rng.normal(size=(16, 32))),
                             'labels': rng.integers(0, 4, 16),
                             'class_text_emb': unit(rng.normal(size=(4, 2, 32)))}], 32)
  module, vparams = _value_function()
  temp = {}
  for remat in (True, False):
    for k in (2, 16):
      cfg = meta.MetaConfig(batch_size=256, unroll=k, remat=remat, task_batch_size=16)
      temp[remat, k], carry = _temp_bytes(cfg, tasks, module, vparams)
  per_step_remat = (temp[True, 16] - temp[True, 2]) / 14
  per_step_plain = (temp[False, 16] - temp[False, 2]) / 14
  print('temp bytes', temp, 'carry', carry)
  assert per_step_remat <= 1.25 * carry, (temp, carry)
  assert per_step_plain >= 4 * carry, (temp, carry)  # the check can fail: it does here


# ---------------------------------------------------------------------------------------
# Learning on a toy whose answer is known.


def test_swapped_captions_get_lower_value():
  """Half the pool's captions name a wrong class; the task classifies the same classes.
  From a zero prior, meta-learning must learn to value the image-text cosine."""
  rng = np.random.default_rng(0)
  classes, dim, n = 8, 16, 512
  centroids = unit(rng.normal(size=(classes, dim)))
  label = rng.integers(0, classes, n)
  swapped = np.arange(n) % 2 == 1
  caption = np.where(swapped, (label + rng.integers(1, classes, n)) % classes, label)
  image = unit(centroids[label] + 0.2 * rng.normal(size=(n, dim)))
  text = unit(centroids[caption] + 0.2 * rng.normal(size=(n, dim)))
  features = np.stack([np.sum(image * text, axis=1), rng.normal(size=n),
                       rng.normal(size=n)], axis=1)
  names = ('clip_score', 'width', 'height')  # [cosine, noise, noise]
  z = value.Standardizer.fit(features, names).transform(features)
  task_label = rng.integers(0, classes, 256)
  task = {'image_emb': unit(centroids[task_label] + 0.2 * rng.normal(size=(256, dim))),
          'labels': task_label,
          'class_text_emb': unit(centroids[:, None] + 0.1 * rng.normal(
              size=(classes, 2, dim)))}
  module = value.make_value_function(names, hidden=(8,), zero_prior=True)
  params = value.init_params(module)
  cfg = meta.MetaConfig(steps=40, batch_size=64, unroll=2, inner_optimizer='sgd',
                        inner_lr=0.5, value_lr=0.05, value_grad_clip=0.0,
                        task_batch_size=64, log_every=40)
  learned, history = meta.learn(cfg, (module, params),
                                {'z': z, 'image_emb': image, 'text_emb': text}, [task])
  v = np.asarray(module.apply({'params': learned}, z))
  assert auroc(swapped, -v) >= 0.9
  weights = value.feature_weights(module, learned, z)
  assert weights['clip_score']['linear'] > 0 and weights['clip_score']['effective'] > 0
  assert len(history['outer_loss']) == 40 and history['tasks'] == ['task0']
  # The learned V concentrates the batch weights (entropy below uniform's 1).
  assert history['weight_entropy'][0] == pytest.approx(1.0)
  assert history['weight_entropy'][-1] < 0.95


# ---------------------------------------------------------------------------------------
# Resume and sharding.


RESUME = meta.MetaConfig(steps=6, batch_size=32, unroll=2, inner_lr=0.01, value_lr=0.01,
                         task_batch_size=16, checkpoint_every=2, log_every=3)


def test_resume_equals_uninterrupted(tmp_path):
  pool, tasks = _random_problem()
  value_fn = _value_function(out_scale=0.3)
  full, full_history = meta.learn(RESUME, value_fn, pool, tasks, workdir=tmp_path / 'a')
  # Killed after step 3 (last checkpoint at 2), then resumed to the end.
  meta.learn(RESUME, value_fn, pool, tasks, workdir=tmp_path / 'b', stop_after=3)
  lines = []
  resumed, history = meta.learn(RESUME, value_fn, pool, tasks, workdir=tmp_path / 'b',
                                log=lines.append)
  assert any('resumed at meta step 2 of 6' in line for line in lines)
  for a, b in zip(jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  assert history == full_history and history['step'] == [1, 2, 3, 4, 5, 6]
  # The values moved: the test compares a run that did something.
  assert not np.allclose(full['linear'], value_fn[1]['linear'])
  # Task weights: uniform at the first step, then they follow the losses.
  np.testing.assert_allclose(full_history['task_weights'][0], [0.5, 0.5])
  with pytest.raises(ValueError, match=r'MetaConfig\.seed=0, this run has 1'):
    meta.learn(dataclasses.replace(RESUME, seed=1), value_fn, pool, tasks,
               workdir=tmp_path / 'b')
  with pytest.raises(ValueError, match=r'written for other data \(pool'):
    meta.learn(RESUME, value_fn, dict(pool, z=pool['z'] + 1), tasks, workdir=tmp_path / 'b')


def test_learn_input_errors():
  pool, tasks = _random_problem()
  value_fn = _value_function()
  with pytest.raises(ValueError, match=r'pool\.z: expected floats \[N, 3\]'):
    meta.learn(RESUME, value_fn, dict(pool, z=pool['z'][:, :2]), tasks)
  with pytest.raises(ValueError, match=r'pool\.text_emb: expected floats \[128, D\]'):
    meta.learn(RESUME, value_fn, dict(pool, text_emb=pool['text_emb'][:5]), tasks)
  with pytest.raises(ValueError, match="batch_size: 256 is more than the pool's 128"):
    meta.learn(dataclasses.replace(RESUME, batch_size=256), value_fn, pool, tasks)


def test_rows_draw_the_batches_from_part_of_the_pool(tmp_path):
  """rows=R (TADS's gate) learns what the pool cut to R learns: the batches are the same
  rows in the same order. A checkpoint written for R does not resume without it."""
  pool, tasks = _random_problem()
  value_fn = _value_function(out_scale=0.3)
  rows = np.flatnonzero(np.arange(128) % 3 != 1)  # 85 of 128
  got, history = meta.learn(RESUME, value_fn, pool, tasks, rows=rows,
                            workdir=tmp_path / 'a')
  cut, cut_history = meta.learn(RESUME, value_fn, {k: v[rows] for k, v in pool.items()},
                                tasks)
  assert history == cut_history
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(cut)):
    np.testing.assert_array_equal(a, b)
  whole, _ = meta.learn(RESUME, value_fn, pool, tasks)
  assert not np.allclose(whole['linear'], got['linear'])  # other rows, another result
  with pytest.raises(ValueError, match=r'written for other data \(pool'):
    meta.learn(RESUME, value_fn, pool, tasks, workdir=tmp_path / 'a')
  with pytest.raises(ValueError, match="batch_size: 32 is more than the pool's 20 rows "
                     'meta-learned on'):
    meta.learn(RESUME, value_fn, pool, tasks, rows=rows[:20])
  with pytest.raises(ValueError, match=r'rows: \(1, 3\) indices'):
    meta.learn(RESUME, value_fn, pool, tasks, rows=np.zeros((1, 3), int))


def check_sharded_meta_learning():
  """The pool batch split over 8 devices gives what one device gives; raises otherwise."""
  assert jax.device_count() >= 8, jax.devices()
  pool, tasks = _random_problem()
  value_fn = _value_function(out_scale=0.3)
  cfg = dataclasses.replace(RESUME, steps=3)
  one, one_history = meta.learn(cfg, value_fn, pool, tasks)
  mesh = sharding.make_mesh(8, 1)
  got, history = meta.learn(cfg, value_fn, pool, tasks, mesh=mesh)
  np.testing.assert_allclose(history['outer_loss'], one_history['outer_loss'], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(got)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # config.mesh.rules = 'fsdp': the proxy's kernels split over the data axis, same result.
  fsdp, fsdp_history = meta.learn(cfg, value_fn, pool, tasks, mesh=mesh, rules='fsdp')
  np.testing.assert_allclose(fsdp_history['outer_loss'], one_history['outer_loss'], rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(fsdp)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  with pytest.raises(ValueError, match=r"batch_size: 12 is not a multiple of the mesh's "
                     r'data axis \(8 devices\)'):
    meta.learn(dataclasses.replace(cfg, batch_size=12), value_fn, pool, tasks, mesh=mesh)


def test_sharded_meta_learning_matches_single_device(on_8_devices):
  on_8_devices(check_sharded_meta_learning)


def test_a_pool_smaller_than_a_batch_shrinks_the_batch_and_says_so(caplog):
  """The selectors call fit_batch_to_pool before meta.learn: the batch becomes the pool
  (a multiple of the data axis), logged with the config field's name."""
  import logging  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  cfg = dataclasses.replace(RESUME, batch_size=256)
  with caplog.at_level(logging.WARNING):
    fitted = meta.fit_batch_to_pool(cfg, 240, mesh, 'config.tads.meta')
  assert fitted.batch_size == 240 and fitted.steps == cfg.steps
  assert "config.tads.meta.batch_size: 256 is more than the pool's 240 rows; using 240" in \
      caplog.text
  assert meta.fit_batch_to_pool(cfg, 300, mesh, 'x') is cfg
  with pytest.raises(ValueError, match=r'config.tads.meta.batch_size: the pool has 0 rows'):
    meta.fit_batch_to_pool(cfg, 0, mesh, 'config.tads.meta')
