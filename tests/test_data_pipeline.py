"""The grain pipeline over prepared and generated sources: mixing, resume, sharding, bad data."""
import collections
import io
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from tests.fixtures import datasets as fixtures

from gender_jax.data import pipeline, preprocess, sources
from gender_jax.inference.predictor import Predictor
from tests.helpers import random_bundle


def _config(sources_dict, **data):
  from configs.common import get_base_config
  config = get_base_config()
  with config.unlocked():
    for name, opts in sources_dict.items():
      config.data.sources[name] = opts
    config.data.update(dict(image_size=32, batch_size=8, eval_batch_size=8, read_threads=1,
                            prefetch=2, num_workers=0))
    config.data.update(data)
  return config


def _take(it, n):
  it = iter(it)
  return [next(it) for _ in range(n)]


def test_mixture_follows_weights():
  config = _config({"synthetic": dict(weight=3.0, train_size=256, image_size=16),
                    "synthetic:b": dict(weight=1.0, train_size=64, image_size=16, seed=1)},
                   batch_size=32, image_size=16)
  ids = np.concatenate([b["source_id"] for b in _take(pipeline.train_dataset(config), 40)])
  share = np.mean(ids == 0)
  # 1,280 draws at p = 0.75: one standard error is 0.012.
  assert abs(share - 0.75) < 0.04, share


@pytest.fixture(scope="module")
def folder_source(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder")
  fixtures.folder(str(root / "f"), per_class=20)
  return dict(path=str(root / "f"), data_dir=str(root / "d"), weight=1.0)


def test_resume_yields_the_same_next_batches(folder_source):
  config = _config({"folder": folder_source,
                    "synthetic": dict(weight=1.0, train_size=64, image_size=40)},
                   rotate=10.0, color_jitter=0.2)
  full = _take(pipeline.train_dataset(config), 9)
  resumed = _take(pipeline.train_dataset(config, start_step=6), 3)
  for a, b in zip(full[6:], resumed):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # And the stream really moves: not the same batch over and over.
  assert not np.array_equal(full[0]["image"], full[1]["image"])


def _index_of(source, size):
  return {preprocess.eval_image(source[i]["image"], size).tobytes(): i for i in range(len(source))}


def test_two_processes_get_disjoint_shards_covering_the_split(folder_source):
  config = _config({"folder": dict(folder_source, crop="none", flip=False)})
  train = sources.get_source("folder", "train", config)
  index = _index_of(train, 32)
  n = len(train)
  assert len(index) == n  # fixture images are distinct
  with config.unlocked():
    config.data.batch_size = 4 if n % 4 == 0 else 2
  steps = n // config.data.batch_size
  seen = []
  for p in range(2):
    batches = _take(pipeline.train_dataset(config, process_index=p, process_count=2), steps)
    seen.append([index[img.tobytes()] for b in batches for img in b["image"]])
  assert not set(seen[0]) & set(seen[1])
  assert sorted(seen[0] + seen[1]) == list(range(n))


class _ListSource:
  def __init__(self, records):
    self.records = records

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]


def test_undecodable_records_are_replaced_in_training_and_left_out_of_eval(tmp_path):
  good = io.BytesIO()
  Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(good, format="JPEG")
  records = [{"image": good.getvalue() if i % 4 else b"not a jpeg", "label": i % 2,
              "source": "mixed", "path": f"{i}.jpg"} for i in range(16)]
  sources.register("listed")(lambda split, options, config: _ListSource(records))
  try:
    config = _config({"listed": dict(weight=1.0)})
    batches = _take(pipeline.train_dataset(config), 6)  # 48 draws from 25% bad records
    assert all(b["image"].shape == (8, 32, 32, 3) for b in batches)
    # Evaluation (trainer validation included) lists the bad records and scores the rest.
    predictor = Predictor(random_bundle(tmp_path / "b", size=32), batch_size=8)
    out = predictor.logits_for_records(_ListSource(records))
    assert len(out.values) == 12 and [m["path"] for m in out.metas][:3] == ["1.jpg", "2.jpg", "3.jpg"]
    assert [key for key, _ in out.errors] == ["0", "4", "8", "12"]
  finally:
    del sources.REGISTRY["listed"]


def test_folder_shortcut_and_bad_file_report(tmp_path):
  truth = fixtures.folder(str(tmp_path / "f"), per_class=8, corrupt=True)
  config = _config({}, data_dir=str(tmp_path / "d"), folder=str(tmp_path / "f"))
  assert sources.configured_sources(config) == {"folder": 1.0}
  assert sources.get_source("folder", "train", config)[0]["source"] == "folder"
  assert sources.write_bad_file_report(config, str(tmp_path)) == 3
  import json
  report = json.load(open(tmp_path / "bad_files.json"))
  assert sorted(x["path"] for x in report["folder"]) == sorted(truth["bad"])


