"""Batch prediction: files and folders → CSV, and the same as a library call.

  python -m gender_jax.predict --bundle RUN/bundle PATH... --out preds.csv [--sort-into DIR]

Columns: path, label (female | male | uncertain | error), p_female, p_male, abstained, error.
A file that cannot be read or decoded gets label "error" and the reason; the rest go on.
The model is jitted once per batch size: the last batch is padded, never recompiled.
`--sort-into DIR` copies each input into DIR/male, DIR/female or DIR/uncertain for review.

Faces (`--faces`, default auto): photos go through BlazeFace, and every face found is aligned
onto the bundle's face template and classified by the same Predictor whole crops use
(`gender_jax.inference.photos`); the CSV gets one row per face, numbered left to right, with
its detector score, box (clipped to the photo) and six keypoints in the photo's pixels. A
photo without a face gets one row with label "no_face". `auto` classifies a photo that already
is one face crop framed like the training crops (exactly one face, its eyes and mouth where
the bundle's template puts them, within 12% of scale) whole, as the training crops were;
`detect` always classifies the aligned face; `off` classifies every image whole, one row
each, with the columns above only. A bundle trained on person crops alone (its `inputs`)
takes `auto` as `off`; one trained on faces and persons answers an image without a face
whole instead of "no_face". `--save-crops DIR` writes the aligned faces as PNG.

Library use: gender_jax.inference.predictor.Predictor (crops),
gender_jax.inference.photos.classify_photos (photos of people).
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import shutil
import sys
from typing import Any, Iterable, Sequence

from gender_jax.data.preprocess import ImageError
from gender_jax.inference.predictor import to_array

CSV_COLUMNS = ("path", "label", "p_female", "p_male", "abstained", "error")
FACE_MODES = ("auto", "detect", "off")
# Keypoints in the detector's order; right/left are the subject's (the right eye is image-left).
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")
FACE_COLUMNS = ("face", "face_score", "aligned", "box_x0", "box_y0", "box_x1", "box_y1",
                *(f"{k}_{a}" for k in KEYPOINT_NAMES for a in "xy"))


def face_rows(pipeline, paths: Sequence[str], save_crops: str | None = None,
              progress: bool = False, threads: int = 4,
              whole=None) -> Iterable[dict[str, Any]]:
  """Yields CSV rows (CSV_COLUMNS + FACE_COLUMNS) per face of each path, in order; a photo
  without a face gets one "no_face" row (or, given `whole`, the Predictor of a model that
  also saw person crops, its answer for the image whole), an unreadable one an "error" row.
  Photos are decoded on threads a chunk ahead; a chunk is as many photos as the classifier's
  largest batch."""
  from tqdm import tqdm

  def load(path):
    try:
      return to_array(path), None
    except ImageError as e:
      return None, str(e)
  blank = dict.fromkeys(FACE_COLUMNS, "")
  n = max(pipeline.batch_size, pipeline.predictor.batch_sizes[-1])
  chunks = [paths[s:s + n] for s in range(0, len(paths), n)]
  bar = tqdm(total=len(paths), unit="img", disable=not progress, file=sys.stderr,
             dynamic_ncols=True)
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    ahead = [pool.submit(load, p) for p in chunks[0]] if chunks else []
    for k, chunk in enumerate(chunks):
      start = k * n
      loaded = [f.result() for f in ahead]
      ahead = [pool.submit(load, p) for p in chunks[k + 1]] if k + 1 < len(chunks) else []
      ok = [i for i, (image, _) in enumerate(loaded) if image is not None]
      found = dict(zip(ok, pipeline([loaded[i][0] for i in ok], crops=bool(save_crops))
                       if ok else []))
      for i in pipeline.capped:
        print(f"warning: {chunk[ok[i]]}: {pipeline.max_faces} faces, every detection slot "
              "filled; more may be there: raise --max-faces", file=sys.stderr)
      faceless = [i for i in ok if not found[i]] if whole is not None else []
      answers = dict(zip(faceless, whole.predict([loaded[i][0] for i in faceless])
                         if faceless else []))
      for i, path in enumerate(chunk):
        if i not in found:
          yield dict(path=path, label="error", p_female="", p_male="", abstained="",
                     error=loaded[i][1], **blank)
          continue
        if not found[i] and whole is not None:
          answer = answers[i]
          yield dict(path=path, label=answer["label"], p_female=f"{answer['p_female']:.6f}",
                     p_male=f"{answer['p_male']:.6f}", abstained=int(answer["abstained"]),
                     error="", **blank)
        elif not found[i]:
          yield dict(path=path, label="no_face", p_female="", p_male="", abstained="",
                     error="", **blank)
        for face in found[i]:
          row = dict(path=path, label=face["label"], p_female=f"{face['p_female']:.6f}",
                     p_male=f"{face['p_male']:.6f}", abstained=int(face["abstained"]), error="",
                     face=face["index"], face_score=f"{face['score']:.4f}",
                     aligned=int(face["aligned"]),
                     **{f"box_{k}": f"{v:.1f}" for k, v in zip(("x0", "y0", "x1", "y1"),
                                                                face["box"])},
                     **{f"{name}_{a}": f"{v:.1f}" for name, xy in
                        zip(KEYPOINT_NAMES, face["keypoints"]) for a, v in zip("xy", xy)})
          if save_crops:
            stem = os.path.splitext(os.path.basename(path))[0]
            os.makedirs(save_crops, exist_ok=True)
            from PIL import Image
            Image.fromarray(face["crop"]).save(os.path.join(
                save_crops, f"{start + i:06d}_{stem}_face{face['index']}.png"))
          yield row
      bar.update(len(chunk))
  bar.close()


def list_files(paths: Iterable[str]) -> list[str]:
  """Files as given, plus every file under each folder (recursively, sorted) but hidden ones
  and labels.csv; a non-image among them becomes an "error" row."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      for dirpath, dirnames, filenames in os.walk(p):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # labels.csv is the folder layout's own annotation file, not an input.
        out += [os.path.join(dirpath, f) for f in sorted(filenames)
                if not f.startswith(".") and f != "labels.csv"]
    else:
      out.append(p)  # a missing file becomes an "error" row, not a crash
  return out


def sort_into(rows: Iterable[dict[str, Any]], directory: str) -> collections.Counter:
  """Copies each predicted input into directory/<label>/ (errors are left out)."""
  counts, taken, done = collections.Counter(), set(), set()
  for row in rows:
    # With faces, a photo has a row per face: copied once per label it got.
    if row["label"] == "error" or (row["path"], row["label"]) in done:
      continue
    done.add((row["path"], row["label"]))
    folder = os.path.join(directory, row["label"])
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(os.path.basename(row["path"]))
    target, k = os.path.join(folder, stem + ext), 1
    while target in taken or os.path.exists(target):  # same name from different folders
      target, k = os.path.join(folder, f"{stem}_{k}{ext}"), k + 1
    taken.add(target)
    shutil.copy2(row["path"], target)
    counts[row["label"]] += 1
  return counts
