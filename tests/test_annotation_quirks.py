"""Published annotations have quirks; each one is skipped and listed with its file:line and
reason (or, strict, stops preparation at once), never silently read wrong."""
import os

import numpy as np
import pytest

from gender_jax.data import peta, schema

LINES = {  # Label.txt line → what the reader must make of it
    "1 upperBodyBlack personalMale": "kept",
    "2 carryingBabyBuggy": "neither",
    "3 personalMale personalFemale": "both",
    "person4 personalFemale": "first field",
    "5 personalFemale": "kept",
    "5 personalFemale hairLong": "duplicate",   # the same gender again: the first is kept
    "6 personalMale": "conflict",
    "6 personalFemale": "conflicting",          # disagrees with line 7: the person goes
}


def _write(path, text: str, newline="\n", bom=False):
  data = newline.join(text.splitlines()) + newline
  path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data.encode())
  return str(path)


def _read(path, strict=False):
  skips = schema.Skips(strict=strict, root=os.path.dirname(path))
  labels, rejected = peta.read_label_file(path, skips)
  return labels, rejected, skips.items


def test_each_quirk_is_skipped_with_its_line(tmp_path):
  labels, rejected, items = _read(_write(tmp_path / "Label.txt", "\n".join(LINES)))
  assert {k: v[0] for k, v in labels.items()} == {"1": 1, "5": 0}
  where = {x["where"]: x["reason"] for x in items}
  assert set(where) == {"Label.txt:2", "Label.txt:3", "Label.txt:4", "Label.txt:6",
                        "Label.txt:8"}
  assert "found neither" in where["Label.txt:2"] and "person 2" in where["Label.txt:2"]
  assert "found both" in where["Label.txt:3"]
  assert "'person4' is neither a person id nor a file name" in where["Label.txt:4"]
  assert "duplicate entry for '5'" in where["Label.txt:6"]
  assert "conflicting genders for '6' on lines 7 and 8" in where["Label.txt:8"]
  assert set(rejected) == {"2", "3", "6"}  # their images are listed with these reasons


@pytest.mark.parametrize("newline,bom", [("\r\n", False), ("\n", True), ("\r\n", True)],
                         ids=["crlf", "bom", "crlf+bom"])
def test_crlf_bom_and_blank_lines_read_as_plain_lines(tmp_path, newline, bom):
  text = "\n1 personalMale\n\n   \n0002.png personalFemale upperBodyRed\n"
  labels, _, items = _read(_write(tmp_path / "Label.txt", text, newline, bom))
  assert items == []
  assert labels == {"1": (1, {"personalMale"}),
                    "0002.png": (0, {"personalFemale", "upperBodyRed"})}


def test_strict_stops_at_the_first_quirk(tmp_path):
  path = _write(tmp_path / "Label.txt", "\n".join(LINES))
  with pytest.raises(schema.AnnotationError, match=r"Label.txt:2: needs exactly one of "
                     r"personalMale / personalFemale, found neither"):
    _read(path, strict=True)


def _peta_mat_with(tmp_path, male_column):
  from scipy.io import savemat
  names = ["personalLess30", "personalMale"]
  rows = [[i + 1, i + 1, 1, i + 1, 1, v] for i, v in enumerate(male_column)]
  savemat(tmp_path / "PETA.mat", {"peta": {"data": np.array(rows, np.float64),
                                           "attribute": np.array([[n] for n in names],
                                                                 dtype=object)}})
  return str(tmp_path)


def test_peta_mat_value_outside_0_1_is_skipped(tmp_path):
  pytest.importorskip("scipy")
  root = _peta_mat_with(tmp_path, [1, 0, 7, 1])
  skips = schema.Skips(root=root)
  entries, _ = peta.read_mat_entries(root, skips)
  assert [e.label for e in entries] == [1, 0, 1]
  assert skips.items == [{"where": "PETA.mat [peta{1} row 3]",
                          "reason": "personalMale must be 0 or 1, got 7.0"}]


def test_celeba_rows_and_pairs(tmp_path):
  from gender_jax.data import celeba
  attr = _write(tmp_path / celeba.ATTR_FILE, "5\nSmiling Male\n"
                "a.jpg 1 1\nb.jpg 1 -1\nb.jpg 1 1\nc.jpg 1 0\nd.jpg 1\n", "\r\n", bom=True)
  skips = schema.Skips(root=str(tmp_path))
  names, rows = celeba.read_attributes(attr, skips)
  assert names == ["Smiling", "Male"] and rows == {"a.jpg": [1, 1], "b.jpg": [1, 0]}
  assert [x["where"] for x in skips.items] == [f"{celeba.ATTR_FILE}:{n}" for n in (5, 6, 7)]
  part = _write(tmp_path / celeba.PARTITION_FILE, "a.jpg 0\nb.jpg 9\nb.jpg 0 extra\n")
  assert celeba.read_pairs(part, set(celeba.PARTITIONS), skips) == {"a.jpg": "0"}
  assert "value '9' not in" in skips.items[-2]["reason"]
  assert "expected 'file value', got 3 fields" == skips.items[-1]["reason"]


