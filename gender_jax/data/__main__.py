"""python -m gender_jax.data prepare --source NAME --manual-dir PATH [--data-dir DIR]
   python -m gender_jax.data align --manual-dir PHOTOS --out CROPS [--detector full]

`align` turns a male/ female/ folder of photos of people into aligned face crops (each
photo's most confident face on the UTKFace framing), a folder source of its own, listing in
CROPS/no_face.txt the photos where no face was found; `prepare --source folder
--align-faces CROPS` does that first and prepares the crops.

Prepares a source (reads its own files, writes array_record with the one schema) and prints
the counts per split and label, the split method and every skipped file with its reason.
The builders are ordinary registered TFDS builders, usable through the TFDS API:
  import gender_jax.data.pa100k
  b = tfds.builder("gender_pa100k", data_dir=DIR, file_format="array_record")
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=PATH))
  tfds.data_source("gender_pa100k", split="train", data_dir=DIR)
(The `tfds build` command of tensorflow-datasets 4.9.10 imports apache_beam at start-up.)
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

from gender_jax import cli
from gender_jax.data import folder, prepare, schema


def _print_summary(summary: dict, seconds: float) -> None:
  print(f"{summary['source']}: prepared in {seconds:.1f} s → {summary['data_dir']}")
  print(f"split method: {summary['split_method']}")
  print(f"{'split':<12}{'female':>9}{'male':>9}{'total':>9}{'identities':>12}")
  for split, c in summary["counts"].items():
    print(f"{split:<12}{c['female']:>9}{c['male']:>9}{c['female'] + c['male']:>9}"
          f"{summary['identities'].get(split, 0):>12}")
  if summary.get("excluded_uncertain_gender"):
    print(f"excluded (gender marked uncertain): {summary['excluded_uncertain_gender']}")
  lines = summary.get("bad_annotations", [])
  print(f"skipped annotation lines: {len(lines)}")
  for b in lines:
    print(f"  {b['where']}: {b['reason']}")
  bad = summary["bad_files"]
  print(f"skipped files: {len(bad)}")
  for b in bad:
    print(f"  {b['path']}: {b['reason']}")


def _align(args) -> int:
  out = args.out if args.command == "align" else args.align_faces
  try:
    cli.require_dir(args.manual_dir, "--manual-dir")
    folder.require_folder(args.manual_dir, "--manual-dir")
    cli.require_writable(out, "--out" if args.command == "align" else "--align-faces")
    if args.command == "prepare" and args.source != "folder":
      raise cli.UsageError(f"--align-faces works on --source folder, not {args.source!r}")
  except cli.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return cli.EXIT_USAGE
  from gender_jax.faces import crops  # jax and the detector: only for `align`
  t0 = time.perf_counter()
  found = crops.align_folder(args.manual_dir, out, detector=getattr(args, "detector", "full"),
                             size=getattr(args, "size", None))
  print(f"aligned {found['aligned']} of {found['of']} photos in {time.perf_counter() - t0:.1f} s "
        f"→ {found['out']} ({found['size']} px); {found['missed']} left out, listed in "
        f"{os.path.join(found['out'], crops.NO_FACE_LIST)}")
  return 0


def main(argv=None) -> int:
  parser = cli.Parser("gender_jax.data", __doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("prepare", help="prepare a source into array_record")
  p.add_argument("--source", required=True, choices=sorted(prepare.KINDS),
                 help="dataset kind (example: --source folder)")
  p.add_argument("--manual-dir", help="the dataset's own files, a male/ + female/ folder for "
                 "--source folder (example: --manual-dir ~/photos)")
  p.add_argument("--data-dir", default=None,
                 help=f"where prepared datasets live (default {prepare.default_data_dir()}; "
                      "example: --data-dir /data/prepared)")
  p.add_argument("--version", default=None,
                 help="RAP only: v1 or v2 (default v2; example: --version v1)")
  p.add_argument("--store-size", type=int, default=None,
                 help="cap the stored images' shorter side in pixels, aspect kept (0: as they "
                      "are; default ~1.15x the largest --image-size, else 0; example: "
                      "--store-size 258). Train with the same --config.data.store_size")
  p.add_argument("--image-size", default="",
                 help="training sizes this copy is for (example: --image-size 112,224)")
  p.add_argument("--overwrite", action="store_true",
                 help="prepare again even if prepared (example: --overwrite)")
  p.add_argument("--strict", action="store_true",
                 help="stop at the first unusable annotation line instead of skipping and "
                      "listing it (example: --strict)")
  p.add_argument("--json", action="store_true",
                 help="print the summary as JSON (example: --json)")
  p.add_argument("--align-faces", dest="align_faces", metavar="DIR",
                 help="--source folder of photos of people: align each photo's face into DIR "
                      "first, then prepare DIR (example: --align-faces ~/photos_aligned)")
  p.add_argument("--debug", action="store_true", help="show tracebacks (example: --debug)")
  a = sub.add_parser("align", help="photos of people → aligned face crops (a folder source)")
  a.add_argument("--manual-dir", required=True,
                 help="male/ + female/ folder of photos (example: --manual-dir ~/photos)")
  a.add_argument("--out", required=True, help="where the crops go (example: --out ~/crops)")
  a.add_argument("--detector", default="full", choices=("full", "short"),
                 help="BlazeFace model (default full: small faces too)")
  a.add_argument("--size", type=int, default=None,
                 help="side of the crops in pixels (default 200, UTKFace's; example: --size 128)")
  a.add_argument("--debug", action="store_true", help="show tracebacks (example: --debug)")
  args = parser.parse_args(argv)
  if args.command == "align" or getattr(args, "align_faces", None):
    code = _align(args)
    if args.command == "align" or code:
      return code
    args.manual_dir = args.align_faces
  try:  # before any work: the files are there, the output can be written
    if args.manual_dir:
      cli.require_dir(args.manual_dir, "--manual-dir")
    if args.source == "folder" and args.manual_dir:
      folder.require_folder(args.manual_dir, "--manual-dir")
    if args.data_dir:
      cli.require_writable(args.data_dir, "--data-dir")
    store = args.store_size
    if store is None:
      try:
        sizes = [int(s) for s in args.image_size.split(",") if s.strip()]
      except ValueError:
        raise cli.UsageError(f"--image-size {args.image_size!r}: expected pixel sizes "
                                "separated by commas (example: --image-size 112,224)") from None
      store = prepare.store_size_for(sizes) if sizes else 0
    if store < 0:
      raise cli.UsageError(f"--store-size {store}: expected 0 (keep the images as they are) "
                              "or a side in pixels")
  except cli.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return cli.EXIT_USAGE
  logging.basicConfig(level=logging.WARNING)
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  t0 = time.perf_counter()
  try:
    b = prepare.prepare(args.source, args.manual_dir, args.data_dir, version=args.version,
                        overwrite=args.overwrite, store_size=store, strict=args.strict)
  except (cli.UsageError, schema.AnnotationError, OSError, ValueError) as e:
    if args.debug or cli.debug_requested():
      raise
    print(f"error: {cli.one_line(e)}", file=sys.stderr)
    return cli.EXIT_USAGE
  summary = prepare.summary(b)
  if args.json:
    print(json.dumps(dict(summary, seconds=time.perf_counter() - t0), indent=2))
  else:
    _print_summary(summary, time.perf_counter() - t0)
  return 0


if __name__ == "__main__":
  sys.exit(main())
