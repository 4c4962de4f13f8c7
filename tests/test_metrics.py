"""Tests of hme_jax.eval.metrics on hand-made cases with hand-computed answers."""

import math
import random

import pytest

from hme_jax.eval import metrics


def plain_edit_distance(a, b) -> int:
  """Textbook O(len(a) * len(b)) dynamic programme, as an independent reference."""
  row = list(range(len(b) + 1))
  for i in range(1, len(a) + 1):
    diagonal, row[0] = row[0], i
    for j in range(1, len(b) + 1):
      diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1,
                                     diagonal + (a[i - 1] != b[j - 1]))
  return row[-1]


@pytest.mark.parametrize("a, b, distance", [
    ("kitten", "sitting", 3),
    (["a", "b", "c"], ["a", "x", "c"], 1),            # substitution
    (["a", "b", "c"], ["a", "b", "x", "c"], 1),       # insertion
    (["a", "b", "c"], ["a", "c"], 1),                 # deletion
    (["a", "b", "c"], ["c", "b", "a"], 2),
    ([], [], 0),
    ([], ["a", "b"], 2),
    (["a"], [], 1),
    ([r"\frac", "{", "1", "}"], [r"\sqrt", "{", "1", "}"], 1),
    ("a" * 100, "a" * 99 + "b", 1),                   # longer than a machine word
    ("ab" * 100, "ba" * 100, 2),
    ("a" * 70, "b" * 70, 70),
])
def test_edit_distance(a, b, distance):
  assert metrics.edit_distance(a, b) == distance
  assert metrics.edit_distance(b, a) == distance


def test_edit_distance_matches_dynamic_programme():
  rng = random.Random(0)
  for _ in range(500):
    a = [rng.choice("abc{}") for _ in range(rng.randint(0, 80))]
    b = [rng.choice("abc{}") for _ in range(rng.randint(0, 80))]
    assert metrics.edit_distance(a, b) == plain_edit_distance(a, b), (a, b)


REFERENCES = ["x ^ { 2 }", "a + b", r"\frac { 1 } { 2 }"]
PREDICTIONS = ["x ^ { 2 }", "a - b", r"\frac { 1 } { 3 } +"]


def test_score_by_hand():
  result = metrics.score([r.split() for r in REFERENCES], [p.split() for p in PREDICTIONS])
  # Token edits 0, 1 (substitution), 2 (substitution + insertion) over 5 + 3 + 7
  # reference tokens; characters: "x^{2}" 5, "a+b" 3, "\frac{1}{2}" 11.
  assert result["num_samples"] == 3
  assert result["exprate"] == pytest.approx(1 / 3)
  assert result["le1"] == pytest.approx(2 / 3)
  assert result["le2"] == pytest.approx(1.0)
  assert result["token_error_rate"] == pytest.approx(3 / 15)
  assert result["cer"] == pytest.approx(3 / 19)
  # Strings are split on spaces.
  assert metrics.score(REFERENCES, PREDICTIONS) == result


def test_score_with_empty_sequences():
  empty_prediction = metrics.score(["a b"], [""])
  assert empty_prediction["exprate"] == 0.0
  assert empty_prediction["token_error_rate"] == pytest.approx(1.0)
  assert empty_prediction["cer"] == pytest.approx(1.0)
  assert empty_prediction["le2"] == 1.0 and empty_prediction["le1"] == 0.0
  # Empty reference: nothing to divide by, so the rate counts insertions.
  empty_reference = metrics.score([[]], [["a", "b"]])
  assert empty_reference["token_error_rate"] == pytest.approx(2.0)
  assert empty_reference["exprate"] == 0.0
  both_empty = metrics.score([[]], [[]])
  assert both_empty["exprate"] == 1.0 and both_empty["token_error_rate"] == 0.0


def test_score_of_nothing_is_nan():
  result = metrics.score([], [])
  assert result["num_samples"] == 0
  assert math.isnan(result["exprate"]) and math.isnan(result["token_error_rate"])


def test_score_rejects_unpaired_inputs():
  with pytest.raises(ValueError, match="2 references but 1 predictions"):
    metrics.score(["a", "b"], ["a"])


LONG = "a + b + c + d + e + f + g + h"  # 15 tokens


