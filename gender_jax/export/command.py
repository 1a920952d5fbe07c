"""`python -m gender_jax.export`: flags → `export(...)`; a user's mistake (checked before any
work) or a failed export or parity check → one `error:` line, status 1."""
from __future__ import annotations

import os
import sys

from gender_jax import cli
from gender_jax import export as lib
from gender_jax.data.preprocess import ImageError


def main(argv=None) -> int:
  parser = cli.Parser("gender_jax.export", lib.__doc__)
  parser.add_argument("--bundle", required=True,
                      help="inference bundle directory (example: --bundle runs/demo/bundle)")
  parser.add_argument("--format", required=True, choices=lib.FORMATS,
                      help="target format (example: --format tflite)")
  parser.add_argument("--out", required=True,
                      help="model file (.tflite / .onnx) or SavedModel directory "
                           "(example: --out model.tflite)")
  parser.add_argument("--quantize", default="float32", choices=lib.QUANTIZATIONS,
                      help="TFLite only: float16 weights, dynamic-range (int8 weights) or "
                           "full int8 (needs --calibration-dir); example: --quantize float16")
  parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=None,
                      help="fixed batch size; 0 = dynamic. Default: 1 for TFLite (fuses "
                           "BatchNorm into convs), dynamic otherwise; example: --batch 8")
  parser.add_argument("--input-dtype", default="uint8", choices=lib.INPUT_DTYPES,
                      help="the exported model's input: uint8 pixels (preprocessing inside) or "
                           "float32 (example: --input-dtype float32)")
  parser.add_argument("--calibration-dir",
                      help="folder of images (searched recursively) for int8 calibration; "
                           "the parity check uses other images from it (example: --calibration-dir photos/)")
  parser.add_argument("--calibration-images", type=int, default=200,
                      help="images used for int8 calibration (default 200; example: "
                           "--calibration-images 500)")
  parser.add_argument("--check-dir", help="folder of images for the parity check "
                                          "(default: --calibration-dir, else synthetic; example: --check-dir photos/)")
  parser.add_argument("--check-images", type=int, default=64,
                      help="images in the parity check (default 64; example: --check-images 16)")
  cli.add_overwrite(parser)
  args = parser.parse_args(argv)
  # Before any work (tracing and converting take seconds to minutes): inputs exist, out is writable.
  # Option clashes are export()'s to report (status 1, with its own words); missing or
  # unwritable paths are the user's to fix (status 2, like every command).
  try:
    cli.require_weights_dir(args.bundle, "--bundle")
    cli.require_writable(args.out, "--out")
    if problem := lib.out_problem(args.format, args.out):
      raise cli.UsageError(problem)
    cli.require_unwritten(args.out, "--out", "an exported model", args.overwrite,
                          inside="saved_model.pb" if args.format == "saved_model" else None)
    for flag in ("calibration_dir", "check_dir"):
      if getattr(args, flag):
        cli.require_dir(getattr(args, flag), f"--{flag}")
  except cli.UsageError as e:
    if (args.quantize == "int8" and not args.calibration_dir) or (
        args.format != "tflite" and args.quantize != "float32"):
      pass  # export() below names the clash of options first
    else:
      print(f"error: {e}", file=sys.stderr)
      return cli.EXIT_USAGE
  batch = args.batch if args.batch is not None else (1 if args.format == "tflite" else 0)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    lib.export(args.bundle, args.format, args.out, quantization=args.quantize,
           batch=batch or None, input_dtype=args.input_dtype,
           calibration_dir=args.calibration_dir, calibration_count=args.calibration_images,
           check_dir=args.check_dir, check_count=args.check_images)
  except (lib.ExportError, lib.ParityError, ImageError, FileNotFoundError) as e:
    print(f"error: export failed: {e}", file=sys.stderr)
    return 1
  return 0

