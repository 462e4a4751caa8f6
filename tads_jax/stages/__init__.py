"""The pipeline's stages, in the order they run (design section 3)."""

from tads_jax.stages import embed
from tads_jax.stages import encoder
from tads_jax.stages import evaluate
from tads_jax.stages import export
from tads_jax.stages import features
from tads_jax.stages import ingest
from tads_jax.stages import learn
from tads_jax.stages import report
from tads_jax.stages import select

STAGES = (ingest.STAGE, encoder.STAGE, embed.STAGE, features.STAGE, learn.STAGE, select.STAGE,
          evaluate.STAGE, export.STAGE, report.STAGE)
STAGE_NAMES = tuple(s.name for s in STAGES)
