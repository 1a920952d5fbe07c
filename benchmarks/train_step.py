"""Train-step throughput: the project's jitted step beside torchvision, same device, same run.

  python benchmarks/train_step.py                         # ResNet-50, ResNet-18, VGG-16 at 224 px
  python benchmarks/train_step.py --arch resnet50 --batch 256 --steps 50 --json r50.json
  python benchmarks/train_step.py --arch resnet_tiny --batch 8 --size 32 --steps 2 --no-peer
  python benchmarks/train_step.py --arch resnet50 --no-jax --flops-per-image 2.38e10  # peers alone
  python benchmarks/train_step.py --arch resnet50,vgg16 --mode all,last_n=1,head \
      --batch 16 --size 64 --steps 5 --warmup 1 --no-peer     # fine-tune modes side by side

gender_jax: the trainer's step (`steps.create_train_setup`: `make_train_step` under `jax.jit`
with the trainer's shardings and donated state, the optimizer of the arch's real config) on a
uint8 batch made on the device, dispatched with the trainer's bound on steps in flight.
`--mode` times fine-tune modes (`all`, `head`, `last_n=N`, `scratch`) one row each: a frozen
stage runs in inference mode outside the gradient, so its backward pass is gone, which the
GFLOP/img column (XLA's count for the compiled step) shows beside the forward pass alone.
Peers (full training only) run in the `all` row's comparison. Peers: torchvision's
model of the same name, eager and `torch.compile`, bf16 autocast, channels_last, SGD with
Nesterov momentum and weight decay (plus VGG's gradient clipping), label smoothing, fed the
same uint8 NHWC batch and normalising it inside the step as the JAX step does. Peers run first
and free their memory, so JAX then has the card.

Prints a Markdown table — img/s, JAX ÷ each peer, MFU (FLOPs from XLA's cost analysis of the
compiled step, peak from the device-kind table in common.py or --peak), TFLOP/s, compile time
(lower + compile; torch: the first call), peak device memory — and writes --json. Several
archs run one child process each, so each peak-memory figure is that model's alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import common  # noqa: I001 — sets the environment before JAX starts
import jax

ARCHS = ("resnet50", "resnet18", "vgg16")
MODES = ("scratch", "all", "head", "last_n")
COLUMNS = [("arch", "model", ""), ("impl", "implementation", ""), ("mode", "mode", ""),
           ("img_s", "img/s", ",.0f"), ("step_ms", "step ms", ".1f"),
           ("x_all", "× all", ".2f"), ("gflops_per_image", "GFLOP/img", ".3g"),
           ("fwd_gflops_per_image", "fwd GFLOP/img", ".3g"), ("x_eager", "× eager", ".2f"),
           ("x_compile", "× compile", ".2f"), ("mfu", "MFU", ".1%"),
           ("tflops", "TFLOP/s", ".3g"), ("compile_s", "compile s", ".1f"),
           ("peak_gib", "peak GiB", ".2f")]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--arch", default=",".join(ARCHS),
                 help="comma-separated model names, or a recipe's config name "
                      f"({', '.join(common.RECIPES)}: its arch, fine-tune mode and optimizer)")
  p.add_argument("--batch", type=int, default=256, help="global batch size")
  p.add_argument("--size", type=int, default=224, help="image size (px)")
  p.add_argument("--steps", type=int, default=50, help="timed steps")
  p.add_argument("--warmup", type=int, default=5, help="untimed steps after compiling")
  p.add_argument("--dtype", default="auto", help="compute dtype: auto (bf16 on GPU/TPU, "
                 "f32 on CPU), bfloat16, float32")
  p.add_argument("--devices", type=int, default=1,
                 help="mesh size (0: every device); 1 compares one device with the peer")
  p.add_argument("--peer", default="eager,compile", help="torch peers: eager, compile")
  p.add_argument("--no-peer", dest="peer", action="store_const", const="")
  p.add_argument("--no-jax", dest="jax", action="store_false",
                 help="the torch peers alone (their MFU from --flops-per-image)")
  p.add_argument("--flops-per-image", type=float,
                 help="with --no-jax: XLA's FLOPs per image of the same step, from a JAX run")
  p.add_argument("--compile-mode", default="default",
                 help="torch.compile mode (default, max-autotune, …)")
  p.add_argument("--mode", default="all", help="comma-separated fine-tune modes: all, head, "
                 "last_n=N (head + the last N stages), scratch; one row each")
  p.add_argument("--peak", type=float, help="peak TFLOP/s per device for MFU "
                 "(default: by device kind)")
  p.add_argument("--json", help="write the results here")
  args = p.parse_args(argv)
  args.archs = [a for a in args.arch.split(",") if a]
  args.peers = [x for x in args.peer.split(",") if x]
  unknown = set(args.peers) - {"eager", "compile"}
  if unknown:
    p.error(f"--peer: unknown {sorted(unknown)}; choose from eager, compile")
  if args.steps < 1 or args.batch < 1:
    p.error("--steps and --batch must be ≥ 1")
  args.modes = []
  for m in filter(None, args.mode.split(",")):
    name, _, n = m.partition("=")
    if name not in MODES or bool(n) != (name == "last_n") or (n and not n.isdigit()):
      p.error(f"--mode: {m!r} is not one of all, head, last_n=N, scratch")
    args.modes.append((m, name, int(n or 1)))
  if not args.modes:
    p.error("--mode: name at least one mode")
  return args


# ----------------------------------------------------------------------------- gender_jax
def forward_flops(setup, mesh, batch, spec: dict, compute_dtype: str) -> float | None:
  """XLA's FLOPs for the eval graph's forward pass on this batch (whole step, all devices)."""
  from flax import nnx
  from gender_jax.data.preprocess import normalize
  params, batch_stats = setup.abstract_state["params"], setup.abstract_state["batch_stats"]

  def forward(params, batch_stats, images):
    return nnx.merge(setup.eval_graphdef, params, batch_stats)(
        normalize(images, spec, compute_dtype))
  cost = common.compiled_cost(jax.jit(forward).lower(params, batch_stats, batch["image"]).compile())
  return cost["flops"] * mesh.size if cost["flops"] else None


def bench_jax(config, args, with_forward: bool = False) -> dict:
  from gender_jax import parallel
  from gender_jax.train import loop as trainer
  from gender_jax.data import preprocess
  mesh = parallel.create_mesh(args.devices or None)
  parallel.local_batch_size(args.batch, mesh)  # a clear error when it does not divide
  setup = common.create_train_setup(config, mesh, total_steps=10**6)
  state = jax.jit(setup.init_state, out_shardings=setup.state_sharding)()
  batch = common.synthetic_batch(mesh, args.batch, args.size,
                                 with_index=bool(config.data.get("device_augment", False)))
  spec = preprocess.make_spec(config.data.image_size, config.data.preprocessing)
  fwd = forward_flops(setup, mesh, batch, spec, config.model.compute_dtype) if with_forward else None

  start = time.perf_counter()
  compiled = setup.train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = common.compiled_cost(compiled)

  state = common.run_steps(compiled, state, lambda: batch, args.warmup,
                           trainer.MAX_STEPS_IN_FLIGHT)
  start = time.perf_counter()
  state = common.run_steps(compiled, state, lambda: batch, args.steps,
                           trainer.MAX_STEPS_IN_FLIGHT)
  step_s = (time.perf_counter() - start) / args.steps
  # Cost analysis is per device; × devices counts the work of the whole step.
  flops_per_image = cost["flops"] * mesh.size / args.batch if cost["flops"] else None
  row = dict(impl="gender_jax", step_s=step_s, compile_s=compile_s, devices=mesh.size,
             flops_per_image=flops_per_image, peak_bytes=common.jax_peak_bytes(),
             plan_bytes=cost["plan_bytes"])
  if flops_per_image:
    row["gflops_per_image"] = flops_per_image / 1e9
  if fwd:
    row["fwd_gflops_per_image"] = fwd / args.batch / 1e9
  return row


# ----------------------------------------------------------------------------- torch peers
def torch_train_step(torch, model, config, spec, images, labels, compute_dtype: str,
                     compile_mode: str | None = None):
  """A torch train step doing the JAX step's work; `compile_mode` → torch.compile(model)."""
  import torch.nn.functional as F
  device = images.device
  model = model.to(device, memory_format=torch.channels_last).train()
  opt_cfg = config.optimizer
  fused = dict(fused=True) if device.type == "cuda" else {}
  opt = torch.optim.SGD(model.parameters(), lr=opt_cfg.lr, momentum=opt_cfg.momentum,
                        nesterov=opt_cfg.nesterov, weight_decay=opt_cfg.weight_decay, **fused)
  forward = torch.compile(model, mode=compile_mode) if compile_mode else model
  clip = float(opt_cfg.grad_clip_norm or 0.0)

  def step():
    with common.torch_autocast(torch, compute_dtype):
      logits = forward(common.torch_normalize(torch, images, spec, torch.float32))
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=config.label_smoothing)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
    opt.step()
    return loss
  return step


