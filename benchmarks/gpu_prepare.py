"""Makes what the GPU run carries, here, before it: the wheels and the prepared data.

  python benchmarks/gpu_prepare.py                       # → .gpu/whl, .gpu/data, sizes
  python benchmarks/gpu_prepare.py --no-wheels --folder DIR --out DIR   # data only

wheels  benchmarks/gpu_wheels.txt's packages as cp312 manylinux x86_64 wheels (pip download,
        no dependencies: the list names each one the host lacks), into OUT/whl
data    --folder prepared with the project's folder builder (JPEG array_record, TFDS here),
        its prepared folder copied to OUT/data/prepared (the run reads it without TFDS), and
        --crops of its images copied to OUT/data/crops for the photo scenes

Then it adds up what travels: the repository's tracked files plus OUT, against the 64 MiB a
run may carry, and writes OUT/manifest.json. `.gpu/` is ignored by git; name it in the
run's carry list.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

LIMIT = 64 * 2**20  # what one run may carry, the tree included
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default=os.path.join(ROOT, ".gpu"))
  p.add_argument("--folder", default=os.path.join(os.path.dirname(ROOT), "shared", "data",
                                                  "utkface-2k"),
                 help="image folder (male/, female/, labels.csv) to prepare and carry")
  p.add_argument("--crops", type=int, default=200, help="images copied for the photo scenes")
  p.add_argument("--no-wheels", dest="wheels", action="store_false")
  p.add_argument("--python-version", default="3.12", help="the GPU host's Python")
  args = p.parse_args(argv)
  if not os.path.isdir(args.folder):
    p.error(f"--folder {args.folder}: not a directory")
  return args


def wheel_list(path: str = os.path.join(HERE, "gpu_wheels.txt")) -> list[dict]:
  """[{name, version, bytes}] from the carry list (`name==version bytes why`)."""
  out = []
  with open(path) as f:
    for line in f:
      line = line.split("#", 1)[0].strip()
      if line:
        spec, size, *_ = line.split()
        name, _, version = spec.partition("==")
        out.append(dict(name=name, version=version, bytes=int(size)))
  return out


def _normal(name: str) -> str:
  return name.lower().replace("-", "_").replace(".", "_")


def fetch_wheels(out: str, python_version: str) -> list[dict]:
  os.makedirs(out, exist_ok=True)
  rows = []
  for w in wheel_list():
    have = [p for p in glob.glob(os.path.join(out, "*.whl"))
            if _normal(os.path.basename(p).split("-")[0]) == _normal(w["name"])]
    for p in have:  # one version of each: two would stop the whole install there
      if f"-{w['version']}-" not in os.path.basename(p):
        os.remove(p)
    if not any(f"-{w['version']}-" in os.path.basename(p) for p in have):
      cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--python-version", python_version, "--implementation", "cp",
             *[a for plat in PLATFORMS for a in ("--platform", plat)],
             "-d", out, f"{w['name']}=={w['version']}"]
      subprocess.run(cmd, check=True)
    (path,) = [p for p in glob.glob(os.path.join(out, "*.whl"))
               if _normal(os.path.basename(p).split("-")[0]) == _normal(w["name"])]
    size = os.path.getsize(path)
    if size != w["bytes"]:
      print(f"note: {os.path.basename(path)} is {size} bytes, the list says {w['bytes']}")
    rows.append(dict(w, file=os.path.basename(path), bytes=size))
  return rows


def prepare_data(folder: str, out: str, crops: int) -> dict:
  """The prepared copy and the crops, replacing any earlier ones under OUT."""
  from gender_jax.data import prepare
  with tempfile.TemporaryDirectory(prefix="gpu_prepare_") as tmp:
    b = prepare.prepare("folder", folder, tmp)
    target = os.path.join(out, "prepared")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(os.fspath(b.data_path), target)
  images = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs
                  if f.lower().endswith((".jpg", ".jpeg")))
  # Every n-th image, so both classes and many ages are among the crops.
  step = max(1, len(images) // max(crops, 1))
  target_crops = os.path.join(out, "crops")
  shutil.rmtree(target_crops, ignore_errors=True)
  os.makedirs(target_crops)
  for path in images[::step][:crops]:
    name = os.path.relpath(path, folder).replace(os.sep, "_")  # male/1.jpg, female/1.jpg
    shutil.copy(path, os.path.join(target_crops, name))
  return dict(prepared=target, crops=target_crops, num_crops=len(os.listdir(target_crops)))


def tree_bytes() -> int:
  """The tracked files' bytes: the working tree that travels with every run."""
  files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout.split(b"\0")
  return sum(os.path.getsize(os.path.join(ROOT, f.decode())) for f in files
             if f and os.path.isfile(os.path.join(ROOT, f.decode())))


def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main(argv=None) -> dict:
  args = parse_args(argv)
  out = os.path.abspath(args.out)
  wheels = fetch_wheels(os.path.join(out, "whl"), args.python_version) if args.wheels else []
  data = prepare_data(args.folder, os.path.join(out, "data"), args.crops)
  sizes = dict(tree=tree_bytes(), wheels=sum(w["bytes"] for w in wheels),
               data=folder_bytes(os.path.join(out, "data")))
  sizes["total"] = sum(sizes.values())
  manifest = dict(wheels=wheels, data=data, sizes=sizes, limit=LIMIT)
  with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
  for w in wheels:
    print(f"{w['file']:<80} {w['bytes'] / 2**20:6.2f} MiB")
  for k, v in sizes.items():
    print(f"{k:<80} {v / 2**20:6.2f} MiB")
  if sizes["total"] > LIMIT:
    print(f"error: {sizes['total'] / 2**20:.1f} MiB would travel, over the {LIMIT // 2**20} MiB "
          "a run carries; pass fewer --crops or a smaller --folder", file=sys.stderr)
    sys.exit(2)
  return manifest


if __name__ == "__main__":
  main()
