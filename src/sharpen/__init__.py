"""sharpen: search over reasoning steps, score them, train on what the search found, repeat."""

__version__ = "0.1.0"
