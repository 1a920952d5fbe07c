"""Serving benchmark: the HTTP endpoint against Ray Serve's own ceilings and the model in-process.

  python benchmarks/serve.py --images ../shared/data/utkface-2k [--bundle WORKDIR/bundle]
                             [--proxy default,ha] [--concurrency 1,8,32] [--seconds 10]
  python benchmarks/serve.py --bundle WORKDIR/bundle --proxy ha --kill-replica [--seconds 30]

For each proxy mode (a fresh Ray each, because the mode is read from the environment when Ray
starts) it measures, with the same single-image POSTs and the same client:
  noop    a deployment that reads the body and answers {}       (Serve's ceiling)
  decode  one that also decodes and resizes it (eval_image)     (the ceiling for any model)
  model   serve/config.yaml as shipped, with --replicas replicas
and then, in this process, the same model called directly on batches of `concurrency` images
(decode + pad + jitted probs + decide), the most the HTTP path could reach. Without --bundle a
resnet_tiny bundle with random weights at 64 px is written to a temporary directory.
Prints a Markdown table and writes JSON to --out.

`--kill-replica`: serve/config.yaml's two replicas under concurrency-8 load; a third of the way
in, one replica is killed (ray.kill, as a lost node or an OOM would). Every request's status,
answer time and Retry-After are kept: the longest wait, the failures by status, and how long
after the kill the service was whole again (a replacement replica ready).
"""
import os
import sys

# This file is named serve.py: keep its folder off sys.path so `serve` is the app package, for
# this process and for the Ray workers that inherit the driver's path.
# GENDER_JAX_SERVE_REPO: serve another checkout's app (and package), e.g. an older commit for
# before/after figures with the same client.
REPO = os.environ.get("GENDER_JAX_SERVE_REPO") or os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(
    os.path.abspath(__file__))]
sys.path.insert(0, REPO)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

PROXY_ENV = {"default": {},
             "ha": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}}


