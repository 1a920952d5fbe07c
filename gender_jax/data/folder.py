"""Your own photos: `male/` and `female/` folders, with an optional `labels.csv`.

The one reader of a user's folder: train (`data.folder`), `data prepare --source folder`,
evaluate, calibrate and clean all list a folder here, and `require_folder` is their check
before any work. Class folders are matched case-insensitively, with aliases (`man`/`men`,
`woman`/`women`, `m`/`f`); images may sit in subfolders. With `labels.csv` (columns
`path,label,…`; paths relative to the folder) the CSV is authoritative: its extra columns
(`age`, `race`, …) are kept as subgroup fields and an `identity` (or `person_id`) column makes
the split identity-disjoint; an image whose CSV label contradicts the class folder it sits in
is reported (a count and the files), and the CSV's label is used. The split is seeded and
label-stratified.
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os

from gender_jax import cli
from gender_jax.data import builder, schema

LABELS_CSV = "labels.csv"
IDENTITY_COLUMNS = ("identity", "person_id")


def read_csv(folder: str, csv_path: str) -> list[schema.Entry]:
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      raise schema.AnnotationError(csv_path, 1, "empty file: expected a header 'path,label,…'")
    columns = [h.strip().lower() for h in header]
    if "path" not in columns or "label" not in columns:
      raise schema.AnnotationError(csv_path, 1, f"header must name 'path' and 'label' columns, "
                                   f"got {header}")
    p, l = columns.index("path"), columns.index("label")
    ident = next((columns.index(c) for c in IDENTITY_COLUMNS if c in columns), None)
    extra = [(i, header[i].strip()) for i in range(len(columns)) if i not in (p, l, ident)]
    entries, seen = [], set()
    for row in reader:
      number = reader.line_num
      if not any(cell.strip() for cell in row):
        continue
      if len(row) != len(columns):
        raise schema.AnnotationError(csv_path, number, f"expected {len(columns)} fields, "
                                     f"got {len(row)}")
      rel, value = row[p].strip(), row[l]
      label = schema.parse_label(value)
      if label is None:
        raise schema.AnnotationError(csv_path, number, f"label {value!r} is not female/male "
                                     "(also accepted: f/m, woman/man, 0/1)")
      if not rel:
        raise schema.AnnotationError(csv_path, number, "empty path")
      if rel in seen:
        raise schema.AnnotationError(csv_path, number, f"duplicate path {rel!r}")
      seen.add(rel)
      full = os.path.normpath(os.path.join(folder, rel))
      entries.append(schema.Entry(
          path=full, key=rel, label=label,
          identity=row[ident].strip() if ident is not None else "",
          subgroups={name: row[i].strip() for i, name in extra}))
  return entries


def class_folders(folder: str) -> list[tuple[str, int]]:
  """(subfolder, label) of each subfolder named for a class, in any case or alias."""
  classes = [(d, schema.parse_label(d)) for d in sorted(os.listdir(folder))
             if os.path.isdir(os.path.join(folder, d)) and not d.isdigit()]
  return [(d, label) for d, label in classes if label is not None]


def require_folder(path: str, what: str = "data folder") -> str:
  """Before any work: `path` is a folder this module can read (class folders or labels.csv)."""
  cli.require_dir(path, what)
  if not os.path.exists(os.path.join(path, LABELS_CSV)) and not class_folders(path):
    raise cli.UsageError(
        f"{what} {path!r} has no class folders and no {LABELS_CSV}; put the images in "
        f"PATH/male/ and PATH/female/ (any case; man/, men/, woman/, women/ also work) or list "
        f"them in PATH/{LABELS_CSV} with path,label columns")
  return path


def read_class_folders(folder: str) -> list[schema.Entry]:
  entries = []
  classes = class_folders(folder)
  if not classes:
    raise FileNotFoundError(f"{folder}: no male/ or female/ subfolders (or man/, woman/) "
                            f"and no {LABELS_CSV}")
  for d, label in classes:
    for root, dirs, files in os.walk(os.path.join(folder, d)):
      dirs[:] = sorted(x for x in dirs if not x.startswith("."))
      for name in sorted(files):
        if name.startswith(".") or name in ("Thumbs.db", "desktop.ini"):
          continue
        full = os.path.join(root, name)
        entries.append(schema.Entry(path=full, key=schema.relpath(full, folder), label=label))
  return entries


def read_entries(folder: str):
  csv_path = os.path.join(folder, LABELS_CSV)
  if os.path.exists(csv_path):
    entries = read_csv(folder, csv_path)
    report_conflicts(folder, label_conflicts(folder, entries))
    return entries, []
  return read_class_folders(folder), []


def label_conflicts(folder: str, entries) -> list[str]:
  """The keys of images whose labels.csv label contradicts the class folder they sit in."""
  folder_label = dict(class_folders(folder))
  out = []
  for e in entries:
    top = os.path.normpath(e.key).replace(os.sep, "/").split("/", 1)[0]
    if top in folder_label and folder_label[top] != e.label:
      out.append(e.key)
  return out


MAX_LISTED = 20


def report_conflicts(folder: str, keys: list[str]) -> None:
  if keys:
    listed = ", ".join(keys[:MAX_LISTED]) + (f" and {len(keys) - MAX_LISTED} more"
                                             if len(keys) > MAX_LISTED else "")
    logging.warning("%s: %d images have a %s label that contradicts their class folder; the "
                    "%s label is used: %s", folder, len(keys), LABELS_CSV, LABELS_CSV, listed)


def content_key(folder: str) -> str:
  """A digest of the folder's listing (relative path, size, mtime): a cache key that changes
  when any file is added, removed, replaced or edited, labels.csv included."""
  h = hashlib.sha256(os.path.abspath(folder).encode())
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in sorted(files):
      st = os.stat(os.path.join(root, name))
      h.update(f"{os.path.relpath(os.path.join(root, name), folder)}\0{st.st_size}\0"
               f"{st.st_mtime_ns}\n".encode())
  return h.hexdigest()[:16]


class GenderFolder(builder.GenderBuilder):
  """Images in male/ and female/ folders (or listed in labels.csv); seeded split."""
  name = "gender_folder"
  SOURCE = "folder"
  MAX_SIDE = 1024  # phone photos: 12 MP decodes would dominate the input pipeline
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("The manual dir is your folder: male/ and female/ "
                                  f"subfolders, or a {LABELS_CSV} with path,label columns.")

  def _entries(self, manual_dir):
    return read_entries(manual_dir)
