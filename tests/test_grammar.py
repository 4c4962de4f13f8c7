"""One grammar of well-formed CROHME LaTeX: ``hme_jax.text.grammar``'s rule table.

Checked three ways: the Python automaton against an independent recursive
description of the convention; its prefix acceptance against explicit
completions; and the beam search's JAX constraint (``ctc_decoding.parse``, the
same rules as arrays) against the Python automaton on random token sequences,
uniform noise and mutated valid captions.
"""

import itertools

import numpy as np
import pytest

from hme_jax.families import ctc_decoding
from hme_jax.text import grammar, latex
from hme_jax.text.vocab import Vocabulary
from tfds_crohme.crohme_synthetic import grammar as synthetic_grammar

STRUCTURE_TOKENS = ("{", "}", "^", "_", "\\frac", "\\sqrt", "[", "]")
ORDINARY_TOKENS = ("x", "2", "+", "\\{", "\\}")
TOKENS = STRUCTURE_TOKENS + ORDINARY_TOKENS


def reference_well_formed(tokens) -> bool:
  """The convention as a recursive description (independent of the rule table).

  expression := item*;  item := ordinary | "[" | "]" | script "{" expression+ "}"
    | "\\frac" group group | "\\sqrt" ("[" index+ "]")? group;  group := "{" expression+ "}"
  where an index holds no "]" outside groups.
  """
  tokens = list(tokens)

  def group(position):
    if position >= len(tokens) or tokens[position] != "{":
      return None
    end = sequence(position + 1, "}")
    if end is None or end == position + 1:
      return None
    return end + 1

  def sequence(position, closer):
    while position < len(tokens):
      token = tokens[position]
      if token == closer:
        return position
      if token in ("{", "}"):
        return None
      if token in ("^", "_"):
        position = group(position + 1)
      elif token == "\\frac":
        position = group(position + 1)
        position = None if position is None else group(position)
      elif token == "\\sqrt":
        position += 1
        if position < len(tokens) and tokens[position] == "[":
          end = sequence(position + 1, "]")
          if end is None or end == position + 1:
            return None
          position = end + 1
        position = group(position)
      else:
        position += 1
      if position is None:
        return None
    return position if closer is None else None

  return sequence(0, None) == len(tokens)


def completion(state: grammar.State) -> list[str]:
  """Tokens that close everything ``state`` has open."""
  tokens = {grammar.FREE: [], grammar.NEED_CONTENT: ["x"], grammar.NEED_BRACE: ["{", "x", "}"],
            grammar.NEED_ROOT_ARGUMENT: ["{", "x", "}"],
            grammar.NEED_NUMERATOR: ["{", "x", "}", "{", "x", "}"]}[state.pending]
  for structure in reversed(state.stack):
    tokens += {grammar.GROUP: ["}"], grammar.NUMERATOR: ["}", "{", "x", "}"],
               grammar.ROOT_INDEX: ["]", "{", "x", "}"]}[structure]
  return tokens


def test_the_automaton_is_the_described_grammar_on_every_short_sequence():
  alphabet = ("{", "}", "^", "\\frac", "\\sqrt", "[", "]", "x")
  accepted = 0
  for length in range(6):
    for tokens in itertools.product(alphabet, repeat=length):
      expected = reference_well_formed(tokens)
      assert grammar.is_well_formed(tokens) is expected, tokens
      accepted += expected
      state = grammar.parse(tokens)
      if state is not None:  # an accepted prefix can always be completed
        assert reference_well_formed(list(tokens) + completion(state)), tokens
  assert accepted > 200


@pytest.mark.parametrize("tokens, well_formed", [
    ("x ^ { 2 }", True), ("\\sqrt [ 3 ] { x }", True), ("\\frac { a } { b }", True),
    ("x ^ { }", False),                     # the empty group the beam used to allow
    ("\\sqrt [ ] { x }", False), ("\\frac { } { b }", False), ("\\frac { a } { }", False),
    ("{ x }", False), ("x ^ { 2", False), ("\\sqrt [ 3 }", False), ("[ x ]", True),
])
def test_examples_read_alike_by_latex_grammar_and_the_beam_constraint(tokens, well_formed):
  tokens = tokens.split()
  assert latex.is_well_formed(tokens) is well_formed
  assert reference_well_formed(tokens) is well_formed
  vocab = Vocabulary(tuple(sorted(set(TOKENS) | set(tokens))))
  ids = vocab.encode(tokens)[None]
  assert bool(ctc_decoding.well_formed(ctc_decoding.LatexGrammar.from_vocab(vocab), ids,
                                       np.array([len(tokens)]))[0]) is well_formed


