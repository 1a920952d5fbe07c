"""ResNet-50 at 224 px, bf16 compute: the default real config.

Your own photos (male/ and female/ folders, optional labels.csv):
  python -m gender_jax.train --config configs/resnet.py --workdir runs/r50 \
      --config.data.folder=/path/to/photos
Public datasets, mixed (weights via --config.data.sources.NAME.weight):
  python -m gender_jax.train --config configs/resnet.py:celeba,peta --workdir runs/r50 \
      --config.data.sources.celeba.manual_dir=/data/celeba \
      --config.data.sources.peta.manual_dir=/data/PETA
Fine-tune ImageNet weights you brought (see README, "Ported weights"):
  ... --config.init_from=weights/resnet50_tv --config.finetune.mode=all

Data parallel over every device of every host; the batch is global. Not yet measured here
(no GPU, no ImageNet weights on this machine); see the README results table for what is.
"""
from configs.common import add_sources, get_base_config


def get_config(arg=None):
  config = add_sources(get_base_config(), arg)
  config.model.arch = "resnet50"
  config.data.image_size = 224
  config.data.batch_size = 256
  config.optimizer.name = "sgd"
  config.optimizer.lr = 0.1 * config.data.batch_size / 256  # linear scaling rule
  config.optimizer.warmup_epochs = 1.0
  config.total_epochs = 30.0
  config.eval_every_epochs = 1.0
  config.log_every = 100
  return config
