"""Entry point: `python -m gender_jax.train --config configs/demo.py --workdir DIR`.

Configs (in the checkout's configs/; any path works, from any directory):
  configs/demo.py      tiny ResNet on built-in synthetic images, CPU, ~1 min
  configs/resnet.py    ResNet-50 at 224 px (the default real config); `:celeba,peta` for sources
  configs/resnet18.py  ResNet-18;  configs/vgg16.py  VGG-16-BN;  configs/utkface.py  UTKFace, CPU
List every key and its value:   --config configs/demo.py --workdir RUN --show_config
Override any key:               --config.data.batch_size=64 --config.data.folder=/photos
A stage's learning-rate multiplier: --config.optimizer.lr_mult.level3=0.3 (any stage name)
A typo'd key stops with `Did you mean …`. Add --debug (or GENDER_JAX_DEBUG=1) for tracebacks.
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
  return importlib.util.find_spec("jax_cuda12_plugin") is None and \
      importlib.util.find_spec("libtpu") is None


if "JAX_PLATFORMS" not in os.environ and _cpu_only():
  os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# TensorFlow (loaded for TFDS and image decoding, not for the model) announces oneDNN at
# import; its ops here only read data, so the announcement is noise.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gender_jax import errors  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, bundle. "
                               "Example: --workdir runs/demo")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file; override keys with --config.KEY=VALUE. "
    "Example: --config configs/demo.py --config.total_steps=20", lock_config=True)
_SHOW = flags.DEFINE_bool("show_config", False, "Print the config (every key) and exit. "
                          "Example: --show_config")
flags.DEFINE_bool("debug", False, "Show Python tracebacks for errors. Example: --debug")


class _QuietLibraries(logging.Filter):
  """Drops Orbax's, grain's and TFDS's INFO lines so the progress line stays readable."""

  def filter(self, record):
    if record.getMessage().startswith("Unable to initialize backend"):
      return False
    if "/tensorflow_datasets/" in record.pathname:  # e.g. "Variant folder … has no
      return record.levelno >= logging.ERROR       # dataset_info.json" before a first prepare
    if record.levelno >= logging.WARNING:
      return True
    return not any(f"/{lib}/" in record.pathname
                   for lib in ("orbax", "grain", "tensorflow_datasets", "jax/_src/xla_bridge"))


def _config_path_on_sys_path(argv) -> None:
  """`configs/x.py` imports `configs.common`: put the folder holding `configs/` on sys.path,
  so a config path given from any working directory loads."""
  for i, arg in enumerate(argv):
    value = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else (
        arg.split("=", 1)[1] if arg.startswith("--config=") else None)
    if value:
      path = os.path.abspath(value.split(":", 1)[0])
      root = os.path.dirname(os.path.dirname(path))
      if not os.path.isfile(path):
        raise errors.UsageError(f"config file {value!r} does not exist; see "
                                "`python -m gender_jax.train --help` for the configs")
      if root not in sys.path:
        sys.path.insert(0, root)


# `--config.optimizer.lr_mult.STAGE=X` for any stage, where ml_collections only overrides keys
# the config file already has: taken out of argv before absl parses it, set after loading.
_LR_MULT_FLAG = "--config.optimizer.lr_mult."
_lr_mults: dict[str, str] = {}


def _take_lr_mults(argv: list[str]) -> list[str]:
  kept = []
  for arg in argv:
    if arg.startswith(_LR_MULT_FLAG) and "=" in arg:
      name, value = arg[len(_LR_MULT_FLAG):].split("=", 1)
      _lr_mults[name] = value
    else:
      kept.append(arg)
  return kept


def _with_lr_mults(config):
  with config.unlocked():
    for name, value in _lr_mults.items():
      try:
        config.optimizer.lr_mult[name] = float(value)
      except ValueError:
        raise errors.UsageError(f"{_LR_MULT_FLAG}{name}={value}: the multiplier must be a "
                                "number, e.g. 0.3") from None
  return config


def _load_config():
  try:
    return _with_lr_mults(_CONFIG.value)
  except (OSError, AttributeError, KeyError, TypeError, ValueError) as e:
    text = errors.one_line(e)
    if "No such file" in text or "not available" in text:
      raise errors.UsageError(f"config file {flags.FLAGS['config'].serialize()[9:]!r} does not "
                              "exist; see `python -m gender_jax.train --help` for the configs")
    raise errors.UsageError(f"bad --config override: {text}")


