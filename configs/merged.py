"""Faces and persons in one model: UTKFace faces + PETA person crops, dlib's ResNet fine-tuned.

  python -m gender_jax.train --config configs/merged.py --workdir runs/merged \
      --config.data.sources.folder.path=UTKFACE_DIR \
      --config.data.sources.peta.manual_dir=PETA_DIR --config.init_from=weights/dlib_face
  python -m gender_jax.evaluate --workdir runs/merged --tta flip --out runs/merged/report

UTKFACE_DIR and PETA_DIR as in configs/utkface_dlib.py and configs/peta.py (the weights too).
Each source keeps its own augmentation (faces: ±10° rotation and race-balanced sampling;
bodies: no rotation) and its own mixing weight (`--config.data.sources.NAME.weight`; here
about their sizes, 18,655 and 15,219 train images). Every image is letterboxed to 150 px:
UTKFace's square crops are unchanged by it, PETA's tall ones keep their aspect. Validation,
the trainer's log and `evaluate`'s report are per source; the face template is measured on
the face source's crops alone.

`configs/merged.py:gpu`: the whole network trains, batch 256, 12 epochs (not measured here).

Measured on 2 CPU cores, balanced accuracy on each identity-disjoint test split (flip TTA;
`evaluate --bundle A --bundle B --bundle C --config SOURCES.py`, SOURCES.py this config with
the two paths set):

| trained on ↓ / tested on → | UTKFace test (n=2,331) | PETA test (n=1,867) |
|---|---|---|
| faces only (utkface_dlib.py, 2 epochs) | 0.918 [0.906, 0.929] | 0.450 [0.432, 0.467] |
| persons only (peta.py, 30 epochs, ~25 min) | 0.523 [0.503, 0.542] | 0.775 [0.756, 0.793] |
| merged (this config, 3 epochs, ~35 min) | **0.928 [0.917, 0.938]** | **0.781 [0.761, 0.800]** |
| merged, its first epoch only | 0.913 [0.901, 0.924] | 0.758 [0.738, 0.779] |

The merged model is at least as good as each single-source model on that model's own source.
Face + body on PETA crops where BlazeFace finds a face (53%; benchmarks/face_body.py): the
face bundle alone is at chance on those tiny faces (0.529), the fused answer 0.797 against the
body's 0.791: no real gain at surveillance resolution.
"""
from configs.common import get_base_config
from configs.peta import PERSON_AUGMENT, dlib_recipe


def get_config(arg=None):
  config = get_base_config()
  config.data.sources.folder = dict(weight=0.55, path="", balance_by="race", balance_power=0.5,
                                    rotate=10.0, color_jitter=0.2, grayscale=0.1,
                                    crop_scale=(0.8, 1.0))
  config.data.sources.peta = dict(weight=0.45, manual_dir="", **PERSON_AUGMENT)
  dlib_recipe(config, arg)
  config.total_epochs = 12.0 if arg == "gpu" else 3.0
  return config
