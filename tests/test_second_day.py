"""A user's second day, through the real command lines: rerunning train on a workdir, folders
laid out the user's way, calibrating, exporting, evaluating. Each case: the exit status, the
one line naming the thing, and nothing written where nothing should be. The rerun cases share
one tiny trained workdir (slow tier); the rest need no training."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from tests.helpers import constant_bundle
from tests.test_cli_errors import assert_error, cli, train, write_images

TINY = ["--config.data.sources.synthetic.train_size=256",
        "--config.data.sources.synthetic.validation_size=64",
        "--config.data.sources.synthetic.image_size=20", "--config.data.image_size=16",
        "--config.data.batch_size=32", "--config.data.eval_batch_size=32",
        "--config.total_steps=4", "--config.eval_every_steps=4", "--config.log_every=2"]


def tree_bytes(folder) -> dict[str, str]:
  """Every file under `folder` → its SHA-256: a byte-for-byte fingerprint."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
  return constant_bundle(tmp_path_factory.mktemp("day2") / "bundle")


# ----------------------------------------------------------------------------- train values
@pytest.mark.parametrize("override,named", [
    ("--config.total_steps=-5", "total_steps=-5"),
    ("--config.total_steps=0", "no length"),
    ("--config.optimizer.lr=-0.01", "optimizer.lr=-0.01"),
    ("--config.data.eval_batch_size=0", "data.eval_batch_size=0"),
    ("--config.model.arch=resnet_tyni", "resnet_tiny"),
])
def test_train_values_are_checked_before_the_workdir(tmp_path, override, named):
  result = train(tmp_path / "run", override)
  line = assert_error(result, named)
  assert len(line) < 600 and not (tmp_path / "run").exists()


def test_train_workdir_that_is_a_file(tmp_path):
  (tmp_path / "run").write_text("notes")
  assert_error(train(tmp_path / "run"), f"{tmp_path}/run", "is a file")
  assert (tmp_path / "run").read_text() == "notes"


# ----------------------------------------------------------------------------- folders
def _folder(root, names=("Male", "Female"), n=6):
  for i, name in enumerate(names):
    write_images(root / name, n, seed=i)
  return root


def _prepare(folder, data_dir):
  return cli("gender_jax.data", "prepare", "--source", "folder", "--manual-dir", str(folder),
             "--data-dir", str(data_dir))


@pytest.mark.parametrize("names", [("Male", "Female"), ("men", "women"), ("MAN", "Woman")])
def test_prepare_takes_the_class_folders_the_readme_promises(tmp_path, names):
  result = _prepare(_folder(tmp_path / "photos", names), tmp_path / "data")
  assert result.returncode == 0, result.stdout + result.stderr
  assert "folder: prepared" in result.stdout, result.stdout


def test_prepare_takes_a_folder_with_only_labels_csv(tmp_path):
  write_images(tmp_path / "photos" / "all", 8)
  rows = ["path,label"] + [f"all/{i}.jpg,{'male' if i % 2 else 'female'}" for i in range(8)]
  (tmp_path / "photos" / "labels.csv").write_text("\n".join(rows) + "\n")
  result = _prepare(tmp_path / "photos", tmp_path / "data")
  assert result.returncode == 0, result.stdout + result.stderr


def test_train_takes_the_folder_layouts_too(tmp_path):
  """train's folder check passes for Men/ Women/ (the next check, a bad total_steps, stops it)."""
  folder = _folder(tmp_path / "photos", ("Men", "Women"))
  result = train(tmp_path / "run", f"--config.data.folder={folder}", "--config.total_steps=-1")
  assert_error(result, "total_steps=-1")


def test_folder_without_classes_is_one_line_everywhere(tmp_path, bundle):
  write_images(tmp_path / "photos" / "people", 4)
  photos = str(tmp_path / "photos")
  assert_error(_prepare(photos, tmp_path / "data"), photos, "labels.csv")
  assert_error(train(tmp_path / "run", f"--config.data.folder={photos}"), photos, "labels.csv")
  assert_error(cli("gender_jax.evaluate", "--bundle", bundle, "--data", photos, "--out",
                   str(tmp_path / "report")), photos, "labels.csv")
  assert not any((tmp_path / p).exists() for p in ("data", "run", "report"))


