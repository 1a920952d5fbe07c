"""A prepared source copied to another host opens as the `prepared` source, read with
array_record and protobuf alone: the same records as where it was prepared, its index
rebuilt without TFDS when the copy's file times differ, one-line errors for a wrong folder."""
import os
import shutil

import pytest

from gender_jax.data import prepare, sources
from tests.fixtures import datasets as fixtures


def _config(path):
  from configs.common import get_base_config
  config = get_base_config()
  with config.unlocked():
    config.data.sources["prepared"] = dict(path=str(path), weight=1.0)
  return config


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("prepared")
  fixtures.folder(str(tmp / "photos"), per_class=6)
  b = prepare.prepare("folder", str(tmp / "photos"), str(tmp / "data"))
  copy = tmp / "copy"
  shutil.copytree(os.fspath(b.data_path), copy)
  return b, copy


def test_a_copy_reads_the_same_records(prepared):
  b, copy = prepared
  for index in copy.glob("gender_index-*.json"):
    index.unlink()  # and the copy's times differ: the index is written again, without TFDS
  config = _config(copy)
  for split in ("train", "validation", "test"):
    here = prepare.open_split(b, split, "prepared")
    there = sources.get_source("prepared", split, config)
    assert len(there) == len(here) > 0
    assert [there[i] for i in range(len(there))] == [here[i] for i in range(len(here))]
    assert sources.columns(there) == sources.columns(here)
  assert (copy / "gender_index-train.json").exists()
  assert sources.bad_file_report(config) == {"prepared": []}


def test_wrong_folder_or_split_says_so(prepared, tmp_path):
  _, copy = prepared
  with pytest.raises(ValueError, match=r"is not a prepared dataset's folder"):
    sources.get_source("prepared", "train", _config(tmp_path))
  with pytest.raises(ValueError, match=r"no split 'extra' in .* \(has \['test', 'train', "
                                       r"'validation'\]\)"):
    prepare.read_index(str(copy), "gender_folder", "extra", "prepared")
