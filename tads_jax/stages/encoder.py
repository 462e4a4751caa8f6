"""Encoder: the reference CLIP in whose space every later signal is measured.

With `encoder.checkpoint` set (a Hugging Face CLIP folder) the stage only records it. With
no checkpoint, as for the synthetic world, it trains a small CLIP from scratch on a trusted
set of image-caption pairs (`encoder.train_on`, DFN-style) and saves it as a Hugging Face
CLIP folder (`encoder/clip`) with a BPE tokenizer trained on the same captions, so that one
loader (load_clip) serves both cases. Training checkpoints (orbax) make it resumable.
"""

import collections
import os

import numpy as np

from tads_jax import pipeline
from tads_jax import sharding
from tads_jax import train
from tads_jax.data import images as images_lib
from tads_jax.data import webdataset
from tads_jax.models import bpe
from tads_jax.models import clip
from tads_jax.models import hf_export
from tads_jax.models import preprocess
from tads_jax.models import tokenizer as tokenizer_lib
from tads_jax.models import words
from tads_jax.stages import ingest

CLIP_DIR = 'clip'


def train_source(ctx) -> str:
  """The shard spec of the trusted pairs; 'trusted' is the synthetic world's set."""
  source = ctx.config.encoder.train_on
  if source == 'trusted':
    if ctx.config.pool.format != 'synthetic':
      raise ValueError("config.encoder.train_on: 'trusted' names the synthetic world's "
                       'trusted set; give a shard pattern of trusted pairs for this pool')
    return os.path.join(ingest.world_dir(ctx), 'trusted', '*.tar')
  return source


def load_pairs(spec: str, image_size: int):
  """Decoded, resized images [N, S, S, 3] uint8 and their captions; skips are counted."""
  skips = collections.Counter()
  pixels, captions = [], []
  for path in webdataset.expand_shards(spec):
    for s in webdataset.iter_shard(path, skips, decode=True):
      pixels.append(images_lib.resize_center_crop(s.image, image_size))
      captions.append(s.caption)
  if not pixels:
    raise ValueError(f'config.encoder.train_on: no usable pairs in {spec!r} '
                     f'(skipped: {dict(skips)})')
  return np.stack(pixels), captions, skips


def train_config(config, vocab_size: int) -> train.TrainConfig:
  e = config.encoder
  overrides = dict(e.model_overrides.to_dict())
  overrides.update(image_size=e.image_size, vocab_size=vocab_size,
                   eos_token_id=vocab_size - 1, context_length=e.context_length)
  return train.TrainConfig(
      kind='pixels', model=e.model, model_overrides=overrides, batch_size=e.batch_size,
      samples_seen=e.samples_seen, lr=e.lr, warmup=e.warmup, seed=config.seed,
      dtype=e.dtype, checkpoint_every=e.checkpoint_every,
      augment_flip=e.get('augment_flip', False), augment_shift=e.get('augment_shift', 0),
      word_loss=e.get('word_loss', 0.0), view_loss=e.get('view_loss', 0.0),
      view_shift=e.get('view_shift', 2), view_brightness=e.get('view_brightness', 10),
      rules=sharding.from_config(config).rules)


def word_targets(captions, tokenizer, min_count: int):
  """(word_ids [V, Lw], targets [N, V]) for TrainConfig.word_loss, over the words that at
  least `min_count` captions use. Each word is tokenized alone and cut after its
  end-of-text token (the causal text tower pools there, so what follows never counts)."""
  vocab, targets = words.caption_word_targets(captions, min_count)
  ids = np.asarray(tokenizer(vocab))  # [V, L]
  ends = np.asarray(clip.eos_positions(ids, tokenizer.eos_token_id))
  return ids[:, :int(ends.max()) + 1], targets


def run(ctx) -> dict:
  config = ctx.config
  if config.encoder.checkpoint:
    return {'checkpoint': os.path.abspath(config.encoder.checkpoint), 'trained': False}
  if config.pool.format == 'datacomp':  # the npz files carry the reference embeddings
    return {'checkpoint': None, 'trained': False, 'pool_ships_embeddings': True}
  out = ctx.stage_dir('encoder')
  spec = train_source(ctx)
  pixels, captions, skips = load_pairs(spec, config.encoder.image_size)
  tok_dir = os.path.join(out, 'tokenizer')
  if not os.path.isdir(tok_dir):
    # The exported tokenizer truncates to the model's positions, so that transformers'
    # tokenizer(..., truncation=True) feeds CLIPModel no longer sequence than it has.
    bpe.train_bpe(captions, config.encoder.vocab_size, tok_dir,
                  model_max_length=config.encoder.context_length)
  tokenizer = tokenizer_lib.CLIPTextTokenizer(tok_dir, config.encoder.context_length)
  vocab_size = len(tokenizer.tokenizer)
  cfg = train_config(config, vocab_size)
  words_and_targets = (word_targets(captions, tokenizer, config.encoder.word_min_count)
                       if cfg.word_loss else None)
  params, history = train.train(cfg, (pixels, tokenizer(captions)),
                                workdir=os.path.join(out, 'train'),
                                mesh=_mesh(config), word_targets=words_and_targets)
  folder = os.path.join(out, CLIP_DIR)
  hf_export.save_checkpoint(folder, cfg.clip_config(), params,
                            preprocess.default_config(config.encoder.image_size),
                            tokenizer_dir=tok_dir)
  losses = history['loss']
  return {'checkpoint': folder, 'trained': True, 'pairs': len(captions),
          'skips': dict(skips), 'vocab_size': vocab_size, 'steps': cfg.steps,
          'word_vocabulary': None if words_and_targets is None else len(words_and_targets[0]),
          'first_loss': float(losses[0]) if losses else None,
          'final_loss': float(np.mean(losses[-20:])) if losses else None,
          'loss_curve': [float(x) for x in losses[::max(1, len(losses) // 100)]]}


def _mesh(config):
  return sharding.from_config(config).mesh


def checkpoint(ctx) -> str:
  """The reference encoder's folder, for the stages that embed with it."""
  return ctx.summary('encoder')['checkpoint']


def config_keys(config) -> tuple:
  if config.encoder.checkpoint:
    return ('encoder.checkpoint',)
  if config.pool.format == 'datacomp':
    return ('pool.format',)
  return ('seed', 'encoder', 'mesh')


def input_files(config) -> list:
  """The given checkpoint's files: new weights at the same path rerun what depends on them."""
  folder = config.encoder.checkpoint
  if not folder or not os.path.isdir(folder):
    return []
  return pipeline.file_identities(os.path.join(folder, n) for n in sorted(os.listdir(folder)))


STAGE = pipeline.Stage(name='encoder', run=run, inputs=('ingest',), config_keys=config_keys,
                       input_files=input_files,
                       later_fields={'encoder.word_loss': 0.0, 'encoder.word_min_count': 10,
                                     'encoder.view_loss': 0.0, 'encoder.view_shift': 2,
                                     'encoder.view_brightness': 10})
