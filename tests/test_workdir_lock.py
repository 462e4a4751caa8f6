"""One run per workdir: a second run stops at once naming the holder; a lock left by a
killed run is taken over."""

import os
import signal
import subprocess
import sys

import pytest

from tads_jax import workdir_lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ('import sys, time; sys.path.insert(0, sys.argv[2]); '
        'from tads_jax import workdir_lock\n'
        'with workdir_lock.hold(sys.argv[1]):\n'
        '  print("held", flush=True); time.sleep(60)')

def _holder(workdir):
  proc = subprocess.Popen([sys.executable, '-c', HOLD, workdir, REPO],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'held'
  return proc

def test_second_run_stops_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path):
  workdir = str(tmp_path / 'w')
  proc = _holder(workdir)
  try:
    with pytest.raises(workdir_lock.WorkdirLocked, match=f'"pid": {proc.pid}'):
      with workdir_lock.hold(workdir):
        pass
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  with workdir_lock.hold(workdir):  # the kernel released the killed holder's lock
    with open(os.path.join(workdir, workdir_lock.LOCK)) as f:
      assert f'"pid": {os.getpid()}' in f.read()
  with workdir_lock.hold(workdir):  # and released ours at the end of the block
    pass

def test_the_cli_refuses_a_held_workdir_in_one_line(tmp_path):
  workdir = str(tmp_path / 'w')
  proc = _holder(workdir)
  try:

    out = subprocess.run([sys.executable, '-m', 'tads_jax.main', '--config',
                          os.path.join(REPO, 'configs', 'default.py'), '--workdir', workdir],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert out.returncode == 1
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: {workdir}: another run holds this workdir')
  assert 'Traceback' not in out.stderr
  assert not os.path.exists(os.path.join(workdir, 'ingest'))  # no work was started

