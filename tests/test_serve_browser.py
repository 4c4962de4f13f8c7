"""The web page in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

A server started here serves a fake recogniser (its answer encodes the image
size; it keeps every image it gets). The test draws strokes with a mouse, a pen
and a finger, checks undo, clicks Recognise and reads the LaTeX, the rendered
formula and the normalised image the model read off the page, and uploads a good
and a bad file. A screenshot goes to
``$HME_TEST_ARTIFACTS`` (default: the test's tmp dir). Skips where Chromium or
Playwright is missing; installs nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import os
import pathlib
import re
import shutil
import threading

import numpy as np
import pytest
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

import ml_collections  # noqa: E402

from hme_jax.infer import predict, serve  # noqa: E402

CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def find_chromium() -> str | None:
  candidates = [os.environ.get("HME_CHROMIUM", ""), "chromium", "chromium-browser"]
  for candidate in candidates:
    if candidate and (path := shutil.which(candidate)):
      return path
  return None


@dataclasses.dataclass
class FakeRecognition:
  latex: str
  alternatives: list[tuple[str, float]]
  model_input: np.ndarray | None = None


def expected_latex(height: int, width: int) -> str:
  return f"{' '.join(str(height))} \\times {' '.join(str(width))}"


class RecordingRecognizer:
  """Answers ``"<h> \\times <w>"`` (digit tokens) and keeps the images it was given; its
  model input is the real normalisation's (``predict.prepare_image``, height 48)."""

  input_config = ml_collections.ConfigDict({"height": 48, "max_width": 768})

  def __init__(self):
    self.images: list[np.ndarray] = []
    self.model_inputs: list[np.ndarray] = []
    self.lock = threading.Lock()

  def recognize(self, images):
    model_inputs = [predict.prepare_image(image, self.input_config) for image in images]
    with self.lock:
      self.images.extend(images)
      self.model_inputs.extend(model_inputs)
    return [FakeRecognition(expected_latex(*image.shape),
                            [(expected_latex(*image.shape), -0.25), ("x ^ { 2 }", -2.5)],
                            model_input)
            for image, model_input in zip(images, model_inputs)]


@pytest.fixture(scope="module")
def chromium_path():
  path = find_chromium()
  if path is None:
    pytest.skip("Chromium not found (apt-get install chromium, or set HME_CHROMIUM)")
  return path


@pytest.fixture(scope="module")
def recognizer():
  return RecordingRecognizer()


@pytest.fixture(scope="module")
def base_url(recognizer):
  with serve.serve_in_thread(serve.create_app(recognizer)) as url:
    yield url


@pytest.fixture(scope="module")
def browser(chromium_path):
  # Playwright gives each launch a fresh temporary profile (--user-data-dir).
  with sync_api.sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=chromium_path, headless=True,
                                         args=CHROMIUM_FLAGS, timeout=60_000)
    yield browser
    browser.close()


@pytest.fixture
def page(browser, base_url):
  context = browser.new_context(viewport={"width": 1100, "height": 1000}, has_touch=True)
  context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
  page = context.new_page()
  page.set_default_timeout(20_000)
  errors = []
  page.on("pageerror", lambda error: errors.append(str(error)))
  page.goto(base_url)
  page.wait_for_function("() => document.getElementById('status').textContent === 'model ready'")
  yield page
  context.close()
  assert not errors, errors  # no JavaScript error on the page


@pytest.fixture
def artifacts_dir(tmp_path) -> pathlib.Path:
  path = pathlib.Path(os.environ.get("HME_TEST_ARTIFACTS") or tmp_path)
  path.mkdir(parents=True, exist_ok=True)
  return path


def ink_pixels(page) -> int:
  """Dark pixels on the drawing pad."""
  return page.evaluate("""() => {
    const pad = document.getElementById('pad');
    const data = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
    let count = 0;
    for (let i = 0; i < data.length; i += 4) if (data[i] < 128) count++;
    return count;
  }""")


