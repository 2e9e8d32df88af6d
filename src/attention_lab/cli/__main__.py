"""`python -m attention_lab.cli <command> ...`: the same as the `attention-lab` console script."""

from . import entry_point

entry_point()
