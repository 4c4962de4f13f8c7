"""The `crohme` TFDS dataset (CROHME in the CoMER data.zip layout)."""
