"""hme-jax: handwritten mathematical expressions (images) to LaTeX, in JAX/Flax.

  import hme_jax
  hme_jax.Recognizer.pretrained()("formula.png")   # -> "x ^ { 2 } + 1"
"""

__all__ = ["Recognizer"]


def __getattr__(name):
  # Lazily, so that importing a submodule (the data builders, the configs) does not load JAX.
  if name == "Recognizer":
    from hme_jax.infer.predict import Recognizer
    return Recognizer
  raise AttributeError(f"module 'hme_jax' has no attribute {name!r}")
