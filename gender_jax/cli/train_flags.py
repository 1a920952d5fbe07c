"""`python -m gender_jax.train` keeps absl + ml_collections flags (`--config.KEY=VALUE`); this
module gives it the policy of the argparse commands: one `error:` line for a bad flag, key,
config file or override, dashed aliases of its flags, and config files found from any folder."""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

from gender_jax.cli.errors import UsageError, _user_errors, debug_requested, exit_now, one_line

class QuietLibraries(logging.Filter):
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


def config_path_on_sys_path(argv) -> None:
  """`configs/x.py` imports `configs.common`: put the folder holding `configs/` on sys.path,
  so a config path given from any working directory loads."""
  for i, arg in enumerate(argv):
    value = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else (
        arg.split("=", 1)[1] if arg.startswith("--config=") else None)
    if value:
      path = os.path.abspath(value.split(":", 1)[0])
      root = os.path.dirname(os.path.dirname(path))
      if not os.path.isfile(path):
        raise UsageError(f"config file {value!r} does not exist; see "
                                "`python -m gender_jax.train --help` for the configs")
      if root not in sys.path:
        sys.path.insert(0, root)


# `--config.optimizer.lr_mult.STAGE=X` for any stage, where ml_collections only overrides keys
# the config file already has: taken out of argv before absl parses it, set after loading.
LR_MULT_FLAG = "--config.optimizer.lr_mult."
_lr_mults: dict[str, str] = {}


def take_lr_mults(argv: list[str]) -> list[str]:
  kept = []
  for arg in argv:
    if arg.startswith(LR_MULT_FLAG) and "=" in arg:
      name, value = arg[len(LR_MULT_FLAG):].split("=", 1)
      _lr_mults[name] = value
    else:
      kept.append(arg)
  return kept


def with_lr_mults(config):
  with config.unlocked():
    for name, value in _lr_mults.items():
      try:
        config.optimizer.lr_mult[name] = float(value)
      except ValueError:
        raise UsageError(f"{LR_MULT_FLAG}{name}={value}: the multiplier must be a "
                                "number, e.g. 0.3") from None
  return config


def load_config(config_flag):
  """The config file of `--config` with its overrides and the stage multipliers applied; a
  missing file or a bad override is one line."""
  try:
    return with_lr_mults(config_flag.value)
  except (OSError, AttributeError, KeyError, TypeError, ValueError) as e:
    text = one_line(e)
    if "No such file" in text or "not available" in text:
      from absl import flags
      raise UsageError(f"config file {flags.FLAGS['config'].serialize()[9:]!r} does not "
                       "exist; see `python -m gender_jax.train --help` for the configs")
    raise UsageError(f"bad --config override: {text}")


def run_absl(main: Callable, doc: str) -> None:
  """app.run(main) with the house policy: a bad flag, config key or config file, or a user's
  mistake raised by main, is one `error:` line with status 2; dashed spellings of the absl
  flags (`--show-config`) are aliases of the defined ones."""
  from absl import app, flags
  argv = take_lr_mults(sys.argv)
  argv = [_absl_spelling(a, flags.FLAGS) for a in argv]
  sys.argv[:] = argv  # ml_collections finds its overrides in sys.argv
  try:
    config_path_on_sys_path(argv)
  except UsageError as e:
    exit_now(f"error: {e}")
  if "--help" in argv or "-h" in argv or "--helpshort" in argv:
    print(doc)
    print(flags.FLAGS.module_help(main.__module__))
    sys.exit(0)

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
      if debug_requested(argv):
        raise
      text = one_line(e)
      if isinstance(e, AttributeError):  # ml_collections: a key that is not in the config
        text = f"no such config key {text}"
      exit_now(f"error: {text} (see --help; --show-config lists every key)")

  def main_with_errors(argv):
    try:
      return main(argv)
    except _user_errors() as e:
      if debug_requested():
        raise
      exit_now(f"error: {one_line(e)}")

  app.run(main_with_errors, argv=argv, flags_parser=parse)


def _absl_spelling(arg: str, defined) -> str:
  if not arg.startswith("--") or arg.startswith("--config."):
    return arg
  name, eq, value = arg[2:].partition("=")
  under = name.replace("-", "_")
  return f"--{under}{eq}{value}" if under != name and under in defined else arg
