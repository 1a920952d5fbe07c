"""Checkpoints prove themselves: a damaged newest step (a flipped bit, a truncated or missing
file, an empty step folder) is set aside, never deleted, and the run resumes from the newest
step that restores, ending where an undamaged run ends."""
from __future__ import annotations

import glob
import os
import shutil

import numpy as np
import pytest

from gender_jax.train import checkpoint
from gender_jax.train import loop as trainer
from tests.helpers import bundle_weights, tiny_config

CONFIG = {"total_steps": 4, "eval_every_steps": 4, "checkpoint.async_save": False}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """4 steps, checkpoints at 2 and 4, and the bundle an undamaged run writes."""
  workdir = str(tmp_path_factory.mktemp("base"))
  trainer.train_and_evaluate(tiny_config(**CONFIG), workdir)
  return workdir


def _largest_data_file(step_dir: str) -> str:
  files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*"))
  return max(files, key=os.path.getsize)


def _flip_bits(step_dir):
  path = _largest_data_file(step_dir)
  data = bytearray(open(path, "rb").read())
  for i in range(19):  # the operator's 19 bits, spread over the file's middle half
    data[len(data) // 4 + i * (len(data) // 2 // 19)] ^= 1 << (i % 8)
  open(path, "wb").write(bytes(data))


def _truncate(step_dir):
  path = _largest_data_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


def _empty(step_dir):
  for entry in os.listdir(step_dir):
    shutil.rmtree(os.path.join(step_dir, entry), ignore_errors=True)
    if os.path.exists(os.path.join(step_dir, entry)):
      os.remove(os.path.join(step_dir, entry))


DAMAGES = {
    "bit_flip": _flip_bits,
    "truncated_data": _truncate,
    "deleted_data": lambda d: os.remove(_largest_data_file(d)),
    "deleted_manifest": lambda d: os.remove(os.path.join(d, "state", "manifest.ocdbt")),
    "deleted_metadata": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "empty_step_dir": _empty,
}


@pytest.mark.parametrize("damage", [
    "bit_flip", *(pytest.param(d, marks=pytest.mark.slow) for d in DAMAGES if d != "bit_flip")])
def test_damaged_newest_step_is_set_aside_and_the_run_resumes_from_the_older(
    base, tmp_path, damage, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(base, workdir)
  shutil.rmtree(os.path.join(workdir, "bundle"))
  steps_dir = os.path.join(workdir, "checkpoints")
  assert sorted(int(s) for s in os.listdir(steps_dir) if s.isdigit()) == [2, 4]
  DAMAGES[damage](os.path.join(steps_dir, "4"))
  with caplog.at_level("WARNING"):
    result = trainer.train_and_evaluate(tiny_config(**CONFIG), workdir)
  assert result["step"] == 4
  aside = os.path.join(workdir, checkpoint.SET_ASIDE_DIR, "4")
  assert os.path.isdir(aside), "the damaged step is kept, moved aside"
  lines = [r.getMessage() for r in caplog.records if "set checkpoint step 4 aside" in r.getMessage()]
  assert len(lines) == 1 and aside in lines[0] and "resuming from step 2" in lines[0]
  # Resumed from step 2, steps 3-4 again: exactly the undamaged run's weights.
  w_base, w_run = bundle_weights(base), bundle_weights(workdir)
  for k in w_base:
    np.testing.assert_array_equal(w_base[k], w_run[k], err_msg=k)


def test_checksums_are_recorded_and_checked(base):
  from gender_jax.train import steps as steps_lib  # noqa: F401  (the state's home)
  import orbax.checkpoint as ocp
  meta = ocp.CheckpointManager(os.path.join(base, "checkpoints"), item_names=("meta",),
                               options=ocp.CheckpointManagerOptions(read_only=True)).restore(
      4, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  assert set(meta["sha256"]) >= {"params", "batch_stats", "opt_state", "step"}
  state = {"params": {"w": np.zeros(3, np.float32)}}
  recorded = {"sha256": checkpoint.digest(state)}
  checkpoint.verify(state, recorded, 7)
  state["params"]["w"][1] = np.float32(1e-30)
  with pytest.raises(checkpoint.CheckpointDamaged, match="step 7: params differ"):
    checkpoint.verify(state, recorded, 7)
