"""Tests of the sequence-to-sequence family: loss, greedy and beam decoding
(hme_jax/families/seq2seq.py)."""

import functools
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from configs import default

from hme_jax.families import registry, seq2seq
from hme_jax.families.seq2seq import LEFT_TO_RIGHT, RIGHT_TO_LEFT
from hme_jax.text.vocab import Vocabulary

TOKENS = ("a", "b", "c", "d", "e")   # ids 1..5; <sos> = 6, <eos> = 7
MAX_LENGTH = 8


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  config = dict(name="attention", d_model=32, growth_rate=4, dense_layers=1, dense_blocks=3,
                encoder_dropout=0.0, num_heads=4, decoder_layers=2, ffn_dim=32,
                decoder_dropout=0.0, coverage_channels=4, max_decode_length=MAX_LENGTH,
                length_penalty=1.0, label_smoothing=0.0)
  config.update(overrides)
  model_config = default.get_config().model  # every field declared, as the models read them
  model_config.update(width_downsample=2 ** (config["dense_blocks"] + 1), **config)
  return model_config


def make_batch(rng):
  return {
      "images": rng.integers(0, 256, (3, 32, 64, 1)).astype(np.uint8),
      "image_widths": np.array([64, 48, 30], np.int32),
      "labels": np.array([[1, 2, 3, 0, 0], [4, 0, 0, 0, 0], [5, 5, 1, 2, 0]], np.int32),
      "label_lengths": np.array([3, 1, 4], np.int32),
      "sample_mask": np.array([1, 1, 0], np.float32),
  }


@pytest.fixture(scope="module")
def family():
  return seq2seq.Seq2SeqFamily(tiny_config(), Vocabulary(TOKENS))


@pytest.fixture(scope="module")
def batch():
  return make_batch(np.random.default_rng(0))


@pytest.fixture(scope="module")
def initial_variables(family, batch):
  return family.init(jax.random.PRNGKey(0), batch)


@pytest.fixture(scope="module")
def variables(family, initial_variables):
  variables = dict(initial_variables)
  # Sharper output distributions than at initialisation, and end tokens likely
  # enough that hypotheses end at different lengths.
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: x * 4.0 if "head" in jax.tree_util.keystr(path) else x,
      variables["params"])
  bias = params["decoder"]["head"]["bias"]
  params["decoder"]["head"]["bias"] = bias.at[family.eos_id].add(2.0).at[family.sos_id].add(3.5)
  return {**variables, "params": params}


@pytest.fixture(scope="module")
def encoded(family, variables, batch):
  return jax.jit(family._encode)(variables, batch)


def full_decode_scores(family, variables, memory, mask, tokens, lengths, directions,
                       length_penalty):
  """Reference: normalised log-probabilities from the parallel (uncached) teacher-forced pass."""
  inputs, targets, target_mask = seq2seq.teacher_forcing(
      jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(directions), family.sos_id,
      family.eos_id)
  logits = jax.jit(functools.partial(family.model.apply, method="decode"))(
      variables, inputs, memory, mask)
  start, _ = seq2seq.direction_tokens(jnp.asarray(directions), family.sos_id, family.eos_id)
  log_probs = family._log_probs(logits, start[None, :, None])
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  total = jnp.sum(jnp.where(target_mask, picked, 0.0), axis=-1)
  return np.asarray(total / (jnp.asarray(lengths) + 1.0) ** length_penalty)


# --- label layout ----------------------------------------------------------------------


