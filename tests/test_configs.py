"""Every shipped config loads, validates, and builds its model; step arithmetic is strict."""
import glob
import importlib.util
import os

import ml_collections
import pytest
from flax import nnx

from gender_jax.train import schedule as config_lib
from gender_jax.models import create_model
from tests.helpers import REPO

CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                 if not p.endswith(("__init__.py", "common.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_validates_and_builds(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config_lib.validate(config)
  assert "python -m gender_jax.train --config configs/" in module.__doc__
  nnx.eval_shape(lambda: create_model(config.model))


def test_get_steps_converts_and_rejects_two_settings():
  c = ml_collections.ConfigDict(dict(total_steps=None, total_epochs=2.0, total_examples=None))
  assert config_lib.get_steps("total", c, num_train_examples=1000, batch_size=100) == 20
  c.total_examples = 500
  with pytest.raises(ValueError, match="only one of"):
    config_lib.get_steps("total", c, 1000, 100)
  assert config_lib.get_steps("eval_every", c, 1000, 100, default=7) == 7
