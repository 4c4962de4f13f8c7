"""Tests for hme_jax.families.ctc_decoding: greedy, prefix beam search, the well-formed constraint.

The beam search is checked against brute force: every label sequence up to
length T scored by ``-optax.ctc_loss`` (its exact CTC log-probability).
"""

import itertools
import zipfile

import jax
import numpy as np
import optax
import pytest

from conftest import CROHME_ZIP, requires_crohme
from hme_jax.families import ctc_decoding
from hme_jax.text import grammar as latex_grammar
from hme_jax.text.vocab import Vocabulary


# --- helpers --------------------------------------------------------------------

_ctc_loss = jax.jit(optax.ctc_loss)


def all_sequences(num_classes, max_length):
  """Every label sequence (tuples of ids 1..C-1) of length 0..max_length."""
  return [sequence for n in range(max_length + 1)
          for sequence in itertools.product(range(1, num_classes), repeat=n)]


def ctc_log_likelihoods(logits, sequences):
  """Exact log P(sequence | logits) for every sequence and row, by optax.ctc_loss.

  ``logits`` ``[B, T, C]`` -> ``[B, N]`` for the N ``sequences``.
  """
  batch, num_frames, _ = logits.shape
  count = len(sequences)
  labels = np.zeros((count, num_frames), np.int32)
  label_paddings = np.ones((count, num_frames), np.float32)
  for i, sequence in enumerate(sequences):
    labels[i, :len(sequence)] = sequence
    label_paddings[i, :len(sequence)] = 0.0
  loss = _ctc_loss(np.repeat(logits, count, axis=0),
                   np.zeros((batch * count, num_frames), np.float32),
                   np.tile(labels, (batch, 1)), np.tile(label_paddings, (batch, 1)))
  log_likelihood = -np.asarray(loss, np.float64).reshape(batch, count)
  # optax clamps impossible alignments at about -1e5 instead of -inf.
  return np.where(log_likelihood < -1e4, -np.inf, log_likelihood)


def hypotheses_of(tokens, lengths, scores, b):
  """Finite-score hypotheses of batch row b as (tuple, score) pairs, best first."""
  return [(tuple(tokens[b, k, :lengths[b, k]].tolist()), float(scores[b, k]))
          for k in range(tokens.shape[1]) if np.isfinite(scores[b, k])]


def reference_beam_search(log_probs, beam_width, is_valid_prefix=None):
  """Textbook CTC prefix beam search over dicts: [(prefix, log-prob)], best first.

  ``log_probs`` ``[T, C]`` (blank 0); ``is_valid_prefix(prefix)`` filters extensions.
  """
  beams = {(): (0.0, -np.inf)}  # prefix -> (log P ending in blank, ending in a token)
  for frame in log_probs:
    candidates = {}

    def add(prefix, blank, nonblank):
      old_blank, old_nonblank = candidates.get(prefix, (-np.inf, -np.inf))
      candidates[prefix] = (np.logaddexp(old_blank, blank), np.logaddexp(old_nonblank, nonblank))

    for prefix, (blank, nonblank) in beams.items():
      total = np.logaddexp(blank, nonblank)
      add(prefix, total + frame[0], nonblank + frame[prefix[-1]] if prefix else -np.inf)
      for token in range(1, len(frame)):
        extended = prefix + (token,)
        if is_valid_prefix is not None and not is_valid_prefix(extended):
          continue
        source = blank if prefix and prefix[-1] == token else total
        add(extended, -np.inf, source + frame[token])
    ranked = sorted(candidates.items(), key=lambda item: -np.logaddexp(*item[1]))
    beams = dict(ranked[:beam_width])
  return [(prefix, float(np.logaddexp(*scores))) for prefix, scores in beams.items()]


def random_logits(rng, shape, scale=2.0):
  return (rng.normal(size=shape) * scale).astype(np.float32)


# --- greedy -----------------------------------------------------------------------


