"""Everything one GPU should measure, in one command, into one JSON.

  bash benchmarks/gpu.sh                       # on the GPU host (installs the carried wheels)
  python benchmarks/gpu.py --out results/gpu   # the same, where the packages are installed
  python benchmarks/gpu.py --dry-run --out /tmp/gpu --data DIR   # tiny sizes, on a CPU

Each part is one of the existing benchmark scripts, run as its own process (so each peak
memory figure is its own and one crash loses one part), in order of what matters most, each
under a time cap and all under one budget (`--budget`, seconds): a part that would not fit
is recorded as skipped, not started. After every part the whole JSON is rewritten, so a run
cut short still leaves every figure it made.

  probe          versions seen, the device, and its two ceilings measured: a bf16 matrix
                 product (TFLOP/s) and a device-to-device copy (GB/s, read + written)
  train_ARCH     train_step.py: the trainer's step (img/s, MFU, compile s, peak GiB);
                 utkface_dlib is the recipe's own fine-tune (last 4 stages, its optimizer,
                 150 px)
  torch_ARCH     train_step.py --no-jax: torchvision's model of the same name, eager and
                 torch.compile (VGG-16: eager), MFU from the JAX part's FLOPs; the summary
                 gives the JAX step's ratio to each
  predict_ARCH   predict.py: the bundle's jitted logits at batch 1, 32, 256 beside eager
  photos         faces.py --parts fused: detect → align → classify, photos/s, on a random
                 bundle of the utkface_dlib recipe's shape (dlib ResNet, 150 px)
  end_to_end     end_to_end.py on the prepared utkface-2k copy (array_record, opened without
                 TFDS), with the input settings the config chose (read threads, workers)

`--data DIR` holds what `benchmarks/gpu_prepare.py` made: prepared/ (the array_record copy)
and crops/ (face crops the photo scenes are built from). `--dry-run` runs every part at
tiny sizes with the tiny archs, so the whole command is rehearsed where no GPU is.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

from gpu_summary import SUMMARY_COLUMNS, summary  # this folder, on sys.path as the script's

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Distributions whose versions the JSON records: what the device brings and what is carried.
VERSIONS = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "flax", "optax",
            "orbax-checkpoint", "tensorstore", "numpy", "pillow", "opencv-python-headless",
            "protobuf", "tensorboard", "torch", "torchvision", "triton", "grain",
            "array-record", "ml-collections", "simplejpeg", "absl-py", "etils")

# Parts a dry run leaves out: with the tiny archs each is another part's code path again.
DRY_RUN_SAME = {"train_resnet18": "train_resnet50", "torch_resnet18": "torch_resnet50",
                "torch_vgg16": "torch_resnet50", "predict_resnet18": "predict_resnet50",
                "predict_vgg16": "predict_resnet50"}


@dataclasses.dataclass
class Part:
  name: str
  # A script under benchmarks/ and its arguments (--json is added), or a function of the
  # parts' records so far that returns them.
  argv: list | Callable[[dict], list]
  cap_s: float  # the most this part may take
  need_s: float  # not started with less than this left of the budget


def parts(args) -> list[Part]:
  """The run, most wanted first. Full sizes, or tiny ones with --dry-run.

  Each model's JAX step and its torch peers are two parts: a slow torch.compile can then
  cost the peers' rows, never the step's. The peers' MFU uses the JAX part's FLOPs."""
  data = os.path.abspath(args.data)
  dry = args.dry_run
  train = (["--batch", "4", "--size", "32", "--steps", "2", "--warmup", "1"] if dry else
           ["--batch", "256", "--size", "224", "--steps", "20", "--warmup", "3"])
  predict = (["--size", "32", "--batches", "1,4", "--steps", "2", "--warmup", "1"] if dry else
             ["--size", "224", "--batches", "1,32,256", "--steps", "30", "--warmup", "3"])
  # Tiny stand-ins for the JAX side of a dry run (XLA:CPU compiles the real ones for
  # minutes); the torch side keeps torchvision's real model, whose eager steps are cheap.
  arch = {"resnet50": "resnet_tiny", "resnet18": "resnet_tiny", "vgg16": "vgg_tiny_bn"} \
      if dry else {a: a for a in ("resnet50", "resnet18", "vgg16")}

  def jax_part(name: str, cap: float, need: float) -> Part:
    return Part(f"train_{name}", ["train_step.py", "--arch", arch[name], *train, "--no-peer"],
                cap, need)

  def torch_part(name: str, peers: str, cap: float, need: float) -> Part:
    def argv(records: dict) -> list:
      row = _jax_row(records.get(f"train_{name}"))
      flops = (["--flops-per-image", repr(row["flops_per_image"])]
               if row and row.get("arch") == name and row.get("flops_per_image") else [])
      return ["train_step.py", "--arch", name, *train, "--no-jax",
              "--peer", "eager" if dry else peers, *flops]
    return Part(f"torch_{name}", argv, cap, need)

  out = [
      Part("probe", ["gpu.py", "--probe", *(["--dry-run"] if dry else [])], 60, 20),
      jax_part("resnet50", 120, 50),
      torch_part("resnet50", "eager,compile", 150, 60),
      jax_part("resnet18", 90, 40),
      torch_part("resnet18", "eager,compile", 120, 50),
      Part("train_utkface_dlib", ["train_step.py", "--arch", "utkface_dlib", "--no-peer",
                                  "--mode", "last_n=4",
                                  *(["--batch", "2", "--size", "104", "--steps", "1",
                                     "--warmup", "1"] if dry else
                                    ["--batch", "256", "--size", "150", "--steps", "20",
                                     "--warmup", "3"])], 90, 40),
      Part("predict_resnet50", ["predict.py", "--arch", arch["resnet50"], *predict], 90, 40),
      Part("photos", ["faces.py", "--parts", "fused", "--detectors", "full",
                      "--data", os.path.join(data, "crops"),
                      *(["--batch-size", "2", "--steps", "3"] if dry else
                        ["--batch-size", "32", "--steps", "50",
                         "--random-bundle", "dlib_resnet@150"])], 120, 45),
      Part("end_to_end", ["end_to_end.py", "--prepared", os.path.join(data, "prepared"),
                          "--data-dir", os.path.join(args.work, "data_dir"),
                          "--arch", arch["resnet18"], *train], 120, 45),
      jax_part("vgg16", 90, 40),
      # VGG-16's peer: eager only, as in the reference; its torch.compile would not fit.
      torch_part("vgg16", "eager", 90, 40),
      Part("predict_resnet18", ["predict.py", "--arch", arch["resnet18"], *predict], 60, 30),
      Part("predict_vgg16", ["predict.py", "--arch", arch["vgg16"], *predict], 60, 30),
  ]
  if dry:  # at tiny sizes these run the very code of the part named: rehearsed once
    out = [p for p in out if p.name not in DRY_RUN_SAME]
  if args.parts:
    wanted = set(args.parts.split(","))
    out = [p for p in out if p.name in wanted or p.name == "probe"]
  return out


def _jax_row(record: dict | None) -> dict | None:
  """The full-training JAX row of a train_ part's record, if it made one."""
  rows = ((record or {}).get("result") or {}).get("rows", [])
  return next((r for r in rows if r.get("impl") == "gender_jax" and "img_s" in r), None)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "results", "gpu"),
                 help="folder for gpu.json and gpu.log (default: $OUT)")
  p.add_argument("--data", default=os.path.join(ROOT, ".gpu", "data"),
                 help="what benchmarks/gpu_prepare.py made: prepared/ and crops/")
  p.add_argument("--budget", type=float, default=440.0,
                 help="seconds for all parts together (each is also capped)")
  p.add_argument("--parts", help="comma-separated part names (default: all)")
  p.add_argument("--dry-run", action="store_true",
                 help="tiny sizes and tiny archs: rehearses the whole command on a CPU")
  p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--json", help=argparse.SUPPRESS)  # --probe writes here
  args = p.parse_args(argv)
  if not args.probe:
    for sub in ("prepared", "crops"):
      if not os.path.isdir(os.path.join(args.data, sub)):
        p.error(f"--data {args.data}: no {sub}/ in it; make it with "
                "python benchmarks/gpu_prepare.py (before the run)")
  return args