@pytest.mark.slow
def test_training_on_a_folder_with_three_corrupt_files(tmp_path):
  """End to end: the trainer runs on a folder holding 3 corrupt files; exactly those 3 are
  reported."""
  from gender_jax.train import loop as trainer
  truth = fixtures.folder(str(tmp_path / "f"), per_class=16, corrupt=True)
  config = _config({"folder": dict(path=str(tmp_path / "f"), data_dir=str(tmp_path / "d"),
                                   weight=1.0)})
  with config.unlocked():
    config.model.arch = "resnet_tiny"
    config.model.compute_dtype = "float32"
    config.total_steps = 2
    config.mesh.num_devices = 1  # the input path is under test, not the sharding
    config.log_every = 1
    config.checkpoint.async_save = False
  workdir = str(tmp_path / "run")
  result = trainer.train_and_evaluate(config, workdir)
  assert np.isfinite(result["val_loss"])
  assert os.path.exists(os.path.join(workdir, "bundle"))
  report = sources.bad_file_report(config)
  assert sorted(x["path"] for x in report["folder"]) == sorted(truth["bad"])


def test_exclude_list_from_clean_drops_exactly_those_records(tmp_path):
  """The list `clean` writes (KEY<TAB>reason) is honoured by the sources on the next run."""
  root = str(tmp_path / "photos")
  fixtures.folder(root, per_class=12)
  config = ml_collections.ConfigDict(dict(data=dict(sources={}, folder="",
                                                    data_dir=str(tmp_path / "d"))))
  config.data.sources["folder"] = dict(path=root, weight=1.0)
  full = sources.get_source("folder", "train", config)
  drop = sorted(full[i]["path"] for i in range(len(full)))[:3]
  exclude = tmp_path / "exclude.txt"
  exclude.write_text("# from clean\n" + "".join(f"{k}\tnear duplicate\n" for k in drop))
  config.data.sources["folder"]["exclude"] = str(exclude)
  kept = sources.get_source("folder", "train", config)
  assert len(kept) == len(full) - 3
  assert not {kept[i]["path"] for i in range(len(kept))} & set(drop)


def test_balance_by_subgroup_evens_out_the_groups(tmp_path):
  """balance_by=race, power 1: each race is drawn about equally often, whatever its size."""
  from gender_jax.data import balance
  rng = np.random.default_rng(0)
  sizes = {"0": 300, "1": 60, "2": 20}
  records = [{"label": int(rng.integers(2)), "subgroups": {"race": race}}
             for race, n in sizes.items() for _ in range(n)]
  drawn = balance.Balanced(records, "race", power=1.0, seed=0)
  counts = collections.Counter(drawn[i]["subgroups"]["race"] for i in range(len(drawn)))
  shares = np.array([counts[r] for r in sizes]) / len(drawn)
  np.testing.assert_allclose(shares, 1 / 3, atol=0.04)
  unbalanced = balance.Balanced(records, "race", power=0.0, seed=0)
  share0 = np.mean([unbalanced[i]["subgroups"]["race"] == "0" for i in range(len(unbalanced))])
  assert abs(share0 - 300 / 380) < 0.04


def test_balance_by_joined_fields_evens_out_the_joint_cells():
  """balance_by=race+age_group, power 1: each (race, age group) cell is drawn about equally
  often — race alone would leave race 1's few children at their share within the race."""
  from gender_jax.data import balance
  rng = np.random.default_rng(0)
  cells = {("0", 30): 300, ("0", 5): 100, ("1", 30): 80, ("1", 5): 8}
  records = [{"label": int(rng.integers(2)), "subgroups": {"race": race, "age": age}}
             for (race, age), n in cells.items() for _ in range(n)]
  drawn = balance.Balanced(records, "race+age_group", power=1.0, seed=0)
  counts = collections.Counter((drawn[i]["subgroups"]["race"], drawn[i]["subgroups"]["age"])
                               for i in range(len(drawn)))
  np.testing.assert_allclose([counts[c] / len(drawn) for c in cells], 1 / 4, atol=0.04)
  by_race = balance.Balanced(records, "race", power=1.0, seed=0)
  children1 = sum(r["subgroups"] == {"race": "1", "age": 5}
                  for r in (by_race[i] for i in range(len(by_race))))
  assert children1 / len(by_race) < 0.1  # 8/88 of race 1's half


