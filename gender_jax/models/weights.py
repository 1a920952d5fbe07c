"""Weight files: params and batch statistics as a flat `{"layer1/0/conv1/kernel": array}` dict.

A weights directory is `weights/` (Orbax) plus `meta.json`: what `python -m gender_jax.convert`
writes, what `config.init_from` reads, and the inside of every inference bundle (bundle.py).
The flat form carries no layout, so ports, tests and exports can name tensors by path.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

HEAD = "fc/"  # our classifier head; always re-initialised when fine-tuning


def flat_key(path) -> str:
  return "/".join(str(getattr(p, "key", p)) for p in path)


def to_flat(state: nnx.State) -> dict[str, np.ndarray]:
  """nnx.State → {"a/0/b": array}: a layout-free form for files and ports."""
  return {flat_key(path): np.asarray(jax.device_get(v.get_value()))
          for path, v in nnx.to_flat_state(state)}


def load_flat(model: nnx.Module, flat: dict[str, Any], *, collections=(nnx.Param, nnx.BatchStat),
              skip_prefixes: tuple[str, ...] = (), strict: bool = True) -> list[str]:
  """Writes `flat` into the model's variables in place; returns the keys left at init.

  With `strict`, every model variable outside `skip_prefixes` must be present with the right
  shape and every entry of `flat` must be used; all problems are reported in one error.
  """
  state = nnx.state(model, nnx.Any(*collections))
  problems, left, used = [], [], set()
  for path, var in nnx.to_flat_state(state):
    key = flat_key(path)
    if key.startswith(skip_prefixes):
      left.append(key)
      continue
    if key not in flat:
      problems.append(f"missing: {key} {tuple(var.get_value().shape)}")
      continue
    value = np.asarray(flat[key])
    used.add(key)
    if value.shape != var.get_value().shape:
      problems.append(f"shape: {key} has {value.shape}, model wants {tuple(var.get_value().shape)}")
      continue
    var.set_value(jax.numpy.asarray(value, var.get_value().dtype))
  unused = sorted(k for k in flat if k not in used and not k.startswith(skip_prefixes))
  problems += [f"unexpected: {k} {np.shape(flat[k])}" for k in unused]
  if strict and problems:
    raise ValueError(f"{len(problems)} weight mismatch(es):\n  " + "\n  ".join(problems))
  return left


def save_weights(directory: str, flat: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "weights"), flat, force=True)
    ckptr.wait_until_finished()
  _write_meta(directory, meta)  # every process joined Orbax's save; one writes the JSON
  if jax.process_count() > 1:
    # The others may read the directory next (the trainer calibrates the bundle on every
    # process): none goes on before meta.json is there.
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("gender_jax: weights written")


def update_meta(directory: str, **entries) -> dict[str, Any]:
  """Sets top-level entries of a weights directory's meta.json (the weights untouched); the
  file is replaced whole, by process 0."""
  meta = dict(read_meta(directory), **entries)
  _write_meta(directory, meta)
  return meta


def _write_meta(directory: str, meta: dict[str, Any]) -> None:
  """meta.json written by process 0 and renamed whole: a reader never sees half a file."""
  if jax.process_index() == 0:
    path = os.path.join(os.path.abspath(directory), "meta.json")
    with open(path + ".tmp", "w") as f:
      json.dump(meta, f, indent=2)
    os.replace(path + ".tmp", path)


def read_meta(directory: str) -> dict[str, Any]:
  """A weights directory's or bundle's meta.json, without loading the weights."""
  path = os.path.join(os.path.abspath(directory), "meta.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{directory} is not a weights directory or bundle (no meta.json; "
                            "write one with `python -m gender_jax.convert` or by training)")
  with open(path) as f:
    return json.load(f)


def load_weights(directory: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  directory = os.path.abspath(directory)
  meta = read_meta(directory)
  with ocp.StandardCheckpointer() as ckptr:
    flat = ckptr.restore(os.path.join(directory, "weights"))
  return {k: np.asarray(v) for k, v in flat.items()}, meta


def load_pretrained(model, directory: str, *, head: bool | None = False) -> dict[str, Any]:
  """Loads a converted weights directory (or a bundle) into `model`; returns its meta.

  Strict: every model variable must come from the file except the classifier head (kept at
  its fresh initialisation unless `head`; `head=None` loads it exactly when the file stores
  one of the model's shape, as another run's bundle does) and whatever the file lacks by
  construction (meta["fresh_prefixes"], e.g. fc1/fc2 of a Keras VGG saved without top).
  The model must be built with the recorded arch and variant.
  """
  flat, meta = load_weights(directory)
  if head is None:
    ours = to_flat(nnx.state(model, nnx.Param))
    stored = {k: v for k, v in flat.items() if k.startswith(HEAD)}
    head = bool(stored) and all(np.shape(v) == np.shape(ours.get(k)) for k, v in stored.items())
  skip = [p for p in meta.get("fresh_prefixes", []) if p != HEAD]
  if not head:
    skip.append(HEAD)
  elif not any(k.startswith(HEAD) for k in flat):
    raise ValueError(f"{directory}: no classifier head stored (convert with --keep-head)")
  try:
    load_flat(model, flat, skip_prefixes=tuple(skip))
  except ValueError as e:
    recorded = meta.get("model", meta)  # a bundle keeps arch/variant under "model"
    width = recorded.get("width")
    raise ValueError(f"{directory} holds {recorded.get('arch', '?')} weights (variant "
                     f"{recorded.get('variant', '?')}{f', width {width}' if width else ''}); "
                     "build the model with that model.arch"
                     f"{', model.variant and model.width' if width else ' and model.variant'}. "
                     f"{e}") from None
  return meta
