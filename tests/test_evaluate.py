"""Metrics, confidence intervals, ECE, temperature scaling and the report, against hand values."""
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from gender_jax.evaluation.calibration import calibrate_bundle
from gender_jax.evaluation import calibration
from gender_jax.evaluation import stats
from gender_jax import evaluate
from gender_jax.evaluation import scoring
from gender_jax.inference.bundle import Bundle
from tests.helpers import constant_bundle

# Ten images with fixed logits. p_male = softmax(logits)[1] = sigmoid(l1 - l0).
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
MARGINS = np.array([-3.0, -1.0, 0.5, -2.0, 2.0, 1.0, -0.5, 3.0, 0.25, 4.0])  # l1 - l0
LOGITS = np.stack([np.zeros(10), MARGINS], axis=1)


def test_point_metrics_match_hand_counts():
  probs = calibration.softmax(LOGITS)
  m = stats.classification_metrics(probs, LABELS, bootstrap=200)
  # predicted male where margin > 0: females 0,0,1,0 → 3/4 right; males 1,1,0,1,1,1 → 5/6 right.
  assert m["count"] == 10
  assert m["accuracy"]["value"] == pytest.approx(0.8)
  assert m["recall_female"]["value"] == pytest.approx(0.75) and m["recall_female"]["count"] == 4
  assert m["recall_male"]["value"] == pytest.approx(5 / 6) and m["recall_male"]["count"] == 6
  assert m["balanced_accuracy"]["value"] == pytest.approx((0.75 + 5 / 6) / 2)
  assert m["confusion"]["matrix"] == [[3, 1], [1, 5]]
  # AUC by pair counting over the 24 (male, female) pairs: the males at 2, 1, 3, 4 outrank all
  # four females (16); the males at -0.5 and 0.25 outrank the females at -3, -1, -2 (3 + 3).
  assert m["roc_auc"]["value"] == pytest.approx((16 + 3 + 3) / 24)


def test_wilson_intervals_match_published_values():
  # Newcombe (1998), table I: 8/10 → 0.4902–0.9433; 0/5 has upper bound z²/(n + z²).
  assert stats.wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
  z2 = stats.Z95 ** 2
  assert stats.wilson(0, 5) == pytest.approx((0.0, z2 / (5 + z2)), abs=1e-6)
  assert all(math.isnan(x) for x in stats.wilson(0, 0))
  m = stats.classification_metrics(calibration.softmax(LOGITS), LABELS, bootstrap=200)
  assert m["accuracy"]["ci"] == pytest.approx(list(stats.wilson(8, 10)))
  assert m["recall_female"]["ci"] == pytest.approx(list(stats.wilson(3, 4)))


def test_bootstrap_intervals_bracket_and_repeat():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 400)
  probs = calibration.softmax(np.stack([np.zeros(400), (2 * labels - 1) + rng.normal(0, 1.5, 400)], 1))
  a = stats.classification_metrics(probs, labels, bootstrap=300, seed=3)
  b = stats.classification_metrics(probs, labels, bootstrap=300, seed=3)
  for key in ("balanced_accuracy", "roc_auc", "ece"):
    lo, hi = a[key]["ci"]
    assert lo <= a[key]["value"] <= hi and hi - lo < 0.2, key
    assert a[key] == b[key]  # a fixed seed gives the same report
  # The weighted (bootstrap) AUC with unit weights is the plain AUC.
  assert stats.roc_auc(probs[:, 1], labels, np.ones((2, 400)))[1] == pytest.approx(a["roc_auc"]["value"])


@pytest.mark.parametrize("seed", [1, 3])
def test_ece_lies_inside_its_own_interval(seed):
  """100 well-calibrated predictions whose binned ECE the bootstrap inflates: the plain
  percentile interval lay above the figure (0.055 [0.056, 0.164] for seed 1)."""
  rng = np.random.default_rng(seed)
  p = rng.uniform(0.5, 1, 100)
  labels = np.where(rng.uniform(size=100) < p, 0, 1)
  m = stats.classification_metrics(np.stack([p, 1 - p], 1), labels, bootstrap=1000)
  lo, hi = m["ece"]["ci"]
  assert 0 <= lo <= m["ece"]["value"] <= hi, m["ece"]


