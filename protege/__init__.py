"""protege: distil a large teacher LLM into a small, fast seq2seq student for one task."""

__version__ = "0.1.0"
