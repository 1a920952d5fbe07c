"""The README's Python examples, run as written: a bundle where they name `runs/demo/bundle`
and a real photo where they name `photo.jpg` (made from a UTKFace crop when one is at hand)."""
import os
import re

import numpy as np
from PIL import Image

from tests.helpers import REPO, random_bundle


def python_blocks(section: str) -> list[str]:
  text = open(os.path.join(REPO, "README.md")).read()
  body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_the_python_api_examples_run(tmp_path, monkeypatch, capsys):
  blocks = python_blocks("Use it from Python")
  assert blocks
  os.makedirs(tmp_path / "runs" / "demo")
  random_bundle(tmp_path / "runs" / "demo" / "bundle", size=16)
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(tmp_path / "photo.jpg")
  monkeypatch.chdir(tmp_path)  # the examples' relative paths
  namespace = {}  # the blocks build on each other, as in one session
  for block in blocks:
    exec(compile(block, "README.md", "exec"), namespace)
  printed = capsys.readouterr().out.split()
  assert printed[0] in ("female", "male", "uncertain"), printed
  assert 0.0 <= float(printed[1]) <= 1.0 and printed[2] in ("True", "False")
