"""The error policy every command shares, and the checks that need no data.

`UsageError` is a mistake the user can fix (a path, a key, a number); `run(main)` prints it as
one `error: …` line and exits 2. The traceback appears only with `--debug` or
GENDER_JAX_DEBUG=1, so a real bug can still be reported in full. The `require_*` checks need
no data: commands call them before any work starts (and before a workdir is created). Only the
standard library is imported, so every layer may raise these errors.
"""
from __future__ import annotations

import os
import sys
import tempfile
from typing import Callable

EXIT_USAGE = 2


class UsageError(Exception):
  """A mistake in what the user asked for; the message names the thing and the fix."""


def debug_requested(argv=None) -> bool:
  argv = sys.argv if argv is None else argv
  return "--debug" in argv or os.environ.get("GENDER_JAX_DEBUG", "") not in ("", "0")


def strip_debug(argv):
  return [a for a in argv if a != "--debug"]


# Errors that, raised by our own checks or the libraries' file handling, are the user's to fix.
# Anything else is a bug and keeps its traceback.
# (Library errors that are the user's to fix, such as a malformed annotation file, subclass
# UsageError.)
def _user_errors() -> tuple[type[BaseException], ...]:
  return (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def run(main: Callable[..., int | None], argv=None) -> None:
  """Calls main(argv) and exits with its status; a user's mistake → `error: …`, status 2."""
  argv = list(sys.argv[1:] if argv is None else argv)
  debug = debug_requested(argv)
  try:
    status = main(strip_debug(argv))
  except _user_errors() as e:
    if debug:
      raise
    exit_now(f"error: {one_line(e)}")
  sys.exit(status or 0)


def exit_now(line: str, status: int = EXIT_USAGE) -> None:
  """Prints the line and leaves at once: library threads (Orbax, tensorstore) still shutting
  down would otherwise print their own tracebacks at interpreter exit."""
  print(line, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)


def one_line(e: BaseException) -> str:
  text = str(e).strip().strip("'\"")
  if isinstance(e, OSError) and e.filename and e.strerror:
    text = f"{e.filename}: {e.strerror}"
  return " ".join(text.replace("\\n", "\n").replace("\\'", "'").split())


# ----------------------------------------------------------------------------- checks
def require_exists(path: str, what: str) -> str:
  if not path or not os.path.exists(path):
    raise UsageError(f"{what} {path!r} does not exist")
  if not os.access(path, os.R_OK):
    raise UsageError(f"{what} {path!r} is not readable (check its permissions)")
  return path


def require_dir(path: str, what: str) -> str:
  require_exists(path, what)
  if not os.path.isdir(path):
    raise UsageError(f"{what} {path!r} is a file, not a folder")
  return path


def require_writable(path: str, what: str) -> str:
  """`path` (a file or folder to create) can be written: its nearest existing parent is writable."""
  probe = os.path.abspath(path)
  if os.path.isfile(probe):  # an existing file is replaced: its folder must be writable
    probe = os.path.dirname(probe)
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe):
    raise UsageError(f"{what} {path!r}: {probe} is a file, not a folder; choose another location")
  if not _can_write(probe):
    raise UsageError(f"{what} {path!r}: {probe} is not writable; choose another location")
  return path


def require_unwritten(path: str, what: str, holds: str, overwrite: bool,
                      inside: str | None = None) -> str:
  """What an earlier run wrote at `path` (the file, or `inside` it when it is a folder) is
  never replaced unless asked: one line naming it and the two ways on."""
  if os.path.exists(os.path.join(path, inside) if inside else path) and not overwrite:
    raise UsageError(f"{what} {path!r} already holds {holds}: give another {what}, or add "
                     "--overwrite to replace it")
  return path


def _can_write(folder: str) -> bool:
  # A real write, not os.access: root passes os.access on read-only folders and mounts.
  try:
    with tempfile.TemporaryFile(dir=folder):
      return True
  except OSError:
    return False


def require_weights_dir(path: str, what: str) -> str:
  """A weights directory or bundle, complete: meta.json and the weights/ checkpoint."""
  if not path or not os.path.exists(path):
    raise UsageError(f"{what} {path!r} does not exist, so it is not a weights directory or "
                     "bundle; check the path")
  require_dir(path, what)
  if not os.path.exists(os.path.join(path, "meta.json")):
    raise UsageError(f"{what} {path!r} is not a weights directory or bundle (no meta.json); "
                     "make one with `python -m gender_jax.convert` or by training")
  weights = os.path.join(path, "weights")
  if not os.path.isdir(weights) or not _checkpoint_complete(weights):
    raise UsageError(f"{what} {path!r} is incomplete: {weights} is missing or damaged; "
                     "copy the whole directory again")
  return path


def _checkpoint_complete(weights: str) -> bool:
  """Orbax's metadata files are there; a file missing deeper is caught by `load_bundle`."""
  return all(os.path.exists(os.path.join(weights, f)) for f in ("_METADATA", "manifest.ocdbt"))



def require_target_accuracy(value: float | None, what: str = "--target-accuracy") -> float | None:
  """An abstain target strictly between 0.5 (a coin answers that well) and 1 (only a perfect
  model answers anything at 1; the threshold would abstain on every image)."""
  if value is not None and not 0.5 < value < 1.0:
    raise UsageError(f"{what} {value}: give an accuracy between 0.5 and 1, exclusive (e.g. "
                     "0.95): the threshold answers only the images it can get that right")
  return value