def bundle_class():
  try:
    from gender_jax.inference.bundle import Bundle
  except ImportError:  # a checkout from before the package was foldered
    from gender_jax.bundle import Bundle
  return Bundle


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def load_images(folder: str, count: int) -> list[bytes]:
  paths = sorted(p for p in pathlib.Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
  if not paths:
    raise FileNotFoundError(f"no .jpg/.png images under {folder}")
  return [p.read_bytes() for p in paths[:count]]


def make_random_bundle(directory: str) -> str:
  import ml_collections
  from flax import nnx
  from gender_jax.inference.bundle import save_bundle
  from gender_jax.data import preprocess
  from gender_jax.models import create_model
  config = dict(arch="resnet_tiny", num_classes=2, compute_dtype="float32")
  model = create_model(ml_collections.ConfigDict(config), rngs=nnx.Rngs(0))
  save_bundle(directory, model, model_config=config,
                         preprocessing=preprocess.make_spec(64))
  return directory


# ----------------------------------------------------------------------------- load generator
async def _load(url: str, images: list[bytes], concurrency: int, seconds: float,
                warmup: float = 1.0, kill=None) -> list[dict]:
  """`concurrency` keep-alive clients posting one image each, back to back, for `seconds`
  after `warmup` seconds not recorded (connections, routing tables); `kill()`, if given, runs
  a third of the way in. Each request: start (s after the load began), seconds to its answer,
  status, Retry-After."""
  import aiohttp
  records = []
  connector = aiohttp.TCPConnector(limit=concurrency)
  async with aiohttp.ClientSession(connector=connector) as session:
    async def client(k, start, deadline, record):
      i = k
      while time.perf_counter() < deadline:
        t = time.perf_counter()
        try:
          async with session.post(url, data=images[i % len(images)],
                                  headers={"Content-Type": "image/jpeg"},
                                  timeout=aiohttp.ClientTimeout(total=60)) as r:
            await r.read()
            status, retry = r.status, r.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
          status, retry = type(e).__name__, None
        if record:
          records.append(dict(t=t - start, wait_s=time.perf_counter() - t, status=status,
                              retry_after=retry))
        i += concurrency

    async def killer(start):
      await asyncio.sleep(seconds / 3)
      await asyncio.get_running_loop().run_in_executor(None, kill)
      records.append(dict(t=time.perf_counter() - start, kill=True))

    t0 = time.perf_counter()
    await asyncio.gather(*(client(k, t0, t0 + warmup, False) for k in range(concurrency)))
    start = time.perf_counter()
    await asyncio.gather(*([killer(start)] if kill else []),
                         *(client(k, start, start + seconds, True) for k in range(concurrency)))
  return records


def rates(records: list[dict]) -> dict:
  """Requests per second and latency percentiles of a load's records."""
  lat = np.asarray([r["wait_s"] for r in records]) * 1e3
  elapsed = max(r["t"] + r["wait_s"] for r in records)
  return dict(requests=len(lat), errors=sum(r["status"] != 200 for r in records),
              rps=len(lat) / elapsed, p50_ms=float(np.percentile(lat, 50)),
              p99_ms=float(np.percentile(lat, 99)))


def summarize_kill(records: list[dict]) -> dict:
  kill_t = next(r["t"] for r in records if r.get("kill"))
  reqs = [r for r in records if not r.get("kill")]
  failed = [r for r in reqs if r["status"] != 200]
  by_status: dict = {}
  for r in failed:
    by_status[str(r["status"])] = by_status.get(str(r["status"]), 0) + 1
  after = [r for r in reqs if r["t"] >= kill_t]
  waits = np.asarray([r["wait_s"] for r in reqs])
  return dict(requests=len(reqs), ok=len(reqs) - len(failed), failed_by_status=by_status,
              failed_with_retry_after=sum(r["retry_after"] is not None for r in failed),
              max_wait_s=float(waits.max()), p99_wait_s=float(np.percentile(waits, 99)),
              max_wait_after_kill_s=max((r["wait_s"] for r in after), default=0.0),
              last_failure_after_kill_s=max((r["t"] + r["wait_s"] - kill_t for r in failed),
                                            default=0.0),
              ok_after_kill=sum(r["status"] == 200 for r in after))


def wait_ready(base_url: str, replicas: int, timeout: float = 600) -> float:
  """Until /healthz has answered ready from `replicas` distinct replicas; the seconds taken."""
  import requests
  seen, t0 = set(), time.perf_counter()
  while len(seen) < replicas:
    if time.perf_counter() - t0 > timeout:
      raise TimeoutError(f"{len(seen)} of {replicas} replicas ready after {timeout} s")
    try:
      r = requests.get(base_url + "/healthz", timeout=5)
      body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
      if r.status_code == 200:
        seen.add(body.get("replica", "one"))
    except (requests.RequestException, ValueError):
      pass
    time.sleep(0.2)
  return time.perf_counter() - t0


def measure(url, images, concurrencies, seconds):
  return {c: rates(asyncio.run(_load(url, images, c, seconds))) for c in concurrencies}


# ----------------------------------------------------------------------------- ceilings
def ceiling_apps():
  from fastapi import FastAPI, Request
  from ray import serve

  noop_api, decode_api = FastAPI(), FastAPI()

  @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
  @serve.ingress(noop_api)
  class Noop:
    @noop_api.post("/v1/predict")
    async def predict(self, request: Request):
      await request.body()
      return {}

  @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
  @serve.ingress(decode_api)
  class Decode:
    def __init__(self, size: int):
      self.size = size

    @decode_api.post("/v1/predict")
    async def predict(self, request: Request):
      from gender_jax.data import preprocess
      preprocess.eval_image(await request.body(), self.size)
      return {}

  return Noop, Decode


def run_mode(mode: str, bundle: str, images: list[bytes], concurrencies, seconds, replicas,
             ceilings: bool = True, kill_replica: bool = False) -> dict:
  """One proxy mode, in this (child) process, whose environment already selects it."""
  import ray
  import yaml
  from ray import serve
  from ray.serve._private import api as serve_api
  from ray.serve.schema import ServeDeploySchema
  Bundle = bundle_class()

  port = free_port()
  ray.init(num_cpus=os.cpu_count(), include_dashboard=False, namespace="serve",
           log_to_driver=False)
  try:
    config = yaml.safe_load(open(os.path.join(REPO, "serve", "config.yaml")))
    config["http_options"].update(host="127.0.0.1", port=port)
    schema = ServeDeploySchema.model_validate(config)
    # What `serve run serve/config.yaml` calls, with the port and replica count overridden.
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(),
                                   proxy_location=schema.proxy_location)
    # Crops, as the page's "whole image" mode: `?faces=off` (the default is auto, detection
    # first, where the config turns face detection on); the ceilings ignore the query.
    url = f"http://127.0.0.1:{port}/v1/predict?faces=off"
    size = Bundle(bundle).image_size
    out = {}
    noop, decode = ceiling_apps()
    for name, deployment in (("noop", noop.bind()), ("decode", decode.bind(size))) if ceilings else ():
      serve.run(deployment, name=name, route_prefix="/")
      out[name] = measure(url, images, concurrencies, seconds)
      serve.delete(name)
      print(mode, name, json.dumps(out[name]), flush=True)

    app = schema.applications[0]
    app.args["bundle"] = bundle
    dep = app.deployments[0]
    dep.autoscaling_config = None
    dep.num_replicas = replicas
    # Not Serve's blocking wait (60 s): compiling every batch size can take longer on a busy
    # machine; wait_ready below waits for /healthz instead.
    client.deploy_apps(schema, _blocking=False)
    # A replica answers /healthz "starting" while it compiles; measure once all are ready.
    ready_s = wait_ready(f"http://127.0.0.1:{port}", replicas)
    print(mode, f"{replicas} replica(s) ready {ready_s:.1f} s after the deploy returned",
          flush=True)
    if kill_replica:
      def kill():
        actors = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if "GenderClassifier" in a["name"] and "REPLICA" in a["name"]]
        ray.kill(ray.get_actor(actors[0], namespace="serve"), no_restart=True)
      records = asyncio.run(_load(url, images, concurrencies[0], seconds, warmup=0, kill=kill))
      out["kill"] = dict(summarize_kill(records), concurrency=concurrencies[0], replicas=replicas)
      out["kill_records"] = records
      print(mode, "kill", json.dumps(out["kill"]), flush=True)
      return out
    stats_url = f"http://127.0.0.1:{port}/v1/stats"
    import requests
    before = requests.get(stats_url, timeout=10).json()
    out["model"] = measure(url, images, concurrencies, seconds)
    after = requests.get(stats_url, timeout=10).json()
    out["model_stats"] = dict(
        mean_batch=(after["images"] - before["images"]) / max(1, after["batches"] - before["batches"]),
        compiles_after_warmup=after["compiles_after_warmup"])
    print(mode, "model", json.dumps(out["model"]), json.dumps(out["model_stats"]), flush=True)
    return out
  finally:
    serve.shutdown()
    ray.shutdown()


