"""What several test modules share: 8 CPU devices, faster compiles, tiny worlds, helpers.

Every test runs with 8 (fake) CPU devices, as design.md asks: XLA_FLAGS is set here, which
pytest imports before any test module, so before jax starts (jax fixes its device count
when its backend starts; a whole-suite run used to get the flag from whichever sharding
test module was collected first, a single module run did not). A test that needs the 8
devices takes the `on_8_devices` fixture.

Helpers that are not fixtures are imported by the modules that use them
(`from conftest import tiny_world_config`): pytest puts tests/ on sys.path.
"""

import atexit
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

DEVICE_COUNT_FLAG = '--xla_force_host_platform_device_count'
if DEVICE_COUNT_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICE_COUNT_FLAG}=8".strip()

# XLA's compiled programs on disk for this run, shared with the fresh processes some tests
# start (they inherit the variable): many tests compile the same tiny models' programs
# again, in closures the in-memory cache cannot match, and compiling is most of what the
# suite costs on 2 cores (BENCHMARKS.md, "Test suite and CI time"). A fresh directory per
# run, removed at its end, so no run reads another's programs.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='tads_jax_test_xla_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

# For the fresh processes that tests start: XLA's CPU optimizations off, as the
# fast_compiles fixture turns them off inside a module. Each such process compiles every
# tiny program afresh, which costs more than running it (BENCHMARKS.md, "Test suite and CI
# time": the two-process pipeline test 97 s with them off against 120 s on).
FRESH_PROCESS_ENV = {'JAX_DISABLE_MOST_OPTIMIZATIONS': '1'}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # for `from configs import default`
from configs import default  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture
def tfds_tmp(tmp_path, monkeypatch):
  """The system temp folder, for this test, under its tmp_path: tfds's mock builders
  (tfds.testing.mock_data) each leave an empty folder there (DatasetInfo.
  initialize_from_bucket, for a dataset not prepared on disk), which /tmp kept."""
  folder = tmp_path / 'tfds_tmp'
  folder.mkdir()
  monkeypatch.setattr(tempfile, 'tempdir', str(folder))
  return folder


def _on_devices(request, count: int):
  """run(check): check() here when jax has `count` devices, else in a fresh pytest process
  running only this test with XLA_FLAGS set to that count; its failure fails this test."""
  def run(check):
    import jax  # pylint: disable=g-import-not-at-top
    if jax.device_count() == count:
      return check()
    flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
             if not f.startswith(DEVICE_COUNT_FLAG)]
    env = dict(os.environ, XLA_FLAGS=' '.join(flags + [f'{DEVICE_COUNT_FLAG}={count}']),
               **FRESH_PROCESS_ENV)
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-m', '', '-p', 'no:cacheprovider',
         request.node.nodeid], cwd=str(request.config.rootpath), env=env,
        capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return run


@pytest.fixture
def on_8_devices(request):
  """Runs check() with 8 devices: here, or, when jax has another count (XLA_FLAGS set
  before pytest started), in a fresh pytest process running only this test with 8."""
  return _on_devices(request, 8)


@pytest.fixture
def on_1_device(request):
  """Runs check() with one device, in a fresh process when this one has 8: for learning
  toys whose programs would otherwise run data-parallel over 8 virtual CPU devices, where
  XLA's collectives can deadlock on 2 cores (FLYT's meta step did, BENCHMARKS.md)."""
  return _on_devices(request, 1)


@pytest.fixture(scope='module')
def fast_compiles():
  """XLA's CPU optimizations off while a module runs: its programs are tiny, so compiling
  them optimized costs more than it saves (the tiny CLIP's train step: ~25 s against ~8 s
  on two cores). A module opts in with pytestmark = pytest.mark.usefixtures(...)."""
  import jax  # pylint: disable=g-import-not-at-top
  previous = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', True)
  yield
  jax.config.update('jax_disable_most_optimizations', previous)


