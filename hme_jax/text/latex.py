"""LaTeX text in the CROHME token convention: normalising, cleaning, rendering.

The CROHME convention writes an expression as space-separated tokens in which
every group is braced and every structure is spelled one way:

  x ^ { 2 } + \\frac { 1 } { 2 }      \\sqrt [ 3 ] { x }      \\lim _ { x \\rightarrow 0 }

* ``normalize`` turns LaTeX as people write it (``x^2+\\frac12``) into that form.
* ``clean_tokens`` repairs a predicted token list (a CTC model emits tokens
  without a grammar) into a well-formed one; ``is_well_formed`` checks one.
* ``to_mathtext`` makes a string that matplotlib's mathtext can draw.

Everything here is pure Python on strings and lists of strings.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence

from hme_jax.text import grammar

# The 109 token names of the CROHME training captions (a naming convention; the
# normaliser writes exactly these spellings).
CROHME_TOKENS = frozenset((
    "!", "'", "(", ")", "+", ",", "-", ".", "/", "0", "1", "2", "3", "4", "5",
    "6", "7", "8", "9", "<", "=", ">", "A", "B", "C", "E", "F", "G", "H", "I",
    "L", "M", "N", "P", "R", "S", "T", "V", "X", "Y", "[", r"\Delta", r"\alpha",
    r"\beta", r"\cdot", r"\cdots", r"\cos", r"\div", r"\exists", r"\forall",
    r"\frac", r"\gamma", r"\geq", r"\in", r"\infty", r"\int", r"\lambda",
    r"\ldots", r"\leq", r"\lim", r"\log", r"\mu", r"\neq", r"\phi", r"\pi",
    r"\pm", r"\prime", r"\rightarrow", r"\sigma", r"\sin", r"\sqrt", r"\sum",
    r"\tan", r"\theta", r"\times", r"\{", r"\}", "]", "^", "_", "a", "b", "c",
    "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p", "q", "r",
    "s", "t", "u", "v", "w", "x", "y", "z", "{", "|", "}",
))

# Commands that mean a CROHME token under another spelling.
SYNONYMS = {
    r"\ge": r"\geq", r"\geqslant": r"\geq",
    r"\le": r"\leq", r"\leqslant": r"\leq",
    r"\ne": r"\neq",
    r"\lt": "<", r"\gt": ">",
    r"\to": r"\rightarrow", r"\longrightarrow": r"\rightarrow",
    r"\dots": r"\ldots", r"\dotsc": r"\ldots", r"\dotso": r"\ldots",
    r"\hdots": r"\ldots", r"\mathellipsis": r"\ldots",
    r"\dotsb": r"\cdots", r"\dotsm": r"\cdots", r"\dotsi": r"\cdots",
    r"\cdotp": r"\cdot", r"\centerdot": r"\cdot",
    r"\lbrace": r"\{", r"\rbrace": r"\}",
    r"\lbrack": "[", r"\rbrack": "]",
    r"\vert": "|", r"\lvert": "|", r"\rvert": "|", r"\mid": "|",
    r"\slash": "/",
    r"\dfrac": r"\frac", r"\tfrac": r"\frac", r"\cfrac": r"\frac",
    r"\intop": r"\int",
    r"\infin": r"\infty",
    # Glyph variants that handwriting (and CROHME) does not tell apart.
    r"\varphi": r"\phi", r"\vartheta": r"\theta", r"\varpi": r"\pi",
    r"\varsigma": r"\sigma",
}

# Unicode characters that stand for a CROHME token.
UNICODE_SYNONYMS = {
    "\u2212": "-", "\u2013": "-", "\u00d7": r"\times", "\u00f7": r"\div",
    "\u00b1": r"\pm", "\u2264": r"\leq", "\u2265": r"\geq", "\u2260": r"\neq",
    "\u2192": r"\rightarrow", "\u221e": r"\infty", "\u00b7": r"\cdot",
    "\u22c5": r"\cdot", "\u2026": r"\ldots", "\u22ef": r"\cdots",
    "\u222b": r"\int", "\u2211": r"\sum", "\u2208": r"\in", "\u2203": r"\exists",
    "\u2200": r"\forall", "\u2032": r"\prime", "\u03b1": r"\alpha",
    "\u03b2": r"\beta", "\u03b3": r"\gamma", "\u03b8": r"\theta",
    "\u03bb": r"\lambda", "\u03bc": r"\mu", "\u03c0": r"\pi", "\u03c3": r"\sigma",
    "\u03c6": r"\phi", "\u03d5": r"\phi", "\u0394": r"\Delta",
}

# Commands that only change spacing, size or style: dropped.
IGNORED_COMMANDS = frozenset((
    r"\!", r"\,", r"\;", r"\:", r"\>", "\\ ", r"\quad", r"\qquad", r"\enspace",
    r"\thinspace", r"\medspace", r"\thickspace", r"\negthinspace",
    r"\limits", r"\nolimits", r"\displaystyle", r"\textstyle", r"\scriptstyle",
    r"\scriptscriptstyle", r"\(", r"\)", r"\[", r"\]", r"\\", r"\nonumber",
))
# Delimiter-sizing commands: dropped, the delimiter after them stays (a ``.``
# after them is the empty delimiter and goes too).
SIZING_COMMANDS = frozenset(
    [r"\left", r"\right", r"\middle"]
    + [f"\\{size}{side}" for size in ("big", "Big", "bigg", "Bigg")
       for side in ("", "l", "r", "m")])
# Commands whose one argument is dropped with them.
SKIPPED_WITH_ARGUMENT = frozenset((
    r"\hspace", r"\vspace", r"\hspace*", r"\vspace*", r"\phantom", r"\hphantom",
    r"\vphantom", r"\label", r"\tag",
))
# Commands whose argument is plain letters or text: their content is kept as
# tokens (``\mathrm{d}`` -> ``d``; ``\operatorname{sin}`` -> ``\sin``).
TEXT_COMMANDS = frozenset((
    r"\mbox", r"\text", r"\textrm", r"\textit", r"\textbf", r"\textsf",
    r"\texttt", r"\textnormal", r"\mathrm", r"\mathit", r"\mathbf", r"\mathsf",
    r"\mathtt", r"\mathnormal", r"\mathbb", r"\mathcal", r"\mathscr",
    r"\mathfrak", r"\boldsymbol", r"\bm", r"\operatorname", r"\operatorname*",
    r"\mathop", r"\mathord", r"\mathbin", r"\mathrel", r"\hbox",
))
# Commands with one argument that CROHME lacks: kept with their argument braced.
ONE_ARGUMENT_COMMANDS = frozenset((
    r"\overline", r"\underline", r"\bar", r"\hat", r"\widehat", r"\tilde",
    r"\widetilde", r"\vec", r"\dot", r"\ddot", r"\check", r"\breve", r"\acute",
    r"\grave", r"\overrightarrow", r"\overleftarrow", r"\boxed", r"\cancel",
    r"\overbrace", r"\underbrace",
))
TWO_ARGUMENT_COMMANDS = frozenset((r"\frac", r"\binom", r"\dbinom", r"\tbinom"))
# Function names of the vocabulary.
FUNCTION_NAMES = {"sin": r"\sin", "cos": r"\cos", "tan": r"\tan", "log": r"\log",
                  "lim": r"\lim"}
# TeX operator names that CROHME spells as letters (``l n ( x )``).
SPELLED_OPERATORS = frozenset((
    "arccos", "arcsin", "arctan", "arg", "cosh", "cot", "coth", "csc", "deg",
    "det", "dim", "exp", "gcd", "hom", "inf", "ker", "lg", "liminf", "limsup",
    "ln", "max", "min", "Pr", "sec", "sinh", "sup", "tanh",
))

# Binary operators and relations that cannot end an expression.
TRAILING_OPERATORS = frozenset((
    "+", "-", r"\pm", r"\times", r"\div", r"\cdot", "/", "=", r"\neq", "<", ">",
    r"\leq", r"\geq", r"\rightarrow", r"\in", "^", "_",
))
SCRIPTS = ("^", "_")


class LatexSyntaxError(ValueError):
  """LaTeX that cannot be brought into the CROHME convention."""


# --- lexing -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Lexeme:
  text: str
  position: int  # character offset in the raw string, for error messages


def _lex(raw: str) -> list[_Lexeme]:
  """Raw LaTeX -> lexemes: ``\\name``, ``\\x`` (control symbols) or one char.

  Whitespace, ``$``, comments and ignored commands are dropped here; synonyms
  and unicode characters are mapped to their CROHME token.
  """
  lexemes = []
  i, n = 0, len(raw)
  while i < n:
    char = raw[i]
    start = i
    if char.isspace() or char == "$" or char == "~":
      i += 1
      continue
    if char == "%":  # a comment runs to the end of the line
      while i < n and raw[i] != "\n":
        i += 1
      continue
    if char == "\\":
      i += 1
      if i >= n:
        raise LatexSyntaxError(f"LaTeX ends with a lone backslash: {raw!r}")
      if raw[i].isalpha():
        while i < n and raw[i].isalpha():
          i += 1
        if raw[start:i] in (r"\operatorname", r"\hspace", r"\vspace") and raw[i:i + 1] == "*":
          i += 1
      else:
        i += 1
      text = raw[start:i]
    else:
      i += 1
      text = UNICODE_SYNONYMS.get(char, char)
    text = SYNONYMS.get(text, text)
    if text in IGNORED_COMMANDS:
      continue
    lexemes.append(_Lexeme(text, start))
  # ``\left.`` / ``\right.`` are empty delimiters; sizing commands go.
  kept = []
  for index, lexeme in enumerate(lexemes):
    if lexeme.text in SIZING_COMMANDS:
      continue
    if (lexeme.text == "." and index > 0
        and lexemes[index - 1].text in SIZING_COMMANDS):
      continue
    kept.append(lexeme)
  return kept


# --- parsing ------------------------------------------------------------------


class _Parser:
  """Recursive descent over lexemes, writing CROHME tokens."""

  def __init__(self, raw: str, lexemes: list[_Lexeme]):
    self.raw = raw
    self.lexemes = lexemes
    self.index = 0

  def error(self, message: str, position: int | None = None) -> LatexSyntaxError:
    if position is None:
      position = (self.lexemes[self.index].position if self.index < len(self.lexemes)
                  else len(self.raw))
    return LatexSyntaxError(f"{message} at character {position} of {self.raw!r}")

  def peek(self) -> str | None:
    return self.lexemes[self.index].text if self.index < len(self.lexemes) else None

  def take(self) -> _Lexeme:
    lexeme = self.lexemes[self.index]
    self.index += 1
    return lexeme

  def parse(self) -> list[str]:
    tokens = self.group_body(end="")
    if self.peek() is not None:
      raise self.error(f"Unmatched {self.peek()!r}")
    return tokens

  def group_body(self, end: str, in_script: bool = False) -> list[str]:
    """Content up to ``end`` (not consumed); ``a \\over b`` becomes a fraction."""
    numerator = self.sequence({end, r"\over"}, in_script)
    if self.peek() != r"\over":
      return numerator
    self.take()
    denominator = self.sequence({end, r"\over"}, in_script)
    if self.peek() == r"\over":
      raise self.error("A second \\over in one group is ambiguous; brace one fraction")
    return [r"\frac", "{", *numerator, "}", "{", *denominator, "}"]

  def sequence(self, ends: set[str], in_script: bool) -> list[str]:
    tokens = []
    while (text := self.peek()) is not None and text not in ends:
      if text in SCRIPTS:
        self.take()
        tokens += [text, "{", *self.argument(text, in_script=True), "}"]
      elif text == "'" and not in_script:
        # ``f''^2`` is ``f^{\prime \prime 2}`` in TeX.
        primes = []
        while self.peek() == "'":
          self.take()
          primes.append(r"\prime")
        if self.peek() == "^":
          self.take()
          primes += self.argument("^", in_script=True)
        tokens += ["^", "{", *primes, "}"]
      elif text == "}":
        raise self.error("Unmatched '}'")
      else:
        tokens += self.atom(in_script)
    return tokens

  def braced(self, in_script: bool = False) -> list[str]:
    opening = self.take()
    body = self.group_body("}", in_script)
    if self.peek() != "}":
      raise self.error("Unclosed '{'", opening.position)
    self.take()
    return body

  def argument(self, owner: str, in_script: bool = False) -> list[str]:
    """One TeX argument: a braced group, or a single token (with its own arguments)."""
    text = self.peek()
    if text is None or text in ("}", r"\over") or text in SCRIPTS:
      raise self.error(f"{owner!r} has no argument")
    if text == "{":
      return self.braced(in_script)
    return self.atom(in_script)

  def atom(self, in_script: bool) -> list[str]:
    """One token or command with its arguments (no scripts)."""
    if self.peek() == "{":
      return self.braced(in_script)  # a bare group only groups: its braces go
    text = self.take().text
    if text == r"\sqrt":
      index = []
      if self.peek() == "[":
        opening = self.take()
        index = self.sequence({"]", "}"}, in_script=False)
        if self.peek() != "]":
          raise self.error("Unclosed '[' of \\sqrt", opening.position)
        self.take()
        index = ["[", *index, "]"]
      return [r"\sqrt", *index, "{", *self.argument(text), "}"]
    if text in TWO_ARGUMENT_COMMANDS:
      first = self.argument(text)
      second = self.argument(text)
      return [text, "{", *first, "}", "{", *second, "}"]
    if text in ONE_ARGUMENT_COMMANDS:
      return [text, "{", *self.argument(text), "}"]
    if text in TEXT_COMMANDS:
      content = self.argument(text)
      name = "".join(content)
      if all(len(t) == 1 and t.isalpha() for t in content) and name in FUNCTION_NAMES:
        return [FUNCTION_NAMES[name]]
      return content
    if text in SKIPPED_WITH_ARGUMENT:
      self.argument(text)
      return []
    if text == "'" and not in_script:
      return [r"\prime"]  # a prime as a whole argument (``\frac'2``)
    if text.startswith("\\") and text[1:] in SPELLED_OPERATORS:
      return list(text[1:])
    return [text]


def _join_negations(tokens: list[str]) -> list[str]:
  """``\\not =`` -> ``\\neq`` (on output tokens, so braces in between count)."""
  out = []
  for token in tokens:
    if token == "=" and out and out[-1] == r"\not":
      out[-1] = r"\neq"
    else:
      out.append(token)
  return out


def _join_spelled_functions(tokens: list[str]) -> list[str]:
  """Replaces a whole run of single letters that spells sin/cos/tan/log/lim."""
  out = []
  i = 0
  while i < len(tokens):
    j = i
    while j < len(tokens) and len(tokens[j]) == 1 and tokens[j].isalpha():
      j += 1
    if j > i:
      name = "".join(tokens[i:j])
      out += [FUNCTION_NAMES[name]] if name in FUNCTION_NAMES else tokens[i:j]
      i = j
    else:
      out.append(tokens[i])
      i += 1
  return out


def normalize(raw: str, *, join_spelled_functions: bool = False) -> str:
  """LaTeX as people write it -> the CROHME token string.

  ``x^2+\\frac12`` -> ``x ^ { 2 } + \\frac { 1 } { 2 }``. Numbers and words are
  split into characters; ``^``/``_``/``\\frac``/``\\sqrt`` arguments are braced;
  bare groups lose their braces; ``\\left``/``\\right``, sizes, spacing, styles
  and ``\\limits`` are dropped; synonyms get the CROHME spelling (``\\ge`` ->
  ``\\geq``, ``\\to`` -> ``\\rightarrow``, ``\\lt`` -> ``<``, ...);
  ``\\mathrm{..}``/``\\mbox{..}``/``\\operatorname{..}`` keep their content, or
  the function token it names; operator names CROHME lacks are spelled
  (``\\ln`` -> ``l n``); a prime ``f'`` is ``f ^ { \\prime }``, while a literal
  ``'`` inside a script stays (``f ^ { ' }``, as in CROHME). Idempotent on
  normalised strings. Commands outside the CROHME tokens (``\\omega``,
  ``\\overline { .. }``) pass through; ``Vocabulary.encode`` rejects them.

  Args:
    raw: LaTeX math, with or without surrounding ``$``.
    join_spelled_functions: also turn a run of single letters that spells
      ``sin``/``cos``/``tan``/``log``/``lim`` into that token (the CROHME InkML
      ``l o g`` style). Off by default: ``a _ { t a n }`` is a real caption.

  Raises:
    LatexSyntaxError: unbalanced braces or a command missing its argument.
  """
  tokens = _Parser(raw, _lex(raw)).parse()
  tokens = _join_negations(tokens)
  if join_spelled_functions:
    tokens = _join_spelled_functions(tokens)
  return " ".join(tokens)


def tokenize(latex: str) -> list[str]:
  """Any LaTeX -> its CROHME tokens (``normalize(latex).split()``)."""
  return normalize(latex).split()


# --- cleaning of predictions ----------------------------------------------------


def _matching_braces(tokens: Sequence[str]) -> list[str]:
  """Drops each ``}`` that closes nothing and each ``{`` that is never closed."""
  keep = [True] * len(tokens)
  open_positions = []
  for position, token in enumerate(tokens):
    if token == "{":
      open_positions.append(position)
    elif token == "}":
      if open_positions:
        open_positions.pop()
      else:
        keep[position] = False
  for position in open_positions:
    keep[position] = False
  return [token for token, k in zip(tokens, keep) if k]


class _Cleaner:
  """Lenient parse of balanced tokens; see ``clean_tokens`` for the rules."""

  def __init__(self, tokens: list[str]):
    self.tokens = tokens
    self.index = 0
    self.limit = len(tokens)  # inside a \sqrt index: its "]"; nothing crosses it

  def peek(self, offset: int = 0) -> str | None:
    position = self.index + offset
    return self.tokens[position] if position < len(self.tokens) else None

  def group(self) -> list[str] | None:
    """The cleaned content of the ``{ ... }`` at the cursor, or None if none."""
    if self.peek() != "{":
      return None
    self.index += 1
    content = self.sequence()
    self.index += 1  # the matching "}" (braces are balanced)
    return content

  def index_end(self) -> int | None:
    """Position of the ``]`` closing the ``\\sqrt [`` at the cursor.

    Counts the ``[ ]`` of nested ``\\sqrt [`` indices; stops at the end of the
    enclosing group.
    """
    brace_depth, index_depth = 0, 0
    for position in range(self.index + 1, self.limit):
      token = self.tokens[position]
      if token == "{":
        brace_depth += 1
      elif token == "}":
        if brace_depth == 0:
          return None
        brace_depth -= 1
      elif brace_depth == 0 and token == "[" and self.tokens[position - 1] == r"\sqrt":
        index_depth += 1
      elif brace_depth == 0 and token == "]":
        if index_depth == 0:
          return position
        index_depth -= 1
    return None

  def sequence(self, end: int | None = None) -> list[str]:
    """Cleans up to the closing ``}`` of the group, or up to ``end`` (an index's ``]``)."""
    out = []
    stop = len(self.tokens) if end is None else end
    while self.index < stop and (token := self.tokens[self.index]) != "}":
      if token == "]" and end is not None:
        self.index += 1  # left by a nested \sqrt that was dropped: it would end the index
      elif token == "{":
        out += self.group()  # bare group: keep content, drop braces
      elif token in SCRIPTS:
        self.index += 1
        content = self.group()
        if content:
          out += [token, "{", *content, "}"]
      elif token == r"\frac":
        self.index += 1
        numerator = self.group()
        denominator = self.group()
        if numerator and denominator:
          out += [r"\frac", "{", *numerator, "}", "{", *denominator, "}"]
        else:
          out += (numerator or []) + (denominator or [])
      elif token == r"\sqrt":
        self.index += 1
        out += self.sqrt()
      else:
        out.append(token)
        self.index += 1
    return out

  def sqrt(self) -> list[str]:
    start = self.index
    radical_index = []
    if self.peek() == "[" and (end := self.index_end()) is not None:
      if self.peek(end - self.index + 1) != "{":
        return []  # no radicand after the index: drop only the \sqrt
      self.index += 1
      outer_limit, self.limit = self.limit, end
      radical_index = self.sequence(end)
      self.limit = outer_limit
      self.index = end + 1
    radicand = self.group()
    if radicand is None:
      self.index = start
      return []
    if not radicand:
      return radical_index
    index_tokens = ["[", *radical_index, "]"] if radical_index else []
    return [r"\sqrt", *index_tokens, "{", *radicand, "}"]


def clean_tokens(tokens: Iterable[str]) -> list[str]:
  """Repairs a predicted token list into a well-formed CROHME expression.

  Deterministic rules; cleaning only ever removes tokens:

  1. Braces: a ``}`` that closes nothing and a ``{`` never closed are removed.
  2. Scripts: ``^``/``_`` not followed by a group, or followed by an empty
     one, are removed (the token after a group-less script stays).
  3. ``\\frac`` needs two non-empty groups; otherwise ``\\frac`` and the braces
     go and the content of the groups it has stays.
  4. ``\\sqrt`` needs a group: ``\\sqrt`` without one is removed; with an empty
     one the radical goes (its index content stays); an empty index
     ``[ ]`` is dropped. An index ends at the first ``]`` that closes no
     nested ``\\sqrt [``; a ``]`` left inside it by a removed nested radical
     is removed.
  5. Bare groups (``{ a }`` not owned by a script, ``\\frac`` or ``\\sqrt``)
     lose their braces; empty ones vanish.
  6. Binary operators and relations (``+ - = \\times ...``) at the very end of
     the expression are removed (inside groups they stay: ``x ^ { - }``).

  Every CROHME training caption is left unchanged, the result always passes
  ``is_well_formed``, and ``clean_tokens`` is idempotent.
  """
  cleaner = _Cleaner(_matching_braces(list(tokens)))
  out = cleaner.sequence()
  while out and out[-1] in TRAILING_OPERATORS:
    out.pop()
  return out


def is_well_formed(tokens: Sequence[str]) -> bool:
  """Whether ``tokens`` follow the CROHME structure.

  Braces balance; every ``{`` opens a non-empty group owned by ``^``, ``_``,
  ``\\frac`` (exactly two groups) or ``\\sqrt`` (``\\sqrt { .. }`` or
  ``\\sqrt [ .. ] { .. }`` with a non-empty index). The rules are
  ``hme_jax.text.grammar``'s, which the beam search's well-formed constraint applies too.
  """
  return grammar.is_well_formed(tokens)


# --- rendering with matplotlib mathtext -------------------------------------------

_MATHTEXT_ESCAPES = {"#": r"\#", "%": r"\%", "$": r"\$", "&": r"\&", "~": r"\sim"}


@functools.cache
def _mathtext_symbols() -> frozenset[str]:
  try:
    # Names mathtext knows as symbols; private, so a missing one only means
    # unknown commands are drawn as text.
    from matplotlib import _mathtext_data
    return frozenset(_mathtext_data.tex2uni)
  except (ImportError, AttributeError):
    return frozenset()


def to_mathtext(tokens: Sequence[str] | str, empty: str = r"\varnothing") -> str:
  """Tokens -> ``$...$`` that ``matplotlib.mathtext`` renders without error.

  The tokens are cleaned first (``clean_tokens``) so the structure parses;
  a second script of the same kind on one base gets an empty base (mathtext
  refuses double superscripts); a script touches its group (``x ^{ 2 }``:
  mathtext reads ``x ^ { 2 }`` as a script of a space, drawing the 2 inline);
  commands mathtext does not know are drawn as upright text; ``empty`` is drawn
  for an empty expression.
  """
  if isinstance(tokens, str):
    tokens = tokens.split()
  tokens = clean_tokens(tokens)
  if not tokens:
    return f"${empty}$"
  symbols = _mathtext_symbols()
  out = []
  # One entry per open group: the scripts already attached to the current base,
  # and whether the group is a script's (closing it returns to that base).
  attached = [set()]
  script_groups = [False]
  previous = None
  for token in tokens:
    if token in SCRIPTS:
      if token in attached[-1]:
        out.append("{}")
        attached[-1] = set()
      attached[-1].add(token)
    elif token == "{":
      attached.append(set())
      script_groups.append(previous in SCRIPTS)
      if previous in SCRIPTS:
        out[-1] += token
        previous = token
        continue
    elif token == "}":
      attached.pop()
      if not script_groups.pop():
        attached[-1] = set()  # an argument group ends: the \frac/\sqrt is the base
    else:
      attached[-1] = set()  # a new base
      if (token.startswith("\\") and len(token) > 2 and token not in CROHME_TOKENS
          and token[1:] not in symbols):
        token = r"\mathrm{" + token[1:] + "}"
      token = _MATHTEXT_ESCAPES.get(token, token)
    out.append(token)
    previous = token
  return "$" + " ".join(out) + "$"
