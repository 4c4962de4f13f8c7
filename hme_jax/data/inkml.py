"""CROHME InkML files: online pen traces and their LaTeX, and rendering them.

An InkML file holds the pen strokes of one expression (``<trace>`` elements,
points ``"x y[ t], x y[ t], ..."``) and annotations, among them the ground truth
``<annotation type="truth">$...$</annotation>``. ``render_ink`` draws the
strokes the way the CROHME offline images are drawn: white lines on black.
"""

from __future__ import annotations

import dataclasses
import os
import xml.etree.ElementTree as ElementTree

import numpy as np
from PIL import Image, ImageDraw


@dataclasses.dataclass(frozen=True)
class Ink:
  """One handwritten expression.

  Attributes:
    traces: the strokes in pen order, each ``[N, 2]`` float64 (x, y), y down.
    truth: the LaTeX ground truth without surrounding ``$`` (None if absent).
    annotations: every top-level ``<annotation type=...>`` text, by type.
  """
  traces: list[np.ndarray]
  truth: str | None
  annotations: dict[str, str]


def _local_name(tag: str) -> str:
  return tag.rsplit("}", 1)[-1]  # drops an XML namespace ("{uri}trace")


def _parse_points(text: str, where: str) -> np.ndarray:
  """``"x y [more channels], ..."`` -> ``[N, 2]`` (extra channels such as time dropped)."""
  points = []
  for point in text.replace("\n", " ").split(","):
    values = point.split()
    if not values:
      continue
    try:
      points.append((float(values[0]), float(values[1])))
    except (ValueError, IndexError):
      raise ValueError(
          f"{where}: cannot read point {point.strip()!r}; expected plain numbers "
          "'x y' (InkML difference encodings with ' or \" are not supported).") from None
  return np.asarray(points, np.float64).reshape(-1, 2)


def _strip_math_delimiters(text: str) -> str:
  text = text.strip()
  while text.startswith("$") and text.endswith("$") and len(text) >= 2:
    text = text[1:-1].strip()
  return text


def read_inkml(path: str | os.PathLike) -> Ink:
  """Reads one InkML file (CROHME 2011-2019 style, with or without namespace)."""
  path = os.fspath(path)
  try:
    root = ElementTree.parse(path).getroot()
  except ElementTree.ParseError as error:
    raise ValueError(f"{path} is not well-formed XML: {error}") from None
  if _local_name(root.tag) != "ink":
    raise ValueError(f"{path}: root element is <{_local_name(root.tag)}>, not <ink>.")
  annotations = {}
  for child in root:  # only the expression's own annotations, not per-symbol ones
    if _local_name(child.tag) == "annotation" and "type" in child.attrib:
      annotations[child.attrib["type"]] = (child.text or "").strip()
  traces = [
      _parse_points(element.text or "", f"{path} trace {element.attrib.get('id', '?')}")
      for element in root.iter() if _local_name(element.tag) == "trace"
  ]
  traces = [trace for trace in traces if len(trace)]
  truth = annotations.get("truth")
  return Ink(traces=traces,
             truth=None if truth is None else _strip_math_delimiters(truth),
             annotations=annotations)


def render_ink(ink: Ink, height: int = 128, stroke_width: int = 3, padding: int = 4,
               max_aspect_ratio: float = 32.0) -> np.ndarray:
  """Draws the traces as white (255) lines on black (0).

  The ink's height fills ``height - 2 * padding`` pixels and the width follows
  the ink's aspect ratio. Ink flatter than ``max_aspect_ratio`` (a lone minus
  sign) is scaled by its width instead, so it neither divides by zero nor
  becomes an endless image.

  Returns:
    ``[height, W]`` uint8 image.
  """
  if not ink.traces:
    raise ValueError("The ink has no traces to render.")
  if height <= 2 * padding + stroke_width:
    raise ValueError(f"height={height} leaves no room for padding={padding} "
                     f"and stroke_width={stroke_width}.")
  points = np.concatenate(ink.traces)
  low, high = points.min(axis=0), points.max(axis=0)
  extent_x, extent_y = high - low
  inner = height - 2 * padding - stroke_width  # half a stroke spills each side
  reference = max(extent_y, extent_x / max_aspect_ratio)
  scale = inner / reference if reference > 0 else 1.0
  width = int(np.ceil(extent_x * scale)) + 2 * padding + stroke_width
  offset = padding + stroke_width / 2
  image = Image.new("L", (width, height), 0)
  draw = ImageDraw.Draw(image)
  radius = stroke_width / 2
  for trace in ink.traces:
    xy = (trace - low) * scale + offset
    # Centre tall-but-narrow ink vertically too (reference may exceed extent_y).
    xy[:, 1] += (inner - extent_y * scale) / 2
    coordinates = [tuple(p) for p in xy]
    if len(coordinates) > 1:
      draw.line(coordinates, fill=255, width=stroke_width, joint="curve")
    for x, y in (coordinates[0], coordinates[-1]):  # round caps; dots for taps
      draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
  return np.asarray(image, np.uint8)