def test_rap_and_pa100k_bad_values_and_repeats(tmp_path):
  pytest.importorskip("scipy")
  from scipy.io import loadmat, savemat

  from gender_jax.data import pa100k, rap
  from tests.fixtures import datasets as fixtures
  fixtures.rap(str(tmp_path / "rap"), 2)
  mat = loadmat(tmp_path / "rap" / "RAP_annotation.mat")
  ann = mat["RAP_annotation"][0, 0]
  ann["data"][0, 0] = 9      # neither 0, 1 nor 2
  ann["name"][2, 0] = ann["name"][1, 0]  # row 3 repeats row 2's file
  savemat(tmp_path / "rap" / "RAP_annotation.mat", {"RAP_annotation": ann})
  skips = schema.Skips(root=str(tmp_path / "rap"))
  entries, excluded = rap.read_entries(str(tmp_path / "rap"), 2, skips)
  assert [x["where"] for x in skips.items] == ["RAP_annotation.mat [data row 1]",
                                               "RAP_annotation.mat [data row 3]"]
  assert "Femal must be 0, 1 or 2 (uncertain), got 9" in skips.items[0]["reason"]
  assert "listed before, at row 2" in skips.items[1]["reason"]
  assert len(entries) == 24 - 4 - 2 and excluded == 4

  fixtures.pa100k(str(tmp_path / "pa"))
  mat = loadmat(tmp_path / "pa" / "annotation.mat")
  mat["train_label"][1, 0] = 3
  mat["test_images_name"][0, 0] = mat["train_images_name"][0, 0]
  savemat(tmp_path / "pa" / "annotation.mat", {k: v for k, v in mat.items()
                                               if not k.startswith("__")})
  skips = schema.Skips(root=str(tmp_path / "pa"))
  entries, _ = pa100k.read_entries(str(tmp_path / "pa"), skips)
  assert [x["where"] for x in skips.items] == ["annotation.mat [train_label row 2]",
                                               "annotation.mat [test_label row 1]"]
  assert len(entries) == 18 - 2
  with pytest.raises(schema.AnnotationError, match=r"train_label row 2\]: .*Female must be"):
    pa100k.read_entries(str(tmp_path / "pa"), schema.Skips(strict=True))


def test_muct_strict_stops_at_a_misnamed_file(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  from gender_jax.data import prepare
  from tests.fixtures import datasets as fixtures
  fixtures.muct(str(tmp_path / "m"))
  with pytest.raises(schema.AnnotationError, match=r"name does not match MUCT"):
    prepare.prepare("muct", str(tmp_path / "m"), str(tmp_path / "d"), strict=True)


def test_prepare_command_lists_the_skipped_person_and_strict_stops(tmp_path):
  """`data prepare --source peta` on a PETA whose one person has no gender (as PRID 0298 of
  the published set): no stop, the line and its images in the summary; --strict: one error
  line, exit 2."""
  pytest.importorskip("tensorflow_datasets")
  import subprocess
  import sys

  from tests.fixtures import datasets as fixtures
  from tests.helpers import REPO
  fixtures.peta_archive(str(tmp_path / "m"))
  label = tmp_path / "m" / "PETA dataset" / "CUHK" / "archive" / "Label.txt"
  lines = label.read_text().splitlines()
  lines[1] = lines[1].split()[0] + " carryingBabyBuggy"
  label.write_text("\n".join(lines) + "\n")

  def prepare(*extra):
    return subprocess.run([sys.executable, "-m", "gender_jax.data", "prepare", "--source",
                           "peta", "--manual-dir", str(tmp_path / "m"), *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
  strict = prepare("--data-dir", str(tmp_path / "strict"), "--strict")
  assert strict.returncode == 2, strict.stderr
  assert strict.stderr.strip().splitlines() == [
      "error: " + str(tmp_path / "m" / "PETA dataset" / "CUHK" / "archive" / "Label.txt") +
      ":2: needs exactly one of personalMale / personalFemale, found neither (person 2)"]
  ok = prepare("--data-dir", str(tmp_path / "d"))
  assert ok.returncode == 0, ok.stderr
  assert ("skipped annotation lines: 1\n  PETA dataset/CUHK/archive/Label.txt:2: needs exactly "
          "one of personalMale / personalFemale, found neither (person 2)\n") in ok.stdout
  assert "skipped files: 2\n" in ok.stdout
