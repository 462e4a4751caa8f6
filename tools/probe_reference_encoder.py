r"""Does a reference CLIP trained on a synthetic world's trusted set see each attribute?

Trains the reference encoder as the encoder stage does (BPE on the trusted captions, the
'small' CLIP with overrides, kind 'pixels'), then on every task's eval split prints zero-shot
top-1 / retrieval R@1 and, for classification, a 5-fold ridge linear probe on the image
embeddings (does the image tower carry the attribute at all, whatever the text side does).

  python tools/probe_reference_encoder.py --workdir workdir/default \
      --settings '{"samples_seen": 50000, "lr": 1e-3}'

--workdir: a run whose ingest generated the synthetic world (ingest/world). --settings: JSON
with any of image_size, overrides (CLIPConfig fields), batch_size, samples_seen, lr, warmup,
context_length, vocab_size, and 'train' (other TrainConfig fields). Defaults: the encoder
block of configs/default.py, which since session 22 trains with the word loss; the rows of
sessions 4-21 ran without it, so add "train": {"word_loss": 0} to rerun them. --trained
scores the reference the run's encoder stage trained (workdir/encoder/clip) instead of
training one:

  python tools/probe_reference_encoder.py --workdir workdir/default --trained

Recipes tried in session 4 for issue 13 item 1 (a reference that sees shape), kept here
so that their numbers in BENCHMARKS.md can be reproduced. None of them made shape visible,
so none is in the encoder stage. Since session 7 the default encoder is clip.CNNTower at
64 px. Those rows ran on the ViT encoder block of that time, and `{}` now means the CNN.
Add OLD_VIT to their settings to rerun them:
  "image_size": 32, "samples_seen": 50000, "lr": 1e-3, "warmup": 50,
  "overrides": {"vision_tower": "vit", "vision_width": 128, "vision_layers": 4,
                "vision_heads": 4, "vision_mlp_dim": 512},
  "train": {"augment_flip": false, "augment_shift": 0}
A conv stem is overrides {"vision_stem": "conv"}. The recipes:
  "hard_batches": f   a share f of the batches drawn from one colour (colour read from
                      the caption with the world's word tables): same-colour negatives;
                      "hard_after": k starts them after step k (a curriculum)
  "sibling_batches": f  (session 15) a share f of each batch: siblings of its first rows,
                      whose captions name the same values in every attribute but one;
                      "hard_after": k starts them after step k
  "negatives": [...]  NegCLIP-style (Yuksekgonul et al. 2023): each caption gets one extra
                      negative caption with a word of these attributes ('shape', 'texture',
                      'color') swapped for another value's, scored in image->text only
  "tower": "cnn"      the image tower replaced by a plain CNN (per stage a 3x3 conv and a
                      3x3 stride-2 conv, GroupNorm, ReLU; channels 32, 64, 128; mean pool).
                      It is not clip.CNNTower, and at lr 1e-3 without augmentation it did
                      not learn shape.
  The word and two-view losses of session 20 are the encoder stage's own since session
  21: {"train": {"word_loss": w, "view_loss": v}} (TrainConfig fields). Session 20's
  rows with "word_targets" and "view_pairs" ran this tool's first versions of them, at
  7c46e93 (its two-view term rolled the image with wrap-around and drew its views from
  the batch's pixels).
--save DIR writes the trained CLIP where config.encoder.checkpoint can read it, so that the
pipeline's features and tools/ground_truth_auroc.py can measure SemDeDup with it.
"""

import argparse
import dataclasses
import json
import os
import re
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import default  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import eval as eval_lib  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import losses  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import train  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.data import synthetic  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.data import tasks as tasks_lib  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.models import api  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.models import bpe  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.models import hf_export  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.models import preprocess  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.models import tokenizer as tokenizer_lib  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.stages import encoder as encoder_stage  # noqa: E402  pylint: disable=wrong-import-position


