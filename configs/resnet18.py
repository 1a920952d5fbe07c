"""ResNet-18 at 224 px: a third of ResNet-50's compute, most of its accuracy on faces.

  python -m gender_jax.train --config configs/resnet18.py --workdir runs/r18 \
      --config.data.folder=/path/to/photos
Public datasets: `configs/resnet18.py:celeba,pa100k` plus each `...manual_dir=PATH`.
"""
from configs import resnet


def get_config(arg=None):
  config = resnet.get_config(arg)
  config.model.arch = "resnet18"
  return config
