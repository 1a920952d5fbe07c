"""One data-source contract, dispatched by name.

A source is a random-access sequence (grain's `RandomAccessDataSource` protocol) of records
`{"image": JPEG bytes or uint8 HxWx3, "label": 0 female | 1 male, "source": name, …}`.
`config.data.sources` maps a source name to its options and mixing `weight`.
"""
from __future__ import annotations

from typing import Any, Callable

import ml_collections

from gender_jax.data import synthetic

# name → factory(split, options, config) → source. Dataset modules register themselves here.
REGISTRY: dict[str, Callable[..., Any]] = {}


def register(name: str):
  def wrap(factory):
    REGISTRY[name] = factory
    return factory
  return wrap


@register("synthetic")
def _synthetic(split: str, options: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
  size = options.get(f"{split}_size", options.get("train_size") if split == "train" else 512)
  return synthetic.SyntheticSource(split, size=size, image_size=options.get("image_size", 40),
                                   seed=options.get("seed", 0))


def get_source(name: str, split: str, config: ml_collections.ConfigDict):
  """The `split` of source `name` as configured in `config.data.sources[name]`."""
  base = name.split(":")[0]
  if base not in REGISTRY:
    raise ValueError(f"unknown data source {name!r}; known: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[base](split, config.data.sources[name], config)


def configured_sources(config: ml_collections.ConfigDict) -> dict[str, float]:
  """{source name: mixing weight} for the training mixture."""
  sources = {name: float(opts.get("weight", 1.0)) for name, opts in config.data.sources.items()}
  if not sources:
    raise ValueError("config.data.sources is empty: name at least one data source")
  if any(w < 0 for w in sources.values()) or not any(sources.values()):
    raise ValueError(f"source weights must be ≥ 0 and not all 0: {sources}")
  return {k: w for k, w in sources.items() if w > 0}
