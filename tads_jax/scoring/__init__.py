"""Per-sample signals: quality operators, task relevance, diversity (k-means, dedup).

Importing the package registers the built-in quality operators (quality.py) in
registry.OPERATORS, so registry.compute knows them by name.
"""

from tads_jax.scoring import quality  # noqa: F401  (registers the operators)
from tads_jax.scoring import registry  # noqa: F401
