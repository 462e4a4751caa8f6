"""tads-jax: task-aware data selection for CLIP-style pretraining, in JAX/Flax."""

__version__ = "0.1.0"


def __getattr__(name):
  # Lazy, so `import tads_jax` stays light (no jax/flax import) for the CLI's config checks.
  if name == 'load_clip':
    from tads_jax.models.api import load_clip  # pylint: disable=g-import-not-at-top
    return load_clip
  raise AttributeError(f'module tads_jax has no attribute {name!r}')
