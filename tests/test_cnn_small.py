"""cnn_small: the registry builds it, it trains a few steps with the trainer, and exports."""
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from gender_jax.train import loop as trainer
from gender_jax.models import ARCHS, create_model
from tests.helpers import tiny_config


def test_parameters_stages_and_size_independence():
  cfg = ml_collections.ConfigDict(dict(arch="cnn_small", num_classes=2, compute_dtype="float32"))
  assert "cnn_small" in ARCHS
  model = nnx.eval_shape(lambda: create_model(cfg))
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert 1_000_000 < n < 1_500_000  # global pooling: the same at any image size
  assert model.stages == ("block1", "block2", "block3", "block4", "fc1", "fc")
  model = create_model(ml_collections.ConfigDict(dict(arch="cnn_small", num_classes=2,
                                                      compute_dtype="bfloat16", width=4)))
  model.eval()  # dropout off: two calls agree
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  a, b = model(x), model(x)
  assert a.shape == (2, 2) and a.dtype == np.float32 and np.array_equal(a, b)
  assert model.fc1.kernel.dtype == np.float32  # bf16 compute, f32 params


def test_trains_a_few_steps_and_exports(tmp_path):
  config = tiny_config(**{"model.arch": "cnn_small", "model.width": 8, "total_steps": 2,
                          "eval_every_steps": 2, "checkpoint.checkpoint_every_steps": 2})
  result = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["step"] == 2
  bundle = os.path.join(tmp_path, "run", "bundle")
  pytest.importorskip("ai_edge_litert", reason="pip install -e '.[export]'")
  from gender_jax import export
  out = tmp_path / "cnn_small.tflite"
  contract = export.export(bundle, "tflite", out, check_count=4, log=lambda *_: None)
  assert out.stat().st_size > 0 and contract["parity"]["passed"]