def probe(x, y, folds: int = 5) -> float:
  """Accuracy of a ridge one-vs-all linear classifier, k-fold over (x [n, D], y [n])."""
  n, classes = len(y), int(y.max()) + 1
  order = np.random.default_rng(0).permutation(n)
  right = 0
  for f in range(folds):
    test = order[f::folds]
    fit = np.setdiff1d(order, test)
    a = np.c_[x[fit], np.ones(len(fit))]  # [n_fit, D + 1]
    w = np.linalg.solve(a.T @ a + 1e-2 * np.eye(a.shape[1]), a.T @ np.eye(classes)[y[fit]])
    right += int((np.argmax(np.c_[x[test], np.ones(len(test))] @ w, 1) == y[test]).sum())
  return right / n


# ---------------------------------------------------------------------------------------
# Experimental recipes (see the docstring); each patches train.py's pieces in this process.


def _word_table(attribute):
  return {'shape': synthetic.SHAPE_WORDS, 'color': synthetic.COLOR_WORDS,
          'texture': synthetic.TEXTURE_ADJ, 'size': synthetic.SIZE_WORDS}[attribute]


def _find_value(caption, attribute):
  """(value, match) of the first (longest) word of the attribute in the caption, or None."""
  words = sorted(((w, k) for k, ws in _word_table(attribute).items() for w in ws),
                 key=lambda t: -len(t[0]))
  for word, value in words:
    m = re.search(r'\b' + re.escape(word) + r'\b', caption)
    if m:
      return value, m
  return None


def _use_colour_batches(captions, share, after=0):
  colour = np.array([(_find_value(c, 'color') or ('?', None))[0] for c in captions])
  groups = [np.flatnonzero(colour == v) for v in np.unique(colour)]

  def batch_rows(rows, batch_size, seed, start_step=0):
    rng = np.random.default_rng([seed, start_step])
    rows = np.asarray(rows)
    step = start_step
    while True:
      step += 1
      if step > after and rng.random() < share:
        g = groups[rng.integers(len(groups))]
        yield rng.choice(g, batch_size, replace=len(g) < batch_size)
      else:
        yield rng.choice(rows, batch_size, replace=False)
  train.batch_rows = batch_rows


def _use_sibling_batches(captions, share, after=0):
  """A share of each batch: siblings of its first rows, whose captions name the same values
  in every attribute but one (shape, colour, texture or size, picked uniformly among those
  that have a sibling), so that each attribute has negatives that differ in it alone."""
  attrs = ('shape', 'color', 'texture', 'size')
  keys = [tuple((_find_value(c, a) or ('?', None))[0] for a in attrs) for c in captions]
  siblings = []  # per row, per attribute: rows differing there alone
  index = {}
  for i, k in enumerate(keys):
    for a in range(len(attrs)):
      index.setdefault(k[:a] + ('*',) + k[a + 1:], []).append(i)
  for k in keys:
    options = []  # none for a caption that does not name all four
    for a in range(len(attrs)) if '?' not in k else ():
      rows = [j for j in index[k[:a] + ('*',) + k[a + 1:]] if keys[j][a] != k[a]]
      if rows:
        options.append(np.asarray(rows))
    siblings.append(options)
  print(f'sibling batches: share {share}, rows with a sibling '
        f'{sum(bool(o) for o in siblings)} of {len(captions)}')

  def batch_rows(rows, batch_size, seed, start_step=0):
    rng = np.random.default_rng([seed, start_step])
    rows = np.asarray(rows)
    n_sib = int(round(share * batch_size))
    step = start_step
    while True:
      step += 1
      batch = rng.choice(rows, batch_size, replace=False)
      if step > after:
        out, k = list(batch[:batch_size - n_sib]), 0
        taken = set(out)
        while len(out) < batch_size and k < len(out):
          options = siblings[out[k]]
          k += 1
          if options:
            group = options[rng.integers(len(options))]
            j = int(group[rng.integers(len(group))])
            if j not in taken:
              out.append(j)
              taken.add(j)
        for j in batch[batch_size - n_sib:]:  # fill up with the random rows
          if len(out) == batch_size:
            break
          if j not in taken:
            out.append(j)
            taken.add(j)
        while len(out) < batch_size:
          j = int(rng.choice(rows))
          if j not in taken:
            out.append(j)
            taken.add(j)
        batch = np.asarray(out)
      yield batch
  train.batch_rows = batch_rows


