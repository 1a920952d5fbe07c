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


def constant_bundle(directory, bias=(0.0, 1.0), size=16, abstain_threshold=0.0):
  """A resnet_tiny whose weights are all zero but the head bias: logits = bias for any image."""
  import ml_collections
  from flax import nnx
  from gender_jax import checkpoint
  from gender_jax.data.preprocess import make_spec
  from gender_jax.models import create_model
  cfg = ml_collections.ConfigDict(dict(arch="resnet_tiny", num_classes=2, compute_dtype="float32",
                                       variant="torchvision", dropout=0.0))
  # Shapes only (random init compiles one kernel per shape: minutes on a busy CPU), then fill.
  model = nnx.eval_shape(lambda: create_model(cfg, rngs=nnx.Rngs(0)))
  flat = {checkpoint.flat_key(path): v.get_value() for path, v in
          nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}
  flat = {k: (np.asarray(bias, np.float32) if k == "fc/bias" else
              np.ones(v.shape, v.dtype) if k.endswith("/var") else np.zeros(v.shape, v.dtype))
          for k, v in flat.items()}
  checkpoint.load_flat(model, flat)
  checkpoint.save_bundle(str(directory), model, model_config=cfg.to_dict(),
                         preprocessing=make_spec(size),
                         calibration=dict(temperature=1.0, abstain_threshold=abstain_threshold))
  return str(directory)
