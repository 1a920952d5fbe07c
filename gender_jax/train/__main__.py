from gender_jax.train.main import run

run()
