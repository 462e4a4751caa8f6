"""tads-jax: task-aware data selection for CLIP-style pretraining, in JAX/Flax."""

__version__ = "0.1.0"
