"""Data cleaning: duplicates, duplicates across splits, and likely label errors.

  python -m gender_jax.clean --data FOLDER --out DIR [--bundle RUN/bundle]

- exact duplicates: the same bytes (SHA-1 of the file, or of the pixels for arrays);
- near duplicates: 64-bit perceptual hashes (DCT of a 32x32 grey image) within
  `--near-distance` bits (default 3 of 64: on aligned faces 4 already pairs different people);
- cross-split: a duplicate group with members in different splits (a folder's split is the
  one the "folder" data source assigns; a configured source's is its own);
- likely label errors (confident learning, Northcutt et al. 2021): out-of-fold probabilities
  from a cheap classifier — L2 logistic regression over K folds on the bundle model's pooled
  last-stage features (`--bundle`), or on 16x16 colour thumbnails without one — flag an image
  when another class is at least as likely as that class's average self-confidence.

Writes DIR/issues.csv (one row per finding), DIR/summary.json, contact sheets
(DIR/contact_duplicates.png, DIR/contact_label_errors.png) and DIR/exclude.txt: one line per
image to leave out (duplicates, unreadable files; likely label errors only when asked, and
only from a model whose out-of-fold accuracy reaches LABEL_ERROR_FLOOR), `KEY<TAB>reason`, KEY being the record's path relative to its folder (the
`path` a data source reports); `#` lines are comments. Per duplicate group one image is kept
(the one in the evaluation split if any, so test sets stay fixed; else the first by key).
"""
from __future__ import annotations

import collections
import concurrent.futures
import csv
import json
import os
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from gender_jax import CLASS_NAMES
from gender_jax.evaluation import datasets as eval_data
from gender_jax.data import preprocess
from gender_jax.data.schema import record_meta
from gender_jax.data.preprocess import ImageError
from gender_jax.evaluation.image_hash import content_hash, near_pairs, perceptual_hash
from gender_jax.evaluation.label_issues import confident_label_issues, out_of_fold_probs

# The out-of-fold accuracy the label-error model needs before its flags may exclude images:
# 16x16 thumbnails on UTKFace reach 0.825, and most of their flags there are correct labels.
LABEL_ERROR_FLOOR = 0.9
SPLIT_PRIORITY = {"test": 0, "validation": 1, "train": 2}  # which copy of a duplicate to keep
THUMB = 16  # side of the pixel features used without a bundle


# ----------------------------------------------------------------------------- scanning
def scan(records, threads: int = 4) -> dict[str, Any]:
  """One pass over the records: content hash, perceptual hash, thumbnail feature, or error."""
  def one(i):
    meta = record_meta(records, i)
    try:
      image = records[i]["image"]
      img = preprocess.decode(image)
    except ImageError as e:
      return meta, None, str(e)
    thumb = preprocess.resize(img, THUMB).astype(np.float32).ravel() / 255.0
    return meta, (content_hash(image), perceptual_hash(img), thumb), None
  metas, sha, phash, thumbs, ok, errors = [], [], [], [], [], []
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    for lo in range(0, len(records), 256):  # bounded look-ahead, not every image in memory
      for i, (meta, out, error) in zip(range(lo, len(records)),
                                       pool.map(one, range(lo, min(lo + 256, len(records))))):
        if error is not None:
          errors.append(dict(key=meta.get("key", str(i)), source=meta.get("source", ""),
                             reason=error))
          continue
        metas.append(meta)
        ok.append(i)
        sha.append(out[0])
        phash.append(out[1])
        thumbs.append(out[2])
  return dict(metas=metas, index=np.asarray(ok, np.int64), sha=sha,
              phash=np.asarray(phash, np.uint64), thumbs=np.stack(thumbs) if thumbs else
              np.zeros((0, THUMB * THUMB * 3), np.float32), errors=errors)



# ----------------------------------------------------------------------------- grouping
def _components(n: int, pairs) -> list[list[int]]:
  parent = list(range(n))

  def find(a):
    while parent[a] != a:
      parent[a] = parent[parent[a]]
      a = parent[a]
    return a
  for a, b in pairs:
    parent[find(a)] = find(b)
  groups = collections.defaultdict(list)
  for i in range(n):
    groups[find(i)].append(i)
  return [sorted(g) for g in groups.values() if len(g) > 1]


