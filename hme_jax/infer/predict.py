"""Reads LaTeX off images people actually have.

  python -m hme_jax.infer.predict IMAGE...                  # the model shipped in the package
  python -m hme_jax.infer.predict --workdir DIR IMAGE... [--json] [--render out.png]

PNG/JPEG/BMP (anything Pillow decodes), any size, colour or greyscale, dark
ink on light paper or the reverse, photographed, scanned or drawn: the paper,
uneven light and ruling are removed, the polarity detected, the ink cropped and
brought to the training data's stroke width and symbol size, then resized
exactly as in training (``preprocessing.normalise`` and ``fit_image``).
``--show-input out.png`` writes what the model read. A file that cannot be read
is reported and the rest of the batch still runs.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from hme_jax.data import input_pipeline, preprocessing
from hme_jax.infer import saved_model

DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
  """The input is not a usable image."""


def load_image(data, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Bytes, a path, a PIL image or an array -> greyscale ``uint8 [H, W]`` (polarity as given).

  The content is checked by decoding it, never by the file name. Transparent
  pixels count as paper (white), as a drawing on a transparent canvas means.

  Raises:
    ImageError: empty input, a non-image, or more than ``max_pixels`` pixels.
  """
  if isinstance(data, np.ndarray):
    image = Image.fromarray(data)
  elif isinstance(data, Image.Image):
    image = data
  else:
    if isinstance(data, (str, os.PathLike)):
      with open(data, "rb") as f:
        data = f.read()
    if not data:
      raise ImageError("The image is empty (0 bytes).")
    try:
      image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
      raise ImageError("Not an image: Pillow cannot identify the data as PNG, JPEG, BMP, "
                       "or another image format.") from None
  width, height = image.size
  if width * height > max_pixels:
    raise ImageError(f"The image has {width}x{height} = {width * height:,} pixels, more than "
                     f"the limit of {max_pixels:,}.")
  if width == 0 or height == 0:
    raise ImageError(f"The image has no pixels ({width}x{height}).")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
      return np.asarray(image.convert("L"))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as error:
    raise ImageError(f"The image cannot be decoded: {error}") from None


class NoInkError(ImageError):
  """The image holds no ink to read (blank, one colour, or only faint specks)."""


def prepare_image(gray: np.ndarray, input_config,
                  statistics: preprocessing.InkStatistics = preprocessing.CROHME_TRAIN
                  ) -> np.ndarray:
  """Greyscale ``uint8 [H, W]`` of either polarity -> the model's ``uint8 [h, w]``
  (``preprocessing.normalise`` to the training data's ``statistics``, then ``fit_image``:
  ``preprocessing.model_input``).

  Raises:
    NoInkError: nothing in the image stands out of the paper.
  """
  try:
    return preprocessing.model_input(gray, input_config, statistics)
  except preprocessing.NoInkError as error:
    raise NoInkError(str(error)) from None


@dataclasses.dataclass
class Recognition:
  latex: str                              # space-separated CROHME tokens
  alternatives: list[tuple[str, float]]   # (latex, log-probability), best first
  tokens: list[str]
  model_input: np.ndarray | None = None   # uint8 [h, w]: the image the model read


