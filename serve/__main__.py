"""`python -m serve [--bundle DIR] [--config serve/config.yaml] [--port 8000]`: `serve run`
with its preconditions checked first and a failed deployment ending the command.

`serve run serve/config.yaml` keeps running whatever happens to the application (a missing
bundle makes every replica fail, over and over, behind a process that never exits). This
checks the bundle before Ray starts (one `error:` line, status 2), deploys the same config,
and leaves with status 1 and one line if the application fails to deploy; once it runs it
serves until Ctrl-C, like `serve run`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m serve", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=os.path.join(REPO, "serve", "config.yaml"),
                      help="Serve config (default serve/config.yaml)")
  parser.add_argument("--bundle", help="WORKDIR/bundle to serve (default: GENDER_JAX_BUNDLE, "
                      "then the config's args.bundle)")
  parser.add_argument("--host", help="override http_options.host")
  parser.add_argument("--port", type=int, help="override http_options.port")
  parser.add_argument("--deploy-timeout", type=float, default=600,
                      help="seconds for the application to reach RUNNING (default 600)")
  args = parser.parse_args(argv)

  import yaml
  from serve.app import bundle_path
  try:
    with open(args.config) as f:
      config = yaml.safe_load(f)
    application = config["applications"][0]
    if args.bundle:
      os.environ["GENDER_JAX_BUNDLE"] = os.path.abspath(args.bundle)
    # Replicas read GENDER_JAX_BUNDLE from the environment Ray starts with: make it absolute.
    path = os.path.abspath(bundle_path(application.get("args", {}).get("bundle")))
    os.environ["GENDER_JAX_BUNDLE"] = path
  except (OSError, ValueError, KeyError, yaml.YAMLError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.host:
    config["http_options"]["host"] = args.host
  if args.port:
    config["http_options"]["port"] = args.port

  import ray
  from ray import serve
  from ray.serve._private import api as serve_api
  from ray.serve.schema import ServeDeploySchema
  schema = ServeDeploySchema.model_validate(config)
  os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
  ray.init(namespace="serve", log_to_driver=False)
  try:
    client = serve_api.serve_start(http_options=schema.http_options.model_dump(),
                                   proxy_location=schema.proxy_location)
    client.deploy_apps(schema, _blocking=False)
    name = schema.applications[0].name
    deadline = time.monotonic() + args.deploy_timeout
    while True:
      status = serve.status().applications.get(name)
      state = str(getattr(status, "status", "")).rsplit(".", 1)[-1]
      if state == "RUNNING":
        break
      if state == "DEPLOY_FAILED" or time.monotonic() > deadline:
        message = (getattr(status, "message", "") or "").strip().splitlines()
        why = next((line for line in reversed(message) if line.strip()), state or "no status")
        print(f"error: application {name!r} failed to deploy: {why.strip()[:300]}",
              file=sys.stderr)
        return 1
      time.sleep(1)
    http = schema.http_options
    print(f"serving {path} at http://{http.host}:{http.port}/ (GET /healthz says ready once "
          "every replica has compiled); Ctrl-C stops", flush=True)
    while True:
      time.sleep(3600)
  except KeyboardInterrupt:
    return 0
  finally:
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
  sys.exit(main())
