"""PETA persons (whole-body crops), letterboxed: a narrow ResNet-18 from scratch on a CPU budget.

  python -m gender_jax.data prepare --source peta --manual-dir PETA_DIR   # optional
  python -m gender_jax.train --config configs/peta.py --workdir runs/peta \
      --config.data.sources.peta.manual_dir=PETA_DIR
  python -m gender_jax.evaluate --workdir runs/peta --tta flip --out runs/peta/report

PETA_DIR is PETA as published (10 collections, each `archive/` with Label.txt); the split is
seeded and identity-disjoint (no official one exists), 15,219 / 1,913 / 1,867 images. Person
crops (tall, ~1:2 to 1:3) are letterboxed (`data.resize`): aspect kept, the sides padded with
the preset's mean colour. The augmentation suits bodies: flip, scale/crop jitter whose aspect
is drawn around the crop's own, colour; no rotation.

No ImageNet weights exist here. `configs/peta.py:dlib` fine-tunes dlib's face-recognition
ResNet instead (the only pretrained backbone, configs/utkface_dlib.py; add
`--config.init_from=weights/dlib_face`): its face features do not carry to bodies — a linear
probe of them on 768 PETA crops reaches 0.62-0.65 balanced accuracy on validation, and
fine-tuned (last four levels, 150 px) it still answered "male" for every validation crop
after one epoch (balanced accuracy 0.500, loss 0.69). `configs/peta.py:gpu`: ResNet-18 at
full width, 160 px, batch 256, 60 epochs (not measured here: no device was lent).
Results: see configs/merged.py, whose table holds this config's row.
"""
from configs.common import get_base_config, use_adamw
from configs.utkface_dlib import dlib_finetune

# Bodies: scale and crop jitter (3/4..4/3 aspect), flip, colour; no rotation (the face
# template's ±10° suits aligned faces, not standing people).
PERSON_AUGMENT = dict(crop="random_resized", crop_scale=(0.7, 1.0), rotate=0.0,
                      color_jitter=0.2, grayscale=0.1)


def dlib_recipe(config, arg=None):
  """dlib's ResNet at its native 150 px, letterboxed, the last four levels fine-tuned (the
  CPU recipe of configs/utkface_dlib.py); `arg` "gpu": everything trains, batch 256."""
  config.data.resize = "letterbox"
  config.data.device_augment = True
  config.data.image_size = 150
  dlib_finetune(config)
  config.eval_every_epochs = 1.0
  config.log_every = 20
  if arg == "gpu":
    config.finetune.mode = "all"
    config.data.batch_size = 256
    config.data.eval_batch_size = 512
    config.model.compute_dtype = "bfloat16"
    config.optimizer.lr = 3e-4 * 256 / 64
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}: none, or 'gpu'")
  return config


def scratch_recipe(config, arg=None):
  """ResNet-18 at 1/4 width from scratch, 96 px letterboxed (a 1:2 person is 48x96 px),
  30 epochs; `arg` "gpu": full width at 160 px, batch 256, 60 epochs."""
  config.data.resize = "letterbox"
  config.data.device_augment = True  # flip, colour and grayscale in the step
  config.data.image_size = 96
  config.data.batch_size = 128
  config.data.eval_batch_size = 256
  config.model.arch = "resnet18"
  config.model.width = 16
  config.model.compute_dtype = "float32"  # bf16 is slower than f32 on CPUs
  use_adamw(config, lr=2e-3, weight_decay=0.05)
  config.label_smoothing = 0.1
  config.total_epochs = 30.0  # 8 epochs at 80 px: validation 0.751; 30 at 96 px: 0.766
  config.eval_every_epochs = 5.0
  config.log_every = 20
  if arg == "gpu":
    config.data.image_size = 160
    config.data.batch_size = 256
    config.data.eval_batch_size = 512
    config.model.width = 64
    config.model.compute_dtype = "bfloat16"
    config.total_epochs = 60.0
  return config


def get_config(arg=None):
  config = get_base_config()
  config.data.sources.peta = dict(weight=1.0, manual_dir="", **PERSON_AUGMENT)
  if arg == "dlib":
    dlib_recipe(config)
    config.total_epochs = 3.0
  elif arg in (None, "", "gpu"):
    scratch_recipe(config, arg or None)
  else:
    raise ValueError(f"unknown config argument {arg!r}: none, 'dlib' or 'gpu'")
  return config