def mouse_stroke(page, points):
  page.mouse.move(*points[0])
  page.mouse.down()
  for point in points[1:]:
    page.mouse.move(*point, steps=8)
  page.mouse.up()


def pen_stroke(cdp, points):
  """A stylus stroke: mouse events that Chromium reports as pointerType 'pen'."""
  def send(kind, point, buttons):
    cdp.send("Input.dispatchMouseEvent", {
        "type": kind, "x": point[0], "y": point[1], "button": "left", "buttons": buttons,
        "clickCount": 1, "pointerType": "pen", "force": 0.5})
  send("mousePressed", points[0], 1)
  for start, end in zip(points, points[1:]):
    for t in np.linspace(0, 1, 8)[1:]:
      send("mouseMoved", tuple(np.add(start, t * np.subtract(end, start))), 1)
  send("mouseReleased", points[-1], 0)


def touch_stroke(cdp, points):
  """A finger stroke (pointerType 'touch')."""
  def send(kind, point):
    cdp.send("Input.dispatchTouchEvent", {
        "type": kind, "touchPoints": [] if point is None else
        [{"x": point[0], "y": point[1], "radiusX": 2, "radiusY": 2, "force": 1, "id": 1}]})
  send("touchStart", points[0])
  for start, end in zip(points, points[1:]):
    for t in np.linspace(0, 1, 8)[1:]:
      send("touchMove", tuple(np.add(start, t * np.subtract(end, start))))
  send("touchEnd", None)


def test_draw_with_mouse_pen_and_touch_then_recognise(page, recognizer, artifacts_dir):
  page.evaluate("""() => {
    window.seenPointerTypes = [];
    document.getElementById('pad').addEventListener(
        'pointerdown', (event) => window.seenPointerTypes.push(event.pointerType));
  }""")
  box = page.locator("#pad").bounding_box()
  at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])
  page.fill("#pen-width", "8")  # a range input: fill sets its value
  page.dispatch_event("#pen-width", "input")
  assert page.inner_text("#pen-width-value") == "8"
  cdp = page.context.new_cdp_session(page)

  strokes = [
      (mouse_stroke, page, [at(0.10, 0.30), at(0.25, 0.70)]),  # a '\'
      (mouse_stroke, page, [at(0.25, 0.30), at(0.10, 0.70)]),  # a '/': an x
      (pen_stroke, cdp, [at(0.35, 0.50), at(0.50, 0.50)]),     # a '-' with the pen
      (touch_stroke, cdp, [at(0.60, 0.25), at(0.60, 0.75)]),   # a '|' with a finger
  ]
  for draw, target, points in strokes:
    draw(target, points)
  assert page.evaluate("window.seenPointerTypes") == ["mouse", "mouse", "pen", "touch"]
  drawn = ink_pixels(page)
  assert drawn > 1000

  # Undo removes exactly the last stroke; a blank pad has no ink.
  mouse_stroke(page, [at(0.80, 0.20), at(0.95, 0.80)])
  assert ink_pixels(page) > drawn
  page.click("#undo")
  assert abs(ink_pixels(page) - drawn) <= drawn * 0.01

  page.click("#recognise")
  page.wait_for_function("""() => {
    const image = document.getElementById('rendered');
    return !document.getElementById('result').hidden && !image.hidden &&
        image.complete && image.naturalWidth > 0;
  }""")
  latex = page.inner_text("#latex")
  sent = recognizer.images[-1]
  assert latex == expected_latex(*sent.shape)
  assert sent.shape == (400, 1200)  # the pad's pixels, decoded by the server
  # The server got the strokes where they were drawn: ink at each stroke's middle,
  # dark ink on white paper, and none where the undone stroke was.
  for fx, fy in ((0.175, 0.5), (0.425, 0.5), (0.60, 0.5)):
    y, x = int(fy * sent.shape[0]), int(fx * sent.shape[1])
    assert sent[y - 4:y + 5, x - 4:x + 5].min() < 100, (fx, fy)
  assert np.median(sent) == 255
  assert sent[int(0.5 * 400) - 20:int(0.5 * 400) + 20, int(0.875 * 1200) - 20:int(0.875 * 1200) + 20].min() == 255

  # Beside the result, the image the model read: the server's normalisation of the drawing
  # (white ink on black, 48 px high), pixel for pixel.
  assert page.is_visible("#model-input")
  shown = page.get_attribute("#model-input", "src")
  assert shown.startswith("data:image/png;base64,")
  shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(shown.split(",", 1)[1]))))
  np.testing.assert_array_equal(shown, recognizer.model_inputs[-1])
  assert shown.shape[0] == 48 and shown[0].max() == 0 and shown.max() == 255
  size = page.evaluate("""() => {
    const image = document.getElementById('model-input');
    return [image.naturalHeight, image.naturalWidth, image.getBoundingClientRect().width];
  }""")
  assert size[:2] == list(shown.shape) and 0 < size[2] <= 320  # small, beside the result

  rows = page.locator("#alternatives tr")
  assert rows.count() == 2
  assert rows.nth(1).inner_text().split("\t") == ["2", "x ^ { 2 }", "-2.500"]
  assert re.fullmatch(r"server \d+\.\d ms · round trip \d+ ms", page.inner_text("#latency"))

  page.click("#copy")
  assert page.evaluate("navigator.clipboard.readText()") == latex

  screenshot = artifacts_dir / "serve_page.png"
  page.screenshot(path=str(screenshot), full_page=True)
  assert screenshot.stat().st_size > 10_000

  page.click("#clear")
  assert ink_pixels(page) == 0
  page.click("#recognise")
  assert "draw a formula" in page.inner_text("#error").lower()


