"""A local web app and JSON API: draw or upload a handwritten formula, get LaTeX.

  hme-serve [--workdir DIR] [--port 8000]      # default: the model shipped in the package

serves, on 127.0.0.1 unless told otherwise:

  GET  /                 the page: a drawing canvas (pointer events), upload,
                         paste; shows the LaTeX, the rendered formula, the beam's
                         alternatives and the latency
  GET  /healthz          {"status": "ok", ...}
  POST /api/recognize    body: the image file's bytes (any format Pillow reads),
                         a ``data:image/...;base64,`` URL, or JSON
                         ``{"image": "<data URL or base64>"}``;
                         answer: ``{"latex", "alternatives": [{"latex", "score"}],
                         "input", "ms"}`` (``input``: a PNG data URL of the image the
                         model read; + ``"svg"`` with ``?render=svg``);
                         errors: 4xx/5xx ``{"error": "<what is wrong>"}``

Images go through ``hme_jax.infer.predict.load_image`` (decoded, never trusted by name
or extension; pixel-count limit) and ``Recognizer.recognize`` (the normalisation
of ``preprocessing.normalise``: paper, light, polarity, crop, scale, pen; then
resizing): the same code path as the ``predict`` CLI, and the page shows the
normalised image beside the result. The model is
loaded once and owned by one worker thread; requests queue up and the worker
recognises whatever is pending as one batch, so concurrent requests share the
model without mixing answers. No file-system path is ever taken from a request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import io
import ipaddress
import json
import logging
import math
import pathlib
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from hme_jax.infer import predict, saved_model

STATIC_DIR = pathlib.Path(__file__).with_name("static")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")

# The page loads nothing from elsewhere (it must work offline); the rendered
# formula is shown as an <img> of a data: URL, so server SVG never runs script.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

log = logging.getLogger(__name__)


class Recognizes(Protocol):
  """What the server needs of a recogniser (``hme_jax.infer.predict.Recognizer``)."""

  def recognize(self, images: list[np.ndarray]) -> list[Any]:
    """``images``: uint8 ``[H, W]`` each -> objects with ``latex`` and ``alternatives`` (and,
    shown on the page where present, ``model_input``: the uint8 image the model read)."""


@dataclasses.dataclass(frozen=True)
class ServeConfig:
  """Limits and batching of the server (the CLI flags of the same names)."""

  max_request_bytes: int = 10 * 1024 * 1024  # request body, before any decoding
  max_pixels: int | None = None              # None = load_image's default
  max_batch_size: int = 8                    # images per recognize() call
  batch_window_ms: float = 0.0               # wait this long for a batch to fill
  max_queue: int = 64                        # pending images; more -> 503
  request_timeout_s: float = 60.0            # queue wait + recognition -> 504
  allowed_hosts: tuple[str, ...] | None = None  # Host header values; None = any


class RequestError(Exception):
  """A request the server answers with ``status`` and ``{"error": message}``."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


# --- the model's worker thread ------------------------------------------------


