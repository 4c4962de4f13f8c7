"""The token vocabulary: one mapping between LaTeX tokens and integer ids.

Layout of the ids (stable across model families, so a CTC and a seq2seq model
trained on the same data agree on every token id):

  0                      the CTC blank (also the padding value of label arrays)
  1 .. N                 the N training tokens, sorted
  N+1 .. N+S             optional specials for sequence-to-sequence decoders
                         (e.g. ``<sos>``, ``<eos>``), appended so CTC ids never move

On CROHME, N = 109, so a CTC model has 110 classes.

The vocabulary is built once from the training captions, saved as ``vocab.json``
(beside the prepared data and in every checkpoint) and always loaded from there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

BLANK = "<blank>"
UNKNOWN = "<unknown>"  # a reference token outside the vocabulary (``encode(allow_unknown=True)``)
FORMAT = "hme_jax.vocab/v1"
FILENAME = "vocab.json"


class UnknownTokenError(ValueError):
  """A caption holds a token that is not in the vocabulary."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Maps tokens to ids and back; see the module docstring for the id layout."""

  tokens: tuple[str, ...]
  specials: tuple[str, ...] = ()

  def __post_init__(self):
    entries = self.entries
    if len(set(entries)) != len(entries):
      raise ValueError(f"Vocabulary has duplicate entries: {entries}")
    object.__setattr__(self, "_index", {t: i for i, t in enumerate(entries)})

  # --- construction ---------------------------------------------------------

  @classmethod
  def from_captions(cls, captions: Iterable[str]) -> "Vocabulary":
    """Builds the vocabulary from space-separated token strings."""
    tokens = set()
    for caption in captions:
      tokens.update(caption.split())
    tokens.discard(BLANK)
    return cls(tuple(sorted(tokens)))

  def with_specials(self, specials: Sequence[str]) -> "Vocabulary":
    """The same vocabulary with seq2seq specials appended after the tokens."""
    return Vocabulary(self.tokens, tuple(specials))

  # --- properties -----------------------------------------------------------

  @property
  def entries(self) -> tuple[str, ...]:
    return (BLANK, *self.tokens, *self.specials)

  @property
  def blank_id(self) -> int:
    return 0

  @property
  def num_tokens(self) -> int:
    """Number of real LaTeX tokens (109 on CROHME)."""
    return len(self.tokens)

  def __len__(self) -> int:
    """Number of classes a model predicts (110 on CROHME for CTC)."""
    return len(self.entries)

  def __contains__(self, token: str) -> bool:
    return token in self._index

  def id_of(self, token: str) -> int:
    """The id of one entry (a token or a special)."""
    try:
      return self._index[token]
    except KeyError:
      raise UnknownTokenError(f"{token!r} is not in the vocabulary") from None

  # --- encode / decode ------------------------------------------------------

  def encode(self, caption: str | Sequence[str], sample_id: str | None = None, *,
             allow_unknown: bool = False) -> np.ndarray:
    """Token string (or token list) -> int32 ids ``[L]``.

    ``allow_unknown``: a token outside the vocabulary becomes id 0, the blank,
    which no decoder emits (an evaluation reference that no prediction matches;
    ``decode_reference`` shows it as ``UNKNOWN``) instead of an error.

    Raises:
      UnknownTokenError: naming the token and the sample, for a token that the
        training captions never had (unless ``allow_unknown``).
    """
    tokens = caption.split() if isinstance(caption, str) else list(caption)
    ids = np.empty(len(tokens), np.int32)
    for position, token in enumerate(tokens):
      index = self._index.get(token)
      if index is None or index == 0:
        if allow_unknown:
          ids[position] = 0
          continue
        where = f" in sample {sample_id!r}" if sample_id is not None else ""
        raise UnknownTokenError(
            f"Unknown token {token!r}{where} (position {position}). The vocabulary "
            f"holds the {self.num_tokens} tokens of the training captions; normalise "
            "the LaTeX with hme_jax.text.latex.normalize() or rebuild the vocabulary "
            "from data that contains this token.")
      ids[position] = index
    return ids

  def decode(self, ids: Iterable[int]) -> list[str]:
    """Ids -> tokens, dropping blanks and specials (padding is the blank)."""
    first_special = 1 + self.num_tokens
    return [self.tokens[i - 1] for i in map(int, ids) if 0 < i < first_special]

  def decode_reference(self, ids: Iterable[int]) -> list[str]:
    """Reference label ids -> tokens; 0 (a token outside the vocabulary: ``encode``) is UNKNOWN."""
    return [UNKNOWN if i == 0 else self.entries[i] for i in map(int, ids)]

  def unknown_tokens(self, caption: str | Sequence[str]) -> list[str]:
    """The tokens of ``caption`` outside the vocabulary, in order."""
    tokens = caption.split() if isinstance(caption, str) else list(caption)
    return [token for token in tokens if self._index.get(token, 0) == 0]

  def to_latex(self, ids: Iterable[int]) -> str:
    """Ids -> space-separated token string in the CROHME convention."""
    return " ".join(self.decode(ids))

  # --- files ----------------------------------------------------------------

  def to_json(self) -> dict:
    return {"format": FORMAT, "tokens": list(self.tokens), "specials": list(self.specials)}

  @classmethod
  def from_json(cls, data: dict) -> "Vocabulary":
    if data.get("format") != FORMAT:
      raise ValueError(f"Not a vocabulary file of format {FORMAT!r}: {str(data)[:200]}")
    return cls(tuple(data["tokens"]), tuple(data.get("specials", ())))

  def save(self, path: str | os.PathLike) -> None:
    """Writes ``vocab.json`` (``path`` may be a directory or a file)."""
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, FILENAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.to_json(), f, indent=1)
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "Vocabulary":
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, FILENAME)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"No vocabulary at {path}. It is written when the dataset is prepared "
          "(tfds build) and saved in every checkpoint.")
    with open(path) as f:
      return cls.from_json(json.load(f))

  def fingerprint(self) -> str:
    """A short stable hash, to tell vocabularies apart in checkpoints."""
    import hashlib
    return hashlib.sha256("\n".join(self.entries).encode()).hexdigest()[:16]
