r"""A small random grammar of math expressions, in CROHME tokens.

`sample_expression(rng)` returns a space-separated token string in the CROHME
convention (``\frac { 1 } { x ^ { 2 } }``, ``\lim _ { x \rightarrow 0 }``,
``\sqrt [ 3 ] { y }``, numbers digit by digit: ``1 5``). Every token comes from
the tables below, so `TOKENS` (their union) is exactly what can be emitted; each
is a token of the CROHME training captions.

Lengths stay mostly short or moderate (median about 8 tokens, rarely above 25)
so that a small model can learn them on a CPU.
"""

from __future__ import annotations

import numpy as np

DIGITS = tuple("0123456789")
LOWERCASE = tuple("abcdefghijklmnopqrstuvwxyz")
# Only the capitals that CROHME training captions use.
UPPERCASE = tuple("ABCEFGHILMNPRSTVXY")
GREEK = (r"\alpha", r"\beta", r"\gamma", r"\theta", r"\pi", r"\phi", r"\sigma",
         r"\mu", r"\lambda", r"\Delta")
FUNCTIONS = (r"\sin", r"\cos", r"\tan", r"\log")
BINARY_OPERATORS = ("+", "-", r"\times", r"\div", r"\pm", r"\cdot", "/")
RELATIONS = ("=", r"\neq", "<", ">", r"\leq", r"\geq", r"\rightarrow")
PUNCTUATION = (",", ".", "!", "'", r"\prime", r"\ldots", r"\cdots")
QUANTIFIERS = (r"\forall", r"\exists", r"\in")
BIG_OPERATORS = (r"\sum", r"\int", r"\lim")
STRUCTURE = ("{", "}", "^", "_", r"\frac", r"\sqrt", "[", "]", "(", ")", "|",
             r"\{", r"\}", r"\infty")

# Everything the grammar can emit.
TOKENS = frozenset(DIGITS + LOWERCASE + UPPERCASE + GREEK + FUNCTIONS
                   + BINARY_OPERATORS + RELATIONS + PUNCTUATION + QUANTIFIERS
                   + BIG_OPERATORS + STRUCTURE)

# Common operators first: + - = dominate handwritten math.
_OPERATOR_WEIGHTS = (6, 4, 1.5, 0.7, 0.7, 0.7, 0.7)
_RELATION_WEIGHTS = (8, 1, 1, 1, 1, 1, 0.5)
_MAX_DEPTH = 2  # nesting of fractions, roots, scripts


def sample_expression(rng: np.random.Generator, max_tokens: int = 25) -> str:
  """A random expression of 1..max_tokens tokens (space-separated)."""
  if max_tokens < 1:
    raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
  while True:  # rejection keeps the distribution simple; most draws fit
    tokens = _top_level(rng)
    if len(tokens) <= max_tokens:
      return " ".join(tokens)


# --- the grammar (each function returns a list of tokens) --------------------

def _pick(rng: np.random.Generator, options, weights=None):
  if weights is None:
    return options[int(rng.integers(len(options)))]
  p = np.asarray(weights, dtype=np.float64)
  return options[int(rng.choice(len(options), p=p / p.sum()))]


def _top_level(rng) -> list[str]:
  kind = _pick(rng, ("term", "sum", "relation", "quantified", "sequence"),
               (2, 5, 4, 0.3, 0.4))
  if kind == "term":
    return _term(rng, depth=0)
  if kind == "sum":
    return _sum(rng, depth=0)
  if kind == "relation":
    return _sum(rng, depth=0) + [_pick(rng, RELATIONS, _RELATION_WEIGHTS)] + _sum(rng, depth=0)
  if kind == "quantified":
    variable = _pick(rng, LOWERCASE)
    quantifier = _pick(rng, QUANTIFIERS[:2])
    return [quantifier, variable, r"\in", _pick(rng, UPPERCASE)]
  return _sequence(rng)


def _sum(rng, depth: int) -> list[str]:
  """term (op term)*, with fewer terms deeper down."""
  mean_extra = 1.2 if depth == 0 else 0.4
  tokens = _term(rng, depth)
  for _ in range(min(int(rng.poisson(mean_extra)), 3)):
    tokens += [_pick(rng, BINARY_OPERATORS, _OPERATOR_WEIGHTS)] + _term(rng, depth)
  return tokens


