"""Training: the loop (``trainer``), a work dir's Orbax checkpoints (``checkpoints``) and the
command line (``main``, ``train.py`` and ``hme-train``)."""