def test_bidirectional_targets_layout():
  sos, eos = 6, 7
  inputs, targets, mask = seq2seq.bidirectional_targets(
      jnp.array([[1, 2, 3, 0], [4, 0, 0, 0]]), jnp.array([3, 1]), sos, eos)
  np.testing.assert_array_equal(inputs, [[[sos, 1, 2, 3, 0], [eos, 3, 2, 1, 0]],
                                         [[sos, 4, 0, 0, 0], [eos, 4, 0, 0, 0]]])
  np.testing.assert_array_equal(targets, [[[1, 2, 3, eos, 0], [3, 2, 1, sos, 0]],
                                          [[4, eos, 0, 0, 0], [4, sos, 0, 0, 0]]])
  np.testing.assert_array_equal(mask, [[[1, 1, 1, 1, 0]] * 2, [[1, 1, 0, 0, 0]] * 2])


def test_reverse_within_length():
  reversed_tokens = seq2seq.reverse_within_length(jnp.array([[1, 2, 3, 0], [4, 5, 0, 0],
                                                             [0, 0, 0, 0]]),
                                                  jnp.array([3, 2, 0]))
  np.testing.assert_array_equal(reversed_tokens, [[3, 2, 1, 0], [5, 4, 0, 0], [0, 0, 0, 0]])


def test_gather_hypotheses_reorders_each_direction():
  leaf = jnp.arange(2 * 4 * 3).reshape(2, 4, 3)          # [B, D * K, ...] with D = K = 2
  indices = jnp.array([[[1, 1], [0, 1]], [[1, 0], [0, 0]]])
  out = seq2seq._gather_hypotheses({"x": leaf}, indices)["x"]
  expected = np.stack([leaf[0, [1, 1, 2, 3]], leaf[1, [1, 0, 2, 2]]])
  np.testing.assert_array_equal(out, expected)


def test_rejects_foreign_specials():
  with pytest.raises(ValueError, match="without specials"):
    seq2seq.Seq2SeqFamily(tiny_config(), Vocabulary(TOKENS, ("<s>", "</s>")))


# --- loss --------------------------------------------------------------------------------


def test_loss_counts_real_samples_and_tokens(family, variables, batch):
  extra = {k: v for k, v in variables.items() if k != "params"}
  loss_fn = jax.jit(family.loss, static_argnums=4)
  loss, (metrics, new_extra) = loss_fn(variables["params"], extra, batch,
                                       jax.random.PRNGKey(0), False)
  assert float(metrics["samples"]) == 2.0
  assert float(metrics["tokens"]) == 2 * ((3 + 1) + (1 + 1))   # both directions, end tokens
  np.testing.assert_allclose(loss, metrics["loss_sum"] / 2.0, rtol=1e-6)

  # Reference: per-sample mean token cross-entropy from the model's own logits.
  inputs, targets, mask = seq2seq.bidirectional_targets(
      jnp.asarray(batch["labels"]), jnp.asarray(batch["label_lengths"]), family.sos_id,
      family.eos_id)
  logits = jax.jit(family.model.apply)(variables, registry.images_to_float(batch["images"]),
                                       batch["image_widths"], inputs)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
  per_sample = [float(jnp.sum(nll[i] * mask[i]) / jnp.sum(mask[i])) for i in range(2)]
  np.testing.assert_allclose(loss, np.mean(per_sample), rtol=1e-5)

  # A filler sample changes nothing.
  other = dict(batch, images=batch["images"].copy(), labels=batch["labels"].copy())
  other["images"][2] = 255 - other["images"][2]
  other["labels"][2] = [3, 3, 3, 3, 3]
  loss_other, (metrics_other, _) = loss_fn(variables["params"], extra, other,
                                           jax.random.PRNGKey(0), False)
  np.testing.assert_allclose(loss_other, loss, rtol=1e-6)
  assert float(metrics_other["tokens"]) == float(metrics["tokens"])


# --- decoding ------------------------------------------------------------------------------


