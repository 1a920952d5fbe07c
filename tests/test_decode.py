"""The one image opener: every format check, the bomb guard and EXIF orientation in one place."""
import io

import numpy as np
import pytest
from PIL import Image

from gender_jax.data import augment, preprocess, schema


def _jpeg(img: Image.Image, orientation: int = 1) -> bytes:
  out = io.BytesIO()
  exif = Image.Exif()
  if orientation != 1:
    exif[0x0112] = orientation
  img.save(out, format="JPEG", quality=95, exif=exif.tobytes())
  return out.getvalue()


def _marked(w=40, h=20) -> Image.Image:
  """A landscape image, left half black, right half white: its orientation is visible."""
  a = np.zeros((h, w, 3), np.uint8)
  a[:, w // 2:] = 255
  return Image.fromarray(a)


def test_exif_orientation_is_applied_everywhere(tmp_path):
  # Orientation 6 = "rotate 90° clockwise to view": a phone held upright stores a landscape
  # buffer with this tag. Upright, the image is portrait with the white half at the bottom.
  data = _jpeg(_marked(), orientation=6)
  img = preprocess.decode(data)
  assert img.shape == (40, 20, 3)
  assert img[:15].mean() < 30 and img[-15:].mean() > 225
  spec = augment.AugmentSpec(crop="random_resized", crop_scale=(1.0, 1.0), flip=False)
  train = augment.train_image(data, 32, np.random.default_rng(0), spec)
  assert train[:12].mean() < 40 and train[-12:].mean() > 215  # training sees it upright too
  path = tmp_path / "rotated.jpg"
  path.write_bytes(data)
  stored = preprocess.decode(schema.encode_image_file(str(path)))
  assert stored.shape == (40, 20, 3) and stored[-15:].mean() > 225  # re-encoded upright


@pytest.mark.parametrize("data, message", [
    (b"", "empty input"),
    (b"not an image at all", "not a recognised image format"),
    (_jpeg(_marked())[:200], "corrupt or truncated"),
])
def test_bad_bytes_name_the_problem(data, message):
  with pytest.raises(preprocess.ImageError, match=message):
    preprocess.decode(data)
  with pytest.raises(preprocess.ImageError, match=message):
    augment.train_image(data, 32, np.random.default_rng(0), augment.AugmentSpec())


def test_bomb_guard_also_guards_training():
  bomb = io.BytesIO()
  Image.new("1", (12000, 12000)).save(bomb, format="PNG")  # 144 Mpixel in ~20 KB
  for fn in (lambda d: preprocess.decode(d),
             lambda d: augment.train_image(d, 32, np.random.default_rng(0), augment.AugmentSpec())):
    with pytest.raises(preprocess.ImageTooLarge):
      fn(bomb.getvalue())
  with pytest.raises(preprocess.ImageTooLarge, match="100x100 = 10000 pixels is over the limit of 1000"):
    preprocess.open_image(_jpeg(Image.new("RGB", (100, 100))), max_pixels=1000)
