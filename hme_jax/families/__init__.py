"""Model families: a Flax model with its loss and decoders behind one interface.

``registry`` holds the interface, the CTC family and ``FAMILIES`` keyed by
``config.model.name``; ``ctc_decoding`` the CTC decoders and grammar constraint;
``seq2seq`` the attention encoder-decoder family."""