def test_cached_greedy_matches_uncached_greedy(family, variables, batch, encoded):
  tokens, lengths = jax.jit(family.greedy)(variables, batch)
  assert tokens.shape == (3, MAX_LENGTH)

  # Reference: re-run the whole prefix through the parallel decoder at every step.
  memory, mask = encoded
  decode = jax.jit(functools.partial(family.model.apply, method="decode"))
  prefix = np.zeros((3, 1, MAX_LENGTH + 1), np.int32)
  prefix[:, 0, 0] = family.sos_id
  ended = np.zeros(3, bool)
  expected_lengths = np.full(3, MAX_LENGTH)
  for step in range(MAX_LENGTH):
    logits = decode(variables, jnp.asarray(prefix), memory, mask)[:, 0, step]
    best = np.asarray(jnp.argmax(family._log_probs(logits, jnp.asarray(family.sos_id)), -1))
    newly_ended = ~ended & (best == family.eos_id)
    expected_lengths[newly_ended] = step
    ended |= newly_ended
    prefix[:, 0, step + 1] = np.where(ended, 0, best)

  np.testing.assert_array_equal(lengths, expected_lengths)
  np.testing.assert_array_equal(tokens, prefix[:, 0, 1:])
  assert np.all((np.asarray(tokens) > 0) == (np.arange(MAX_LENGTH) < expected_lengths[:, None]))


def test_sequence_scores_match_the_parallel_decoder(family, variables, encoded):
  memory, mask = encoded
  rng = np.random.default_rng(1)
  lengths = np.array([[0, 3, 5, 2], [4, 1, 5, 5], [2, 2, 0, 1]], np.int32)
  tokens = rng.integers(1, 1 + len(TOKENS), (3, 4, 5)).astype(np.int32)
  tokens = np.where(np.arange(5) < lengths[..., None], tokens, 0)
  directions = np.array([LEFT_TO_RIGHT, RIGHT_TO_LEFT, RIGHT_TO_LEFT, LEFT_TO_RIGHT])
  scores = jax.jit(family.sequence_scores, static_argnums=6)(
      variables, memory, mask, jnp.asarray(tokens), jnp.asarray(lengths),
      jnp.asarray(directions), 1.0)
  expected = full_decode_scores(family, variables, memory, mask, tokens, lengths, directions,
                                1.0)
  np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=1e-4)


def test_beam_width_one_is_greedy(family, variables, encoded):
  memory, mask = encoded
  both = (LEFT_TO_RIGHT, RIGHT_TO_LEFT)
  greedy_tokens, greedy_lengths = jax.jit(
      family.greedy_from_memory, static_argnums=(3, 4))(variables, memory, mask, MAX_LENGTH,
                                                         both)
  beam_tokens, beam_lengths, beam_scores = jax.jit(
      family.beam_from_memory, static_argnums=(3, 4, 5, 6))(variables, memory, mask, 1,
                                                             MAX_LENGTH, 0.0, both)
  np.testing.assert_array_equal(beam_tokens[:, :, 0], greedy_tokens)
  np.testing.assert_array_equal(beam_lengths[:, :, 0], greedy_lengths)
  # The two directions read the same image differently: the test is not vacuous.
  assert np.all(np.isfinite(beam_scores))


class TableModel(nn.Module):
  """A decoder whose next-token log-probabilities are fixed by hand.

  ``table[previous, current]`` gives the next-token logits, where ``current``
  is the step's input token and ``previous`` the one before it, carried in the
  decode state (so beam search must reorder the state correctly).
  """

  table: tuple

  def init_decode(self, memory, memory_mask, num_hypotheses, cache_length):
    return [], {"previous": jnp.zeros((memory.shape[0], num_hypotheses), jnp.int32)}

  def decode_step(self, tokens, position, memory_kv, memory_mask, state):
    logits = jnp.asarray(self.table, jnp.float32)[state["previous"], tokens]
    return logits, {"previous": tokens}


