"""Entry point: `python -m gender_jax.train --config configs/demo.py --workdir DIR`.

Overrides: `--config.data.batch_size=64` (the config is locked: a typo'd key fails).
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, bundle.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging.Filter):
  """Drops Orbax's and grain's per-save INFO lines so the progress line stays readable."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "grain"))


def main(argv):
  del argv
  for handler in logging.getLogger().handlers:
    handler.addFilter(_QuietLibraries())
  # Distributed init must precede anything that touches devices.
  from gender_jax import parallel
  parallel.initialize_distributed()
  from gender_jax import trainer
  import jax
  logging.info("jax %s on %s", jax.__version__, jax.devices()[0].device_kind)
  result = trainer.train_and_evaluate(_CONFIG.value, FLAGS.value)
  if result.get("preempted"):
    sys.exit(143)  # non-zero, so schedulers restart the job; the rerun resumes


if __name__ == "__main__":
  app.run(main)
