"""Ordinary mistakes, run through the real command lines: one `error:` line that names the
offending path or key, the right exit status, and no traceback unless --debug."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, constant_bundle
from tests.xla_flags import xla_flags

# PYTHONPATH: the checkout under test, whichever copy the environment has installed.
ENV = dict(os.environ, XLA_FLAGS=xla_flags(8), PYTHONPATH=REPO,
           JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
ENV.pop("GENDER_JAX_DEBUG", None)
DEMO = os.path.join(REPO, "configs", "demo.py")


def cli(module, *args, cwd=REPO, timeout=120):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV, text=True,
                        capture_output=True, timeout=timeout)


def assert_error(result, *named, status=2):
  """Exit status, one `error:` line naming each of `named`, no traceback."""
  out = result.stdout + result.stderr
  assert result.returncode == status, out
  assert "Traceback" not in out, out
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1, out
  for text in named:
    assert text in lines[0], lines[0]
  return lines[0]


def train(workdir, *overrides, **kw):
  return cli("gender_jax.train", "--config", DEMO, "--workdir", str(workdir), *overrides, **kw)


def write_images(folder, n, seed=0):
  from PIL import Image
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), np.uint8)).save(
        os.path.join(folder, f"{i}.jpg"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
  return constant_bundle(tmp_path_factory.mktemp("cli") / "bundle")


# ----------------------------------------------------------------------------- train
def test_config_file_missing(tmp_path):
  assert_error(cli("gender_jax.train", "--config", "configs/nope.py", "--workdir",
                   str(tmp_path / "run")), "configs/nope.py", "does not exist")
  assert not (tmp_path / "run").exists()


def test_config_key_typo(tmp_path):
  assert_error(train(tmp_path / "run", "--config.data.batch_sise=8"),
               "batch_sise", 'Did you mean "batch_size"')


def test_stage_lr_multiplier_from_the_command_line(tmp_path):
  """Any stage's multiplier can be set on the command line (not only those the config file
  lists); a value that is not a number, or a name that is not a stage, stops in one line."""
  shown = train(tmp_path / "run", "--show_config", "--config.optimizer.lr_mult.layer1=0.25")
  assert shown.returncode == 0, shown.stderr
  assert "layer1: 0.25" in shown.stdout
  assert_error(train(tmp_path / "run", "--config.optimizer.lr_mult.layer1=fast"),
               "lr_mult.layer1=fast", "number")
  line = assert_error(train(tmp_path / "run", "--config.total_steps=1",
                            "--config.optimizer.lr_mult.layr1=0.25"), "'layr1'", "not a stage")
  assert "layer1" in line  # the stages it could have meant


def test_batch_not_divisible_stops_before_the_workdir(tmp_path):
  line = assert_error(train(tmp_path / "run", "--config.data.batch_size=12"),
                      "data.batch_size=12", "8 devices", "--config.data.batch_size=16")
  assert line
  assert not (tmp_path / "run").exists()


def test_data_folder_missing_or_without_classes(tmp_path):
  assert_error(train(tmp_path / "run", f"--config.data.folder={tmp_path}/nope"),
               f"{tmp_path}/nope", "does not exist")
  (tmp_path / "photos").mkdir()
  assert_error(train(tmp_path / "run", f"--config.data.folder={tmp_path}/photos"),
               f"{tmp_path}/photos", "male/")
  assert not (tmp_path / "run").exists()


def test_init_from_not_a_weights_directory(tmp_path):
  line = assert_error(train(tmp_path / "run", f"--config.init_from={tmp_path}/weights"),
                      f"{tmp_path}/weights", "does not exist")
  assert "pick one" not in line
  assert_error(train(tmp_path / "run", f"--config.init_from={tmp_path}"), "meta.json")


def test_debug_shows_the_traceback(tmp_path):
  result = train(tmp_path / "run", "--config.data.batch_size=12", "--debug")
  assert result.returncode != 0 and "Traceback" in result.stderr


def test_help_lists_configs_and_exits_0():
  result = cli("gender_jax.train", "--help")
  assert result.returncode == 0, result.stderr
  for text in ("configs/demo.py", "configs/resnet.py", "--show-config", "--config.data.batch_size"):
    assert text in result.stdout


def test_config_path_from_another_directory(tmp_path):
  result = cli("gender_jax.train", "--config", DEMO, "--show-config", cwd=tmp_path)  # dashed alias
  assert result.returncode == 0, result.stderr
  assert "batch_size: 64" in result.stdout


@pytest.mark.slow
def test_one_class_folder_stops_with_the_counts(tmp_path):
  write_images(tmp_path / "photos" / "male", 20)
  (tmp_path / "photos" / "female").mkdir()
  assert_error(train(tmp_path / "run", f"--config.data.folder={tmp_path}/photos",
                     f"--config.data.data_dir={tmp_path}/prepared", timeout=240),
               f"{tmp_path}/photos", "one class", "female 0")


def test_mixture_is_announced(caplog, monkeypatch):
  import logging
  from gender_jax.train import preflight
  from tests.helpers import tiny_config
  config = tiny_config()
  with config.unlocked():
    config.data.sources.other = dict(weight=3.0, train_size=16, validation_size=8,
                                     image_size=20, seed=1)
  # A second synthetic source stands in for the user's folder: no preparation needed.
  from gender_jax.data import sources
  monkeypatch.setitem(sources.REGISTRY, "other", sources.REGISTRY["synthetic"])
  with caplog.at_level(logging.INFO):
    preflight.log_data_sanity(config)
  text = caplog.text
  assert "data synthetic: mixing weight 1.00 (25% of batches)" in text
  assert "data other: mixing weight 3.00 (75% of batches)" in text
  assert "training on a mixture of other, synthetic" in text


# ----------------------------------------------------------------------------- inference tools
def test_bundle_that_does_not_exist(tmp_path):
  line = assert_error(cli("gender_jax.predict", "--bundle", f"{tmp_path}/nope", str(tmp_path),
                          "--out", f"{tmp_path}/p.csv"), f"{tmp_path}/nope", "does not exist")
  assert "meta.json" not in line


def test_bundle_missing_a_weights_file(bundle, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(bundle, broken)
  for name in os.listdir(broken / "weights" / "d"):
    os.remove(broken / "weights" / "d" / name)
  write_images(tmp_path / "imgs", 1)
  assert_error(cli("gender_jax.predict", "--bundle", str(broken), str(tmp_path / "imgs"),
                   "--out", f"{tmp_path}/p.csv", "--quiet"), str(broken), "copy the whole")


def test_predict_nothing_found(bundle, tmp_path):
  line = assert_error(cli("gender_jax.predict", "--bundle", bundle, f"{tmp_path}/nope.jpg",
                          "--out", f"{tmp_path}/p.csv"), f"{tmp_path}/nope.jpg", "read 0",
                      status=1)
  assert line
  (tmp_path / "empty").mkdir()
  assert_error(cli("gender_jax.predict", "--bundle", bundle, str(tmp_path / "empty"),
                   "--out", f"{tmp_path}/p.csv"), "read 0", "no image files", status=1)


def test_crops_tta_with_faces_names_what_works(bundle, tmp_path):
  write_images(tmp_path / "imgs", 1)
  assert_error(cli("gender_jax.predict", "--bundle", bundle, str(tmp_path / "imgs"), "--out",
                   f"{tmp_path}/p.csv", "--faces", "detect", "--tta", "flip+crops"),
               "--tta flip+crops", "--faces off only", "--tta none or flip")
  assert_error(cli("gender_jax.evaluate", "--bundle", bundle, "--data", str(tmp_path / "imgs"),
                   "--out", f"{tmp_path}/r", "--faces", "detect", "--tta", "crops"),
               "--tta crops", "--tta none or flip")


def test_evaluate_on_a_run_without_a_bundle(tmp_path):
  assert_error(cli("gender_jax.evaluate", "--workdir", str(tmp_path), "--out",
                   f"{tmp_path}/report"), str(tmp_path), "no bundle")


def test_export_into_an_unwritable_place_is_checked_first(bundle, tmp_path):
  (tmp_path / "a_file").write_text("")  # under a file: unwritable even for root
  result = cli("gender_jax.export", "--bundle", bundle, "--format", "onnx",
               "--out", f"{tmp_path}/a_file/model.onnx")
  assert_error(result, f"{tmp_path}/a_file")
  if os.geteuid() != 0:  # root writes into read-only folders
    (tmp_path / "ro").mkdir(mode=0o555)
    assert_error(cli("gender_jax.export", "--bundle", bundle, "--format", "onnx",
                     "--out", f"{tmp_path}/ro/model.onnx"), "not writable")


# Every command that reads a bundle, with the arguments it needs besides the bundle.
BUNDLE_COMMANDS = {
    "gender_jax.predict": ["IMG", "--out", "OUT/p.csv"],
    "gender_jax.evaluate": ["--data", "IMG", "--out", "OUT/report"],
    "gender_jax.calibrate": ["--data", "IMG"],
    "gender_jax.clean": ["--data", "IMG", "--out", "OUT/clean"],
    "gender_jax.export": ["--format", "onnx", "--out", "OUT/m.onnx"],
}


@pytest.mark.parametrize("module,form", [(m, "--bundle") for m in sorted(BUNDLE_COMMANDS)] + [
    (m, "--workdir") for m in ("gender_jax.predict", "gender_jax.evaluate", "gender_jax.calibrate")])
def test_every_command_answers_a_missing_bundle_in_one_line(module, form, tmp_path):
  for label in ("male", "female"):
    write_images(tmp_path / "img" / label, 2, seed=len(label))
  args = [a.replace("IMG", str(tmp_path / "img")).replace("OUT", str(tmp_path / "out"))
          for a in BUNDLE_COMMANDS[module]]
  assert_error(cli(module, form, str(tmp_path / "nope"), *args, timeout=90),
               str(tmp_path / "nope"))
  assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize("module", ["gender_jax.predict", "gender_jax.evaluate",
                                    "gender_jax.export", "gender_jax.convert", "gender_jax.clean",
                                    "gender_jax.calibrate"])
def test_every_flag_has_help_with_an_example(module):
  text = cli(module, "--help", timeout=60).stdout
  flags = [line.split()[0] for line in text.splitlines() if line.startswith("  --")]
  flags = [f for f in flags if f != "--debug" and not f.startswith("--help")]
  assert flags, text
  assert " ".join(text.split()).lower().count("example") >= len(flags), (module, flags, text)


def test_prepare_log_is_clean_in_a_file(tmp_path):
  # Captured output is a file, not a terminal: one progress line per 10%, no cursor codes,
  # no "Downloading" for a local folder, and TFDS's notices kept out.
  for label in ("male", "female"):
    write_images(tmp_path / "photos" / label, 10, seed=len(label))
  result = cli("gender_jax.data", "prepare", "--source", "folder",
               "--manual-dir", str(tmp_path / "photos"), "--data-dir", str(tmp_path / "data"))
  out = result.stdout + result.stderr
  assert result.returncode == 0, out
  assert "\x1b[" not in out and "\r" not in out, out
  assert "Downloading" not in out and "dataset_info.json" not in out, out
  progress = [line for line in result.stderr.splitlines() if line.startswith("folder: ") and
              "images (" in line]
  assert progress[-1].startswith("folder: 20/20 images (100%"), out
  assert len(progress) == 11, progress  # the first image, then every 10%