def _trap_table():
  """Greedy takes ``a`` (0.5) and never recovers; the best sequence is ``b`` (0.4 * 0.9)."""
  a, b, sos, eos = 1, 2, 3, 4
  probabilities = np.full((5, 5, 5), 1e-9)
  probabilities[..., [a, b, eos]] = [0.4, 0.4, 0.2]
  probabilities[0, sos, [a, b, eos]] = [0.5, 0.4, 0.1]
  probabilities[sos, a, [a, b, eos]] = [0.36, 0.34, 0.3]
  probabilities[sos, b, [a, b, eos]] = [0.05, 0.05, 0.9]
  probabilities[a, a, [a, b, eos]] = [0.45, 0.35, 0.2]
  probabilities[a, b, [a, b, eos]] = [0.45, 0.35, 0.2]
  return np.log(probabilities)


def _brute_force_best(log_table, max_length, length_penalty):
  a, b, sos, eos = 1, 2, 3, 4
  best = (-math.inf, None)
  for length in range(max_length + 1):
    for sequence in itertools.product((a, b), repeat=length):
      inputs = (sos, *sequence)
      previous = (0, *inputs[:-1])
      targets = (*sequence, eos)
      log_prob = sum(log_table[p, c, t] for p, c, t in zip(previous, inputs, targets))
      best = max(best, (log_prob / (length + 1) ** length_penalty, sequence))
  return best


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_beam_finds_the_best_sequence_of_a_fixed_model(length_penalty):
  family = seq2seq.Seq2SeqFamily(tiny_config(), Vocabulary(("a", "b")))
  assert (family.sos_id, family.eos_id) == (3, 4)
  log_table = _trap_table()
  family.model = TableModel(tuple(tuple(tuple(row) for row in plane) for plane in log_table))
  memory, mask = jnp.zeros((1, 1, 1, 1)), jnp.ones((1, 1, 1), bool)
  max_length = 4

  greedy_tokens, greedy_lengths = family.greedy_from_memory({}, memory, mask, max_length)
  np.testing.assert_array_equal(greedy_tokens[0, 0], [1, 1, 1, 1])   # a a a a, never ends
  tokens, lengths, scores = jax.jit(
      family.beam_from_memory, static_argnums=(3, 4, 5, 6))({}, memory, mask, 2, max_length,
                                                             length_penalty, (LEFT_TO_RIGHT,))
  best_score, best_sequence = _brute_force_best(log_table, max_length, length_penalty)
  assert best_sequence == (2,)
  assert int(lengths[0, 0, 0]) == 1 and int(tokens[0, 0, 0, 0]) == 2
  np.testing.assert_allclose(scores[0, 0, 0], best_score, rtol=1e-5)
  assert scores[0, 0, 1] < scores[0, 0, 0]


def test_bidirectional_beam_ranks_by_both_directions(family, variables, batch, encoded):
  beam_width = 3
  tokens, lengths, scores = jax.jit(family.beam, static_argnums=(2, 3))(
      variables, batch, beam_width, MAX_LENGTH)
  assert tokens.shape == (3, beam_width, MAX_LENGTH)
  tokens, lengths, scores = map(np.asarray, (tokens, lengths, scores))
  assert np.all(np.isfinite(scores))
  assert np.all(np.diff(scores, axis=1) <= 0)                    # best first
  memory, mask = encoded
  for row in range(3):
    sequences = {tuple(tokens[row, k, :lengths[row, k]]) for k in range(beam_width)}
    assert len(sequences) == beam_width                          # distinct
  # Only real tokens, left-aligned, zero-padded.
  real = (tokens >= 1) & (tokens <= len(TOKENS))
  np.testing.assert_array_equal(real, np.arange(MAX_LENGTH) < lengths[..., None])
  # Each score is the sum of both directions' normalised log-probabilities.
  both = full_decode_scores(family, variables, memory, mask, np.concatenate([tokens, tokens], 1),
                            np.concatenate([lengths, lengths], 1),
                            np.repeat([LEFT_TO_RIGHT, RIGHT_TO_LEFT], beam_width), 1.0)
  np.testing.assert_allclose(scores, both[:, :beam_width] + both[:, beam_width:], atol=2e-4,
                             rtol=1e-4)


