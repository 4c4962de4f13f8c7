"""Tests of hme_jax.text.latex: normalising, cleaning, well-formedness, mathtext."""

import io
import pathlib
import random
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from hme_jax.text import latex

ARCHIVE = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "crohme" / "data.zip"


def read_captions(split: str) -> list[str]:
  """Captions of one split of the shared archive (read in memory, never copied)."""
  with zipfile.ZipFile(ARCHIVE) as archive:
    text = archive.read(f"data/{split}/caption.txt").decode("utf-8")
  return [line.split("\t", 1)[1] for line in text.splitlines() if line.strip()]


needs_archive = pytest.mark.skipif(not ARCHIVE.exists(), reason=f"no CROHME archive at {ARCHIVE}")


@pytest.fixture(scope="module")
def train_captions():
  return read_captions("train")


@pytest.fixture(scope="module")
def test_captions():
  return read_captions("2014") + read_captions("2016")


# --- normalize ------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    (r"x^2+\frac12", r"x ^ { 2 } + \frac { 1 } { 2 }"),
    (r"\left( a \right)", "( a )"),
    (r"a_{i}^2", "a _ { i } ^ { 2 }"),
    (r"\sqrt[3]x", r"\sqrt [ 3 ] { x }"),
    (r"\sqrt{b^{2} - 4 a c}", r"\sqrt { b ^ { 2 } - 4 a c }"),
    (r"\int\limits_0^\infty e^{-x}\,dx", r"\int _ { 0 } ^ { \infty } e ^ { - x } d x"),
    (r"a\!b\;c\:d\quad e~f\ g\qquad h", "a b c d e f g h"),
    (r"a \lt b \gt c", "a < b > c"),
    (r"a \ge b \geq c \le d \leq e \ne f \neq g", r"a \geq b \geq c \leq d \leq e \neq f \neq g"),
    (r"\lim_{x\to0} f", r"\lim _ { x \rightarrow 0 } f"),
    (r"1,\dots,n", r"1 , \ldots , n"),
    (r"\mathrm{d}x", "d x"),
    (r"\operatorname{sin}x + \mbox{log}y", r"\sin x + \log y"),
    (r"\operatorname*{lim}_{n}", r"\lim _ { n }"),
    (r"\text{ if } x", "i f x"),
    (r"\ln(x) = \exp y", "l n ( x ) = e x p y"),
    (r"\sin2x", r"\sin 2 x"),
    ("123.45", "1 2 3 . 4 5"),
    ("f'(x)", r"f ^ { \prime } ( x )"),
    ("f''^2", r"f ^ { \prime \prime 2 }"),
    (r"f^{'}", "f ^ { ' }"),
    (r"{a \over b+c}", r"\frac { a } { b + c }"),
    (r"{x}^2", "x ^ { 2 }"),
    (r"\left\{ x \right.", r"\{ x"),
    (r"\left\lbrace x \middle| y \right\rbrace", r"\{ x | y \}"),
    (r"\Bigl[ x \Bigr]", "[ x ]"),
    (r"\frac123", r"\frac { 1 } { 2 } 3"),
    (r"\dfrac{a}{b}", r"\frac { a } { b }"),
    (r"x^\frac12", r"x ^ { \frac { 1 } { 2 } }"),
    (r"\sqrt\alpha", r"\sqrt { \alpha }"),
    (r"\frac'2", r"\frac { \prime } { 2 }"),
    (r"a\not=b", r"a \neq b"),
    (r"a\not{=}b", r"a \neq b"),
    (r"\displaystyle\sum_{i=1}^{n} i", r"\sum _ { i = 1 } ^ { n } i"),
    ("$$x$$", "x"),
    (r"\[ x \]", "x"),
    ("x % a comment\n+1", "x + 1"),
    ("a\u2212b \u2264 \u03c0", r"a - b \leq \pi"),
    (r"\varphi \vert x \vert", r"\phi | x |"),
    (r"\overline{AB}", r"\overline { A B }"),
    (r"\hspace{1em} x", "x"),
    (r"x^{}", "x ^ { }"),  # empty groups are kept (clean_tokens removes them)
    ("", ""),
])
def test_normalize(raw, expected):
  assert latex.normalize(raw) == expected
  assert latex.normalize(expected) == expected  # idempotent
  assert latex.tokenize(raw) == expected.split()


