"""Tests of the web app's API (hme_jax/infer/serve.py) through Starlette's TestClient.

Most tests serve a fake recogniser whose answer encodes the image it was given
(its height and width), so a mixed-up answer shows; the last ones serve the real
``Recognizer`` trained by the ``trained_workdir`` fixture (skipped without it).
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("httpx")  # Starlette's TestClient runs on httpx

with warnings.catch_warnings():
  # Starlette >= 1.10 asks for httpx2 and warns when it finds httpx; both work.
  warnings.filterwarnings("ignore", message=".*httpx2.*")
  from starlette.testclient import TestClient  # noqa: E402

from hme_jax.infer import predict  # noqa: E402
from hme_jax.infer import serve  # noqa: E402


@dataclasses.dataclass
class FakeRecognition:
  latex: str
  alternatives: list[tuple[str, float]]


def digits(number: int) -> str:
  return " ".join(str(number))


def expected_latex(height: int, width: int) -> str:
  return f"{digits(height)} \\times {digits(width)}"


class FakeRecognizer:
  """Answers ``"<h digits> \\times <w digits>"``; records every call's batch.

  ``gate``: when given, the first call waits for it (``entered`` is set once the
  call has begun), so a test can pile up requests behind a busy worker.
  ``fail_width``: a batch holding an image of this width raises ``ValueError``.
  """

  def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None,
               fail_width: int | None = None, latex: str | None = None):
    self.delay_s = delay_s
    self.gate = gate
    self.entered = threading.Event()
    self.fail_width = fail_width
    self.latex = latex
    self.batches: list[list[np.ndarray]] = []
    self.threads: set[str] = set()

  def recognize(self, images):
    self.threads.add(threading.current_thread().name)
    self.batches.append(list(images))
    self.entered.set()
    if self.gate is not None:
      self.gate.wait(10)
    time.sleep(self.delay_s)
    if self.fail_width is not None and any(i.shape[1] == self.fail_width for i in images):
      raise ValueError(f"cannot read an image {self.fail_width} wide")
    answers = []
    for image in images:
      assert image.dtype == np.uint8 and image.ndim == 2, (image.dtype, image.shape)
      latex = self.latex if self.latex is not None else expected_latex(*image.shape)
      answers.append(FakeRecognition(latex, [(latex, -0.25), (latex + " + 1", -3.5)]))
    return answers

  @property
  def calls(self) -> int:
    return len(self.batches)


def stroke_image(height: int, width: int) -> np.ndarray:
  """Dark ink on white: a diagonal stroke and a bar, ``uint8 [height, width]``."""
  image = np.full((height, width), 255, np.uint8)
  rows = np.linspace(2, height - 3, num=width).astype(int)
  image[rows, np.arange(width)] = 0
  image[height // 2, width // 4: 3 * width // 4] = 0
  return image


def encode(image: np.ndarray, image_format: str = "PNG") -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format=image_format)
  return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
  return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


@pytest.fixture
def fake():
  return FakeRecognizer()


@pytest.fixture
def client(fake):
  with TestClient(serve.create_app(fake)) as test_client:
    yield test_client


def test_recognize_png_bytes_answers_with_latex_alternatives_and_latency(client, fake):
  image = stroke_image(40, 90)
  png = encode(image)
  response = client.post("/api/recognize", content=png, headers={"Content-Type": "image/png"})
  assert response.status_code == 200, response.text
  answer = response.json()
  assert answer["latex"] == expected_latex(40, 90)
  assert answer["alternatives"] == [
      {"latex": expected_latex(40, 90), "score": -0.25},
      {"latex": expected_latex(40, 90) + " + 1", "score": -3.5}]
  assert isinstance(answer["ms"], float) and answer["ms"] >= 0
  assert "svg" not in answer  # only on request
  assert "input" not in answer  # this recogniser does not say what its model read
  # The recogniser got what predict's loader makes of these bytes: the same path as the CLI.
  np.testing.assert_array_equal(fake.batches[-1][0], predict.load_image(png))
  # ... and ran on the server's one worker thread, not a request thread.
  assert fake.threads == {"hme-recognizer"}


@pytest.mark.parametrize("how", ["text/plain", "no content type", "json data URL", "json base64"])
def test_recognize_accepts_data_urls_and_json(client, how):
  png = encode(stroke_image(33, 71))
  if how == "text/plain":
    kwargs = {"content": data_url(png), "headers": {"Content-Type": "text/plain"}}
  elif how == "no content type":
    kwargs = {"content": data_url(png).encode()}
  elif how == "json data URL":
    kwargs = {"json": {"image": data_url(png)}}
  else:
    kwargs = {"json": {"image": base64.b64encode(png).decode()}}
  response = client.post("/api/recognize", **kwargs)
  assert response.status_code == 200, response.text
  assert response.json()["latex"] == expected_latex(33, 71)


@pytest.mark.parametrize("image_format", ["BMP", "JPEG", "GIF"])
def test_content_is_decoded_whatever_the_declared_type(client, image_format):
  # A BMP / JPEG / GIF declared as PNG is still read by its content.
  data = encode(stroke_image(28, 52), image_format)
  response = client.post("/api/recognize", content=data, headers={"Content-Type": "image/png"})
  assert response.status_code == 200, response.text
  assert response.json()["latex"] == expected_latex(28, 52)


def _truncated_png():
  return encode(stroke_image(40, 90))[:60]


@pytest.mark.parametrize("body,headers,status,words", [
    (b"", {"Content-Type": "image/png"}, 400, ["empty"]),
    (b"   \n", {}, 400, ["empty"]),
    (b"GIF89a but not really an image", {"Content-Type": "image/gif"}, 400, []),
    (b"%PDF-1.4 hello", {"Content-Type": "application/pdf"}, 400, []),
    (_truncated_png(), {"Content-Type": "image/png"}, 400, []),
    (b"data:image/png;base64,@@@not base64@@@", {"Content-Type": "text/plain"}, 400, ["base64"]),
    (b"data:image/png,%89PNG", {"Content-Type": "text/plain"}, 400, ["base64"]),
    (b'{"picture": 1}', {"Content-Type": "application/json"}, 400, ["image"]),
    (b"{not json", {"Content-Type": "application/json"}, 400, ["json"]),
    (b"--x\r\nContent-Disposition: form-data; name=image\r\n\r\nabc\r\n--x--\r\n",
     {"Content-Type": "multipart/form-data; boundary=x"}, 415, ["multipart", "--data-binary"]),
], ids=["empty", "blank", "fake gif", "pdf", "truncated png", "bad base64",
        "percent data url", "json without image", "bad json", "multipart"])
def test_bad_input_gets_a_json_4xx_naming_the_problem_and_the_server_keeps_serving(
    client, fake, body, headers, status, words):
  response = client.post("/api/recognize", content=body, headers=headers)
  assert response.status_code == status, response.text
  message = response.json()["error"]
  assert message and all(word in message.lower() for word in words), message
  assert fake.calls == 0  # refused before the model
  good = client.post("/api/recognize", content=encode(stroke_image(20, 30)))
  assert good.status_code == 200 and good.json()["latex"] == expected_latex(20, 30)


def test_decompression_bomb_is_refused_by_pixel_count(fake):
  # 6000 x 6000 of one colour compresses to a few KB but decodes to 36 MB.
  bomb = encode(np.full((6000, 6000), 255, np.uint8))
  assert len(bomb) < 100_000
  config = serve.ServeConfig(max_pixels=1_000_000)
  with TestClient(serve.create_app(fake, config)) as client:
    response = client.post("/api/recognize", content=bomb)
    assert response.status_code == 400, response.text
    assert "pixel" in response.json()["error"].lower()
    assert fake.calls == 0
    assert client.post("/api/recognize", content=encode(stroke_image(20, 30))).status_code == 200


def test_oversize_body_is_refused_with_413_declared_or_streamed(fake):
  config = serve.ServeConfig(max_request_bytes=4096)
  big = encode(np.random.default_rng(0).integers(0, 256, (100, 100), dtype=np.uint8))
  assert len(big) > 4096
  with TestClient(serve.create_app(fake, config)) as client:
    declared = client.post("/api/recognize", content=big)
    # A chunked upload declares no length: the server counts as it reads.
    streamed = client.post("/api/recognize",
                           content=(big[i:i + 1000] for i in range(0, len(big), 1000)))
    for response in (declared, streamed):
      assert response.status_code == 413, response.text
      assert "4096 bytes" in response.json()["error"]
    assert fake.calls == 0
    assert client.post("/api/recognize", content=encode(stroke_image(20, 30))).status_code == 200


def test_no_file_system_path_is_taken_from_a_request(client, fake, tmp_path):
  # load_image reads paths; the server must hand it only the request's bytes.
  path = tmp_path / "formula.png"
  path.write_bytes(encode(stroke_image(40, 90)))
  for kwargs in ({"content": str(path).encode()},
                 {"content": str(path), "headers": {"Content-Type": "text/plain"}},
                 {"json": {"image": str(path)}},
                 {"content": f"file://{path}", "headers": {"Content-Type": "text/plain"}}):
    response = client.post("/api/recognize", **kwargs)
    assert 400 <= response.status_code < 500, (kwargs, response.text)
  assert fake.calls == 0


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer():
  fake = FakeRecognizer(delay_s=0.03)
  config = serve.ServeConfig(max_batch_size=4)
  shapes = [(20 + i, 40 + 3 * i) for i in range(24)]
  with TestClient(serve.create_app(fake, config)) as client:

    def post(shape):
      return client.post("/api/recognize", content=encode(stroke_image(*shape))).json()

    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
      answers = list(pool.map(post, shapes))
  assert [answer.get("latex") for answer in answers] == [expected_latex(*s) for s in shapes]
  sizes = [len(batch) for batch in fake.batches]
  assert sum(sizes) == len(shapes)
  assert max(sizes) > 1, sizes  # requests that waited were recognised together
  assert max(sizes) <= 4, sizes


def test_a_failing_image_fails_only_its_own_request():
  gate = threading.Event()
  fake = FakeRecognizer(gate=gate, fail_width=13)
  worker = serve.RecognitionWorker(fake, max_batch_size=8)
  worker.start()
  try:
    first = worker.submit(stroke_image(10, 10))
    assert fake.entered.wait(10)  # the worker is busy with `first`
    futures = [worker.submit(stroke_image(10, width)) for width in (11, 12, 13, 14)]
    gate.set()
    assert first.result(10).latex == expected_latex(10, 10)
    for width, future in zip((11, 12, 13, 14), futures):
      if width == 13:
        with pytest.raises(ValueError, match="13 wide"):
          future.result(10)
      else:
        assert future.result(10).latex == expected_latex(10, width)
  finally:
    worker.close()
  # The four waiting images went in as one batch, then one by one after it failed.
  assert [len(batch) for batch in fake.batches] == [1, 4, 1, 1, 1, 1]


def test_a_full_queue_answers_503_and_a_slow_model_504():
  gate = threading.Event()
  fake = FakeRecognizer(gate=gate)
  config = serve.ServeConfig(max_queue=1, request_timeout_s=0.3)
  app = serve.create_app(fake, config)
  with TestClient(app) as client:
    worker = app.state.worker
    busy = worker.submit(stroke_image(10, 10))
    assert fake.entered.wait(10)
    # The worker is stuck on `busy`: the next request waits, then times out (504).
    timed_out = client.post("/api/recognize", content=encode(stroke_image(20, 30)))
    assert timed_out.status_code == 504, timed_out.text
    # Its cancelled image may still occupy the queue's one place; fill it for sure.
    try:
      worker.submit(stroke_image(10, 10))
    except serve.RequestError:
      pass
    full = client.post("/api/recognize", content=encode(stroke_image(20, 30)))
    assert full.status_code == 503, full.text
    assert "busy" in full.json()["error"].lower()
    gate.set()
    assert busy.result(10).latex == expected_latex(10, 10)
    deadline = time.monotonic() + 10
    while worker.pending and time.monotonic() < deadline:
      time.sleep(0.01)
    recovered = client.post("/api/recognize", content=encode(stroke_image(20, 30)))
    assert recovered.status_code == 200 and recovered.json()["latex"] == expected_latex(20, 30)


def test_recogniser_errors_are_500_json():
  fake = FakeRecognizer(fail_width=30)
  with TestClient(serve.create_app(fake)) as client:
    response = client.post("/api/recognize", content=encode(stroke_image(20, 30)))
    assert response.status_code == 500
    assert "30 wide" in response.json()["error"]
    assert client.post("/api/recognize", content=encode(stroke_image(20, 31))).status_code == 200


def test_render_svg_on_request_and_none_when_mathtext_cannot(fake):
  with TestClient(serve.create_app(fake)) as client:
    answer = client.post("/api/recognize?render=svg", content=encode(stroke_image(20, 30))).json()
    assert answer["svg"].lstrip().startswith("<?xml") and "<svg" in answer["svg"]
    assert "<path" in answer["svg"]  # glyphs as outlines: no font needed in the browser
  # to_mathtext repairs what it can; a string mathtext still refuses gets no SVG.
  renderer = serve.FormulaRenderer()
  renderer.mathtext = lambda latex: "$x^{$"
  with TestClient(serve.create_app(fake, renderer=renderer)) as client:
    response = client.post("/api/recognize?render=svg", content=encode(stroke_image(20, 30)))
    assert response.status_code == 200
    assert response.json()["latex"] == expected_latex(20, 30) and response.json()["svg"] is None


def test_health_page_and_static_files_work_offline(client):
  health = client.get("/healthz")
  assert health.status_code == 200 and health.json()["status"] == "ok"
  page = client.get("/")
  assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
  assert "default-src 'self'" in page.headers["content-security-policy"]
  assert 'id="pad"' in page.text and "/static/app.js" in page.text
  for path, media_type in (("/static/app.js", "javascript"), ("/static/app.css", "text/css")):
    response = client.get(path)
    assert response.status_code == 200 and media_type in response.headers["content-type"]
    assert "http://" not in response.text and "https://" not in response.text, path
  assert "http://" not in page.text and "https://" not in page.text
  missing = client.get("/static/../serve.py")
  assert missing.status_code == 404
  assert client.get("/api/recognize").status_code == 405


def test_health_reports_a_stopped_worker():
  app = serve.create_app(FakeRecognizer())
  client = TestClient(app)  # no `with`: the lifespan (and so the worker) never starts
  assert client.get("/healthz").status_code == 503
  response = client.post("/api/recognize", content=encode(stroke_image(20, 30)))
  assert response.status_code == 503 and "not running" in response.json()["error"]


def test_loopback_server_refuses_foreign_host_headers(fake):
  config = serve.ServeConfig(allowed_hosts=serve.LOOPBACK_NAMES)
  with TestClient(serve.create_app(fake, config), base_url="http://127.0.0.1:8000") as client:
    assert client.get("/healthz").status_code == 200
    assert client.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "evil.example:8000"}).status_code == 400


@pytest.mark.parametrize("host,allowed", [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
    ("0.0.0.0", False), ("192.168.1.10", False), ("::", False), ("example.com", False)])
def test_cli_binds_beyond_loopback_only_with_allow_remote(host, allowed, capsys):
  assert serve.is_loopback(host) == allowed
  if allowed:
    assert serve.parse_args(["--workdir", "w", "--host", host]).host == host
  else:
    with pytest.raises(SystemExit):
      serve.parse_args(["--workdir", "w", "--host", host])
    assert "--allow-remote" in capsys.readouterr().err
    assert serve.parse_args(["--workdir", "w", "--host", host, "--allow-remote"]).allow_remote


def test_cli_reports_a_busy_port_without_a_traceback():
  with serve.bind_socket("127.0.0.1", 0) as taken:
    port = taken.getsockname()[1]
    with pytest.raises(SystemExit, match=f"Cannot listen on 127.0.0.1:{port}"):
      serve.run(["--workdir", "unused", "--port", str(port)])


_FAKE_SERVER = """
import sys
sys.path.insert(0, {tests!r})
from test_serve import FakeRecognizer
from hme_jax.infer import serve
loads = []
def load(workdir, **kwargs):
  loads.append((workdir, kwargs))
  return FakeRecognizer()