def find_issues(scanned: dict[str, Any], *, near_distance: int = 3,
                features: np.ndarray | None = None, folds: int = 5,
                seed: int = 0) -> dict[str, Any]:
  """Duplicates, cross-split duplicates and likely label errors of a scanned dataset."""
  metas = scanned["metas"]
  n = len(metas)
  by_hash = collections.defaultdict(list)
  for i, h in enumerate(scanned["sha"]):
    by_hash[h].append(i)
  exact_pairs = [(g[0], j) for g in by_hash.values() for j in g[1:]]
  near = [(i, j, d) for i, j, d in near_pairs(scanned["phash"], near_distance)
          if scanned["sha"][i] != scanned["sha"][j]]
  groups = _components(n, exact_pairs + [(i, j) for i, j, _ in near])
  split = [str(m.get("split", "")) for m in metas]
  labels = np.array([int(m["label"]) for m in metas], int)
  feats = scanned["thumbs"] if features is None else features
  # Out-of-fold predictions need ≥ 2 folds and both classes in each training part.
  can_fit = folds >= 2 and min(np.bincount(labels, minlength=2)) >= folds
  probs = out_of_fold_probs(feats, labels, folds=folds, seed=seed) if can_fit else None
  issues = confident_label_issues(probs, labels) if probs is not None else []
  return dict(exact_pairs=exact_pairs, near_pairs=near, groups=groups, split=split, labels=labels,
              probs=probs, label_issues=issues,
              cross_split_groups=[g for g in groups if len({split[i] for i in g}) > 1])


def out_of_fold_accuracy(found: dict[str, Any]) -> float | None:
  """How often the label-error model's out-of-fold prediction agrees with the label."""
  probs = found["probs"]
  return float((probs.argmax(1) == found["labels"]).mean()) if probs is not None else None


def exclusions(found: dict[str, Any], metas, *, label_errors: bool = False) -> dict[int, str]:
  """{record position: reason}: all but one of each duplicate group, and likely label errors."""
  out = {}
  for g in found["groups"]:
    keep = min(g, key=lambda i: (SPLIT_PRIORITY.get(found["split"][i], 3), metas[i]["key"]))
    for i in g:
      if i != keep:
        cross = " (other split)" if found["split"][i] != found["split"][keep] else ""
        out[i] = f"duplicate of {metas[keep]['key']}{cross}"
  if label_errors:
    for r in found["label_issues"]:
      out.setdefault(r["index"], f"likely label error: labelled {CLASS_NAMES[r['given']]}, "
                                 f"p={r['p_given']:.3f}")
  return out


# ----------------------------------------------------------------------------- output
def _thumb(records, index: int, size: int = 96) -> Image.Image:
  try:
    return Image.fromarray(preprocess.eval_image(records[index]["image"], size))
  except ImageError:
    return Image.new("RGB", (size, size), (128, 0, 0))


