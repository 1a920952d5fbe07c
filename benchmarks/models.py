"""The model comparison: one row per arch — size, FLOPs, CPU latency, TFLite int8, accuracy.

  python benchmarks/models.py                                   # every arch in the registry
  python benchmarks/models.py --arch cnn_small,resnet18 --size 48 --epochs 3 --json models.json
  python benchmarks/models.py --arch none --merge models.json,models_80px.json --plot models.png

Per arch, trained from scratch with one fixed recipe (same image size, epochs, seed, batch and
optimizer for every arch — the CPU budget printed with the table) on the UTKFace folder
(default ../shared/data/utkface-2k, the folder source's seeded 80/10/10 split):
  params          trainable parameters
  MFLOP/img       XLA's cost analysis of the compiled batch-1 forward (as train_step.py)
  JAX ms          median batch-1 latency of the bundle's jitted probs function on the CPU
  int8 ms / MB    the TFLite int8 export (`gender_jax.export`, calibrated on the train
                  folder), median batch-1 latency in LiteRT on --threads threads, file size
  test bal. acc.  balanced accuracy on the test split (`gender_jax.evaluation.evaluate`), 95% CI
  train s         wall time of the training run
Precise BN (`--precise-bn N`, default 40; 0 = off): after training, every BatchNorm's
running mean/var of an arch that has BatchNorm is replaced by the average of its batch
statistics over N training batches (the trainer's own input stream: its crops and flips),
and the bundle re-saved (`gender_jax.train.precise_bn`); the row also keeps the test balanced
accuracy on the running averages the training left (`bal. acc. before`), so the effect shows.
`--plot PATH` draws test balanced accuracy (95% CI bars) against JAX batch-1 latency;
`--merge a.json,...` adds the rows of earlier runs (another image size, say) to the table
and the plot, and `--arch none` then only merges.
Archs run one after another in this process and each row is written to --json as it
finishes, so a long run that is stopped still leaves the rows it reached. An int8 export that
fails its agreement check is still timed (the parity result is in the row).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import pathlib
import tempfile
import time

import common  # noqa: I001 — sets the environment before JAX starts
import jax
import numpy as np

# The list, cheapest first (so a stopped run has the most rows); archs the registry
# lacks are skipped.
ARCHS = ("cnn_small", "resnet18", "mobilenet_v3_small", "mobilenet_v2", "mobilenet_v3_large",
         "resnet50", "inception_v3", "vgg16")
COLUMNS = [("arch", "model", ""), ("params_m", "params (M)", ".2f"),
           ("mflops", "MFLOP/img", ",.0f"), ("jax_ms", "JAX ms (b=1)", ".2f"),
           ("int8_ms", "int8 ms (b=1)", ".2f"), ("int8_mb", "int8 MB", ".2f"),
           ("test_bal_acc", "test bal. acc.", ".3f"), ("ci", "95% CI", ""),
           ("test_bal_acc_before_pbn", "bal. acc. before", ".3f"), ("size", "px", "d"),
           ("train_s", "train s", ".0f")]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--arch", default="", help="comma-separated names (default: every arch of "
                 "the issue's list the registry has)")
  p.add_argument("--folder", default=str(common.DEFAULT_FOLDER), help="UTKFace folder layout")
  p.add_argument("--data-dir", default="", help="prepared data (default: the project's)")
  p.add_argument("--size", type=int, default=32, help="image size (px), every arch")
  p.add_argument("--epochs", type=float, default=3.0, help="training epochs, every arch")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--lr", type=float, default=1e-3, help="AdamW rate, every arch")
  p.add_argument("--clip", type=float, default=5.0, help="gradient-norm clipping, every arch")
  p.add_argument("--warmup", type=float, default=0.5, help="linear warmup (epochs), every arch")
  p.add_argument("--precise-bn", dest="precise_bn", type=int, default=40,
                 help="training batches for precise BN after training (0: off), every arch")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--runs", type=int, default=50, help="timed batch-1 calls per latency")
  p.add_argument("--threads", type=int, default=1, help="LiteRT threads")
  p.add_argument("--no-train", dest="train", action="store_false",
                 help="random weights: size, FLOPs and latency only")
  p.add_argument("--no-tflite", dest="tflite", action="store_false")
  p.add_argument("--workdir", default="", help="keep the runs here (default: a temp dir)")
  p.add_argument("--json", help="write the results here")
  p.add_argument("--plot", default="", help="PNG: accuracy against JAX latency")
  p.add_argument("--merge", default="", help="comma-separated JSONs of earlier runs whose "
                 "rows join the table and the plot")
  args = p.parse_args(argv)
  from gender_jax.models import ARCHS as REGISTRY, MIN_IMAGE_SIZE
  wanted = ([] if args.arch == "none" else
            [a for a in args.arch.split(",") if a] or list(ARCHS))
  fits = lambda a: a in REGISTRY and args.size >= MIN_IMAGE_SIZE.get(a, 1)  # noqa: E731
  args.archs = [a for a in wanted if fits(a)]
  args.skipped = [a for a in wanted if not fits(a)]
  return args


def train_config(arch: str, args):
  """configs/utkface.py with the arch swapped in and the shared budget applied."""
  from configs import utkface
  config = utkface.get_config()
  config.seed = args.seed
  config.data.folder = args.folder
  config.data.sources.folder.path = args.folder
  # The comparison's budget has no rotation or colour (utkface.py's own recipe now does):
  # the tables in benchmarks/README.md were measured so.
  config.data.sources.folder.update(dict(rotate=0.0, color_jitter=0.0, grayscale=0.0))
  config.data.device_augment = False
  config.data.data_dir = args.data_dir
  config.data.image_size = args.size
  config.data.batch_size = args.batch
  config.data.eval_batch_size = 128
  config.model.arch = arch
  config.model.width = 0  # each arch at its own width (utkface.py narrows ResNet-18)
  config.optimizer.lr = args.lr
  config.optimizer.grad_clip_norm = args.clip  # VGG without BatchNorm diverges without it
  # The warmup in steps, counted here from the training split's size (Adam's first full-rate
  # steps are what leave VGG-16 without BatchNorm answering one class).
  from gender_jax.data import sources
  num_train = sum(len(sources.get_source(n, "train", config))
                  for n in sources.configured_sources(config))
  config.optimizer.warmup_epochs = 0  # 0 = unset
  config.optimizer.warmup_steps = int(round(args.warmup * num_train / args.batch))
  config.total_epochs = args.epochs
  config.eval_every_epochs = args.epochs
  config.after_training = ""
  config.checkpoint.async_save = False
  return config


def random_bundle(directory: str, arch: str, size: int) -> str:
  import ml_collections
  from gender_jax.inference.bundle import save_bundle
  from gender_jax.data import preprocess
  from gender_jax.models import create_model
  model_config = dict(arch=arch, num_classes=2, compute_dtype="float32")
  model = create_model(ml_collections.ConfigDict(model_config))
  model.eval()
  save_bundle(directory, model, model_config=model_config,
                         preprocessing=preprocess.make_spec(size))
  return directory


def forward_cost(bundle) -> tuple[int, float | None]:
  """(parameters, FLOPs per image) from the bundle's model and XLA's cost analysis."""
  from flax import nnx
  probs = bundle.probs_fn()
  params = sum(x.size for x in jax.tree.leaves(nnx.state(bundle.model, nnx.Param)))
  image = np.zeros((1, bundle.image_size, bundle.image_size, 3), np.uint8)
  compiled = jax.jit(probs).lower(image).compile()
  return int(params), common.compiled_cost(compiled)["flops"]


def median_ms(fn, image, runs: int, warmup: int = 3) -> float:
  for _ in range(warmup):
    fn(image)
  times = []
  for _ in range(runs):
    start = time.perf_counter()
    fn(image)
    times.append(time.perf_counter() - start)
  return float(np.median(times) * 1e3)


def tflite_int8(bundle_dir: str, out: pathlib.Path, calibration_dir: str, image, args) -> dict:
  from gender_jax import export
  row: dict = {}
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      contract = export.export(bundle_dir, "tflite", out, quantization="int8",
                               calibration_dir=calibration_dir, calibration_count=64,
                               check_count=32, log=lambda *_: None)
    row["int8_agreement"] = contract["parity"]["label_agreement"]
  except export.ParityError as e:  # random or barely trained weights: few decisions to keep
    row["int8_parity_error"] = str(e)[:300]
  if not out.exists():
    return row
  run = export.load_runtime("tflite", out, num_threads=args.threads)
  row["int8_ms"] = median_ms(run, image, args.runs)
  row["int8_mb"] = out.stat().st_size / 1e6
  return row


def test_accuracy(bundle_dir: str, workdir: str, out: str) -> dict:
  """Balanced accuracy on the run's test split, with its bootstrap 95% CI."""
  from gender_jax.evaluation import datasets as eval_data
  from gender_jax.evaluation import scoring
  report = scoring.evaluate_bundle(bundle_dir, eval_data.load(None, workdir=workdir), out,
                                    bootstrap=200, progress=False)
  acc = report["overall"]["balanced_accuracy"]
  return dict(test_bal_acc=acc["value"], ci_lo=acc["ci"][0], ci_hi=acc["ci"][1],
              ci=f"[{acc['ci'][0]:.3f}, {acc['ci'][1]:.3f}]", test_count=report["count"])


