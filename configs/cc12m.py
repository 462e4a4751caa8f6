"""The TADS paper's setting: CC12M, 36% kept for ImageNet-1k, CIFAR-100, MS-COCO and
Flickr30k, with a pretrained CLIP as the reference.

The one thing to fill in is where the data lives: DATA below, or on the command line
  python -m tads_jax.main --config configs/cc12m.py:/data/cc12m_setting --workdir /tmp/cc12m
Expected under it:

  cc12m/{00000..01242}.tar  CC12M as img2dataset writes it (webdataset: per sample
                            <key>.jpg, <key>.txt caption, <key>.json; a .parquet and a
                            _stats.json beside each tar, not read); made by
      wget https://storage.googleapis.com/conceptual_12m/cc12m.tsv
      sed -i '1s/^/url\\tcaption\\n/' cc12m.tsv
      img2dataset --url_list cc12m.tsv --input_format tsv --url_col url \\
          --caption_col caption --output_format webdataset --output_folder cc12m \\
          --image_size 256 --resize_mode keep_ratio --resize_only_if_bigger True \\
          --processes_count 16 --thread_count 64
                            (img2dataset's dataset_examples/cc12m.md, but keep_ratio and
                            resize_only_if_bigger: its default 'border' mode pads every image
                            to 256 x 256, and the pool's widths, heights and aspect ratios,
                            which the quality operators and basic_filter read from the
                            decoded images, would all be 256, 256 and 1; this way the shorter
                            side is min(original, 256), so basic_filter's min side >= 200 and
                            aspect <= 3 see what the originals have)
  clip-vit-base-patch32/    the reference: openai/clip-vit-base-patch32 saved as a Hugging
                            Face folder (CLIPModel and CLIPProcessor .save_pretrained); the
                            encoder stage loads it (trains nothing) and the embed stage
                            embeds pool and tasks with it
  wds_mscoco_captions/, wds_flickr30k/   the retrieval sets, as configs/datacomp.py says

ImageNet-1k and CIFAR-100 come through TFDS, prepared as configs/datacomp.py says. The tasks,
their class names and templates, the reference's embedding settings, the features, TADS's
meta-learning batches and the evaluation (12.8M samples seen, DataComp small's ViT-B/32
preset for the pixel proxy) are configs/datacomp.py's: the TADS paper (abstract) gives the
pool, the tasks and the 36%, not its training budget, and DataComp small's pool (12.8M) is
close to CC12M's (~11M downloaded). tools/estimate_stage_times.py gives the expected time
of each stage on one H100 and on a TPU v5e-8.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import datacomp  # pylint: disable=g-import-not-at-top,wrong-import-position

DATA = '/path/to/cc12m_setting'
URLS = 12_423_374    # rows of cc12m.tsv (google-research-datasets/conceptual_12m dataset card)
SHARD_SIZE = 10_000  # img2dataset's number_sample_per_shard default
SHARDS = -(-URLS // SHARD_SIZE)  # 1,243 tars, 00000 to 01242 (img2dataset's 5-digit names)
# Samples a download keeps: pixparse/cc12m-wds (img2dataset, 2021) holds ~11M of the URLs;
# tools/estimate_stage_times.py sizes CC12M with it.
DOWNLOADED = 11_000_000


def shard_pattern(data: str) -> str:
  """Every tar img2dataset writes for cc12m.tsv; a missing one fails validation, naming it
  (a lost slice of the pool is not skipped quietly). A partial download: pass a glob,
  --config.pool.shards='/data/cc12m_setting/cc12m/*.tar'."""
  return os.path.join(data, 'cc12m', f'{{00000..{SHARDS - 1:05d}}}.tar')


def get_config(data: str | None = None):
  data = data or DATA
  c = datacomp.get_config(data)
  c.pool.format = 'webdataset'
  c.pool.shards = shard_pattern(data)
  c.pool.metadata = ''
  # The reference CLIP, given: the encoder stage records it instead of training one, and
  # the embed stage embeds the pool (11M images and captions) and the tasks with it.
  c.encoder.checkpoint = os.path.join(data, 'clip-vit-base-patch32')
  c.selection.fraction = 0.36   # TADS keeps 36% of CC12M (the paper's abstract)
  # The pool's json carries img2dataset's fields and no uid: uids are md5 of the keys,
  # which img2dataset makes unique across shards (shard number, then row in the shard).
  # Add 'export' to c.stages and set export.shards=True to write the subset as tars.
  return c