def one_hot_logits(frames, num_classes):
  logits = np.full((len(frames), num_classes), -5.0, np.float32)
  logits[np.arange(len(frames)), frames] = 5.0
  return logits


def test_greedy_merges_repeats_drops_blanks_and_padding():
  rows = [
      # a a _ a b b _  -> a a b
      ([1, 1, 0, 1, 2, 2, 0, 0], [0] * 8, [1, 1, 2]),
      # a [pad: b] a: the padded frame is skipped, so the two a's merge -> a
      ([1, 2, 1, 0, 3, 0, 0, 0], [0, 1, 0, 0, 0, 1, 1, 1], [1, 3]),
      # all blank -> empty
      ([0] * 8, [0] * 8, []),
      # trailing garbage frames marked as padding
      ([3, 0, 3, 2, 1, 2, 3, 1], [0, 0, 0, 1, 1, 1, 1, 1], [3, 3]),
  ]
  logits = np.stack([one_hot_logits(frames, 4) for frames, _, _ in rows])
  paddings = np.array([p for _, p, _ in rows], np.float32)
  tokens, lengths = ctc_decoding.greedy_decode(logits, paddings)
  assert tokens.shape == (4, 8) and lengths.shape == (4,)
  assert ctc_decoding.best_hypotheses(tokens, lengths) == [expected for _, _, expected in rows]
  # Left-aligned, zero padding after the length.
  assert np.all(np.asarray(tokens)[0, 3:] == 0)


# --- beam search against brute force ------------------------------------------------


def test_exhaustive_beam_equals_brute_force_ranking_and_scores():
  # A beam as wide as the number of label sequences never prunes: it must
  # return every feasible sequence, ranked and scored exactly.
  rng = np.random.default_rng(0)
  batch, frames, classes = 3, 5, 4
  sequences = all_sequences(classes, frames)
  logits = random_logits(rng, (batch, frames, classes))
  tokens, lengths, scores = ctc_decoding.beam_search(
      logits, np.zeros((batch, frames), np.float32), beam_width=len(sequences),
      max_output_length=frames)
  all_truth = ctc_log_likelihoods(logits, sequences)
  for b in range(batch):
    truth = all_truth[b]
    found = hypotheses_of(tokens, lengths, scores, b)
    feasible = {s: ll for s, ll in zip(sequences, truth) if np.isfinite(ll)}
    assert {s for s, _ in found} == set(feasible)
    assert [s for s, _ in found[:5]] == sorted(feasible, key=feasible.get, reverse=True)[:5]
    np.testing.assert_allclose([score for _, score in found], [feasible[s] for s, _ in found],
                               atol=1e-4)


def test_narrow_beam_finds_brute_force_best():
  rng = np.random.default_rng(1)
  batch, frames, classes = 8, 6, 4
  sequences = all_sequences(classes, frames)
  logits = random_logits(rng, (batch, frames, classes), scale=3.0)
  tokens, lengths, scores = ctc_decoding.beam_search(
      logits, np.zeros((batch, frames), np.float32), beam_width=16, max_output_length=frames)
  greedy_tokens, greedy_lengths = ctc_decoding.greedy_decode(logits, np.zeros((batch, frames)))
  greedy = ctc_decoding.best_hypotheses(greedy_tokens, greedy_lengths)
  all_truth = ctc_log_likelihoods(logits, sequences)
  for b in range(batch):
    truth = dict(zip(sequences, all_truth[b]))
    best, best_score = hypotheses_of(tokens, lengths, scores, b)[0]
    assert best == max(truth, key=truth.get)
    # A beam score sums only the alignments the beam kept: a lower bound.
    assert best_score <= truth[best] + 1e-4
    np.testing.assert_allclose(best_score, truth[best], atol=0.05)
    assert truth[best] >= truth[tuple(greedy[b])] - 1e-5


