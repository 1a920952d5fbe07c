"""Tiny datasets written in each source's published on-disk format.

The real datasets cannot be downloaded here, so tests (and anyone checking a builder) write
these: the same file names, text layouts and MATLAB structs as the published releases, with
a handful of small images. Each writer returns what it wrote, so tests can check the builder
against it.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes "
    "No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling "
    "Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace "
    "Wearing_Necktie Young").split()


def write_image(path: str, seed: int, size=(24, 16), fmt: str | None = None) -> None:
  """A small noise image whose mean colour depends on the seed (distinct per file)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  base = rng.integers(0, 200, 3)
  img = np.clip(base + rng.integers(0, 56, (*size, 3)), 0, 255).astype(np.uint8)
  Image.fromarray(img).save(path, format=fmt)


def write_corrupt(path: str, kind: str) -> None:
  """kind: "truncated" (half a JPEG), "empty" (0 bytes) or "text" (not an image)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if kind == "truncated":
    write_image(path, 999, size=(64, 64), fmt="JPEG")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
  elif kind == "empty":
    open(path, "wb").close()
  else:
    open(path, "w").write("this is not an image\n")


def celeba(root: str, num_ids: int = 8, per_id: int = 3) -> dict:
  """img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt, identity_CelebA.txt.

  Identities 0..num_ids-3 are train, num_ids-2 validation, num_ids-1 test (identity-disjoint,
  as the official partition is); even identities are male."""
  files, rows, parts, ids = [], [], [], []
  n = 0
  for pid in range(num_ids):
    for _ in range(per_id):
      n += 1
      name = f"{n:06d}.jpg"
      write_image(os.path.join(root, "img_align_celeba", name), n, size=(27, 22), fmt="JPEG")
      values = [1 if (n + j) % 3 == 0 else -1 for j in range(len(CELEBA_ATTRIBUTES))]
      values[CELEBA_ATTRIBUTES.index("Male")] = 1 if pid % 2 == 0 else -1
      files.append(name)
      rows.append(f"{name} " + " ".join(f"{v:2d}" for v in values))
      parts.append(0 if pid < num_ids - 2 else (1 if pid == num_ids - 2 else 2))
      ids.append(pid + 100)
  with open(os.path.join(root, "list_attr_celeba.txt"), "w") as f:
    f.write(f"{n}\n" + " ".join(CELEBA_ATTRIBUTES) + " \n" + "\n".join(rows) + "\n")
  with open(os.path.join(root, "list_eval_partition.txt"), "w") as f:
    f.write("".join(f"{a} {b}\n" for a, b in zip(files, parts)))
  with open(os.path.join(root, "identity_CelebA.txt"), "w") as f:
    f.write("".join(f"{a} {b}\n" for a, b in zip(files, ids)))
  return dict(files=files, partitions=parts, identities=ids)


PETA_SUBSETS = ("3DPeS", "CUHK", "VIPeR")


def peta_archive(root: str, persons: int = 6, per_person: int = 2) -> dict:
  """<subset>/archive/ with images named "<id>_<k>…" and Label.txt, as in the original release.

  In each subset the persons alternate male/female; VIPeR lists file names instead of ids."""
  truth = {}
  for s, subset in enumerate(PETA_SUBSETS):
    archive = os.path.join(root, "PETA dataset", subset, "archive")
    lines = []
    for pid in range(1, persons + 1):
      male = pid % 2 == 1
      gender = "personalMale" if male else "personalFemale"
      age = ("personalLess30", "personalLess45", "personalLess60")[pid % 3]
      names = [f"{pid:03d}_{k}_FRAME_{k * 7}_RGB.{('png', 'bmp', 'jpg')[k % 3]}"
               for k in range(per_person)]
      for k, name in enumerate(names):
        write_image(os.path.join(archive, name), 1000 * s + 10 * pid + k, size=(40, 20))
        truth[f"PETA dataset/{subset}/archive/{name}"] = (int(male), f"{subset}/{pid}")
      attrs = f"upperBodyBlack lowerBodyGrey {age} {gender} footwearBlack"
      if subset == "VIPeR":
        lines += [f"{name} {attrs}" for name in names]
      else:
        lines.append(f"{pid} {attrs}")
    with open(os.path.join(archive, "Label.txt"), "w") as f:
      f.write("\n".join(lines) + "\n")
  return truth


def peta_mat(root: str, num_persons: int = 10, per_person: int = 2) -> dict:
  """PETA.mat (the common repackaging) + images/00001.png …"""
  from scipy.io import savemat
  names = ["accessoryHat", "personalLess30", "personalLess45", "personalMale", "upperBodyBlack"]
  rows, truth = [], {}
  n = 0
  for pid in range(1, num_persons + 1):
    for _ in range(per_person):
      n += 1
      male = pid % 2
      rows.append([n, pid, 1 + pid % 3, pid, pid % 2, 1 - pid % 2, pid % 2, male, 1])
      write_image(os.path.join(root, "images", f"{n:05d}.png"), n, size=(40, 20), fmt="PNG")
      truth[f"images/{n:05d}.png"] = (male, str(pid))
  partition = np.empty((5, 1), dtype=object)
  for i in range(5):
    partition[i, 0] = {"idx": {"train": np.arange(1, n - 3)[:, None],
                               "val": np.array([[n - 3], [n - 2]]),
                               "test": np.array([[n - 1], [n]])}}
  savemat(os.path.join(root, "PETA.mat"), {"peta": {
      "data": np.array(rows, dtype=np.float64),
      "attribute": np.array([[x] for x in names], dtype=object),
      "selected_attribute": np.arange(1, len(names) + 1)[:, None],
      "partition_attribute": partition}})
  return truth


def rap(root: str, version: int, n: int = 24) -> dict:
  """RAP_annotation.mat + RAP_dataset/ for RAP v1 (`imagesname`, `label`, `attribute_eng`,
  `partion`) or v2 (`name`, `data`, `attribute`, `person_identity`, `partition`).
  Every 6th image has gender value 2 (uncertain)."""
  from scipy.io import savemat
  attrs = ["Femal", "AgeLess16", "Age17-30", "Age31-45", "BodyFat"]
  files, data, truth, ident = [], [], {}, []
  for i in range(n):
    pid = i // 2  # two images per person
    gender = 2 if i % 6 == 5 else pid % 2  # 1 female, 0 male, 2 uncertain
    name = f"CAM{i % 3:02d}_2014-02-15_{i:08d}.png"
    write_image(os.path.join(root, "RAP_dataset", name), i, size=(40, 20), fmt="PNG")
    files.append(name)
    data.append([gender, int(i % 3 == 0), int(i % 3 == 1), int(i % 3 == 2), 0])
    ident.append(pid if i % 8 != 7 else -1)
    if gender != 2:
      truth[f"RAP_dataset/{name}"] = (1 - gender, str(pid) if version == 2 and i % 8 != 7 else "")
  names = np.array([[f] for f in files], dtype=object)
  attr_cell = np.array([[a] for a in attrs], dtype=object)
  if version == 1:
    train, test = np.arange(1, n - 5)[None, :], np.arange(n - 5, n + 1)[None, :]
    partion = np.empty((5, 1), dtype=object)
    for k in range(5):
      partion[k, 0] = {"train_index": train, "test_index": test}
    ann = {"partion": partion, "label": np.array(data, np.uint8), "attribute_chinese": attr_cell,
           "attribute_exp": attr_cell, "position": np.zeros((n, 4)), "imagesname": names,
           "attribute_eng": attr_cell}
    truth = {"labels": truth, "test": {f"RAP_dataset/{files[i]}" for i in range(n - 6, n)}}
  else:
    ann = {"name": names, "data": np.array(data, np.uint8), "attribute": attr_cell,
           "person_identity": np.array(ident, np.float64)[:, None]}
    truth = {"labels": truth}
  savemat(os.path.join(root, "RAP_annotation.mat"), {"RAP_annotation": ann})
  return truth


PA100K_ATTRIBUTES = ("Female AgeOver60 Age18-60 AgeLess18 Front Side Back Hat Glasses HandBag "
                     "ShoulderBag Backpack HoldObjectsInFront ShortSleeve LongSleeve UpperStride "
                     "UpperLogo UpperPlaid UpperSplice LowerStripe LowerPattern LongCoat Trousers "
                     "Shorts Skirt&Dress boots").split()


def pa100k(root: str, sizes=(10, 4, 4)) -> dict:
  """annotation.mat + data/000001.jpg …, with the official train/val/test lists."""
  from scipy.io import savemat
  out, truth, n = {"attributes": np.array([[a] for a in PA100K_ATTRIBUTES], dtype=object)}, {}, 0
  for prefix, size in zip(("train", "val", "test"), sizes):
    names, labels = [], []
    for _ in range(size):
      n += 1
      name = f"{n:06d}.jpg"
      write_image(os.path.join(root, "data", name), n, size=(40, 20), fmt="JPEG")
      row = np.zeros(len(PA100K_ATTRIBUTES), np.uint8)
      row[0] = n % 2
      row[2] = 1
      names.append([name])
      labels.append(row)
      truth[f"data/{name}"] = (1 - n % 2, {"train": "train", "val": "validation",
                                           "test": "test"}[prefix])
    out[f"{prefix}_images_name"] = np.array(names, dtype=object)
    out[f"{prefix}_label"] = np.array(labels)
  savemat(os.path.join(root, "annotation.mat"), out)
  return truth


def folder(root: str, per_class: int = 12, csv: bool = True, corrupt: bool = False) -> dict:
  """male/ and female/ (mixed case, one nested subfolder), optional labels.csv with
  age/race columns, optional 3 corrupt files (truncated JPEG, empty file, text)."""
  truth = {}
  for label, cls in ((1, "Male"), (0, "female")):
    for i in range(per_class):
      rel = f"{cls}/{'sub/' if i % 5 == 4 else ''}{i:03d}.jpg"
      write_image(os.path.join(root, rel), 31 * i + label, size=(32, 32), fmt="JPEG")
      truth[rel] = (label, {"age": str(20 + i), "race": str(i % 5)})
  bad = {}
  if corrupt:
    for kind, rel in (("truncated", "Male/trunc.jpg"), ("empty", "female/empty.jpg"),
                      ("text", "female/notes.txt")):
      write_corrupt(os.path.join(root, rel), kind)
      bad[rel] = kind
  if csv:
    with open(os.path.join(root, "labels.csv"), "w") as f:
      f.write("path,label,age,race\n")
      for rel, (label, sub) in truth.items():
        f.write(f"{rel},{('female', 'male')[label]},{sub['age']},{sub['race']}\n")
      for rel in bad:
        f.write(f"{rel},{'male' if rel.startswith('Male') else 'female'},30,1\n")
  return dict(images=truth, bad=bad)


def muct(root: str, subjects: int = 10, sessions: str = "q", archives: bool = False,
         malformed: bool = True) -> dict:
  """jpg/i000qa-fn.jpg … (subject, session, camera a–e, gender m/f), or with `archives` the
  five muct-{a..e}-jpg-v1.tar.gz holding jpg/ as released. Even subjects are male; with
  `malformed`, two misnamed files that the builder must skip and report."""
  import tarfile
  truth, bad = {}, []
  for s in range(subjects):
    for session in sessions:
      for c, camera in enumerate("abcde"):
        name = f"i{s:03d}{session}{camera}-{'m' if s % 2 == 0 else 'f'}n.jpg"
        write_image(os.path.join(root, "jpg", name), 100 * s + c, size=(32, 24), fmt="JPEG")
        truth[name] = dict(label=int(s % 2 == 0), identity=f"{s:03d}", camera=camera,
                           session=session)
  if malformed:
    for name in ("i01qa-fn.jpg", "i000qa-xn.jpg"):  # two-digit subject; gender not m/f
      write_image(os.path.join(root, "jpg", name), 7, size=(32, 24), fmt="JPEG")
      bad.append(name)
  if archives:
    for camera in "abcde":
      with tarfile.open(os.path.join(root, f"muct-{camera}-jpg-v1.tar.gz"), "w:gz") as tar:
        for name in sorted(os.listdir(os.path.join(root, "jpg"))):
          if name[5:6] == camera or (name in bad and camera == "a"):
            tar.add(os.path.join(root, "jpg", name), arcname=f"jpg/{name}")
    for name in os.listdir(os.path.join(root, "jpg")):
      os.remove(os.path.join(root, "jpg", name))
    os.rmdir(os.path.join(root, "jpg"))
  return dict(images=truth, bad=bad)
