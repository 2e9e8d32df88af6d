"""recall_frontier.png: val_acc per seed group against KV bytes per token, only for runs that measured recall."""

from __future__ import annotations

from pathlib import Path

import pytest

from attention_lab.analysis.recall import RECALL_FRONTIER, frontier_points, write_recall_plots
from attention_lab.analysis.runs import OK, Group, Run


def _group(variant: str, pairs: int | None, cache: int, accs: list[float | None]) -> Group:
    runs = [
        Run(Path(f"/runs/{variant}-{pairs}-{i}"), OK, metrics={"kv_cache_bytes_per_token": cache, "val_acc": acc})
        for i, acc in enumerate(accs)
    ]
    knobs = {} if pairs is None else {"data.num_pairs": pairs}
    return Group(variant=variant, knobs=knobs, runs=runs, label=variant)


def test_points_are_seed_means_with_their_std_and_cache() -> None:
    points = frontier_points([_group("multihead", 4, 2048, [0.8, 0.9, 1.0]), _group("linear", 4, 0, [0.2, None])])
    assert points[0] == {"variant": "multihead", "pairs": 4, "bytes": 2048, "acc": pytest.approx(0.9),
                         "std": pytest.approx(0.1), "n": 3}  # fmt: skip
    assert points[1]["acc"] == 0.2 and points[1]["std"] is None and points[1]["n"] == 1


def test_the_frontier_is_drawn_with_a_constant_state_variant_and_panels_per_pairs(tmp_path: Path) -> None:
    groups = [
        _group(variant, pairs, cache, [acc, acc + 0.05])
        for pairs in (2, 4)
        for variant, cache, acc in [("multihead", 1024, 0.9), ("mqa", 256, 0.7), ("linear", 0, 0.3)]
    ]
    written = write_recall_plots(groups, tmp_path)
    assert written == {RECALL_FRONTIER: tmp_path / RECALL_FRONTIER}
    assert (tmp_path / RECALL_FRONTIER).stat().st_size > 10_000


def test_no_plot_without_accuracy_and_a_stale_one_is_removed(tmp_path: Path) -> None:
    (tmp_path / RECALL_FRONTIER).write_bytes(b"old")
    text_groups = [_group("multihead", None, 1024, [None, None])]
    assert write_recall_plots(text_groups, tmp_path) == {}
    assert not (tmp_path / RECALL_FRONTIER).exists()
