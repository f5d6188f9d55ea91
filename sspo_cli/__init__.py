"""sspo: an experiment runner for RL of language models with group-based policy objectives."""

__version__ = "0.1.0"