class Recognizer:
  """A trained model ready to read images; load once, call many times.

    recognizer = Recognizer.pretrained()        # the model shipped in the package
    recognizer("formula.png")                   # -> "x ^ { 2 } + 1"
    recognizer(["a.png", "b.jpg", pil_image])   # -> a list, read in batches

  ``decoder``, ``beam_width`` and ``well_formed`` default to the model's own
  ``config.eval`` (the shipped model's were chosen by measurement). Not
  thread-safe: serialise calls (the web app queues them).
  """

  def __init__(self, model: saved_model.LoadedModel, decoder: str | None = None,
               beam_width: int | None = None, well_formed: bool | None = None):
    self.model = model
    evaluation_config = model.config.eval
    self.decoder = decoder or evaluation_config.decoder
    self.beam_width = beam_width or evaluation_config.beam_width
    self.well_formed = (evaluation_config.get("well_formed", False) if well_formed is None
                        else well_formed)
    self.batch_size = max(int(evaluation_config.batch_size), 1)
    self.input_config = model.config.input
    self.statistics = preprocessing.InkStatistics.from_config(model.config)

  @classmethod
  def from_workdir(cls, workdir: str, *, checkpoint: str = "best", decoder: str | None = None,
                   beam_width: int | None = None,
                   well_formed: bool | None = None) -> "Recognizer":
    """A work dir's checkpoint, or an exported model directory (``hme_jax.infer.saved_model``)."""
    return cls(saved_model.LoadedModel(workdir, checkpoint), decoder, beam_width, well_formed)

  @classmethod
  def pretrained(cls, name: str = saved_model.PRETRAINED_NAME, **kwargs) -> "Recognizer":
    """The model shipped in the package (trained on CROHME; research use, as the data)."""
    return cls.from_workdir(saved_model.pretrained_path(name), **kwargs)

  def __call__(self, images):
    """One image (path, bytes, PIL image or array) -> its LaTeX; a list -> a list of LaTeX."""
    if isinstance(images, (list, tuple)):
      return [r.latex for r in self.recognize(images)]
    return self.recognize([images])[0].latex

  def prepare(self, image) -> np.ndarray:
    """Any image input -> the model's ``uint8 [h, w]`` (raises ImageError, NoInkError)."""
    return prepare_image(load_image(image), self.input_config, self.statistics)

  def recognize(self, images) -> list[Recognition]:
    """Images (paths, bytes, PIL images or arrays, any polarity) -> one Recognition each.

    Each image is read and prepared on its own (only the small prepared
    images are kept), then decoded in batches (``recognize_prepared``).

    Raises:
      ImageError: an image cannot be read, or is blank (NoInkError); the message
        gives its position in the list.
    """
    prepared = []
    for index, image in enumerate(images):
      try:
        prepared.append(self.prepare(image))
      except ImageError as error:
        raise type(error)(f"Image {index}: {error}" if len(images) > 1 else str(error)) from None
    return self.recognize_prepared(prepared)

  def recognize_prepared(self, images: list[np.ndarray]) -> list[Recognition]:
    """Images already through ``prepare`` -> one Recognition each, decoded in batches of
    ``config.eval.batch_size`` so that a long list streams."""
    results = []
    for start in range(0, len(images), self.batch_size):
      results += self._decode_batch(images[start:start + self.batch_size])
    return results

  def _decode_batch(self, images: list[np.ndarray]) -> list[Recognition]:
    examples = [{"image": image, "labels": np.zeros(0, np.int32), "id": str(index),
                 "ctc_feasible": True} for index, image in enumerate(images)]
    # Power-of-two batch sizes keep the number of compilations small.
    batch_size = 1 << (len(examples) - 1).bit_length()
    batch_size = max(batch_size, len(self.model.mesh.devices.flat))
    batch = input_pipeline.PadBatch(batch_size, input_pipeline.BatchShapes.from_config(
        self.input_config))(examples)
    predictions, _ = self.model.decode([batch], decoder=self.decoder, beam_width=self.beam_width,
                                       well_formed=self.well_formed,
                                       num_alternatives=self.beam_width)
    results = []
    for prediction, image in zip(predictions, images):
      latex = " ".join(prediction.prediction)
      alternatives = [(" ".join(tokens), score) for tokens, score in prediction.alternatives or []
                      if np.isfinite(score)]
      results.append(Recognition(latex=latex, alternatives=alternatives or [(latex, 0.0)],
                                 tokens=prediction.prediction, model_input=image))
    return results