def _term(rng, depth: int) -> list[str]:
  if depth >= _MAX_DEPTH:
    return _atom(rng) if rng.random() < 0.7 else _number(rng)
  kind = _pick(
      rng,
      ("atom", "number", "product", "script", "frac", "sqrt", "function",
       "group", "big", "factorial", "prime", "decimal"),
      (6, 3, 2, 4, 2, 1.5, 1.5, 1.5, 1.2 if depth == 0 else 0, 0.3, 0.4, 0.4))
  if kind == "atom":
    return _atom(rng)
  if kind == "number":
    return _number(rng)
  if kind == "product":  # implicit multiplication: 2 x, a b
    return _pick(rng, (_number, _atom))(rng) + _atom(rng)
  if kind == "script":
    return _scripted(rng, depth)
  if kind == "frac":
    return [r"\frac", "{", *_sum(rng, depth + 1), "}", "{", *_sum(rng, depth + 1), "}"]
  if kind == "sqrt":
    index = ["[", _pick(rng, DIGITS[2:] + ("n",)), "]"] if rng.random() < 0.25 else []
    return [r"\sqrt", *index, "{", *_sum(rng, depth + 1), "}"]
  if kind == "function":
    return _function(rng, depth)
  if kind == "group":
    left, right = _pick(rng, (("(", ")"), ("[", "]"), ("|", "|"), (r"\{", r"\}")),
                        (6, 1, 1, 0.5))
    return [left, *_sum(rng, depth + 1), right]
  if kind == "big":
    return _big_operator(rng)
  if kind == "factorial":
    return _atom(rng) + ["!"]
  if kind == "prime":
    return [_pick(rng, ("f", "g", "y")), "^", "{", _pick(rng, (r"\prime", "'")), "}"]
  return [_pick(rng, DIGITS), ".", _pick(rng, DIGITS)]


def _letter(rng) -> list[str]:
  table = _pick(rng, (LOWERCASE, UPPERCASE, GREEK), (6, 1, 1.5))
  return [_pick(rng, table)]


def _atom(rng) -> list[str]:
  table = _pick(rng, (LOWERCASE, DIGITS, UPPERCASE, GREEK), (6, 3, 1, 1.5))
  return [_pick(rng, table)]


def _number(rng) -> list[str]:
  digits = [_pick(rng, DIGITS[1:])]
  digits += [_pick(rng, DIGITS) for _ in range(_pick(rng, (0, 1, 2), (2, 3, 1)))]
  return digits


def _script_content(rng, depth: int) -> list[str]:
  if rng.random() < 0.7:
    return _atom(rng) if rng.random() < 0.5 else [_pick(rng, DIGITS[1:4])]
  return _sum(rng, depth + 1)


def _scripted(rng, depth: int) -> list[str]:
  base = _letter(rng) if rng.random() < 0.85 else ["(", *_sum(rng, depth + 1), ")"]
  kind = _pick(rng, ("sup", "sub", "both"), (5, 3, 1))
  tokens = list(base)
  if kind in ("sub", "both"):
    tokens += ["_", "{", *_script_content(rng, depth), "}"]
  if kind in ("sup", "both"):
    tokens += ["^", "{", *_script_content(rng, depth), "}"]
  return tokens


def _function(rng, depth: int) -> list[str]:
  name = _pick(rng, FUNCTIONS)
  head = [name]
  if name == r"\log" and rng.random() < 0.3:
    head += ["_", "{", _pick(rng, DIGITS[2:] + ("e",)), "}"]
  elif rng.random() < 0.2:
    head += ["^", "{", _pick(rng, DIGITS[2:4]), "}"]
  if rng.random() < 0.5:
    return head + [_pick(rng, ("x", r"\theta", r"\alpha", "t", "y"))]
  return head + ["(", *_sum(rng, depth + 1), ")"]


def _big_operator(rng) -> list[str]:
  kind = _pick(rng, BIG_OPERATORS)
  if kind == r"\sum":
    index = _pick(rng, ("i", "k", "n", "j"))
    upper = _pick(rng, ("n", "N", r"\infty"))
    body = _pick(rng, ("a", "x", "b")) + " _ { " + index + " }"
    return [r"\sum", "_", "{", index, "=", _pick(rng, ("0", "1")), "}",
            "^", "{", upper, "}", *body.split()]
  if kind == r"\int":
    variable = _pick(rng, ("x", "t", "y"))
    limits = []
    if rng.random() < 0.7:
      limits = ["_", "{", _pick(rng, ("0", "a", "1")), "}",
                "^", "{", _pick(rng, ("1", "b", r"\infty", "x")), "}"]
    return [r"\int", *limits, *_term(rng, _MAX_DEPTH - 1), "d", variable]
  variable = _pick(rng, ("x", "n", "h"))
  target = _pick(rng, ("0", r"\infty", "a", "1"))
  return [r"\lim", "_", "{", variable, r"\rightarrow", target, "}", *_term(rng, _MAX_DEPTH - 1)]


def _sequence(rng) -> list[str]:
  """x _ { 1 } + \\cdots + x _ { n }, or ( a , b , c ), or 1 , 2 , \\ldots."""
  letter = _pick(rng, ("a", "x", "b", "u"))
  kind = _pick(rng, ("dots_sum", "tuple", "list"))
  if kind == "dots_sum":
    operator = _pick(rng, ("+", r"\times"))
    return [letter, "_", "{", "1", "}", operator, r"\cdots", operator,
            letter, "_", "{", "n", "}"]
  if kind == "tuple":
    return ["(", letter, ",", _pick(rng, LOWERCASE), ")"]
  return ["1", ",", "2", ",", r"\ldots", ",", "n"]
