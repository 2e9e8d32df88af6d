"""Timing shared by the benchmarks: one clock, one summary, one way of interleaving the contenders.

The machines these benchmarks run on are shared and noisy. Three rules keep the numbers comparable, and they
live here so that every benchmark follows the same ones:
- `timed`: `time.perf_counter` around the call, with the device synchronised before and after, so queued GPU
  work is neither charged to the next call nor left out of this one;
- `summarize`: medians and interquartile ranges, which a burst of load moves far less than a mean;
- `round_robin`: all contenders run once per round, a different one first each round, so a burst of load
  hits them alike instead of ruining one contender's numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import torch

from ..devices import synchronize

T = TypeVar("T")


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """Call fn(); return its result and the wall seconds it took, `device` synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, interquartile range (with its quartiles), minimum, all in milliseconds, and the count n."""
    if len(seconds) == 0:
        raise ValueError("summarize needs at least one timing")
    ms = np.asarray(seconds, dtype=float) * 1e3
    p25, p50, p75 = np.percentile(ms, [25, 50, 75])
    return {
        "median": float(p50),
        "iqr": float(p75 - p25),
        "p25": float(p25),
        "p75": float(p75),
        "min": float(ms.min()),
        "n": len(ms),
    }


def round_robin(items: Sequence[T], rounds: int) -> Iterator[tuple[int, list[T]]]:
    """(round index, order) for `rounds` rounds; round r runs every item, starting at item r mod len(items).

    >>> [order for _, order in round_robin("abc", 4)]
    [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
    """
    items = list(items)
    for index in range(rounds):
        shift = index % max(1, len(items))
        yield index, items[shift:] + items[:shift]
