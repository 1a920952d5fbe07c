"""Small shared pieces for tests: a seconds-long training config, weight comparison, and the
torchvision references of the port parity tests."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from tests.xla_flags import xla_flags

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
  from gender_jax.models.weights import load_weights
  flat, _ = load_weights(os.path.join(workdir, "bundle"))
  return flat


def train_cli(workdir: str, *overrides: str, timeout: float = 240, **popen):
  """`python -m gender_jax.train` on configs/demo.py in a fresh process (8 fake devices)."""
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  cmd = [sys.executable, "-m", "gender_jax.train", "--config", "configs/demo.py",
         "--workdir", workdir, *overrides]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen)


def constant_bundle(directory, bias=(0.0, 1.0), size=16, abstain_threshold=0.0,
                    resize="squash", inputs=None):
  """A resnet_tiny whose weights are all zero but the head bias: logits = bias for any image
  (`resize` and `inputs` as a bundle trained on person crops records them)."""
  import ml_collections
  from flax import nnx
  from gender_jax.inference.bundle import save_bundle
  from gender_jax.models.weights import flat_key, load_flat
  from gender_jax.data.preprocess import make_spec
  from gender_jax.models import create_model
  cfg = ml_collections.ConfigDict(dict(arch="resnet_tiny", num_classes=2, compute_dtype="float32",
                                       variant="torchvision", dropout=0.0))
  # Shapes only (random init compiles one kernel per shape: minutes on a busy CPU), then fill.
  model = nnx.eval_shape(lambda: create_model(cfg, rngs=nnx.Rngs(0)))
  flat = {flat_key(path): v.get_value() for path, v in
          nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}
  flat = {k: (np.asarray(bias, np.float32) if k == "fc/bias" else
              np.ones(v.shape, v.dtype) if k.endswith("/var") else np.zeros(v.shape, v.dtype))
          for k, v in flat.items()}
  load_flat(model, flat)
  save_bundle(str(directory), model, model_config=cfg.to_dict(),
                         preprocessing=make_spec(size, resize=resize),
                         calibration=dict(temperature=1.0, abstain_threshold=abstain_threshold),
                         extra=dict(inputs=list(inputs)) if inputs else None)
  return str(directory)


def random_bundle(directory, size=16, preset="scratch", temperature=1.0, seed=0,
                  abstain_threshold=0.0, probe=None):
  """resnet_tiny with random conv and head weights, centred so both classes get answers: a
  channel-order, normalisation or padding mistake anywhere changes its outputs. The head
  bias cancels the median margin over `probe` (uint8 NHWC at `size`; default random pixels):
  random head weights alone push all images one way (pooled ReLU features share a
  direction)."""
  import ml_collections
  from flax import nnx
  from gender_jax.inference.bundle import save_bundle
  from gender_jax.models.weights import flat_key, load_flat
  from gender_jax.data.preprocess import make_spec
  from gender_jax.models import create_model
  cfg = dict(arch="resnet_tiny", num_classes=2, compute_dtype="float32", dropout=0.0)
  # Shapes, then numpy values (an eager random init compiles one kernel per shape: slow).
  model = nnx.eval_shape(lambda: create_model(ml_collections.ConfigDict(cfg), rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  flat = {flat_key(path): v.get_value() for path, v in
          nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))}

  def value(key, shape, dtype):
    if key.endswith(("/var", "/scale")):
      return np.ones(shape, dtype)
    if len(shape) == 4:  # He-normal conv kernels (HWIO)
      return (rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:3]))).astype(dtype)
    if key == "fc/kernel":
      return (3.0 * rng.standard_normal(shape)).astype(dtype)
    return np.zeros(shape, dtype)
  load_flat(model, {k: value(k, v.shape, v.dtype) for k, v in flat.items()})
  model.eval()
  spec = make_spec(size, preset)
  if probe is None:
    probe = np.random.default_rng(seed + 1).integers(0, 256, (16, size, size, 3), np.uint8)
  logits = reference_logits(model, spec, probe)
  margin = float(np.median(logits[:, 0] - logits[:, 1]))
  model.fc.bias.set_value(np.asarray([-margin / 2, margin / 2], np.float32))
  save_bundle(str(directory), model, model_config=cfg, preprocessing=spec,
                         calibration=dict(temperature=temperature,
                                          abstain_threshold=abstain_threshold))
  return str(directory)


def reference_logits(model, spec, images):
  """The bundle contract written out by hand in numpy (channel order, mean, std), then the
  eval-mode model: what every inference path must reproduce for size x size uint8 images."""
  import jax
  from flax import nnx
  x = np.asarray(images, np.float64)
  if spec["channel_order"] == "BGR":
    x = x[..., ::-1]
  x = (x - np.asarray(spec["mean"])) / np.asarray(spec["std"])
  graphdef, state = nnx.split(model)
  apply = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  return np.asarray(apply(state, x.astype(np.float32)), np.float64)


def load_bundle_model(directory):
  from gender_jax.inference.bundle import Bundle
  bundle = Bundle(str(directory))
  return bundle.model, bundle.preprocessing, float(bundle.calibration["temperature"])


# ----------------------------------------------------------------------------- port references
def torch_libs():
  import pytest
  return pytest.importorskip("torch"), pytest.importorskip("torchvision")


def randomize_torch(model, seed=0):
  """Random biases, BN affine and running stats (eval mode): torchvision inits them to 0/1."""
  torch, _ = torch_libs()
  gen = torch.Generator().manual_seed(seed)
  bn_types = (torch.nn.BatchNorm2d,)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, bn_types):
        n = module.num_features
        module.weight.copy_(0.5 + torch.rand(n, generator=gen))
        module.bias.copy_(0.1 * torch.randn(n, generator=gen))
        module.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
        module.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=gen))
      elif getattr(module, "bias", None) is not None:
        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
  return model.eval()


def state_dict_numpy(model):
  return {k: v.numpy() for k, v in model.state_dict().items()}


def torchvision_port(arch: str, **model_kwargs):
  """(torchvision model with random weights and BN statistics, its port with the head, meta)."""
  from gender_jax.models import ports
  torch, torchvision = torch_libs()
  torch.manual_seed(0)
  ref = randomize_torch(getattr(torchvision.models, arch)(weights=None, **model_kwargs))
  flat, meta = ports.convert_tensors(state_dict_numpy(ref), source="torchvision", arch=arch,
                                     keep_head=True)
  return ref, flat, meta
