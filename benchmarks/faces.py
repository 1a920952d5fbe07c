"""Faces: BlazeFace recall and speed, the fused detect→align→classify program, in-the-wild accuracy.

  python benchmarks/faces.py --parts recall,fused               # synthetic group photos
  python benchmarks/faces.py --parts speed --one-core           # ms per photo, one CPU core
  python benchmarks/faces.py --parts accuracy --bundle runs/utk/bundle \
      --data UTKFACE_DIR --splits runs/utk/splits.csv           # --faces off vs detect
  python benchmarks/faces.py --parts gap --bundle runs/utk/bundle --data UTKFACE_DIR \
      --splits runs/utk/splits.csv --limit 800                  # where the photos' points go

recall: group photos (640x480, 2–5 UTKFace crops pasted with 40–80 px sides, ±10°, on
noise / gradient / stripes / blurred-photo backgrounds): the share of pasted faces found
(a box centred on the crop, 0.3–1.2 of its side wide), false detections and ms per photo;
then the same photos at 3x (1920x1440, faces 120–240 px). `KIND+tiles` also looks at a
photo in overlapping windows (faces/tiles.py).
speed: one photo (batch 1, already letterboxed on the device) through detector + decoding +
NMS; median ms. `--one-core` pins the process to CPU 0 (sched_setaffinity, as `taskset -c 0`)
and gives XLA one thread (--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1).
fused: the photo path end to end (host letterboxing, detector and NMS, the faces found
refined and warped from a 640 px canvas, the Predictor): photos/s on group photos of 3.
accuracy: each TEST-split crop pasted whole (feathered border) as a person in a 250x250 photo (0.3–0.6 of the side, random place, ±8°, a texture or a
blurred corner of another test image behind): balanced accuracy with the photo classified
whole (--faces off) and with the best-scoring detected face aligned and classified (--faces
detect; no face found counts as wrong), beside the crops themselves. `--refine both` runs
fused and accuracy with and without the second look at the keypoints (refine.py). gap: where
the crops lose accuracy on the way to photos, one change at a time (the crops' pixels alone,
their own alignment, a plain paste on grey, a larger detector input, the second look).
auto: `--faces auto` against `detect` on the crops and on portraits framed a little wider.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time

if "--one-core" in sys.argv:  # before JAX starts: XLA reads its flags once
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                             "false intra_op_parallelism_threads=1").strip()
  os.sched_setaffinity(0, {0})

import common  # noqa: E402,I001 — sets the environment before JAX starts
import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tests.fixtures import scenes  # noqa: E402
from gender_jax.faces.letterbox import letterbox  # noqa: E402
from gender_jax.inference.photos import FacePipeline  # noqa: E402
from gender_jax.faces.detect import Detector

COLUMNS = [("part", "part", ""), ("detector", "detector", ""), ("metric", "metric", ""),
           ("value", "value", ".4g"), ("n", "n", ""), ("note", "note", "")]


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--parts", default="recall,speed,fused",
                 help="comma-separated: recall, speed, fused, accuracy, gap, auto")
  p.add_argument("--detectors", default="short,full,full@384,full+tiles",
                 help="KIND[@SIDE][+tiles]: full range at a larger input side, or a large photo "
                      "also looked at in overlapping windows (+tiles), finds smaller faces")
  p.add_argument("--data", default=str(common.DEFAULT_FOLDER),
                 help="UTKFace folder (male/, female/, labels.csv)")
  p.add_argument("--splits", help="splits.csv of the bundle's run (accuracy, gap: its --split rows)")
  p.add_argument("--bundle", help="inference bundle (fused: a random one if none, "
                                   "--random-bundle)")
  p.add_argument("--random-bundle", default="resnet18@64",
                 help="ARCH@SIZE of the random bundle fused runs without --bundle: resnet18@64 "
                      "(width 16), dlib_resnet@150 (the utkface_dlib recipe's shape)")
  p.add_argument("--photos", type=int, default=40, help="group photos for recall")
  p.add_argument("--limit", type=int, help="at most this many images (accuracy, gap, auto)")
  p.add_argument("--split", default="test", help="accuracy, gap, auto: the split's rows of --splits")
  p.add_argument("--tta", default="none", choices=("none", "flip"),
                 help="accuracy: flip TTA for the crops and the aligned faces alike")
  p.add_argument("--refine", default="on", choices=("on", "off", "both"),
                 help="fused, accuracy: the second look at each face's keypoints (refine.py)")
  p.add_argument("--steps", type=int, default=30, help="timed calls (speed, fused)")
  p.add_argument("--batch-size", type=int, default=32, help="fused program batch")
  p.add_argument("--one-core", action="store_true", help="pin to CPU 0, one XLA thread")
  p.add_argument("--json", help="write the results here")
  return p.parse_args(argv)


def load_crops(folder, n=None, seed=0):
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                 if f.lower().endswith((".jpg", ".jpeg", ".png")))
  if n is not None:
    files = [files[i] for i in np.random.default_rng(seed).choice(len(files), n, replace=False)]
  return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def split_kind(name):
  """KIND[@SIDE][+tiles] → (kind, side or None, tiles mode)."""
  name, plus, _ = name.partition("+tiles")
  kind, _, side = name.partition("@")
  return kind, int(side) if side else None, "auto" if plus else "off"


def recall(args, kinds):
  rng = np.random.default_rng(0)
  crops = load_crops(args.data, 6 * args.photos)
  photos = [scenes.group_photo(rng, crops[6 * k:6 * k + int(rng.integers(2, 6))],
                                  size=(640, 480), sides=(40, 80), others=crops)
            for k in range(args.photos)]
  rows = []
  # The same photos at 3x (1920x1440, faces 120-240 px): a phone's group photo, downsized.
  for scale in (1, 3):
    images = [p.image if scale == 1 else np.asarray(Image.fromarray(p.image).resize(
        (640 * scale, 480 * scale), Image.BILINEAR)) for p in photos]
    for kind in kinds:
      name, side, tiles = split_kind(kind)
      detector = Detector(name, side=side, tiles=tiles, batch_size=8)
      detector(images[:8])  # compile
      start = time.perf_counter()
      found = detector(images)
      ms = 1000 * (time.perf_counter() - start) / len(images)
      hits = [scenes.match(p.squares * scale, np.asarray([f["box"] for f in fs]).reshape(-1, 4))
              for p, fs in zip(photos, found)]
      n_faces = sum(len(h) for h in hits)
      false = sum(max(0, len(fs) - int(h.sum())) for fs, h in zip(found, hits))
      size = f"{640 * scale}x{480 * scale}"
      rows.append(dict(part="recall", detector=kind, metric=f"recall {40 * scale}-{80 * scale} px",
                       value=sum(h.sum() for h in hits) / n_faces, n=n_faces,
                       note=f"{args.photos} photos {size}"))
      rows.append(dict(part="recall", detector=kind, metric="false per photo",
                       value=false / len(photos), n=len(photos), note=size))
      rows.append(dict(part="recall", detector=kind, metric="ms per photo (batch 8)", value=ms,
                       n=len(photos), note=f"{size}, all cores"))
  return rows


def speed(args, kinds):
  rng = np.random.default_rng(1)
  crops = load_crops(args.data, 8)
  photo = scenes.group_photo(rng, crops[:3], size=(640, 480), sides=(60, 100), others=crops)
  rows = []
  for kind in kinds:
    det = Detector(*split_kind(kind)[:1], side=split_kind(kind)[1], max_faces=8, batch_size=1)
    batch = jax.device_put(letterbox(photo.image, det.size).image[None])
    jax.block_until_ready(det._run(det._state, batch))
    times = []
    for _ in range(args.steps):
      start = time.perf_counter()
      jax.block_until_ready(det._run(det._state, batch))
      times.append(time.perf_counter() - start)
    host = []
    for _ in range(10):
      start = time.perf_counter()
      letterbox(photo.image, det.size)
      host.append(time.perf_counter() - start)
    note = "1 core, 1 XLA thread" if args.one_core else f"{len(os.sched_getaffinity(0))} cores"
    rows.append(dict(part="speed", detector=kind, metric="ms / photo (device)",
                     value=1e3 * float(np.median(times)), n=args.steps, note=note))
    rows.append(dict(part="speed", detector=kind, metric="ms / photo (host letterbox)",
                     value=1e3 * float(np.median(host)), n=10, note="640x480 → side"))
  return rows


def random_bundle(directory, spec: str = "resnet18@64"):
  """A bundle of random weights: ARCH@SIZE (resnet18 at width 16; dlib_resnet as the
  utkface_dlib recipe builds it, with its preprocessing)."""
  import ml_collections
  from flax import nnx
  from gender_jax.inference.bundle import save_bundle
  from gender_jax.data.preprocess import make_spec
  from gender_jax.models import create_model
  arch, _, size = spec.partition("@")
  cfg = dict(arch=arch, num_classes=2, compute_dtype="float32", dropout=0.0)
  preprocessing = "scratch"
  if arch == "resnet18":
    cfg["width"] = 16
  elif arch == "dlib_resnet":
    preprocessing = "dlib"  # what a bundle fine-tuned from the converted weights records
  model = create_model(ml_collections.ConfigDict(cfg), rngs=nnx.Rngs(0))
  save_bundle(directory, model, model_config=cfg,
              preprocessing=make_spec(int(size or 64), preprocessing))
  return directory


def variants(args, kinds):
  """(row label, detector kind, refine) for each detector, with and/or without the second look."""
  looks = {"on": (True,), "off": (False,), "both": (True, False)}[args.refine]
  return [(kind if refine else f"{kind}, 1 look", kind, refine) for kind in kinds
          for refine in looks]


def fused(args, kinds, bundle):
  """The photo path end to end: detection, the faces found warped, the Predictor."""
  rng = np.random.default_rng(2)
  crops = load_crops(args.data, 6 * args.batch_size)
  photos = [scenes.group_photo(rng, crops[6 * k:6 * k + 3], size=(640, 480), sides=(60, 120),
                                  others=crops).image for k in range(args.batch_size)]
  rows = []
  for label, kind, refine in variants(args, kinds):
    name, side, tiles = split_kind(kind)
    pipe = FacePipeline(bundle, detector=name, detector_side=side, tiles=tiles,
                        batch_size=args.batch_size, refine=refine, faces="detect")
    start = time.perf_counter()
    pipe.warm()
    compile_s = time.perf_counter() - start
    pipe(photos)
    steps = max(3, args.steps // 10)
    start = time.perf_counter()
    for _ in range(steps):
      found = pipe(photos)
    rate = steps * len(photos) / (time.perf_counter() - start)
    faces = sum(len(f) for f in found)
    rows.append(dict(part="fused", detector=label, metric="photos/s (host and device)",
                     value=rate, n=steps,
                     note=f"{len(photos)} photos a call, {faces} faces found, "
                          f"{pipe.bundle.image_size} px classifier, compile {compile_s:.0f} s"))
  return rows


SMALL_FACE = 112  # px: the in-the-wild photos' faces are 75-150 px wide


def balanced_accuracy(labels, predicted):
  labels, predicted = np.asarray(labels), np.asarray(predicted)
  return float(np.mean([(predicted[labels == c] == c).mean() for c in np.unique(labels)]))


def _top_class(answer, names) -> int:
  """The answer's most probable class: a bundle with an abstain threshold answers
  "uncertain" below it, which balanced accuracy would count as an error."""
  if "error" in answer:
    return -1
  return int(np.argmax([answer[f"p_{name}"] for name in names]))


def split_crops(args, bundle, part):
  """The bundle and the --split rows of its run (the first --limit): crops and labels."""
  from gender_jax.inference.bundle import Bundle
  if not args.splits:
    raise SystemExit(f"--parts {part} needs --splits SPLITS_CSV (and --bundle, --data)")
  with open(args.splits) as f:
    rows = [r for r in csv.DictReader(f) if r["split"] == args.split]
  rows = rows[:args.limit] if args.limit else rows
  bundle = Bundle(bundle)
  names = list(bundle.class_names)
  crops = [np.asarray(Image.open(os.path.join(args.data, r["path"])).convert("RGB")) for r in rows]
  labels = [names.index(os.path.dirname(r["path"])) if r["label"] not in ("0", "1")
            else int(r["label"]) for r in rows]
  return bundle, names, crops, labels


def accuracy(args, kinds, bundle):
  from gender_jax.inference.predictor import Predictor
  bundle, names, crops, labels = split_crops(args, bundle, "accuracy")
  rng = np.random.default_rng(3)
  scenes_ = [scenes.in_the_wild(rng, c, crops) for c in crops]
  photos = [p.image for p in scenes_]
  # The pasted face's side in the 250-px photo: small faces (75-112 px) lose the most.
  small = np.asarray([p.squares[0, 2] - p.squares[0, 0] < SMALL_FACE for p in scenes_])
  predictor = Predictor(bundle, batch_size=64, tta=args.tta)
  off = [_top_class(a, names) for a in predictor.predict(photos)]
  ref = [_top_class(a, names) for a in predictor.predict(crops)]
  rows = [dict(part="accuracy", detector="—", metric="balanced acc, crops", n=len(crops),
               value=balanced_accuracy(labels, ref), note="the test crops themselves"),
          dict(part="accuracy", detector="—", metric="balanced acc, --faces off", n=len(crops),
               value=balanced_accuracy(labels, off), note="250x250 photo, face 0.3-0.6")]
  for label, kind, refine in variants(args, kinds):
    name, side, tiles = split_kind(kind)
    pipe = FacePipeline(bundle, detector=name, detector_side=side, tiles=tiles,
                        max_faces=4, batch_size=16, tta=args.tta, refine=refine)
    got, found = [], 0
    for faces in pipe(photos):
      best = max(faces, key=lambda f: f["score"]) if faces else None
      found += best is not None
      got.append(_top_class(best, names) if best else -1)
    rows.append(dict(part="accuracy", detector=label, metric="balanced acc, --faces detect",
                     value=balanced_accuracy(labels, got), n=len(crops),
                     note=f"face found in {found / len(crops):.1%}; none = wrong"))
    for name, part in ((f"faces < {SMALL_FACE} px", small), (f"faces ≥ {SMALL_FACE} px", ~small)):
      rows.append(dict(part="accuracy", detector=label, metric=f"  {name}", n=int(part.sum()),
                       value=balanced_accuracy(np.asarray(labels)[part], np.asarray(got)[part]),
                       note="of the same photos"))
  return rows


def _on_grey(rng, crop, side=250, scale=(0.3, 0.6)):
  """The crop pasted whole on a grey photo at 0.3-0.6 of its side: no rotation, no border."""
  canvas = Image.new("RGB", (side, side), (128, 128, 128))
  s = int(round(side * rng.uniform(*scale)))
  x0, y0 = int(rng.integers(0, side - s + 1)), int(rng.integers(0, side - s + 1))
  canvas.paste(Image.fromarray(crop).resize((s, s), Image.BILINEAR), (x0, y0))
  return np.asarray(canvas)


def _shrunk(rng, crop, side=250, scale=(0.3, 0.6)):
  """The crop at the size `_on_grey` would paste it, and back: its pixels, no photo."""
  s = int(round(side * rng.uniform(*scale)))
  small = Image.fromarray(crop).resize((s, s), Image.BILINEAR)
  return np.asarray(small.resize(crop.shape[1::-1], Image.BILINEAR))


def gap(args, bundle):
  """Where crops lose accuracy on the way to photos, one change at a time (no TTA, full
  range): the pixels alone, the crops' own alignment, a plain paste, and what wins it back."""
  from gender_jax.inference.predictor import Predictor
  bundle, names, crops, labels = split_crops(args, bundle, "gap")
  predictor = Predictor(bundle, batch_size=64)

  def score(answers):
    return balanced_accuracy(labels, [_top_class(a, names) if a else -1 for a in answers])

  def detect(photos, refine=False, **kw):
    pipe = FacePipeline(bundle, detector="full", max_faces=4, batch_size=16, refine=refine, **kw)
    return score([max(fs, key=lambda f: f["score"]) if fs else None for fs in pipe(photos)])

  def draw(make):  # each variant draws its photos from the same seed
    rng = np.random.default_rng(3)
    return [make(rng, c) for c in crops]
  shrunk = draw(_shrunk)
  grey = draw(_on_grey)
  wild = draw(lambda rng, c: scenes.in_the_wild(rng, c, crops).image)
  cases = [("crops themselves, no detector", lambda: score(predictor.predict(crops))),
           ("shrunk to the pasted size and back", lambda: score(predictor.predict(shrunk))),
           ("crops through detect → align", lambda: detect(crops)),
           ("on grey at 0.3-0.6 of 250 px", lambda: detect(grey)),
           ("  … letterboxed without margin", lambda: detect(grey, margin=0.0)),
           ("  … full range at 384 px", lambda: detect(grey, detector_side=384)),
           ("  … second look", lambda: detect(grey, refine=True)),
           ("in the wild (as --parts accuracy)", lambda: detect(wild)),
           ("  … second look", lambda: detect(wild, refine=True))]
  return [dict(part="gap", detector="full", metric=name, value=fn(), n=len(crops),
               note=f"{args.split} split, no TTA") for name, fn in cases]


