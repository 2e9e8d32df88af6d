"""What every benchmark shares: the clock and its summary, the interleaving, the machine description and the
rule that a run without --out gets a folder of its own."""

from __future__ import annotations

import ast
import datetime as dt
import os
import time
from pathlib import Path

import pytest
import torch

from attention_lab.bench import results
from attention_lab.bench.machine import describe_machine, finish_machine
from attention_lab.bench.results import OUTPUTS_ENV, new_output_dir, output_dir
from attention_lab.bench.timing import round_robin, summarize, timed
from attention_lab.errors import UserError


def test_timed_returns_the_result_and_the_wall_time() -> None:
    value, seconds = timed(lambda: time.sleep(0.02) or 42, torch.device("cpu"))
    assert value == 42
    assert 0.015 < seconds < 1.0


def test_summarize_in_milliseconds() -> None:
    s = summarize([0.001, 0.002, 0.003, 0.004, 0.100])  # one outlier
    assert s["median"] == pytest.approx(3.0) and s["min"] == pytest.approx(1.0) and s["n"] == 5
    assert s["iqr"] == pytest.approx(s["p75"] - s["p25"]) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        summarize([])


def test_round_robin_starts_each_round_with_the_next_item() -> None:
    rounds = list(round_robin(["a", "b", "c"], 4))
    assert [index for index, _ in rounds] == [0, 1, 2, 3]
    assert [order for _, order in rounds] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    firsts = [order[0] for _, order in round_robin(["hand", "lightning"], 4)]
    assert firsts == ["hand", "lightning", "hand", "lightning"]
    assert list(round_robin([], 2)) == [(0, []), (1, [])]


def test_machine_description_has_the_facts_that_explain_a_number() -> None:
    machine = describe_machine("cpu", "float32")
    assert machine["cpu_count"] == os.cpu_count()
    assert machine["torch_threads"] == torch.get_num_threads()
    assert machine["torch"] == torch.__version__ and machine["device"] == "cpu" and machine["dtype"] == "float32"
    for key in ("platform", "processor", "cpu_model", "python", "device_name", "date_utc"):
        assert machine[key], key
    if hasattr(os, "getloadavg"):
        assert len(machine["load_average_start"]) == 3 and "load_average_end" not in machine
        assert len(finish_machine(machine)["load_average_end"]) == 3
    assert "dtype" not in describe_machine("cpu")


def test_two_folders_in_the_same_second_differ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    now = dt.datetime(2025, 1, 2, 3, 4, 5)
    first, second = new_output_dir("attention", now), new_output_dir("attention", now)
    assert first != second and first.is_dir() and second.is_dir()
    assert first.parent == second.parent == Path("outputs", "bench", "attention")
    assert first.name.startswith("2025-01-02_03-04-05-") and second.name.startswith("2025-01-02_03-04-05-")


def test_a_taken_name_is_never_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even if the random suffix repeats, the folder is created exclusively and another name is drawn."""
    monkeypatch.setenv(OUTPUTS_ENV, str(tmp_path / "out"))
    suffixes = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(results.secrets, "token_hex", lambda n: next(suffixes))
    now = dt.datetime(2025, 1, 2, 3, 4, 5)
    first = new_output_dir("loop", now)
    (first / "loop_overhead.json").write_text("{}")
    second = new_output_dir("loop", now)
    assert first.name == "2025-01-02_03-04-05-aaaaaa" and second.name == "2025-01-02_03-04-05-bbbbbb"
    assert first.parent == tmp_path / "out" / "bench" / "loop"
    assert (first / "loop_overhead.json").read_text() == "{}" and list(second.iterdir()) == []


def test_an_explicit_out_is_used_as_given(tmp_path: Path) -> None:
    assert output_dir(tmp_path / "a" / "b", "generation") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"--out .* is a file"):
        output_dir(tmp_path / "file", "generation")
    with pytest.raises(UserError, match="looks like a file"):
        output_dir(tmp_path / "generation.json", "generation")


def test_bench_never_imports_the_command_line_or_a_script() -> None:
    """Imports flow one way: cli -> bench -> (attention, model, sampling, data, training, ...)."""
    package = Path(results.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.lstrip(".").split(".")
                assert "cli" not in parts and "scripts" not in parts, f"{path.name} imports {name}"
