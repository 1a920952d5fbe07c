"""Counts XLA backend compiles in this process, so serving can prove none happen after warm-up.

A module of its own (not globals of the app module) because Ray may pickle the deployment
class by value, which would give the listener and the reader two different globals.
"""
import threading

_lock = threading.Lock()
_count = 0
_installed = False


def _listener(event: str, duration: float, **kwargs) -> None:
  del duration, kwargs
  global _count
  if event == "/jax/core/compile/backend_compile_duration":
    with _lock:
      _count += 1


def install() -> None:
  """Registers the jax.monitoring listener once per process."""
  global _installed
  import jax.monitoring
  with _lock:
    if not _installed:
      jax.monitoring.register_event_duration_secs_listener(_listener)
      _installed = True


def count() -> int:
  return _count