class RecognitionWorker:
  """Owns the recogniser: one thread runs every ``recognize`` call, in batches.

  ``submit`` may be called from any thread; it returns a future holding that
  image's own ``Recognition``. The worker takes whatever is pending (up to
  ``max_batch_size``) as one batch, so a busy server batches on its own and an
  idle one answers a single request at once.
  """

  _STOP = object()

  def __init__(self, recognizer: Recognizes, *, max_batch_size: int = 8,
               max_queue: int = 64, batch_window_ms: float = 0.0):
    if max_batch_size < 1 or max_queue < 1:
      raise ValueError(f"max_batch_size ({max_batch_size}) and max_queue ({max_queue}) "
                       "must be at least 1")
    self.recognizer = recognizer
    self.max_batch_size = max_batch_size
    self.batch_window_s = max(0.0, batch_window_ms) / 1000.0
    self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
    self._thread: threading.Thread | None = None
    self._lock = threading.Lock()
    self.batch_sizes: list[int] = []  # one entry per recognize() call, for tests and stats

  @property
  def running(self) -> bool:
    return self._thread is not None and self._thread.is_alive()

  @property
  def pending(self) -> int:
    return self._queue.qsize()

  def start(self) -> None:
    with self._lock:
      if self.running:
        return
      self._thread = threading.Thread(target=self._run, name="hme-recognizer", daemon=True)
      self._thread.start()

  def close(self, timeout: float = 30.0) -> None:
    """Finishes the queued work, then stops the thread."""
    with self._lock:
      thread, self._thread = self._thread, None
    if thread is not None:
      self._queue.put(self._STOP)
      thread.join(timeout)

  def submit(self, image: np.ndarray) -> concurrent.futures.Future:
    if not self.running:
      raise RequestError(503, "The recogniser is not running (server starting or stopping); "
                              "retry in a moment.")
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
      self._queue.put_nowait((image, future))
    except queue.Full:
      raise RequestError(503, f"Server busy: {self._queue.maxsize} images are already "
                              "waiting; retry in a moment.") from None
    return future

  def _run(self) -> None:
    stop = False
    while not stop:
      item = self._queue.get()
      if item is self._STOP:
        break
      batch = [item]
      deadline = time.monotonic() + self.batch_window_s
      while len(batch) < self.max_batch_size:
        try:
          item = self._queue.get(timeout=max(0.0, deadline - time.monotonic())) \
            if self.batch_window_s else self._queue.get_nowait()
        except queue.Empty:
          break
        if item is self._STOP:
          stop = True
          break
        batch.append(item)
      # A request that timed out was cancelled: skip it, mark the rest running.
      batch = [(image, future) for image, future in batch
               if future.set_running_or_notify_cancel()]
      if batch:
        self._recognize_batch(batch)

  def _recognize_batch(self, batch) -> None:
    images = [image for image, _ in batch]
    try:
      results = self.recognizer.recognize(images)
      if len(results) != len(images):
        raise RuntimeError(f"recognize() returned {len(results)} results for "
                           f"{len(images)} images")
    except Exception as error:  # pylint: disable=broad-except
      if len(batch) > 1:
        # Retry one by one, so that one bad image fails only its own request.
        for item in batch:
          self._recognize_batch([item])
        return
      batch[0][1].set_exception(error)
      return
    self.batch_sizes.append(len(images))
    for (_, future), result in zip(batch, results):
      future.set_result(result)


# --- requests in, JSON out ------------------------------------------------------


def decode_data_url(text: str) -> bytes:
  """The bytes of a ``data:[<type>];base64,<payload>`` URL (or of bare base64)."""
  text = text.strip()
  if text.startswith("data:"):
    header, comma, payload = text.partition(",")
    if not comma:
      raise RequestError(400, "Malformed data URL: no ',' after the media type.")
    if not header.endswith(";base64"):
      raise RequestError(400, "Only base64 data URLs are accepted "
                              "(data:image/png;base64,...).")
  else:
    payload = text
  try:
    return base64.b64decode("".join(payload.split()), validate=True)
  except (binascii.Error, ValueError):
    raise RequestError(400, "The data URL's payload is not valid base64.") from None


def image_bytes_from_body(body: bytes, content_type: str) -> bytes:
  """The encoded image in a request body: raw bytes, a data URL, or JSON."""
  media_type = content_type.split(";")[0].strip().lower()
  if media_type.startswith("multipart/"):
    raise RequestError(415, "Multipart forms are not accepted: send the image file's bytes "
                            "as the body (curl --data-binary @image.png) or a data URL.")
  if media_type == "application/json":
    try:
      payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
      raise RequestError(400, f"The JSON body does not parse: {error}.") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("image"), str):
      raise RequestError(400, 'The JSON body must be {"image": "<data URL or base64>"}.')
    return decode_data_url(payload["image"])
  if media_type.startswith("text/") or body.lstrip()[:5] == b"data:":
    try:
      return decode_data_url(body.decode("ascii"))
    except UnicodeDecodeError:
      raise RequestError(400, "A text body must be an ASCII data URL.") from None
  return body