def test_upload_a_good_and_a_bad_file(page, recognizer):
  image = np.full((120, 300), 255, np.uint8)
  image[50:70, 40:260] = 0
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="JPEG")
  page.set_input_files("#file", files=[
      {"name": "formula.jpg", "mimeType": "image/jpeg", "buffer": buffer.getvalue()}])
  # The preview has a size (is visible) only once the browser has decoded the image.
  page.wait_for_selector("#upload-preview", state="visible")
  assert not page.is_visible("#pad")
  assert "formula.jpg" in page.inner_text("#upload-name")
  page.click("#recognise")
  page.wait_for_function("(expected) => document.getElementById('latex').textContent === expected",
                         arg=expected_latex(120, 300))
  assert recognizer.images[-1].shape == (120, 300)

  # A text file that calls itself a PNG: the server decodes it and says what is wrong.
  count = len(recognizer.images)
  page.set_input_files("#file", files=[
      {"name": "notes.png", "mimeType": "image/png", "buffer": b"just some notes"}])
  page.click("#recognise")
  page.wait_for_selector("#error:not([hidden])")
  assert "not an image" in page.inner_text("#error").lower()
  assert len(recognizer.images) == count

  page.click("#back-to-drawing")
  assert page.is_visible("#pad") and not page.is_visible("#upload-view")


@pytest.mark.parametrize("how", ["paste", "drop"])
def test_paste_or_drop_an_image(page, recognizer, how):
  image = np.full((90, 210), 255, np.uint8)
  image[30:60, 20:190] = 0
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  page.evaluate("""([how, base64]) => {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], 'clip.png', {type: 'image/png'}));
    if (how === 'paste') {
      document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: transfer}));
    } else {
      document.getElementById('surface').dispatchEvent(
          new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }
  }""", [how, base64.b64encode(buffer.getvalue()).decode()])
  page.wait_for_selector("#upload-preview", state="visible")
  assert not page.is_visible("#pad")
  page.keyboard.press("Control+Enter")  # the shortcut for Recognise
  page.wait_for_function("(expected) => document.getElementById('latex').textContent === expected",
                         arg=expected_latex(90, 210))
  assert recognizer.images[-1].shape == (90, 210)