def render(path: str, images: list[np.ndarray], latex_strings: list[str]) -> None:
  """Draws each input beside its predicted LaTeX (rendered with mathtext) into one PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from hme_jax.text import latex

  rows = len(images)
  figure, axes = plt.subplots(rows, 2, figsize=(10, 1.6 * rows), squeeze=False)
  for (image_axis, text_axis), image, prediction in zip(axes, images, latex_strings):
    image_axis.imshow(image, cmap="gray")
    image_axis.axis("off")
    text_axis.axis("off")
    try:
      text_axis.text(0.0, 0.5, latex.to_mathtext(prediction.split()), fontsize=18, va="center")
      figure.canvas.draw()
    except ValueError:  # mathtext cannot parse it: show the raw tokens
      text_axis.texts[-1].remove()
      text_axis.text(0.0, 0.5, prediction, fontsize=11, va="center", family="monospace")
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def show_inputs(path: str, images: list[np.ndarray], gap: int = 4) -> None:
  """Writes the model's inputs (white ink on black, as it reads them) stacked top to bottom,
  ``gap`` grey rows apart, into one PNG."""
  width = max(image.shape[1] for image in images)
  rows = []
  for image in images:
    rows += [np.pad(image, ((0, 0), (0, width - image.shape[1]))),
             np.full((gap, width), 128, np.uint8)]
  Image.fromarray(np.concatenate(rows[:-1])).save(path)


# --- command line ----------------------------------------------------------------


def add_model_arguments(parser) -> None:
  """The flags that pick a model and its decoder (``predict`` and ``hme-serve``)."""
  parser.add_argument("--workdir", default="",
                      help="Work dir (or exported model) of a trained model; default: the model "
                      "shipped in the package.")
  parser.add_argument("--checkpoint", default="best", help="best | latest | a step number.")
  parser.add_argument("--decoder", default=None, choices=("greedy", "beam"),
                      help="Default: the model's config.eval.decoder.")
  parser.add_argument("--beam_width", "--beam-width", type=int, default=None)


def main(argv=None) -> int:
  import argparse
  parser = argparse.ArgumentParser(prog="python -m hme_jax.infer.predict", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  add_model_arguments(parser)
  parser.add_argument("--json", action="store_true", help="Print JSON instead of LaTeX lines.")
  parser.add_argument("--render", default="", help="Write a PNG of inputs beside predictions.")
  parser.add_argument("--show-input", "--show_input", default="",
                      help="Write a PNG of what the model read: each image normalised and "
                      "resized (white ink on black), top to bottom in the order given.")
  parser.add_argument("images", nargs="+", help="Image files.")
  args = parser.parse_args(argv)

  try:
    recognizer = Recognizer.from_workdir(args.workdir or saved_model.pretrained_path(),
                                         checkpoint=args.checkpoint, decoder=args.decoder,
                                         beam_width=args.beam_width)
  except FileNotFoundError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2

  originals, prepared, errors = {}, {}, {}
  for path in args.images:
    try:
      originals[path] = load_image(path)
      prepared[path] = prepare_image(originals[path], recognizer.input_config,
                                     recognizer.statistics)
    except (ImageError, OSError) as error:
      errors[path] = str(error)
      print(f"{path}: error: {error}", file=sys.stderr)
  recognitions = dict(zip(prepared, recognizer.recognize_prepared(list(prepared.values()))))

  if args.json:
    records = [{"file": path, "latex": recognitions[path].latex,
                "alternatives": [{"latex": l, "score": s} for l, s in recognitions[path].alternatives]}
               if path in recognitions else {"file": path, "error": errors[path]}
               for path in args.images]
    print(json.dumps(records, indent=1))
  else:
    for path, recognition in recognitions.items():
      print(recognition.latex if len(args.images) == 1 else f"{path}\t{recognition.latex}")
  if args.render and recognitions:
    render(args.render, [originals[path] for path in recognitions], [r.latex for r in recognitions.values()])
    print(f"Rendered to {args.render}", file=sys.stderr)
  if args.show_input and prepared:
    show_inputs(args.show_input, list(prepared.values()))
    print(f"Model inputs written to {args.show_input}", file=sys.stderr)
  return 1 if errors else 0


def run():
  sys.exit(main())


if __name__ == "__main__":
  run()