def _with_negatives(captions, token_ids, tokenizer, attributes):
  """token_ids [N, 2L]: each caption, then its swapped negative (all-zero ids: none)."""
  rng = np.random.default_rng(0)
  negatives = []
  for caption in captions:
    negative = None
    for attribute in rng.permutation(attributes):
      found = _find_value(caption, attribute)
      if found:
        table = _word_table(attribute)
        other = rng.choice([v for v in table if v != found[0]])
        word = table[other][rng.integers(len(table[other]))]
        negative = caption[:found[1].start()] + word + caption[found[1].end():]
        break
    negatives.append(negative)
  neg_ids = tokenizer([n or '' for n in negatives])
  neg_ids[[n is None for n in negatives]] = 0
  length = token_ids.shape[1]

  def make_loss_fn(model, kind, word_loss=0.0, view_loss=0.0):
    assert not word_loss and not view_loss, ('negatives replace the loss: no other terms '
                                              '(add "train": {"word_loss": 0})')

    def loss_fn(params, images, texts, weights=None, row_ids=None, aux=None):
      del weights, row_ids, aux  # uniform weights, no repeats in this experiment
      both = jnp.concatenate([texts[:, :length], texts[:, length:]], 0)  # [2B, L]
      img, txt, scale = model.apply({'params': params},
                                    train.prepare_images(kind, images), both)
      img, txt = losses.normalize(img), losses.normalize(txt)
      b = img.shape[0]
      logits = jnp.exp(scale) * img @ txt.T  # [B, 2B]
      has_negative = jnp.any(texts[:, length:] != 0, axis=1)
      logits = logits.at[:, b:].set(jnp.where(has_negative[None], logits[:, b:], -1e9))
      i2t = jax.nn.logsumexp(logits, 1) - jnp.diagonal(logits[:, :b])
      t2i = jax.nn.logsumexp(logits[:, :b].T, 1) - jnp.diagonal(logits[:, :b])
      return jnp.mean(0.5 * (i2t + t2i))
    return loss_fn

  # The appended columns are negatives: the loop's data check reads the ids alone.
  check_data = train._check_data  # pylint: disable=protected-access
  train._check_data = lambda cfg, data: check_data(cfg, (data[0], data[1][:, :length]))  # pylint: disable=protected-access
  train.make_loss_fn = make_loss_fn
  return np.concatenate([token_ids, neg_ids], 1)


def _use_cnn_tower():
  from tads_jax.models import clip  # pylint: disable=g-import-not-at-top

  class CNNTower(clip.VisionTower):
    @nn.compact
    def __call__(self, pixels):
      x = pixels
      for i, channels in enumerate((32, 64, 128)):
        for j, stride in enumerate((1, 2)):
          x = nn.Conv(channels, (3, 3), strides=(stride, stride), padding='SAME',
                      name=f'conv{i}_{j}')(x)
          x = jax.nn.relu(nn.GroupNorm(num_groups=8, name=f'norm{i}_{j}')(x))
      return clip.Dense(self.config.embed_dim, ('embed', 'proj'), use_bias=False,
                        name='proj')(x.mean((1, 2)))
  clip.VisionTower = CNNTower


