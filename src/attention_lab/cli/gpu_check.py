"""`attention-lab gpu-check`: is this CUDA machine ready? Three pieces in one command, within 8 minutes.

    attention-lab gpu-check                          # all three pieces, 480 s at most
    attention-lab gpu-check --only tests bench       # some of them
    attention-lab gpu-check --out benchmarks/results/gpu/h200   # a folder of your choice (its files are replaced)

The pieces run one after another, each in a subprocess with its own time limit:
  tests  `pytest -m gpu tests`: bf16 parity of every variant, SDPA's flash and efficient kernels, FlexAttention,
         the position schemes on CUDA, DDP where there are 2 GPUs;
  train  experiment=gpt2_124m attention=sdpa, bf16-mixed, compile=true, --steps steps: tokens/s and MFU over the
         run (compilation included) and steady (median of the logged intervals after the first, which compiles);
  bench  `attention-lab bench attention` in bfloat16 at GPT-2 width up to T=16384: SDPA's flash kernel,
         FlexAttention (sliding_window), the chunked kernels and the explicit formula (multihead).

Budget: --budget seconds (default 480) for everything. Each piece is allotted its share of the budget after a
reserve (30 s: stopping a piece and writing the summary); its limit is that allotment plus whatever the pieces
before it left unused, so every later piece keeps its own. A piece still running at its limit is stopped (SIGTERM
to its process group, SIGKILL 10 s later), recorded as `timeout`, and the next piece runs.

Results: without --out, a new folder benchmarks/results/gpu/<date>_<gpu>/ (-2, -3, ... when taken: committed
results are never written over): gpu_check.json (the summary, rewritten after each piece), <piece>.log, tests.xml,
train_metrics.{json,csv}, attention/benchmark.{json,csv,png}. The training run itself (checkpoints included) goes
to outputs/bench/gpu-check/<date_time>-<suffix>/ (git-ignored). Exit status: 0 when every piece passed, 1 when one
failed or ran out of time, 2 (one `error:` line) for a mistake such as a machine without CUDA, 130 for Ctrl+C.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..attention import available
from ..bench.attention import GPU_LENGTHS
from ..bench.machine import describe_machine
from ..bench.results import check_out, new_output_dir, write_json
from ..errors import UserError
from .common import OneLineParser, run_command

RESULTS_ROOT = Path("benchmarks/results/gpu")  # relative to where the command runs: the repository root
TESTS_DIR = Path("tests")
SUMMARY_FILE = "gpu_check.json"
BUDGET_S = 480.0
RESERVE_S = 30.0
KILL_GRACE_S = 10.0
MIN_PIECE_S = 15.0  # a piece left less than this is skipped rather than started
MIN_BUDGET_S = 60.0
STEPS = 200
BENCH_VARIANTS = ("multihead", "sdpa", "gqa", "mqa", "sliding_window", "latent", "linear", "retention")
BENCH_LENGTHS = (1024, 4096, 8192, GPU_LENGTHS[-1])  # up to 16384
NO_CUDA = (
    "gpu-check needs a CUDA GPU, and torch {version} sees none here (torch.cuda.is_available() is False): "
    "run it on a machine with an NVIDIA GPU and a CUDA build of torch."
)


# --- the budget -------------------------------------------------------------------------------------------
@dataclass
class Budget:
    """Seconds for the whole check, shared out among the pieces in the order they run (see the module doc)."""

    total: float
    allotted: dict[str, float]
    reserve: float
    start: float = field(default_factory=time.monotonic)

    @classmethod
    def share(cls, total: float, names: Sequence[str]) -> Budget:
        weights = {name: PIECES[name].share for name in names}
        usable = total - RESERVE_S
        return cls(total, {n: usable * w / sum(weights.values()) for n, w in weights.items()}, RESERVE_S)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def limit(self, name: str) -> float:
        """Seconds `name` may run if started now: what is left, less the reserve and the later pieces' allotments."""
        names = list(self.allotted)
        later = sum(self.allotted[n] for n in names[names.index(name) + 1 :])
        return self.total - self.reserve - self.elapsed() - later


