"""Ports ImageNet weights into a weights directory that `config.init_from` names.

  python -m gender_jax.convert --from torchvision --arch resnet50 \\
      --src resnet50-11ad3fa6.pth --out weights/resnet50_torchvision
  python -m gender_jax.convert --from keras --arch vgg16 \\
      --src vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 --out weights/vgg16_keras
  python -m gender_jax.convert --from dlib --arch dlib_resnet \\
      --src dlib_face_recognition_resnet_model_v1.dat --out weights/dlib_face

The 1000-class head is dropped unless --keep-head (used by the parity checks).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from gender_jax import cli
from gender_jax.models import ports
from gender_jax.models.ports import ARCHS, SOURCES
from gender_jax.models.weights import save_weights


def parse_args(argv=None) -> argparse.Namespace:
  parser = cli.Parser("gender_jax.convert", __doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--from", dest="source", required=True, choices=SOURCES,
                      help="which library's weights --src holds (example: --from torchvision)")
  parser.add_argument("--arch", required=True,
                      help="; ".join(f"{s}: {', '.join(a)}" for s, a in ARCHS.items()) +
                      " (example: --arch resnet50)")
  parser.add_argument("--src", required=True, help=".pth/.pt, .safetensors, Keras .h5 or dlib .dat file (example: --src resnet50.pth)")
  parser.add_argument("--out", required=True, help="output weights directory (example: --out weights/resnet50_tv)")
  parser.add_argument("--keep-head", action="store_true",
                      help="also store the source's classifier head (num_classes = its classes; "
                           "example: --keep-head)")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  try:  # before reading a multi-GB file: the input exists, the output can be written
    cli.require_exists(args.src, "--src")
    cli.require_writable(args.out, "--out")
  except cli.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return cli.EXIT_USAGE
  try:
    flat, meta = ports.convert_file(args.src, source=args.source, arch=args.arch,
                                      keep_head=args.keep_head)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {cli.one_line(e)}", file=sys.stderr)
    return 1  # the file does not hold what --from/--arch say (tests/test_convert.py)
  save_weights(args.out, flat, meta)
  count = sum(int(np.prod(v.shape)) for v in flat.values())
  print(f"wrote {args.out}: {len(flat)} tensors, {count:,} values from {args.src}")
  print(f"  dropped: {', '.join(meta['dropped']) or 'nothing'}; "
        f"initialised fresh when fine-tuning: {', '.join(meta['fresh_prefixes']) or 'nothing'}")
  print(f"  input preprocessing: {meta['preprocessing']['preset']} "
        f"({meta['preprocessing']['channel_order']}, mean {meta['preprocessing']['mean']})")
  print(f"  fine-tune: add to a train command --config.init_from={args.out} "
        f"--config.model.arch={meta['arch']} --config.model.variant={meta['variant']} "
        "--config.finetune.mode=all (or head, last_n)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