def png_data_url(image: np.ndarray) -> str:
  """``uint8 [H, W]`` -> ``data:image/png;base64,...``."""
  ok, encoded = cv2.imencode(".png", image)
  if not ok:
    raise RuntimeError(f"OpenCV could not PNG-encode an image of shape {image.shape}.")
  return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def recognition_json(recognition: Any) -> dict[str, Any]:
  """``Recognition`` -> ``{"latex", "alternatives": [{"latex", "score"}]}``, and ``"input"``
  (``png_data_url`` of the image the model read) where the recognition has it."""

  def finite(score):
    score = float(score)
    return score if math.isfinite(score) else None  # JSON has no inf/NaN

  answer = {
      "latex": recognition.latex,
      "alternatives": [{"latex": latex, "score": finite(score)}
                       for latex, score in recognition.alternatives],
  }
  model_input = getattr(recognition, "model_input", None)
  if model_input is not None:
    answer["input"] = png_data_url(model_input)
  return answer


class FormulaRenderer:
  """LaTeX tokens -> standalone SVG via matplotlib's mathtext (no TeX, no fonts needed).

  matplotlib is not thread-safe, so renders are serialised by a lock.
  """

  def __init__(self, fontsize: float = 20.0):
    self.fontsize = fontsize
    self._lock = threading.Lock()

  @staticmethod
  def mathtext(latex: str) -> str:
    tokens = latex.split()
    try:
      from hme_jax.text.latex import to_mathtext  # pylint: disable=import-outside-toplevel
    except ModuleNotFoundError as error:
      if error.name != "hme_jax.text.latex":
        raise
      text = " ".join(tokens)
    else:
      text = to_mathtext(tokens)
    return text if text.startswith("$") else f"${text}$"

  def svg(self, latex: str) -> str | None:
    """The formula as SVG text, or None where there is nothing to draw or mathtext fails."""
    if not latex.strip():
      return None
    from matplotlib import mathtext  # pylint: disable=import-outside-toplevel
    from matplotlib.font_manager import FontProperties  # pylint: disable=import-outside-toplevel
    buffer = io.BytesIO()
    with self._lock:
      try:
        mathtext.math_to_image(self.mathtext(latex), buffer, format="svg",
                               prop=FontProperties(size=self.fontsize))
      except Exception as error:  # pylint: disable=broad-except
        # Decoders can emit token runs that mathtext cannot parse (e.g. unbalanced braces).
        log.info("mathtext cannot render %r: %s", latex, str(error).splitlines()[0])
        return None
    return buffer.getvalue().decode("utf-8")


async def _read_body(request: Request, max_bytes: int) -> bytes:
  """The request body, refusing (413) any past ``max_bytes`` before reading it all."""
  too_large = RequestError(413, f"The request body is larger than the limit of {max_bytes} "
                                "bytes; send a smaller image.")
  declared = request.headers.get("content-length")
  if declared is not None and declared.isdigit() and int(declared) > max_bytes:
    raise too_large
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > max_bytes:
      raise too_large
    chunks.append(chunk)
  return b"".join(chunks)