def test_normalize_joins_spelled_functions_on_request():
  raw = "2 l o g ( x - 3 ) = l o g ( 5 - x )"
  assert latex.normalize(raw) == raw
  assert latex.normalize(raw, join_spelled_functions=True) == r"2 \log ( x - 3 ) = \log ( 5 - x )"
  # Only whole runs of letters are functions.
  assert latex.normalize("x l o g y", join_spelled_functions=True) == "x l o g y"
  assert latex.normalize("a_{tan}", join_spelled_functions=True) == r"a _ { \tan }"


@pytest.mark.parametrize("raw, message", [
    ("x^", "'^' has no argument"),
    ("x_}", "'_' has no argument"),
    (r"\frac{1}", r"'\\frac' has no argument"),
    ("{a", "Unclosed '{'"),
    ("a}", "Unmatched '}'"),
    (r"\sqrt[3 x", "Unclosed '['"),
    ("x \\", "lone backslash"),
    (r"a \over b \over c", "second \\over"),
])
def test_normalize_rejects_broken_latex(raw, message):
  with pytest.raises(latex.LatexSyntaxError, match=re.escape(message)):
    latex.normalize(raw)


RAW_PIECES = ["x", "12", "^", "_", "{", "}", "[", "]", r"\frac", r"\sqrt", r"\sqrt[3]",
              r"\left(", r"\right)", r"\left.", "'", " ", r"\over", r"\mathrm{d}", r"\,",
              r"\ge", "$", r"\text{ab}", r"\lim", r"\limits", r"\not", "=", r"\ln",
              "%\n", r"\{", "("]


def test_normalize_is_idempotent_or_raises_on_random_latex():
  rng = random.Random(0)
  normalised = 0
  for _ in range(5000):
    raw = "".join(rng.choices(RAW_PIECES, k=rng.randint(0, 12)))
    try:
      output = latex.normalize(raw)
    except latex.LatexSyntaxError:
      continue  # any other exception fails the test
    normalised += 1
    assert latex.normalize(output) == output, raw
  assert normalised > 1000


@needs_archive
def test_crohme_tokens_are_the_training_vocabulary(train_captions):
  tokens = {token for caption in train_captions for token in caption.split()}
  assert tokens == latex.CROHME_TOKENS
  assert len(latex.CROHME_TOKENS) == 109


@needs_archive
def test_normalize_keeps_every_training_caption(train_captions):
  changed = [c for c in train_captions if latex.normalize(c) != c]
  assert changed == [], f"{len(changed)} of {len(train_captions)} captions change: {changed[:5]}"


@needs_archive
def test_normalize_is_idempotent_on_test_captions(test_captions):
  # Two 2016 captions write an unbraced \frac argument ("\frac { 1 } x"); the
  # normaliser braces it. Everything else must come back unchanged.
  changed = [c for c in test_captions if latex.normalize(c) != c]
  assert len(changed) <= 2, changed
  for caption in changed:
    normal = latex.normalize(caption)
    assert latex.normalize(normal) == normal
    assert latex.is_well_formed(normal.split())


# --- clean_tokens / is_well_formed ----------------------------------------------------