@pytest.fixture
def float64_proxy(monkeypatch):
  """The proxy's heads pin float32 (clip._dot); under this fixture they keep float64, so
  that a meta-gradient can be checked against finite differences in float64 (with
  jax_enable_x64) along the whole path from the scores to the outer loss
  (losses.normalize and losses.weighted_clip_loss keep float64 of themselves)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from tads_jax.models import clip  # pylint: disable=g-import-not-at-top

  def dot64(spec, x, kernel, dtype):
    dtype = jnp.promote_types(dtype, x.dtype)
    return jnp.einsum(spec, x.astype(dtype), kernel.astype(dtype),
                      preferred_element_type=dtype)

  monkeypatch.setattr(clip, '_dot', dot64)


def tiny_world_config():
  """The default config on a 100-sample synthetic world (two shards) with a tiny reference
  CLIP trained on its 200 trusted pairs in ~30 steps: the world of the stage tests."""
  c = default.get_config()
  c.stages = ('ingest', 'encoder')
  c.selector.name = 'random'
  c.evaluate.pixel_check.seeds = 0  # the tests that want it turn it on
  c.encoder.image_size = 32
  c.pool.synthetic.update(dict(num_samples=100, shard_size=50, trusted_size=200,
                               train_per_class=1, eval_per_class=1, retrieval_train=4,
                               retrieval_eval=4))
  c.encoder.model = 'tiny'
  c.encoder.model_overrides = {}
  c.encoder.context_length = 16
  c.encoder.vocab_size = 600
  c.encoder.batch_size = 32
  c.encoder.samples_seen = 32 * 30
  c.encoder.warmup = 5
  c.encoder.checkpoint_every = 10
  # The default's word loss is tested in test_reference_losses.py, on one device or in a
  # process of its own: training with it on the suite's 8 in-process devices was followed
  # by an XLA:CPU collective deadlock in a later 8-device test (BENCHMARKS.md, session 21).
  c.encoder.word_loss = 0.0
  return c


def load_tool(name: str):
  """The module tools/<name>.py (tools are scripts, not a package)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, 'tools', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def validate(c):
  """config.validate with every stage and selector the CLI knows."""
  from tads_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from tads_jax import selectors  # pylint: disable=g-import-not-at-top
  from tads_jax import stages  # pylint: disable=g-import-not-at-top
  config_lib.validate(c, stages.STAGE_NAMES, selectors.SELECTORS)


def assert_same_training(got, ref, rtol=1e-5, atol=1e-5):
  """Two train.train results (params, history) agree: every step's loss and every param.
  For a sharded run against one device, whose layouts round differently in the last bits."""
  import jax  # pylint: disable=g-import-not-at-top
  np.testing.assert_allclose(got[1]['loss'], ref[1]['loss'], rtol=rtol)
  for a, b in zip(jax.tree_util.tree_leaves(ref[0]), jax.tree_util.tree_leaves(got[0])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol)


def unit(x):  # [..., D] -> float32 unit rows
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def read_eval_json(workdir):
  """The evaluate stage's eval.json of a workdir."""
  import json  # pylint: disable=g-import-not-at-top
  from tads_jax.stages import evaluate  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, evaluate.EVAL)) as f:
    return json.load(f)


def auroc(positive, score):
  """P(score of a positive > score of a negative), ties half (Mann-Whitney)."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  ranks = stats.rankdata(score)
  p, n = positive.sum(), (~positive).sum()
  return (ranks[positive].sum() - p * (p + 1) / 2) / (p * n)


def assert_matches_finite_differences(f, grad, params, rng, floor, eps=1e-5, rtol=1e-3,
                                      directions=3):
  """Each of `directions` random directions d: the central difference
  (f(p + eps d) - f(p - eps d)) / 2 eps equals <grad, d> within rtol, and |<grad, d>| >
  floor (so that the check is not of a function that ignores p). Call under float64."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  leaves = jax.tree_util.tree_leaves
  for _ in range(directions):
    direction = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float64), params)
    plus = jax.tree_util.tree_map(lambda p, d: p + eps * d, params, direction)
    minus = jax.tree_util.tree_map(lambda p, d: p - eps * d, params, direction)
    numeric = float((f(plus) - f(minus)) / (2 * eps))
    analytic = float(sum(jnp.sum(g * d) for g, d in zip(leaves(grad), leaves(direction))))
    assert abs(analytic) > floor, analytic
    assert abs(numeric - analytic) <= rtol * abs(analytic), (numeric, analytic)