def test_length_split_table_by_hand():
  references = ["x ^ { 2 }", LONG]
  predictions = ["x ^ { }", LONG + " +"]
  table = metrics.length_split_table(references, predictions, split_at=14)
  assert set(table) == {"short", "long", "all"}
  short, long, everything = table["short"], table["long"], table["all"]
  assert short["raw"]["num_samples"] == 1 and long["raw"]["num_samples"] == 1
  # Short: one deletion; cleaning "x ^ { }" leaves "x": four deletions.
  assert short["raw"]["token_error_rate"] == pytest.approx(1 / 5)
  assert short["clean"]["token_error_rate"] == pytest.approx(4 / 5)
  assert short["raw"]["exprate"] == 0.0 and short["clean"]["exprate"] == 0.0
  # Long: a trailing "+", which cleaning removes.
  assert long["raw"]["token_error_rate"] == pytest.approx(1 / 15)
  assert long["clean"]["token_error_rate"] == 0.0
  assert long["raw"]["exprate"] == 0.0 and long["clean"]["exprate"] == 1.0
  assert everything["raw"]["num_samples"] == 2
  assert everything["raw"]["token_error_rate"] == pytest.approx(2 / 20)
  assert everything["clean"]["token_error_rate"] == pytest.approx(4 / 20)
  assert everything["clean"]["exprate"] == pytest.approx(0.5)


def test_length_split_boundary_and_no_cleaning():
  fourteen = " ".join(["x"] * 14)
  table = metrics.length_split_table([fourteen, fourteen + " x"], [fourteen, fourteen],
                                     split_at=14, clean=None)
  assert table["short"]["raw"]["num_samples"] == 1  # 14 tokens is short
  assert table["long"]["raw"]["num_samples"] == 1
  assert table["long"]["raw"]["token_error_rate"] == pytest.approx(1 / 15)
  assert "clean" not in table["all"]


def test_accumulator_equals_score_on_all_at_once():
  rng = random.Random(1)
  tokens = ["x", "2", "+", "{", "}", "^"]
  references = [[rng.choice(tokens) for _ in range(rng.randint(0, 30))] for _ in range(50)]
  predictions = [[rng.choice(tokens) for _ in range(rng.randint(0, 30))] for _ in range(50)]
  accumulator = metrics.MetricsAccumulator()
  for start in range(0, 50, 16):
    accumulator.add(references[start:start + 16], predictions[start:start + 16])
  assert len(accumulator) == 50
  assert accumulator.result() == metrics.score(references, predictions)
  assert accumulator.table() == metrics.length_split_table(references, predictions)


def test_format_table():
  table = metrics.length_split_table(["x ^ { 2 }", LONG], ["x ^ { }", LONG + " +"])
  text = metrics.format_table(table, split_at=14)
  lines = text.splitlines()
  assert lines[0].split()[:3] == ["group", "n", "TER"]
  assert "TER clean" in lines[0]
  short_row = next(line for line in lines if line.startswith("short (<=14)"))
  assert short_row.split()[2:5] == ["1", "20.00", "0.00"]      # n, TER %, ExpRate %
  all_row = next(line for line in lines if line.startswith("all"))
  assert all_row.split()[-2:] == ["20.00", "50.00"]            # TER clean, ExpRate clean


def test_structure_table_groups_by_layout():
  references = ["\\frac { 1 } { 2 }", "x ^ { 2 }", "\\sqrt { x } + y _ { 1 }", "a + b",
                "\\sum _ { i } i"]
  predictions = ["\\frac { 1 } { 2 }", "x ^ { 3 }", "\\sqrt { x } + y _ { 1 }", "a - b",
                 "\\sum _ { i } i"]
  accumulator = metrics.MetricsAccumulator()
  accumulator.add(references, predictions)
  table = accumulator.table(metrics.structure_groups())
  counts = {name: row["raw"]["num_samples"] for name, row in table.items()}
  # The root expression has a subscript too; the sum has a subscript.
  assert counts == {"fraction": 1, "script": 3, "root": 1, "big operator": 1, "flat": 1, "all": 5}
  assert table["fraction"]["raw"]["exprate"] == 1.0
  assert table["script"]["raw"]["exprate"] == pytest.approx(2 / 3)
  assert table["flat"]["raw"]["exprate"] == 0.0
  assert table["all"]["raw"] == metrics.score(references, predictions)


def test_length_groups_cover_every_length_once():
  groups = metrics.length_groups((5, 10))
  assert list(groups) == ["1-5", "6-10", ">10"]
  for length in range(1, 30):
    assert sum(member(["x"] * length) for member in groups.values()) == 1
  assert groups["6-10"](["x"] * 10) and groups[">10"](["x"] * 11)
