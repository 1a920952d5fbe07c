"""Start-up reads metadata, never images: sizes, balancing, the exclude list, the bad-file
report and the split listing come from each split's index, on a real prepared folder."""
import csv
import glob
import os

import pytest
from tensorflow_datasets.core.data_sources import base as tfds_sources

from tests.fixtures import datasets as fixtures

from gender_jax.data import pipeline, prepare, sources


@pytest.fixture
def record_reads(monkeypatch):
  """Counts records parsed from array_record (each parse reads the JPEG bytes), by TFDS or
  by the pipeline's own parse (schema.from_example)."""
  from gender_jax.data import schema
  reads = []
  real, real_example = tfds_sources.BaseDataSource._deserialize, schema.from_example

  def counting(self, record):
    reads.append(1)
    return real(self, record)

  def counting_example(serialized, *args):
    reads.append(1)
    return real_example(serialized, *args)

  monkeypatch.setattr(tfds_sources.BaseDataSource, "_deserialize", counting)
  monkeypatch.setattr(schema, "from_example", counting_example)
  return reads


def _fresh_process():
  """What a new launch (or a resume) starts from: nothing opened yet."""
  sources._OPENED.clear()
  sources._BUILDERS.clear()


def _config(tmp_path, truth):
  from configs.common import get_base_config
  config = get_base_config()
  drop = sorted(truth["images"])[:3]
  (tmp_path / "exclude.txt").write_text("".join(f"{k}\tnear duplicate\n" for k in drop))
  with config.unlocked():
    config.data.sources["folder"] = dict(
        path=str(tmp_path / "f"), data_dir=str(tmp_path / "d"), weight=1.0,
        balance_by="race", balance_power=0.5, exclude=str(tmp_path / "exclude.txt"))
    config.data.update(dict(image_size=32, batch_size=4, read_threads=1, prefetch=1,
                            num_workers=0))
  return config, set(drop)


def _start(config, workdir):
  """Everything a training launch does with the data before its first batch."""
  num_train = len(sources.get_source("folder", "train", config))
  val = sources.get_source("folder", "validation", config)
  sources.write_bad_file_report(config, workdir)
  sources.write_split_listing(config, workdir)
  stream = pipeline.train_dataset(config, process_index=0, process_count=1)
  return num_train, len(val), stream


def _listing(workdir):
  with open(os.path.join(workdir, "splits.csv")) as f:
    return list(csv.DictReader(f))


def test_start_up_reads_no_image(tmp_path, record_reads):
  truth = fixtures.folder(str(tmp_path / "f"), per_class=20)
  config, dropped = _config(tmp_path, truth)
  prepare.prepare("folder", str(tmp_path / "f"), str(tmp_path / "d"))  # writes the index
  for launch in range(2):  # a first start and a restart (resume)
    _fresh_process()
    record_reads.clear()
    num_train, num_val, stream = _start(config, str(tmp_path))
    assert not record_reads, f"start {launch}: {len(record_reads)} records parsed"
  rows = _listing(str(tmp_path))
  # The listing is right: every kept image once, with its label; the excluded ones only
  # outside train (the exclude list applies to every split).
  assert {r["path"] for r in rows} == set(truth["images"]) - dropped
  assert all(int(r["label"]) == truth["images"][r["path"]][0] for r in rows)
  assert sum(r["split"] == "train" for r in rows) == num_train
  assert sum(r["split"] == "validation" for r in rows) == num_val
  batch = next(iter(stream))  # the images are read when training reads them
  assert batch["image"].shape == (4, 32, 32, 3) and record_reads


def test_an_index_is_made_once_for_data_prepared_without_one(tmp_path, record_reads):
  truth = fixtures.folder(str(tmp_path / "f"), per_class=10)
  config, _ = _config(tmp_path, truth)
  b = prepare.prepare("folder", str(tmp_path / "f"), str(tmp_path / "d"))
  _start(config, str(tmp_path))
  reference = _listing(str(tmp_path))
  for path in glob.glob(os.path.join(os.fspath(b.data_path), "gender_index-*.json")):
    os.remove(path)  # as prepared before the index existed
  _fresh_process()
  record_reads.clear()
  _start(config, str(tmp_path))
  assert len(record_reads) == sum(b.info.splits[s].num_examples for s in b.info.splits)
  assert _listing(str(tmp_path)) == reference
  _fresh_process()
  record_reads.clear()
  _start(config, str(tmp_path))
  assert not record_reads


def test_metadata_columns_match_the_records(tmp_path):
  """What balancing and the listing read from the index is what the records hold."""
  truth = fixtures.folder(str(tmp_path / "f"), per_class=10)
  config, _ = _config(tmp_path, truth)
  _fresh_process()
  for split in ("train", "validation", "test"):
    source = sources.get_source("folder", split, config)  # exclude list applied
    meta = sources.Metadata(source)
    assert len(meta) == len(source)
    for i in range(len(source)):
      record = source[i]
      assert meta[i] == {k: record[k] for k in sources.METADATA_FIELDS}
      assert meta[i]["subgroups"]["race"] == truth["images"][record["path"]][1]["race"]