# --- learning ---------------------------------------------------------------------------------


def _glyph_images(labels, lengths, glyphs, height=32, cell=12, gap=4):
  """Each token drawn as its own fixed random pattern, left to right."""
  width = max(lengths) * (cell + gap) + gap
  width = -(-width // 16) * 16
  images = np.zeros((len(labels), height, width, 1), np.uint8)
  widths = np.zeros(len(labels), np.int32)
  for row, (label, length) in enumerate(zip(labels, lengths)):
    for position, token in enumerate(label[:length]):
      left = gap + position * (cell + gap)
      images[row, 10:10 + glyphs.shape[1], left:left + cell, 0] = glyphs[token]
    widths[row] = gap + length * (cell + gap)
  return images, widths


@pytest.mark.slow
def test_overfits_a_few_samples_to_exact_match(family, initial_variables):
  rng = np.random.default_rng(0)
  labels = np.array([[1, 2, 3, 0], [4, 5, 0, 0], [2, 1, 5, 3], [3, 0, 0, 0]], np.int32)
  lengths = np.array([3, 2, 4, 1], np.int32)
  glyphs = (rng.random((len(TOKENS) + 1, 12, 12)) > 0.5).astype(np.uint8) * 255
  images, widths = _glyph_images(labels, lengths, glyphs)
  batch = {"images": images, "image_widths": widths, "labels": labels,
           "label_lengths": lengths, "sample_mask": np.ones(4, np.float32)}

  params = initial_variables["params"]
  extra = {k: v for k, v in initial_variables.items() if k != "params"}
  optimizer = optax.adam(3e-3)

  @jax.jit
  def train_steps(params, extra, opt_state, rng):
    def step(carry, rng):
      params, extra, opt_state = carry
      (loss, (_, extra)), grads = jax.value_and_grad(family.loss, has_aux=True)(
          params, extra, batch, rng, True)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), extra, opt_state), loss
    (params, extra, opt_state), losses = jax.lax.scan(
        step, (params, extra, opt_state), jax.random.split(rng, 25))
    return params, extra, opt_state, losses

  greedy = jax.jit(family.greedy)
  opt_state = optimizer.init(params)
  initial_stats = extra["batch_stats"]
  exact = False
  for round_index in range(16):
    params, extra, opt_state, losses = train_steps(params, extra, opt_state,
                                                   jax.random.PRNGKey(round_index))
    tokens, predicted_lengths = greedy({"params": params, **extra}, batch)
    exact = (np.array_equal(predicted_lengths, lengths)
             and np.array_equal(np.asarray(tokens)[:, :4] * (np.arange(4) < lengths[:, None]),
                                labels))
    if exact:
      break
  assert exact, f"no exact match after {25 * (round_index + 1)} steps, loss {losses[-1]:.3f}"
  # Training updated every BatchNorm (encoder and coverage module).
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), initial_stats, extra["batch_stats"])
  assert all(jax.tree.leaves(changed))
  beam_tokens, beam_lengths, _ = jax.jit(family.beam, static_argnums=(2, 3))(
      {"params": params, **extra}, batch, 2, MAX_LENGTH)
  np.testing.assert_array_equal(beam_lengths[:, 0], lengths)
  np.testing.assert_array_equal(np.asarray(beam_tokens)[:, 0, :4], labels)


def test_beam_max_length_zero_means_the_configured_maximum(family, variables, batch):
  # evaluate and predict pass max_length=0: the search must still run to the model's maximum.
  beam = jax.jit(family.beam, static_argnums=(2, 3))
  default = beam(variables, batch, 2, 0)
  explicit = beam(variables, batch, 2, MAX_LENGTH)
  assert default[0].shape == explicit[0].shape == (3, 2, MAX_LENGTH)
  for got, want in zip(default, explicit):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert np.asarray(default[1]).max() > 0
