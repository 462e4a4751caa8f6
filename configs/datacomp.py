"""A DataComp pool on disk, selected with TADS for the tasks DataComp users evaluate on.

The one thing to fill in is where the data lives: DATA below, or on the command line
  python -m tads_jax.main --config configs/datacomp.py:/data/datacomp --workdir /tmp/dc
Expected under it (any other layout: override the fields, e.g. --config.pool.metadata=...):

  shards/*.parquet, *.npz   DataComp metadata and its CLIP embeddings, one pair per file
                            (rows aligned); the same-named *.tar beside them (optional)
                            supply pixels for the image operators and the export
  clip-vit-base-patch32/    Hugging Face folder of openai/clip-vit-base-patch32, the model
                            that made the npz's b32_* keys (for l14_*: set
                            pool.embedding_model='l14' and openai/clip-vit-large-patch14)
  wds_mscoco_captions/{train,test}/*.tar   retrieval sets as webdataset shards, .jpg/.webp
  wds_flickr30k/{train,test}/*.tar         + .txt (one caption per line), as CLIP_benchmark
                                           ships them (clip-benchmark/wds_* on the HF Hub)

ImageNet-1k and CIFAR-100 are read with tfds.data_source from TFDS_DATA_DIR (default
~/tensorflow_datasets), prepared beforehand as array_record (ImageNet needs its manual
download): `tfds build imagenet2012 cifar100 --file_format=array_record`.

The pool's embeddings are used as they are; the tasks are embedded with the checkpoint
that made them, so relevance, meta-learning and the evaluation share the pool's space.
"""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import default  # pylint: disable=g-import-not-at-top,wrong-import-position

DATA = '/path/to/datacomp'

# A zero-shot classifier averages these prompts per class (CLIP's seven-prompt ImageNet
# ensemble; OpenAI's full list has 80, at 11x the text embeddings).
TEMPLATES = ('itap of a {}.', 'a bad photo of the {}.', 'a origami {}.',
             'a photo of the large {}.', 'a {} in a video game.', 'art of the {}.',
             'a photo of the small {}.')

CIFAR100 = (
    'apple', 'aquarium fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle',
    'bottle', 'bowl', 'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle',
    'caterpillar', 'cattle', 'chair', 'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch',
    'crab', 'crocodile', 'cup', 'dinosaur', 'dolphin', 'elephant', 'flatfish', 'forest',
    'fox', 'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lamp', 'lawn mower',
    'leopard', 'lion', 'lizard', 'lobster', 'man', 'maple tree', 'motorcycle', 'mountain',
    'mouse', 'mushroom', 'oak tree', 'orange', 'orchid', 'otter', 'palm tree', 'pear',
    'pickup truck', 'pine tree', 'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit',
    'raccoon', 'ray', 'road', 'rocket', 'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk',
    'skyscraper', 'snail', 'snake', 'spider', 'squirrel', 'streetcar', 'sunflower',
    'sweet pepper', 'table', 'tank', 'telephone', 'television', 'tiger', 'tractor', 'train',
    'trout', 'tulip', 'turtle', 'wardrobe', 'whale', 'willow tree', 'wolf', 'woman', 'worm')


def imagenet_classnames() -> tuple:
  """ImageNet-1k class names in TFDS label order (sorted WordNet ids), from the synset
  words TFDS ships: the first synonym of each, or the next one where two classes share it
  ('maillot' twice). OpenAI's hand-edited names score a little higher; for numbers
  comparable with DataComp's tables, pass theirs as classnames."""
  from tensorflow_datasets.datasets.siscore import labels  # pylint: disable=g-import-not-at-top
  synonyms = [[w.strip() for w in line.split(',')] for line in labels.IMAGENET_LABELS_LIST]
  firsts = [s[0] for s in synonyms]
  names = [s[1] if firsts.count(s[0]) > 1 and i != firsts.index(s[0]) and len(s) > 1
           else s[0] for i, s in enumerate(synonyms)]
  if len(names) != 1000 or len(set(names)) != 1000:
    raise ValueError('tensorflow_datasets IMAGENET_LABELS_LIST: expected 1000 distinct '
                     f'class names, got {len(set(names))} of {len(names)}')
  return tuple(names)