def apply_precise_bn(config, bundle_dir: str, step: int, batches: int) -> dict:
  """The trainer's `precise_bn` step after training, on `batches` batches of the training
  stream (from the step after the last one trained: new shuffles, same augmentation)."""
  from gender_jax.train import after
  if not batches:
    return dict(batches=0, examples=0)
  config.precise_bn_batches = batches
  return after.STEPS["precise_bn"](config, bundle_dir, step=step, val_sources={})


def bench_arch(arch: str, args, root: str) -> dict:
  from gender_jax.train import precise_bn
  from gender_jax.train import loop as trainer
  from gender_jax.inference.bundle import Bundle
  row: dict = dict(arch=arch, size=args.size)
  workdir = os.path.join(root, arch)
  if args.train:
    config = train_config(arch, args)
    start, cpu = time.perf_counter(), time.process_time()
    result = trainer.train_and_evaluate(config, workdir)
    row["train_s"] = time.perf_counter() - start
    row["train_cpu_s"] = time.process_time() - cpu  # all threads: the share the host gave it
    row["steps"] = int(result["step"])
    row["val_bal_acc"] = result.get("val_balanced_accuracy")
    bundle_dir = os.path.join(workdir, "bundle")
    has_bn = bool(precise_bn.batch_norms(Bundle(bundle_dir).model))
    if args.precise_bn and has_bn:
      before = test_accuracy(bundle_dir, workdir, os.path.join(workdir, "report_before_pbn"))
      row["test_bal_acc_before_pbn"] = before["test_bal_acc"]
      start = time.perf_counter()
      row["precise_bn"] = apply_precise_bn(config, bundle_dir, int(result["step"]),
                                           args.precise_bn)
      row["precise_bn_s"] = time.perf_counter() - start
    row.update(test_accuracy(bundle_dir, workdir, os.path.join(workdir, "report")))
  else:
    bundle_dir = random_bundle(os.path.join(workdir, "bundle"), arch, args.size)
  bundle = Bundle(bundle_dir, compute_dtype="float32")
  params, flops = forward_cost(bundle)
  row.update(params=params, params_m=params / 1e6, flops_per_image=flops,
             mflops=flops / 1e6 if flops else None)
  image = np.random.default_rng(0).integers(0, 256, (1, args.size, args.size, 3), np.uint8)
  probs = bundle.probs_fn()
  row["jax_ms"] = median_ms(lambda x: jax.block_until_ready(probs(x)), image, args.runs)
  if args.tflite:
    row.update(tflite_int8(bundle_dir, pathlib.Path(workdir) / "int8.tflite", args.folder,
                           image, args))
  return row