# ----------------------------------------------------------------------------- in-process
def in_process(bundle_dir: str, images: list[bytes], concurrencies, seconds, batch_sizes) -> dict:
  """The same model called directly: decode + pad + probs + decide, `c` images per call."""
  Bundle = bundle_class()
  from gender_jax.data import preprocess
  bundle = Bundle(bundle_dir, compute_dtype="float32")
  probs_fn, size = bundle.probs_fn(), bundle.image_size
  for n in batch_sizes:
    np.asarray(probs_fn(np.zeros((n, size, size, 3), np.uint8)))
  out = {}
  for c in concurrencies:
    padded = next(s for s in batch_sizes if s >= c)
    lat, done, i = [], 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
      t = time.perf_counter()
      batch = np.zeros((padded, size, size, 3), np.uint8)
      for k in range(c):
        batch[k] = preprocess.eval_image(images[(i + k) % len(images)], size)
      bundle.decide(np.asarray(probs_fn(batch))[:c])
      lat.append(time.perf_counter() - t)
      done += c
      i += c
    elapsed = time.perf_counter() - start
    lat = np.asarray(lat) * 1e3
    out[c] = dict(images_per_s=done / elapsed, batch_p50_ms=float(np.percentile(lat, 50)),
                  batch_p99_ms=float(np.percentile(lat, 99)))
  return out


