"""`python -m gender_jax.export`: flags → `export(...)`; exit status 1 with the reason on failure."""
from __future__ import annotations

import argparse
import os
import sys

from gender_jax import export as lib


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gender_jax.export", description=lib.__doc__.split("\n\n")[0])
  parser.add_argument("--bundle", required=True, help="inference bundle directory")
  parser.add_argument("--format", required=True, choices=lib.FORMATS)
  parser.add_argument("--out", required=True,
                      help="model file (.tflite / .onnx) or SavedModel directory")
  parser.add_argument("--quantize", default="float32", choices=lib.QUANTIZATIONS,
                      help="TFLite only: float16 weights, dynamic-range (int8 weights) or "
                           "full int8 (needs --calibration_dir)")
  parser.add_argument("--batch", type=int, default=None,
                      help="fixed batch size; 0 = dynamic. Default: 1 for TFLite (fuses "
                           "BatchNorm into convs), dynamic otherwise")
  parser.add_argument("--input_dtype", default="uint8", choices=lib.INPUT_DTYPES)
  parser.add_argument("--calibration_dir",
                      help="folder of images (searched recursively) for int8 calibration; "
                           "the parity check uses other images from it")
  parser.add_argument("--calibration_images", type=int, default=200)
  parser.add_argument("--check_dir", help="folder of images for the parity check "
                                          "(default: --calibration_dir, else synthetic)")
  parser.add_argument("--check_images", type=int, default=64)
  args = parser.parse_args(argv)
  from gender_jax.data.preprocess import ImageError
  batch = args.batch if args.batch is not None else (1 if args.format == "tflite" else 0)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    lib.export(args.bundle, args.format, args.out, quantization=args.quantize,
           batch=batch or None, input_dtype=args.input_dtype,
           calibration_dir=args.calibration_dir, calibration_count=args.calibration_images,
           check_dir=args.check_dir, check_count=args.check_images)
  except (lib.ExportError, lib.ParityError, ImageError, FileNotFoundError) as e:
    print(f"export failed: {e}", file=sys.stderr)
    return 1
  return 0

