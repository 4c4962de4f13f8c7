"""The `crohme_synthetic` TFDS dataset and its expression grammar and renderer."""