def test_matches_textbook_prefix_beam_search():
  # A narrow beam over many classes: the search prunes, and scores only each
  # frame's 2K best tokens; the reference scores every token.
  rng = np.random.default_rng(6)
  batch, frames, classes, width = 4, 8, 12, 3
  logits = random_logits(rng, (batch, frames, classes))
  log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
  result = ctc_decoding.beam_search(logits, np.zeros((batch, frames), np.float32), beam_width=width,
                                    max_output_length=frames)
  for b in range(batch):
    expected = reference_beam_search(log_probs[b], width)
    found = hypotheses_of(*result, b)
    assert [s for s, _ in found] == [s for s, _ in expected]
    np.testing.assert_allclose([x for _, x in found], [x for _, x in expected], atol=1e-4)


def test_logits_and_log_probs_give_the_same_answer():
  rng = np.random.default_rng(2)
  logits = random_logits(rng, (2, 6, 5)) + 7.0  # unnormalised
  log_probs = np.asarray(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))
  paddings = np.zeros((2, 6), np.float32)
  from_logits = ctc_decoding.beam_search(logits, paddings, beam_width=4, max_output_length=6)
  from_log_probs = ctc_decoding.beam_search(log_probs, paddings, beam_width=4, max_output_length=6)
  np.testing.assert_array_equal(from_logits[0], from_log_probs[0])
  np.testing.assert_allclose(from_logits[2], from_log_probs[2], atol=1e-5)


def test_padded_frames_do_not_change_the_answer():
  rng = np.random.default_rng(3)
  batch, frames, classes = 4, 6, 5
  logits = random_logits(rng, (batch, frames, classes))
  clean = ctc_decoding.beam_search(logits, np.zeros((batch, frames), np.float32), beam_width=6,
                                   max_output_length=frames)
  # Insert 4 garbage frames (two in the middle, two at the end) marked as padding.
  garbage = random_logits(rng, (batch, 4, classes), scale=10.0)
  padded_logits = np.concatenate([logits[:, :3], garbage[:, :2], logits[:, 3:], garbage[:, 2:]], 1)
  paddings = np.zeros((batch, frames + 4), np.float32)
  paddings[:, 3:5] = 1.0
  paddings[:, -2:] = 1.0
  padded = ctc_decoding.beam_search(padded_logits, paddings, beam_width=6, max_output_length=frames)
  np.testing.assert_array_equal(clean[0], padded[0])
  np.testing.assert_array_equal(clean[1], padded[1])
  np.testing.assert_allclose(clean[2], padded[2], atol=1e-5)


def test_top_tokens_pruning_finds_best_on_peaked_distributions():
  rng = np.random.default_rng(4)
  batch, frames, classes = 6, 6, 6
  # Peaked frames around a random path, with a close runner-up now and then.
  path = rng.integers(0, classes, size=(batch, frames))
  logits = rng.normal(size=(batch, frames, classes)).astype(np.float32)
  np.put_along_axis(logits, path[..., None], 6.0, axis=-1)
  runner_up = rng.integers(0, classes, size=(batch, frames))
  np.put_along_axis(logits, runner_up[..., None],
                    np.where(rng.random((batch, frames, 1)) < 0.4, 5.5, 0.0), axis=-1)
  sequences = all_sequences(classes, frames)
  tokens, lengths, scores = ctc_decoding.beam_search(
      logits, np.zeros((batch, frames), np.float32), beam_width=8, max_output_length=frames,
      top_tokens=2)
  all_truth = ctc_log_likelihoods(logits, sequences)
  for b in range(batch):
    truth = dict(zip(sequences, all_truth[b]))
    best, best_score = hypotheses_of(tokens, lengths, scores, b)[0]
    assert best == max(truth, key=truth.get)
    # Alignments through pruned tokens are missing from the score: a lower bound.
    assert truth[best] - 0.25 <= best_score <= truth[best] + 1e-4