def plot(rows: list[dict], path: str, title: str) -> None:
  """Test balanced accuracy (95% CI bars) against JAX batch-1 CPU latency, log x."""
  import matplotlib
  matplotlib.use("Agg")
  import textwrap
  import matplotlib.pyplot as plt
  from matplotlib.ticker import FuncFormatter, LogLocator
  pts = sorted((r for r in rows if r.get("jax_ms") and r.get("test_bal_acc") is not None),
               key=lambda r: r["jax_ms"])
  fig, ax = plt.subplots(figsize=(6.4, 4.6))
  placed: list[tuple[float, float, bool]] = []
  for r in pts:
    lo, hi = r.get("ci_lo", r["test_bal_acc"]), r.get("ci_hi", r["test_bal_acc"])
    ax.errorbar(r["jax_ms"], r["test_bal_acc"],
                yerr=[[r["test_bal_acc"] - lo], [hi - r["test_bal_acc"]]],
                fmt="o", capsize=3, ms=6)
    label = r["arch"] + (f" ({r['size']} px)" if r.get("size") != pts[0].get("size") else "")
    # Above the point, or below it where a label already sits just left of this one.
    near = any(r["jax_ms"] / x < 2 and abs(r["test_bal_acc"] - y) < 0.04 and up
               for x, y, up in placed)
    placed.append((r["jax_ms"], r["test_bal_acc"], not near))
    ax.annotate(label, (r["jax_ms"], r["test_bal_acc"]), xytext=(6, -11 if near else 5),
                textcoords="offset points", fontsize=8)
  ax.set_xscale("log")
  ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
  ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
  ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
  ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
  ax.set(xlabel="JAX CPU latency, batch 1 (ms, log scale)",
         ylabel="test balanced accuracy (95% CI)", title=textwrap.fill(title, 90))
  ax.title.set_fontsize(9)
  ax.grid(alpha=0.3, which="both")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  print(f"wrote {path}")


