import sys

from gender_jax.export.command import main

sys.exit(main())
