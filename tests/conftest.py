"""Every test runs on 8 fake CPU devices, so each sharding path is exercised without a GPU."""
import os

from tests.xla_flags import xla_flags

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Keras parity references run on JAX; TensorFlow would otherwise import Keras on its backend.
os.environ.setdefault("KERAS_BACKEND", "jax")

import pathlib  # noqa: E402

# torch (the port tests' reference) and the triton it loads lazily must be imported before
# TensorFlow: imported after it, triton segfaults. Many modules pull TensorFlow in at collection.
try:
  import torch  # noqa: E402,F401
  import torch._dynamo  # noqa: E402,F401  (imports triton where it is installed)
except ImportError:
  pass

import pytest  # noqa: E402

UTKFACE_2K = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface-2k"


@pytest.fixture
def utkface_2k():
  """The real 2,000-image UTKFace folder; tests using it skip where it is absent."""
  if not (UTKFACE_2K / "labels.csv").exists():
    pytest.skip(f"real data not found at {UTKFACE_2K}")
  return UTKFACE_2K
