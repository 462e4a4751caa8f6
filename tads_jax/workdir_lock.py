"""One run per workdir: an advisory lock on `<workdir>/.lock`.

Two runs on one workdir would mix stage fingerprints, done markers and checkpoints. The
lock is flock(2) on a file, so the kernel releases it when its holder exits, however it
exits (kill -9 included): a lock left by a killed run is simply taken over. The file holds
the holder's host, pid and start time, to name it in the message another run gets.
"""

import contextlib
import fcntl
import json
import os
import socket
import time

LOCK = '.lock'


class WorkdirLocked(RuntimeError):
  """Another live process holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str):
  """Holds the workdir's lock for the duration of the block; raises WorkdirLocked at once
  when another process holds it."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode('utf-8', errors='replace').strip()
      holder = holder or 'holder unknown'
      raise WorkdirLocked(f'{workdir}: another run holds this workdir ({holder}); wait for '
                          'it to finish or stop it') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({'host': socket.gethostname(), 'pid': os.getpid(),
                              'since': time.strftime('%Y-%m-%d %H:%M:%S')}).encode(), 0)
    yield
  finally:
    os.close(fd)  # closing the descriptor releases the flock
