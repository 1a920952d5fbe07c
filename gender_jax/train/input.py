"""What the loop needs to know about its input before the first step: sizes, step counts and
the validation sources; process 0 also writes the bad-file report and the split listing."""
from __future__ import annotations

import dataclasses

import jax

from gender_jax.train import schedule as config_lib
from gender_jax.data import sources


@dataclasses.dataclass(frozen=True)
class TrainInput:
  num_train: int       # examples in the training mixture (all sources)
  total_steps: int
  eval_every: int      # steps between validations (default: once, at the end)
  ckpt_every: int      # steps between checkpoints (default: at each validation)
  val_sources: dict    # name → validation source, evaluated one by one


def create_train_input(config, workdir: str) -> TrainInput:
  names = sources.configured_sources(config)
  num_train = sum(len(sources.get_source(n, "train", config)) for n in names)
  batch_size = config.data.batch_size
  total_steps = config_lib.get_steps("total", config, num_train, batch_size)
  if not total_steps:
    raise ValueError("set one of total_steps, total_epochs, total_examples")
  eval_every = config_lib.get_steps("eval_every", config, num_train, batch_size,
                                    default=total_steps)
  ckpt_every = config_lib.get_steps("checkpoint_every", config.checkpoint, num_train,
                                    batch_size, default=eval_every)
  val_sources = {n: sources.get_source(n, "validation", config) for n in names}
  if jax.process_index() == 0:
    sources.write_bad_file_report(config, workdir)  # WORKDIR/bad_files.json
    sources.write_split_listing(config, workdir)    # WORKDIR/splits.csv
  return TrainInput(num_train, total_steps, eval_every, ckpt_every, val_sources)