def test_labels_csv_against_the_folders_is_reported(tmp_path):
  folder = _folder(tmp_path / "photos", ("male", "female"), n=4)
  rows = ["path,label"]
  for cls in ("male", "female"):
    for i in range(4):
      wrong = cls == "male" and i < 2  # two male/ images labelled female in the CSV
      rows.append(f"{cls}/{i}.jpg,{'female' if wrong or cls == 'female' else 'male'}")
  (folder / "labels.csv").write_text("\n".join(rows) + "\n")
  result = _prepare(folder, tmp_path / "data")
  assert result.returncode == 0, result.stderr
  line = next(line for line in result.stderr.splitlines() if "contradicts" in line)
  assert "2 images" in line and "male/0.jpg" in line and "male/1.jpg" in line, line


# ----------------------------------------------------------------------------- calibrate
def test_calibrate_checks_its_values_and_data_first(tmp_path, bundle):
  before = tree_bytes(bundle)
  assert_error(cli("gender_jax.calibrate", "--bundle", bundle, "--data", str(tmp_path),
                   "--target-accuracy", "1.5"), "--target-accuracy 1.5", "between 0.5 and 1")
  assert_error(cli("gender_jax.calibrate", "--bundle", bundle), "--data")
  run = tmp_path / "run"
  shutil.copytree(bundle, run / "bundle")
  assert_error(cli("gender_jax.calibrate", "--workdir", str(run)), "config.json", "--data")
  assert tree_bytes(bundle) == before


def test_calibrate_says_what_it_wrote_and_the_coverage(tmp_path, bundle):
  mine = shutil.copytree(bundle, tmp_path / "bundle")
  folder = _folder(tmp_path / "photos", ("male", "female"), n=10)
  result = cli("gender_jax.calibrate", "--bundle", str(mine), "--data", str(folder),
               "--target-accuracy", "0.99")
  assert result.returncode == 0, result.stderr
  line = result.stderr.strip().splitlines()[-1]
  # The constant model is right on half: no threshold reaches 0.99, so nothing is answered.
  assert line.startswith("wrote temperature") and "meta.json" in line, line
  assert "answers 0%" in line and "uncertain" in line and "lower --target-accuracy" in line


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_checks_split_and_out_first(tmp_path, bundle):
  (tmp_path / "report.md").write_text("mine")
  assert_error(cli("gender_jax.evaluate", "--bundle", bundle, "--out",
                   str(tmp_path / "report.md")), "report.md", "is a file")
  assert (tmp_path / "report.md").read_text() == "mine"
  line = assert_error(cli("gender_jax.evaluate", "--bundle", bundle, "--split", "val",
                          "--out", str(tmp_path / "r")), "'val'")
  assert "train, validation, test" in line
  assert_error(cli("gender_jax.evaluate", "--bundle", bundle, "--data", str(tmp_path),
                   "--calibrate-on", str(tmp_path), "--target-accuracy", "1.5",
                   "--out", str(tmp_path / "r")), "--target-accuracy 1.5")
  assert not (tmp_path / "r").exists()


def test_evaluate_summary_names_the_data_given(tmp_path, bundle, capsys):
  from gender_jax import evaluate
  folder = _folder(tmp_path / "mine", ("male", "female"), n=3)
  evaluate.main(["--bundle", bundle, "--data", str(folder), "--out", str(tmp_path / "r"),
                 "--bootstrap", "20", "--quiet"])
  line = capsys.readouterr().err.strip().splitlines()[-1]
  assert f"on {folder}: n=6" in line, line


def test_what_a_command_wrote_is_kept_unless_asked(tmp_path, bundle):
  """A rerun of evaluate, predict, clean or export onto its earlier --out stops in one line,
  the earlier output untouched; --overwrite replaces it."""
  from gender_jax import evaluate
  folder = _folder(tmp_path / "mine", ("male", "female"), n=2)
  (tmp_path / "report").mkdir()
  (tmp_path / "report" / "report.json").write_text("mine")
  (tmp_path / "preds.csv").write_text("mine")
  (tmp_path / "clean").mkdir()
  (tmp_path / "clean" / "summary.json").write_text("mine")
  (tmp_path / "m.onnx").write_text("mine")
  data = ["--data", str(folder)]
  for module, out, args in (("gender_jax.evaluate", "report", ["--bundle", bundle, *data]),
                            ("gender_jax.predict", "preds.csv", ["--bundle", bundle, str(folder)]),
                            ("gender_jax.clean", "clean", data),
                            ("gender_jax.export", "m.onnx", ["--bundle", bundle, "--format", "onnx"])):
    assert_error(cli(module, *args, "--out", str(tmp_path / out)), out, "already holds",
                 "--overwrite")
  assert (tmp_path / "m.onnx").read_text() == "mine"
  assert (tmp_path / "report" / "report.json").read_text() == "mine"
  assert (tmp_path / "preds.csv").read_text() == "mine"
  assert (tmp_path / "clean" / "summary.json").read_text() == "mine"
  evaluate.main(["--bundle", bundle, "--data", str(folder), "--out", str(tmp_path / "report"),
                 "--bootstrap", "20", "--quiet", "--overwrite"])
  assert json.loads((tmp_path / "report" / "report.json").read_text())["count"] == 4


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("fmt,out,named", [
    ("tflite", "model.onnx", ".tflite"), ("onnx", "model.tflite", ".onnx"),
    ("onnx", "a_folder", "is a folder"), ("saved_model", "model.tflite", "folder name")])
