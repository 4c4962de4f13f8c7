"""The grammar of well-formed LaTeX in the CROHME token convention: one rule table.

  x ^ { 2 }      \\frac { a } { b }      \\sqrt { x }      \\sqrt [ 3 ] { x }

Braces balance; every ``{`` opens a non-empty group owned by ``^``, ``_``,
``\\frac`` (exactly two groups) or ``\\sqrt`` (``\\sqrt { .. }`` or
``\\sqrt [ .. ] { .. }`` with a non-empty index). CROHME captions have no bare
groups. ``[`` / ``]`` are literal brackets except right after ``\\sqrt`` and
as the closer of that root index; ``\\{`` / ``\\}`` are ordinary tokens.

The grammar is a stack automaton read one token at a time, defined once by
``rule``: ``is_well_formed`` and ``parse`` run it in Python, and the beam
search's constraint (``hme_jax.families.ctc_decoding.LatexGrammar``) runs the same rules as
the arrays ``ALLOWED``, ``ACTION`` and ``NEXT_PENDING`` made from it. A prefix
the automaton accepts can always be completed, so prefix acceptance is exactly
"some well-formed expression starts with it".
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

# Token categories (everything else, ``\{`` and ``\}`` included, is OTHER).
OTHER, OPEN_BRACE, CLOSE_BRACE, SCRIPT, FRAC, SQRT, OPEN_BRACKET, CLOSE_BRACKET = range(8)
NUM_CATEGORIES = 8
CATEGORY_OF_TOKEN = {
    "{": OPEN_BRACE, "}": CLOSE_BRACE, "^": SCRIPT, "_": SCRIPT, "\\frac": FRAC,
    "\\sqrt": SQRT, "[": OPEN_BRACKET, "]": CLOSE_BRACKET,
}
# What the next token must be: anything (FREE), a ``{`` (after a script or a
# fraction's numerator), a numerator's ``{``, a root's ``{`` or ``[``, or not
# the closer of the group just opened (groups and root indices are never empty).
FREE, NEED_BRACE, NEED_NUMERATOR, NEED_ROOT_ARGUMENT, NEED_CONTENT = range(5)
NUM_PENDING = 5
# Open structures on the stack (EMPTY: nothing open).
EMPTY, GROUP, NUMERATOR, ROOT_INDEX = range(4)
NUM_OPEN = 4
# Stack actions of one token.
KEEP, PUSH_GROUP, PUSH_NUMERATOR, PUSH_ROOT_INDEX, POP = range(5)
PUSHED = {PUSH_GROUP: GROUP, PUSH_NUMERATOR: NUMERATOR, PUSH_ROOT_INDEX: ROOT_INDEX}


def rule(pending: int, top: int, category: int) -> tuple[bool, int, int]:
  """The grammar: ``(allowed, stack action, next pending)`` of a token of ``category``.

  ``pending`` is what the previous token asks for, ``top`` the innermost open
  structure (``EMPTY`` when none).
  """
  if pending == NEED_BRACE:
    return category == OPEN_BRACE, PUSH_GROUP, NEED_CONTENT
  if pending == NEED_NUMERATOR:
    return category == OPEN_BRACE, PUSH_NUMERATOR, NEED_CONTENT
  if pending == NEED_ROOT_ARGUMENT:
    if category == OPEN_BRACE:
      return True, PUSH_GROUP, NEED_CONTENT
    return category == OPEN_BRACKET, PUSH_ROOT_INDEX, NEED_CONTENT
  closes = ((category == CLOSE_BRACE and top in (GROUP, NUMERATOR))
            or (category == CLOSE_BRACKET and top == ROOT_INDEX))
  if pending == NEED_CONTENT and closes:
    return False, KEEP, FREE  # an empty group or index
  # FREE, or the first token of a group that does not close it.
  if category == OPEN_BRACE:
    return False, KEEP, FREE  # a bare group
  if category == CLOSE_BRACE:
    if top == GROUP:
      return True, POP, FREE
    return top == NUMERATOR, POP, NEED_BRACE  # the denominator must follow
  if category == SCRIPT:
    return True, KEEP, NEED_BRACE
  if category == FRAC:
    return True, KEEP, NEED_NUMERATOR
  if category == SQRT:
    return True, KEEP, NEED_ROOT_ARGUMENT
  if closes:  # the "]" of a root index
    return True, POP, NEED_BRACE
  return True, KEEP, FREE  # ordinary tokens and literal brackets


RULES = {index: rule(*index) for index in itertools.product(
    range(NUM_PENDING), range(NUM_OPEN), range(NUM_CATEGORIES))}


def _rule_arrays():
  shape = (NUM_PENDING, NUM_OPEN, NUM_CATEGORIES)
  allowed = np.zeros(shape, bool)
  action, pending = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
  for index, (is_allowed, stack_action, next_pending) in RULES.items():
    allowed[index], action[index], pending[index] = is_allowed, stack_action, next_pending
  return allowed, action, pending


# ``RULES`` as arrays indexed ``[pending, top, category]`` (for the JAX constraint).
ALLOWED, ACTION, NEXT_PENDING = _rule_arrays()


def category(token: str) -> int:
  return CATEGORY_OF_TOKEN.get(token, OTHER)


@dataclasses.dataclass(frozen=True)
class State:
  """The automaton after a prefix: the open structures (outermost first) and what comes next."""

  stack: tuple[int, ...] = ()
  pending: int = FREE

  @property
  def top(self) -> int:
    return self.stack[-1] if self.stack else EMPTY

  @property
  def complete(self) -> bool:
    """Nothing left open: the prefix is a whole well-formed expression."""
    return not self.stack and self.pending == FREE

  def step(self, token: str) -> State | None:
    """The state after ``token``; None if the grammar does not allow it here."""
    allowed, action, pending = RULES[self.pending, self.top, category(token)]
    if not allowed:
      return None
    if action == POP:
      return State(self.stack[:-1], pending)
    if action in PUSHED:
      return State((*self.stack, PUSHED[action]), pending)
    return State(self.stack, pending)


def parse(tokens: Sequence[str]) -> State | None:
  """The state after ``tokens``, or None if they start no well-formed expression."""
  state = State()
  for token in tokens:
    state = state.step(token)
    if state is None:
      return None
  return state


def is_well_formed(tokens: Sequence[str]) -> bool:
  """Whether ``tokens`` are a whole well-formed expression (see the module docstring)."""
  state = parse(tokens)
  return state is not None and state.complete
