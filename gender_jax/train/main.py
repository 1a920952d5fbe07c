"""Entry point: `python -m gender_jax.train --config configs/demo.py --workdir DIR`.

Configs (in the checkout's configs/; any path works, from any directory):
  configs/demo.py      tiny ResNet on built-in synthetic images, CPU, ~1 min
  configs/resnet.py    ResNet-50 at 224 px (the default real config); `:celeba,peta` for sources
  configs/resnet18.py  ResNet-18;  configs/vgg16.py  VGG-16-BN;  configs/utkface.py  UTKFace, CPU
List every key and its value:   --config configs/demo.py --workdir RUN --show-config
Override any key:               --config.data.batch_size=64 --config.data.folder=/photos
A stage's learning-rate multiplier: --config.optimizer.lr_mult.level3=0.3 (any stage name)
A typo'd key stops with `Did you mean …`. Add --debug (or GENDER_JAX_DEBUG=1) for tracebacks.
Rerunning on a workdir: the same config resumes a stopped run and leaves a finished one as it
is; another config is refused unless --continue (e.g. train longer:
--config.total_steps=2000 --continue).
"""
from __future__ import annotations

import logging
import os
import sys

# Before jax is imported: without an accelerator, JAX's probe for a TPU logs a failure-looking
# line; CPU-only machines say so explicitly (a GPU machine keeps JAX's default search).
def _cpu_only() -> bool:
  if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
    return True
  import importlib.util
  return not any(importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                       "libtpu"))


if "JAX_PLATFORMS" not in os.environ and _cpu_only():
  os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow (loaded for TFDS and image decoding, not for the model) announces oneDNN at
# import; its ops here only read data, so the announcement is noise.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import jax  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gender_jax import cli, parallel  # noqa: E402
from gender_jax.train import finite, lock, preflight, rerun  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, bundle. "
                               "Example: --workdir runs/demo")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file; override keys with --config.KEY=VALUE. "
    "Example: --config configs/demo.py --config.total_steps=20", lock_config=True)
_SHOW = flags.DEFINE_bool("show_config", False, "Print the config (every key) and exit. "
                          "Example: --show-config")
_CONTINUE = flags.DEFINE_bool(
    "continue", False, "Go on training a workdir with a changed config (e.g. a larger "
    "total_steps); its bundle is kept beside the new one. Example: --continue")
flags.DEFINE_bool("debug", False, "Show Python tracebacks for errors. Example: --debug")


def main(argv):
  del argv
  for handler in logging.getLogger().handlers:
    handler.addFilter(cli.QuietLibraries())
  config = cli.load_config(_CONFIG)
  if _SHOW.value:
    print(config)
    return 0
  if not _WORKDIR.value:
    raise cli.UsageError("give --workdir RUN (where checkpoints, logs and the bundle go)")
  # One run per workdir, decided before any work: a second launch leaves in seconds.
  preflight.check_workdir(_WORKDIR.value)
  if lock.is_first_process():
    try:
      lock.acquire(_WORKDIR.value)
    except lock.WorkdirBusy as e:
      cli.exit_now(f"error: {e}", lock.EXIT_BUSY)
  try:
    return _train(config, _WORKDIR.value)
  finally:
    lock.release(_WORKDIR.value)


def _train(config, workdir: str) -> int:
  from gender_jax.train import loop  # after the lock: its imports take seconds
  parallel.initialize_distributed()  # before anything touches devices
  parallel.persistent_compilation_cache()
  preflight.check_config(config, workdir)
  logging.info("jax %s on %d × %s", jax.__version__, jax.device_count(),
               jax.devices()[0].device_kind)
  finished = rerun.check(config, workdir, _CONTINUE.value)
  if finished:
    print(finished)
    return 0
  preflight.log_data_sanity(config)
  try:
    result = loop.train_and_evaluate(config, workdir)
  except finite.TrainingFailed as e:  # a diverged run: no bundle, a non-zero status, one line
    cli.exit_now(f"error: {e}", 1)
  if result.get("preempted"):
    sys.exit(143)  # non-zero, so schedulers restart the job; the rerun resumes
  print(_summary(result, workdir))
  return 0


def _summary(result: dict, workdir: str) -> str:
  """The run's last line: where the bundle is and what validation said of it."""
  figures = "  ".join(f"{k} {v:.4f}" for k, v in sorted(result.items())
                      if k not in ("preempted", "step") and isinstance(v, (int, float)))
  return (f"trained to step {result['step']}; validation: {figures or 'none'}; bundle: "
          f"{os.path.join(os.path.abspath(workdir), 'bundle')}")


def run():
  cli.run_absl(main, __doc__)


if __name__ == "__main__":
  run()
