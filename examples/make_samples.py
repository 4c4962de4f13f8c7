"""Writes the sample images of this folder: formulas rendered as fake handwriting.

  python examples/make_samples.py

Made by the project's own renderer (``tfds_crohme.crohme_synthetic.render``,
mathtext + pen strokes), not taken from CROHME; dark ink on white paper, as a
photographed or scanned formula is. The README reads them with the shipped model.
"""

import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# file name -> (CROHME tokens, render seed)
SAMPLES = {
    "formula.png": ("x ^ { 2 }", 2),
    "equation.png": ("x = 1", 3),
    "difference.png": ("x - 1", 3),
}


def main() -> None:
  from tfds_crohme.crohme_synthetic import render
  folder = os.path.dirname(os.path.abspath(__file__))
  for name, (tokens, seed) in SAMPLES.items():
    image = 255 - render.render_expression(tokens, np.random.default_rng(seed))
    Image.fromarray(image).save(os.path.join(folder, name), optimize=True)
    print(f"{name}: {tokens}")


if __name__ == "__main__":
  main()
