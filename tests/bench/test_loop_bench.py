"""The loop-overhead benchmark: Lightning's Trainer.fit against a hand loop, run end to end on tiny settings
(2 timed steps at batch 2: about a second, so it is not marked slow)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from attention_lab.cli.bench import main


@pytest.mark.parametrize(("extra", "flag"), [(["--steps", "0"], "--steps"), (["--batch-size", "-2"], "--batch-size")])
def test_bad_options_exit_2_before_anything_runs(
    extra: list[str], flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["loop", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and flag in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_loop_benchmark_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATTENTION_LAB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "results"
    argv = ["loop", "--repeats", "2", "--warmup", "1", "--steps", "2", "--batch-size", "2", "--out", str(out)]
    assert main(argv) == 0
    result = json.loads((out / "loop_overhead.json").read_text())
    assert len(result["hand_tokens_per_sec"]) == len(result["lightning_tokens_per_sec"]) == 2
    assert all(v > 0 for v in result["hand_tokens_per_sec"] + result["lightning_tokens_per_sec"])
    assert result["median_ratio"] > 0 and len(result["ratio_per_pair"]) == 2
    assert result["timed_steps"] == 2 and result["model"]["batch_size"] == 2
    assert result["machine"]["cpu_count"] == os.cpu_count()  # the shared machine description
    assert result["command"] == "attention-lab bench " + " ".join(argv)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "results"]  # TensorBoard logs went to a temp dir
