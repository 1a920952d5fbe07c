"""MobileNet V3-Large at 224 px: the phone-sized model (V3-Small and V2 by one override).

  python -m gender_jax.train --config configs/mobilenet.py --workdir runs/mnv3 \
      --config.data.folder=/path/to/photos
Other sizes: --config.model.arch=mobilenet_v3_small (or mobilenet_v2), --config.model.width=0.75.
Fine-tune ported ImageNet weights (python -m gender_jax.convert --arch mobilenet_v3_large ...):
  ... --config.init_from=weights/mnv3_tv --config.finetune.mode=head
(Keras ports: also --config.model.variant=keras; the meta's preprocessing is then x/127.5 - 1.)
From scratch on a short budget, precise BN matters: V3's BatchNorm averages slowly (flax
momentum 0.99, torchvision's), so after a few hundred steps the running statistics are still
near their initial values and the eval-mode model answers one class; recomputing them on
training batches after training (`precise_bn` in `config.after_training`) fixes that. utkface-2k, 32 px,
3 epochs (150 steps), benchmarks/models.py's shared recipe, test balanced accuracy
(before → after precise BN on 40 training batches): mobilenet_v3_small 0.500 → 0.618,
mobilenet_v3_large 0.500 → 0.756, mobilenet_v2 (momentum 0.9) 0.627 → 0.613. The whole
comparison is in benchmarks/README.md ("Models").
"""
from configs import resnet


def get_config(arg=None):
  config = resnet.get_config(arg)
  config.model.arch = "mobilenet_v3_large"
  config.model.width = 1.0  # channel multiplier; ported weights need 1.0
  config.model.dropout = 0.2  # torchvision's and Keras's classifier dropout
  config.after_training = "precise_bn,face_template,calibrate"
  return config
