"""Scoring: the metrics (``metrics``), decoding a dataset with a family (``decode``, shared
with the trainer) and the test-split report (``evaluate``, ``hme-evaluate``)."""
