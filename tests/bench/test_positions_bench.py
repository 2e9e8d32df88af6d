"""The position-scheme benchmark on tiny settings (1 layer, T=16, 1 round): a row for every supported
(variant, scheme, length), the refused pair recorded with the registry's reason, ratios taken within a round,
what SDPA is handed per scheme; and the command line: files with --out, a new folder without it (never the
committed results), one-line errors for bad settings."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from attention_lab.attention.positions import POSITIONS
from attention_lab.bench import positions
from attention_lab.bench.positions import DEFAULT_VARIANTS, PositionsBenchmark, format_positions, run_positions
from attention_lab.bench.results import OUTPUTS_ENV
from attention_lab.cli.bench import main
from attention_lab.errors import UserError

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
D_MODEL, T = 32, 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the tensors are tiny, and on a busy shared 2-core machine a second OpenMP thread
    waiting for a core makes them far slower; the numbers here only need to exist."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides: Any) -> PositionsBenchmark:
    settings = {"lengths": [T], "n_layers": 1, "d_model": D_MODEL, "batch": 2, "repeats": 1, "warmup": 0}
    return PositionsBenchmark(**{**settings, **overrides})


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return run_positions(tiny(), command="test")


def rows_by_key(result: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["variant"], r["scheme"], r["T"]): r for r in result["rows"]}


def test_a_row_for_every_supported_variant_scheme_and_length(result: dict[str, Any]) -> None:
    rows = rows_by_key(result)
    every = {(v, s, T) for v in DEFAULT_VARIANTS for s in POSITIONS}
    assert set(rows) == every and len(result["rows"]) == len(every) == 25
    measured = {key for key, r in rows.items() if r["status"] == "ok"}
    assert measured == every - {("linear", "alibi", T)}
    for key in measured:
        assert rows[key]["ms_per_step"]["n"] == 1 and rows[key]["ms_per_step"]["median"] > 0, key
        assert rows[key]["ratio_to_none"] > 0 and len(rows[key]["ratio_per_round"]) == 1, key


def test_linear_with_alibi_is_skipped_with_the_registry_reason(result: dict[str, Any]) -> None:
    row = rows_by_key(result)["linear", "alibi", T]
    assert row["status"] == "skipped" and "ms_per_step" not in row
    assert row["reason"].startswith("attention=linear does not support model.position=alibi")
    assert "no score matrix" in row["reason"]
    assert "alibi" not in result["models"]["linear"]["params"]


def test_none_against_itself_is_exactly_one(result: dict[str, Any]) -> None:
    rows = rows_by_key(result)
    for variant in DEFAULT_VARIANTS:
        none = rows[variant, "none", T]
        assert none["ratio_to_none"] == 1.0 and none["ratio_per_round"] == [1.0], variant
        assert none["ratio_p25"] == none["ratio_p75"] == 1.0


def test_with_one_round_the_ratio_is_the_ratio_of_the_two_step_times(result: dict[str, Any]) -> None:
    rows = rows_by_key(result)
    rope, none = rows["gqa", "rope", T], rows["gqa", "none", T]
    expected = rope["ms_per_step"]["median"] / none["ms_per_step"]["median"]
    assert rope["ratio_to_none"] == pytest.approx(expected, rel=1e-9)


def test_what_sdpa_is_handed_per_scheme(result: dict[str, Any]) -> None:
    """alibi turns the SDPA call into a float mask (no is_causal); a window needs a mask anyway."""
    rows = rows_by_key(result)
    assert {s: rows["sdpa", s, T]["sdpa_mask"] for s in POSITIONS} == {
        "learned": "is_causal",
        "sinusoidal": "is_causal",
        "rope": "is_causal",
        "alibi": "float mask",
        "none": "is_causal",
    }
    assert rows["gqa", "alibi", T]["sdpa_mask"] == "float mask"
    assert rows["sliding_window", "none", T]["sdpa_mask"] == "bool mask"
    assert rows["sliding_window", "alibi", T]["sdpa_mask"] == "float mask"
    assert rows["multihead", "alibi", T]["sdpa_mask"] is None and rows["linear", "rope", T]["sdpa_mask"] is None


def test_models_config_and_machine_are_recorded(result: dict[str, Any]) -> None:
    sdpa = result["models"]["sdpa"]
    assert sdpa["kernel"] == "sdpa" and result["models"]["multihead"]["kernel"] == "explicit"
    assert sdpa["params"]["learned"] - sdpa["params"]["none"] == T * D_MODEL  # the learned table, T rows
    assert sdpa["params"]["rope"] == sdpa["params"]["alibi"] == sdpa["params"]["none"]
    assert result["models"]["gqa"]["attention"]["num_kv_heads"] == 2
    assert result["config"]["n_layers"] == 1 and result["config"]["schemes"] == list(POSITIONS)
    machine = result["machine"]
    assert machine["torch_threads"] == 1 and machine["device"] == "cpu" and machine["dtype"] == "float32"
    assert set(machine["load_average_by_length"]) == {str(T)} and machine["total_seconds"] >= 0
    assert result["command"] == "test"


def test_the_baseline_is_always_measured() -> None:
    spec = tiny(variants=["sdpa"], schemes=["rope"])
    positions.check_spec(spec)
    assert spec.schemes == ["rope", "none"]


def test_schemes_of_a_variant_run_back_to_back_and_ratios_are_taken_within_a_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fake clock: each scheme costs a fixed multiple of `none`, and the load grows 3x every round. The
    per-round ratios stay exact; the step times do not."""
    cost = {"learned": 1.1, "sinusoidal": 1.2, "rope": 1.5, "alibi": 2.0, "none": 1.0}
    calls: list[tuple[str, str]] = []
    per_round = 2 * len(POSITIONS) - 1  # sdpa: 5 schemes, linear: 4

    def fake_timed(fn: Any, device: torch.device) -> tuple[None, float]:
        fn()
        load = 3.0 ** ((len(calls) - 1) // per_round)
        return None, cost[calls[-1][1]] * load

    def fake_step(model: Any, idx: torch.Tensor, targets: torch.Tensor, autocast: Any) -> None:
        calls.append((type(model.blocks[0].attn).__name__, model.position))

    monkeypatch.setattr(positions, "timed", fake_timed)
    monkeypatch.setattr(positions, "train_step", fake_step)
    result = run_positions(tiny(variants=["sdpa", "linear"], repeats=3, warmup=1))

    rounds = [calls[i : i + per_round] for i in range(0, len(calls), per_round)]
    assert len(rounds) == 4  # 1 warm-up + 3 timed
    for index, order in enumerate(rounds):
        kinds = [kind for kind, _ in order]
        first_change = next(i for i in range(1, per_round) if kinds[i] != kinds[0])
        assert len(set(kinds[:first_change])) == len(set(kinds[first_change:])) == 1  # a variant's schemes together
        assert order[0][0] == ("SDPAAttention", "LinearAttention")[index % 2]  # the first variant rotates
    sdpa_firsts = [next(s for kind, s in order if kind == "SDPAAttention") for order in rounds]
    assert sdpa_firsts == list(POSITIONS[:4])  # and so does the first scheme

    rows = rows_by_key(result)
    rope = rows["sdpa", "rope", T]
    assert rope["ratio_per_round"] == pytest.approx([1.5, 1.5, 1.5])
    assert rope["ratio_to_none"] == pytest.approx(1.5)
    assert rope["ms_per_step"]["median"] == pytest.approx(1.5 * 9 * 1e3)  # rounds at load 3, 9, 27
    assert rows["linear", "alibi", T]["status"] == "skipped"
    table = format_positions(result).splitlines()
    assert table[0].split() == ["variant", "T", *POSITIONS, "none", "ms"]
    assert table[1].split() == ["sdpa", str(T), "1.100", "1.200", "1.500", "2.000", "1.000", "9000.0"]
    assert table[2].split() == ["linear", str(T), "1.100", "1.200", "1.500", "-", "1.000", "9000.0"]


# --- the command line ---------------------------------------------------------------------------------

TINY_ARGV = ["positions", "--variants", "sdpa", "linear", "--lengths", str(T), "--n-layers", "1"]
TINY_ARGV += ["--d-model", str(D_MODEL), "--batch", "2", "--repeats", "1", "--warmup", "0", "--threads", "1"]
FILES = {"positions.json", "positions.csv", "positions.png"}


def test_cli_writes_json_csv_and_png_to_out(tmp_path: Path) -> None:
    assert main([*TINY_ARGV, "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == FILES
    result = json.loads((tmp_path / "positions.json").read_text())
    assert result["command"] == "attention-lab bench " + " ".join([*TINY_ARGV, "--out", str(tmp_path)])
    assert result["config"]["variants"] == ["sdpa", "linear"] and result["config"]["lengths"] == [T]
    rows = list(csv.DictReader((tmp_path / "positions.csv").open()))
    assert len(rows) == 2 * len(POSITIONS)
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert [(r["variant"], r["scheme"]) for r in skipped] == [("linear", "alibi")] and skipped[0]["reason"]
    assert {float(r["ratio_to_none"]) for r in rows if r["scheme"] == "none"} == {1.0}
    image = np.asarray(Image.open(tmp_path / "positions.png"))
    assert image.shape[0] > 300 and image.shape[1] > 600


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def test_without_out_nothing_under_benchmarks_results_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    monkeypatch.setattr(positions, "plot_positions", lambda result, path: path.write_bytes(b"png"))  # speed only
    committed = _snapshot(COMMITTED)
    assert committed  # the repository's results exist, so "unchanged" below means something
    assert main(TINY_ARGV) == 0
    (run,) = (tmp_path / "outputs" / "bench" / "positions").iterdir()
    assert {p.name for p in run.iterdir()} == FILES
    assert list(tmp_path.iterdir()) == [tmp_path / "outputs"]
    assert _snapshot(COMMITTED) == committed


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--schemes", "rope", "yarn"], "--schemes"),
        (["--lengths", "0"], "--lengths"),
        (["--lengths", "-5"], "--lengths"),
        (["--repeats", "0"], "--repeats"),
        (["--heads", "3"], "--heads"),  # 32 is not divisible by 3
        (["--d-model", "30", "--heads", "2", "--schemes", "rope"], "--heads"),  # head width 15: rope needs even
        (["--dtype", "float64"], "--dtype"),
        (["--variants", "nope"], "--variants"),
        (["--device", "nonsense"], "--device"),
        (["--out", "positions.json"], "--out"),
    ],
)
def test_bad_settings_exit_2_with_one_error_line(
    extra: list[str], flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    assert main([*TINY_ARGV, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ") and flag in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert list(tmp_path.iterdir()) == []  # checked before anything ran or was written


def test_the_run_function_checks_its_settings_too() -> None:
    with pytest.raises(UserError, match="unknown position schemes"):
        run_positions(tiny(schemes=["rope", "yarn"]))
    with pytest.raises(UserError, match="lengths must be >= 1"):
        run_positions(tiny(lengths=[0, 16]))
