"""VGG-16 with BatchNorm at 224 px — the architecture of many published gender models.

  python -m gender_jax.train --config configs/vgg16.py --workdir runs/vgg16 \
      --config.data.folder=/path/to/photos
Fine-tuning torchvision `vgg16_bn` or Keras VGG16 weights: set --config.model.arch=vgg16 for
the Keras (no BN) port, and --config.init_from=DIR.
"""
from configs import resnet


def get_config(arg=None):
  config = resnet.get_config(arg)
  config.model.arch = "vgg16_bn"
  config.optimizer.lr = 0.01 * config.data.batch_size / 256  # VGG diverges at ResNet's rate
  config.optimizer.grad_clip_norm = 5.0
  return config