@pytest.mark.parametrize("tokens, expected", [
    ("x ^ { 2 }", "x ^ { 2 }"),
    ("x ^ { } + 1", "x + 1"),                         # empty script
    ("x _ { } ^ { 2 }", "x ^ { 2 }"),
    ("{ } x", "x"),                                   # empty bare group
    ("{ a + b }", "a + b"),                           # bare group
    ("x } + 1", "x + 1"),                             # unmatched }
    ("x ^ { 2 + 1", "x 2 + 1"),                       # unclosed { dropped, so ...
    ("x ^ 2", "x 2"),                                 # ... the script has no group
    ("x ^", "x"),
    ("x + 1 =", "x + 1"),                             # trailing operators
    ("x + - \\times", "x"),
    ("x ^ { - }", "x ^ { - }"),                       # operators inside groups stay
    ("\\frac { 1 } { 2 }", "\\frac { 1 } { 2 }"),
    ("\\frac { 1 } { } x", "1 x"),                    # \frac needs both groups
    ("\\frac { 1 } x", "1 x"),
    ("\\frac x", "x"),
    ("\\sqrt { x }", "\\sqrt { x }"),
    ("\\sqrt [ 3 ] { x }", "\\sqrt [ 3 ] { x }"),
    ("\\sqrt [ ] { x }", "\\sqrt { x }"),             # empty index
    ("\\sqrt [ 3 ] { }", "3"),                        # empty radicand
    ("\\sqrt { }", ""),
    ("\\sqrt x", "x"),                                # no radicand group
    ("\\sqrt [ 3 ] x", "[ 3 ] x"),
    ("[ 0 , 1 ]", "[ 0 , 1 ]"),                       # brackets are tokens too
    ("\\sqrt [ 3 { x } ]", "[ 3 x ]"),
    ("\\sqrt [ \\sqrt [ 2 ] { 3 } ] { x }", "\\sqrt [ \\sqrt [ 2 ] { 3 } ] { x }"),
    ("\\sqrt [ \\sqrt [ 2 ] { 3 } ] x", "[ \\sqrt [ 2 ] { 3 } ] x"),
    ("\\sqrt [ \\sqrt [ 2 ] { } ] { x }", "\\sqrt [ 2 ] { x }"),
    ("\\sqrt [ \\sqrt [ 2 ] 3 ] { x }", "\\sqrt [ [ 2 3 ] { x }"),  # inner ] would end the index
    ("} } { {", ""),
    ("", ""),
])
def test_clean_tokens(tokens, expected):
  cleaned = latex.clean_tokens(tokens.split())
  assert cleaned == expected.split()
  assert latex.is_well_formed(cleaned)
  assert latex.clean_tokens(cleaned) == cleaned


@pytest.mark.parametrize("tokens, well_formed", [
    ("x ^ { 2 } _ { i }", True),
    ("\\frac { a } { b }", True),
    ("\\sqrt [ 3 ] { x }", True),
    ("[ a ] \\sqrt { x }", True),
    ("", True),
    ("x ^ 2", False),
    ("x ^ { }", False),
    ("{ a }", False),
    ("\\frac { a }", False),
    ("\\frac { a } b", False),
    ("\\sqrt x", False),
    ("\\sqrt [ ] { x }", False),
    ("\\sqrt [ 3 ]", False),
    ("x ^ { 2", False),
    ("x }", False),
])
def test_is_well_formed(tokens, well_formed):
  assert latex.is_well_formed(tokens.split()) is well_formed


# Structural tokens, weighted so that nested groups and radical indices are common.
STRUCTURE = {"{": 3, "}": 3, "^": 1, "_": 1, "\\frac": 1, "\\sqrt": 2, "[": 2, "]": 2,
             "x": 2, "2": 1, "+": 1, "=": 1}


def random_token_lists(count: int, seed: int = 0) -> list[list[str]]:
  rng = random.Random(seed)
  tokens, weights = list(STRUCTURE), list(STRUCTURE.values())
  return [rng.choices(tokens, weights, k=rng.randint(0, 20)) for _ in range(count)]


def test_clean_tokens_always_gives_well_formed_output():
  for tokens in random_token_lists(6000):
    cleaned = latex.clean_tokens(tokens)
    assert latex.is_well_formed(cleaned), (tokens, cleaned)
    assert latex.clean_tokens(cleaned) == cleaned, tokens
    assert not cleaned or cleaned[-1] not in latex.TRAILING_OPERATORS
    # Cleaning only deletes tokens; it never invents or reorders them.
    remaining = iter(tokens)
    assert all(token in remaining for token in cleaned), (tokens, cleaned)