def tasks(data: str) -> list:
  """The targets of the TADS paper, which DataComp's 38-task suite includes: ImageNet-1k and
  CIFAR-100 zero-shot, MS-COCO and Flickr30k retrieval. The train splits give TADS its
  feedback and relevance prototypes (a slice of ImageNet's train split: 10 images per class
  on average, TFDS shuffles at preparation); the eval splits are DataComp's."""
  return [
      dict(name='imagenet1k', kind='classification', classnames=imagenet_classnames(),
           templates=TEMPLATES, train='tfds:imagenet2012:train[:10000]',
           eval='tfds:imagenet2012:validation'),
      dict(name='cifar100', kind='classification', classnames=CIFAR100,
           templates=TEMPLATES, train='tfds:cifar100:train[:10000]',
           eval='tfds:cifar100:test'),
      dict(name='mscoco', kind='retrieval',
           train=os.path.join(data, 'wds_mscoco_captions', 'train', '*.tar'),
           eval=os.path.join(data, 'wds_mscoco_captions', 'test', '*.tar')),
      dict(name='flickr30k', kind='retrieval',
           train=os.path.join(data, 'wds_flickr30k', 'train', '*.tar'),
           eval=os.path.join(data, 'wds_flickr30k', 'test', '*.tar')),
  ]


def get_config(data: str | None = None):
  data = data or DATA
  c = default.get_config()
  # The pixel check needs the pool's images (tars beside the metadata) and an
  # accelerator at this scale: off, as the embedding proxy is the default here too.
  c.evaluate.pixel_check.seeds = 0
  c.stages = ('ingest', 'encoder', 'embed', 'features', 'learn', 'select', 'evaluate',
              'report')  # add 'export' (and export.shards=True) to reshard from the tars

  c.pool.format = 'datacomp'
  c.pool.metadata = os.path.join(data, 'shards', '*.parquet')
  c.pool.embedding_model = 'b32'  # npz keys b32_img/b32_txt: OpenAI ViT-B/32
  c.pool.image_size = 128         # side the image quality operators see (tars only)

  # The model that made the npz's embeddings: the tasks are embedded with it (its
  # projection_dim is checked against the npz before any work). 'l14': ViT-L/14.
  c.encoder.checkpoint = os.path.join(data, 'clip-vit-base-patch32')

  c.embed.dtype = 'bfloat16'      # TPUs and GPUs; 'float32' on CPUs without bf16 units
  c.embed.batch_size = 256
  c.embed.workers = 8

  c.features.chunk = 1024
  c.features.kmeans_k = 1000      # ~13k samples per cluster on DataComp small (12.8M)
  c.features.retrieval_prototypes = 64

  del c['tasks']  # the default's is a string ('synthetic'); this one is a list
  c.tasks = tasks(data)

  c.selector.name = 'tads'
  c.tads.meta.batch_size = 1024   # pool samples per meta step
  c.tads.meta.task_batch_size = 512

  # DataComp's own thresholds for real photos (the default config's are for 64 px renders).
  c.basic_filter.min_side = 200
  c.image_based.k = 100_000       # DataComp: 100k clusters for the 12.8M small pool

  # DataComp small's budget: 12.8M samples seen whatever the subset size. The proxy is the
  # 'embedding' one (heads on the frozen npz embeddings): a cheap stand-in for DataComp's
  # ViT trained on pixels, for comparing subsets before training on them.
  c.evaluate.samples_seen = 12_800_000
  c.evaluate.batch_size = 4096
  c.evaluate.warmup = 500
  c.evaluate.baselines = ('full', 'random', 'clip_score', 'basic_filter', 'laion2b')
  # DataComp's own proxy at the small scale, for accelerator hosts (--config.evaluate.proxy=
  # pixels; it needs the tars beside the metadata): mlfoundations/datacomp scale_configs.py
  # 'small' = ViT-B-32 (open_clip's: GELU, patch stem; our 'vit_b32' with act='gelu'),
  # 12.8M samples seen, global batch 4096, lr 5e-4, 500 warmup steps (3,125 steps in all),
  # and open_clip's AdamW defaults it keeps (beta2 None): weight decay 0.2, beta2 0.98, eps
  # 1e-6; 224 px, 77 tokens with the OpenAI tokenizer of encoder.checkpoint. Several
  # accelerator-hours; on a CPU host this config only validates.
  c.evaluate.pixels = ml_collections.ConfigDict(dict(
      model='vit_b32',
      model_overrides=ml_collections.ConfigDict(dict(vision_act='gelu', text_act='gelu')),
      image_size=224,
      context_length=77,
      batch_size=4096,
      samples_seen=12_800_000,
      lr=5e-4,
      warmup=500,
      weight_decay=0.2,
      b2=0.98,
      eps=1e-6,
      dtype='bfloat16',       # DataComp trains with mixed precision
      checkpoint_every=500))

  # DataComp's resharder.py reads subset.npy directly; export.shards=True reshards here
  # instead, from the tars beside the metadata (validation fails without them).
  c.export.shards = False
  c.export.shard_size = 10_000
  return c
