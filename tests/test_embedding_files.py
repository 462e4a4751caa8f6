"""The pool's embeddings on disk (stages/embed.EmbeddingFiles): what the learn, select and
evaluate stages give a selector instead of [N, E] arrays (issue 17 item 3).

References: numpy fancy indexing for RowFile; embed.pool_embeddings (the whole arrays, as the
stages read them before) for the blocks and rows; and each selector's own score on
in-memory Inputs for the streamed run, which must agree exactly (same float16 values, same
fixed-size chunks)."""

import os

import numpy as np
import pytest

import test_features_stage
from tads_jax import main
from tads_jax import pipeline
from tads_jax import selectors
from tads_jax.stages import embed
from tads_jax.stages import learn


def test_row_file_gathers_like_numpy_indexing(tmp_path):
  rng = np.random.default_rng(0)
  table = rng.standard_normal((37, 5)).astype(np.float16)
  path = str(tmp_path / 'rows.f16')
  table.tofile(path)
  rows = embed.RowFile(path, 37, 5)
  for idx in ([3, 1, 1, 36, 0], np.arange(37)[::-1], [5, 6, 7, 8, 20, 21], [], [4]):
    got = rows[np.asarray(idx, np.int64)]
    assert got.dtype == np.float32 and got.shape == (len(idx), 5)
    np.testing.assert_array_equal(got, table[np.asarray(idx, np.int64)].astype(np.float32))
  np.testing.assert_array_equal(rows[10:17], table[10:17].astype(np.float32))
  np.testing.assert_array_equal(rows[:0], np.zeros((0, 5), np.float32))
  assert rows.shape == (37, 5) and np.shape(rows) == (37, 5)
  with pytest.raises(IndexError, match='rows.f16'):
    rows[np.asarray([37])]
  rows.close()


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """The tiny world through ingest, embed and features."""
  work = str(tmp_path_factory.mktemp('embedding_files'))
  c = test_features_stage.config()
  c.stages = ('ingest', 'encoder', 'embed', 'features')
  main.run(c, work)
  return work, c


def _ctx(workdir):
  work, c = workdir
  return pipeline.Context(config=c, workdir=work)


def test_blocks_and_rows_are_the_stored_embeddings_and_close_removes_the_copies(workdir):
  ctx = _ctx(workdir)
  _, image, text, _ = embed.pool_embeddings(ctx)
  spill = os.path.join(workdir[0], 'spill')
  source = embed.EmbeddingFiles(ctx, spill_dir=spill)
  blocks = list(source.blocks())
  assert len(blocks) == 2  # one per shard
  np.testing.assert_array_equal(np.concatenate([b[0] for b in blocks]), image)
  np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), text)
  image_rows, text_rows = source.rows()
  idx = np.random.default_rng(1).integers(0, len(image), 40)
  np.testing.assert_array_equal(image_rows[idx], image[idx])
  np.testing.assert_array_equal(text_rows[idx], text[idx])
  assert len(os.listdir(spill)) == 2
  # The copies are named as temporaries: a killed run's are removed by the next run.
  assert all(pipeline._TEMPORARY_FILE.fullmatch(name) for name in os.listdir(spill))
  source.close()
  assert os.listdir(spill) == []


@pytest.mark.parametrize('name', ['semdedup', 'normsim', 'tads'])
def test_a_selector_on_the_stored_embeddings_equals_it_on_arrays(workdir, name):
  ctx = _ctx(workdir)
  config = ctx.config.copy_and_resolve_references()
  config.selector.name = name
  config.tads.meta.update(dict(steps=4, batch_size=16, unroll=2, task_batch_size=8,
                               head_hidden=32))
  selector = selectors.get(name)
  with learn.selector_inputs(ctx, ('features', 'embeddings', 'tasks'), 'select') as streamed:
    assert streamed.image_emb is None and streamed.embedding_source is not None
    _, image, text, _ = embed.pool_embeddings(ctx)
    arrays = selectors.Inputs(features=streamed.features, image_emb=image, text_emb=text,
                              tasks=streamed.tasks)
    results = []
    for inputs in (streamed, arrays):
      state = selector.fit(config, inputs)
      results.append(np.asarray(selector.score(config, state, inputs)))
  np.testing.assert_array_equal(results[0], results[1])
  assert os.listdir(ctx.stage_dir('select')) == []  # the spill files are gone


@pytest.mark.parametrize('name', ['clip_score', 'normsim', 'tads'])
def test_the_select_stage_scores_a_shard_at_a_time_as_the_whole_pool(workdir, tmp_path, name):
  """A rowwise selector's scores, counts and subset from the select stage (one shard at a
  time, the features columns it declares) equal its score and selection.select on the
  whole pool's Inputs with every column, as the stage ran before."""
  import shutil  # pylint: disable=g-import-not-at-top
  from tads_jax import selection  # pylint: disable=g-import-not-at-top
  from tads_jax.data import subset as subset_lib  # pylint: disable=g-import-not-at-top
  from tads_jax.stages import select  # pylint: disable=g-import-not-at-top
  work = str(tmp_path / 'work')
  shutil.copytree(workdir[0], work)
  c = workdir[1].copy_and_resolve_references()
  c.selector.name = name
  c.selection.dedup = 'exact'
  c.tads.meta.update(dict(steps=4, batch_size=16, unroll=2, task_batch_size=8,
                          head_hidden=32))
  c.stages = c.stages + (('learn',) if name == 'tads' else ()) + ('select',)
  main.run(c, work)
  ctx = pipeline.Context(config=c, workdir=work)
  selector = selectors.get(name)
  _, image, text, _ = embed.pool_embeddings(ctx)
  with learn.selector_inputs(ctx, ('tasks',), 'select') as inputs:
    whole = selectors.Inputs(features=inputs.features, image_emb=image, text_emb=text,
                             tasks=inputs.tasks)
  state = learn.read_state(ctx) if selector.learns else selector.fit(c, whole)
  values, counts = selection.select(c, selector, state, whole)
  scores = select.read_scores(ctx)
  np.testing.assert_array_equal(scores.column('score').to_numpy(), values)
  np.testing.assert_array_equal(scores.column('times_selected').to_numpy(), counts)
  assert scores.column_names[:-2] == whole.features.column_names
  got = subset_lib.read_subset(ctx.path(select.SUBSET))
  np.testing.assert_array_equal(got, np.sort(subset_lib.uids_to_array(
      [u for u, k in zip(whole.uids, counts) for _ in range(k)])))
  assert 0 < counts.sum() < len(counts)