def table(results: dict, concurrencies) -> str:
  rows = ["| proxy | endpoint | " + " | ".join(f"conc {c}: req/s, p50/p99 ms" for c in concurrencies) + " |",
          "|---|---|" + "---|" * len(concurrencies)]
  for mode, r in results["http"].items():
    for name in (n for n in ("noop", "decode", "model") if n in r):
      cells = [f"{r[name][c]['rps']:.0f}, {r[name][c]['p50_ms']:.1f}/{r[name][c]['p99_ms']:.1f}"
               for c in concurrencies]
      rows.append(f"| {mode} | {name} | " + " | ".join(cells) + " |")
  ip = results["in_process"]
  rows.append("| — | in-process (batch = conc) | " + " | ".join(
      f"{ip[c]['images_per_s']:.0f} img/s, {ip[c]['batch_p50_ms']:.1f}/{ip[c]['batch_p99_ms']:.1f}"
      for c in concurrencies) + " |")
  lines = ["\n".join(rows), ""]
  for mode, r in results["http"].items():
    for c in concurrencies:
      m = r["model"][c]["rps"]
      ceilings = (f"model/decode-ceiling {m / r['decode'][c]['rps']:.0%}, "
                  f"model/noop-ceiling {m / r['noop'][c]['rps']:.0%}, " if "noop" in r else "")
      lines.append(f"{mode} conc {c}: {ceilings}HTTP/in-process {m / ip[c]['images_per_s']:.0%}")
    lines.append(f"{mode}: mean batch {r['model_stats']['mean_batch']:.1f}, compiles after "
                 f"warm-up {r['model_stats']['compiles_after_warmup']}")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", default=os.path.join(REPO, "..", "shared", "data", "utkface-2k"))
  parser.add_argument("--bundle", default=None)
  parser.add_argument("--proxy", default="default,ha")
  parser.add_argument("--concurrency", default="1,8,32")
  parser.add_argument("--seconds", type=float, default=10.0)
  parser.add_argument("--replicas", type=int, default=1)
  parser.add_argument("--count", type=int, default=256, help="distinct images to cycle through")
  parser.add_argument("--out", default="serve_benchmark.json")
  parser.add_argument("--no-ceilings", action="store_true",
                      help="skip the noop/decode deployments (only the model endpoint)")
  parser.add_argument("--kill-replica", action="store_true",
                      help="kill one of --replicas (default then 2) replicas under load at the "
                           "first --concurrency; report waits and failures")
  parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  concurrencies = [int(c) for c in args.concurrency.split(",")]
  if args.kill_replica:
    args.replicas = max(args.replicas, 2)
    concurrencies = concurrencies[:1] if "," not in args.concurrency else [8]
  images = load_images(args.images, args.count)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  if args._child:  # one proxy mode, in a fresh process with the mode's environment
    result = run_mode(args._child, args.bundle, images, concurrencies, args.seconds, args.replicas,
                      ceilings=not args.no_ceilings, kill_replica=args.kill_replica)
    with open(args.out, "w") as f:
      json.dump(result, f)
    return

  with tempfile.TemporaryDirectory() as tmp:
    bundle = os.path.abspath(args.bundle) if args.bundle else make_random_bundle(
        os.path.join(tmp, "bundle"))
    results = {"http": {}}
    for mode in args.proxy.split(","):
      child_out = os.path.join(tmp, f"{mode}.json")
      # Direct ingress drains a stopping replica for 30 s; nothing is in flight at shutdown here.
      env = dict(os.environ, PYTHONPATH=REPO, RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S="1",
                 **PROXY_ENV[mode])
      subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", mode,
                      "--bundle", bundle, "--images", args.images, "--concurrency",
                      args.concurrency, "--seconds", str(args.seconds), "--replicas",
                      str(args.replicas), "--count", str(args.count), "--out", child_out,
                      *(["--no-ceilings"] if args.no_ceilings else []),
                      *(["--kill-replica"] if args.kill_replica else [])],
                     check=True, env=env, cwd=REPO)
      if args.kill_replica:
        with open(child_out) as f:
          results["http"][mode] = json.load(f)
        continue
      with open(child_out) as f:
        results["http"][mode] = {k: ({int(c): v for c, v in r.items()} if k != "model_stats" else r)
                                 for k, r in json.load(f).items()}
    if args.kill_replica:
      print(json.dumps({m: r["kill"] for m, r in results["http"].items()}, indent=1))
      with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
      return
    Bundle = bundle_class()
    batch_sizes = [int(s) for s in __import__("yaml").safe_load(open(os.path.join(
        REPO, "serve", "config.yaml")))["applications"][0]["args"]["batch_sizes"]]
    results["in_process"] = in_process(bundle, images, concurrencies, args.seconds, batch_sizes)
    results["bundle"] = {"path": args.bundle or "random resnet_tiny, 64 px",
                         "arch": Bundle(bundle).model_config.arch}
  text = table(results, concurrencies)
  print(text)
  results["table"] = text
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
