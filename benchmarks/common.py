"""What the benchmarks share: the trainer's step on a mesh, synthetic device batches, timing,
peak FLOP/s by device, the torchvision peer, and the table/JSON output.

Import this module before JAX: it sets the environment JAX and TensorFlow read at start-up.
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import pathlib
import platform
import sys
import time
from typing import Any, Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `configs` is a top-level package beside gender_jax
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# JAX grabs 75% of GPU memory at start-up by default, which would leave the torch peer in
# the same process to run out of memory; grow on demand instead.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_FOLDER = ROOT.parent / "shared" / "data" / "utkface-2k"

# Dense (no sparsity) bf16 peak, TFLOP/s, from the vendors' datasheets; first match of the
# substring in `device.device_kind` wins, so specific names come before general ones. The
# issue's "~790 measured" for H100 is the matmul rate reached in practice (pass --peak 790 to
# compare with it).
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
    ("RTX 3090", 71.0),
    ("V100", 125.0),  # fp16 tensor cores; V100 has no bf16
    ("TPU v6", 918.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 197.0),  # v5e ("TPU v5 lite")
    ("TPU v4", 275.0),
)


def peak_tflops(device_kind: str, override: float | None = None) -> tuple[float | None, str]:
  """(peak bf16 TFLOP/s per device, where the figure came from); None on CPUs."""
  if override:
    return float(override), "--peak"
  for name, tflops in PEAK_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return tflops, f"datasheet ({name})"
  return None, "unknown device kind (pass --peak)"


def device_info(with_torch: bool = True) -> dict[str, Any]:
  d = jax.devices()[0]
  info = dict(platform=d.platform, device_kind=d.device_kind, device_count=jax.device_count(),
              host=platform.node(), cpu_count=os.cpu_count(), jax=jax.__version__,
              xla_flags=os.environ.get("XLA_FLAGS", ""))
  torch = import_torch() if with_torch else None  # a 4 s import: only where a peer runs
  if torch is not None:
    info["torch"] = torch.__version__
  return info


def resolve_dtype(name: str) -> str:
  """"auto": bf16 on accelerators; f32 on CPUs, where bf16 is emulated and slower."""
  if name != "auto":
    return name
  return "float32" if jax.devices()[0].platform == "cpu" else "bfloat16"


def jax_peak_bytes() -> int | None:
  """Peak bytes in use on device 0 since the process started (None where not reported)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def compiled_cost(compiled) -> dict[str, float | None]:
  """FLOPs and the planned device memory of one compiled program, per device."""
  out: dict[str, float | None] = dict(flops=None, plan_bytes=None)
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else None
  if cost and cost.get("flops"):
    out["flops"] = float(cost["flops"])
  with contextlib.suppress(Exception):  # not every backend reports it
    m = compiled.memory_analysis()
    out["plan_bytes"] = float(m.argument_size_in_bytes + m.output_size_in_bytes
                              + m.temp_size_in_bytes - m.alias_size_in_bytes)
  return out


# ----------------------------------------------------------------------------- the project's step
# Training recipes timed under their config's name: the arch, fine-tune mode and optimizer
# are the recipe's own (configs/NAME.py), the batch, size and dtype the benchmark's.
RECIPES = ("utkface_dlib",)


def train_config(arch: str, batch_size: int, image_size: int, compute_dtype: str):
  """The real config for `arch` (VGG's own learning rate and clipping; a recipe's whole
  config), at this size."""
  import importlib
  from configs import resnet, vgg16
  if arch in RECIPES:
    config = importlib.import_module(f"configs.{arch}").get_config()
  else:
    config = (vgg16 if arch.startswith("vgg") else resnet).get_config()
    config.model.arch = arch
  config.model.compute_dtype = compute_dtype
  config.data.image_size = image_size
  config.data.batch_size = batch_size
  config.data.eval_batch_size = batch_size
  return config


def create_train_setup(config, mesh, total_steps: int):
  """The trainer's own model/optimizer/state/jitted step (`steps.create_train_setup`)."""
  from gender_jax.train import steps
  from gender_jax.data import preprocess
  spec = preprocess.make_spec(config.data.image_size, config.data.preprocessing)
  return steps.create_train_setup(config, mesh, total_steps, spec)


def synthetic_batch(mesh, batch_size: int, image_size: int, seed: int = 0,
                    with_index: bool = False):
  """A uint8 NHWC batch and labels generated on the devices, sharded as the trainer shards;
  `with_index`: the examples' stream indices too, which keys augmentation on the device."""
  from gender_jax import parallel
  sharding = parallel.batch_sharding(mesh)

  def make():
    k1, k2 = jax.random.split(jax.random.key(seed))
    image = jax.random.randint(k1, (batch_size, image_size, image_size, 3), 0, 256, jnp.int32)
    batch = {"image": image.astype(jnp.uint8),
             "label": jax.random.randint(k2, (batch_size,), 0, 2, jnp.int32)}
    if with_index:
      batch["index"] = jnp.arange(batch_size, dtype=jnp.int32)
    return batch
  shardings = {k: sharding for k in ("image", "label", "index")[:3 if with_index else 2]}
  return jax.jit(make, out_shardings=shardings)()