def test_export_out_against_format_first(tmp_path, bundle, fmt, out, named):
  (tmp_path / "a_folder").mkdir()
  result = cli("gender_jax.export", "--bundle", bundle, "--format", fmt,
               "--out", str(tmp_path / out))
  assert_error(result, named)
  assert sorted(os.listdir(tmp_path)) == ["a_folder"] and not os.listdir(tmp_path / "a_folder")


def test_one_contract_per_model_file(tmp_path):
  from gender_jax import export
  paths = {export.contract_path(tmp_path / f"model.{ext}") for ext in ("tflite", "onnx")}
  assert paths == {tmp_path / "model.tflite.json", tmp_path / "model.onnx.json"}


# ----------------------------------------------------------------------------- reruns
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One 4-step demo run, its bundle then calibrated with an explicit threshold."""
  workdir = tmp_path_factory.mktemp("rerun") / "run"
  result = train(workdir, *TINY, timeout=400)
  assert result.returncode == 0, result.stdout + result.stderr
  cal = cli("gender_jax.calibrate", "--workdir", str(workdir), "--abstain-threshold", "0.544")
  assert cal.returncode == 0, cal.stderr
  return workdir, result.stdout


@pytest.mark.slow
def test_training_ends_with_a_summary(trained):
  workdir, output = trained
  last = output.strip().splitlines()[-1]
  assert last.startswith("trained to step 4; validation: val_accuracy"), last
  assert last.endswith(f"bundle: {workdir}/bundle"), last


@pytest.mark.slow
def test_rerun_of_a_finished_run_rewrites_nothing(trained):
  workdir, _ = trained
  before = tree_bytes(workdir / "bundle")
  config = (workdir / "config.json").read_bytes()
  result = train(workdir, *TINY)
  assert result.returncode == 0, result.stderr
  line = result.stdout.strip().splitlines()[-1]
  assert "already trained to step 4" in line and f"{workdir}/bundle" in line, line
  assert "--config.total_steps=8 --continue" in line and "new --workdir" in line
  assert tree_bytes(workdir / "bundle") == before
  assert (workdir / "config.json").read_bytes() == config
  meta = json.loads((workdir / "bundle" / "meta.json").read_text())
  assert meta["calibration"]["abstain_threshold"] == pytest.approx(0.544)


@pytest.mark.slow
def test_rerun_with_another_config_is_refused_naming_the_keys(trained):
  workdir, _ = trained
  before = tree_bytes(workdir)
  line = assert_error(train(workdir, *TINY, "--config.optimizer.lr=0.01",
                            "--config.data.batch_size=64"),
                      "optimizer.lr 0.003 → 0.01", "data.batch_size 32 → 64", "--continue")
  assert "model" not in line
  line = assert_error(train(workdir, *TINY, "--config.model.arch=vgg_tiny", "--continue"),
                      "model.arch", "new --workdir")
  assert len(line) < 300, line  # not Orbax's tree diff
  assert_error(train(workdir, *TINY, "--config.optimizer.lr=0.01", "--continue"),
               "total_steps=4", "nothing to train")
  assert tree_bytes(workdir) == before


@pytest.mark.slow
def test_continue_trains_longer_and_keeps_the_calibrated_bundle(trained, tmp_path):
  workdir = shutil.copytree(trained[0], tmp_path / "run")
  before = tree_bytes(workdir / "bundle")
  result = train(workdir, *TINY, "--config.total_steps=8", "--continue", timeout=400)
  assert result.returncode == 0, result.stdout + result.stderr
  assert f"kept the previous bundle (step 4) as {workdir}/bundle-step4" in result.stdout
  assert tree_bytes(workdir / "bundle-step4") == before
  assert json.loads((workdir / "bundle" / "meta.json").read_text())["step"] == 8
  assert result.stdout.strip().splitlines()[-1].startswith("trained to step 8")
