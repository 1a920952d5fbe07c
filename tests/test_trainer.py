"""The trainer on 8 fake CPU devices: sharding, resume, restore, fine-tune modes, config errors."""
from __future__ import annotations

import os
import signal
import time

import jax
import numpy as np
import pytest

from gender_jax.train import loop as trainer
from gender_jax.train import steps
from gender_jax.train import validation
from tests.helpers import bundle_weights, tiny_config, train_cli

TINY_OVERRIDES = [
    "--config.data.sources.synthetic.train_size=256",
    "--config.data.sources.synthetic.validation_size=64",
    "--config.data.sources.synthetic.image_size=20", "--config.data.image_size=16",
    "--config.data.batch_size=32", "--config.data.eval_batch_size=32",
    "--config.eval_every_steps=12", "--config.checkpoint.checkpoint_every_steps=3",
    "--config.log_every=1",
]


@pytest.fixture(scope="module")
def run8(tmp_path_factory):
  """6 steps on all 8 devices, checkpoints every 2 steps."""
  assert jax.device_count() == 8
  workdir = str(tmp_path_factory.mktemp("run8"))
  result = trainer.train_and_evaluate(tiny_config(), workdir)
  return workdir, result


def test_run_writes_checkpoints_bundle_and_metrics(run8):
  workdir, result = run8
  assert result["step"] == 6 and not result["preempted"]
  steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert steps[-1] == 6 and len(steps) <= 3  # keep=2 latest (+ the best, which is step 6)
  from gender_jax.inference.bundle import Bundle
  bundle = Bundle(os.path.join(workdir, "bundle"))
  probs = bundle.probs_fn()(np.zeros((3, 16, 16, 3), np.uint8))
  assert probs.shape == (3, 2) and np.allclose(probs.sum(-1), 1, atol=1e-5)
  assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))


