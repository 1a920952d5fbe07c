"""The shared defaults every config starts from; each section mirrors a trainer section."""
import ml_collections
from ml_collections.config_dict import placeholder


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # input
  config.data = ml_collections.ConfigDict()
  config.data.sources = ml_collections.ConfigDict()  # name → {weight, manual_dir, …}
  config.data.folder = ""    # shortcut: train on one male/ + female/ folder (prepared once)
  config.data.data_dir = ""  # prepared datasets ("" → $GENDER_JAX_DATA_DIR or ~/gender_jax_data)
  config.data.image_size = 224
  config.data.preprocessing = "scratch"  # overridden by the preset recorded in init_from
  config.data.batch_size = 256           # global, over all devices of all hosts
  config.data.eval_batch_size = 256
  config.data.crop_scale = (0.6, 1.0)
  # "squash" to image_size x image_size, or "letterbox": aspect kept, padded (person crops);
  # recorded in the bundle's preprocessing, so predict and serve resize the same way.
  config.data.resize = "squash"
  config.data.flip = True
  config.data.num_workers = 0            # grain worker processes; threads cost less per image
  config.data.read_threads = -1          # decode threads per process (-1: cores-1 on an accelerator, 2 on CPU)
  # Flip, colour jitter and grayscale in the jitted train step (keyed per example), so the
  # host only decodes, crops and resizes; off, the host does them.
  config.data.device_augment = False
  config.data.store_size = 0             # stored shorter side of prepared sources (0: as is; -1: ~1.15x image_size)
  # Training's host decode/crop/resize: "opencv" (libjpeg-turbo + OpenCV, 2-3x less CPU per
  # image) or "pil" (the eval path's library).
  config.data.image_backend = "opencv"
  config.data.prefetch = 4

  # model
  config.model = ml_collections.ConfigDict()
  config.model.arch = "resnet50"
  config.model.num_classes = 2
  config.model.compute_dtype = "bfloat16"  # params stay float32
  config.model.variant = "torchvision"
  config.model.dropout = 0.5
  # BatchNorm of the trainable stages: "train" (batch statistics, running averages updated)
  # or "frozen" (the loaded statistics, never changed: the usual choice for small-batch
  # fine-tuning). Frozen stages always use their loaded statistics.
  config.model.bn = "train"

  # fine-tuning: scratch | all | head | last_n (head + the last `last_n` stages)
  config.init_from = ""    # a `gender_jax.convert` output or another run's bundle
  config.resume_from = ""  # another run's checkpoints/ directory
  config.finetune = ml_collections.ConfigDict(dict(mode="scratch", last_n=1))

  # optimizer & schedule
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = "sgd"
  config.optimizer.lr = 0.1
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = True
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.weight_decay = 5e-5
  config.optimizer.grad_clip_norm = 0.0
  config.optimizer.warmup_steps = placeholder(int)
  config.optimizer.warmup_epochs = placeholder(float)
  config.optimizer.warmup_examples = placeholder(int)
  config.optimizer.end_lr_fraction = 0.0
  config.optimizer.lr_mult = ml_collections.ConfigDict()  # stage name → lr multiplier
  # EMA of the weights (0: off; e.g. 0.999): validated, and written to the bundle, in place
  # of the live weights. ema_warmup ramps the decay as min(decay, (1 + step) / (10 + step)).
  config.optimizer.ema_decay = 0.0
  config.optimizer.ema_warmup = False
  config.label_smoothing = 0.1
  config.mixup_alpha = 0.0  # mixup in the train step, λ ~ Beta(α, α) (0: off; e.g. 0.2)
  config.total_steps = placeholder(int)
  config.total_epochs = placeholder(float)
  config.total_examples = placeholder(int)

  # evals & logging
  config.eval_every_steps = placeholder(int)
  config.eval_every_epochs = placeholder(float)
  config.eval_every_examples = placeholder(int)
  config.log_every = 50
  # A step whose loss or gradient norm is NaN/inf stops the run (exit 1, no bundle). N > 0:
  # such a step's update is skipped instead, and the run stops after N of them in a row.
  config.max_nonfinite_steps = 0
  # After training, in this order, on the bundle (gender_jax/train/after.py): `precise_bn`
  # (BatchNorm statistics recomputed on `precise_bn_batches` training batches),
  # `face_template` (the detector's eye and mouth positions on the face crops, so photos'
  # faces are aligned like this data's; without it, the UTKFace framing), `calibrate`
  # (temperature scaling on the validation splits, and an abstain threshold reaching
  # `abstain_target_accuracy` on the answered images; 0: never abstain).
  config.after_training = "face_template,calibrate"
  config.precise_bn_batches = 40
  config.abstain_target_accuracy = 0.0

  # checkpoint
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.keep = 2
  config.checkpoint.best_metric = "val_balanced_accuracy"
  config.checkpoint.async_save = True
  config.checkpoint.checkpoint_every_steps = placeholder(int)
  config.checkpoint.checkpoint_every_epochs = placeholder(float)
  config.checkpoint.checkpoint_every_examples = placeholder(int)
  config.checkpoint.preemption_check_every = 10

  # mesh
  config.mesh = ml_collections.ConfigDict(dict(num_devices=0))  # 0: every device
  return config


def use_adamw(config: ml_collections.ConfigDict, *, lr: float, weight_decay: float,
              warmup_epochs: float = 0.5) -> ml_collections.ConfigDict:
  """AdamW with a warmup counted in epochs: the CPU-budget configs' optimizer."""
  config.optimizer.name = "adamw"
  config.optimizer.lr = lr
  config.optimizer.weight_decay = weight_decay
  config.optimizer.warmup_epochs = warmup_epochs
  return config


def add_sources(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """`configs/x.py:celeba,peta` → those sources, each to be pointed at its files with
  `--config.data.sources.celeba.manual_dir=PATH`; no arg → `--config.data.folder=PATH`."""
  for name in filter(None, (arg or "").split(",")):
    config.data.sources[name] = dict(weight=1.0, manual_dir="")
  return config
