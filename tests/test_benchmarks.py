"""The benchmark scripts run end to end at tiny sizes and report what they promise.

Numbers are not checked (these are 2 shared CPU cores); the shape of the results is: every
row has a throughput, the JAX step's FLOPs come from XLA, ratios appear where a peer ran.
"""
import json
import pathlib
import sys

import pytest

try:  # before anything imports TensorFlow: torchvision imported after it segfaults
  import torch  # noqa: F401
  import torchvision  # noqa: F401
except ImportError:
  pass

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402
import end_to_end  # noqa: E402
import predict  # noqa: E402
import train_step  # noqa: E402

TINY = ["--batch", "8", "--size", "32", "--steps", "2", "--warmup", "1"]


def test_train_step_tiny_sharded(tmp_path, capsys):
  out = tmp_path / "train.json"
  # --devices 0: every (fake) device, so the batch-sharded path runs.
  result = train_step.main(["--arch", "resnet_tiny", *TINY, "--devices", "0", "--no-peer",
                            "--json", str(out), "--peak", "1.0"])
  (row,) = result["rows"]
  assert row["impl"] == "gender_jax" and row["devices"] == 8
  assert row["img_s"] > 0 and row["compile_s"] > 0
  assert row["flops_per_image"] > 1e6  # XLA's count for a tiny ResNet at 32 px: ~2 MFLOP
  assert 0 < row["mfu"] < 1 and row["peak_source"] == "--peak"
  assert json.loads(out.read_text())["rows"][0]["arch"] == "resnet_tiny"
  assert "| resnet_tiny | gender_jax |" in capsys.readouterr().out


def test_end_to_end_tiny(tmp_path):
  from tests.fixtures import datasets as fixtures
  fixtures.folder(str(tmp_path / "photos"), per_class=12)
  result = end_to_end.main(["--folder", str(tmp_path / "photos"), "--data-dir",
                            str(tmp_path / "prepared"), "--arch", "resnet_tiny", *TINY,
                            "--json", str(tmp_path / "e2e.json")])
  synthetic, disk, pipe = result["rows"]
  assert synthetic["fraction"] == 1.0 and 0 < disk["fraction"]
  assert all(r["img_s"] > 0 for r in (synthetic, disk, pipe))
  # The disk run's wall time is accounted for: read, transfer, dispatch and device waits.
  shares = sum(disk[k] for k in ("read_pct", "transfer_pct", "dispatch_pct", "device_pct"))
  assert 0.5 < shares <= 1.0 + 1e-6
  assert result["num_train"] > 0 and result["verdict"]


def test_predict_tiny_with_peer_skipped(tmp_path, capsys):
  result = predict.main(["--arch", "resnet_tiny", "--size", "32", "--batches", "1,4",
                         "--steps", "2", "--warmup", "1", "--json", str(tmp_path / "p.json")])
  assert [r["batch"] for r in result["rows"]] == [1, 4]
  assert all(r["impl"] == "gender_jax" and r["img_s"] > 0 for r in result["rows"])
  assert "torchvision has no resnet_tiny" in capsys.readouterr().out


def test_torch_train_step_runs_the_same_work():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  from gender_jax.data import preprocess
  # torchvision's ResNet with one block per stage: the peer's code path, at test cost.
  model = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1],
                                           num_classes=2)
  config = common.train_config("vgg16", 4, 32, "float32")  # VGG's config: clipping on
  spec = preprocess.make_spec(32)
  images, labels = common.torch_batch(torch, 4, 32)
  step = train_step.torch_train_step(torch, model, config, spec, images, labels, "bfloat16")
  before = model.fc.weight.detach().clone()
  t = common.time_torch(torch, step, warmup=1, steps=2)
  assert t["step_s"] > 0 and not torch.equal(before, model.fc.weight)
  x = common.torch_normalize(torch, images, spec, torch.float32)
  assert x.shape == (4, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
  assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0  # the "scratch" preset


def test_peak_table_and_options():
  assert common.peak_tflops("NVIDIA H100 80GB HBM3") == (989.0, "datasheet (H100)")
  assert common.peak_tflops("NVIDIA H100 PCIe")[0] == 756.0
  assert common.peak_tflops("cpu")[0] is None
  assert common.peak_tflops("cpu", 790.0) == (790.0, "--peak")
  assert train_step._drop_option(["--arch", "a,b", "--json=x", "--steps", "2"], "--arch") == \
      ["--json=x", "--steps", "2"]
  with pytest.raises(SystemExit):
    train_step.parse_args(["--peer", "jit"])
  assert "| 1 | — |" in common.format_table([{"a": 1, "b": None}],
                                            [("a", "a", ""), ("b", "b", ".1f")])


@pytest.mark.slow
def test_train_step_several_archs_one_process_each(tmp_path):
  out = tmp_path / "all.json"
  result = train_step.main(["--arch", "resnet_tiny,vgg_tiny_bn", *TINY, "--no-peer",
                            "--json", str(out)])
  assert [r["arch"] for r in result["rows"]] == ["resnet_tiny", "vgg_tiny_bn"]
  assert all(r["img_s"] > 0 for r in result["rows"])


def test_models_table_tiny(tmp_path, capsys):
  import models as models_bench
  from tests.fixtures import datasets as fixtures
  fixtures.folder(str(tmp_path / "photos"), per_class=12)
  argv = ["--arch", "cnn_small,no_such_arch", "--folder", str(tmp_path / "photos"),
          "--data-dir", str(tmp_path / "prepared"), "--size", "16", "--runs", "2",
          "--workdir", str(tmp_path / "runs"), "--json", str(tmp_path / "m.json")]
  # Sizes, FLOPs and latencies on random weights; the trained path for one arch below.
  result = models_bench.main([*argv, "--no-train"])
  assert [r["arch"] for r in result["rows"]] == ["cnn_small"]
  for r in result["rows"]:
    assert r["params"] > 0 and r["flops_per_image"] > 0 and r["jax_ms"] > 0
    assert r["int8_mb"] > 0 and r["int8_ms"] > 0
  assert json.loads((tmp_path / "m.json").read_text())["rows"][0]["arch"] == "cnn_small"
  assert "not in the registry or too small an input for: no_such_arch" in capsys.readouterr().out


@pytest.mark.slow
def test_models_trains_and_evaluates_tiny(tmp_path):
  import models as models_bench
  from tests.fixtures import datasets as fixtures
  fixtures.folder(str(tmp_path / "photos"), per_class=12)
  result = models_bench.main(["--arch", "resnet_tiny", "--folder", str(tmp_path / "photos"),
                              "--data-dir", str(tmp_path / "prepared"), "--size", "16",
                              "--epochs", "1", "--batch", "8", "--runs", "2", "--no-tflite",
                              "--workdir", str(tmp_path / "runs")])
  (row,) = result["rows"]
  assert 0 <= row["test_bal_acc"] <= 1 and row["test_count"] == 2 and row["train_s"] > 0
