"""`attention-lab gpu-check` on a machine without a GPU: the no-CUDA exit, the budget and time-limit bookkeeping, the
summary's layout and where results go, with the three GPU pieces replaced by small Python commands (monkeypatch).

The slow tests run the real piece commands on the CPU (the training and benchmark commands with the GPU settings
swapped for CPU ones, pytest on tests/gpu where everything skips), so that their settings stay valid and the
collectors read what the real commands write.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from attention_lab import cli
from attention_lab.cli import gpu_check
from attention_lab.cli.gpu_check import Budget, Context, Piece

ROOT = Path(__file__).resolve().parents[2]
GPU = "NVIDIA Test GPU"  # the stub machine's GPU -> folder label nvidia-test-gpu


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def stub(code: str, share: float = 1.0, result: dict | None = None) -> Piece:
    return Piece(share, "a stub", lambda ctx: python(code), lambda ctx: dict(result or {}))


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """CUDA 'available', a stub machine description, small time constants, cwd = tmp_path; returns tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTENTION_LAB_OUTPUTS", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check, "gpu_machine", lambda: {"device": "cuda", "gpus": [{"name": GPU}]})
    for name, value in (("MIN_BUDGET_S", 1.0), ("RESERVE_S", 0.5), ("KILL_GRACE_S", 1.0), ("MIN_PIECE_S", 0.1)):
        monkeypatch.setattr(gpu_check, name, value)
    return tmp_path


def stub_pieces(monkeypatch: pytest.MonkeyPatch, **codes: str) -> None:
    for name, code in codes.items():
        monkeypatch.setitem(gpu_check.PIECES, name, stub(code, gpu_check.PIECES[name].share))


def summary_of(folder: Path) -> dict:
    return json.loads((folder / gpu_check.SUMMARY_FILE).read_text())


def results_folders(root: Path) -> list[Path]:
    return sorted((root / gpu_check.RESULTS_ROOT).iterdir())


# --- no CUDA, bad settings -------------------------------------------------------------------------------------
def test_without_cuda_one_line_status_2_and_nothing_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["gpu-check"]) == 2  # through the dispatcher, as `attention-lab gpu-check`
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("error: gpu-check needs a CUDA GPU") and "CUDA build of torch" in captured.err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_the_script_without_cuda_exits_2_without_a_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py")], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: gpu-check needs a CUDA GPU") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "5"], "--budget 5 is too short: give it >= 60 seconds"),
        (["--budget", "soon"], "--budget: invalid float value: 'soon'"),
        (["--steps", "3"], "--steps 3 is too few: give it >= 10"),
        (["--only", "lint"], "--only: invalid choice: 'lint'"),
    ],
)
def test_bad_settings_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


# --- the budget ------------------------------------------------------------------------------------------------
def test_the_budget_is_shared_and_unused_time_rolls_forward() -> None:
    budget = Budget.share(480, ["tests", "train", "bench"])
    assert budget.allotted == pytest.approx({"tests": 90, "train": 225, "bench": 135})  # (480 - 30) x 0.2/0.5/0.3
    assert budget.limit("tests") == pytest.approx(90, abs=0.5)
    budget.start -= 40  # the tests took 40 s of their 90: train may use the 50 left
    assert budget.limit("train") == pytest.approx(275, abs=0.5)
    budget.start -= 400  # train overran: bench keeps what is left before the reserve, not more
    assert budget.limit("bench") == pytest.approx(10, abs=0.5)
    assert Budget.share(480, ["train"]).allotted == pytest.approx({"train": 450})