def score(row: dict, world: str, size: int, encode_images, encode_texts) -> None:
  """Adds each task's zero-shot top-1 (and ridge probe) or retrieval R@1 to `row`."""
  for spec in tasks_lib.parse_tasks(os.path.join(world, 'tasks.json')):
    split = tasks_lib.load_split(spec, 'eval', size)
    images = encode_images(split.images)  # [n, E]
    if spec.kind == 'classification':
      prompts = [t.replace('{}', c) for c in spec.classnames for t in spec.templates]
      classes = encode_texts(prompts).reshape(len(spec.classnames), len(spec.templates), -1)
      top1 = eval_lib.classification_metrics(images, eval_lib.zero_shot_classifier(classes),
                                             split.labels)['top1']
      row[spec.name] = f'{top1:.3f} (probe {probe(images, np.asarray(split.labels)):.3f})'
    else:
      texts = [c for caps in split.captions for c in caps]
      owner = np.repeat(np.arange(len(split.captions)), [len(c) for c in split.captions])
      m = eval_lib.retrieval_metrics(images, encode_texts(texts), owner)
      row[spec.name] = (f"R@1 t2i {m['text_to_image_R@1']:.3f} / "
                        f"i2t {m['image_to_text_R@1']:.3f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--settings', default='{}')
  parser.add_argument('--save', default='',
                      help='write the trained CLIP here, for config.encoder.checkpoint')
  parser.add_argument('--trained', action='store_true',
                      help="score the run's own reference (workdir/encoder/clip)")
  args = parser.parse_args()
  world = os.path.join(args.workdir, 'ingest', 'world')
  if args.trained:
    loaded = api.load_clip(os.path.join(args.workdir, 'encoder', encoder_stage.CLIP_DIR))
    size = loaded.config.image_size
    row = {'reference': os.path.join(args.workdir, 'encoder', encoder_stage.CLIP_DIR)}
    score(row, world, size, loaded.encode_images, loaded.encode_texts)
    print('| ' + ' | '.join(row) + ' |')
    print('| ' + ' | '.join(str(v) for v in row.values()) + ' |')
    print(f'\ncommand: python tools/probe_reference_encoder.py --workdir {args.workdir} '
          '--trained')
    return
  s = json.loads(args.settings)
  config = default.get_config()
  e = config.encoder
  size = s.get('image_size', e.image_size)
  start = time.perf_counter()
  pixels, captions, _ = encoder_stage.load_pairs(os.path.join(world, 'trusted', '*.tar'),
                                                 size)
  tok_dir = tempfile.mkdtemp(prefix='probe_tok_')
  bpe.train_bpe(captions, s.get('vocab_size', e.vocab_size), tok_dir)
  context = s.get('context_length', e.context_length)
  tokenizer = tokenizer_lib.CLIPTextTokenizer(tok_dir, context)
  # The encoder stage's TrainConfig, with the settings' changes.
  e.update({name: s[name] for name in ('batch_size', 'samples_seen', 'lr', 'warmup')
            if name in s})
  e.update(image_size=size, context_length=context)
  e.model_overrides.update(s.get('overrides', {}))
  cfg = dataclasses.replace(encoder_stage.train_config(config, len(tokenizer.tokenizer)),
                            **s.get('train', {}))
  token_ids = tokenizer(captions)
  if s.get('tower') == 'cnn':
    _use_cnn_tower()
  if s.get('hard_batches'):
    _use_colour_batches(captions, s['hard_batches'], s.get('hard_after', 0))
  if s.get('sibling_batches'):
    _use_sibling_batches(captions, s['sibling_batches'], s.get('hard_after', 0))
  if s.get('negatives'):
    token_ids = _with_negatives(captions, token_ids, tokenizer, s['negatives'])
  words_and_targets = (encoder_stage.word_targets(captions, tokenizer, e.word_min_count)
                       if cfg.word_loss else None)
  params, history = train.train(cfg, (pixels, token_ids), word_targets=words_and_targets)
  seconds = time.perf_counter() - start
  encode_images, encode_texts = train.encoders(cfg, params, tokenizer=tokenizer,
                                               batch_size=256)
  if args.save:  # a folder the pipeline reads as config.encoder.checkpoint
    hf_export.save_checkpoint(args.save, cfg.clip_config(), params,
                              preprocess.default_config(size), tokenizer_dir=tok_dir)
  row = {'settings': json.dumps(s), 'steps': cfg.steps, 'seconds': round(seconds),
         'final_loss': round(float(np.mean(history['loss'][-20:])), 3)}
  score(row, world, size, encode_images, encode_texts)
  print('| ' + ' | '.join(row) + ' |')
  print('| ' + ' | '.join(str(v) for v in row.values()) + ' |')
  print(f"\ncommand: python tools/probe_reference_encoder.py --workdir {args.workdir} "
        f"--settings '{args.settings}'")


if __name__ == '__main__':
  main()