def test_max_output_length_caps_hypotheses():
  logits = one_hot_logits([1, 0, 2, 0, 3, 0, 1], 4)[None]
  tokens, lengths, scores = ctc_decoding.beam_search(logits, np.zeros((1, 7), np.float32),
                                                     beam_width=3, max_output_length=2)
  assert tokens.shape == (1, 3, 2)
  assert np.all(np.asarray(lengths) <= 2)
  assert np.all(np.diff(np.asarray(scores)[0]) <= 0)  # sorted best first


def test_bad_shapes_raise_clear_errors():
  with pytest.raises(ValueError, match="frame_paddings"):
    ctc_decoding.beam_search(np.zeros((2, 5, 4)), np.zeros((2, 4)), beam_width=2,
                             max_output_length=5)
  with pytest.raises(ValueError, match="best_hypotheses"):
    ctc_decoding.best_hypotheses(np.zeros((2, 3)), np.zeros((3,)))


# --- the well-formed LaTeX grammar -----------------------------------------------------

STRUCTURE_TOKENS = ("{", "}", "^", "_", "\\frac", "\\sqrt", "[", "]")


def test_well_formed_agrees_with_the_python_checker_on_all_short_sequences():
  vocab = Vocabulary(tuple(sorted(STRUCTURE_TOKENS + ("x", "\\{", "\\}"))))
  grammar = ctc_decoding.LatexGrammar.from_vocab(vocab)
  sequences = all_sequences(len(vocab), 4)
  tokens = np.zeros((len(sequences), 4), np.int32)
  for i, sequence in enumerate(sequences):
    tokens[i, :len(sequence)] = sequence
  lengths = np.array([len(s) for s in sequences], np.int32)
  got = np.asarray(ctc_decoding.well_formed(grammar, tokens, lengths))
  expected = np.array([latex_grammar.is_well_formed(vocab.decode(s)) for s in sequences])
  assert expected.sum() > 50  # the comparison covers both answers
  np.testing.assert_array_equal(got, expected)


def test_well_formed_on_crohme_examples():
  good = ["x ^ { 2 }", "\\frac { a } { b }", "\\sqrt [ 3 ] { x }", "\\sqrt { x }",
          "\\sum _ { i = 1 } ^ { n }", "\\{ x \\}", "[ x ]",
          "\\frac { \\sqrt { x ^ { 2 } } } { 2 }",
          ""]
  bad = ["x ^ 2", "\\frac { a }", "\\frac { a } b", "{ x }", "x }", "\\sqrt x", "\\sqrt [ 3 ] x",
         "x ^ { 2", "\\sqrt [ 3 }"]
  captions = good + bad
  vocab = Vocabulary.from_captions(captions)
  grammar = ctc_decoding.LatexGrammar.from_vocab(vocab)
  length = max(len(c.split()) for c in captions)
  tokens = np.zeros((len(captions), length), np.int32)
  for i, caption in enumerate(captions):
    tokens[i, :len(caption.split())] = vocab.encode(caption)
  lengths = np.array([len(c.split()) for c in captions], np.int32)
  got = np.asarray(ctc_decoding.well_formed(grammar, tokens, lengths))
  np.testing.assert_array_equal(got, [True] * len(good) + [False] * len(bad))


@requires_crohme
def test_well_formed_accepts_crohme_captions_like_the_reference():
  captions = []
  with zipfile.ZipFile(CROHME_ZIP) as archive:
    for name in archive.namelist():
      if name.endswith("caption.txt"):
        captions += [line.split("\t", 1)[1] for line in archive.read(name).decode().splitlines()
                     if "\t" in line]
  vocab = Vocabulary.from_captions(captions)
  grammar = ctc_decoding.LatexGrammar.from_vocab(vocab)
  length = max(len(c.split()) for c in captions)
  tokens = np.zeros((len(captions), length), np.int32)
  for i, caption in enumerate(captions):
    tokens[i, :len(caption.split())] = vocab.encode(caption)
  lengths = np.array([len(c.split()) for c in captions], np.int32)
  got = np.asarray(ctc_decoding.well_formed(grammar, tokens, lengths))
  expected = np.array([latex_grammar.is_well_formed(c.split()) for c in captions])
  np.testing.assert_array_equal(got, expected)
  assert expected.mean() > 0.99  # the convention fits the ground truth