# ----------------------------------------------------------------------------- the probe
def probe(args) -> dict:
  """Versions, the device and its two ceilings, in a child like every part."""
  import common  # noqa: F401,I001 — sets the environment before JAX starts
  import jax
  import jax.numpy as jnp
  info = common.device_info(with_torch=False)
  device = jax.devices()[0]
  info["platform_version"] = getattr(device.client, "platform_version", None)
  n = 256 if args.dry_run else 8192
  key1, key2 = jax.random.split(jax.random.key(0))
  # Random operands, not zeros: zeros multiply faster than real data on these chips.
  a = jax.random.normal(key1, (n, n), jnp.bfloat16)
  b = jax.random.normal(key2, (n, n), jnp.bfloat16)
  matmul = jax.jit(lambda a, b: a @ b)
  matmul_s = _median_time(lambda: matmul(a, b), 3 if args.dry_run else 20)
  words = (1 << 16) if args.dry_run else (1 << 30)  # 2 GiB of bf16 on a GPU
  x = jax.random.normal(key1, (words,), jnp.bfloat16)
  copy = jax.jit(lambda x: x + 1)  # reads and writes every element once
  copy_s = _median_time(lambda: copy(x), 3 if args.dry_run else 20)
  ceilings = dict(matmul_n=n, matmul_tflops=2 * n**3 / matmul_s / 1e12,
                  copy_bytes=4 * words, copy_gbs=4 * words / copy_s / 1e9)
  payload = dict(benchmark="probe", device=info, ceilings=ceilings, versions=versions(),
                 nvidia_smi=_nvidia_smi())
  print(f"probe: {info['device_kind']} ({info['platform']}), jax {jax.__version__}; "
        f"bf16 {n}^3 matmul {ceilings['matmul_tflops']:.1f} TFLOP/s, copy "
        f"{ceilings['copy_gbs']:.1f} GB/s", flush=True)
  common.write_json(args.json, payload)
  return payload