def bench_torch(torch, arch, config, spec, args, compute_dtype) -> list[dict]:
  rows = []
  images, labels = common.torch_batch(torch, args.batch, args.size)
  for peer in args.peers:
    model = common.torchvision_model(arch, config.model.num_classes)
    if model is None:
      print(f"  torch {peer}: skipped (torchvision has no {arch})", flush=True)
      continue
    impl = "torch eager" if peer == "eager" else "torch.compile"
    common.torch_memory_reset(torch)
    try:
      step = torch_train_step(torch, model, config, spec, images, labels, compute_dtype,
                              compile_mode=args.compile_mode if peer == "compile" else None)
      t = common.time_torch(torch, step, args.warmup, args.steps)
    except Exception as e:  # noqa: BLE001 — e.g. no C++/Triton toolchain for inductor
      print(f"  {impl}: failed, skipped ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
            flush=True)
      rows.append(dict(impl=impl, error=f"{type(e).__name__}: {e}"[:500]))
      continue
    rows.append(dict(impl=impl, step_s=t["step_s"], compile_s=t["first_s"],
                     peak_bytes=common.torch_peak_bytes(torch)))
    del step, model
  del images, labels
  common.torch_memory_reset(torch)
  return rows


# ----------------------------------------------------------------------------- one arch
def mode_config(config, mode: str, last_n: int):
  config = config.copy_and_resolve_references()
  config.finetune.mode, config.finetune.last_n = mode, last_n
  return config