def main(argv=None) -> dict:
  args = parse_args(argv)
  info = common.device_info(with_torch=False)
  root = args.workdir or tempfile.mkdtemp(prefix="models_bench_")
  budget = (f"from scratch, {args.size} px, {args.epochs:g} epochs, batch {args.batch}, "
            f"AdamW {args.lr:g} (warmup {args.warmup:g} epochs, cosine), clip {args.clip:g}, precise BN {args.precise_bn} batches, "
            f"seed {args.seed}, on {args.folder}")
  print(f"budget: {budget}" + (f"; not in the registry or too small an input for: {', '.join(args.skipped)}"
                               if args.skipped else ""), flush=True)
  rows = []
  for arch in args.archs:
    print(f"== {arch}", flush=True)
    try:
      rows.append(bench_arch(arch, args, root))
    except Exception as e:  # noqa: BLE001 — one arch failing leaves the others' rows
      print(f"  {arch}: failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})", flush=True)
      rows.append(dict(arch=arch, error=f"{type(e).__name__}: {e}"[:500]))
    print(common.format_table(rows[-1:], COLUMNS).splitlines()[-1], flush=True)
    common.write_json(args.json, dict(benchmark="models", device=info, args=vars(args),
                                      budget=budget, rows=rows))
  merged = []
  for path in filter(None, args.merge.split(",")):
    with open(path) as f:
      earlier = json.load(f)
    merged += [dict(r, budget=earlier.get("budget")) for r in earlier["rows"]]
  payload = common.report("models", rows + merged, COLUMNS, info, args)
  payload["budget"] = budget
  common.write_json(args.json, payload)
  print(f"budget: {budget}")
  if args.plot:
    budgets = ([budget] if rows else []) + [r["budget"] for r in merged if r.get("budget")]
    title = "; ".join(dict.fromkeys(b.split(", on ")[0] for b in budgets))
    plot(rows + merged, args.plot, f"utkface-2k — {title}")
  return payload


if __name__ == "__main__":
  main()