@pytest.mark.parametrize("tokens", [("{", "}", "^", "x"),
                                    ("{", "}", "\\frac", "\\sqrt", "[", "]", "a")])
def test_grammar_beam_finds_best_well_formed_sequence(tokens):
  vocab = Vocabulary(tuple(sorted(tokens)))
  grammar = ctc_decoding.LatexGrammar.from_vocab(vocab)
  rng = np.random.default_rng(5)
  batch, frames, classes = 4, 5, len(vocab)
  sequences = all_sequences(classes, frames)
  allowed = np.array([latex_grammar.is_well_formed(vocab.decode(s)) for s in sequences])
  logits = random_logits(rng, (batch, frames, classes))
  result = ctc_decoding.beam_search(logits, np.zeros((batch, frames), np.float32), beam_width=256,
                                    max_output_length=frames, grammar=grammar)
  all_truth = ctc_log_likelihoods(logits, sequences)
  for b in range(batch):
    truth = all_truth[b]
    well_formed_truth = dict(zip(sequences, np.where(allowed, truth, -np.inf)))
    found = hypotheses_of(*result, b)
    assert found, "no complete hypothesis"
    assert all(latex_grammar.is_well_formed(vocab.decode(s)) for s, _ in found)
    best, best_score = found[0]
    assert best == max(well_formed_truth, key=well_formed_truth.get)
    np.testing.assert_allclose(best_score, well_formed_truth[best], atol=1e-3)


def test_grammar_beam_matches_textbook_search_with_the_grammar():
  # 13 ordinary tokens > 2K: the search prunes them per frame, exactly.
  vocab = Vocabulary(tuple(sorted(STRUCTURE_TOKENS + tuple("xy12abcdefgh") + ("\\{",))))
  grammar = ctc_decoding.LatexGrammar.from_vocab(vocab)
  rng = np.random.default_rng(7)
  batch, frames, width = 4, 8, 4
  logits = random_logits(rng, (batch, frames, len(vocab)))
  logits[..., list(grammar.structural_ids)] -= 1.0  # fewer dead ends: some complete beams
  for frame, token in enumerate(["^", "{", "y", "}"], start=1):  # a likely group in rows 0, 1
    logits[:2, frame, vocab.id_of(token)] += 8.0
  log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
  result = ctc_decoding.beam_search(logits, np.zeros((batch, frames), np.float32), beam_width=width,
                                    max_output_length=frames, grammar=grammar)
  complete = []
  for b in range(batch):
    expected = reference_beam_search(
        log_probs[b], width, lambda prefix: latex_grammar.parse(vocab.decode(prefix)) is not None)
    # Hypotheses left open at the end are dropped (score -inf).
    expected = [(s, x) for s, x in expected if latex_grammar.is_well_formed(vocab.decode(s))]
    found = hypotheses_of(*result, b)
    assert [s for s, _ in found] == [s for s, _ in expected]
    np.testing.assert_allclose([x for _, x in found], [x for _, x in expected], atol=1e-4)
    complete += [s for s, _ in expected]
  # The case exercises both outcomes and real structure.
  assert 0 < len(complete) < batch * width
  assert any(vocab.id_of("{") in s for s in complete)


