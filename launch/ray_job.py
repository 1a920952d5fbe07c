"""Runs one multi-process training on a Ray cluster: one worker per node (or per GPU group).

  python launch/ray_job.py --address HOST:6379 --num-workers 4 --gpus-per-worker 8 \
      -- --config configs/resnet.py --workdir /shared/runs/r50

Everything after `--` goes to `python -m gender_jax.train`. Each worker is a Ray actor holding
one placement-group bundle; it starts the trainer as a subprocess with JAX_COORDINATOR_ADDRESS
(rank 0's node and a free port there), JAX_NUM_PROCESSES and JAX_PROCESS_ID, so every worker
runs the same code as under launch/local.sh. The workdir must be storage every node sees.
The cluster must have the package installed (or pass --working-dir to ship this tree).

Exit status: 0 when all workers finish; else the first non-zero worker status (143: stopped
by SIGTERM after checkpointing — run the same command again to resume; 75: a peer vanished).
Ctrl-C / SIGTERM on this driver is passed to every worker as SIGTERM.

`--max-restarts N`: when a worker or its node dies (the actor is lost, the trainer is killed by
a signal, or a survivor reports its peer gone with 75), the whole group is stopped and started
again, up to N times; the rerun resumes from the workdir's last checkpoint, exactly (the batch
at each step is a function of the step). A trainer that fails by itself (1, 2) is not
restarted: it would fail the same way.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                 help="Ray cluster address (default: $RAY_ADDRESS)")
  p.add_argument("--num-workers", type=int, required=True, help="training processes")
  p.add_argument("--gpus-per-worker", type=float, default=0, help="0: CPU training")
  p.add_argument("--cpus-per-worker", type=float, default=1)
  p.add_argument("--strategy", default=None,
                 choices=("STRICT_SPREAD", "SPREAD", "PACK", "STRICT_PACK"),
                 help="placement: default STRICT_SPREAD (one worker per node) with GPUs, "
                      "else SPREAD")
  p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                 help="extra environment for the trainers (repeatable), e.g. XLA_FLAGS=…")
  p.add_argument("--working-dir", default=None,
                 help="ship this directory to the workers (Ray runtime_env); default: run "
                      "in this directory's path, which must exist on every node")
  p.add_argument("--placement-timeout", type=float, default=600,
                 help="seconds to wait for the cluster to have room for all workers")
  p.add_argument("--max-restarts", type=int, default=0,
                 help="restart the worker group from the last checkpoint up to N times when "
                      "a worker or node dies (default 0)")
  p.add_argument("train_args", nargs=argparse.REMAINDER,
                 help="-- then the arguments of `python -m gender_jax.train`")
  args = p.parse_args(argv)
  args.train_args = [a for a in args.train_args if a != "--"] if args.train_args[:1] == ["--"] \
      else args.train_args
  problems = []
  if not args.address:
    problems.append("no Ray cluster: pass --address HOST:PORT or set RAY_ADDRESS "
                    "(`ray start --head` starts one)")
  if args.max_restarts < 0:
    problems.append(f"--max-restarts must be >= 0, got {args.max_restarts}")
  if args.num_workers < 1:
    problems.append(f"--num-workers must be >= 1, got {args.num_workers}")
  for flag in ("--config", "--workdir"):
    if not any(a == flag or a.startswith(flag + "=") for a in args.train_args):
      problems.append(f"pass {flag} after `--` (it goes to gender_jax.train)")
  for kv in args.env:
    if "=" not in kv:
      problems.append(f"--env {kv!r} is not KEY=VALUE")
  if problems:
    p.error("\n  " + "\n  ".join(problems))
  if args.strategy is None:
    args.strategy = "STRICT_SPREAD" if args.gpus_per_worker else "SPREAD"
  return args


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
  except ImportError:
    sys.exit("launch/ray_job.py: ray is not installed here: pip install -e '.[launch]'")

  runtime_env = {}
  if args.working_dir:
    runtime_env["working_dir"] = args.working_dir
    runtime_env["excludes"] = [".venv", ".git", "runs", "*.pyc"]
  ray.init(address=args.address, runtime_env=runtime_env or None, log_to_driver=True)

  @ray.remote(max_concurrency=2)  # `run` blocks; `stop` must still get through
  class Trainer:
    def __init__(self, rank: int):
      self.rank, self.proc = rank, None

    def coordinator(self) -> str:
      """This node's address and a free port on it, for rank 0 to serve the others."""
      ip = ray.util.get_node_ip_address()
      with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
        s.bind((ip, 0))
        port = s.getsockname()[1]
      return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

    def run(self, env: dict, train_args: list, cwd: str | None) -> int:
      cwd = cwd if cwd and os.path.isdir(cwd) else None
      self.proc = subprocess.Popen(
          [sys.executable, "-u", "-m", "gender_jax.train", *train_args],
          env={**os.environ, **env}, cwd=cwd, stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True)
      print(f"[{self.rank}] trainer PID {self.proc.pid} on {socket.gethostname()}", flush=True)
      for line in self.proc.stdout:
        print(f"[{self.rank}] {line}", end="", flush=True)
      return self.proc.wait()

    def stop(self, sig: int = signal.SIGTERM) -> None:
      if self.proc and self.proc.poll() is None:
        self.proc.send_signal(sig)

  n = args.num_workers
  bundle = {"CPU": args.cpus_per_worker}
  if args.gpus_per_worker:
    bundle["GPU"] = args.gpus_per_worker
  extra = dict(kv.split("=", 1) for kv in args.env)
  stopping = []  # set by SIGTERM/Ctrl-C on this driver: no restart after that
  group: list = []

  def forward(signum, frame):
    print(f"launch/ray_job.py: got signal {signum}, passing SIGTERM to every worker",
          flush=True)
    stopping.append(signum)
    for w in group:
      w.stop.remote()
  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)

  def run_group() -> tuple[list[int], bool]:
    """One start of all n workers → (exit statuses, whether a worker or node was lost)."""
    pg = placement_group([dict(bundle)] * n, strategy=args.strategy)
    ready, _ = ray.wait([pg.ready()], timeout=args.placement_timeout)
    if not ready:
      sys.exit(f"launch/ray_job.py: the cluster has no room for {n} × {bundle} "
               f"({args.strategy}) after {args.placement_timeout:.0f} s; `ray status` shows "
               "what it has")
    group[:] = [Trainer.options(
        num_cpus=args.cpus_per_worker, num_gpus=args.gpus_per_worker,
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i),
    ).remote(i) for i in range(n)]
    coordinator = ray.get(group[0].coordinator.remote())
    print(f"launch/ray_job.py: {n} workers, coordinator {coordinator}", flush=True)
    refs = [w.run.remote(dict(extra, JAX_COORDINATOR_ADDRESS=coordinator,
                              JAX_NUM_PROCESSES=str(n), JAX_PROCESS_ID=str(i)),
                         args.train_args, None if args.working_dir else os.getcwd())
            for i, w in enumerate(group)]
    status, pending, failed_at, lost = {}, list(refs), None, False
    while pending:
      done, pending = ray.wait(pending, timeout=1.0)
      for ref in done:
        rank = refs.index(ref)
        try:
          status[rank] = ray.get(ref)
        except ray.exceptions.RayError as e:  # the actor or its node died
          print(f"launch/ray_job.py: worker {rank} lost: {e}", flush=True)
          status[rank], lost = 1, True
        if status[rank] < 0 and not stopping:  # the trainer was killed by a signal
          lost = True
        if status[rank] != 0 and failed_at is None:
          failed_at = time.monotonic()
          print(f"launch/ray_job.py: worker {rank} exited with {status[rank]}", flush=True)
      # The others notice a dead peer themselves (parallel.PeerWatchdog); past that, end them.
      # With restarts left there is no need to wait for that: the group starts again anyway.
      grace = float(extra.get("GENDER_JAX_PEER_TIMEOUT", os.environ.get(
          "GENDER_JAX_PEER_TIMEOUT", 60))) + 30
      if pending and failed_at is not None and (
          time.monotonic() - failed_at > grace or (lost and restarts_left())):
        print("launch/ray_job.py: stopping the remaining workers", flush=True)
        # SIGKILL the trainers first: one stuck in a collective ignores SIGTERM, and killing
        # only the actor would leave it running (holding the workdir's lock).
        try:
          ray.get([w.stop.remote(signal.SIGKILL) for w in group], timeout=30)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
          pass  # a dead actor's trainer died with it
        for w in group:
          ray.kill(w)
        break
    remove_placement_group(pg)
    return [status.get(i, 1) for i in range(n)], lost

  attempts = []

  def restarts_left() -> bool:
    return len(attempts) < args.max_restarts and not stopping

  while True:
    codes, lost = run_group()
    print(f"launch/ray_job.py: worker exit statuses {codes}", flush=True)
    # 75: a survivor saw its peer vanish, which is a lost worker too.
    if all(c == 0 for c in codes) or not (lost or 75 in codes) or not restarts_left():
      return next((c for c in codes if c != 0), 0)
    attempts.append(codes)
    print(f"launch/ray_job.py: a worker was lost; restarting the group from the last "
          f"checkpoint (restart {len(attempts)} of {args.max_restarts})", flush=True)


if __name__ == "__main__":
  sys.exit(main())
