"""Finite or nothing: a diverging run stops (exit 1, one line, no bundle), a bundle holding NaN
is refused by every loader, and no answer carries a NaN."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from gender_jax.inference import bundle as bundle_lib
from gender_jax.train import finite, loop as trainer
from tests.helpers import REPO, constant_bundle, tiny_config, train_cli


def test_huge_learning_rate_stops_the_run_without_a_bundle(tmp_path):
  config = tiny_config(**{"optimizer.lr": 1e9, "after_training": ""})
  with pytest.raises(finite.TrainingFailed, match=r"non-finite values at step \d+: .*"
                     r"lower optimizer.lr \(now 1e\+09\)"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "bundle")
  # The checkpoints kept hold finite weights only (a save checks them first).
  steps = [s for s in os.listdir(tmp_path / "checkpoints") if s.isdigit()]
  assert all(int(s) <= 2 for s in steps), steps


@pytest.mark.slow
def test_huge_learning_rate_from_the_command_line_exits_1_in_one_line(tmp_path):
  proc = train_cli(str(tmp_path), "--config.optimizer.lr=1e9", "--config.total_steps=6",
                   "--config.data.sources.synthetic.train_size=256",
                   "--config.data.image_size=16", "--config.data.batch_size=32",
                   "--config.data.eval_batch_size=32", "--config.log_every=1")
  out, _ = proc.communicate(timeout=300)
  errors = [line for line in out.splitlines() if line.startswith("error:")]
  assert proc.returncode == 1, out[-2000:]
  assert len(errors) == 1 and "non-finite" in errors[0] and "optimizer.lr" in errors[0], errors
  assert "Traceback" not in out
  assert not os.path.exists(tmp_path / "bundle")


def test_guard_skips_up_to_the_allowed_bad_steps_then_stops():
  config = tiny_config(max_nonfinite_steps=2)
  guard = finite.FiniteGuard(config)

  def metrics(loss, grad_norm=1.0):
    return {"loss": (np.float32(loss * 32), np.float32(32)),
            "grad_norm": (np.float32(grad_norm), np.float32(1))}
  guard.check(1, metrics(0.7))
  guard.check(2, metrics(np.nan))
  guard.check(3, metrics(0.7, np.inf))  # 2 in a row: allowed
  guard.check(4, metrics(0.7))          # a good step resets the count
  guard.check(5, metrics(np.inf))
  guard.check(6, metrics(np.nan))
  with pytest.raises(finite.TrainingFailed, match="step 7: loss nan.*3 such steps in a row"):
    guard.check(7, metrics(np.nan))


def test_skipped_steps_leave_the_weights_finite(tmp_path):
  """With max_nonfinite_steps > 0 the step drops a NaN update: lr 1e9 then stops the run on
  its bad steps, and the state never holds a NaN (every save checks it)."""
  config = tiny_config(**{"optimizer.lr": 1e9, "max_nonfinite_steps": 1,
                          "after_training": ""})
  with pytest.raises(finite.TrainingFailed, match="2 such steps in a row"):
    trainer.train_and_evaluate(config, str(tmp_path))


@pytest.fixture(scope="module")
def nan_bundle(tmp_path_factory):
  return constant_bundle(tmp_path_factory.mktemp("nan") / "bundle", bias=(np.nan, 0.0))


def test_bundle_with_nan_weights_is_refused(nan_bundle):
  with pytest.raises(bundle_lib.NonFiniteWeights, match="NaN or inf weights .*fc/bias"):
    bundle_lib.Bundle(nan_bundle)
  with pytest.raises(bundle_lib.NonFiniteWeights):
    bundle_lib.load_bundle(nan_bundle)


def test_predict_refuses_a_nan_bundle_in_one_line(nan_bundle, tmp_path):
  from PIL import Image
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
  proc = subprocess.run([sys.executable, "-m", "gender_jax.predict", str(tmp_path / "a.png"),
                         "--bundle", nan_bundle, "--out", str(tmp_path / "p.csv"),
                         "--faces", "off"],
                        cwd=REPO, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1 and "NaN or inf weights" in lines[0], lines
  assert not os.path.exists(tmp_path / "p.csv")


def test_decide_never_answers_nan():
  bundle = bundle_lib.Bundle.__new__(bundle_lib.Bundle)
  bundle.calibration, bundle.class_names = {"abstain_threshold": 0.0}, ("female", "male")
  with pytest.raises(FloatingPointError):
    bundle.decide(np.array([[np.nan, np.nan]]))
