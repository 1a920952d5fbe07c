"""Demo: a tiny ResNet on the built-in synthetic set; runs anywhere, downloads nothing.

  python -m gender_jax.train --config configs/demo.py --workdir runs/demo

The synthetic images are noisy colour gratings whose orientation is the label (5% of labels
flipped), so the best reachable accuracy is ~95%. On 2 CPU cores: about 1 minute, ending at
~0.9 validation accuracy on its own held-out split (chance: 0.5).
"""
from configs.common import get_base_config


def get_config():
  config = get_base_config()
  config.data.sources.synthetic = dict(weight=1.0, train_size=4096, validation_size=512,
                                       image_size=40, seed=0)
  config.data.image_size = 32
  config.data.crop_scale = (0.7, 1.0)
  config.data.batch_size = 64
  config.data.eval_batch_size = 128
  config.model.arch = "resnet_tiny"
  config.model.compute_dtype = "float32"  # bf16 is slower than f32 on CPUs
  config.optimizer.name = "adamw"
  config.optimizer.lr = 3e-3
  config.optimizer.weight_decay = 1e-4
  config.optimizer.warmup_steps = 20
  # Steps, not epochs, so `--config.total_steps=N` can shorten a run from the command line.
  epoch = 4096 // config.data.batch_size
  config.total_steps = 6 * epoch
  config.eval_every_steps = 2 * epoch
  config.log_every = 20
  config.label_smoothing = 0.0
  config.after_training = "calibrate"  # synthetic images hold no faces to measure
  return config