def run_steps(train_step, state, next_batch: Callable[[], Any], steps: int, max_in_flight: int,
              timer: "Timer | None" = None):
  """`steps` train steps dispatched as the trainer does: at most `max_in_flight` ahead of
  the host. Returns the state once every step has finished."""
  timer = timer or Timer()
  in_flight: collections.deque = collections.deque()
  with timer("data"):
    batch = next_batch()
  for i in range(steps):
    with timer("dispatch"):
      state, metrics = train_step(state, batch)
    in_flight.append(metrics["loss"][0])
    if i + 1 < steps:
      with timer("data"):  # the next batch is read while this step runs, as in the trainer
        batch = next_batch()
    if len(in_flight) > max_in_flight:
      with timer("device"):
        in_flight.popleft().block_until_ready()
  with timer("device"):
    jax.block_until_ready((state, list(in_flight)))
  return state


class Timer:
  """Accumulates wall time per label: `with timer("data"): ...`."""

  def __init__(self):
    self.totals: dict[str, float] = collections.defaultdict(float)

  @contextlib.contextmanager
  def __call__(self, label: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.totals[label] += time.perf_counter() - start


# ----------------------------------------------------------------------------- torch peer
_TORCH_ERROR = ""


def import_torch():
  """torch, or None where it is not installed (the peer is then skipped, never an error)."""
  global _TORCH_ERROR
  if "torchvision" not in sys.modules and "tensorflow" in sys.modules:
    # torchvision imported after TensorFlow segfaults (torch 2.14 / TF 2.21): the scripts
    # import torch first; anything else that loaded TF already runs without the peer.
    _TORCH_ERROR = "TensorFlow was imported first (torchvision would crash); import torch earlier"
    return None
  try:
    import torch
    import torchvision  # noqa: F401
    return torch
  except ImportError as e:
    _TORCH_ERROR = f"torch/torchvision not installed ({e}); pip install -e '.[port]'"
    return None


def torch_skip_reason() -> str:
  return _TORCH_ERROR


def torch_device(torch):
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torchvision_model(arch: str, num_classes: int = 2):
  """The torchvision model of the same name, or None (the tiny test models have none)."""
  import torchvision
  fn = getattr(torchvision.models, arch, None)
  if arch.endswith("_tiny") or arch.endswith("_tiny_bn") or fn is None:
    return None
  return fn(weights=None, num_classes=num_classes)


def torch_normalize(torch, images, spec, dtype):
  """uint8 NHWC → normalised NCHW in channels_last memory: the work `preprocess.normalize`
  does inside the JAX step, so both sides start from the same bytes."""
  x = images.permute(0, 3, 1, 2).float()  # a view: NHWC memory is channels_last
  if spec["channel_order"] == "BGR":
    x = x.flip(1)
  mean = torch.tensor(spec["mean"], device=x.device).view(1, 3, 1, 1)
  std = torch.tensor(spec["std"], device=x.device).view(1, 3, 1, 1)
  return ((x - mean) / std).to(dtype=dtype).contiguous(memory_format=torch.channels_last)


def torch_batch(torch, batch_size: int, image_size: int, seed: int = 0):
  g = torch.Generator().manual_seed(seed)
  device = torch_device(torch)
  images = torch.randint(0, 256, (batch_size, image_size, image_size, 3), generator=g,
                         dtype=torch.uint8).to(device)
  labels = torch.randint(0, 2, (batch_size,), generator=g).to(device)
  return images, labels


def torch_sync(torch):
  if torch.cuda.is_available():
    torch.cuda.synchronize()


def torch_memory_reset(torch):
  if torch.cuda.is_available():
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()


def torch_peak_bytes(torch) -> int | None:
  return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def torch_autocast(torch, compute_dtype: str):
  """bf16 autocast where the run is bf16 (the JAX side: bf16 compute, f32 parameters)."""
  if compute_dtype == "float32":
    return contextlib.nullcontext()
  return torch.autocast(torch_device(torch).type, dtype=getattr(torch, compute_dtype))


def time_torch(torch, fn: Callable[[], Any], warmup: int, steps: int) -> dict[str, float]:
  """Runs fn warmup+steps times; returns the first call's seconds (compile, for
  torch.compile) and the seconds per call over `steps` after the warm-up."""
  torch_sync(torch)
  start = time.perf_counter()
  fn()
  torch_sync(torch)
  first = time.perf_counter() - start
  for _ in range(max(warmup - 1, 0)):
    fn()
  torch_sync(torch)
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  torch_sync(torch)
  return dict(first_s=first, step_s=(time.perf_counter() - start) / steps)


# ----------------------------------------------------------------------------- output
def format_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
  """A Markdown table; columns are (key, header, format) and None cells print as —."""
  def cell(row, key, fmt):
    v = row.get(key)
    return "—" if v is None else (format(v, fmt) if fmt else str(v))
  lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
  lines += ["| " + " | ".join(cell(r, k, f) for k, _, f in columns) + " |" for r in rows]
  return "\n".join(lines)


def report(name: str, rows: list[dict], columns, info: dict, args) -> dict[str, Any]:
  """Prints the table (with a CPU caveat) and writes the JSON: every script's last step."""
  print()
  print(format_table(rows, columns))
  if info["platform"] == "cpu":
    print("\nCPU numbers (XLA:CPU and torch on the host): not what a GPU run shows.")
  payload = dict(benchmark=name, device=info, args=vars(args), rows=rows)
  write_json(args.json, payload)
  return payload


def write_json(path: str | None, payload: dict[str, Any]) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, default=_json_default)
  print(f"wrote {path}")


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return str(x)


def gib(n: float | None) -> float | None:
  return None if n is None else n / 2**30