def contact_sheet(tiles: list[tuple[list[Image.Image], str]], path: str, title: str,
                  columns: int = 4, size: int = 96) -> None:
  """A grid of cells; each cell holds 1–2 thumbnails side by side and a caption below."""
  per = max((len(t[0]) for t in tiles), default=1)
  cell_w, cell_h = per * size + 8 * per, size + 34
  rows = max(1, -(-len(tiles) // columns))
  sheet = Image.new("RGB", (columns * cell_w + 8, rows * cell_h + 28), "white")
  draw = ImageDraw.Draw(sheet)
  draw.text((8, 6), title if tiles else f"{title}: none found", fill="black")
  for k, (images, caption) in enumerate(tiles):
    x0, y0 = 8 + (k % columns) * cell_w, 28 + (k // columns) * cell_h
    for m, im in enumerate(images):
      sheet.paste(im.resize((size, size)), (x0 + m * (size + 4), y0))
    for line_no, line in enumerate(caption.split("\n")[:2]):
      draw.text((x0, y0 + size + 2 + 12 * line_no), line[:2 * per * 16], fill="black")
  sheet.save(path)


def write_outputs(out_dir: str, datasets, records, scanned, found, *, label_errors: bool = False,
                  feature_kind: str = "", max_tiles: int = 48) -> dict[str, Any]:
  os.makedirs(out_dir, exist_ok=True)
  metas = scanned["metas"]
  index = scanned["index"]

  def who(i):
    m = metas[i]
    return dict(key=m["key"], source=m.get("source", ""), split=found["split"][i],
                label=CLASS_NAMES[int(m["label"])])
  rows = []
  for kind, pairs in (("exact_duplicate", [(i, j, 0) for i, j in found["exact_pairs"]]),
                      ("near_duplicate", found["near_pairs"])):
    for i, j, d in pairs:
      a, b = who(i), who(j)
      rows.append(dict(kind=kind, **a, other_key=b["key"], other_split=b["split"],
                       other_label=b["label"], distance=d,
                       cross_split=int(a["split"] != b["split"]),
                       labels_differ=int(a["label"] != b["label"])))
  for r in found["label_issues"]:
    rows.append(dict(kind="label_error", **who(r["index"]), p_given_label=round(r["p_given"], 4),
                     suggested_label=CLASS_NAMES[r["suggested"]]))
  for e in scanned["errors"]:
    rows.append(dict(kind="unreadable", key=e["key"], source=e["source"], reason=e["reason"]))
  columns = ["kind", "source", "key", "split", "label", "other_key", "other_split", "other_label",
             "distance", "cross_split", "labels_differ", "p_given_label", "suggested_label",
             "reason"]
  with open(os.path.join(out_dir, "issues.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)

  excluded = exclusions(found, metas, label_errors=label_errors)
  by_source = collections.defaultdict(list)
  for i, reason in sorted(excluded.items(), key=lambda kv: metas[kv[0]]["key"]):
    by_source[metas[i].get("source", "")].append(f"{metas[i]['key']}\t{reason}")
  for e in scanned["errors"]:
    by_source[e["source"]].append(f"{e['key']}\tunreadable: {e['reason']}")
  names = [d.name for d in datasets]
  files = {}
  for name in names:
    fname = "exclude.txt" if len(names) == 1 else f"exclude-{name}.txt"
    with open(os.path.join(out_dir, fname), "w") as f:
      f.write(f"# {name}: images to leave out (KEY<TAB>reason); written by gender_jax.clean\n")
      f.write("\n".join(by_source.get(name, [])) + ("\n" if by_source.get(name) else ""))
    files[name] = fname

  dup_tiles = []
  for kind, pairs in (("exact", [(i, j, 0) for i, j in found["exact_pairs"]]),
                      ("near", found["near_pairs"])):
    for i, j, d in pairs:
      if len(dup_tiles) >= max_tiles:
        break
      tag = "CROSS-SPLIT " if found["split"][i] != found["split"][j] else ""
      dup_tiles.append(([_thumb(records, index[i]), _thumb(records, index[j])],
                        f"{tag}{kind} d={d} {who(i)['label'][0]}/{who(j)['label'][0]}\n"
                        f"{os.path.basename(metas[i]['key'])[:26]}"))
  contact_sheet(dup_tiles, os.path.join(out_dir, "contact_duplicates.png"),
                f"Duplicates ({len(found['exact_pairs'])} exact, {len(found['near_pairs'])} near "
                f"pairs; first {len(dup_tiles)})", columns=4)
  err_tiles = [([_thumb(records, index[r["index"]])],
                f"given {CLASS_NAMES[r['given']]} p={r['p_given']:.2f}\n"
                f"{os.path.basename(metas[r['index']]['key'])[:14]}")
               for r in found["label_issues"][:max_tiles]]
  contact_sheet(err_tiles, os.path.join(out_dir, "contact_label_errors.png"),
                f"Likely label errors ({len(found['label_issues'])}; most confident first, "
                f"features: {feature_kind})", columns=8)
  oof_acc = out_of_fold_accuracy(found)
  summary = dict(
      images=len(metas), unreadable=len(scanned["errors"]),
      exact_duplicate_pairs=len(found["exact_pairs"]), near_duplicate_pairs=len(found["near_pairs"]),
      duplicate_groups=len(found["groups"]), cross_split_groups=len(found["cross_split_groups"]),
      duplicate_pairs_with_different_labels=sum(r.get("labels_differ", 0) for r in rows),
      label_errors=len(found["label_issues"]), label_error_features=feature_kind,
      out_of_fold_accuracy=oof_acc, label_errors_excluded=label_errors,
      label_error_floor=LABEL_ERROR_FLOOR, excluded=len(excluded) + len(scanned["errors"]),
      exclude_files=files)
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary


def load_datasets(specs, workdir=None, config_file=None) -> list[eval_data.Dataset]:
  """Folders as they are; a configured source without a split: all of its splits."""
  out = []
  for spec in specs:
    if spec.startswith("source:") and spec.count(":") == 1:
      parts = [eval_data.load_one(f"{spec}:{s}", workdir=workdir, config_file=config_file)
               for s in SPLIT_PRIORITY]
      out.append(eval_data.Dataset(spec.split(":")[1], spec,
                                   eval_data.Concat([p.records for p in parts])))
    else:
      out.append(eval_data.load_one(spec, workdir=workdir, config_file=config_file))
  return out
