"""Comparing finished runs from the files they wrote: tables (markdown, CSV) and plots, no model code needed.

runs (finding and reading run folders) -> grouping (what differs, labels, seed groups) -> tables, plots;
report ties them together for the `compare` command.
"""

from .report import Report, compare_runs
from .runs import CompareError

__all__ = ["CompareError", "Report", "compare_runs"]
