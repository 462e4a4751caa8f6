"""The embedded default world: a synthetic web pool, a trusted set and tasks, all with ground truth.

Every image shows one object (shape, colour, texture, size, position) on a grey or gradient
background, drawn with vectorized numpy; captions come from templates with synonyms and
filler. The pool mixes clean pairs with controlled fractions of the noise a web crawl has
(misaligned and partially wrong captions, corrupted images, duplicates, text rendered into
the image, spam) and of concepts no task asks for, and records each sample's truth in
`ground_truth.parquet`, outside the shards, so that a report can say what a selector removed.

Every draw is a pure function of (seed, domain, sample index, stream) through a counter-based
hash, so any shard can be (re)generated alone: the generator skips shards that exist and
writes every file atomically, and the same config gives byte-identical files.

One concern per module, each importing only those before it: vocabulary (values, words,
templates, noise types), world_config (WorldConfig), randomness (the counter-based draws),
scenes (what an image shows), render (pixels and encoding), captions, pool (each pool
sample's noise, captions and image recipe), generate (the files) and cli.

Run: python -m tads_jax.data.synthetic --out /tmp/world --num-samples 10000 --seed 0
"""

from tads_jax.data.synthetic.captions import make_caption, template_attributes
from tads_jax.data.synthetic.cli import main
from tads_jax.data.synthetic.generate import TASK_TEMPLATES, VERSION, generate_world
from tads_jax.data.synthetic.pool import clean_render, plan_pool, uid_of
from tads_jax.data.synthetic.render import render_scene
from tads_jax.data.synthetic.scenes import Scene
from tads_jax.data.synthetic.vocabulary import (ATTRIBUTES, BACKGROUND_WORDS, COLOR_NAMES,
                                                COLOR_WORDS, COLORS, DEFAULT_NOISE, FILLERS,
                                                NOISE_TYPES, OFF_TASK_COLORS, OFF_TASK_SHAPES,
                                                OFF_TASK_TEXTURES, ON_TASK_COLORS, ON_TASK_SHAPES,
                                                ON_TASK_TEXTURES,
                                                SHAPE_WORDS, SHAPES, SIZE_WORDS, SIZES,
                                                SPAM_PHRASES, SPAM_WORDS, TASK_NAMES,
                                                TEMPLATES, TEXTURE_ADJ, TEXTURE_WITH, TEXTURES)
from tads_jax.data.synthetic.world_config import WorldConfig, WorldError

__all__ = [
    'ATTRIBUTES', 'BACKGROUND_WORDS', 'COLOR_NAMES', 'COLOR_WORDS', 'COLORS', 'DEFAULT_NOISE',
    'FILLERS', 'NOISE_TYPES', 'OFF_TASK_COLORS', 'OFF_TASK_SHAPES', 'OFF_TASK_TEXTURES',
    'ON_TASK_COLORS', 'ON_TASK_SHAPES', 'ON_TASK_TEXTURES', 'SHAPE_WORDS', 'SHAPES',
    'SIZE_WORDS', 'SIZES', 'SPAM_PHRASES', 'SPAM_WORDS', 'TASK_NAMES', 'TASK_TEMPLATES',
    'TEMPLATES', 'TEXTURE_ADJ', 'TEXTURE_WITH', 'TEXTURES', 'VERSION', 'Scene', 'WorldConfig',
    'WorldError', 'clean_render', 'generate_world', 'main', 'make_caption', 'plan_pool',
    'render_scene', 'template_attributes', 'uid_of',
]
