"""The command-line layer every command shares: options, bundle/run resolution, config loading
and one error policy.

Error policy: `UsageError` is a mistake the user can fix (a path, a key, a number); `run(main)`
prints it as one `error: …` line and exits 2. The traceback appears only with `--debug` or
GENDER_JAX_DEBUG=1, so a real bug can still be reported in full. The `require_*` checks need
no data: commands call them before any work starts (and before a workdir is created).

errors.py (the policy and the checks), options.py (argparse and the shared options, bundle and
run resolution, run configs), train_flags.py (the same policy for train's absl flags). Flags
are spelled with dashes; underscore spellings are aliases. Only the standard library is
imported at the top, so every layer may raise these errors.
"""
from gender_jax.cli.errors import *  # noqa: F401,F403
from gender_jax.cli.errors import _user_errors  # noqa: F401
from gender_jax.cli.options import *  # noqa: F401,F403
from gender_jax.cli.train_flags import *  # noqa: F401,F403
