"""Before a run's first step: every check that needs no data (paths, config values, batch
size against the devices), then each source's label counts and mixing weight, where a split
with one class stops the run. Nothing here writes to the workdir."""
from __future__ import annotations

import logging
import os

import jax

from gender_jax import cli
from gender_jax.data import folder, prepare, sources
from gender_jax.train import schedule


def check_workdir(workdir: str) -> None:
  """A folder that is or can be made, writable: before the lock creates it."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise cli.UsageError(f"--workdir {workdir!r} is a file, not a folder; give a folder for "
                         "the run (checkpoints, logs, bundle)")
  cli.require_writable(workdir, "--workdir")


def check_config(config, workdir: str) -> None:
  """Every check that needs no data, before any work and before the workdir exists."""
  check_workdir(workdir)
  if config.data.get("folder"):
    folder.require_folder(config.data.folder, "--config.data.folder")
  for name, opts in config.data.sources.items():
    path = opts.get("manual_dir") or opts.get("path")
    if name.split(":")[0] != "synthetic":
      if path:
        cli.require_dir(path, f"config.data.sources.{name}.manual_dir")
      elif not (name.startswith("folder") and config.data.get("folder")):
        raise cli.UsageError(f"data source {name!r} has no files: set "
                                f"--config.data.sources.{name}.manual_dir=PATH")
  if config.init_from:  # before validate(): a wrong path is not a choice of fine-tuning mode
    cli.require_weights_dir(config.init_from, "config.init_from")
  if config.resume_from:
    cli.require_dir(config.resume_from, "config.resume_from")
  try:
    schedule.validate(config)
  except ValueError as e:
    raise cli.UsageError(cli.one_line(e)) from e
  devices = config.mesh.num_devices or jax.device_count()
  for key in ("batch_size", "eval_batch_size"):
    if config.data[key] % devices:
      fix = (config.data[key] // devices + 1) * devices
      raise cli.UsageError(f"data.{key}={config.data[key]} is not divisible by the {devices} "
                              f"devices; use e.g. --config.data.{key}={fix}")


def log_data_sanity(config) -> None:
  """Per-source, per-split label counts and the mixing weights; a one-class split stops here."""
  weights = sources.configured_sources(config)
  total = sum(weights.values())
  for name, weight in weights.items():
    base = name.split(":")[0]
    options = sources.source_options(name, config)
    counts = None
    if base in prepare.KINDS and (base != "synthetic" or options.get("prepared", False)):
      b = sources.prepared_builder(base, options, config)
      counts = prepare.summary(b)["counts"] if b is not None else None
    if counts:
      text = "  ".join(f"{s} female {c['female']} male {c['male']}" for s, c in counts.items())
      for split in ("train", "validation"):
        c = counts.get(split)
        if c and (not c["female"] or not c["male"]):
          where = options.get("path") or options.get("manual_dir") or name
          raise cli.UsageError(
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