def test_sharded_step_equals_single_device(run8, tmp_path):
  workdir8, _ = run8
  trainer.train_and_evaluate(tiny_config(**{"mesh.num_devices": 1}), str(tmp_path))
  w8, w1 = bundle_weights(workdir8), bundle_weights(str(tmp_path))
  assert w8.keys() == w1.keys()
  for k in w8:
    np.testing.assert_allclose(w8[k], w1[k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_checkpoint_from_8_devices_restores_on_1(run8, tmp_path, caplog):
  workdir8, _ = run8
  config = tiny_config(**{"mesh.num_devices": 1,
                          "resume_from": os.path.join(workdir8, "checkpoints")})
  with caplog.at_level("INFO"):
    result = trainer.train_and_evaluate(config, str(tmp_path))
  assert "resumed from" in caplog.text and "at step 6" in caplog.text
  assert result["step"] == 6
  w8, w1 = bundle_weights(workdir8), bundle_weights(str(tmp_path))
  for k in w8:
    np.testing.assert_array_equal(w8[k], w1[k], err_msg=k)


@pytest.mark.parametrize("mode,last_n", [("head", 1), ("last_n", 1), ("all", 1)])
def test_finetune_mode_freezes_exactly_the_frozen_stages(run8, tmp_path, mode, last_n):
  workdir8, _ = run8
  init = bundle_weights(workdir8)
  config = tiny_config(**{"init_from": os.path.join(workdir8, "bundle"), "finetune.mode": mode,
                          "finetune.last_n": last_n, "total_steps": 2,
                          "eval_every_steps": 2, "optimizer.lr": 0.05})
  trainer.train_and_evaluate(config, str(tmp_path))
  after = bundle_weights(str(tmp_path))
  stages = ("stem", "layer1", "layer2", "layer3", "layer4", "fc")
  trainable = {"head": stages[-1:], "last_n": stages[-2:], "all": stages}[mode]
  for key in init:
    first = key.split("/")[0]
    stage = "stem" if first in ("conv1", "bn1") else first
    if stage in trainable:
      if key.endswith(("kernel", "scale")) and not key.startswith("fc/"):
        assert not np.array_equal(init[key], after[key]), f"{key} should have trained"
    else:
      np.testing.assert_array_equal(init[key], after[key], err_msg=f"{key} must stay frozen")


def test_config_json_is_the_final_config_and_the_callers_is_untouched(run8, tmp_path):
  """init_from decides the input scaling (and the variant): config.json must say what the
  run used. It was written before init_from's preset was applied, and the caller's config
  was changed in place."""
  import json
  import shutil
  workdir8, _ = run8
  weights = tmp_path / "weights"
  shutil.copytree(os.path.join(workdir8, "bundle"), weights)
  meta = json.loads((weights / "meta.json").read_text())
  meta["preprocessing"]["preset"] = "torchvision"  # as a torchvision port records
  (weights / "meta.json").write_text(json.dumps(meta))
  config = tiny_config(**{"init_from": str(weights), "total_steps": 1, "eval_every_steps": 1,
                          "after_training": "", "finetune.mode": "all"})
  assert config.data.preprocessing != "torchvision"
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  written = json.loads((tmp_path / "run" / "config.json").read_text())
  bundle = json.loads((tmp_path / "run" / "bundle" / "meta.json").read_text())
  assert written["data"]["preprocessing"] == "torchvision" == bundle["preprocessing"]["preset"]
  assert config.data.preprocessing != "torchvision"


def test_bad_config_values_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="finetune.mode"):
    trainer.train_and_evaluate(tiny_config(**{"finetune.mode": "sideways"}), str(tmp_path))
  with pytest.raises(ValueError, match="total_steps and total_epochs are both set"):
    trainer.train_and_evaluate(tiny_config(total_epochs=1), str(tmp_path))


def test_typo_in_override_fails_with_suggestion(tmp_path):
  proc = train_cli(str(tmp_path), "--config.data.batch_sise=64")
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert "batch_sise" in out and 'Did you mean "batch_size"' in out
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))  # failed before training


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
  """A run SIGKILLed mid-way and restarted with the same command ends where an unbroken run does."""
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  proc = train_cli(ref, *TINY_OVERRIDES, "--config.total_steps=12")
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, out[-3000:]

  proc = train_cli(killed, *TINY_OVERRIDES, "--config.total_steps=12")
  ckpts = os.path.join(killed, "checkpoints")
  deadline = time.time() + 200
  # Kill once a checkpoint past step 3 is committed, i.e. mid-run, with steps in flight.
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpts) and any(s.isdigit() and int(s) >= 6 for s in os.listdir(ckpts)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, "run ended before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=30)
  assert not os.path.exists(os.path.join(killed, "bundle"))

  proc = train_cli(killed, *TINY_OVERRIDES, "--config.total_steps=12")
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, out[-3000:]
  assert "resumed from" in out
  w_ref, w_killed = bundle_weights(ref), bundle_weights(killed)
  for k in w_ref:
    np.testing.assert_array_equal(w_ref[k], w_killed[k], err_msg=k)


@pytest.mark.slow
def test_sigterm_saves_and_exits_then_resumes(tmp_path):
  workdir = str(tmp_path / "run")
  overrides = [*TINY_OVERRIDES, "--config.total_steps=400", "--config.eval_every_steps=400",
               "--config.checkpoint.checkpoint_every_steps=400"]
  proc = train_cli(workdir, *overrides)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 200
  while time.time() < deadline and not (os.path.exists(metrics) and
                                        os.path.getsize(metrics) > 200):
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 143, out[-3000:]
  assert "checkpoint saved" in out
  steps = [int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()]
  assert len(steps) == 1 and 0 < steps[0] < 400


@pytest.fixture(scope="module")
def preempted_run(run8, tmp_path_factory):
  """run8's config with a checkpoint every step (and an eval every 3), SIGTERMed on the step just saved (3), then
  rerun to the end. Returns (workdir, first result, resumed result, (the two TrainSetups,
  the two runs' Validations))."""
  import signal as signal_lib
  from gender_jax.train import checkpoint
  workdir = str(tmp_path_factory.mktemp("preempted"))
  config = lambda: tiny_config(**{"checkpoint.checkpoint_every_steps": 1,  # noqa: E731
                                  "eval_every_steps": 3})  # both runs evaluate
  real_save, real_setup, setups = checkpoint.save, steps.create_train_setup, []
  validations = []

  class RecordingValidation(validation.Validation):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      validations.append(self)

  def save_then_sigterm(manager, step, *args, **kwargs):
    saved = real_save(manager, step, *args, **kwargs)
    if step == 3 and not kwargs.get("force"):
      os.kill(os.getpid(), signal_lib.SIGTERM)  # handled in this (the main) thread, now
    return saved

  def recording_setup(*args, **kwargs):
    setups.append(real_setup(*args, **kwargs))
    return setups[-1]

  handlers = {s: signal_lib.getsignal(s) for s in (signal_lib.SIGTERM, signal_lib.SIGINT)}
  mp = pytest.MonkeyPatch()
  try:
    mp.setattr(checkpoint, "save", save_then_sigterm)
    mp.setattr(trainer, "create_train_setup", recording_setup)
    mp.setattr(trainer, "Validation", RecordingValidation)
    first = trainer.train_and_evaluate(config(), workdir)
    mp.setattr(checkpoint, "save", real_save)
    resumed = trainer.train_and_evaluate(config(), workdir)
  finally:
    mp.undo()
    for s, h in handlers.items():
      signal_lib.signal(s, h)
  return workdir, first, resumed, (setups, validations)


def test_sigterm_on_a_checkpoint_step_stops_cleanly_and_resumes_exactly(run8, preempted_run):
  # Before the fix the preemption path saved step 3 again: StepAlreadyExistsError, exit 1.
  workdir, first, resumed, _ = preempted_run
  assert first["preempted"] and first["step"] == 3  # train.py turns this into exit 143
  assert not resumed["preempted"] and resumed["step"] == 6
  w_ref, w = bundle_weights(run8[0]), bundle_weights(workdir)
  for k in w_ref:
    np.testing.assert_array_equal(w_ref[k], w[k], err_msg=k)


def test_train_and_eval_steps_compile_once(preempted_run):
  """One compile per run of each step, from scratch and from a restored state: a new
  dtype, weak type or sharding in the loop would recompile (minutes for a ResNet-50)."""
  *_, (setups, validations) = preempted_run
  assert len(setups) == 2 and len(validations) == 2
  for setup, run_validation in zip(setups, validations):
    assert setup.train_step._cache_size() == 1
    assert run_validation.predictor.traces == 1 and run_validation.predictor._logits._cache_size() == 1


def test_validation_equals_evaluate_on_the_same_split(run8, tmp_path):
  """The log's last validation and `evaluate` of the bundle on the validation split are one
  program on the same weights: the same images right, exactly."""
  import json
  from gender_jax import evaluate
  workdir, result = run8
  out = tmp_path / "report"
  evaluate.main(["--workdir", workdir, "--split", "validation", "--out", str(out),
                 "--bootstrap", "0", "--quiet"])
  report = json.loads((out / "report.json").read_text())
  n = report["count"]
  assert n == 64
  overall = report["overall"]
  assert round(overall["accuracy"]["value"] * n) == round(result["val_accuracy"] * n)
  assert overall["balanced_accuracy"]["value"] == pytest.approx(result["val_balanced_accuracy"],
                                                                abs=1e-9)


def test_mixture_headline_accuracy_excludes_balanced_accuracy():
  per_source = {"a": dict(accuracy=0.9, balanced_accuracy=0.5, loss=0.2),
                "b": dict(accuracy=0.7, balanced_accuracy=0.5, loss=0.4)}
  results = validation.validation_results(per_source)
  assert results["val_accuracy"] == pytest.approx(0.8)  # was 0.65: the balanced ones mixed in
  assert results["val_balanced_accuracy"] == pytest.approx(0.5)
  assert results["val_loss"] == pytest.approx(0.3)
  assert results["val_a_accuracy"] == 0.9 and results["val_b_balanced_accuracy"] == 0.5
  assert validation.validation_results({"a": per_source["a"]}) == {
      "val_accuracy": 0.9, "val_balanced_accuracy": 0.5, "val_loss": 0.2}