def test_ece_hand_computed():
  # Confidences 0.9, 0.9, 0.6, 0.6 (bins (0.8667,0.9333] and (0.5333,0.6]); correct: 1,0 | 1,1.
  probs = np.array([[0.1, 0.9], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
  labels = np.array([1, 0, 0, 1])
  # bin 0.9: |0.5 − 0.9| · 2/4 = 0.2; bin 0.6: |1.0 − 0.6| · 2/4 = 0.2 → 0.4
  assert stats.ece(probs, labels)[0] == pytest.approx(0.4)
  bins = [b for b in stats.reliability_bins(probs, labels) if b["count"]]
  assert [(b["count"], b["accuracy"]) for b in bins] == [(2, 1.0), (2, 0.5)]


def test_temperature_scaling_hand_computed():
  # Every top logit margin is 4 and 8 of 10 are right: NLL is minimal where
  # sigmoid(4 / T) = 0.8, i.e. T = 4 / ln 4.
  labels = np.array([1] * 8 + [0] * 2)
  logits = np.tile([0.0, 4.0], (10, 1))
  t = calibration.fit_temperature(logits, labels)
  assert t == pytest.approx(4 / math.log(4), rel=1e-4)
  assert calibration.nll(logits, labels, t) < calibration.nll(logits, labels, 1.0)
  # After scaling, the confidence equals the accuracy: ECE 0.
  assert stats.ece(calibration.softmax(logits, t), labels)[0] == pytest.approx(0.0, abs=1e-4)


def test_abstain_threshold_for_target_accuracy():
  probs = calibration.softmax(LOGITS)
  conf = probs.max(1)
  t = calibration.threshold_for_accuracy(probs, LABELS, target=1.0)
  # Wrong answers have margins 0.5 and -0.5 (confidence sigmoid(0.5)); the least confident
  # right one has margin 0.25. Full accuracy means answering only confidences > sigmoid(0.5).
  answered = conf >= t
  assert answered.sum() == 7 and (probs.argmax(1) == LABELS)[answered].all()
  assert calibration.threshold_for_accuracy(probs, LABELS, target=0.5) == 0.0
  curve = stats.coverage_curve(probs, LABELS, thresholds=[0.5, t])
  assert curve[0]["coverage"] == 1.0 and curve[1]["accuracy"] == 1.0


def test_evaluate_outputs_groups_and_age_bands():
  metas = [dict(source="a" if i < 5 else "b", age=str(5 + 10 * i), race=str(i % 2)) for i in range(10)]
  r = scoring.evaluate_outputs(LOGITS, LABELS, metas, bootstrap=50, abstain_threshold=0.7)
  assert set(r["by_source"]) == {"a", "b"} and r["by_source"]["a"]["count"] == 5
  assert list(r["subgroups"]["race"]) == ["0 White", "1 Black"]
  assert list(r["subgroups"]["age_band"])[:2] == ["0-9", "10-19"]
  assert r["subgroups"]["age_band"]["70+"]["count"] == 3  # ages 75, 85, 95
  assert r["abstention"]["answered"] == int((calibration.softmax(LOGITS).max(1) >= 0.7).sum())
  # Children (ages 5) and adults (25-65) reported apart, in the tables and the headline.
  groups = r["subgroups"]["age_group"]
  assert groups["0-9 children"]["count"] == 1 and groups["20-69 adults"]["count"] == 5
  adults = [i for i in range(10) if 20 <= 5 + 10 * i <= 69]
  by_age = r["abstention"]["by_age_group"]
  assert by_age["20-69 adults"]["coverage"] == pytest.approx(
      (calibration.softmax(LOGITS[adults]).max(1) >= 0.7).mean())
  assert r["headline"]["adults_20_69"]["count"] == 5
  assert 0 <= r["headline"]["adults_20_69"]["balanced_accuracy"]["value"] <= 1
  races = r["subgroups"]["race"]
  assert r["headline"]["race_gap"]["points"] == pytest.approx(100 * abs(
      races["0 White"]["balanced_accuracy"]["value"] - races["1 Black"]["balanced_accuracy"]["value"]),
      abs=0.01)
  # The same groups within adults 20-69 only (ages 25..65: i = 2..6), and their gap.
  within = r["within_adults"]["race"]
  assert within["0 White"]["count"] == 3 and within["1 Black"]["count"] == 2
  assert "age_band" not in r["within_adults"] and "age_group" not in r["within_adults"]
  assert r["headline"]["race_gap_adults"]["points"] == pytest.approx(100 * abs(
      within["0 White"]["balanced_accuracy"]["value"]
      - within["1 Black"]["balanced_accuracy"]["value"]), abs=0.01)


def test_infants_reported_apart_and_the_race_gap_without_them():
  """One race group with many infants, each group right on everyone aged 3+ and on half its
  infants: the plain gap is the infants', and without them it is 0. Unknown ages are in
  neither group."""
  metas, labels, margins = [], [], []
  for race, infants, older in (("0", 12, 188), ("2", 80, 120)):
    for i in range(infants + older):
      infant, label = i < infants, i % 2
      right = not infant or (i // 2) % 2 == 0
      metas.append(dict(age="1" if infant else str(3 + i % 60), race=race))
      labels.append(label)
      margins.append((1.0 if label else -1.0) * (1 if right else -1))
  metas += [dict(age="", race="0"), dict(age="n/a", race="2")]
  labels += [0, 1]
  margins += [1.0, -1.0]  # both wrong
  logits = np.stack([np.zeros(len(margins)), np.array(margins)], axis=1)
  r = scoring.evaluate_outputs(logits, np.array(labels), metas, bootstrap=50,
                                abstain_threshold=0.7)  # sigmoid(1) = 0.73: all answered
  assert r["headline"]["infants_0_2"]["count"] == 92
  infants = r["abstention"]["by_age_group"][scoring.INFANTS]
  assert infants["count"] == 92 and infants["coverage"] == 1.0
  assert infants["accuracy_answered"] == pytest.approx(0.5)
  assert r["headline"]["infants_0_2"]["balanced_accuracy"]["value"] == pytest.approx(0.5)
  older = r["without_infants"]["race"]
  assert older["0 White"]["count"] == 188 and older["2 Asian"]["count"] == 120
  assert r["headline"]["race_gap_without_infants"]["points"] == pytest.approx(0.0)
  assert r["headline"]["race_gap_without_infants"]["ci"] == [0.0, 0.0]  # all right, always
  assert r["headline"]["race_gap"]["points"] > 10
  assert "age_group" not in r["without_infants"]



def test_age_standardised_race_gap_takes_out_the_age_mix():
  """Two race groups, each right on every adult and on half its children, one with many more
  children: their plain accuracies differ, over the same age mix they are equal."""
  rng = np.random.default_rng(0)
  metas, labels, margins = [], [], []
  for race, children, adults in (("0", 40, 160), ("2", 120, 80)):
    for i in range(children + adults):
      child = i < children
      label = i % 2
      right = not child or (i // 2) % 2 == 0  # half the children of each class wrong
      metas.append(dict(age="5" if child else "35", race=race))
      labels.append(label)
      margins.append((1.0 if label else -1.0) * (1 if right else -1) * rng.uniform(0.5, 2))
  labels = np.array(labels)
  logits = np.stack([np.zeros(len(margins)), np.array(margins)], axis=1)
  r = scoring.evaluate_outputs(logits, labels, metas, bootstrap=200)
  plain = r["subgroups"]["race"]
  assert plain["0 White"]["balanced_accuracy"]["value"] == pytest.approx(0.9)   # 40·½ + 160 of 200
  assert plain["2 Asian"]["balanced_accuracy"]["value"] == pytest.approx(0.7)   # 120·½ + 80 of 200
  assert r["headline"]["race_gap"]["points"] == pytest.approx(20.0)
  # The gap between 200 and 200 images has its own CI, well away from 0 here.
  lo, hi = r["headline"]["race_gap"]["ci"]
  assert 8 < lo < 20 < hi < 32
  # The whole set's mix: 160 children, 240 adults → 0.4·½ + 0.6·1 = 0.8 for both groups.
  std = r["age_standardised"]["race"]
  for race in ("0 White", "2 Asian"):
    assert std[race]["value"] == pytest.approx(0.8) and std[race]["coverage"] == 1.0
    lo, hi = std[race]["ci"]
    assert lo < 0.8 < hi
  assert r["headline"]["race_gap_age_standardised"]["points"] == pytest.approx(0.0, abs=1e-6)
  # The other way round: the set's accuracy per age group (children ½, adults 1) over each
  # group's own mix explains the whole plain gap here.
  expected = r["age_mix_expected"]["race"]
  assert expected["0 White"]["value"] == pytest.approx(0.2 * 0.5 + 0.8)
  assert expected["2 Asian"]["value"] == pytest.approx(0.6 * 0.5 + 0.4)
  assert r["headline"]["race_gap_from_age_mix"]["points"] == pytest.approx(20.0)
  # A group without children is standardised over the adults' share alone, and says so.
  only = stats.standardised_balanced_accuracy(np.ones(4), np.array([0, 1, 0, 1]),
                                              np.array(["a"] * 4), {"a": 0.6, "c": 0.4})
  assert only["value"] == 1.0 and only["coverage"] == pytest.approx(0.6)

def test_evaluate_cli_writes_report_and_plots(tmp_path):
  pytest.importorskip("matplotlib", reason="plots need the [report] extra")
  bundle = constant_bundle(tmp_path / "bundle", bias=(0.0, 1.0))
  rng = np.random.default_rng(0)
  rows = ["path,label,age,race"]
  for cls, n in (("female", 3), ("male", 5)):
    os.makedirs(tmp_path / "data" / cls)
    for i in range(n):
      Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(
          tmp_path / "data" / cls / f"{i}.png")
      rows.append(f"{cls}/{i}.png,{cls},{10 * i + 3},{i % 2}")
  (tmp_path / "data" / "labels.csv").write_text("\n".join(rows) + "\n")
  os.makedirs(tmp_path / "other" / "female")
  os.makedirs(tmp_path / "other" / "male")
  Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(tmp_path / "other/male/a.png")
  evaluate.main(["--bundle", bundle, "--data", f"utk={tmp_path / 'data'}", "--data",
                 f"other={tmp_path / 'other'}", "--out", str(tmp_path / "report"),
                 "--bootstrap", "50", "--quiet", "--tta", "flip"])
  report = json.loads((tmp_path / "report" / "report.json").read_text())
  # The model says male (p = sigmoid(1)) for every image: 5 of 8 right.
  assert report["by_source"]["utk"]["count"] == 8 and report["by_source"]["other"]["count"] == 1
  assert report["by_source"]["utk"]["accuracy"]["value"] == pytest.approx(5 / 8)
  assert report["count"] == 9 and report["overall"]["accuracy"]["value"] == pytest.approx(6 / 9)
  assert report["overall"]["recall_male"]["value"] == 1.0
  assert report["overall"]["mean_confidence"] == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-5)
  assert set(report["subgroups"]) == {"age_band", "age_group", "race"}
  for png in ("reliability.png", "coverage.png", "subgroup_age_band.png", "subgroup_race.png"):
    assert (tmp_path / "report" / png).stat().st_size > 1000
  md = (tmp_path / "report" / "report.md").read_text()
  assert "## By race" in md and "- Children 0-9: balanced accuracy" in md
  matrix = json.loads((tmp_path / "report" / "matrix.json").read_text())
  assert matrix["accuracy"]["cols"] == ["other", "utk"]
  assert matrix["accuracy"]["values"][0] == pytest.approx([1.0, 5 / 8])


def test_calibrate_bundle_stores_temperature(tmp_path):
  bundle = constant_bundle(tmp_path / "bundle", bias=(0.0, 4.0))
  # 8 male, 2 female, all predicted male with margin 4 → T = 4 / ln 4 (as above).
  records = [{"image": np.full((16, 16, 3), 9 * i, np.uint8), "label": int(i < 8)}
             for i in range(10)]
  summary = calibrate_bundle(bundle, records, target_accuracy=0.99, batch_size=4)
  assert summary["temperature"] == pytest.approx(4 / math.log(4), rel=1e-3)
  assert summary["abstain_threshold"] == 1.0  # 0.8 accuracy can never reach 0.99
  loaded = Bundle(bundle)
  assert loaded.calibration["temperature"] == pytest.approx(summary["temperature"])
  probs = np.asarray(loaded.probs_fn()(np.zeros((2, 16, 16, 3), np.uint8)))
  assert probs[:, 1] == pytest.approx(0.8, abs=1e-3)
  assert all(d["abstained"] for d in loaded.decide(probs))
