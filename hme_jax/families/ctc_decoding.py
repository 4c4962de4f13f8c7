"""CTC decoding: greedy, prefix beam search, and a well-formed-LaTeX constraint.

Everything here is a pure JAX function of arrays (jit-compatible, the same on
CPU, GPU and TPU):

* ``greedy_decode``: best path (argmax per frame, merge repeats, drop blanks).
* ``beam_search``: CTC prefix beam search (Graves 2012 / Hannun et al. 2014)
  with the blank / non-blank split of each prefix's probability, written as a
  ``lax.scan`` over frames and ``vmap`` over the batch.
* ``LatexGrammar``: an optional constraint for ``beam_search`` that keeps only
  prefixes of well-formed LaTeX in the CROHME token convention: the rules of
  ``hme_jax.text.grammar`` (those of ``latex.is_well_formed``) as arrays.
* ``parse`` / ``well_formed``: the same constraint over given sequences.
* ``best_hypotheses``: arrays -> Python lists of token ids.

Frame paddings follow the project convention: ``[B, T]`` float, 1.0 on padded
frames. Padded frames are skipped wherever they are (not only at the end).
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from hme_jax.text import grammar as grammar_lib
from hme_jax.text.vocab import Vocabulary

# --- greedy ------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("blank_id",))
def greedy_decode(logits: jax.Array, frame_paddings: jax.Array, blank_id: int = 0):
  """Best-path CTC decoding.

  Args:
    logits: ``[B, T, C]`` scores (logits or log-probabilities; only the argmax
      matters).
    frame_paddings: ``[B, T]``, 1.0 on padded frames (ignored wherever they are).
    blank_id: the CTC blank class.

  Returns:
    ``(tokens, lengths)``: ``tokens`` ``[B, T]`` int32, the decoded ids
    left-aligned and padded with 0; ``lengths`` ``[B]`` int32.
  """
  best = jnp.argmax(logits, axis=-1).astype(jnp.int32)                     # [B, T]
  valid = frame_paddings < 0.5
  # Move the real frames to the front (stable), so that a padded frame between
  # two equal tokens does not split them into two.
  order = jnp.argsort(~valid, axis=1, stable=True)
  best = jnp.take_along_axis(best, order, axis=1)
  valid = jnp.take_along_axis(valid, order, axis=1)
  previous = jnp.pad(best[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  keep = valid & (best != blank_id) & (best != previous)
  return _compact(best, keep, best.shape[1])


def _compact(values: jax.Array, keep: jax.Array, length: int):
  """Left-aligns ``values[keep]`` per row: ``[..., T]`` -> (``[..., length]``, ``[...]``)."""
  positions = jnp.cumsum(keep, axis=-1) - 1
  positions = jnp.where(keep, positions, length)  # out of range: dropped
  rows = values.reshape(-1, values.shape[-1])
  out = jax.vmap(lambda v, p: jnp.zeros((length,), jnp.int32).at[p].set(v, mode="drop"))(
      rows, positions.reshape(rows.shape))
  out = out.reshape(*values.shape[:-1], length)
  return out, jnp.sum(keep, axis=-1).astype(jnp.int32)


# --- the well-formed LaTeX constraint: hme_jax.text.grammar's rule arrays ----------


@flax.struct.dataclass
class LatexGrammar:
  """Token categories for the well-formed constraint of ``beam_search``.

  Build it with ``LatexGrammar.from_vocab(vocab)``.

  Attributes:
    categories: ``[V]`` int32, the category of each vocabulary id (``OTHER``,
      ``OPEN_BRACE``, ...). ``V`` may exceed the number of CTC classes ``C``
      (seq2seq specials appended); only the first ``C`` are used.
    structural_ids: the ids whose category is not ``OTHER`` (static). The beam
      search always scores these and prunes the rest exactly; ``None`` scores
      every token (same answer, slower).
    max_depth: deepest nesting a hypothesis may have (CROHME captions reach 5);
      deeper prefixes are pruned.
  """

  categories: jax.Array
  structural_ids: tuple[int, ...] | None = flax.struct.field(pytree_node=False, default=None)
  max_depth: int = flax.struct.field(pytree_node=False, default=8)

  @classmethod
  def from_vocab(cls, vocab: Vocabulary, max_depth: int = 8) -> "LatexGrammar":
    categories = np.full((len(vocab),), grammar_lib.OTHER, np.int32)
    for token, category in grammar_lib.CATEGORY_OF_TOKEN.items():
      if token in vocab:
        categories[vocab.id_of(token)] = category
    structural_ids = tuple(int(i) for i in np.flatnonzero(categories != grammar_lib.OTHER))
    return cls(jnp.asarray(categories), structural_ids, max_depth)


@flax.struct.dataclass
class _GrammarState:
  """Per-hypothesis parser state: ``stack [..., D]``, ``depth [...]``, ``pending [...]``."""

  stack: jax.Array
  depth: jax.Array
  pending: jax.Array

  @classmethod
  def initial(cls, shape: tuple[int, ...], max_depth: int) -> "_GrammarState":
    return cls(jnp.zeros((*shape, max_depth), jnp.int32), jnp.zeros(shape, jnp.int32),
               jnp.full(shape, grammar_lib.FREE, jnp.int32))

  def top(self) -> jax.Array:
    index = jnp.maximum(self.depth - 1, 0)[..., None]
    top = jnp.take_along_axis(self.stack, index, axis=-1)[..., 0]
    return jnp.where(self.depth > 0, top, grammar_lib.EMPTY)

  def allowed(self, categories: jax.Array) -> jax.Array:
    """``[..., N]`` bool: which of ``categories`` ``[N]`` may come next."""
    every = jnp.arange(grammar_lib.NUM_CATEGORIES)
    top = self.top()[..., None]
    pending = self.pending[..., None]
    allowed = jnp.asarray(grammar_lib.ALLOWED)[pending, top, every]         # [..., 8]
    action = jnp.asarray(grammar_lib.ACTION)[pending, top, every]
    pushes = (action != grammar_lib.KEEP) & (action != grammar_lib.POP)
    allowed &= (self.depth[..., None] < self.stack.shape[-1]) | ~pushes
    # Spread to the N tokens by comparison (cheaper than a gather on CPU).
    return jnp.any(allowed[..., None, :] & (categories[:, None] == every), axis=-1)

  def step(self, category: jax.Array) -> "_GrammarState":
    """Applies one token of ``category`` (same shape as ``depth``), assumed allowed."""
    top = self.top()
    action = jnp.asarray(grammar_lib.ACTION)[self.pending, top, category]
    pending = jnp.asarray(grammar_lib.NEXT_PENDING)[self.pending, top, category]
    pushed = jnp.select([action == push for push in grammar_lib.PUSHED],
                        list(grammar_lib.PUSHED.values()), grammar_lib.EMPTY)
    is_push = pushed != grammar_lib.EMPTY
    slot = jax.nn.one_hot(self.depth, self.stack.shape[-1], dtype=bool) & is_push[..., None]
    stack = jnp.where(slot, pushed[..., None], self.stack)
    depth = self.depth + is_push - (action == grammar_lib.POP)
    return _GrammarState(stack, depth.astype(jnp.int32), pending)

  def complete(self) -> jax.Array:
    """Nothing left open: the prefix is a whole well-formed expression."""
    return (self.depth == 0) & (self.pending == grammar_lib.FREE)


@jax.jit
def parse(grammar: LatexGrammar, tokens: jax.Array, lengths: jax.Array):
  """Runs the constraint of ``beam_search`` over given token sequences.

  Args:
    grammar: from ``LatexGrammar.from_vocab``.
    tokens: ``[B, L]`` int token ids.
    lengths: ``[B]`` number of real tokens per row.

  Returns:
    ``(prefix_kept [B, L], complete [B])`` bool: ``prefix_kept[b, i]``, whether
    the beam search keeps the prefix ``tokens[b, :i + 1]`` (past ``lengths[b]``:
    the value of the whole row); ``complete``, whether the whole row is
    well-formed (``hme_jax.text.grammar.is_well_formed``, within ``max_depth``).
  """
  batch, _ = tokens.shape
  categories = grammar.categories[tokens]                                   # [B, L]

  def step(carry, inputs):
    state, ok = carry
    category, active = inputs
    allowed = jnp.take_along_axis(state.allowed(jnp.arange(grammar_lib.NUM_CATEGORIES)),
                                  category[:, None], axis=1)[:, 0]
    ok = ok & (allowed | ~active)
    new = state.step(category)
    state = jax.tree.map(lambda n, o: jnp.where(_expand(active & ok, n), n, o), new, state)
    return (state, ok), ok

  active = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
  init = (_GrammarState.initial((batch,), grammar.max_depth), jnp.ones((batch,), bool))
  (state, ok), prefix_kept = jax.lax.scan(step, init, (categories.T, active.T))
  return prefix_kept.T, ok & state.complete()


def well_formed(grammar: LatexGrammar, tokens: jax.Array, lengths: jax.Array) -> jax.Array:
  """``[B]`` bool: whether each row of ``tokens [B, L]`` (``lengths [B]``) is well-formed."""
  return parse(grammar, tokens, lengths)[1]


def _expand(mask: jax.Array, like: jax.Array) -> jax.Array:
  return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


# --- prefix hashing -----------------------------------------------------------

# Two independent 32-bit lanes: a 64-bit hash of the prefix, so that two
# different prefixes practically never meet.
_HASH_SEEDS = np.array([0x243F6A88, 0x85A308D3], np.uint32)
_HASH_MULTIPLIERS = np.array([0x9E3779B1, 0xC2B2AE35], np.uint32)


def _extend_hash(prefix_hash: jax.Array, token: jax.Array) -> jax.Array:
  """``[..., 2]`` uint32 hash of ``prefix + [token]`` (murmur3 finaliser per lane)."""
  token = (token.astype(jnp.uint32) + jnp.uint32(1))[..., None]
  h = prefix_hash ^ (token * jnp.asarray(_HASH_MULTIPLIERS))
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


# --- beam search --------------------------------------------------------------


@flax.struct.dataclass
class _Beams:
  """The K hypotheses of one sequence, arrays ``[K, ...]``."""

  log_p_blank: jax.Array      # [K] log P(prefix, alignment ends in blank)
  log_p_nonblank: jax.Array   # [K] log P(prefix, alignment ends in its last token)
  length: jax.Array           # [K] int32
  last: jax.Array             # [K] int32, last token (-1 for the empty prefix)
  hash: jax.Array             # [K, 2] uint32
  parent_hash: jax.Array      # [K, 2] uint32, hash of the prefix minus its last token
  grammar: _GrammarState | None

  def total(self) -> jax.Array:
    return jnp.logaddexp(self.log_p_blank, self.log_p_nonblank)


def _search_one(log_probs, frame_paddings, grammar, *, beam_width, max_output_length,
                top_tokens, blank_id):
  """Prefix beam search of one sequence: ``log_probs [T, C]``, ``frame_paddings [T]``.

  ``top_tokens``: how many of the frame's most probable ordinary tokens (not
  blank, not structural when there is a grammar) extend the beams; ``None``:
  every token.
  """
  num_classes = log_probs.shape[-1]
  beams_index = jnp.arange(beam_width)
  neg_inf = jnp.float32(-jnp.inf)
  categories = None if grammar is None else grammar.categories[:num_classes]
  # Tokens scored on every frame whatever their probability (the grammar needs them).
  always = ()
  if grammar is not None and grammar.structural_ids is not None:
    always = tuple(i for i in grammar.structural_ids if i < num_classes)
  not_ordinary = np.zeros((num_classes,), bool)
  not_ordinary[[blank_id, *always]] = True

  empty_hash = jnp.broadcast_to(jnp.asarray(_HASH_SEEDS), (beam_width, 2))
  init = _Beams(
      # Only beam 0 (the empty prefix) is live at the start.
      log_p_blank=jnp.where(beams_index == 0, 0.0, neg_inf).astype(jnp.float32),
      log_p_nonblank=jnp.full((beam_width,), neg_inf),
      length=jnp.zeros((beam_width,), jnp.int32),
      last=jnp.full((beam_width,), -1, jnp.int32),
      hash=empty_hash,
      parent_hash=empty_hash,
      grammar=None if grammar is None else _GrammarState.initial((beam_width,), grammar.max_depth),
  )

  def step(beams: _Beams, inputs):
    frame, padded = inputs                                                  # [C], []
    total = beams.total()
    live = total > neg_inf
    last = jnp.maximum(beams.last, 0)

    # 1) The prefix stays the same: a blank, or a repeat of its last token.
    stay_blank = total + frame[blank_id]
    stay_nonblank = jnp.where(beams.length > 0, beams.log_p_nonblank + frame[last], neg_inf)

    # 2) Beam j may also be beam i extended by j's last token. The beams are
    # distinct, so there is at most one such i; find it by hash and fold the
    # extension into j instead of making a duplicate candidate.
    same = jnp.all(beams.parent_hash[:, None, :] == beams.hash[None, :, :], axis=-1)  # [j, i]
    same &= beams.length[None, :] == beams.length[:, None] - 1
    same &= live[None, :] & (live & (beams.length > 0))[:, None]
    has_parent = jnp.any(same, axis=1)
    parent = jnp.argmax(same, axis=1)
    from_parent = jnp.where(beams.last == beams.last[parent], beams.log_p_blank[parent],
                            total[parent]) + frame[last]
    stay_nonblank = jnp.where(has_parent, jnp.logaddexp(stay_nonblank, from_parent),
                              stay_nonblank)

    # 3) Extensions by a new token: [K, M] over the frame's candidate tokens.
    if top_tokens is None:
      tokens = jnp.arange(num_classes)
    else:
      _, tokens = jax.lax.top_k(jnp.where(not_ordinary, neg_inf, frame), top_tokens)
      tokens = jnp.concatenate([tokens, jnp.asarray(always, jnp.int32)])
    tokens_log_p = frame[tokens]
    extend = jnp.where(tokens[None, :] == beams.last[:, None], beams.log_p_blank[:, None],
                       total[:, None]) + tokens_log_p[None, :]
    # [i, m]: prefix i + tokens[m] is already a beam (merged above).
    existing = jnp.any((parent[None, None, :] == beams_index[:, None, None])
                       & (beams.last[None, None, :] == tokens[None, :, None])
                       & has_parent[None, None, :], axis=-1)
    forbidden = (tokens == blank_id)[None, :] | existing
    forbidden |= (beams.length >= max_output_length)[:, None]
    if beams.grammar is not None:
      forbidden |= ~beams.grammar.allowed(categories[tokens])
    extend = jnp.where(forbidden, neg_inf, extend)

    # 4) Keep the K best of the K stays and the K * M extensions.
    num_tokens = tokens.shape[0]
    candidates = jnp.concatenate([jnp.logaddexp(stay_blank, stay_nonblank), extend.reshape(-1)])
    _, chosen = jax.lax.top_k(candidates, beam_width)
    is_extension = chosen >= beam_width
    extension = jnp.maximum(chosen - beam_width, 0)
    source = jnp.where(is_extension, extension // num_tokens, chosen)
    token = jnp.where(is_extension, tokens[extension % num_tokens], -1)
    grammar_state = None
    if beams.grammar is not None:
      kept = jax.tree.map(lambda x: x[source], beams.grammar)
      extended = kept.step(categories[jnp.maximum(token, 0)])
      grammar_state = jax.tree.map(lambda e, k: jnp.where(_expand(is_extension, e), e, k),
                                   extended, kept)
    new = _Beams(
        log_p_blank=jnp.where(is_extension, neg_inf, stay_blank[source]),
        log_p_nonblank=jnp.where(is_extension, extend.reshape(-1)[extension],
                                 stay_nonblank[source]),
        length=beams.length[source] + is_extension,
        last=jnp.where(is_extension, token, beams.last[source]),
        hash=jnp.where(is_extension[:, None], _extend_hash(beams.hash[source], token),
                       beams.hash[source]),
        parent_hash=jnp.where(is_extension[:, None], beams.hash[source],
                              beams.parent_hash[source]),
        grammar=grammar_state,
    )
    # A padded frame changes nothing.
    new = jax.tree.map(lambda n, o: jnp.where(padded, o, n), new, beams)
    source = jnp.where(padded, beams_index, source)
    token = jnp.where(padded, -1, token)
    return new, (source, token)

  final, (sources, tokens) = jax.lax.scan(step, init, (log_probs, frame_paddings > 0.5))

  scores = final.total()
  if final.grammar is not None:
    # Hypotheses with something still open are dropped (score -inf), ranked
    # after every complete one.
    complete = final.grammar.complete()
    order = jnp.lexsort((-scores, ~complete))
    scores = jnp.where(complete, scores, neg_inf)
  else:
    order = jnp.argsort(-scores, stable=True)

  # Follow the back-pointers from the last frame to the first.
  def backtrack(beam, step_inputs):
    source, token = step_inputs
    return source[beam], token[beam]

  _, appended = jax.lax.scan(backtrack, order, (sources, tokens), reverse=True)  # [T, K]
  hypotheses, lengths = _compact(appended.T, appended.T >= 0, max_output_length)
  return hypotheses, lengths, scores[order]


@functools.partial(jax.jit, static_argnames=("beam_width", "max_output_length", "top_tokens",
                                             "blank_id"))
def beam_search(log_probs: jax.Array, frame_paddings: jax.Array, *, beam_width: int,
                max_output_length: int, top_tokens: int | None = None, blank_id: int = 0,
                grammar: LatexGrammar | None = None):
  """CTC prefix beam search, batched.

  Each hypothesis carries the log-probability of its label prefix split into
  alignments ending in a blank and in its last token; identical prefixes are
  merged (by a 64-bit prefix hash), so with a wide enough beam the score is the
  exact CTC log-probability of the label sequence, ``-optax.ctc_loss``.

  Cost per frame and sequence: ``K * M`` extension candidates plus ``K``
  stays, then one ``lax.top_k``. ``M`` is at most ``2K`` (plus the grammar's
  few structural tokens), fewer with ``top_tokens``. Capping at ``2K`` changes
  nothing: beam k's extensions rank as the frame's tokens do except for at
  most K - 1 tokens that are already beams and its own last token, so no token
  outside the frame's 2K best can reach the top K. Merging costs ``O(K^2)``
  hash comparisons; hypotheses are rebuilt from ``[T, K]`` back-pointers at
  the end, so no ``[K, L]`` prefix array is copied per frame.

  Args:
    log_probs: ``[B, T, C]`` log-probabilities or unnormalised logits
      (``log_softmax`` is applied inside; it leaves log-probabilities unchanged).
    frame_paddings: ``[B, T]``, 1.0 on padded frames; they do not change the answer.
    beam_width: ``K``, hypotheses kept per frame and returned.
    max_output_length: ``L``, longest hypothesis; longer extensions are pruned.
    top_tokens: if set below ``2K``, each frame extends the beams only by its
      ``top_tokens`` most probable non-blank tokens (with a grammar: plus the
      structural tokens ``{ } ^ _ \\frac \\sqrt [ ]``); an approximation that
      trades accuracy for speed. A prefix is still merged exactly with its
      parent's extension whatever the token.
    blank_id: the CTC blank class.
    grammar: if given, only prefixes of well-formed LaTeX are kept (see
      ``LatexGrammar``); finished hypotheses with an open structure get score
      ``-inf`` and come after the complete ones (so where no hypothesis is
      complete, the first is the most probable open one, scored ``-inf``).

  Returns:
    ``(tokens, lengths, scores)``: ``tokens`` ``[B, K, L]`` int32, left-aligned,
    padded with 0; ``lengths`` ``[B, K]`` int32; ``scores`` ``[B, K]`` float32
    log-probabilities, best first (``-inf`` for slots no hypothesis filled).
  """
  if log_probs.ndim != 3:
    raise ValueError(f"beam_search wants log_probs [B, T, C], got shape {log_probs.shape}.")
  if frame_paddings.shape != log_probs.shape[:2]:
    raise ValueError(f"frame_paddings {frame_paddings.shape} must be [B, T] = "
                     f"{log_probs.shape[:2]}.")
  num_classes = log_probs.shape[-1]
  if beam_width < 1 or max_output_length < 1:
    raise ValueError(f"beam_width ({beam_width}) and max_output_length ({max_output_length}) "
                     "must be >= 1.")
  if top_tokens is not None and top_tokens < 1:
    raise ValueError(f"top_tokens must be >= 1 or None, got {top_tokens}.")
  if grammar is not None and grammar.categories.shape[0] < num_classes:
    raise ValueError(f"The grammar knows {grammar.categories.shape[0]} classes but the model "
                     f"predicts {num_classes}; build it with LatexGrammar.from_vocab from the "
                     "model's vocabulary.")
  # Beam k's extensions by ordinary tokens rank as the frame's tokens do,
  # except at most K - 1 tokens that are already beams and its own last token
  # (scored lower); the grammar treats all ordinary tokens alike. So no
  # ordinary token outside the frame's 2K best can reach the top K.
  num_ordinary = num_classes - 1
  if grammar is None or grammar.structural_ids is not None:
    top_tokens = min(top_tokens or num_classes, 2 * beam_width)
    if grammar is not None:
      num_ordinary -= sum(i < num_classes and i != blank_id for i in grammar.structural_ids)
  if top_tokens is not None and top_tokens >= num_ordinary:
    top_tokens = None  # every token anyway
  log_probs = jax.nn.log_softmax(log_probs.astype(jnp.float32), axis=-1)
  search = functools.partial(_search_one, grammar=grammar, beam_width=beam_width,
                             max_output_length=max_output_length, top_tokens=top_tokens,
                             blank_id=blank_id)
  return jax.vmap(search)(log_probs, frame_paddings)


# --- helpers -------------------------------------------------------------------


def best_hypotheses(tokens, lengths) -> list[list[int]]:
  """Decoder arrays -> Python lists of ids, padding stripped.

  Args:
    tokens: ``[B, L]`` (greedy) or ``[B, K, L]`` (beam search; the best, k = 0,
      is taken).
    lengths: ``[B]`` or ``[B, K]`` to match.
  """
  tokens, lengths = np.asarray(tokens), np.asarray(lengths)
  if tokens.ndim == 3:
    tokens, lengths = tokens[:, 0], lengths[:, 0]
  if tokens.ndim != 2 or lengths.shape != tokens.shape[:1]:
    raise ValueError(f"best_hypotheses wants tokens [B, L] with lengths [B] (or [B, K, L] with "
                     f"[B, K]); got {tokens.shape} and {lengths.shape}.")
  return [row[:n].tolist() for row, n in zip(tokens, lengths)]
