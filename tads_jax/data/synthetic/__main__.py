"""python -m tads_jax.data.synthetic: the command line in cli.py."""

import sys

from tads_jax.data.synthetic.cli import main

sys.exit(main())
