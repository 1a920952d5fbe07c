"""The GPU run rehearsed: `benchmarks/gpu.sh --dry-run` end to end on the CPU, with every
module the GPU host lacks made absent (tests/device_guard), so a stray import fails here.

The host's packages are benchmarks/gpu_host_packages.txt; what the run carries is
benchmarks/gpu_wheels.txt. Every installed distribution in neither list is absent for the
rehearsal's processes: TensorFlow, TFDS, Keras, and whatever else this environment has.
"""
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
GUARD = ROOT / "tests" / "device_guard"
# Absent there whether or not they are installed here.
ALWAYS_ABSENT = ("tensorflow", "tensorflow_datasets", "tf_keras", "keras", "clu", "ray",
                 "tf2onnx", "ai_edge_litert", "tflite_runtime", "dlib", "selenium", "fastapi")


def _normal(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _names(path: pathlib.Path) -> set[str]:
  lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
  return {_normal(line.split()[0].split("==")[0]) for line in lines if line}


def _there() -> set[str]:
  """The distributions the GPU host has or gets (normalised names)."""
  return (_names(BENCHMARKS / "gpu_host_packages.txt") | _names(BENCHMARKS / "gpu_wheels.txt")
          | {"gender-jax"})


def absent_distributions() -> list[str]:
  names = {_normal(d.metadata["Name"]) for d in importlib.metadata.distributions()}
  return sorted(names - _there())


def absent_modules() -> list[str]:
  """Top-level modules of the installed distributions the GPU host neither has nor gets."""
  there = _there()
  # The repository's own top-level folders come first on the path there (tf2onnx, for one,
  # installs a `tests` package here).
  local = {p.name for p in ROOT.iterdir() if p.is_dir()}
  absent = {module for module, dists in importlib.metadata.packages_distributions().items()
            if not any(_normal(d) in there for d in dists)
            and module not in sys.stdlib_module_names and module not in local}
  return sorted(absent | set(ALWAYS_ABSENT))


def guarded_env(**extra) -> dict:
  env = dict(os.environ, GENDER_JAX_DEVICE_GUARD=",".join(absent_modules()),
             GENDER_JAX_DEVICE_GUARD_DISTS=",".join(absent_distributions()),
             PYTHONPATH=os.pathsep.join(filter(None, [str(GUARD),
                                                      os.environ.get("PYTHONPATH")])),
             PYTHON=sys.executable)
  env.update(extra)
  return env


def test_the_guard_makes_modules_absent():
  code = ("import importlib.util, importlib.metadata\n"
          "assert importlib.util.find_spec('tensorflow') is None\n"
          "assert importlib.metadata.version('numpy')\n"
          "assert 'tensorflow-cpu' not in {d.metadata['Name'] for d in "
          "importlib.metadata.distributions()}\n"
          "try:\n  import tensorflow_datasets\nexcept ModuleNotFoundError: print('absent')\n")
  done = subprocess.run([sys.executable, "-c", code], env=guarded_env(), capture_output=True,
                        text=True, timeout=60, check=False)
  assert done.returncode == 0 and done.stdout.strip() == "absent", done.stderr
  assert {"tensorflow", "keras", "ray"} <= set(absent_modules())
  assert not {"jax", "flax", "grain", "torch", "numpy", "cv2"} & set(absent_modules())


def test_the_carry_list_fits():
  sys.path.insert(0, str(BENCHMARKS))
  import gpu_prepare
  wheels = gpu_prepare.wheel_list()
  assert {w["name"] for w in wheels} >= {"grain", "array-record", "ml-collections",
                                          "simplejpeg"}
  assert not {"jax", "jaxlib", "flax", "torch"} & {w["name"] for w in wheels}  # the host's own
  # The tree, the wheels and the prepared utkface-2k (~11 MiB) stay well inside 64 MiB.
  assert gpu_prepare.tree_bytes() + sum(w["bytes"] for w in wheels) < 40 * 2**20


@pytest.mark.slow
def test_gpu_run_dry_run_under_the_guard(tmp_path):
  from tests.fixtures import datasets as fixtures
  fixtures.folder(str(tmp_path / "photos"), per_class=12)
  subprocess.run([sys.executable, str(BENCHMARKS / "gpu_prepare.py"), "--no-wheels",
                  "--folder", str(tmp_path / "photos"), "--out", str(tmp_path / "carry"),
                  "--crops", "16"], check=True, capture_output=True, timeout=300)
  out = tmp_path / "out"
  done = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh"), "--dry-run",
                         "--data", str(tmp_path / "carry" / "data"), "--out", str(out)],
                        env=guarded_env(), capture_output=True, text=True, timeout=600,
                        check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  result = json.loads((out / "gpu.json").read_text())
  failed = {k: v.get("log_tail", "")[-1500:] for k, v in result["parts"].items()
            if v["status"] != "ok"}
  assert not failed, failed
  assert set(result["parts"]) == {"probe", "train_resnet50", "torch_resnet50",
                                  "train_utkface_dlib", "predict_resnet50", "photos",
                                  "end_to_end", "train_vgg16"}
  assert result["versions"]["jax"] and result["versions_device"]["jax"]
  assert result["device"]["jax"] == result["versions_device"]["jax"]
  parts = {k: v["result"] for k, v in result["parts"].items()}
  assert parts["probe"]["ceilings"]["matmul_tflops"] > 0
  for name in ("train_resnet50", "train_vgg16", "train_utkface_dlib"):
    (row,) = [r for r in parts[name]["rows"] if r["impl"] == "gender_jax"]
    assert row["img_s"] > 0 and row["compile_s"] > 0 and row["flops_per_image"] > 0
  if importlib.util.find_spec("torchvision"):  # the peer's path: torchvision's real ResNet-50
    (peer,) = parts["torch_resnet50"]["rows"]
    assert peer["impl"] == "torch eager" and peer["arch"] == "resnet50" and peer["img_s"] > 0
  assert [r["batch"] for r in parts["predict_resnet50"]["rows"]] == [1, 4]
  assert any(r["metric"].startswith("photos/s") and r["value"] > 0
             for r in parts["photos"]["rows"])
  assert parts["end_to_end"]["num_train"] > 0 and parts["end_to_end"]["grain"]["resolved"]
  assert "| train_utkface_dlib |" in done.stdout and (out / "gpu.log").stat().st_size > 0


def test_gpu_sh_without_wheels_says_what_to_run(tmp_path):
  empty = tmp_path / "repo"
  (empty / "benchmarks").mkdir(parents=True)
  (empty / "benchmarks" / "gpu.sh").write_text((BENCHMARKS / "gpu.sh").read_text())
  done = subprocess.run(["bash", str(empty / "benchmarks" / "gpu.sh")], capture_output=True,
                        text=True, timeout=60, check=False)
  assert done.returncode == 2
  assert done.stderr.strip() == ("error: no wheels in .gpu/whl: run python "
                                 "benchmarks/gpu_prepare.py before the GPU run")


def test_cuda_extra_pins_the_plugin_of_the_pinned_jax():
  import tomllib
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  (jax_pin,) = [d for d in project["dependencies"] if d.startswith("jax==")]
  version = jax_pin.split("==")[1]
  cuda = project["optional-dependencies"]["cuda"]
  assert {d.split("==")[1] for d in cuda} == {version}
  assert {d.split("==")[0].split("[")[0] for d in cuda} == {"jax", "jax-cuda13-plugin",
                                                           "jax-cuda13-pjrt"}
