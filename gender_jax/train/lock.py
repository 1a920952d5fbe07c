"""One run per workdir: `WORKDIR/.lock`, taken before any work and held until the process ends.

Two runs in one workdir (a scheduler's retry while the first still runs, a double launch)
would write the same checkpoints and metrics: the second is refused at once, in one line
naming the holder, with its own exit status (`EXIT_BUSY`), and never waits. The lock is an
`flock` on the file, which the kernel drops when the holder dies however it dies (SIGKILL, a
lost node), so a lock left behind never blocks a rerun; the file's text (host, PID, start
time) is only there to name the holder, and a stale one is reported when taken over.

Multi-process runs take one lock for the run: process 0 takes it, the others do not.
Only the standard library is imported, so the check runs before jax starts.
"""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket

from gender_jax import cli

# Not 1 (a crash), 2 (a user's mistake), 75 (a peer lost: requeue) nor 143 (preempted:
# rerun): the workdir belongs to a run that is alive, so a retry now would be refused too.
# (EX_CANTCREAT of sysexits.h: the output cannot be created.)
EXIT_BUSY = 73
LOCK_NAME = ".lock"

_held: dict[str, int] = {}  # workdir → the open descriptor that holds its lock
_created: set[str] = set()  # workdirs this process made (removed again if left empty)


class WorkdirBusy(cli.UsageError):
  """Another live process holds this workdir's lock."""


def _describe(holder: dict) -> str:
  if not holder:
    return "another process (no details recorded yet)"
  return (f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
          f"{holder.get('started', '?')}")


def _read(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 4096).decode(errors="replace")
  try:
    return json.loads(text) if text.strip() else {}
  except ValueError:
    return {}


def acquire(workdir: str) -> str:
  """Takes `workdir`'s lock for this process (creating the workdir), or raises WorkdirBusy.

  Idempotent within a process. Returns the lock file's path."""
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, LOCK_NAME)
  if workdir in _held:
    return path
  if not os.path.isdir(workdir):
    os.makedirs(workdir)
    _created.add(workdir)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    holder = _read(fd)
    os.close(fd)
    if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise
    raise WorkdirBusy(f"workdir {workdir} is in use by another run ({_describe(holder)}; "
                      f"lock {path}): wait for it to finish, stop it, or choose another "
                      "--workdir") from None
  left = _read(fd)
  if left:
    logging.warning("taking over the lock of %s in %s: that process is gone", _describe(left),
                    workdir)
  me = dict(host=socket.gethostname(), pid=os.getpid(),
            started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
  os.ftruncate(fd, 0)
  os.lseek(fd, 0, os.SEEK_SET)
  os.write(fd, (json.dumps(me) + "\n").encode())
  _held[workdir] = fd
  return path


def release(workdir: str) -> None:
  """Clears and drops the lock (a clean end; a killed process's lock drops by itself). A
  workdir this process created and left holding nothing but the lock (a run refused by its
  checks) is removed, so a mistake leaves no trace."""
  workdir = os.path.abspath(workdir)
  fd = _held.pop(workdir, None)
  if fd is not None:
    os.ftruncate(fd, 0)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    if workdir in _created and os.listdir(workdir) == [LOCK_NAME]:
      os.remove(os.path.join(workdir, LOCK_NAME))
      os.rmdir(workdir)


def is_first_process(env=os.environ) -> bool:
  """Process 0 of a multi-process run (from the launch environment, before jax starts)."""
  for key in ("JAX_PROCESS_ID", "SLURM_PROCID"):
    if env.get(key, "").strip():
      try:
        return int(env[key]) == 0
      except ValueError:
        return True  # parallel.distributed_settings names the malformed value
  return True
