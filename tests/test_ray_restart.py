"""launch/ray_job.py --max-restarts on a real local Ray cluster: a trainer killed mid-run
(SIGKILL, as a lost node leaves it) makes the driver start the worker group again, which
resumes from the last checkpoint (exact resume itself: test_trainer, test_multiprocess)."""
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.test_multiprocess import (DEVICES_PER_PROCESS, ROOT, Proc, clean_env, free_port,
                                     tiny_config)
from tests.xla_flags import xla_flags

pytestmark = pytest.mark.multiprocess


def _wait_for_pattern(proc: Proc, pattern: str, timeout: float) -> re.Match:
  deadline = time.monotonic() + timeout
  while True:
    found = re.search(pattern, proc.output())
    if found:
      return found
    if proc.p.poll() is not None or time.monotonic() > deadline:
      pytest.fail(f"never printed {pattern!r} (rc {proc.p.poll()}):\n" + proc.output()[-3000:])
    time.sleep(0.2)


@pytest.mark.slow
def test_killed_worker_restarts_the_group_from_the_last_checkpoint(tmp_path):
  pytest.importorskip("ray")
  port = free_port()
  workdir = tmp_path / "ray_run"
  ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths are limited
  bin_dir = pathlib.Path(sys.executable).parent
  auth = dict(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(32).hex())
  head = Proc([str(bin_dir / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
               "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
              clean_env(**auth), tmp_path / "head.log")
  try:
    head.wait_for("Ray runtime started", 180)
    job = Proc([sys.executable, str(ROOT / "launch" / "ray_job.py"), "--address",
                f"127.0.0.1:{port}", "--num-workers", "2", "--cpus-per-worker", "1",
                "--max-restarts", "2",
                "--env", f"XLA_FLAGS={xla_flags(DEVICES_PER_PROCESS)}",
                "--env", "JAX_PLATFORMS=cpu", "--env", "GENDER_JAX_PEER_TIMEOUT=20", "--",
                "--config", str(tiny_config(tmp_path)), "--config.total_steps=12",
                "--workdir", str(workdir)],
               clean_env(**auth), tmp_path / "job.log")
    try:
      pid = int(_wait_for_pattern(job, r"\[1\] trainer PID (\d+)", 240).group(1))
      # Once step 2's checkpoint is written, the trainer of worker 1 dies as on a lost node.
      deadline = time.monotonic() + 400
      while not (workdir / "checkpoints" / "2").is_dir():
        assert time.monotonic() < deadline and job.p.poll() is None, job.output()[-3000:]
        time.sleep(0.1)
      os.kill(pid, signal.SIGKILL)
      assert job.wait(600) == 0, job.output()[-4000:]
    finally:
      job.kill()
    out = job.output()
    assert "restarting the group from the last checkpoint (restart 1 of 2)" in out, out[-4000:]
    assert "resumed from" in out and "worker exit statuses [0, 0]" in out
    assert (workdir / "bundle" / "meta.json").exists()
  finally:
    head.p.send_signal(signal.SIGTERM)
    try:
      head.p.wait(30)
    except subprocess.TimeoutExpired:
      pass
    head.kill()
    shutil.rmtree(ray_tmp, ignore_errors=True)
