"""The training loop of proxy training (train.py) and meta-learning (meta.py).

What both runs share: resume from the last checkpoint of the workdir (checked against the
run's fingerprint), one host sync per log line or checkpoint (device metrics wait in a
list until then), a progress bar, a log line every `log_every` steps, a checkpoint every
`checkpoint_every` steps and at the end, and `stop_after` to end a call early as if killed
there. The run supplies the state, the step and how its metrics enter the history:

    state, history = loop.run(cfg, 'train', state, history, make_step, total=cfg.steps,
                              workdir=workdir, fingerprint=fingerprint, record=record,
                              describe=describe)

A step is a pure function of (state, step index): a run killed after its last checkpoint
resumes to the state and history an uninterrupted run ends with.
"""

import os
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import numpy as np

from tads_jax import checkpoints
from tads_jax import distributed
from tads_jax import pipeline


def run(cfg, name: str, state, history: dict,
        make_step: Callable[[int], Callable[[Any, int], tuple[Any, Any]]], *, total: int,
        record: Callable[[dict, Sequence[int], list], None],
        describe: Callable[[dict, int, float], tuple[dict, str]],
        workdir: str | None = None, fingerprint: dict | None = None,
        stop_after: int | None = None, log: Callable[[str], None] = logging.info):
  """Runs steps 1..total (or ..stop_after) from the last checkpoint; returns (state,
  history).

  cfg: the run's config; its checkpoint_every, keep_checkpoints and log_every are read, and
    its class name names the fields of a fingerprint mismatch.
  name: what the progress bar and the resume line call a step ('train', 'meta').
  state: the state before step 1; it has a `step` field (steps done), and gives the
    structure and shardings a checkpoint is restored into.
  history: {'step': [], ...} lists before step 1; a resume replaces it with the saved one.
  make_step(start) -> step(state, step) -> (state, device metrics): called once, with the
    steps already done (0, or the step of the checkpoint resumed from).
  record(history, steps, metrics): appends fetched metrics (host values, one per step) to
    history; the loop appends the steps to history['step'].
  describe(history, step, steps_per_second) -> (progress bar postfix, log line).
  workdir: checkpoints go to workdir/checkpoints, each with `fingerprint` (what must match
    for it to be resumed: checkpoints.check_fingerprint); None: no checkpoints.
  stop_after: end after that many steps of the run, as if killed there.
  log: gets the log lines and the resume line.
  """
  end = total if stop_after is None else min(total, stop_after)
  manager = directory = None
  if workdir is not None:
    directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    manager = checkpoints.make_manager(directory, cfg.keep_checkpoints)
  try:
    # A state on a mesh over several processes is the same on each: the writer alone
    # saves it, and every process resumes from the writer's latest checkpoint.
    shared = manager is not None and checkpoints.spans_processes(state)
    saves = manager is not None and (not shared or distributed.is_writer())
    step = None
    if shared:
      latest = manager.latest_step() if distributed.is_writer() else None
      step = int(distributed.broadcast(np.array(-1 if latest is None else latest)))
      step = None if step < 0 else step
    restored = None if manager is None else checkpoints.restore(
        manager, directory, state, fingerprint, config_name=type(cfg).__name__, step=step)
    if restored is not None:
      latest, state, history = restored
      log(f'{directory}: resumed at {name} step {latest} of {total}')

    start = int(state.step)
    step_fn = make_step(start)
    pending = []  # device metrics not yet fetched: one host sync per log or save
    tick, tick_step = time.perf_counter(), start

    def flush():
      if not pending:
        return
      steps = [step for step, _ in pending]
      metrics = jax.device_get([m for _, m in pending])
      history['step'] += steps
      record(history, steps, metrics)
      pending.clear()

    # A bar on a terminal; off one, the log lines below (they carry the metrics too).
    progress = pipeline.Progress(name, end, unit='steps', lines=False, initial=start)
    for step in range(start + 1, end + 1):
      state, metrics = step_fn(state, step)
      pending.append((step, metrics))
      progress.update(1)
      if step % cfg.log_every == 0 or step == end:
        flush()
        postfix, line = describe(history, step, (step - tick_step) /
                                 (time.perf_counter() - tick))
        progress.postfix(**postfix)
        log(line)
        tick, tick_step = time.perf_counter(), step
      if saves and (step == total or (
          cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
        flush()
        checkpoints.save(manager, step, state, fingerprint, history)
    flush()
    progress.close()
  finally:
    if manager is not None:
      manager.wait_until_finished()
      manager.close()
  return state, history
