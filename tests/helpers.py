"""Small shared pieces for tests: a seconds-long training config and weight comparison."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  """configs/demo.py shrunk to seconds: 16 px, 256 synthetic images, batch 32."""
  sys.path.insert(0, REPO)
  from configs import demo
  config = demo.get_config()
  config.data.sources.synthetic.train_size = 256
  config.data.sources.synthetic.validation_size = 64
  config.data.sources.synthetic.image_size = 20
  config.data.image_size = 16
  config.data.batch_size = 32
  config.data.eval_batch_size = 32
  config.total_steps = 6
  config.eval_every_steps = 6
  config.checkpoint.checkpoint_every_steps = 2
  config.checkpoint.async_save = True
  config.log_every = 2
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def bundle_weights(workdir: str) -> dict[str, np.ndarray]:
  from gender_jax import checkpoint
  flat, _ = checkpoint.load_weights(os.path.join(workdir, "bundle"))
  return flat


def train_cli(workdir: str, *overrides: str, timeout: float = 240, **popen):
  """`python -m gender_jax.train` on configs/demo.py in a fresh process (8 fake devices)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [sys.executable, "-m", "gender_jax.train", "--config", "configs/demo.py",
         "--workdir", workdir, *overrides]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)