def bench_arch(arch: str, args) -> list[dict]:
  from gender_jax.data import preprocess
  compute_dtype = common.resolve_dtype(args.dtype)
  config = common.train_config(arch, args.batch, args.size, compute_dtype)
  spec = preprocess.make_spec(args.size, config.data.preprocessing)
  labels = [label for label, *_ in args.modes]
  full = next((label for label, mode, _ in args.modes if mode in ("all", "scratch")), None)
  peer_rows = []
  if args.peers and full is None:
    print("  torch peers skipped: they train every layer; add --mode all", flush=True)
  elif args.peers:
    torch = common.import_torch()
    if torch is None:
      print(f"  torch peers skipped: {common.torch_skip_reason()}", flush=True)
    else:
      peer_rows = bench_torch(torch, arch, config, spec, args, compute_dtype)
      for r in peer_rows:
        r["mode"] = full
  # The forward pass's FLOPs beside the fine-tune rows' show what backward is left in them.
  with_forward = any(mode in ("head", "last_n") for _, mode, _ in args.modes)
  jax_rows = []
  for label, mode, last_n in (args.modes if args.jax else []):
    if len(labels) > 1:
      print(f"  mode {label}", flush=True)
    row = bench_jax(mode_config(config, mode, last_n), args, with_forward=with_forward)
    row["mode"] = label
    jax_rows.append(row)

  device = jax.devices()[0]
  peak, peak_source = common.peak_tflops(device.device_kind, args.peak)
  by_mode = {r["mode"]: r for r in jax_rows}
  full_flops = by_mode[full]["flops_per_image"] if full in by_mode else args.flops_per_image
  rows = jax_rows + peer_rows
  for r in rows:
    r.update(arch=arch, batch=args.batch, size=args.size, dtype=compute_dtype)
    if "step_s" not in r:
      continue
    devices = r.get("devices", 1)
    r["img_s"] = args.batch / r["step_s"]
    r["step_ms"] = r["step_s"] * 1e3
    r["peak_gib"] = common.gib(r.get("peak_bytes"))
    # Peers do the full step's work: its FLOPs from XLA, so their MFU compares.
    flops = r.get("flops_per_image") or (full_flops if r["impl"] != "gender_jax" else None)
    if flops:
      r["flops_per_image"] = flops
      r["tflops"] = flops * r["img_s"] / devices / 1e12
      r["mfu"] = r["tflops"] / peak if peak else None
  by_impl = {r["impl"]: r for r in peer_rows if "step_s" in r}
  for row in jax_rows:
    if full and "img_s" in by_mode[full]:
      row["x_all"] = row["img_s"] / by_mode[full]["img_s"]
    row.update(peak_tflops=peak, peak_source=peak_source)
  if full in by_mode:
    for peer, key in (("torch eager", "x_eager"), ("torch.compile", "x_compile")):
      if peer in by_impl:
        jax_row = by_mode[full]
        jax_row[key] = jax_row["img_s"] / jax_row["devices"] / by_impl[peer]["img_s"]
  return rows


def run_children(args, argv) -> list[dict]:
  """One process per arch: peak memory per model, and no allocator state carried over."""
  rows = []
  base = [a for a in (argv if argv is not None else sys.argv[1:])]
  base = _drop_option(_drop_option(base, "--arch"), "--json")
  for arch in args.archs:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
      cmd = [sys.executable, os.path.abspath(__file__), *base, "--arch", arch, "--json", f.name]
      print(f"== {arch}", flush=True)
      done = subprocess.run(cmd, check=False)
      if done.returncode:
        rows.append(dict(arch=arch, impl="gender_jax", error=f"exit code {done.returncode}"))
        continue
      rows += json.load(open(f.name))["rows"]
  return rows


def _drop_option(argv, name):
  out, skip = [], False
  for a in argv:
    if skip:
      skip = False
    elif a == name:
      skip = True
    elif not a.startswith(name + "="):
      out.append(a)
  return out


def main(argv=None) -> dict:
  args = parse_args(argv)
  info = common.device_info(with_torch=bool(args.peers))
  if len(args.archs) > 1:
    rows = run_children(args, argv)
  else:
    print(f"{args.archs[0]}: batch {args.batch}, {args.size} px, on {info['device_kind']} "
          f"({info['platform']}), {args.steps} timed steps, mode {args.mode}", flush=True)
    rows = bench_arch(args.archs[0], args)
  return common.report("train_step", rows, COLUMNS, info, args)


if __name__ == "__main__":
  main()
