"""The attention micro-benchmark on tiny settings: results complete, verification effective, memory scaling
visible (O(T^2) for explicit attention, O(T) for SDPA and linear), files written, skipping works; and the
command line: default output folders that never touch the committed results, one-line errors for bad options."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from attention_lab.attention import HeadedAttention, SDPAAttention
from attention_lab.bench.attention import BenchConfig, run_benchmark, variant_knobs
from attention_lab.bench.results import OUTPUTS_ENV, write_results
from attention_lab.cli.bench import main

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "benchmarks" / "results"
VARIANTS = ["multihead", "sdpa", "linear"]
LENGTHS = [64, 256]


def tiny(**overrides) -> BenchConfig:
    settings = {
        "variants": VARIANTS,
        "lengths": LENGTHS,
        "d_model": 32,
        "heads": 4,
        "repeats": 2,
        "warmup": 1,
        "window": 16,
    }
    return BenchConfig(**{**settings, **overrides})


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: with two, a busy shared 2-core machine makes these tiny ops ~100x slower
    (OpenMP workers wait for each other); timings here only need to be positive."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def result() -> dict:
    return run_benchmark(tiny())


def test_every_variant_and_length_is_measured(result):
    assert set(result["variants"]) == set(VARIANTS)
    for name, v in result["variants"].items():
        assert v["verified"] is True, name
        assert v["params"] > 0
        assert set(v["points"]) == {str(t) for t in LENGTHS}
        for point in v["points"].values():
            assert point["status"] == "ok"
            assert point["fwd_ms"]["median"] > 0 and point["fwd_bwd_ms"]["median"] > 0
            assert point["fwd_ms"]["n"] == 2
            assert point["saved_bytes"] > 0
            assert point["peak_bytes"] is None  # CPU: no peak counter


def test_machine_and_config_are_recorded(result):
    machine = result["machine"]
    for key in ("platform", "processor", "cpu_count", "torch", "device_name", "dtype"):
        assert machine[key] not in (None, ""), key
    assert result["config"]["d_model"] == 32
    assert "saved_bytes" in result["memory_metric"]


def test_explicit_memory_grows_quadratically_sdpa_and_linear_linearly(result):
    """T -> 4T: (B, H, T, T) weights saved for backward grow 16x; SDPA and linear keep O(T) tensors."""
    growth = {
        name: v["points"][str(LENGTHS[1])]["saved_bytes"] / v["points"][str(LENGTHS[0])]["saved_bytes"]
        for name, v in result["variants"].items()
    }
    length_ratio = LENGTHS[1] / LENGTHS[0]
    assert growth["multihead"] > 2 * length_ratio
    assert growth["sdpa"] == pytest.approx(length_ratio, rel=0.25)
    assert growth["linear"] == pytest.approx(length_ratio, rel=0.25)


def test_files_are_written(result, tmp_path):
    paths = write_results(result, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert set(data["variants"]) == set(VARIANTS)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == len(VARIANTS) * len(LENGTHS)
    assert {r["variant"] for r in rows} == set(VARIANTS)
    assert all(float(r["fwd_bwd_ms_median"]) > 0 for r in rows)
    image = np.asarray(Image.open(paths["png"]))
    assert image.shape[0] > 300 and image.shape[1] > 600


def test_a_wrong_fast_path_fails_verification_and_is_not_timed(monkeypatch):
    def off_by_one_percent(self, q, k, v, cache):
        return HeadedAttention._context(self, q, k, v, cache) * 1.01

    monkeypatch.setattr(SDPAAttention, "_context", off_by_one_percent)
    result = run_benchmark(tiny(variants=["sdpa"], lengths=[16], repeats=1))
    sdpa = result["variants"]["sdpa"]
    assert sdpa["verified"] is False
    assert sdpa["verify_rel_error"] > 1e-3
    assert sdpa["points"]["16"]["status"] == "skipped"
    assert "verification" in sdpa["points"]["16"]["reason"]


def test_slow_points_are_skipped_at_longer_lengths():
    result = run_benchmark(tiny(variants=["multihead"], lengths=[16, 32], repeats=1, max_seconds_per_point=1e-9))
    points = result["variants"]["multihead"]["points"]
    assert points["16"]["status"] == "ok"
    assert points["32"]["status"] == "skipped"
    assert "max-seconds-per-point" in points["32"]["reason"]


def test_knobs_follow_width_and_heads():
    cfg = tiny(d_model=64, heads=8, window=8)
    assert variant_knobs("gqa", cfg) == {"num_heads": 8, "dropout": 0.0, "num_kv_heads": 2, "qkv_bias": False}
    assert variant_knobs("latent", cfg)["latent_dim"] == 16
    assert variant_knobs("sliding_window", cfg)["window"] == 8
    assert variant_knobs("simplified", cfg) == {"causal": True}


def test_sliding_dense_times_the_dense_band_beside_the_blocked_kernel():
    """The blocked kernel's activation memory grows as T (T -> 4T: 4x), the dense band's (T, T) mask as T^2."""
    result = run_benchmark(tiny(variants=["sliding_window", "sdpa"], sliding_dense=True, repeats=1))
    assert list(result["variants"]) == ["sliding_window", "sliding_window_dense", "sdpa"]
    assert result["config"]["sliding_dense"] is True
    blocked, dense = result["variants"]["sliding_window"], result["variants"]["sliding_window_dense"]
    assert (blocked["kernel"], dense["kernel"]) == ("local", "sdpa (dense band)")
    assert blocked["verified"] is True and dense["verified"] is True
    growth = {
        name: v["points"][str(LENGTHS[1])]["saved_bytes"] / v["points"][str(LENGTHS[0])]["saved_bytes"]
        for name, v in result["variants"].items()
    }
    length_ratio = LENGTHS[1] / LENGTHS[0]
    assert growth["sliding_window"] == pytest.approx(length_ratio, rel=0.25)
    assert growth["sliding_window_dense"] > 1.5 * length_ratio  # 7.9 here: the (T, T) mask beside O(T) tensors


def test_windowed_variants_are_verified_past_two_windows(monkeypatch):
    """Verification at T = 2 * window + 1 reaches the blocked kernel: a wrong one fails and is not timed."""
    from attention_lab.attention import sliding_window

    monkeypatch.setattr(sliding_window, "local_attention", lambda q, k, v, *args: torch.zeros_like(q))
    result = run_benchmark(tiny(variants=["sliding_window"], lengths=[16, 64], window=16, repeats=1))
    assert result["variants"]["sliding_window"]["verified"] is False
    assert result["variants"]["sliding_window"]["points"]["16"]["status"] == "skipped"


TINY_ARGV = ["attention", "--variants", "sdpa", "--lengths", "16", "32", "--d-model", "16", "--heads", "2"]
TINY_ARGV += ["--repeats", "1", "--threads", "1"]


def test_script_entry_point(tmp_path):
    assert main([*TINY_ARGV, "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"benchmark.json", "benchmark.csv", "benchmark.png"}
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert result["command"].startswith("attention-lab bench attention --variants sdpa")
    assert result["config"]["repeats"] == 1 and result["config"]["lengths"] == [16, 32]


def test_sliding_dense_flag(tmp_path):
    argv = ["attention", "--variants", "sliding_window", "--sliding-dense", "--window", "4", "--lengths", "16"]
    assert main([*argv, "--d-model", "16", "--heads", "2", "--repeats", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "benchmark.json").read_text())
    assert list(result["variants"]) == ["sliding_window", "sliding_window_dense"]
    assert all(p["status"] == "ok" for v in result["variants"].values() for p in v["points"].values())


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and bytes of every file under root."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def test_default_output_goes_to_a_new_folder_not_the_committed_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    committed = _snapshot(COMMITTED)
    assert committed  # the repository's results exist, so "unchanged" below means something

    assert main(TINY_ARGV) == 0

    runs = list((tmp_path / "outputs" / "bench" / "attention").iterdir())
    assert len(runs) == 1 and runs[0].is_dir()
    assert {p.name for p in runs[0].iterdir()} == {"benchmark.json", "benchmark.csv", "benchmark.png"}
    assert list(tmp_path.iterdir()) == [tmp_path / "outputs"]  # nothing else created in the working directory
    printed = capsys.readouterr().out
    assert str(Path("outputs", "bench", "attention", runs[0].name, "benchmark.json")) in printed
    assert _snapshot(COMMITTED) == committed


def test_outputs_environment_variable_moves_the_default_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(OUTPUTS_ENV, str(tmp_path / "elsewhere"))
    assert main(TINY_ARGV) == 0
    (run,) = (tmp_path / "elsewhere" / "bench" / "attention").iterdir()
    assert (run / "benchmark.json").is_file()
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--repeats", "0"], "--repeats"),
        (["--warmup", "-1"], "--warmup"),
        (["--lengths", "0"], "--lengths"),
        (["--d-model", "many"], "--d-model"),
        (["--threads", "0"], "--threads"),
        (["--max-seconds-per-point", "0"], "--max-seconds-per-point"),
        (["--heads", "3"], "--heads"),  # 16 is not divisible by 3
        (["--dtype", "float64"], "--dtype"),
        (["--variants", "nope"], "--variants"),
        (["--device", "nonsense"], "--device"),
        (["--out", "results.json"], "--out"),
    ],
)
def test_bad_options_exit_2_with_one_error_line(extra, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    assert main([*TINY_ARGV, *extra]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("error: ")
    assert flag in captured.err
    assert "Traceback" not in captured.err + captured.out
    assert list(tmp_path.iterdir()) == []  # checked before anything ran or was written


def test_out_refuses_an_existing_file(tmp_path, capsys):
    target = tmp_path / "benchmark"
    target.write_text("keep me")
    assert main([*TINY_ARGV, "--out", str(target)]) == 2
    assert "--out" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_programming_errors_keep_their_traceback(monkeypatch, tmp_path):
    def broken(cfg):
        raise RuntimeError("a bug, not a user mistake")

    monkeypatch.setattr("attention_lab.cli.bench.run_benchmark", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main([*TINY_ARGV, "--out", str(tmp_path)])


def test_help_returns_0(capsys):
    assert main(["attention", "--help"]) == 0
    assert "--max-seconds-per-point" in capsys.readouterr().out
