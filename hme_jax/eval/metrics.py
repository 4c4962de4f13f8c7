"""Recognition metrics on token sequences: ExpRate, token and character error rates.

All numbers follow the usual HMER definitions:

* ``exprate``: fraction of expressions predicted exactly (token for token).
* ``le1`` / ``le2``: fraction with at most 1 / 2 token edits.
* ``token_error_rate``: sum of token edit distances / sum of reference lengths
  (the "WER" of the seed project, with tokens as words).
* ``cer``: the same on characters of the LaTeX string written without spaces.

Plain Python and numpy; edit distances come from rapidfuzz.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from hme_jax.text import latex

Tokens = Sequence[str] | str


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
  """Levenshtein distance (unit-cost insert, delete, substitute) of two sequences.

  Elements may be any hashable (tokens, characters, ids). rapidfuzz's C++ code:
  the same distances as the bit-parallel Python it replaced, and faster (results/README.md).
  """
  return Levenshtein.distance(reference, hypothesis)


def _as_tokens(tokens: Tokens) -> list[str]:
  return tokens.split() if isinstance(tokens, str) else list(tokens)


@dataclasses.dataclass(frozen=True)
class SampleStats:
  """Counts for one (reference, prediction) pair; metrics are sums of these."""
  reference_tokens: int
  token_edits: int
  reference_chars: int
  char_edits: int

  @classmethod
  def of(cls, reference: Tokens, prediction: Tokens) -> "SampleStats":
    reference, prediction = _as_tokens(reference), _as_tokens(prediction)
    reference_text, prediction_text = "".join(reference), "".join(prediction)
    return cls(len(reference), edit_distance(reference, prediction),
               len(reference_text), edit_distance(reference_text, prediction_text))


def summarize(stats: Sequence[SampleStats]) -> dict:
  """Metrics of a set of samples (see the module docstring).

  With no samples the rates are NaN. With references that are all empty the
  error rates divide by 1 (so they count the inserted tokens / characters).
  """
  count = len(stats)
  if count == 0:
    nan = float("nan")
    return dict(num_samples=0, exprate=nan, le1=nan, le2=nan,
                token_error_rate=nan, cer=nan)
  table = np.array([(s.reference_tokens, s.token_edits, s.reference_chars, s.char_edits)
                    for s in stats], np.int64)
  reference_tokens, token_edits, reference_chars, char_edits = table.T
  return dict(
      num_samples=count,
      exprate=float(np.mean(token_edits == 0)),
      le1=float(np.mean(token_edits <= 1)),
      le2=float(np.mean(token_edits <= 2)),
      token_error_rate=float(token_edits.sum() / max(int(reference_tokens.sum()), 1)),
      cer=float(char_edits.sum() / max(int(reference_chars.sum()), 1)),
  )


def _check_pairs(references: Sequence, predictions: Sequence) -> None:
  if len(references) != len(predictions):
    raise ValueError(
        f"Got {len(references)} references but {len(predictions)} predictions; "
        "pass one prediction per reference, in the same order.")


def score(references: Sequence[Tokens], predictions: Sequence[Tokens]) -> dict:
  """ExpRate, <=1, <=2, token error rate and CER of token sequences.

  Args:
    references: ``[N]`` token lists (or space-separated token strings).
    predictions: ``[N]`` token lists (or strings), in the same order.

  Returns:
    ``{"num_samples", "exprate", "le1", "le2", "token_error_rate", "cer"}``.
  """
  _check_pairs(references, predictions)
  return summarize([SampleStats.of(r, p) for r, p in zip(references, predictions)])


CleanFn = Callable[[Sequence[str]], list[str]]


class MetricsAccumulator:
  """Streaming evaluation: ``add`` batches, then ``result`` / ``table``.

  Keeps only per-sample counts, so it is cheap to hold for a whole test set.
  """

  def __init__(self, split_at: int = 14, clean: CleanFn | None = latex.clean_tokens):
    self.split_at = split_at
    self.clean = clean
    self.references: list[list[str]] = []
    self.raw: list[SampleStats] = []
    self.cleaned: list[SampleStats] = []

  def add(self, references: Sequence[Tokens], predictions: Sequence[Tokens]) -> None:
    _check_pairs(references, predictions)
    for reference, prediction in zip(references, predictions):
      reference, prediction = _as_tokens(reference), _as_tokens(prediction)
      self.references.append(reference)
      self.raw.append(SampleStats.of(reference, prediction))
      if self.clean is not None:
        self.cleaned.append(SampleStats.of(reference, self.clean(prediction)))

  def __len__(self) -> int:
    return len(self.raw)

  def result(self) -> dict:
    """``score`` of everything added so far (raw predictions)."""
    return summarize(self.raw)

  def table(self, groups: dict[str, Callable[[list[str]], bool]] | None = None) -> dict:
    """Scores per group of references: ``{name: {"raw": score, "clean": score}}``.

    ``groups`` maps a name to a predicate on the reference tokens; the default
    is the seed's length split (``length_split_table``).
    """
    if groups is None:
      groups = {"short": lambda tokens: len(tokens) <= self.split_at,
                "long": lambda tokens: len(tokens) > self.split_at,
                "all": lambda tokens: True}
    table = {}
    for name, member in groups.items():
      chosen = [i for i, reference in enumerate(self.references) if member(reference)]
      row = {"raw": summarize([self.raw[i] for i in chosen])}
      if self.clean is not None:
        row["clean"] = summarize([self.cleaned[i] for i in chosen])
      table[name] = row
    return table


# Layout structures of CROHME expressions, by the tokens that make them (the
# CROHME 2014 vocabulary has no matrices). An expression may be in several.
STRUCTURE_TOKENS = {
    "fraction": ("\\frac",),
    "script": ("^", "_"),
    "root": ("\\sqrt",),
    "big operator": ("\\sum", "\\int", "\\lim"),
}


def structure_groups() -> dict[str, Callable[[list[str]], bool]]:
  """``MetricsAccumulator.table`` groups: each structure, "flat" (none of them), "all"."""
  def has(structure_tokens):
    return lambda tokens: any(token in structure_tokens for token in tokens)
  groups = {name: has(tokens) for name, tokens in STRUCTURE_TOKENS.items()}
  every = tuple(token for tokens in STRUCTURE_TOKENS.values() for token in tokens)
  groups["flat"] = lambda tokens: not has(every)(tokens)
  groups["all"] = lambda tokens: True
  return groups


def length_groups(edges: Sequence[int] = (5, 10, 15, 25)) -> dict[str, Callable[[list[str]], bool]]:
  """``MetricsAccumulator.table`` groups of reference lengths: "1-5", "6-10", ..., ">25"."""
  groups, low = {}, 1
  for high in edges:
    groups[f"{low}-{high}"] = lambda tokens, low=low, high=high: low <= len(tokens) <= high
    low = high + 1
  groups[f">{edges[-1]}"] = lambda tokens: len(tokens) > edges[-1]
  return groups


def length_split_table(references: Sequence[Tokens], predictions: Sequence[Tokens],
                       split_at: int = 14,
                       clean: CleanFn | None = latex.clean_tokens) -> dict:
  """Metrics for short (<= ``split_at`` reference tokens) and long expressions.

  Returns:
    ``{"short" | "long" | "all": {"raw": score, "clean": score}}`` where
    ``score`` is the dict of ``score`` and "clean" scores the predictions after
    ``clean`` (left out when ``clean`` is None).
  """
  accumulator = MetricsAccumulator(split_at, clean)
  accumulator.add(references, predictions)
  return accumulator.table()


def format_table(table: dict, split_at: int | None = None) -> str:
  """A compact text table of ``length_split_table`` output (rates in percent)."""
  has_clean = all("clean" in row for row in table.values())
  labels = {"short": f"short (<={split_at})" if split_at is not None else "short",
            "long": f"long (>{split_at})" if split_at is not None else "long",
            "all": "all"}
  header = ["group", "n", "TER", "ExpRate", "<=1", "<=2", "CER"]
  if has_clean:
    header += ["TER clean", "ExpRate clean"]
  rows = [header]
  for name, row in table.items():
    raw = row["raw"]
    cells = [labels.get(name, name), str(raw["num_samples"])]
    cells += [f"{100 * raw[key]:.2f}"
              for key in ("token_error_rate", "exprate", "le1", "le2", "cer")]
    if has_clean:
      cells += [f"{100 * row['clean'][key]:.2f}" for key in ("token_error_rate", "exprate")]
    rows.append(cells)
  widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
  lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w)
                     for c, (cell, w) in enumerate(zip(r, widths))) for r in rows]
  lines.insert(1, "-" * len(lines[0]))
  return "\n".join(lines)
