"""Training: the loop (loop.py) and what it runs — input, the jitted step, fine-tuning modes,
mixup, checkpoints, step arithmetic, validation, the metrics writer and post-training steps.
`python -m gender_jax.train --config configs/demo.py --workdir DIR` is the command (main.py)."""
