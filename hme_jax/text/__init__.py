"""LaTeX as text, no images and no JAX: the token vocabulary (``vocab``), the normaliser and
cleaner (``latex``) and the one grammar of well-formed LaTeX (``grammar``)."""
