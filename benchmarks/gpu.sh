#!/usr/bin/env bash
# The GPU run in one command: install the carried wheels beside the host's own packages, then
# every measurement (benchmarks/gpu.py) into $OUT/gpu.json and $OUT/gpu.log.
#
#   python benchmarks/gpu_prepare.py     # here, first: .gpu/whl and .gpu/data
#   bash benchmarks/gpu.sh               # on the GPU host, with .gpu carried
#   bash benchmarks/gpu.sh --dry-run --data DIR --out DIR   # tiny, on a CPU: nothing installed
#
# The host's jax, flax, optax, orbax and torch are used as they are: nothing here replaces
# them (the wheels are installed with --no-deps into a folder of their own).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dry=0
for a in "$@"; do [[ $a == --dry-run ]] && dry=1; done
if [[ $dry == 0 ]]; then
  if ! ls .gpu/whl/*.whl >/dev/null 2>&1; then
    echo "error: no wheels in .gpu/whl: run python benchmarks/gpu_prepare.py before the GPU run" >&2
    exit 2
  fi
  site=${GENDER_JAX_GPU_SITE:-/tmp/gender_jax_site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" .gpu/whl/*.whl || { echo "error: installing .gpu/whl failed" >&2; exit 2; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
# One GPU needs no XLA flags (benchmarks/README.md, "Tuning log"); JAX grows its memory on
# demand so the torch peers in the same parts keep theirs.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_PREALLOCATE=false
exec "$PY" benchmarks/gpu.py "$@"
