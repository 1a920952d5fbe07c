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
from tests.helpers import tiny_config

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


def test_float16_compute_is_rejected():
  with pytest.raises(ValueError, match="float16.*loss scaling"):
    config_lib.validate(tiny_config(**{"model.compute_dtype": "float16"}))
  config_lib.validate(tiny_config(**{"model.compute_dtype": "bfloat16"}))


def test_warmup_in_epochs_is_that_many_epochs_of_steps():
  """optimizer.warmup_epochs was turned into steps with one example and a batch of one: 0.5
  epochs became a 1-step warmup in every AdamW config (configs.common.use_adamw), and
  configs/resnet.py's 1-epoch SGD warmup too."""
  from gender_jax.train import steps
  config = tiny_config(**{"optimizer.warmup_steps": None, "optimizer.warmup_epochs": 0.5,
                          "data.batch_size": 10})
  _, schedule = steps.create_optimizer(config, {"w": "lr_x1.0"}, total_steps=100,
                                       num_train=200)  # 20 steps an epoch: warm up for 10
  lr = config.optimizer.lr
  assert float(schedule(5)) == pytest.approx(lr / 2, rel=1e-3)
  assert float(schedule(10)) == pytest.approx(lr, rel=1e-3)


def test_two_step_units_are_a_config_error_not_a_traceback():
  """configs/utkface.py counts in epochs; `--config.total_steps=2` on top of it used to end in
  a ValueError traceback from deep in the input setup, after the data was opened."""
  with pytest.raises(ValueError, match="total_steps and total_epochs are both set.*"
                                       "--config.total_epochs=0"):
    config_lib.validate(tiny_config(**{"total_epochs": 3.0}))
  config_lib.validate(tiny_config(**{"total_epochs": 0.0}))
