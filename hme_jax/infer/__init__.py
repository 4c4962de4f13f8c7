"""Using a trained model: reading it back and exporting it (``saved_model``), recognising images
(``predict``: ``Recognizer``, ``hme-predict``) and the web app (``serve``, ``static/``,
``hme-serve``)."""
