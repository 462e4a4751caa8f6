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
block of configs/default.py.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from configs import default  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import eval as eval_lib  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax import train  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.data import tasks as tasks_lib  # noqa: E402  pylint: disable=wrong-import-position
from tads_jax.models import bpe  # noqa: E402  pylint: disable=wrong-import-position
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--settings', default='{}')
  args = parser.parse_args()
  s = json.loads(args.settings)
  e = default.get_config().encoder
  world = os.path.join(args.workdir, 'ingest', 'world')
  size = s.get('image_size', e.image_size)
  start = time.perf_counter()
  pixels, captions, _ = encoder_stage.load_pairs(os.path.join(world, 'trusted', '*.tar'),
                                                 size)
  tok_dir = tempfile.mkdtemp(prefix='probe_tok_')
  bpe.train_bpe(captions, s.get('vocab_size', e.vocab_size), tok_dir)
  context = s.get('context_length', e.context_length)
  tokenizer = tokenizer_lib.CLIPTextTokenizer(tok_dir, context)
  vocab = len(tokenizer.tokenizer)
  overrides = dict(e.model_overrides.to_dict())
  overrides.update(s.get('overrides', {}))
  overrides.update(image_size=size, vocab_size=vocab, eos_token_id=vocab - 1,
                   context_length=context)
  cfg = train.TrainConfig(kind='pixels', model=e.model, model_overrides=overrides,
                          batch_size=s.get('batch_size', e.batch_size),
                          samples_seen=s.get('samples_seen', e.samples_seen),
                          lr=s.get('lr', e.lr), warmup=s.get('warmup', e.warmup), seed=0,
                          **s.get('train', {}))
  params, history = train.train(cfg, (pixels, tokenizer(captions)))
  seconds = time.perf_counter() - start
  encode_images, encode_texts = train.encoders(cfg, params, tokenizer=tokenizer,
                                               batch_size=256)
  row = {'settings': json.dumps(s), 'steps': cfg.steps, 'seconds': round(seconds),
         'final_loss': round(float(np.mean(history['loss'][-20:])), 3)}
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
  print('| ' + ' | '.join(row) + ' |')
  print('| ' + ' | '.join(str(v) for v in row.values()) + ' |')
  print(f"\ncommand: python tools/probe_reference_encoder.py --workdir {args.workdir} "
        f"--settings '{args.settings}'")


if __name__ == '__main__':
  main()
