"""The seed project's small CNN from scratch: 128 px crops, Adam 2e-4, dropout 0.5.

  python -m gender_jax.train --config configs/cnn_small.py --workdir runs/cnn_small \
      --config.data.folder=/path/to/photos
  python -m gender_jax.evaluate --workdir runs/cnn_small --out runs/cnn_small/report

For a user with a couple of thousand photos and no pretrained weights: 1.2 M parameters,
trains in minutes on a CPU at 64 px (--config.data.image_size=64).

Not the recommended small config: at equal training time on utkface-2k (1,600 train, 200
validation images) the demo's resnet_tiny (78 k parameters, 1-4 MFLOP/img) is better.
Both from scratch with benchmarks/models.py's recipe (AdamW 1e-3, half-epoch warmup,
cosine, batch 32, clip 5, seed 0), resnet_tiny given more epochs for the same or less CPU
time (2 shared, loaded cores; wall time includes start-up, compiles and validation):

| size | model | epochs (steps) | CPU s | wall s | val. bal. acc. | test bal. acc. [95% CI] |
|---|---|---|---|---|---|---|
| 32 px | cnn_small   | 3 (150)   |  74 | 199 | 0.752 | 0.817 [0.770, 0.871] |
| 32 px | resnet_tiny | 10 (500)  |  66 | 223 | 0.806 | 0.847 [0.794, 0.889] |
| 64 px | cnn_small   | 3 (150)   | 191 | 907 | 0.665 | 0.658 [0.591, 0.712] |
| 64 px | resnet_tiny | 16 (800)  | 101 | 497 | 0.806 | 0.845 [0.795, 0.894] |
| 64 px | resnet_tiny | 24 (1200) | 127 | 583 | 0.831 | 0.849 [0.797, 0.895] |

  python benchmarks/models.py --arch cnn_small --size 64 --epochs 3 --batch 32 --lr 1e-3 \
      --warmup 0.5 --precise-bn 0 --no-tflite      # resnet_tiny: --arch resnet_tiny --epochs 24
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
