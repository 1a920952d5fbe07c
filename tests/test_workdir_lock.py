"""One run per workdir: a second launch is refused at once (one line, status 73, before jax
starts), never hangs, and never writes; a lock whose process died is taken over."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gender_jax.train import lock
from tests.helpers import REPO, train_cli

HOLD = ("import sys, time; sys.path.insert(0, {repo!r}); from gender_jax.train import lock; "
        "lock.acquire({workdir!r}); print('held', flush=True); time.sleep(600)")


def _holder(workdir: str) -> subprocess.Popen:
  proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=REPO, workdir=workdir)],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def test_held_lock_refuses_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
  workdir = str(tmp_path / "run")
  proc = _holder(workdir)
  try:
    with pytest.raises(lock.WorkdirBusy, match=f"PID {proc.pid} on .*--workdir"):
      lock.acquire(workdir)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  with caplog.at_level("WARNING"):
    lock.acquire(workdir)
  try:
    assert f"taking over the lock of PID {proc.pid}" in caplog.text and "gone" in caplog.text
    with open(os.path.join(workdir, lock.LOCK_NAME)) as f:
      assert json.load(f)["pid"] == os.getpid()
  finally:
    lock.release(workdir)
  with open(os.path.join(workdir, lock.LOCK_NAME)) as f:
    assert f.read() == ""  # a clean end leaves no holder to report


def test_second_launch_leaves_at_once_with_one_line(tmp_path):
  workdir = str(tmp_path / "run")
  proc = _holder(workdir)
  try:
    t = time.monotonic()
    second = train_cli(workdir, "--config.total_steps=2")
    out, _ = second.communicate(timeout=120)
    took = time.monotonic() - t
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  lines = out.strip().splitlines()
  assert second.returncode == lock.EXIT_BUSY, out
  assert len(lines) == 1 and lines[0].startswith("error: workdir") and f"PID {proc.pid}" in lines[0]
  assert os.listdir(workdir) == [lock.LOCK_NAME], "the refused run wrote nothing"
  assert took < 60, took  # imports only (seconds on an idle machine); jax never starts


TINY = ["--config.data.sources.synthetic.train_size=256",
        "--config.data.sources.synthetic.validation_size=64",
        "--config.data.sources.synthetic.image_size=20", "--config.data.image_size=16",
        "--config.data.batch_size=32", "--config.data.eval_batch_size=32",
        "--config.total_steps=6", "--config.eval_every_steps=6",
        "--config.checkpoint.checkpoint_every_steps=2", "--config.log_every=1",
        "--config.after_training="]


@pytest.mark.slow
def test_ten_double_launches_exactly_one_trains(tmp_path):
  """Both started together, 10 times: one is refused within seconds, in one line; the other
  holds the lock. The first trial runs to the end (no step logged twice); later trials stop
  the winner once the loser has left."""
  for trial in range(10):
    workdir = str(tmp_path / f"run{trial}")
    procs = [train_cli(workdir, *TINY, start_new_session=True) for _ in range(2)]
    t = time.monotonic()
    try:
      while all(p.poll() is None for p in procs):
        assert time.monotonic() - t < 120, "neither launch was refused"
        time.sleep(0.1)
      loser = next(p for p in procs if p.poll() is not None)
      winner = next(p for p in procs if p is not loser)
      out = loser.stdout.read().strip().splitlines()
      assert loser.returncode == lock.EXIT_BUSY, out
      assert len(out) == 1 and f"PID {winner.pid}" in out[0], out
      assert winner.poll() is None, "the winner is still training"
      if trial == 0:
        winner.communicate(timeout=300)
        assert winner.returncode == 0
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
          steps = [json.loads(line)["step"] for line in f if '"train_loss"' in line]
        assert steps == list(range(1, 7)), steps
        assert os.path.isdir(os.path.join(workdir, "bundle"))
    finally:
      for p in procs:
        if p.poll() is None:
          os.killpg(p.pid, signal.SIGKILL)
          p.wait()