def _median_time(fn, repeats: int) -> float:
  import jax
  jax.block_until_ready(fn())  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return sorted(times)[len(times) // 2]


def versions() -> dict:
  out = {"python": platform.python_version()}
  for name in VERSIONS:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def _nvidia_smi() -> str | None:
  try:
    done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                           "clocks.max.sm,power.limit", "--format=csv,noheader"],
                          capture_output=True, text=True, timeout=20, check=False)
    return done.stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


# ----------------------------------------------------------------------------- running parts
def run_part(part: Part, timeout: float, work: str, log, records: dict) -> dict:
  """One part in its own process group: its output echoed and logged, its JSON read back."""
  out_json = os.path.join(work, f"{part.name}.json")
  script, *rest = part.argv(records) if callable(part.argv) else part.argv
  cmd = [sys.executable, os.path.join(HERE, script), *rest, "--json", out_json]
  _echo(log, f"\n== {part.name} (at most {timeout:.0f} s): {' '.join(cmd[1:])}")
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", start_new_session=True, cwd=ROOT)
  tail: list[str] = []

  def pump():
    for line in proc.stdout:
      _echo(log, line.rstrip("\n"))
      tail.append(line)
      del tail[:-40]
  reader = threading.Thread(target=pump, daemon=True)
  reader.start()
  try:
    rc = proc.wait(timeout=timeout)
    status = "ok" if rc == 0 else "failed"
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)  # its own session: torch's compile workers too
    rc, status = proc.wait(), "timeout"
  reader.join(5)
  record = dict(status=status, rc=rc, wall_s=round(time.perf_counter() - start, 2),
                command=" ".join(cmd[1:]))
  if os.path.exists(out_json):
    with open(out_json) as f:
      record["result"] = json.load(f)
  elif status == "ok":
    record["status"] = "failed"
  if record["status"] != "ok":
    record["log_tail"] = "".join(tail)[-4000:]
  return record


def _echo(log, line: str) -> None:
  print(line, flush=True)
  log.write(line + "\n")
  log.flush()


def main(argv=None) -> dict:
  args = parse_args(argv)
  sys.path.insert(0, HERE)
  if args.probe:
    return probe(args)
  import common  # noqa: I001 — imports JAX but starts no backend: the parts own the device
  started = time.time()
  os.makedirs(args.out, exist_ok=True)
  args.work = tempfile.mkdtemp(prefix="gpu_bench_")
  payload = dict(benchmark="gpu", dry_run=args.dry_run, budget_s=args.budget,
                 started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                 host=platform.node(), cpu_count=os.cpu_count(),
                 xla_flags=os.environ.get("XLA_FLAGS", ""), versions=versions(), parts={})
  out_json = os.path.join(args.out, "gpu.json")
  with open(os.path.join(args.out, "gpu.log"), "w") as log:
    for part in parts(args):
      left = args.budget - (time.time() - started)
      if left < part.need_s:
        payload["parts"][part.name] = dict(status="skipped", reason=f"{left:.0f} s of the "
                                           f"budget left, needs {part.need_s:.0f} s")
        _echo(log, f"\n== {part.name}: skipped ({left:.0f} s left)")
        continue
      payload["parts"][part.name] = run_part(part, min(part.cap_s, left), args.work, log,
                                             payload["parts"])
      payload["wall_s"] = round(time.time() - started, 1)
      payload["summary"] = summary({k: v for k, v in payload["parts"].items()
                                    if v["status"] != "skipped"})
      _write(out_json, payload)
    probe_result = payload["parts"].get("probe", {}).get("result", {})
    payload["device"] = probe_result.get("device")
    payload["versions_device"] = probe_result.get("versions")
    payload["wall_s"] = round(time.time() - started, 1)
    _write(out_json, payload)
    statuses = {k: v["status"] for k, v in payload["parts"].items()}
    _echo(log, "\n" + common.format_table(payload.get("summary", []), SUMMARY_COLUMNS))
    _echo(log, f"\nparts: {json.dumps(statuses)}; {payload['wall_s']:.0f} s; wrote {out_json}")
  return payload


def _write(path: str, payload: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=1, default=str)
  os.replace(tmp, path)  # a run killed mid-write still leaves the last whole file


if __name__ == "__main__":
  main()
