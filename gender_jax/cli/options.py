"""argparse with the house policy, and the options several commands share.

Flags are spelled with dashes (`--batch-size`); the underscore forms (`--batch_size`) are
accepted as aliases. `bundles(args)` resolves --bundle / --workdir once for every command.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from gender_jax.cli.errors import UsageError, exit_now, require_dir, require_weights_dir

class Parser(argparse.ArgumentParser):
  """argparse with the house policy: a bad flag is one `error:` line (status 2) naming the
  command's --help, and underscore spellings of flags are aliases of the dashed ones."""

  def __init__(self, module: str | None = None, doc: str | None = None, **kw):
    if module:  # subcommands' parsers (add_subparsers) come with their own prog
      kw["prog"] = f"python -m {module}"
      kw.setdefault("description", (doc or "").split("\n\n")[0])
      kw.setdefault("epilog", "Add --debug (or GENDER_JAX_DEBUG=1) to see tracebacks.")
    super().__init__(**kw)

  def parse_args(self, args=None, namespace=None):
    args = sys.argv[1:] if args is None else list(args)
    return super().parse_args(dashed(args), namespace)

  def error(self, message):
    exit_now(f"error: {message} (see {self.prog} --help)")


def dashed(argv):
  """`--batch_size=8` → `--batch-size=8`: the underscore spellings are aliases."""
  out = []
  for arg in argv:
    if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
      flag, eq, value = arg.partition("=")
      arg = flag.replace("_", "-") + eq + value
    out.append(arg)
  return out


def add_bundle_options(parser, *, repeat: bool = False, required: bool = True) -> None:
  """--bundle DIR / --workdir RUN (whose bundle is RUN/bundle); `repeat` for several."""
  kw = dict(action="append", default=[]) if repeat else {}
  more = ", repeatable" if repeat else ""
  parser.add_argument("--bundle", help=f"inference bundle directory{more} "
                      "(example: --bundle runs/demo/bundle)", **kw)
  parser.add_argument("--workdir", help=f"training run{more}; its bundle is RUN/bundle "
                      "(example: --workdir runs/demo)", **kw)
  parser.set_defaults(_bundle_required=required)


def add_batch_size(parser, default: int = 64) -> None:
  parser.add_argument("--batch-size", type=int, default=default,
                      help=f"images per model call; the last batch is padded (default {default}; "
                           "example: --batch-size 256 on a GPU)")


def add_compute_dtype(parser) -> None:
  parser.add_argument("--compute-dtype", help="override the bundle's compute dtype "
                      "(example: --compute-dtype float32 for a bfloat16 bundle on CPU)")


FACE_MODES = ("auto", "detect", "off")
TILE_MODES = ("auto", "off")  # faces.tiles.TILES, kept here so this module imports nothing


def add_face_options(parser, *, default: str = "auto") -> None:
  """The photo options predict and evaluate share: --faces, --detector, --detector-side,
  --refine-keypoints, --tiles, --max-faces."""
  parser.add_argument("--faces", default=default, choices=FACE_MODES,
                      help="find faces and classify each, aligned (detect); the same but a "
                           "photo framed like the training crops is classified whole (auto); "
                           f"classify every image whole (off) (default {default}; example: "
                           "--faces detect)")
  parser.add_argument("--detector", default="full", choices=("full", "short"),
                      help="BlazeFace model: full range (faces up to ~5 m, default) or short "
                           "range (~2 m, faster) (example: --detector short)")
  parser.add_argument("--detector-side", type=int,
                      help="run the full-range detector at this input side, a multiple of 32, "
                           "instead of 192: finds faces half as large at 384, at 4x the cost "
                           "(example: --detector-side 384)")
  parser.add_argument("--refine-keypoints", default="on", choices=("on", "off"),
                      help="look again at each small face to place its keypoints before "
                           "aligning it (on, the default: +0.7 points on 250-px photos); off "
                           "is ~1.4x faster on CPU (example: --refine-keypoints off)")
  parser.add_argument("--tiles", default="auto", choices=TILE_MODES,
                      help="a photo at least 640 px long is also looked at in overlapping "
                           "windows, for the small faces of a group photo (auto, the default; "
                           "several times the detection work); off looks at it whole only "
                           "(example: --tiles off)")
  parser.add_argument("--max-faces", type=int, default=64,  # faces.detect.MAX_FACES
                      help="detection slots per photo (and per window of a large one); every "
                           "face found is answered, a photo that fills them all is named "
                           "(default 64; example: --max-faces 128)")


def face_options(args) -> dict:
  """The FacePipeline keywords the face options ask for (checked: --max-faces ≥ 1)."""
  if args.max_faces < 1:
    raise UsageError(f"--max-faces {args.max_faces}: must be ≥ 1")
  return dict(detector=args.detector, detector_side=args.detector_side, max_faces=args.max_faces,
              refine=args.refine_keypoints == "on", tiles=args.tiles)


def add_quiet(parser) -> None:
  parser.add_argument("--quiet", action="store_true", help="no progress bar (example: --quiet)")


def bundles(args) -> list[tuple[str, str | None]]:
  """(bundle dir, its run or None) for each --bundle / --workdir, each checked complete
  before any work; a run without a bundle says why in one line."""
  given = lambda v: (v if isinstance(v, list) else [v]) if v else []
  runs = [(b, None) for b in given(args.bundle)] + [
      (os.path.join(w, "bundle"), w) for w in given(args.workdir)]
  if not runs:
    if getattr(args, "_bundle_required", True):
      raise UsageError("give --bundle DIR or --workdir RUN (whose bundle is RUN/bundle)")
    return []
  if getattr(args, "batch_size", 1) is not None and getattr(args, "batch_size", 1) < 1:
    raise UsageError(f"--batch-size {args.batch_size}: must be ≥ 1")
  for bundle_dir, workdir in runs:
    if workdir is not None:
      require_dir(workdir, "--workdir")
      if not os.path.isdir(bundle_dir):
        checkpoints = os.path.join(workdir, "checkpoints")
        started = os.path.isdir(checkpoints) and os.listdir(checkpoints)
        raise UsageError(
            f"--workdir {workdir!r} has no bundle/: " +
            ("training has not finished (checkpoints only); rerun the train command to finish it"
             if started else "no checkpoints or bundle there; is it the train command's --workdir?"))
    require_weights_dir(bundle_dir, "--bundle")
  return runs


def bundle(args) -> str:
  """The one bundle of a command that takes one (--bundle or --workdir), checked."""
  [(bundle_dir, _)] = bundles(args) or [(None, None)]
  return bundle_dir


# ----------------------------------------------------------------------------- runs and bundles
def run_config(workdir: str | None, config_file: str | None = None):
  """The ml_collections config of a run (its config.json) or of a config file."""
  import ml_collections  # only here: the error-policy part of this module stays stdlib-only
  if config_file:
    spec = importlib.util.spec_from_file_location("config_module", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()
  if workdir and os.path.exists(os.path.join(workdir, "config.json")):
    with open(os.path.join(workdir, "config.json")) as f:
      return ml_collections.ConfigDict(json.load(f))
  raise UsageError("a configured source needs the run's config: give --workdir RUN "
                   "(with RUN/config.json) or --config FILE")


def add_overwrite(parser) -> None:
  parser.add_argument("--overwrite", action="store_true",
                      help="replace what an earlier run wrote at --out (example: --overwrite)")
