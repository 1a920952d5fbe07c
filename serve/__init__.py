"""Ray Serve application for gender_jax: `serve run serve/config.yaml` from the repository root."""
