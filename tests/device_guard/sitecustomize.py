"""The GPU host's missing modules, made absent: where GENDER_JAX_DEVICE_GUARD names modules
(comma-separated top-level names), every Python process started with this folder on
PYTHONPATH finds none of them, as on the host whose image lacks them — `import` raises
ModuleNotFoundError, `importlib.util.find_spec` answers None and importlib.metadata knows
none of the distributions in GENDER_JAX_DEVICE_GUARD_DISTS, whatever is installed here.
So a stray import in the GPU run (TensorFlow, TFDS, Ray, …) fails its rehearsal here, not on
the device. tests/test_gpu_dry_run.py sets it; nothing else puts this folder on the path.
"""
import importlib.machinery
import os
import re
import sys

_REFUSED = frozenset(filter(None, os.environ.get("GENDER_JAX_DEVICE_GUARD", "").split(",")))
# Their distributions too (normalised names), for code that asks importlib.metadata first.
_ABSENT_DISTS = frozenset(filter(None, os.environ.get("GENDER_JAX_DEVICE_GUARD_DISTS",
                                                      "").split(",")))


def _normal(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name or "").lower()


class _PathFinderWithout:
  """sys.path's finder, blind to the refused names (a finder that raised instead would also
  break the code that only asks whether a module exists)."""

  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name.partition(".")[0] in _REFUSED:
      return None
    return importlib.machinery.PathFinder.find_spec(name, path, target)

  @classmethod
  def find_distributions(cls, *args, **kwargs):  # importlib.metadata asks meta path finders
    return (d for d in importlib.machinery.PathFinder.find_distributions(*args, **kwargs)
            if _normal(d.metadata["Name"]) not in _ABSENT_DISTS)

  @classmethod
  def invalidate_caches(cls):
    importlib.machinery.PathFinder.invalidate_caches()


if _REFUSED:
  sys.meta_path[:] = [_PathFinderWithout if f is importlib.machinery.PathFinder else f
                      for f in sys.meta_path]
  # Editable installs add finders of their own; they map only this project's packages.
