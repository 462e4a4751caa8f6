r"""Runs the configured stages: python -m tads_jax.main --config configs/default.py --workdir DIR

Config fields are overridden on the command line (`--config.selection.fraction=0.2`). A
rerun skips finished stages, reruns the ones whose config changed, and resumes a killed
stage where it was.
"""

import contextlib
import logging as pylogging
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from tads_jax import config as config_lib
from tads_jax import distributed
from tads_jax import pipeline
from tads_jax import selectors
from tads_jax import stages as stages_lib
from tads_jax import workdir_lock

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for every output of the run.')
flags.mark_flags_as_required(['config', 'workdir'])


def run(config, workdir: str) -> dict:
  """Validates `config`, then runs its stages in `workdir`. Returns each stage's status.

  The Python entry point for notebooks; the CLI calls it too.
  """
  try:  # first: joining a multi-process job must precede any use of a JAX device
    distributed.initialize(config)
  except ValueError as e:
    raise config_lib.ConfigError(str(e)) from None
  config_lib.validate(config, stages_lib.STAGE_NAMES, selectors.SELECTORS)
  workdir = os.path.abspath(workdir)
  writer = distributed.is_writer()  # of several processes, one holds the lock and cleans
  with workdir_lock.hold(workdir) if writer else contextlib.nullcontext():
    if writer:
      pipeline.remove_temporaries(workdir)  # a killed run's half-written files
    distributed.barrier('workdir ready')
    ctx = pipeline.Context(config=config, workdir=workdir)
    return pipeline.run_stages(stages_lib.STAGES, pipeline.stage_names(config), ctx)


class _QuietLibraries(pylogging.Filter):
  """Drops INFO lines from orbax (a dozen per checkpoint save), keeping its warnings, so
  that the stages' progress lines stay readable."""

  def filter(self, record):
    return record.levelno > pylogging.INFO or '/orbax/' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  pylogging.getLogger('absl').setLevel(pylogging.INFO)
  pylogging.getLogger('absl').addFilter(_QuietLibraries())
  logging.set_verbosity(logging.INFO)
  try:
    status = run(_CONFIG.value, _WORKDIR.value)
  except config_lib.ConfigError as e:
    sys.exit(f'config error: {e}')
  except workdir_lock.WorkdirLocked as e:
    sys.exit(f'error: {e}')
  except ValueError as e:  # bad data: the message names the file and field
    logging.vlog(1, traceback.format_exc())
    sys.exit(f'error: {e}  (--verbosity=1 prints the traceback)')
  for name, s in status.items():
    logging.info('%s: %s', name, s)
  report = os.path.join(_WORKDIR.value, 'report.md')
  if os.path.exists(report):
    print(f'report: {os.path.abspath(report)}')


def cli():
  """The `tads-jax` console command (pyproject [project.scripts]): `python -m
  tads_jax.main` under another name. absl's --help prints the docstring and the key flags
  of the main module, which here is the console-script stub: it gets this module's."""
  sys.modules['__main__'].__doc__ = __doc__
  for flag in flags.FLAGS.get_key_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  app.run(main)


if __name__ == '__main__':
  app.run(main)
