"""Raw photos → aligned training crops: each photo's most confident face, warped onto a
template (by default the UTKFace framing), written as a male/ female/ folder with its
labels.csv, plus a list of the photos where no face was found. The result is a folder source
like any other (`python -m gender_jax.data align`, or `prepare --align-faces DIR`)."""
from __future__ import annotations

import csv
import os
from typing import Any

import jax
import numpy as np
from PIL import Image

from gender_jax.faces import align as align_lib
from gender_jax.faces import refine as refine_lib
from gender_jax.faces.blazeface import create_detector
from gender_jax.faces.detect import CANVAS, Detector
from gender_jax.faces.letterbox import letterbox, letterbox_fit
from gender_jax.data import folder
from gender_jax.data import schema
from gender_jax.data.preprocess import ImageError, decode
from gender_jax.data.preprocess import resize

NO_FACE_LIST = "no_face.txt"


def crop_path(key: str, label: int) -> str:
  """Where the crop of source file `key` goes in the aligned folder: `LABEL/KEY_FLAT.jpg`."""
  return os.path.join(schema.CLASS_NAMES[label],
                      os.path.splitext(key.replace(os.sep, "_"))[0] + ".jpg")


def align_folder(src: str, dst: str, *, detector: str = "full", template: dict | None = None,
                 size: int | None = None, batch_size: int = 16, quality: int = 95,
                 keep_missed: bool = False) -> dict[str, Any]:
  """Aligns every image of the class folder `src` into `dst`; returns counts and misses.

  `size`: the side of the written crops (default: the template's width). Subgroup columns of
  `src/labels.csv` are carried over; a photo with no face, or unreadable, is listed in
  `dst/no_face.txt` with the reason and left out; with `keep_missed` (`src` already tight
  face crops, as UTKFace) a readable one is written as it is instead (`keep_missed_photos`).
  """
  template = align_lib.check_template(template or align_lib.UTKFACE_TEMPLATE)
  side = int(size or template["size"][0])
  points = align_lib.template_points(template, side)
  entries, _ = folder.read_entries(src)
  det = Detector(detector, max_faces=1, batch_size=batch_size)
  # The predict pipeline's second look at small faces (refine.py), so these crops are what
  # `--faces detect` would classify.
  second = create_detector(refine_lib.KIND)

  @jax.jit
  def warp(canvas, kp, eyes):
    kp = refine_lib.refine(second, canvas[None], kp[None, None], np.ones((1, 1), bool),
                           eyes[None, None], template)
    return align_lib.align(canvas, kp[0, 0], points, (side, side))
  os.makedirs(dst, exist_ok=True)
  rows, missed = [], []
  columns = sorted({k for e in entries for k in e.subgroups})
  for start in range(0, len(entries), batch_size):
    chunk, images = [], []
    for e in entries[start:start + batch_size]:
      try:
        with open(e.path, "rb") as f:
          images.append(decode(f.read()))
        chunk.append(e)
      except (OSError, ImageError) as err:
        missed.append((e.key, f"unreadable: {err}"))
    for e, image, faces in zip(chunk, images, det(images) if images else []):
      if not faces:
        missed.append((e.key, "no face found"))
        continue
      # Warp from a fixed-size canvas (one compiled program), not from each photo's own size.
      lb = letterbox(image, CANVAS)
      keypoints = np.asarray(faces[0]["keypoints"])
      eyes = refine_lib.eye_distance(keypoints) * letterbox_fit(image.shape, det.size)
      keypoints = keypoints * np.asarray(lb.scale) + np.asarray(lb.offset)
      crop = np.asarray(warp(lb.image, keypoints.astype(np.float32), np.float32(eyes)))
      label = schema.CLASS_NAMES[e.label]
      rel = crop_path(e.key, e.label)
      os.makedirs(os.path.join(dst, label), exist_ok=True)
      Image.fromarray(crop).save(os.path.join(dst, rel), quality=quality)
      rows.append([rel, label] + [e.subgroups.get(c, "") for c in columns] +
                  [f"{faces[0]['score']:.3f}"])
  with open(os.path.join(dst, "labels.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["path", "label", *columns, "face_score"])
    writer.writerows(rows)
  with open(os.path.join(dst, NO_FACE_LIST), "w") as f:
    f.write("# photos left out: path<TAB>reason\n")
    f.writelines(f"{k}\t{r}\n" for k, r in missed)
  kept = keep_missed_photos(src, dst, size=side, quality=quality) if keep_missed else 0
  return dict(aligned=len(rows), missed=len(missed), of=len(entries), out=os.path.abspath(dst),
              size=side, kept=kept)


def keep_missed_photos(src: str, dst: str, *, size: int | None = None, quality: int = 95) -> int:
  """Writes the photos `dst/no_face.txt` lists as found without a face, each as it is
  (squash-resized to the crops' side), into `dst` and its labels.csv (empty face_score);
  returns how many were added. For a source of tight face crops (UTKFace): the aligned folder
  then lists the same photos as `src`, so the folder source's seeded split deals both alike
  (the split depends on the whole listing: one photo left out moves others between splits)
  and its test split holds the same photos. Photos already in labels.csv are skipped."""
  with open(os.path.join(dst, NO_FACE_LIST)) as f:
    missed = {line.split("\t")[0] for line in f
              if not line.startswith("#") and "\tno face found" in line}
  with open(os.path.join(dst, "labels.csv"), newline="") as f:
    reader = csv.reader(f)
    header = next(reader)
    have = {row[0] for row in reader}
  entries, _ = folder.read_entries(src)
  added = []
  for e in entries:
    rel = crop_path(e.key, e.label)
    if e.key not in missed or rel in have:
      continue
    try:
      with open(e.path, "rb") as f:
        image = decode(f.read())
    except (OSError, ImageError):
      continue
    if size is None:  # the aligned crops' side (preprocess.decode: the one image opener)
      if have:
        with open(os.path.join(dst, next(iter(have))), "rb") as f:
          size = decode(f.read()).shape[1]
      else:
        size = image.shape[0]
    os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
    Image.fromarray(resize(image, size)).save(os.path.join(dst, rel), quality=quality)
    fields = dict(e.subgroups, path=rel, label=rel.split(os.sep)[0], face_score="")
    added.append([fields.get(h, "") for h in header])
  with open(os.path.join(dst, "labels.csv"), "a", newline="") as f:
    csv.writer(f).writerows(added)
  return len(added)
