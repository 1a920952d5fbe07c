"""The web page at `GET /`, driven in headless Chromium: upload a photo, read the label.

Needs Debian's `chromium` and `chromium-driver` packages and selenium; skips where any is absent.
Shares the Serve instance of test_serve.py when both run in one session.
"""
import os
import pathlib
import shutil

import pytest

pytest.importorskip("ray.serve")
webdriver = pytest.importorskip("selenium.webdriver")

from tests.test_serve import offline, start_serve, stop_serve, written_images  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
  """The Serve instance of test_serve.py when both modules run in one session."""
  yield start_serve(tmp_path_factory)
  stop_serve(request)


@pytest.fixture
def browser():
  if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("headless Chromium not installed (apt-get install chromium chromium-driver)")
  from selenium.webdriver.chrome.options import Options
  from selenium.webdriver.chrome.service import Service
  options = Options()
  options.binary_location = CHROMIUM
  for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking", "--disable-extensions", "--no-first-run",
               "--window-size=900,900"):
    options.add_argument(flag)
  # An explicit driver path keeps Selenium Manager from trying to download one.
  driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
  driver.set_page_load_timeout(60)
  try:
    yield driver
  finally:
    driver.quit()


def upload_and_read(driver, path) -> dict:
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.ui import WebDriverWait
  driver.find_element(By.ID, "file").send_keys(str(path))
  label = WebDriverWait(driver, 60).until(
      ec.presence_of_element_located((By.CSS_SELECTOR, "#label, #error")))
  assert label.get_attribute("id") == "label", driver.find_element(By.ID, "result").text
  return dict(label=label.get_attribute("data-label"),
              p_female=driver.find_element(By.ID, "p_female").text,
              p_male=driver.find_element(By.ID, "p_male").text)


def test_page_uploads_a_photo_and_shows_the_label(browser, served, tmp_path):
  from selenium.webdriver.common.by import By
  real = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface-2k" / "female"
  photos = sorted(real.glob("*.jpg"))[:1] if real.exists() else []
  if photos:
    data, path = photos[0].read_bytes(), photos[0]
  else:
    data = written_images(2)[1]
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
  (want,) = offline(served.bundle, [data])

  browser.get(served.url + "/")
  assert "gender" in browser.title.lower()
  got = upload_and_read(browser, path)
  assert got["label"] == want["label"]
  assert got["p_female"] == f"{100 * want['p_female']:.1f}%"
  assert browser.find_element(By.ID, "preview").is_displayed()
  # The screenshot is kept for a person to look at (pytest's tmp dir, or SERVE_SCREENSHOT).
  shot = os.environ.get("SERVE_SCREENSHOT") or str(tmp_path / "page.png")
  browser.save_screenshot(shot)
  assert os.path.getsize(shot) > 5_000

  # A file that is not an image: the page shows the server's message instead of a label.
  bad = tmp_path / "notes.jpg"
  bad.write_bytes(b"not really a jpeg")
  browser.get(served.url + "/")
  browser.find_element(By.ID, "file").send_keys(str(bad))
  from selenium.webdriver.support import expected_conditions as ec
  from selenium.webdriver.support.ui import WebDriverWait
  error = WebDriverWait(browser, 60).until(ec.presence_of_element_located((By.ID, "error")))
  assert "not a recognised image format" in error.text