def test_store_size_caps_the_shorter_side_keeping_aspect(tmp_path):
  """Prepared with store_size=20, a 40×60 (w×h) JPEG is stored 20×30 (re-encoded), a 32×32
  one 20×20; smaller images are kept as they are; each size is its own prepared copy."""
  from gender_jax.data import prepare
  root = tmp_path / "f"
  fixtures.folder(str(root), per_class=10, csv=False)
  fixtures.write_image(str(root / "Male" / "tall.jpg"), 7, size=(60, 40), fmt="JPEG")  # h, w
  fixtures.write_image(str(root / "female" / "small.jpg"), 8, size=(16, 12), fmt="JPEG")
  config = _config({"folder": dict(path=str(root), data_dir=str(tmp_path / "d"), weight=1.0,
                                   store_size=20)})
  stored = sources.get_source("folder", "train", config)
  full = prepare.prepare("folder", str(root), str(tmp_path / "d"))
  assert "stored_20px" in stored.data_path and os.fspath(full.data_path) != stored.data_path
  sizes = {}
  for split in ("train", "validation", "test"):
    s = sources.get_source("folder", split, config)
    for i in range(len(s)):
      sizes[s[i]["path"]] = Image.open(io.BytesIO(s[i]["image"])).size
  assert sizes["Male/tall.jpg"] == (20, 30)
  assert sizes["female/small.jpg"] == (12, 16)
  assert all(wh == (20, 20) for p, wh in sizes.items() if p not in ("female/small.jpg",
                                                                       "Male/tall.jpg"))
  # Training reads them like any prepared split; -1 ("auto") is ~1.15x the training size.
  assert next(iter(pipeline.train_dataset(config)))["image"].shape == (8, 32, 32, 3)
  with config.unlocked():
    config.data.sources["folder"]["store_size"] = -1
  assert sources.store_size(config.data.sources["folder"], config) == prepare.store_size_for(32)
  assert prepare.store_size_for([112, 224]) == 258


@pytest.mark.slow
def test_batches_do_not_depend_on_threads_or_worker_processes(folder_source):
  """Examples are decoded one by one by threads or worker processes and batched after:
  the batches are the same for any count of either."""
  config = _config({"folder": dict(folder_source, balance_by="race", rotate=10.0),
                    "synthetic": dict(weight=1.0, train_size=64, image_size=40)},
                   color_jitter=0.3, batch_size=8)
  reference = _take(pipeline.train_dataset(config, start_step=3), 4)
  for threads, workers in ((4, 0), (1, 2)):
    with config.unlocked():
      config.data.update(dict(read_threads=threads, num_workers=workers))
    it = iter(pipeline.train_dataset(config, start_step=3))
    got = [next(it) for _ in range(4)]
    it.close()  # stops the worker processes
    for a, b in zip(reference, got):
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{k}, {threads} threads, "
                                                          f"{workers} workers")


def test_input_parallelism_defaults():
  """-1 is auto: on a CPU backend the step needs the cores, so 2 threads; workers auto to 0
  (threads); auto threads are shared among worker processes; explicit values are kept."""
  def parallelism(threads, workers):
    return pipeline.input_parallelism(_config({}, read_threads=threads, num_workers=workers))
  assert parallelism(-1, 0) == (pipeline.CPU_BACKEND_THREADS, 0)
  assert parallelism(-1, 2) == (1, 2)
  assert parallelism(3, -1) == (3, 0)
  assert parallelism(4, 1) == (4, 1)


def test_epochs_stream_is_graings_shuffle_repeat_random_map(folder_source):
  """The training stream's one-step source (`_Epochs`) gives, element for element, what
  grain's `source().shuffle().repeat().random_map()` gives: the same records in the same
  per-epoch order, the same random draws; also after pickling (worker processes), and its
  training reads carry the same image, label and path as full reads."""
  import cloudpickle
  import grain
  config = _config({"folder": folder_source})
  source = sources.get_source("folder", "train", config)

  def fn(record, rng):
    return record["path"], record["label"], record["image"], tuple(rng.random(3)), \
        int(rng.integers(1000))
  reference = (grain.MapDataset.source(source).shuffle(seed=11).repeat()
               .random_map(fn, seed=29))
  stream = pipeline._Epochs(source, fn, shuffle_seed=11, map_seed=29)
  n = len(source)
  indices = list(range(3 * n)) + [10**6 + 5, 2**40 + 3]  # three epochs, and far ahead
  assert [stream[i] for i in indices] == [reference[i] for i in indices]
  # Each epoch is a permutation of the split, and the next epoch is another one.
  first = [stream[i][0] for i in range(n)]
  second = [stream[i][0] for i in range(n, 2 * n)]
  assert sorted(first) == sorted(second) == sorted(source[i]["path"] for i in range(n))
  assert first != second
  copy = cloudpickle.loads(cloudpickle.dumps(stream))
  assert [copy[i] for i in indices[:20]] == [reference[i] for i in indices[:20]]
  full, lite = source[3], sources.training_reader(source)(3)
  assert {k: full[k] for k in lite} == lite and {"image", "label", "path"} <= set(lite)
