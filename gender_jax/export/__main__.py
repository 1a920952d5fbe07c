import sys

from gender_jax.export.cli import main

sys.exit(main())
