"""The seed project's small CNN from scratch: 128 px crops, Adam 2e-4, dropout 0.5.

  python -m gender_jax.train --config configs/cnn_small.py --workdir runs/cnn_small \
      --config.data.folder=/path/to/photos
  python -m gender_jax.evaluate --workdir runs/cnn_small --out runs/cnn_small/report

For a user with a couple of thousand photos and no pretrained weights: 1.2 M parameters,
trains in minutes on a CPU at 64 px (--config.data.image_size=64).
"""
from configs.common import get_base_config, use_adamw


def get_config():
  config = get_base_config()
  config.data.folder = ""  # set on the command line
  config.data.image_size = 128
  config.data.crop_scale = (0.7, 1.0)
  config.data.batch_size = 64
  config.data.eval_batch_size = 256
  config.model.arch = "cnn_small"
  config.model.dropout = 0.5
  config.model.compute_dtype = "float32"  # bf16 is slower than f32 on CPUs; bfloat16 on GPUs
  use_adamw(config, lr=2e-4, weight_decay=1e-4)  # the seed's Adam rate
  config.label_smoothing = 0.0
  config.total_epochs = 30.0
  config.eval_every_epochs = 2.0
  return config
