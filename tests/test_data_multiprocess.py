"""Two real processes on loopback (jax.distributed + gloo) read disjoint shards of one split."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.fixtures import datasets as fixtures
from tests.xla_flags import xla_flags

WORKER = textwrap.dedent("""
    import json, sys
    from gender_jax import parallel
    parallel.initialize_distributed()
    import jax
    from configs.common import get_base_config
    from gender_jax.data import pipeline, preprocess, sources
    folder, data_dir, out = sys.argv[1:4]
    config = get_base_config()
    with config.unlocked():
      config.data.sources["folder"] = dict(path=folder, data_dir=data_dir, weight=1.0,
                                           crop="none", flip=False)
      config.data.update(dict(image_size=32, batch_size=2, read_threads=1, num_workers=0))
    train = sources.get_source("folder", "train", config)
    index = {preprocess.eval_image(train[i]["image"], 32).tobytes(): i for i in range(len(train))}
    it = iter(pipeline.train_dataset(config))  # process index and count from jax.distributed
    steps = len(train) // 2
    seen = [index[img.tobytes()] for _ in range(steps) for img in next(it)["image"]]
    json.dump(dict(process=jax.process_index(), count=jax.process_count(), n=len(train),
                   seen=seen), open(out, "w"))
""")


@pytest.mark.multiprocess
def test_two_processes_on_loopback_read_disjoint_shards(tmp_path):
  fixtures.folder(str(tmp_path / "f"), per_class=10)
  # Prepare once up front, so the two processes only read.
  from gender_jax.data import prepare
  prepare.prepare("folder", str(tmp_path / "f"), str(tmp_path / "d"))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = []
  for pid in range(2):
    env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(pid), JAX_PLATFORMS="cpu", PYTHONPATH=repo,
               XLA_FLAGS=xla_flags(1))
    procs.append(subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "f"), str(tmp_path / "d"),
         str(tmp_path / f"out{pid}.json")], env=env, cwd=repo,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  try:
    for p in procs:
      out, _ = p.communicate(timeout=240)
      assert p.returncode == 0, out.decode()[-3000:]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()  # a process stuck in a collective ignores SIGTERM
  results = [json.load(open(tmp_path / f"out{pid}.json")) for pid in range(2)]
  assert sorted(r["process"] for r in results) == [0, 1] and results[0]["count"] == 2
  a, b = (set(r["seen"]) for r in results)
  assert not a & b
  assert sorted(results[0]["seen"] + results[1]["seen"]) == list(range(results[0]["n"]))
