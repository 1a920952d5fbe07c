"""What a train command does to a workdir that already holds a run, decided before any work.

A workdir holds work once it has a checkpoint or a bundle. Then:
  * the same config, and the bundle written: the run is finished. Nothing is rewritten (a
    bundle calibrated since, by `calibrate`, keeps its threshold); one line says where the
    bundle is and how to train longer or start over.
  * the same config, no bundle yet: the run was stopped; it resumes, as before.
  * another config: refused in one line naming the keys that differ, unless `--continue`
    asks to go on with them (e.g. a larger total_steps). Keys that change what the
    checkpoints hold (the model, the optimizer, fine-tuning) are refused even then: those
    start over in a new workdir. A bundle already there is kept, renamed after its step,
    never overwritten by the continued run.
A workdir with neither checkpoint nor bundle (a run that stopped before its first save)
holds no work, and is used as it is.
"""
from __future__ import annotations

import copy
import json
import os

from gender_jax import cli

CONFIG_FILE = "config.json"
# Keys whose change the checkpoints cannot follow: their arrays have another structure.
STRUCTURAL = ("model.", "finetune.", "optimizer.name", "optimizer.ema_decay", "init_from")
# Keys that only say how the run is looked at or stored, not what it computes.
HARMLESS = ("log_every", "checkpoint.async_save", "checkpoint.keep",
            "checkpoint.preemption_check_every", "data.read_threads", "data.num_workers",
            "data.prefetch")


def _flat(tree, prefix="") -> dict:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _steps_done(workdir: str) -> int | None:
  """The latest checkpoint's step, from the folder names (no Orbax needed), or None."""
  folder = os.path.join(workdir, "checkpoints")
  steps = [int(d) for d in os.listdir(folder) if d.isdigit()] if os.path.isdir(folder) else []
  return max(steps) if steps else None


def _bundle_step(bundle: str) -> int | None:
  try:
    with open(os.path.join(bundle, "meta.json")) as f:
      return int(json.load(f).get("step", 0))
  except (OSError, ValueError, TypeError):
    return None


def _shown(value) -> str:
  return "unset" if value is None else json.dumps(value)


def differences(saved: dict, current: dict) -> list[str]:
  """`key: old → new` for each key whose value differs, the harmless ones left out."""
  a, b = _flat(saved), _flat(current)
  keys = sorted(k for k in set(a) | set(b)
                if a.get(k) != b.get(k) and not k.startswith(HARMLESS))
  return [f"{k} {_shown(a.get(k))} → {_shown(b.get(k))}" for k in keys]


def final_config(config) -> dict:
  """The config as the loop writes it to config.json (init_from's preset and variant in)."""
  from gender_jax.train import loop
  config = copy.deepcopy(config)
  loop._input_spec(config)
  return json.loads(config.to_json_best_effort())


def check(config, workdir: str, go_on: bool) -> str | None:
  """Before any work: None to train (fresh or resuming), a line to print and stop when the
  run is finished, or UsageError when the workdir holds a run of another config."""
  config_file = os.path.join(workdir, CONFIG_FILE)
  bundle = os.path.join(workdir, "bundle")
  done_step = _steps_done(workdir)
  bundle_step = _bundle_step(bundle)
  if (done_step is None and bundle_step is None) or not os.path.exists(config_file):
    return None
  with open(config_file) as f:
    saved = json.load(f)
  current = final_config(config)
  changed = differences(saved, current)
  step = bundle_step if bundle_step is not None else done_step
  if not changed:
    if bundle_step is None:
      return None  # stopped before the end: resume
    longer = max(2 * step, step + 1)
    return (f"{workdir} is already trained to step {step} with this config; nothing was "
            f"rewritten. The bundle is {bundle}. To train longer: add "
            f"--config.total_steps={longer} --continue; to start over: use a new --workdir")
  if not go_on:
    raise cli.UsageError(
        f"{workdir} holds a run (step {step}) of another config: {'; '.join(changed)}. "
        "To go on training it with these changes add --continue; to start over use a new "
        "--workdir")
  structural = [c for c in changed if c.startswith(STRUCTURAL)]
  if structural:
    raise cli.UsageError(
        f"{workdir}: {'; '.join(structural)} changes what its checkpoints hold, so the run "
        "cannot continue; start over with a new --workdir")
  total = current.get("total_steps")
  if total and not any(current.get(f"total_{u}") for u in ("epochs", "examples")) \
      and total <= step:
    raise cli.UsageError(
        f"{workdir} is already at step {step}, so total_steps={total} leaves nothing to "
        f"train; give a larger one, e.g. --config.total_steps={2 * step}")
  import jax
  if bundle_step is not None and jax.process_index() == 0:  # one process writes the workdir
    kept = keep_bundle(bundle, bundle_step)
    print(f"kept the previous bundle (step {bundle_step}) as {kept}")
  return None


def keep_bundle(bundle: str, step: int) -> str:
  """Renames the bundle after its step, so a continued run writes a new one beside it."""
  kept, n = f"{bundle}-step{step}", 1
  while os.path.exists(kept):
    n += 1
    kept = f"{bundle}-step{step}.{n}"
  os.rename(bundle, kept)
  return kept
