"""The metric writers: TensorBoard event files and metrics.jsonl, without TensorFlow."""
import json
import subprocess
import sys

from gender_jax.train import metrics_writer as metrics
from tests.helpers import REPO


def test_writer_writes_tensorboard_events_and_jsonl(tmp_path):
  writer = metrics.create_writer(str(tmp_path))
  writer.write_scalars(3, {"train_loss": 0.5, "lr": 1e-3})
  writer.write_scalars(6, {"train_loss": 0.25})
  writer.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(r["step"], r["train_loss"]) for r in rows] == [(3, 0.5), (6, 0.25)]
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars("train_loss")] == [(3, 0.5), (6, 0.25)]
  assert abs(events.Scalars("lr")[0].value - 1e-3) < 1e-9


def test_training_modules_do_not_import_tensorflow():
  """The train loop, steps and metric writers load without TensorFlow (GPU images lack it;
  importing it costs seconds at every start)."""
  code = ("import sys, gender_jax.train.loop, gender_jax.train.metrics_writer, gender_jax.inference.predictor;"
          "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets', 'clu') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120, check=True)
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