def create_app(recognizer: Recognizes, config: ServeConfig = ServeConfig(), *,
               renderer: FormulaRenderer | None = None) -> Starlette:
  """The ASGI app around ``recognizer``; its worker thread runs while the app's lifespan does."""
  worker = RecognitionWorker(recognizer, max_batch_size=config.max_batch_size,
                             max_queue=config.max_queue,
                             batch_window_ms=config.batch_window_ms)
  renderer = renderer or FormulaRenderer()
  load_kwargs = {} if config.max_pixels is None else {"max_pixels": config.max_pixels}

  def decode_image(body: bytes, content_type: str) -> np.ndarray:
    if not body or body.isspace():
      raise RequestError(400, "The request body is empty: send an image (PNG, JPEG, BMP, ...).")
    data = image_bytes_from_body(body, content_type)
    try:
      return predict.load_image(data, **load_kwargs)  # bytes only: never a path
    except predict.ImageError as error:
      raise RequestError(400, str(error)) from None

  async def index(request: Request) -> Response:
    del request
    return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

  async def healthz(request: Request) -> Response:
    del request
    ok = worker.running
    return JSONResponse({"status": "ok" if ok else "stopped", "pending": worker.pending,
                         "max_batch_size": worker.max_batch_size},
                        status_code=200 if ok else 503)

  async def recognize(request: Request) -> Response:
    start = time.perf_counter()
    try:
      body = await _read_body(request, config.max_request_bytes)
      # Decoding is CPU work: off the event loop, so other requests go on meanwhile.
      image = await asyncio.to_thread(decode_image, body, request.headers.get("content-type", ""))
      future = worker.submit(image)
      try:
        recognition = await asyncio.wait_for(asyncio.wrap_future(future),
                                             config.request_timeout_s)
      except asyncio.TimeoutError:
        future.cancel()
        raise RequestError(504, f"Recognition took longer than {config.request_timeout_s:g} s; "
                                "the server is overloaded.") from None
      except predict.ImageError as error:
        raise RequestError(400, str(error)) from None
      except Exception as error:  # pylint: disable=broad-except
        log.exception("recognition failed")
        raise RequestError(500, f"Recognition failed: {type(error).__name__}: {error}") from None
      answer = recognition_json(recognition)
      if request.query_params.get("render") == "svg":
        answer["svg"] = await asyncio.to_thread(renderer.svg, answer["latex"])
    except RequestError as error:
      return JSONResponse({"error": error.message}, status_code=error.status)
    answer["ms"] = round((time.perf_counter() - start) * 1000.0, 1)
    return JSONResponse(answer)

  async def http_error(request: Request, error: HTTPException) -> Response:
    del request
    return JSONResponse({"error": error.detail}, status_code=error.status_code,
                        headers=getattr(error, "headers", None))

  @contextlib.asynccontextmanager
  async def lifespan(app):
    del app
    worker.start()
    try:
      yield
    finally:
      await asyncio.to_thread(worker.close)

  middleware = []
  if config.allowed_hosts is not None:
    # A loopback server answers only to loopback names (guards against DNS rebinding).
    middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(config.allowed_hosts)))
  app = Starlette(
      routes=[
          Route("/", index),
          Route("/healthz", healthz),
          Route("/api/recognize", recognize, methods=["POST"]),
          Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
      ],
      middleware=middleware,
      exception_handlers={HTTPException: http_error},
      lifespan=lifespan,
  )
  app.state.worker = worker
  return app


# --- serving ------------------------------------------------------------------


def is_loopback(host: str) -> bool:
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host.strip("[]")).is_loopback
  except ValueError:
    return False


def bind_socket(host: str, port: int) -> socket.socket:
  """A listening TCP socket on ``host:port`` (port 0 = any free port)."""
  host = host.strip("[]")
  family = socket.AF_INET6 if ":" in host else socket.AF_INET
  sock = socket.socket(family, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind((host, port))
  except OSError as error:
    sock.close()
    raise OSError(f"Cannot listen on {host}:{port}: {error.strerror}; "
                  "pick another --port (0 = any free port).") from error
  sock.listen(128)
  sock.set_inheritable(True)
  return sock


def address_of(sock: socket.socket) -> str:
  host, port = sock.getsockname()[:2]
  return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app, access_log: bool = False):
  import uvicorn  # pylint: disable=import-outside-toplevel
  return uvicorn.Server(uvicorn.Config(
      app, log_level="info" if access_log else "warning", access_log=access_log,
      server_header=False, timeout_graceful_shutdown=5))


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0,
                    startup_timeout_s: float = 30.0) -> Iterator[str]:
  """Serves ``app`` from a background thread; yields its base URL (tests, benchmarks)."""
  sock = bind_socket(host, port)
  server = _uvicorn_server(app)
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                            name="hme-serve", daemon=True)
  thread.start()
  try:
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
      if not thread.is_alive() or time.monotonic() > deadline:
        raise RuntimeError("The server did not start (see the log above).")
      time.sleep(0.01)
    yield address_of(sock)
  finally:
    server.should_exit = True
    thread.join(30)
    sock.close()


