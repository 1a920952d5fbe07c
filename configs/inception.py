"""Inception-v3 at 299 px: the seed projects' retrain-the-last-layer model.

  python -m gender_jax.train --config configs/inception.py --workdir runs/inception \
      --config.data.folder=/path/to/photos
Last layer only on ported weights (python -m gender_jax.convert --from torchvision
--arch inception_v3 ...; the port records x/127.5 - 1 preprocessing, which is what
torchvision's transform_input feeds those weights):
  ... --config.init_from=weights/inception_v3_tv --config.finetune.mode=head
Not yet measured here; see benchmarks/README.md for the comparison table.
"""
from configs import resnet


def get_config(arg=None):
  config = resnet.get_config(arg)
  config.model.arch = "inception_v3"
  config.model.transform_input = False  # True: feed it torchvision-normalised input instead
  config.data.image_size = 299
  return config
