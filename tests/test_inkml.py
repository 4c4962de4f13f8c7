"""Tests of hme_jax.data.inkml: reading CROHME InkML and rendering the strokes."""

import pathlib

import numpy as np
import pytest

from hme_jax.data import inkml
from hme_jax.text import latex

INKML_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "crohme" / "inkml"

needs_inkml = pytest.mark.skipif(not INKML_DIR.is_dir(), reason=f"no InkML files at {INKML_DIR}")

# name -> (traces, first point, truth as written in the file, normalised by hand)
REAL_FILES = {
    "001-equation001GT.inkml": (
        22, (0.886745, 5.98486), "B_n(1-x)=(-1)^n B_n(x)",
        "B _ { n } ( 1 - x ) = ( - 1 ) ^ { n } B _ { n } ( x )"),
    "KME1G3_2_sub_10.inkml": (
        10, (8944, 1696), r"\int_a^b \frac {\sqrt x} 2 d x",
        r"\int _ { a } ^ { b } \frac { \sqrt { x } } { 2 } d x"),
    "MfrDB1843.inkml": (
        23, (137, 194), "2 l o g ( x - 3 ) = l o g ( 5 - x )",
        "2 l o g ( x - 3 ) = l o g ( 5 - x )"),
    "TrainData2_23_sub_9.inkml": (
        8, (6627, 4215), r"\sqrt{b^{2} - 4 a c}",
        r"\sqrt { b ^ { 2 } - 4 a c }"),
    "mroot.inkml": (
        4, (0.886745, 5.98486), r"\sqrt[3]x",
        r"\sqrt [ 3 ] { x }"),
}


@needs_inkml
@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_read_real_inkml(name):
  num_traces, first_point, truth, normalised = REAL_FILES[name]
  ink = inkml.read_inkml(INKML_DIR / name)
  assert len(ink.traces) == num_traces
  assert all(trace.ndim == 2 and trace.shape[1] == 2 and len(trace) for trace in ink.traces)
  np.testing.assert_allclose(ink.traces[0][0], first_point)
  assert ink.truth == truth  # surrounding "$" and spaces stripped
  assert latex.normalize(ink.truth) == normalised
  assert "UI" in ink.annotations


@needs_inkml
def test_spelled_log_matches_the_crohme_caption():
  ink = inkml.read_inkml(INKML_DIR / "MfrDB1843.inkml")
  # The CROHME caption of MfrDB1843 is "2 \log ( x - 3 ) = \log ( 5 - x )".
  assert (latex.normalize(ink.truth, join_spelled_functions=True)
          == r"2 \log ( x - 3 ) = \log ( 5 - x )")


@needs_inkml
@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_render_real_inkml(name):
  ink = inkml.read_inkml(INKML_DIR / name)
  image = inkml.render_ink(ink, height=100, stroke_width=3, padding=4)
  assert image.dtype == np.uint8 and image.shape[0] == 100
  assert set(np.unique(image)) == {0, 255}
  ink_fraction = (image > 0).mean()
  assert 0.005 < ink_fraction < 0.3
  # The padding stays black and the ink reaches the top and bottom of the inner box.
  rows = np.flatnonzero(image.max(axis=1))
  assert rows[0] >= 4 and rows[-1] <= 95
  assert rows[0] <= 6 and rows[-1] >= 93
  # Width follows the ink's aspect ratio.
  points = np.concatenate(ink.traces)
  extent_x, extent_y = points.max(axis=0) - points.min(axis=0)
  assert image.shape[1] == pytest.approx(extent_x / extent_y * (100 - 11) + 11, abs=2)


def write(tmp_path, body: str, namespace: bool = True) -> pathlib.Path:
  xmlns = ' xmlns="http://www.w3.org/2003/InkML"' if namespace else ""
  path = tmp_path / "sample.inkml"
  path.write_text(f"<ink{xmlns}>{body}</ink>")
  return path


MINUS_AND_DOT = """
<annotation type="truth"> $a-b$ </annotation>
<trace id="0">0 10 5, 100 10 6,
  200 10 7</trace>
<trace id="1">50 50</trace>
<trace id="2"> </trace>
<traceGroup><annotation type="truth">From ITF</annotation></traceGroup>
"""


@pytest.mark.parametrize("namespace", [True, False])
def test_read_synthetic_inkml(tmp_path, namespace):
  ink = inkml.read_inkml(write(tmp_path, MINUS_AND_DOT, namespace))
  assert ink.truth == "a-b"  # the per-symbol truth in the traceGroup is not it
  assert len(ink.traces) == 2  # the empty trace is dropped
  np.testing.assert_array_equal(ink.traces[0], [[0, 10], [100, 10], [200, 10]])
  np.testing.assert_array_equal(ink.traces[1], [[50, 50]])


def test_render_flat_ink_and_taps(tmp_path):
  ink = inkml.read_inkml(write(tmp_path, MINUS_AND_DOT))
  image = inkml.render_ink(ink, height=64, stroke_width=3, padding=4, max_aspect_ratio=8)
  # The ink is 200 wide, 40 tall: flatter than 8:1? No (5:1), so height rules.
  assert image.shape == (64, int(np.ceil(200 * (64 - 11) / 40)) + 11)
  # A lone horizontal stroke is scaled by its width instead of dividing by zero.
  minus = inkml.Ink(traces=[np.array([[0.0, 0.0], [10.0, 0.0]])], truth="-", annotations={})
  image = inkml.render_ink(minus, height=64, stroke_width=3, padding=4, max_aspect_ratio=8)
  assert image.shape == (64, 8 * (64 - 11) + 11)
  assert image[32].max() == 255 and image[:20].max() == 0  # centred vertically
  # A single-point trace (a tap) still draws a dot.
  tap = inkml.Ink(traces=[np.array([[3.0, 3.0]])], truth=".", annotations={})
  assert inkml.render_ink(tap, height=32).max() == 255


def test_bad_inkml_is_reported(tmp_path):
  with pytest.raises(ValueError, match="cannot read point 'x y'"):
    inkml.read_inkml(write(tmp_path, '<trace id="7">1 2, x y</trace>'))
  path = tmp_path / "broken.inkml"
  path.write_text("<ink><trace>")
  with pytest.raises(ValueError, match="not well-formed XML"):
    inkml.read_inkml(path)
  path.write_text("<math/>")
  with pytest.raises(ValueError, match="not <ink>"):
    inkml.read_inkml(path)
  empty = inkml.read_inkml(write(tmp_path, '<annotation type="truth">x</annotation>'))
  with pytest.raises(ValueError, match="no traces"):
    inkml.render_ink(empty)