def auto(args, bundle):
  """`--faces auto` against `detect`: on the crops themselves (classified whole where framed
  like the template) and on 250-px portraits framed a little wider than the crops (the face at
  0.7-0.95 of a crop's framing), where classifying whole would be a zoomed-out crop."""
  bundle, names, crops, labels = split_crops(args, bundle, "auto")
  rng = np.random.default_rng(7)
  portraits = [scenes.in_the_wild(rng, c, crops, scale=(0.7, 0.95)).image for c in crops]
  pipe = FacePipeline(bundle, detector="full", max_faces=4, batch_size=16, faces="auto",
                      tta=args.tta)
  rows = []
  for name, photos in (("crops", crops), ("portraits 0.7-0.95", portraits)):
    for mode in ("auto", "detect"):
      got, whole = [], 0
      for faces in pipe(photos, faces=mode):
        best = max(faces, key=lambda f: f["score"]) if faces else None
        whole += bool(best) and not best["aligned"]
        got.append(_top_class(best, names) if best else -1)
      rows.append(dict(part="auto", detector="full", metric=f"balanced acc, {name}, --faces {mode}",
                       value=balanced_accuracy(labels, got), n=len(photos),
                       note=f"{whole} classified whole"))
  return rows


def main(argv=None):
  args = parse_args(argv)
  parts, kinds = args.parts.split(","), args.detectors.split(",")
  info = common.device_info(with_torch=False)
  info["cpu_affinity"] = sorted(os.sched_getaffinity(0))
  bundle = args.bundle
  if not bundle and ("fused" in parts):
    import tempfile
    bundle = random_bundle(os.path.join(tempfile.mkdtemp(), "bundle"), args.random_bundle)
  rows = []
  for part, fn in (("recall", lambda: recall(args, kinds)), ("speed", lambda: speed(args, kinds)),
                   ("fused", lambda: fused(args, kinds, bundle)),
                   ("accuracy", lambda: accuracy(args, kinds, bundle)),
                   ("gap", lambda: gap(args, bundle)), ("auto", lambda: auto(args, bundle))):
    if part in parts:
      new = fn()
      rows += new
      print(common.format_table(new, COLUMNS).split("\n", 2)[-1], flush=True)
  return common.report("faces", rows, COLUMNS, info, args)


if __name__ == "__main__":
  main()
