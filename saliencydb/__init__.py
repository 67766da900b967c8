"""saliencydb: a database of parameter-space saliency profiles."""

__version__ = "0.1.0"
