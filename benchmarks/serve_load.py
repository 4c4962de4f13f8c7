"""A bounded load on the web app over loopback HTTP: latency percentiles and errors.

  python benchmarks/serve_load.py --workdir DIR                # the real model, served here
  python benchmarks/serve_load.py --fake_ms 20                 # the server alone (fake model)
  python benchmarks/serve_load.py --url http://127.0.0.1:8000  # a running hme-serve

Sends ``--requests`` POST /api/recognize (default 200) from ``--concurrency``
threads (default 8), each a PNG of synthetic strokes (16 sizes, cycled), and
prints p50/p90/p99/max latency, throughput and the error count; exits 1 on any
error or any answer that differs from the first answer for the same image.
Only loopback addresses are ever targeted; the run stops by itself after
``--requests`` or ``--time_limit_s``, whichever comes first.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import io
import json
import sys
import threading
import time
import urllib.parse

import numpy as np
from PIL import Image

from hme_jax.infer import serve

NUM_IMAGES = 16  # distinct images, cycled through the requests


@dataclasses.dataclass
class FakeRecognition:
  latex: str
  alternatives: list[tuple[str, float]]


class FakeRecognizer:
  """Sleeps ``delay_s`` per batch (a model's cost) and answers the image's size."""

  def __init__(self, delay_s: float):
    self.delay_s = delay_s

  def recognize(self, images):
    time.sleep(self.delay_s)
    return [FakeRecognition(f"{h} \\times {w}", [(f"{h} \\times {w}", 0.0)])
            for h, w in (image.shape for image in images)]


def stroke_png(index: int) -> bytes:
  """A PNG of a few random dark strokes on white; size and strokes depend on ``index``."""
  rng = np.random.default_rng(index)
  height, width = 60 + 8 * (index % 4), 160 + 40 * (index % 5)
  image = np.full((height, width), 255, np.uint8)
  for _ in range(4):
    y0, y1 = rng.integers(5, height - 5, 2)
    x0, x1 = rng.integers(5, width - 5, 2)
    for t in np.linspace(0, 1, 200):
      y, x = int(y0 + t * (y1 - y0)), int(x0 + t * (x1 - x0))
      image[y - 1:y + 2, x - 1:x + 2] = 0
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def percentile(values, q):
  return float(np.percentile(values, q)) if values else float("nan")


def run_load(url: str, num_requests: int, concurrency: int, time_limit_s: float,
             num_images: int = NUM_IMAGES) -> dict:
  import httpx  # pylint: disable=import-outside-toplevel
  images = [stroke_png(i) for i in range(num_images)]
  latencies_ms, server_ms, errors = [], [], collections.Counter()
  answers: dict[int, str] = {}
  mismatches = 0
  lock = threading.Lock()
  deadline = time.monotonic() + time_limit_s
  limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

  with httpx.Client(base_url=url, timeout=120.0, limits=limits) as client:
    if client.get("/healthz").status_code != 200:
      raise SystemExit(f"{url}/healthz is not healthy")

    def one(request_index: int) -> None:
      nonlocal mismatches
      if time.monotonic() > deadline:
        with lock:
          errors["not sent: time limit"] += 1
        return
      image_index = request_index % num_images
      start = time.perf_counter()
      try:
        response = client.post("/api/recognize", content=images[image_index])
      except httpx.HTTPError as error:
        with lock:
          errors[type(error).__name__] += 1
        return
      elapsed_ms = (time.perf_counter() - start) * 1000.0
      with lock:
        if response.status_code != 200:
          errors[f"HTTP {response.status_code}"] += 1
          return
        answer = response.json()
        latencies_ms.append(elapsed_ms)
        server_ms.append(answer["ms"])
        # Batching must not change (or mix up) an image's answer.
        if answers.setdefault(image_index, answer["latex"]) != answer["latex"]:
          mismatches += 1

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
      list(pool.map(one, range(num_requests)))
    wall_s = time.perf_counter() - start

  return {
      "url": url, "requests": num_requests, "concurrency": concurrency,
      "ok": len(latencies_ms), "errors": sum(errors.values()), "error_kinds": dict(errors),
      "answer_mismatches": mismatches,
      "p50_ms": round(percentile(latencies_ms, 50), 1),
      "p90_ms": round(percentile(latencies_ms, 90), 1),
      "p99_ms": round(percentile(latencies_ms, 99), 1),
      "max_ms": round(max(latencies_ms, default=float("nan")), 1),
      "server_p50_ms": round(percentile(server_ms, 50), 1),
      "throughput_rps": round(len(latencies_ms) / wall_s, 1), "wall_s": round(wall_s, 2),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  target = parser.add_mutually_exclusive_group()
  target.add_argument("--workdir", help="Serve this trained model here and load it.")
  target.add_argument("--url", help="Load an already running server (loopback only).")
  parser.add_argument("--fake_ms", type=float, default=20.0,
                      help="Without --workdir/--url: a fake model taking this long per batch.")
  parser.add_argument("--decoder", default="beam", choices=("beam", "greedy"))
  parser.add_argument("--beam_width", type=int, default=10)
  parser.add_argument("--requests", type=int, default=200)
  parser.add_argument("--concurrency", type=int, default=8)
  parser.add_argument("--max_batch_size", type=int, default=8)
  parser.add_argument("--time_limit_s", type=float, default=600.0)
  args = parser.parse_args(argv)
  if args.requests < 1 or args.concurrency < 1:
    parser.error("--requests and --concurrency must be at least 1")

  if args.url:
    host = urllib.parse.urlsplit(args.url).hostname or ""
    if not serve.is_loopback(host):
      parser.error(f"--url {args.url}: only loopback servers are load-tested")
    result = run_load(args.url.rstrip("/"), args.requests, args.concurrency, args.time_limit_s)
  else:
    if args.workdir:
      from hme_jax.infer import predict  # pylint: disable=import-outside-toplevel
      recognizer = predict.Recognizer.from_workdir(args.workdir, decoder=args.decoder,
                                                   beam_width=args.beam_width)
      # Compile every (batch size, width bucket) the load can hit before timing it.
      images = [predict.load_image(stroke_png(i)) for i in range(NUM_IMAGES)]
      for batch_size in sorted({min(2 ** k, args.max_batch_size) for k in range(8)}):
        for image in images:
          recognizer.recognize([image] * batch_size)
      model = f"{args.workdir} ({args.decoder})"
    else:
      recognizer, model = FakeRecognizer(args.fake_ms / 1000.0), f"fake, {args.fake_ms:g} ms/batch"
    app = serve.create_app(recognizer, serve.ServeConfig(max_batch_size=args.max_batch_size))
    with serve.serve_in_thread(app) as url:
      result = run_load(url, args.requests, args.concurrency, args.time_limit_s)
    sizes = app.state.worker.batch_sizes
    result.update(model=model, batches=len(sizes),
                  mean_batch_size=round(float(np.mean(sizes)), 2) if sizes else 0.0)

  print(json.dumps(result, indent=1))
  print(f"{result['ok']}/{result['requests']} ok, {result['errors']} errors, "
        f"{result['answer_mismatches']} mismatched answers; latency p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms; {result['throughput_rps']} req/s")
  return 1 if result["errors"] or result["answer_mismatches"] else 0


if __name__ == "__main__":
  sys.exit(main())