def test_a_piece_over_its_limit_is_stopped_and_the_rest_still_run(
    fake_gpu: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pid_file = fake_gpu / "grandchild.pid"
    sleeper = (  # a piece that starts a child of its own and never ends: the whole process group must go
        "import subprocess, time; p = subprocess.Popen(['sleep', '60']);"
        f" open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)"
    )
    stub_pieces(monkeypatch, tests=sleeper, train="print('trained')", bench="import sys; sys.exit(3)")
    started = time.monotonic()
    assert gpu_check.main(["--budget", "3.5"]) == 1
    assert time.monotonic() - started < 3.5 + 1.0  # the budget, plus the grace a stop may take
    (out,) = results_folders(fake_gpu)
    summary = summary_of(out)
    pieces = summary["pieces"]
    assert [pieces[n]["status"] for n in ("tests", "train", "bench")] == ["timeout", "ok", "failed"]
    assert pieces["tests"]["returncode"] is None and pieces["bench"]["returncode"] == 3
    assert pieces["tests"]["seconds"] == pytest.approx(pieces["tests"]["limit_s"], abs=0.5)
    assert pieces["train"]["limit_s"] >= pieces["train"]["allotted_s"]  # its own allotment at least
    assert (out / "train.log").read_text() == "trained\n"
    assert summary["status"] == "failed" and summary["elapsed_s"] <= 3.5 + 1.0
    assert_gone(int(pid_file.read_text()))
    lines = capsys.readouterr().out.splitlines()
    assert "[gpu-check] tests: timeout in " in lines[2] and lines[-1].startswith("[gpu-check] failed in ")


def assert_gone(pid: int) -> None:
    """The process ended (or is a zombie nobody reaped yet: ended too)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status")
        if not status.exists() or "\nState:\tZ" in status.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} of a stopped piece is still running")


# --- the summary and where it goes --------------------------------------------------------------------------------
def test_the_summary_layout(fake_gpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_pieces(monkeypatch, tests="pass", train="pass", bench="pass")
    monkeypatch.setitem(gpu_check.PIECES, "bench", stub("pass", 0.3, {"headline": "3 of 3", "problems": []}))
    assert gpu_check.main(["--budget", "60", "--only", "tests", "bench"]) == 0
    (out,) = results_folders(fake_gpu)
    assert out.name == f"{dt.date.today().isoformat()}_nvidia-test-gpu"
    summary = summary_of(out)
    assert summary.keys() == {
        *("command", "status", "budget_s", "reserve_s", "elapsed_s", "output_dir", "scratch_dir", "machine", "pieces")
    }
    assert summary["status"] == "ok" and summary["command"] == "attention-lab gpu-check --budget 60 --only tests bench"
    assert list(summary["pieces"]) == ["tests", "bench"]  # only those asked for, in the order they ran
    assert summary["pieces"]["tests"].keys() == {
        *("what", "allotted_s", "limit_s", "command", "log", "seconds", "returncode", "result", "status")
    }
    assert summary["pieces"]["bench"]["result"] == {"headline": "3 of 3", "problems": []}
    assert summary["machine"]["gpus"] == [{"name": GPU}]
    assert summary["scratch_dir"].startswith("outputs/bench/gpu-check/") and Path(summary["scratch_dir"]).is_dir()


def test_a_problem_fails_a_piece_that_exited_0(fake_gpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(gpu_check.PIECES, "bench", stub("pass", 0.3, {"problems": ["linear: fast path != explicit"]}))
    assert gpu_check.main(["--budget", "60", "--only", "bench"]) == 1
    (out,) = results_folders(fake_gpu)
    assert summary_of(out)["pieces"]["bench"]["status"] == "failed"


def test_a_piece_that_cannot_run_here_is_skipped(fake_gpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/ is missing (run outside the repository): skipped with the reason, and the check is not ok."""
    stub_pieces(monkeypatch, train="pass")
    assert gpu_check.main(["--budget", "60", "--only", "tests", "train"]) == 1
    (out,) = results_folders(fake_gpu)
    tests = summary_of(out)["pieces"]["tests"]
    assert tests["status"] == "skipped" and "run gpu-check from the repository root" in tests["reason"]


def test_committed_results_are_never_written_over_without_out(fake_gpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_pieces(monkeypatch, train="pass")
    committed = fake_gpu / gpu_check.RESULTS_ROOT / f"{dt.date.today().isoformat()}_nvidia-test-gpu"
    committed.mkdir(parents=True)
    (committed / gpu_check.SUMMARY_FILE).write_text("committed\n")
    for _ in range(2):
        assert gpu_check.main(["--budget", "60", "--only", "train"]) == 0
    assert (committed / gpu_check.SUMMARY_FILE).read_text() == "committed\n"
    assert [p.name for p in results_folders(fake_gpu)] == [committed.name, f"{committed.name}-2", f"{committed.name}-3"]


def test_out_names_the_folder_and_replaces_its_files(fake_gpu: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_pieces(monkeypatch, train="pass")
    out = fake_gpu / "mine"
    out.mkdir()
    (out / gpu_check.SUMMARY_FILE).write_text("old\n")
    assert gpu_check.main(["--budget", "60", "--only", "train", "--out", str(out)]) == 0
    assert summary_of(out)["pieces"]["train"]["status"] == "ok"
    assert not (fake_gpu / gpu_check.RESULTS_ROOT).exists()


# --- the collectors, on files shaped like the real ones ---------------------------------------------------------
def test_collect_train_takes_the_steady_state_after_the_first_interval(tmp_path: Path) -> None:
    run = tmp_path / "scratch" / "runs" / "2026_x"
    (run / "csv").mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"status": "ok", "tokens_per_sec": 50.0, "mfu": 0.05}))
    rows = [(20, 10.0, 0.01), (40, 100.0, 0.4), (60, 120.0, 0.5), (80, 110.0, 0.45)]  # the first one compiles
    lines = ["step,throughput/tokens_per_sec,throughput/mfu,val/loss"] + [f"{s},{t},{m}," for s, t, m in rows]
    (run / "csv" / "metrics.csv").write_text("\n".join([*lines, "80,,,3.2"]) + "\n")
    ctx = Context(out=tmp_path / "out", scratch=tmp_path / "scratch")
    ctx.out.mkdir()
    result = gpu_check.collect_train(ctx)
    assert result["steady_tokens_per_sec"] == 110.0 and result["steady_mfu"] == 0.45
    assert result["steady_intervals"] == 3 and result["tokens_per_sec"] == 50.0
    assert result["headline"] == "steady 110 tokens/s, MFU 45.0%"
    assert (ctx.out / "train_metrics.json").is_file() and (ctx.out / "train_metrics.csv").is_file()