serve.main(serve.parse_args(["--workdir", "wd", "--port", "0", "--beam-width", "3"]), load)
print("loads", loads, flush=True)
"""


def test_main_prints_its_address_serves_and_stops_on_ctrl_c():
  httpx = pytest.importorskip("httpx")
  code = _FAKE_SERVER.format(tests=os.path.dirname(__file__))
  process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
  try:
    lines = [process.stdout.readline(), process.stdout.readline()]
    assert lines[1].startswith("Serving hme-jax on http://127.0.0.1:"), lines
    url = lines[1].split()[3]
    response = httpx.post(f"{url}/api/recognize", content=encode(stroke_image(21, 34)), timeout=30)
    assert response.json()["latex"] == expected_latex(21, 34)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=30)
  finally:
    process.kill()
  assert process.returncode == 0, out
  assert "loads [('wd', {'checkpoint': 'best', 'decoder': None, 'beam_width': 3})]" in out


def test_serve_in_thread_answers_over_real_http(fake):
  httpx = pytest.importorskip("httpx")
  pytest.importorskip("uvicorn")
  with serve.serve_in_thread(serve.create_app(fake)) as url:
    assert url.startswith("http://127.0.0.1:")
    response = httpx.post(f"{url}/api/recognize", content=encode(stroke_image(25, 35)))
    assert response.status_code == 200 and response.json()["latex"] == expected_latex(25, 35)


# --- with the real recogniser ------------------------------------------------


@pytest.fixture(scope="module")
def workdir(request):
  try:
    return request.getfixturevalue("trained_workdir")
  except pytest.FixtureLookupError:
    pytest.skip("needs the trained_workdir fixture (tests/conftest.py)")


@pytest.fixture(scope="module")
def recognizer(workdir):
  return predict.Recognizer.from_workdir(workdir, decoder="beam", beam_width=4)


def test_real_recognizer_api_equals_predict_path(recognizer):
  images = [stroke_image(48, 120), 255 - stroke_image(60, 150)]  # both polarities
  pngs = [encode(image) for image in images]
  direct = [recognizer.recognize([predict.load_image(png)])[0] for png in pngs]
  with TestClient(serve.create_app(recognizer)) as client:
    for png, expected in zip(pngs, direct):
      response = client.post("/api/recognize", content=png)
      assert response.status_code == 200, response.text
      answer = response.json()
      assert answer["latex"] == expected.latex
      assert [a["latex"] for a in answer["alternatives"]] == [a for a, _ in expected.alternatives]
      scores = [a["score"] for a in answer["alternatives"]]
      np.testing.assert_allclose(scores, [s for _, s in expected.alternatives], rtol=1e-4,
                                 atol=1e-4)
      assert scores == sorted(scores, reverse=True)
      # The image the model read comes back as a PNG data URL: predict's normalisation.
      assert answer["input"].startswith("data:image/png;base64,")
      shown = predict.load_image(serve.decode_data_url(answer["input"]))
      np.testing.assert_array_equal(shown, recognizer.prepare(png))
      np.testing.assert_array_equal(shown, expected.model_input)


def test_real_recognizer_parallel_requests_each_get_their_own_answer(recognizer):
  shapes = [(40 + 4 * i, 90 + 20 * i) for i in range(6)]
  pngs = [encode(stroke_image(*shape)) for shape in shapes]
  alone = [recognizer.recognize([predict.load_image(png)])[0].latex for png in pngs]
  with TestClient(serve.create_app(recognizer)) as client:
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
      responses = list(pool.map(lambda png: client.post("/api/recognize", content=png), pngs))
  assert all(response.status_code == 200 for response in responses)
  assert [response.json()["latex"] for response in responses] == alone


def test_hme_serve_command_prints_its_address_and_serves(workdir):
  httpx = pytest.importorskip("httpx")
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  process = subprocess.Popen(
      [sys.executable, "-m", "hme_jax.infer.serve", "--workdir", str(workdir), "--port", "0",
       "--decoder", "greedy"],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
  try:
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
      line = process.stdout.readline()
      if not line:
        break
      lines.append(line)
      if line.startswith("Serving"):
        break
    assert lines and lines[-1].startswith("Serving"), "".join(lines)
    url = lines[-1].split()[3]
    assert url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"
    answer = httpx.post(f"{url}/api/recognize", content=encode(stroke_image(48, 120)),
                        timeout=60)
    assert answer.status_code == 200 and isinstance(answer.json()["latex"], str)
    bad = httpx.post(f"{url}/api/recognize", content=b"not an image", timeout=30)
    assert bad.status_code == 400 and json.loads(bad.text)["error"]
  finally:
    process.terminate()
    process.wait(30)