def check_config(config, workdir: str) -> None:
  """Every check that needs no data, before any work and before the workdir exists."""
  import jax
  from gender_jax import config as config_lib
  errors.require_writable(workdir, "--workdir")
  if config.data.get("folder"):
    errors.require_class_folders(config.data.folder, "--config.data.folder")
  for name, opts in config.data.sources.items():
    path = opts.get("manual_dir") or opts.get("path")
    if name.split(":")[0] != "synthetic":
      if path:
        errors.require_dir(path, f"config.data.sources.{name}.manual_dir")
      elif not (name.startswith("folder") and config.data.get("folder")):
        raise errors.UsageError(f"data source {name!r} has no files: set "
                                f"--config.data.sources.{name}.manual_dir=PATH")
  if config.init_from:  # before validate(): a wrong path is not a choice of fine-tuning mode
    errors.require_weights_dir(config.init_from, "config.init_from")
  if config.resume_from:
    errors.require_dir(config.resume_from, "config.resume_from")
  try:
    config_lib.validate(config)
  except ValueError as e:
    raise errors.UsageError(errors.one_line(e)) from e
  devices = config.mesh.num_devices or jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    if config.data[key] % devices:
      fix = (config.data[key] // devices + 1) * devices
      raise errors.UsageError(f"data.{key}={config.data[key]} is not divisible by the {devices} "
                              f"devices; use e.g. --config.data.{key}={fix}")


def log_data_sanity(config) -> None:
  """Per-source, per-split label counts and the mixing weights; a one-class split stops here."""
  from gender_jax.data import sources
  weights = sources.configured_sources(config)
  total = sum(weights.values())
  for name, weight in weights.items():
    base = name.split(":")[0]
    options = sources.source_options(name, config)
    counts = None
    from gender_jax.data import prepare
    if base in prepare.KINDS and (base != "synthetic" or options.get("prepared", False)):
      b = sources.prepared_builder(base, options, config)
      counts = prepare.summary(b)["counts"] if b is not None else None
    if counts:
      text = "  ".join(f"{s} female {c['female']} male {c['male']}" for s, c in counts.items())
      for split in ("train", "validation"):
        c = counts.get(split)
        if c and (not c["female"] or not c["male"]):
          where = options.get("path") or options.get("manual_dir") or name
          raise errors.UsageError(
              f"source {name} ({where}): the {split} split has one class only (female "
              f"{c['female']}, male {c['male']}); add images of both classes")
    else:
      text = "  ".join(f"{s} {len(sources.get_source(name, s, config))} images"
                       for s in ("train", "validation"))
    logging.info("data %s: mixing weight %.2f (%.0f%% of batches)  %s", name, weight,
                 100 * weight / total, text)
  if len(weights) > 1:
    logging.warning("training on a mixture of %s; set --config.data.sources.NAME.weight=0 to "
                    "leave one out", ", ".join(weights))


def main(argv):
  del argv
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  config = _load_config()
  if _SHOW.value:
    print(config)
    return 0
  if not _WORKDIR.value:
    raise errors.UsageError("give --workdir RUN (where checkpoints, logs and the bundle go)")
  # Distributed init must precede anything that touches devices.
  from gender_jax import parallel
  parallel.initialize_distributed()
  import jax
  _persistent_compilation_cache(jax)
  check_config(config, _WORKDIR.value)
  logging.info("jax %s on %d × %s", jax.__version__, jax.device_count(),
               jax.devices()[0].device_kind)
  log_data_sanity(config)
  from gender_jax import trainer
  result = trainer.train_and_evaluate(config, _WORKDIR.value)
  if result.get("preempted"):
    sys.exit(143)  # non-zero, so schedulers restart the job; the rerun resumes
  return 0


def _persistent_compilation_cache(jax) -> None:
  """XLA's on-disk cache of compiled programs, so a restart or resume of a run (a preempted
  job, a crashed host) skips the compiles: ~20 s of 33 s from launch to step 0 on CPU, minutes
  for a large model on a GPU. `JAX_COMPILATION_CACHE_DIR` (read by JAX itself) wins;
  `GENDER_JAX_XLA_CACHE=DIR` moves ours, `=off` turns it off."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  path = os.environ.get("GENDER_JAX_XLA_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gender_jax", "xla")
  if path != "off":  # an entry per program (~0.3 MB for ResNet-18); delete the folder to clear
    jax.config.update("jax_compilation_cache_dir", path)


def _main_with_errors(argv):
  """app.run's main, with a user's mistake answered as one `error:` line, status 2."""
  try:
    return main(argv)
  except errors._user_errors() as e:
    if errors.debug_requested():
      raise
    errors.exit_now(f"error: {errors.one_line(e)}")


def _parse_flags(argv):
  """absl's flag parsing, with a bad flag or config override answered in one line."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    if errors.debug_requested(argv):
      raise
    text = errors.one_line(e)
    if isinstance(e, AttributeError):  # ml_collections: a key that is not in the config
      text = f"no such config key {text}"
    print(f"error: {text} (see --help; --show_config lists every key)", file=sys.stderr)
    sys.exit(errors.EXIT_USAGE)


def run():
  sys.argv[:] = _take_lr_mults(sys.argv)  # ml_collections finds its overrides in sys.argv
  argv = list(sys.argv)
  try:
    _config_path_on_sys_path(argv)
  except errors.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(errors.EXIT_USAGE)
  if "--help" in argv or "-h" in argv or "--helpshort" in argv:
    print(__doc__)
    print(flags.FLAGS.main_module_help())
    sys.exit(0)
  app.run(_main_with_errors, argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
