"""attention-lab: compare attention mechanisms inside a small GPT."""

__version__ = "0.1.0"
