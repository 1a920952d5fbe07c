"""gender_jax: train, evaluate and serve image-based gender classifiers with JAX."""

CLASS_NAMES = ("female", "male")  # label 0, label 1 — the order every source maps onto