def test_collect_tests_counts_and_names_the_failures(tmp_path: Path) -> None:
    (tmp_path / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="4" failures="1" errors="0" skipped="2">'
        '<testcase classname="tests.gpu.m" name="test_a"><failure message="x"/></testcase>'
        '<testcase classname="tests.gpu.m" name="test_b"/></testsuite></testsuites>'
    )
    result = gpu_check.collect_tests(Context(out=tmp_path, scratch=tmp_path))
    assert (result["passed"], result["failures"], result["skipped"]) == (1, 1, 2)
    assert result["failing"] == ["tests.gpu.m::test_a"] and result["headline"] == "1 passed, 1 failed, 2 skipped"


def test_results_that_cannot_be_read_fail_the_piece_not_the_check(
    fake_gpu: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cut_short(ctx: Context) -> dict:
        raise ValueError("truncated")

    monkeypatch.setitem(gpu_check.PIECES, "tests", Piece(0.2, "a stub", lambda ctx: python("pass"), cut_short))
    stub_pieces(monkeypatch, train="pass")
    assert gpu_check.main(["--budget", "60", "--only", "tests", "train"]) == 1
    (out,) = results_folders(fake_gpu)
    pieces = summary_of(out)["pieces"]
    assert pieces["tests"]["status"] == "failed" and pieces["train"]["status"] == "ok"
    assert pieces["tests"]["result"]["problems"] == ["its results could not be read: ValueError: truncated"]


def test_collectors_say_what_is_missing_after_a_stop(tmp_path: Path) -> None:
    ctx = Context(out=tmp_path, scratch=tmp_path / "scratch")
    for collect in (gpu_check.collect_tests, gpu_check.collect_train, gpu_check.collect_bench):
        assert "note" in collect(ctx)


# --- the real commands, on the CPU ---------------------------------------------------------------------------------
def run_real(piece: str, ctx: Context, swap: dict[str, str], extra: list[str]) -> dict:
    command = [swap.get(part, part) for part in gpu_check.PIECES[piece].command(ctx)] + extra
    env = {**gpu_check.piece_env(piece, ctx), "OMP_NUM_THREADS": "1"}
    log = ctx.out / f"{piece}.log"
    assert gpu_check.run_process(command, log, 600, env) == 0, log.read_text()[-3000:]
    return gpu_check.PIECES[piece].collect(ctx)


@pytest.mark.slow
def test_the_training_command_runs_and_is_collected(tmp_path: Path) -> None:
    ctx = Context(out=tmp_path / "out", scratch=tmp_path / "scratch", steps=20)
    ctx.out.mkdir()
    small = ["model.n_layers=1", "model.d_model=32", "model.context_length=32", "attention.num_heads=2"]
    swap = {"trainer=gpu": "trainer=cpu", "compile=true": "compile=false"}
    result = run_real("train", ctx, swap, [*small, "data.tokenizer=char", "data.batch_size=4"])
    assert result["status"] == "ok" and result["global_step"] == 20
    assert result["steady_intervals"] == 9 and result["steady_tokens_per_sec"] > 0
    assert result["steady_mfu"] is None and result["mfu_note"] == "unknown peak for cpu"


@pytest.mark.slow
def test_the_benchmark_command_runs_and_is_collected(tmp_path: Path) -> None:
    ctx = Context(out=tmp_path, scratch=tmp_path / "scratch")
    command = gpu_check.PIECES["bench"].command(ctx)
    lengths, variants = command.index("--lengths"), command.index("--variants")
    assert command[lengths + 1 : lengths + 5] == ["1024", "4096", "8192", "16384"]
    swap = {"cuda": "cpu", "bfloat16": "float32", "768": "64", "12": "4"}
    extra = ["--lengths", "32", "64", "--repeats", "1", "--window", "8"]  # the later --lengths wins
    result = run_real("bench", ctx, swap, extra)
    assert result["problems"] == [] and list(result["variants"]) == command[variants + 1 : lengths]
    assert all(v["longest_T"] == 64 for v in result["variants"].values())
    assert result["variants"]["sdpa"]["kernel"] == "sdpa"


@pytest.mark.slow
def test_the_gpu_tests_are_collected_and_skip_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_check, "TESTS_DIR", ROOT / "tests" / "gpu")
    ctx = Context(out=tmp_path, scratch=tmp_path)
    command = gpu_check.PIECES["tests"].command(ctx)
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    result = gpu_check.collect_tests(ctx)
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the tests ran")
    assert done.returncode == 0, done.stdout[-2000:]
    assert result["tests"] == result["skipped"] > 20 and result["passed"] == 0 and result["failing"] == []