def warmup_image(height: int = 96, width: int = 160) -> np.ndarray:
  """A synthetic 'x' stroke image (dark ink on white), to compile the model before serving."""
  image = np.full((height, width), 255, np.uint8)
  for i in range(height // 4, 3 * height // 4):
    j = i - height // 4
    image[i, width // 3 + j:width // 3 + j + 3] = 0
    image[i, width // 3 + height // 2 - j:width // 3 + height // 2 - j + 3] = 0
  return image


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="hme-serve", description="Serve the recogniser as a local web page and JSON API.")
  predict.add_model_arguments(parser)
  parser.add_argument("--host", default="127.0.0.1",
                      help="Address to bind; anything but loopback needs --allow-remote.")
  parser.add_argument("--port", type=int, default=8000, help="TCP port (0 = any free port).")
  parser.add_argument("--allow-remote", "--allow_remote", action="store_true",
                      help="Allow binding to a non-loopback address (the API has no auth).")
  defaults = ServeConfig()
  parser.add_argument("--max-request-bytes", "--max_request_bytes", type=int,
                      default=defaults.max_request_bytes)
  parser.add_argument("--max-pixels", "--max_pixels", type=int, default=None,
                      help="Largest decoded image, in pixels (default: load_image's).")
  parser.add_argument("--max-batch-size", "--max_batch_size", type=int,
                      default=defaults.max_batch_size)
  parser.add_argument("--batch-window-ms", "--batch_window_ms", type=float,
                      default=defaults.batch_window_ms)
  parser.add_argument("--max-queue", "--max_queue", type=int, default=defaults.max_queue)
  parser.add_argument("--request-timeout-s", "--request_timeout_s", type=float,
                      default=defaults.request_timeout_s)
  parser.add_argument("--access-log", "--access_log", action="store_true")
  args = parser.parse_args(argv)
  if not is_loopback(args.host) and not args.allow_remote:
    parser.error(f"--host {args.host} is not a loopback address: anyone who can reach it could "
                 "use the server. Pass --allow-remote to bind it anyway.")
  if not 0 <= args.port <= 65535:
    parser.error(f"--port {args.port} is not a TCP port (0..65535).")
  return args


def main(args: argparse.Namespace,
         load_recognizer: Callable[..., Recognizes] | None = None) -> None:
  load_recognizer = load_recognizer or predict.Recognizer.from_workdir
  config = ServeConfig(
      max_request_bytes=args.max_request_bytes, max_pixels=args.max_pixels,
      max_batch_size=args.max_batch_size, batch_window_ms=args.batch_window_ms,
      max_queue=args.max_queue, request_timeout_s=args.request_timeout_s,
      allowed_hosts=LOOPBACK_NAMES if is_loopback(args.host) else None)
  sock = bind_socket(args.host, args.port)  # fail fast, before the slow model load
  workdir = args.workdir or saved_model.pretrained_path()
  print(f"Loading the model from {workdir} ...", flush=True)
  recognizer = load_recognizer(workdir, checkpoint=args.checkpoint,
                               decoder=args.decoder, beam_width=args.beam_width)
  recognizer.recognize([warmup_image()])  # compile now, not on the first request
  renderer = FormulaRenderer()
  renderer.svg("x ^ { 2 }")  # matplotlib's import and font cache, likewise
  app = create_app(recognizer, config, renderer=renderer)
  print(f"Serving hme-jax on {address_of(sock)}  (Ctrl+C to stop)", flush=True)
  try:
    _uvicorn_server(app, access_log=args.access_log).run(sockets=[sock])
  except KeyboardInterrupt:
    pass  # uvicorn shut down gracefully, then re-raised the Ctrl+C
  print("Stopped.", flush=True)


def run(argv: Sequence[str] | None = None) -> None:
  """Console entry point ``hme-serve``."""
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    main(args)
  except OSError as error:  # a busy port, a missing work dir: say so without a traceback
    sys.exit(f"hme-serve: error: {error}")


if __name__ == "__main__":
  run()
