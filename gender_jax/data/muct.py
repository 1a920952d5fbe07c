"""MUCT (Milborrow, Morkel, Nicolls 2010) from its published files.

Manual dir layout, either
  jpg/i000qa-fn.jpg …                     (the archives unpacked), or
  muct-a-jpg-v1.tar.gz … muct-e-jpg-v1.tar.gz   (as downloaded: one archive per camera)
File names: `i` + three-digit subject number + session letter + camera letter (a is the
frontal camera, b–e the others) + `-` + gender `m`/`f` + further letters. The subject is the
identity (the split is identity-disjoint, seeded); camera and session are subgroup fields,
so the evaluation report has one row per camera angle. A file whose name does not follow
the pattern is skipped and listed with its reason in the bad-files report.
"""
from __future__ import annotations

import glob
import os
import re
import tarfile
import tempfile

from gender_jax.data import builder, schema

NAME = re.compile(r"^i(?P<subject>\d{3})(?P<session>[a-z])(?P<camera>[a-e])-(?P<gender>[mf])"
                  r"(?P<rest>[a-z]*)\.jpg$")
ARCHIVE_GLOB = "muct-[a-e]-jpg-v1.tar.gz"
CAMERAS = "abcde"


def parse_name(name: str) -> dict[str, str] | None:
  m = NAME.match(name)
  return m.groupdict() if m else None


def _entry(path: str, key: str, strict: bool = False) -> schema.Entry | dict[str, str]:
  """An Entry for a well-named image, else the {path, reason} of a skipped file (the name is
  MUCT's annotation: `strict` raises instead)."""
  fields = parse_name(os.path.basename(path))
  if fields is None:
    reason = "name does not match MUCT's i<subject><session><camera>-<m|f>….jpg (e.g. i000qa-fn.jpg)"
    if strict:
      raise schema.AnnotationError(key, None, reason)
    return {"path": key, "reason": reason}
  return schema.Entry(path=path, key=key, label=int(fields["gender"] == "m"),
                      identity=fields["subject"],
                      subgroups={"camera": fields["camera"], "session": fields["session"]})


def read_folder(manual_dir: str, image_dir: str, key_prefix: str = "", strict: bool = False):
  entries, skipped = [], []
  for root, dirs, files in os.walk(image_dir):
    dirs.sort()
    for name in sorted(files):
      if name.startswith("."):
        continue
      full = os.path.join(root, name)
      e = _entry(full, key_prefix + schema.relpath(full, manual_dir), strict)
      (entries if isinstance(e, schema.Entry) else skipped).append(e)
  return entries, skipped


def read_archives(manual_dir: str, archives: list[str], into: str, strict: bool = False):
  """Unpacks the per-camera archives' regular files into `into`; keys stay archive/member."""
  entries, skipped = [], []
  for archive in archives:
    name = os.path.basename(archive)
    with tarfile.open(archive) as tar:
      for member in tar.getmembers():
        if not member.isfile() or os.path.basename(member.name).startswith("."):
          continue
        key = f"{name}/{member.name.lstrip('./')}"
        target = os.path.join(into, name, member.name.lstrip("./"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with tar.extractfile(member) as src, open(target, "wb") as dst:
          dst.write(src.read())
        e = _entry(target, key, strict)
        (entries if isinstance(e, schema.Entry) else skipped).append(e)
  return entries, skipped


class GenderMuct(builder.GenderBuilder):
  """MUCT faces, five cameras; label from the file name; identity-disjoint seeded split."""
  name = "gender_muct"
  SOURCE = "muct"
  HOMEPAGE = "http://www.milbo.org/muct/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Place jpg/ (unpacked) or the five muct-{a..e}-jpg-v1.tar.gz "
                                  "archives in the manual dir.")

  def _entries(self, manual_dir):
    image_dir = os.path.join(manual_dir, "jpg")
    if os.path.isdir(image_dir):
      return read_folder(manual_dir, image_dir, strict=self.skips.strict)
    archives = sorted(glob.glob(os.path.join(manual_dir, ARCHIVE_GLOB)))
    if not archives:
      raise FileNotFoundError(f"MUCT: no jpg/ folder and no {ARCHIVE_GLOB} in {manual_dir}")
    # The images are read again when the splits are written, after this returns: the
    # unpacked copy lives as long as the builder (the manual dir may be read-only).
    self._unpacked = tempfile.TemporaryDirectory(prefix="muct_")
    return read_archives(manual_dir, archives, self._unpacked.name, self.skips.strict)
