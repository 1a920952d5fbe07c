"""Each TFDS builder on a fixture written in its dataset's real on-disk format."""
import collections
import os

import pytest

tfds = pytest.importorskip("tensorflow_datasets")
pytest.importorskip("scipy")

from tests.fixtures import datasets as fixtures

from gender_jax.data import prepare, schema, splits  # noqa: E402

tfds.disable_progress_bar()


def _records(b):
  """{path: record} over every split, with the split name added. Each record, read by the
  pipeline's own tf.Example parse, must equal TFDS's generic parse of it."""
  out = {}
  for split in b.info.splits:
    src = prepare.open_split(b, split, b.name)
    tfds_parsed = prepare._as_data_source(os.fspath(b.data_path), split, b.name)
    for i in range(len(src)):
      r = src[i]
      assert r == dict(schema.from_record(tfds_parsed[i]), source=b.name), (split, i)
      r["split"] = split
      assert r["path"] not in out, f"{r['path']} in two splits"
      out[r["path"]] = r
  return out


def _identities_disjoint(records):
  where = collections.defaultdict(set)
  for r in records.values():
    if r["identity"]:
      where[r["identity"]].add(r["split"])
  leaks = {i: s for i, s in where.items() if len(s) > 1}
  assert not leaks, f"identities in several splits: {leaks}"


def test_celeba(tmp_path):
  truth = fixtures.celeba(str(tmp_path / "m"))
  b = prepare.prepare("celeba", str(tmp_path / "m"), str(tmp_path / "d"))
  recs = _records(b)
  assert len(recs) == len(truth["files"]) == 24
  for name, part, pid in zip(truth["files"], truth["partitions"], truth["identities"]):
    r = recs[f"img_align_celeba/{name}"]
    assert r["split"] == ("train", "validation", "test")[part]
    assert r["identity"] == str(pid)
    assert r["label"] == (1 if (pid - 100) % 2 == 0 else 0)
    assert len(r["subgroups"]) == 39 and "Male" not in r["subgroups"]
    assert r["image"][:2] == b"\xff\xd8"
  _identities_disjoint(recs)
  s = prepare.summary(b)
  assert s["split_method"] == "official"
  assert s["counts"]["validation"] == {"female": 0, "male": 3}  # identity 6: even → male
  assert s["bad_files"] == []


def _edit_line(path, index: int, edit):
  """Rewrites line `index` (0-based) of a fixture's annotation file with `edit`."""
  lines = path.read_text().splitlines()
  lines[index] = edit(lines[index])
  path.write_text("\n".join(lines) + "\n")


def test_celeba_malformed_annotation(tmp_path):
  fixtures.celeba(str(tmp_path))
  _edit_line(tmp_path / "list_attr_celeba.txt", 4, lambda line: line.replace(" 1", " 7", 1))
  with pytest.raises(schema.AnnotationError, match=r"list_attr_celeba.txt:5: .*attribute values"):
    prepare.prepare("celeba", str(tmp_path), str(tmp_path / "d"), strict=True)
  b = prepare.prepare("celeba", str(tmp_path), str(tmp_path / "d"))  # skipped, listed
  assert [x["where"] for x in prepare.summary(b)["bad_annotations"]] == ["list_attr_celeba.txt:5"]
  assert len(_records(b)) == 23


def test_peta_archive_folders(tmp_path):
  truth = fixtures.peta_archive(str(tmp_path / "m"))
  b = prepare.prepare("peta", str(tmp_path / "m"), str(tmp_path / "d"))
  recs = _records(b)
  assert set(recs) == set(truth)
  for path, (label, identity) in truth.items():
    assert (recs[path]["label"], recs[path]["identity"]) == (label, identity), path
  assert {r["subgroups"]["subset"] for r in recs.values()} == set(fixtures.PETA_SUBSETS)
  _identities_disjoint(recs)
  s = prepare.summary(b)
  assert "identity-disjoint" in s["split_method"]
  assert sum(s["identities"].values()) == 18


def test_peta_label_without_gender(tmp_path):
  """Real PETA's PRID 0298 (only `carryingBabyBuggy`): the person is skipped and named, the
  rest prepares; --strict stops at it."""
  truth = fixtures.peta_archive(str(tmp_path))
  _edit_line(tmp_path / "PETA dataset" / "CUHK" / "archive" / "Label.txt", 2,
             lambda line: line.replace("personalMale", "").replace("personalFemale", ""))
  with pytest.raises(schema.AnnotationError, match=r"CUHK/archive/Label.txt:3: .*neither"):
    prepare.prepare("peta", str(tmp_path), str(tmp_path / "d"), strict=True)
  s = prepare.summary(prepare.prepare("peta", str(tmp_path), str(tmp_path / "d")))
  assert [x["where"] for x in s["bad_annotations"]] == ["PETA dataset/CUHK/archive/Label.txt:3"]
  assert "neither" in s["bad_annotations"][0]["reason"]
  # The person's two images are listed too, with the line that left them out.
  assert sorted(os.path.basename(x["path"]) for x in s["bad_files"]) == [
      "003_0_FRAME_0_RGB.png", "003_1_FRAME_7_RGB.bmp"]
  assert all("Label.txt line 3 skipped" in x["reason"] for x in s["bad_files"])
  assert sum(c["female"] + c["male"] for c in s["counts"].values()) == len(truth) - 2