def test_grammar_turns_ill_formed_best_into_well_formed():
  vocab = Vocabulary(tuple(sorted(STRUCTURE_TOKENS + ("x", "2", "a", "b"))))
  grammar = ctc_decoding.LatexGrammar.from_vocab(vocab)
  blank = "<blank>"

  def frames_for(rows):
    # rows: list of {token: probability}; the rest of the mass is spread thinly.
    logits = np.full((len(rows), len(vocab)), np.log(1e-4), np.float32)
    for t, row in enumerate(rows):
      for token, probability in row.items():
        logits[t, 0 if token == blank else vocab.id_of(token)] = np.log(probability)
    return logits

  # "x ^ 2": the braces are weak (blank wins their frames) -> ill-formed best.
  script = frames_for([{"x": 0.9}, {"^": 0.9}, {"{": 0.35, blank: 0.6}, {"2": 0.9},
                       {"}": 0.35, blank: 0.6}])
  # "\frac { a } b": weak braces around the denominator.
  fraction = frames_for([{"\\frac": 0.9}, {"{": 0.9}, {"a": 0.9}, {"}": 0.9},
                         {"{": 0.3, blank: 0.65}, {"b": 0.9}, {"}": 0.3, blank: 0.65}])
  # The script row is shorter: two padded frames of garbage.
  script = np.concatenate([script, fraction[:2]])
  logits = np.stack([script, fraction])
  paddings = np.zeros(logits.shape[:2], np.float32)
  paddings[0, 5:] = 1.0
  free = ctc_decoding.beam_search(logits, paddings, beam_width=8, max_output_length=7)
  constrained = ctc_decoding.beam_search(logits, paddings, beam_width=8, max_output_length=7,
                                         grammar=grammar)
  free_best = [vocab.decode(s) for s in ctc_decoding.best_hypotheses(free[0], free[1])]
  constrained_best = [vocab.decode(s) for s in ctc_decoding.best_hypotheses(constrained[0],
                                                                            constrained[1])]
  assert free_best == [["x", "^", "2"], ["\\frac", "{", "a", "}", "b"]]
  assert not any(latex_grammar.is_well_formed(s) for s in free_best)
  assert constrained_best == [["x", "^", "{", "2", "}"], ["\\frac", "{", "a", "}", "{", "b", "}"]]
  assert all(latex_grammar.is_well_formed(s) for s in constrained_best)
  for b in range(2):
    assert all(latex_grammar.is_well_formed(vocab.decode(s))
               for s, _ in hypotheses_of(*constrained, b))


def test_grammar_never_returns_an_empty_group():
  vocab = Vocabulary(tuple(sorted(STRUCTURE_TOKENS + ("x", "2"))))
  grammar = ctc_decoding.LatexGrammar.from_vocab(vocab)
  # "x ^ { }": the 2 inside the braces is weak (blank wins its frame).
  probabilities = [{"x": 0.9}, {"^": 0.9}, {"{": 0.9}, {"2": 0.3, "<blank>": 0.65}, {"}": 0.9}]
  logits = np.full((1, len(probabilities), len(vocab)), np.log(1e-4), np.float32)
  for t, row in enumerate(probabilities):
    for token, probability in row.items():
      logits[0, t, vocab.id_of(token)] = np.log(probability)
  paddings = np.zeros(logits.shape[:2], np.float32)
  free = ctc_decoding.beam_search(logits, paddings, beam_width=8, max_output_length=5)
  constrained = ctc_decoding.beam_search(logits, paddings, beam_width=8, max_output_length=5,
                                         grammar=grammar)
  assert vocab.decode(ctc_decoding.best_hypotheses(*free[:2])[0]) == ["x", "^", "{", "}"]
  best = ctc_decoding.best_hypotheses(*constrained[:2])[0]
  assert vocab.decode(best) == ["x", "^", "{", "2", "}"]
  assert all(latex_grammar.is_well_formed(vocab.decode(s)) for s, _ in hypotheses_of(*constrained, 0))


def test_best_hypotheses_takes_the_first_beam():
  tokens = np.array([[[3, 1, 0], [2, 0, 0]], [[0, 0, 0], [1, 1, 1]]])
  lengths = np.array([[2, 1], [0, 3]])
  assert ctc_decoding.best_hypotheses(tokens, lengths) == [[3, 1], []]
