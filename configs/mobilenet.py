"""MobileNet V3-Large at 224 px: the phone-sized model (V3-Small and V2 by one override).

  python -m gender_jax.train --config configs/mobilenet.py --workdir runs/mnv3 \
      --config.data.folder=/path/to/photos
Other sizes: --config.model.arch=mobilenet_v3_small (or mobilenet_v2), --config.model.width=0.75.
Fine-tune ported ImageNet weights (python -m gender_jax.convert --arch mobilenet_v3_large ...):
  ... --config.init_from=weights/mnv3_tv --config.finetune.mode=head
(Keras ports: also --config.model.variant=keras; the meta's preprocessing is then x/127.5 - 1.)
Not yet measured here; see benchmarks/README.md for the comparison table.
"""
from configs import resnet


def get_config(arg=None):
  config = resnet.get_config(arg)
  config.model.arch = "mobilenet_v3_large"
  config.model.width = 1.0  # channel multiplier; ported weights need 1.0
  config.model.dropout = 0.2  # torchvision's and Keras's classifier dropout
  return config