def test_peta_mat(tmp_path):
  truth = fixtures.peta_mat(str(tmp_path / "m"))
  b = prepare.prepare("peta", str(tmp_path / "m"), str(tmp_path / "d"))
  recs = _records(b)
  assert {p: (r["label"], r["identity"]) for p, r in recs.items()} == truth
  _identities_disjoint(recs)


@pytest.mark.parametrize("version", [1, 2])
def test_rap(tmp_path, version):
  truth = fixtures.rap(str(tmp_path / "m"), version)
  b = prepare.prepare("rap", str(tmp_path / "m"), str(tmp_path / "d"), version=f"v{version}")
  recs = _records(b)
  assert {p: (r["label"], r["identity"]) for p, r in recs.items()} == truth["labels"]
  assert prepare.summary(b)["excluded_uncertain_gender"] == 4
  if version == 1:  # the official test part is kept; validation comes out of train
    assert {p for p, r in recs.items() if r["split"] == "test"} == truth["test"] & set(recs)
    assert any(r["split"] == "validation" for r in recs.values())
  else:
    _identities_disjoint(recs)


def test_rap_wrong_first_attribute(tmp_path):
  from scipy.io import loadmat, savemat
  fixtures.rap(str(tmp_path), 2)
  mat = loadmat(tmp_path / "RAP_annotation.mat")
  mat["RAP_annotation"][0, 0]["attribute"][0, 0] = "BodyFat"
  savemat(tmp_path / "RAP_annotation.mat", {"RAP_annotation": mat["RAP_annotation"]})
  with pytest.raises(schema.AnnotationError, match=r"RAP_annotation.mat \[attribute\]: expected "
                     "'Femal' first"):
    prepare.prepare("rap", str(tmp_path), str(tmp_path / "d"), version="v2")


def test_pa100k(tmp_path):
  truth = fixtures.pa100k(str(tmp_path / "m"))
  b = prepare.prepare("pa100k", str(tmp_path / "m"), str(tmp_path / "d"))
  recs = _records(b)
  assert {p: (r["label"], r["split"]) for p, r in recs.items()} == truth
  assert prepare.summary(b)["split_method"] == "official"


def test_folder_with_csv_keeps_subgroups_and_is_cached(tmp_path):
  truth = fixtures.folder(str(tmp_path / "f"))
  b = prepare.prepare("folder", str(tmp_path / "f"), str(tmp_path / "d"))
  recs = _records(b)
  assert {p: (r["label"], r["subgroups"]) for p, r in recs.items()} == truth["images"]
  counts = collections.Counter(r["split"] for r in recs.values())
  assert counts == {"train": 20, "validation": 2, "test": 2}  # 80/10/10 of 12 + 12
  # Unchanged folder: the same prepared data, not a second copy.
  assert prepare.prepare("folder", str(tmp_path / "f"), str(tmp_path / "d")).data_path == b.data_path
  fixtures.write_image(str(tmp_path / "f" / "male" / "new.jpg"), 5)
  assert prepare.prepare("folder", str(tmp_path / "f"), str(tmp_path / "d")).data_path != b.data_path


def test_folder_without_csv_and_corrupt_files(tmp_path):
  truth = fixtures.folder(str(tmp_path / "f"), csv=False, corrupt=True)
  b = prepare.prepare("folder", str(tmp_path / "f"), str(tmp_path / "d"))
  recs = _records(b)
  assert {p: r["label"] for p, r in recs.items()} == {p: l for p, (l, _) in truth["images"].items()}
  bad = prepare.bad_files(b)
  assert [x["path"] for x in bad] == sorted(truth["bad"])
  reasons = {x["path"]: x["reason"] for x in bad}
  assert "truncated" in reasons["Male/trunc.jpg"] and "0 bytes" in reasons["female/empty.jpg"]


def test_folder_csv_bad_label(tmp_path):
  fixtures.folder(str(tmp_path))
  csv = tmp_path / "labels.csv"
  lines = csv.read_text().splitlines()
  lines[3] = lines[3].replace(",male,", ",unknown,").replace(",female,", ",unknown,")
  csv.write_text("\n".join(lines) + "\n")
  with pytest.raises(schema.AnnotationError, match=r"labels.csv:4: label 'unknown'"):
    prepare.prepare("folder", str(tmp_path), str(tmp_path / "d"))


def test_split_is_identity_disjoint_stratified_and_seeded():
  entries = [schema.Entry(path="", key=f"{i}", label=(i // 4) % 2, identity=str(i // 4))
             for i in range(400)]
  a = splits.assign(entries, seed=3)
  assert {k: len(v) for k, v in a.items()} == {"train": 320, "validation": 40, "test": 40}
  where = {}
  for name, es in a.items():
    assert abs(sum(e.label for e in es) / len(es) - 0.5) < 0.06  # label-stratified
    for e in es:
      assert where.setdefault(e.identity, name) == name
  assert a == splits.assign(list(reversed(entries)), seed=3)  # order-independent
  assert a != splits.assign(entries, seed=4)
