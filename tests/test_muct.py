"""MUCT: both published layouts prepare, misnamed files are reported, and a fixture in the real
naming trains, evaluates and reports accuracy per camera."""
import collections
import os

import pytest

pytest.importorskip("tensorflow_datasets")

from tests.fixtures import datasets as fixtures

from gender_jax.data import muct, prepare  # noqa: E402


def test_parse_name():
  assert muct.parse_name("i000qa-fn.jpg") == dict(subject="000", session="q", camera="a",
                                                  gender="f", rest="n")
  assert muct.parse_name("i123se-mg.jpg")["gender"] == "m"
  for bad in ("i01qa-fn.jpg", "i000qa-xn.jpg", "i000qf-fn.jpg", "000qa-fn.jpg", "i000qa-fn.png"):
    assert muct.parse_name(bad) is None, bad


def _records(b):
  out = {}
  for split in b.info.splits:
    src = prepare.open_split(b, split, "muct")
    for i in range(len(src)):
      out[src[i]["path"]] = dict(src[i], split=split)
  return out


@pytest.mark.parametrize("archives", [False, True], ids=["jpg", "archives"])
def test_prepare_both_layouts(tmp_path, archives):
  truth = fixtures.muct(str(tmp_path / "m"), archives=archives)
  b = prepare.prepare("muct", str(tmp_path / "m"), str(tmp_path / "d"))
  recs = {os.path.basename(p): r for p, r in _records(b).items()}
  assert set(recs) == set(truth["images"])
  for name, t in truth["images"].items():
    r = recs[name]
    assert (r["label"], r["identity"]) == (t["label"], t["identity"])
    assert r["subgroups"] == {"camera": t["camera"], "session": t["session"]}
  where = collections.defaultdict(set)
  for r in recs.values():
    where[r["identity"]].add(r["split"])
  assert all(len(s) == 1 for s in where.values())  # identity-disjoint by subject
  s = prepare.summary(b)
  assert "identity-disjoint" in s["split_method"]
  assert sorted(os.path.basename(x["path"]) for x in s["bad_files"]) == sorted(truth["bad"])
  assert all("MUCT" in x["reason"] for x in s["bad_files"])
  if archives:
    assert all(x["path"].startswith("muct-a-jpg-v1.tar.gz/jpg/") for x in s["bad_files"])


@pytest.mark.slow  # ~40 s alone; minutes on a shared 2-core machine
def test_trains_and_reports_per_camera(tmp_path):
  from gender_jax.evaluation import datasets as eval_data
  from gender_jax.evaluation import scoring
  from gender_jax.train import loop as trainer
  from tests.helpers import tiny_config
  fixtures.muct(str(tmp_path / "m"))
  config = tiny_config(total_steps=3, eval_every_steps=3,
                       **{"checkpoint.checkpoint_every_steps": 3})
  del config.data.sources["synthetic"]
  config.data.sources.muct = dict(weight=1.0, manual_dir=str(tmp_path / "m"),
                                  data_dir=str(tmp_path / "d"))
  config.after_training = ""
  workdir = str(tmp_path / "run")
  assert trainer.train_and_evaluate(config, workdir)["step"] == 3
  report = scoring.evaluate_bundle(os.path.join(workdir, "bundle"),
                                    eval_data.load(None, workdir=workdir),
                                    str(tmp_path / "report"), bootstrap=20, progress=False)
  assert report["count"] == 10  # two test subjects × five cameras
  cameras = report["subgroups"]["camera"]
  assert list(cameras) == list("abcde") and all(m["count"] == 2 for m in cameras.values())
  assert "camera" in open(tmp_path / "report" / "report.md").read()