def mutate(tokens: list[str], rng: np.random.Generator) -> list[str]:
  """One random edit of a token list; the kinds of mistakes a decoder makes."""
  tokens = list(tokens)
  kind = rng.integers(6)
  position = int(rng.integers(len(tokens) + 1))
  if kind == 0 and tokens:                                   # drop a token
    del tokens[min(position, len(tokens) - 1)]
  elif kind == 1:                                            # insert a token
    tokens.insert(position, str(rng.choice(TOKENS)))
  elif kind == 2 and tokens:                                 # replace a token
    tokens[min(position, len(tokens) - 1)] = str(rng.choice(TOKENS))
  elif kind == 3 and len(tokens) > 1:                        # swap two neighbours
    i = min(position, len(tokens) - 2)
    tokens[i], tokens[i + 1] = tokens[i + 1], tokens[i]
  elif kind == 4:                                            # cut the end off
    tokens = tokens[:position]
  elif "{" in tokens:                                        # empty a group
    start = tokens.index("{", min(position, tokens.index("{", 0)))
    depth = 0
    for end in range(start, len(tokens)):
      depth += {"{": 1, "}": -1}.get(tokens[end], 0)
      if depth == 0:
        tokens = tokens[:start + 1] + tokens[end:]
        break
  return tokens


def random_sequences(count: int, seed: int) -> list[list[str]]:
  """Half uniform noise over the structural tokens, half mutated valid captions."""
  rng = np.random.default_rng(seed)
  sequences = []
  for i in range(count):
    if i % 2:
      sequences.append([str(t) for t in rng.choice(TOKENS, int(rng.integers(0, 24)))])
      continue
    caption = synthetic_grammar.sample_expression(rng).split()[:40]
    caption = [t if t in TOKENS else "x" for t in caption]  # a small vocabulary
    for _ in range(int(rng.integers(0, 4))):
      caption = mutate(caption, rng)
    sequences.append(caption)
  return sequences


def test_beam_constraint_and_python_checker_agree_on_random_sequences():
  sequences = random_sequences(3000, seed=0)
  vocab = Vocabulary(tuple(sorted(TOKENS)))
  longest = max(len(s) for s in sequences)
  # Deep enough never to prune (the depth limit is the constraint's only extra rule).
  constraint = ctc_decoding.LatexGrammar.from_vocab(vocab, max_depth=longest)
  ids = np.zeros((len(sequences), longest), np.int32)
  for row, sequence in enumerate(sequences):
    ids[row, :len(sequence)] = vocab.encode(sequence)
  lengths = np.array([len(s) for s in sequences], np.int32)
  prefix_kept, complete = map(np.asarray, ctc_decoding.parse(constraint, ids, lengths))

  expected_complete = np.array([grammar.is_well_formed(s) for s in sequences])
  np.testing.assert_array_equal(complete, expected_complete)
  first_rejected = []
  for row, sequence in enumerate(sequences):
    expected = [grammar.parse(sequence[:i + 1]) is not None for i in range(len(sequence))]
    assert prefix_kept[row, :len(sequence)].tolist() == expected, sequence
    if not all(expected):
      first_rejected.append(expected.index(False))
  # Both answers, and rejections early and late, are covered.
  mutated_complete = expected_complete[::2]
  assert 0.2 < mutated_complete.mean() < 0.8
  assert len(first_rejected) > 1000 and min(first_rejected) == 0 and max(first_rejected) > 15


def test_the_constraint_prunes_nesting_beyond_max_depth():
  tokens = []
  for _ in range(3):
    tokens = ["x", "^", "{", *tokens, "2", "}"]
  vocab = Vocabulary(tuple(sorted(TOKENS)))
  ids, lengths = vocab.encode(tokens)[None], np.array([len(tokens)])
  assert grammar.is_well_formed(tokens)
  for max_depth, kept in ((3, True), (2, False)):
    constraint = ctc_decoding.LatexGrammar.from_vocab(vocab, max_depth=max_depth)
    assert bool(ctc_decoding.well_formed(constraint, ids, lengths)[0]) is kept