@needs_archive
def test_training_captions_are_well_formed_and_clean(train_captions):
  assert all(latex.is_well_formed(c.split()) for c in train_captions)
  changed = [c for c in train_captions if latex.clean_tokens(c.split()) != c.split()]
  assert changed == []


# --- to_mathtext --------------------------------------------------------------------

def render(text: str, dpi: int = 40) -> np.ndarray:
  """mathtext's picture of ``text`` (black on white): ``bool [H, W]``, True on ink."""
  from matplotlib import mathtext
  buffer = io.BytesIO()
  mathtext.math_to_image(text, buffer, format="png", dpi=dpi)
  return np.asarray(Image.open(buffer).convert("L")) < 128


def glyph_rows(ink: np.ndarray) -> list[tuple[int, int]]:
  """``(top, bottom)`` ink rows of each run of inked columns, left to right."""
  columns = np.flatnonzero(ink.any(axis=0))
  runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
  return [(int(rows[0]), int(rows[-1])) for run in runs
          for rows in [np.flatnonzero(ink[:, run].any(axis=1))]]


@pytest.mark.parametrize("tokens, expected", [
    ("x ^ { 2 }", "$x ^{ 2 }$"),
    ("x ^ { 2 } ^ { 3 }", "$x ^{ 2 } {} ^{ 3 }$"),        # double superscript
    ("x _ { i } ^ { 2 } _ { j }", "$x _{ i } ^{ 2 } {} _{ j }$"),
    ("\\frac { a } { b } ^ { 2 }", "$\\frac { a } { b } ^{ 2 }$"),
    ("x ^ { 2", "$x 2$"),                                     # cleaned first
    ("\\omega + \\ln", "$\\omega + \\mathrm{ln}$"),           # unknown command as text
    ("#", "$\\#$"),
    ("", "$\\varnothing$"),
])
def test_to_mathtext(tokens, expected):
  text = latex.to_mathtext(tokens.split())
  assert text == expected
  ink = render(text)
  assert 0.02 < ink.mean() < 0.6  # something drawn, on a background


def test_to_mathtext_draws_scripts_raised_and_lowered():
  (x, inline), = [glyph_rows(render(latex.to_mathtext("x 2"), dpi=200))]
  (x_raised, raised), = [glyph_rows(render(latex.to_mathtext("x ^ { 2 }"), dpi=200))]
  (x_lowered, lowered), = [glyph_rows(render(latex.to_mathtext("x _ { 2 }"), dpi=200))]
  height = lambda rows: rows[1] - rows[0]  # noqa: E731
  assert abs(inline[1] - x[1]) <= 1                        # on the baseline
  assert raised[1] < x_raised[1] - height(x_raised) / 3    # a superscript ends above it
  assert lowered[1] > x_lowered[1]                         # a subscript ends below it
  assert height(raised) < height(inline) and height(lowered) < height(inline)


def test_to_mathtext_stacks_a_fraction_over_its_bar():
  ink = render(latex.to_mathtext("\\frac { a } { b }"), dpi=200)
  bar = np.flatnonzero(ink.mean(axis=1) > 0.6)             # rows of the fraction bar
  assert bar.size and ink[:bar[0]].any() and ink[bar[-1] + 1:].any()
  assert ink.shape[0] > ink.shape[1]


def test_to_mathtext_renders_garbage_predictions():
  for tokens in random_token_lists(60, seed=1):
    assert render(latex.to_mathtext(tokens + ["a"])).any()


@needs_archive
def test_to_mathtext_renders_real_captions(train_captions, test_captions):
  captions = train_captions + test_captions
  # Every 100th caption plus the longest ones (deepest nesting): ~120 renders.
  sample = captions[::100] + sorted(captions, key=len)[-10:]
  for caption in sample:
    text = latex.to_mathtext(caption)
    try:
      assert render(text).any()
    except Exception as error:  # noqa: BLE001 - report which caption failed
      pytest.fail(f"mathtext cannot render {caption!r} as {text!r}: {error}")