# --- running one piece ------------------------------------------------------------------------------------
def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the piece's process group (a training run then records where it stopped), SIGKILL after the
    grace period; then SIGKILL to whatever of the group is left (compile workers, spawned ranks)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_process(command: Sequence[str], log: Path, limit: float, env: dict[str, str]) -> int | None:
    """Run `command` with stdout and stderr in `log`; its exit status, or None when it was stopped at `limit`."""
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            stop(process)
            return None
        except KeyboardInterrupt:
            stop(process)
            raise


@dataclass
class Context:
    """What the pieces' commands and collectors need: where results go and the run's settings."""

    out: Path  # the results folder
    scratch: Path  # the training run's outputs (checkpoints): git-ignored
    steps: int = STEPS


def tests_command(ctx: Context) -> list[str] | str:
    if not TESTS_DIR.is_dir():
        return f"no {TESTS_DIR}/ folder here: run gpu-check from the repository root"
    junit = f"--junitxml={ctx.out / 'tests.xml'}"
    return [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", junit, str(TESTS_DIR)]


def train_command(ctx: Context) -> list[str]:
    steps = ctx.steps
    return [
        *(sys.executable, "-m", "attention_lab.cli.train", "experiment=gpt2_124m", "attention=sdpa", "trainer=gpu"),
        *("trainer.precision=bf16-mixed", "compile=true", f"trainer.max_steps={steps}"),
        *(f"trainer.val_check_interval={steps}", "trainer.num_sanity_val_steps=0"),
        *(f"trainer.log_every_n_steps={max(1, steps // 10)}", "trainer.enable_progress_bar=false", "logger=csv"),
        *("~callbacks.attention_maps", "~callbacks.text_sample"),
    ]


def bench_command(ctx: Context) -> list[str]:
    variants = [name for name in BENCH_VARIANTS if name in available()]
    return [
        *(sys.executable, "-m", "attention_lab.cli", "bench", "attention", "--device", "cuda", "--dtype", "bfloat16"),
        *("--d-model", "768", "--heads", "12", "--variants", *variants, "--lengths", *map(str, BENCH_LENGTHS)),
        *("--repeats", "3", "--warmup", "1", "--max-seconds-per-point", "10", "--out", str(ctx.out / "attention")),
    ]


def collect_tests(ctx: Context) -> dict[str, Any]:
    """Counts from pytest's JUnit XML (absent when pytest was stopped) and the names of failing tests."""
    path = ctx.out / "tests.xml"
    if not path.is_file():
        return {"note": "no tests.xml: pytest did not finish"}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    counts = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failing = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    headline = f"{passed} passed, {counts['failures'] + counts['errors']} failed, {counts['skipped']} skipped"
    return {**counts, "passed": passed, "failing": failing[:20], "headline": headline}


def logged_series(path: Path, column: str) -> list[float]:
    """The values of `column` in a Lightning CSVLogger file, in logging order (rows without it skipped)."""
    with path.open(newline="") as f:
        return [float(row[column]) for row in csv.DictReader(f) if row.get(column) not in (None, "")]


def collect_train(ctx: Context) -> dict[str, Any]:
    """metrics.json's figures (copied as train_metrics.json) and the steady-state tokens/s and MFU from the
    logged intervals (metrics.csv, copied as train_metrics.csv) after the first, which holds the compilation."""
    runs = sorted(ctx.scratch.glob("runs/*/metrics.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return {"note": f"no metrics.json under {ctx.scratch}/runs: the run stopped before it wrote one"}
    metrics = json.loads(runs[-1].read_text())
    shutil.copyfile(runs[-1], ctx.out / "train_metrics.json")
    keys = ("status", "global_step", "val_loss", "tokens_per_sec", "mfu", "mfu_note", "flops_per_token", "peak_flops")
    result: dict[str, Any] = {key: metrics.get(key) for key in keys if key in metrics}
    result |= {key: metrics.get(key) for key in ("params", "peak_memory_mb", "wall_time_sec", "device")}
    result["run_dir"] = str(runs[-1].parent)
    logged = runs[-1].parent / "csv" / "metrics.csv"
    if logged.is_file():
        shutil.copyfile(logged, ctx.out / "train_metrics.csv")
        for name, column in (("tokens_per_sec", "throughput/tokens_per_sec"), ("mfu", "throughput/mfu")):
            values = logged_series(logged, column)[1:]  # the first interval holds the compilation
            result[f"steady_{name}"] = statistics.median(values) if values else None
            result.setdefault("steady_intervals", len(values))
        mfu = "unknown" if result["steady_mfu"] is None else f"{result['steady_mfu']:.1%}"
        result["headline"] = f"steady {result['steady_tokens_per_sec'] or 0:,.0f} tokens/s, MFU {mfu}"
    result["note"] = "tokens_per_sec and mfu include the compilation; steady_*: median of the intervals after the first"
    return result


def collect_bench(ctx: Context) -> dict[str, Any]:
    """Per variant: its kernel, the bf16 verification, fwd+bwd median ms per length and why a length was skipped;
    a variant whose fast path disagreed with the explicit formula is a problem."""
    path = ctx.out / "attention" / "benchmark.json"
    if not path.is_file():
        return {"note": "no attention/benchmark.json: the benchmark did not finish"}
    variants = json.loads(path.read_text())["variants"]
    result: dict[str, Any] = {"variants": {}}
    for name, v in variants.items():
        points = v["points"]
        ok = {t: p["fwd_bwd_ms"]["median"] for t, p in points.items() if p["status"] == "ok"}
        result["variants"][name] = {
            "kernel": v["kernel"],
            "verified": v["verified"],
            "verify_rel_error": v["verify_rel_error"],
            "fwd_bwd_ms": ok,
            "longest_T": max(map(int, ok), default=None),
            "skipped": {t: p["reason"] for t, p in points.items() if p["status"] != "ok"},
        }
    result["problems"] = [f"{n}: fast path != explicit formula" for n, v in variants.items() if not v["verified"]]
    result["headline"] = f"{len(variants) - len(result['problems'])} of {len(variants)} variants verified in bf16"
    return result


@dataclass(frozen=True)
class Piece:
    share: float  # of the budget after the reserve
    what: str
    command: Callable[[Context], list[str] | str]  # a string: why the piece cannot run here
    collect: Callable[[Context], dict[str, Any]]  # what its files say, read also after a timeout


PIECES = {
    "tests": Piece(0.2, "pytest -m gpu: bf16 parity, SDPA kernels, FlexAttention, DDP", tests_command, collect_tests),
    "train": Piece(0.5, "gpt2_124m, sdpa, bf16-mixed, compile: tokens/s and MFU", train_command, collect_train),
    "bench": Piece(0.3, "attention benchmark, bf16, d_model 768, T up to 16384", bench_command, collect_bench),
}


def piece_env(name: str, ctx: Context) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    if name == "train":
        env["ATTENTION_LAB_OUTPUTS"] = str(ctx.scratch)  # the run folder (and its checkpoints) out of the results
    return env


def run_piece(name: str, budget: Budget, ctx: Context) -> dict[str, Any]:
    """Run one piece within its limit; its record for the summary (status ok / failed / timeout / skipped)."""
    piece = PIECES[name]
    record: dict[str, Any] = {"what": piece.what, "allotted_s": round(budget.allotted[name], 1)}
    command = piece.command(ctx)
    limit = budget.limit(name)
    if isinstance(command, str) or limit < MIN_PIECE_S:
        reason = command if isinstance(command, str) else f"{limit:.0f} s left of the budget (< {MIN_PIECE_S:g} s)"
        print(f"[gpu-check] {name}: skipped ({reason})", flush=True)
        return {**record, "status": "skipped", "reason": reason}
    print(f"[gpu-check] {name}: {piece.what} (limit {limit:.0f} s)", flush=True)
    started = time.monotonic()
    record |= {"limit_s": round(limit, 1), "command": shlex.join(command), "log": f"{name}.log"}
    try:
        code = run_process(command, ctx.out / record["log"], limit, piece_env(name, ctx))
    except KeyboardInterrupt:
        code, record["status"] = None, "interrupted"
    record |= {"seconds": round(time.monotonic() - started, 1), "returncode": code}
    try:
        record["result"] = piece.collect(ctx)
    except Exception as error:  # a file cut short by a stop: say so, and let the other pieces run
        record["result"] = {"problems": [f"its results could not be read: {type(error).__name__}: {error}"]}
    if "status" not in record:
        record["status"] = "timeout" if code is None else "failed" if code or record["result"].get("problems") else "ok"
    headline = f": {record['result']['headline']}" if "headline" in record["result"] else ""
    print(f"[gpu-check] {name}: {record['status']} in {record['seconds']:.0f} s{headline}", flush=True)
    return record


# --- the machine and the results folder -------------------------------------------------------------------
def gpu_machine() -> dict[str, Any]:
    """describe_machine for cuda in bfloat16, plus every GPU's name, memory and compute capability."""
    desc = describe_machine("cuda", "bfloat16")
    gpus = map(torch.cuda.get_device_properties, range(torch.cuda.device_count()))
    desc["gpus"] = [
        {"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}"}
        for p in gpus
    ]
    desc["cuda"], desc["cudnn"] = torch.version.cuda, torch.backends.cudnn.version()
    return desc


def machine_label(machine: dict[str, Any]) -> str:
    """`nvidia-h200`, or `2x-nvidia-h200` for two: the GPUs as a folder name."""
    gpus = machine.get("gpus") or [{"name": machine.get("device_name", "gpu")}]
    slug = re.sub(r"[^0-9a-z]+", "-", gpus[0]["name"].lower()).strip("-") or "gpu"
    return slug if len(gpus) == 1 else f"{len(gpus)}x-{slug}"


def results_dir(out: Path | None, label: str, today: dt.date | None = None) -> Path:
    """--out (created if needed; files in it are replaced), else a new folder RESULTS_ROOT/<date>_<label>[-n]."""
    if out is not None:
        check_out(out)
        out.mkdir(parents=True, exist_ok=True)
        return out
    RESULTS_ROOT.mkdir(parents=True, exist_ok=True)
    name = f"{(today or dt.date.today()).isoformat()}_{label}"
    for n in range(1, 1000):
        path = RESULTS_ROOT / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()  # exclusive: an existing folder (committed results) is never reused
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not create a new folder {name}-<n> under {RESULTS_ROOT}")


# --- the command ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="attention-lab gpu-check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: a new one, see above)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds for everything (default: 480)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"training steps (default: {STEPS})")
    parser.add_argument("--only", nargs="+", choices=list(PIECES), default=list(PIECES), metavar="PIECE",
                        help=f"run only these pieces, from {' '.join(PIECES)}")  # fmt: skip
    return parser


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help
        return int(done.code or 0)
    check_out(args.out)
    if args.budget < MIN_BUDGET_S:
        raise UserError(f"--budget {args.budget:g} is too short: give it >= {MIN_BUDGET_S:g} seconds (default 480).")
    if args.steps < 10:
        raise UserError(f"--steps {args.steps} is too few: give it >= 10 (logged in 10 intervals; default {STEPS}).")
    if not torch.cuda.is_available():
        raise UserError(NO_CUDA.format(version=torch.__version__))
    names = [name for name in PIECES if name in args.only]
    budget = Budget.share(args.budget, names)
    machine = gpu_machine()
    label = machine_label(machine)
    ctx = Context(out=results_dir(args.out, label), scratch=new_output_dir("gpu-check"), steps=args.steps)
    summary: dict[str, Any] = {
        "command": shlex.join(["attention-lab", "gpu-check", *argv]),
        "status": "running",
        "budget_s": args.budget,
        "reserve_s": budget.reserve,
        "elapsed_s": 0.0,
        "output_dir": str(ctx.out),
        "scratch_dir": str(ctx.scratch),
        "machine": machine,
        "pieces": {},
    }
    print(f"[gpu-check] {label}: {', '.join(names)} within {args.budget:.0f} s -> {ctx.out}", flush=True)
    for name in names:
        summary["pieces"][name] = run_piece(name, budget, ctx)
        summary["elapsed_s"] = round(budget.elapsed(), 1)
        write_json(summary, ctx.out / SUMMARY_FILE)  # after each piece: a stopped check still leaves a summary
        if summary["pieces"][name]["status"] == "interrupted":
            break
    statuses = {p["status"] for p in summary["pieces"].values()}
    summary["status"] = "interrupted" if "interrupted" in statuses else "ok" if statuses == {"ok"} else "failed"
    summary["elapsed_s"] = round(budget.elapsed(), 1)
    write_json(summary, ctx.out / SUMMARY_FILE)
    print(f"[gpu-check] {summary['status']} in {summary['elapsed_s']:.0f} s: wrote {ctx.out / SUMMARY_FILE}")
    return {"ok": 0, "interrupted": 130}.get(summary["status"], 1)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `attention-lab gpu-check [--options]`; no CUDA or a bad option -> one `error:` line and status 2."""
    return run_command(_main, argv)
