#!/usr/bin/env bash
# N training processes on this host: one per GPU (or per group of GPUs), or N CPU processes
# talking over loopback (gloo) for testing.
#
#   launch/local.sh N --config configs/demo.py --workdir runs/demo [--config.x=y ...]
#
# Everything after N goes to `python -m gender_jax.train`. Environment (all optional):
#   PYTHON                   interpreter (default: python3 on PATH)
#   GENDER_JAX_PORT          coordinator port on 127.0.0.1 (default: a free one)
#   GENDER_JAX_INIT_TIMEOUT  seconds to wait for all N to connect (default 300)
#   GENDER_JAX_PEER_TIMEOUT  seconds of peer silence before the others stop (default 60)
#   XLA_FLAGS                e.g. --xla_force_host_platform_device_count=2 for fake CPU devices
# GPUs found by nvidia-smi are split evenly (JAX_LOCAL_DEVICE_IDS); none found: CPU.
# Output lines are prefixed with the process id. SIGTERM/SIGINT are passed to every process
# (they checkpoint and exit 143); the exit status is the first non-zero one, else 0.
set -u

die() { echo "launch/local.sh: $*" >&2; exit 2; }

[[ $# -ge 1 ]] || die "usage: launch/local.sh N [train.py args...] (N = number of processes)"
N=$1; shift
[[ "$N" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '$N'"
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || die "no '$PYTHON' on PATH (set PYTHON=/path/to/venv/bin/python)"
"$PYTHON" -c "import gender_jax" 2>/dev/null \
  || die "'$PYTHON' cannot import gender_jax: activate the venv or pip install -e ."
for a in "$@"; do [[ "$a" == --workdir* ]] && has_workdir=1; [[ "$a" == --config* ]] && has_config=1; done
[[ -n "${has_config:-}" && -n "${has_workdir:-}" ]] \
  || die "pass at least --config FILE and --workdir DIR (they go to gender_jax.train)"

PORT=${GENDER_JAX_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

# GPUs: an even split, process i gets the i-th block.
GPUS=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  GPUS=$(nvidia-smi -L | grep -c '^GPU')
fi
if (( GPUS > 0 )); then
  (( GPUS % N == 0 )) || die "$GPUS GPUs do not split evenly over $N processes"
  PER=$((GPUS / N))
fi

PIDS=()
forward() { echo "launch/local.sh: got $1, passing it to all processes" >&2
            for p in "${PIDS[@]}"; do kill -s "$1" "$p" 2>/dev/null; done; }
trap 'forward TERM' TERM
trap 'forward INT' INT

for ((i = 0; i < N; i++)); do
  ids=""
  if (( GPUS > 0 )); then ids=$(seq -s, $((i * PER)) $((i * PER + PER - 1))); fi
  JAX_COORDINATOR_ADDRESS=127.0.0.1:$PORT JAX_NUM_PROCESSES=$N JAX_PROCESS_ID=$i \
    ${ids:+JAX_LOCAL_DEVICE_IDS=$ids} \
    "$PYTHON" -u -m gender_jax.train "$@" > >(sed -u "s/^/[$i] /") 2>&1 &
  PIDS+=($!)
done
echo "launch/local.sh: $N processes (${PIDS[*]}), coordinator 127.0.0.1:$PORT" >&2

STATUS=0
for p in "${PIDS[@]}"; do
  # `wait` returns early when a trapped signal arrives; wait again until the process is gone.
  while true; do
    wait "$p"; rc=$?
    kill -0 "$p" 2>/dev/null || break
  done
  (( STATUS == 0 && rc != 0 )) && STATUS=$rc
done
wait  # the output filters
exit $STATUS
