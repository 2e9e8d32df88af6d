"""Corpora bigger than memory, measured: tokenization throughput by worker count, and peak memory of a short
training run as the corpus grows.

The corpus is generated (nothing downloaded, nothing committed): paragraphs of the built-in corpus (CPython's
`pydoc_data.topics`), shuffled by `random.Random(seed * 100_003 + file index)` and written as UTF-8 files of
10 MB (`part-NNN.txt`) until the size asked for. File k depends only on (seed, k), so the 100 MB corpus is the
first ten files of the 300 MB one.

Peak memory is the `ru_maxrss` that `os.wait4` reports for a training run in a child process (the largest
resident set of that process and the children it waited for), started by a small launcher so that none of
this process' memory is counted.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data import build_tokenizer, corpus_source, default_corpus_text, scan_corpus, tokenize_corpus
from .machine import describe_machine, finish_machine

FILE_BYTES = 10_000_000  # one generated file: 10 MB
MB = 1e6
GENERATOR = (
    "paragraphs of CPython's pydoc_data.topics (the built-in corpus) shuffled with random.Random(seed * 100003 + "
    "file index) and joined by blank lines, written as 10 MB UTF-8 files part-NNN.txt"
)
TRAIN_OVERRIDES = (  # a small GPT-2-tokenized model: memory beyond the corpus stays small and fixed
    "data=text",
    "data.tokenizer=gpt2",
    "model.d_model=64",
    "model.n_layers=2",
    "model.context_length=64",
    "attention.num_heads=4",
    "data.batch_size=8",
    "trainer.accelerator=cpu",
    "+trainer.limit_val_batches=2",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks=none",
    "logger=csv",
)


@dataclass
class CorpusBenchmark:
    sizes_mb: list[int] = field(default_factory=lambda: [100, 300])  # corpora of the memory runs
    throughput_mb: int = 300  # the corpus the tokenization throughput is measured on
    workers: list[int] = field(default_factory=lambda: [1, 2])
    steps: int = 30  # training steps of each memory run
    tokenize_workers: int = 2  # for the memory runs' cold caches
    seed: int = 0
    corpus_dir: str | None = None  # default: a fresh folder under the system's temp folder, removed at the end
    keep_corpus: bool = False
    parts: list[str] = field(default_factory=lambda: ["throughput", "memory"])


# --- the corpus --------------------------------------------------------------------------------------------


def _paragraphs() -> list[str]:
    return [p for p in default_corpus_text().split("\n\n") if p.strip()]


def generate_corpus(folder: Path, megabytes: int, seed: int = 0) -> list[Path]:
    """`megabytes` MB of text as 10 MB files in `folder` (see the module docstring); existing parts are reused."""
    folder.mkdir(parents=True, exist_ok=True)
    paragraphs, files = _paragraphs(), []
    remaining = int(megabytes * MB)
    for k in range(-(-remaining // FILE_BYTES)):
        size = min(FILE_BYTES, remaining - k * FILE_BYTES)
        path = folder / f"part-{k:03d}.txt"
        files.append(path)
        if path.is_file() and path.stat().st_size == size:
            continue
        rng = random.Random(seed * 100_003 + k)
        parts, total = [], 0
        while total < size:
            p = rng.choice(paragraphs)
            parts.append(p)
            total += len(p.encode("utf-8")) + 2
        data = "\n\n".join(parts).encode("utf-8")[:size]
        path.write_bytes(data.decode("utf-8", errors="ignore").encode("utf-8"))  # no character cut in half
    return files


def _corpus_folder(root: Path, megabytes: int, seed: int) -> Path:
    """A folder holding exactly the first parts of the biggest corpus (hard links: no second copy on disk)."""
    full = root / "parts"
    folder = root / f"{megabytes}mb"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in generate_corpus(full, megabytes, seed):
        try:
            os.link(path, folder / path.name)
        except OSError:
            shutil.copy(path, folder / path.name)
    return folder


def _bytes_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


# --- throughput ----------------------------------------------------------------------------------------------


def _cpu_seconds() -> tuple[float, float]:
    """(this process, its waited-for children) user + system CPU seconds so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def tokenize_throughput(folder: Path, workers: int, cache_dir: Path) -> dict[str, Any]:
    """Cold-cache tokenization of `folder` with GPT-2 in `workers` processes, then a warm (verified) read."""
    source = corpus_source(folder)
    start = time.perf_counter()
    scan = scan_corpus(source)
    scan_s = time.perf_counter() - start
    tokenizer = build_tokenizer("gpt2", "")
    cpu_before, start = _cpu_seconds(), time.perf_counter()
    token_file = tokenize_corpus(source, tokenizer, cache_dir, workers, scan.sha256)
    seconds = time.perf_counter() - start
    main_cpu, worker_cpu = (after - before for after, before in zip(_cpu_seconds(), cpu_before, strict=True))
    start = time.perf_counter()
    tokenize_corpus(source, tokenizer, cache_dir, workers, scan.sha256)  # warm: verification only
    verify_s = time.perf_counter() - start
    corpus_bytes = _bytes_of(folder)
    return {
        "workers": workers,
        "corpus_mb": round(corpus_bytes / MB, 1),
        "tokens": len(token_file),
        "seconds": round(seconds, 2),
        "mb_per_s": round(corpus_bytes / MB / seconds, 2),
        "tokens_per_s": round(len(token_file) / seconds),
        "main_cpu_seconds": round(main_cpu, 2),
        "worker_cpu_seconds": round(worker_cpu, 2),
        "mb_per_cpu_s": round(corpus_bytes / MB / (main_cpu + worker_cpu), 2),
        "cpus_busy": round((main_cpu + worker_cpu) / seconds, 2),  # mean CPUs this run got
        "hash_pass_seconds": round(scan_s, 2),
        "warm_verify_seconds": round(verify_s, 2),
        "bin_bytes": token_file.path.stat().st_size,
        "bin_path": token_file.path.name,
        "text_sha256": scan.sha256,
        "_path": str(token_file.path),
    }


# --- peak memory -------------------------------------------------------------------------------------------


# A process started from this one would count this one's resident set as its own (ru_maxrss includes the memory
# of the fork before exec), so a small launcher starts the command and reports the command's peak from wait4.
_LAUNCHER = """
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"maxrss_kib": usage.ru_maxrss, "returncode": os.waitstatus_to_exitcode(status)}, f)
"""


def peak_rss_of(command: Sequence[str], env: dict[str, str]) -> dict[str, Any]:
    """Run `command` in a child process: its peak resident set in MiB (ru_maxrss from wait4: the largest of the
    process and the children it waited for, e.g. tokenizer workers), its wall time and exit status."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "peak.json"
        start = time.perf_counter()
        launched = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(report), *command], env=env, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        if not report.is_file():
            raise RuntimeError(f"the memory probe's launcher failed:\n{launched.stderr[-2000:]}")
        peak = json.loads(report.read_text())
    result = {
        "peak_rss_mib": round(peak["maxrss_kib"] / 1024, 1),  # Linux: KiB
        "seconds": round(seconds, 1),
        "returncode": peak["returncode"],
    }
    if peak["returncode"]:
        result["stderr_tail"] = launched.stderr[-2000:]
    return result


def _checked(result: dict[str, Any], command: Sequence[str]) -> dict[str, Any]:
    if result["returncode"]:
        raise RuntimeError(f"{' '.join(command)} failed ({result['returncode']}):\n{result.get('stderr_tail', '')}")
    return result


def train_command(folder: Path, steps: int, tokenize_workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "attention_lab.cli",
        "train",
        *TRAIN_OVERRIDES,
        f"data.path={folder}",
        f"data.tokenize_workers={tokenize_workers}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
    ]


MATERIALISE = """
import sys, numpy as np, torch
from attention_lab.data import load_corpus
text = load_corpus(sys.argv[1])  # the whole text as one str, as the old pipeline read it
ids = torch.from_numpy(np.fromfile(sys.argv[2], dtype="<u2").astype(np.int64))  # the old (N,) int64 tensor
print(len(text), len(ids))
"""


def memory_runs(root: Path, spec: CorpusBenchmark, cache_dir: Path) -> list[dict[str, Any]]:
    """Per corpus size: a cold run (tokenizes in the run), a warm run (cache verified and mapped), and what
    the old pipeline held in memory (the text and an int64 tensor of its ids, in a bare process)."""
    env = {**os.environ, "ATTENTION_LAB_CACHE": str(cache_dir), "ATTENTION_LAB_OUTPUTS": str(root / "outputs")}
    rows = []
    for megabytes in spec.sizes_mb:
        folder = _corpus_folder(root, megabytes, spec.seed)
        row: dict[str, Any] = {"corpus_mb": round(_bytes_of(folder) / MB, 1)}
        command = train_command(folder, spec.steps, spec.tokenize_workers)
        for phase in ("cold", "warm"):
            row[phase] = _checked(peak_rss_of(command, env), command)
            print(f"  {megabytes} MB {phase}: {row[phase]}", flush=True)
        bins = sorted(cache_dir.glob("tokens-gpt2-*.bin"), key=lambda p: p.stat().st_mtime)
        row["tokens"] = bins[-1].stat().st_size // 2
        materialise = [sys.executable, "-c", MATERIALISE, str(folder), str(bins[-1])]
        row["old_pipeline_materialised"] = _checked(peak_rss_of(materialise, env), materialise)
        rows.append(row)
    return rows


# --- the whole benchmark -----------------------------------------------------------------------------------


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").is_file() else "unknown"


def _autogroup() -> str | None:
    path = Path("/proc/sys/kernel/sched_autogroup_enabled")
    return path.read_text().strip() if path.is_file() else None


def _machine(machine: dict[str, Any], uptime_start: str) -> dict[str, Any]:
    # sched_autogroup_enabled=1: the processes of one session share one CPU share, so on a loaded machine more
    # worker processes get no more CPU time (cpus_busy says how many CPUs a run got).
    return {
        **finish_machine(machine),
        "uptime_start": uptime_start,
        "uptime_end": _uptime(),
        "sched_autogroup_enabled": _autogroup(),
    }


def _throughput(root: Path, caches: Path, spec: CorpusBenchmark, command: str, corpus: dict) -> dict[str, Any]:
    machine, uptime_start = describe_machine(), _uptime()
    folder = _corpus_folder(root, spec.throughput_mb, spec.seed)
    runs = []
    for workers in spec.workers:
        runs.append(tokenize_throughput(folder, workers, caches / f"workers-{workers}"))
        print(f"  tokenize {spec.throughput_mb} MB, {workers} worker(s): {runs[-1]}", flush=True)
    identical = len({Path(r.pop("_path")).read_bytes() for r in runs}) == 1
    return {
        "benchmark": "corpus_tokenize",
        "command": command,
        "what": "cold-cache GPT-2 tokenization of a generated corpus into the flat .bin cache "
        "(read, decode, tokenize, write, checksum), after the hash pass that finds the cache key",
        "corpus": {**corpus, "mb": spec.throughput_mb},
        "settings": asdict(spec),
        "runs": runs,
        "byte_identical_across_workers": identical,
        "speedup": round(runs[0]["seconds"] / runs[-1]["seconds"], 2) if len(runs) > 1 else None,
        "machine": _machine(machine, uptime_start),
    }


def _memory(root: Path, caches: Path, spec: CorpusBenchmark, command: str, corpus: dict) -> dict[str, Any]:
    machine, uptime_start = describe_machine(), _uptime()
    rows = memory_runs(root, spec, caches / "memory")
    warm = [r["warm"]["peak_rss_mib"] for r in rows]
    return {
        "benchmark": "corpus_memory",
        "command": command,
        "what": "peak resident memory (os.wait4 ru_maxrss of the child) of `attention-lab train` for "
        f"{spec.steps} steps on a generated corpus, cold (tokenized in the run, {spec.tokenize_workers} "
        "workers) and warm (cache verified, then mapped); old_pipeline_materialised: a bare process that "
        "holds the text as one str and its ids as one int64 tensor, as the pipeline before did",
        "corpus": corpus,
        "settings": asdict(spec),
        "train_overrides": list(TRAIN_OVERRIDES),
        "runs": rows,
        "warm_peak_spread": round(max(warm) / min(warm) - 1, 3) if warm else None,
        "growth_mib_smallest_to_largest": {
            key: round(rows[-1][key]["peak_rss_mib"] - rows[0][key]["peak_rss_mib"], 1)
            for key in ("cold", "warm", "old_pipeline_materialised")
        },
        "machine": _machine(machine, uptime_start),
    }


PARTS = {"throughput": _throughput, "memory": _memory}


def run_corpus_benchmark(spec: CorpusBenchmark, command: str) -> dict[str, dict[str, Any]]:
    """{part: result} for the parts in `spec.parts`, each with the machine, its load and how the corpus was made."""
    root = Path(spec.corpus_dir) if spec.corpus_dir else Path(tempfile.mkdtemp(prefix="attention-lab-corpus-"))
    caches = Path(tempfile.mkdtemp(prefix="attention-lab-corpus-cache-"))
    corpus = {"generator": GENERATOR, "seed": spec.seed, "folder": str(root), "committed": False}
    try:
        return {part: PARTS[part](root, caches, spec, command, corpus) for part in spec.parts}
    finally:
        shutil.rmtree(caches, ignore_errors=True)
        if not spec.keep_corpus:
            shutil.rmtree(root, ignore_errors=True)


def format_corpus_benchmark(results: dict[str, dict[str, Any]]) -> str:
    lines = []
    if "throughput" in results:
        throughput = results["throughput"]
        lines.append(f"tokenization (GPT-2, {throughput['corpus']['mb']} MB):")
        for r in throughput["runs"]:
            lines.append(
                f"  {r['workers']} worker(s): {r['mb_per_s']:.2f} MB/s, {r['tokens_per_s']:,} tokens/s "
                f"({r['mb_per_cpu_s']:.2f} MB per CPU-second, {r['cpus_busy']:.2f} CPUs busy)"
            )
        lines.append(f"  byte-identical across worker counts: {throughput['byte_identical_across_workers']}")
    if "memory" in results:
        lines.append("peak RSS of a training run (MiB):")
        for r in results["memory"]["runs"]:
            old = r["old_pipeline_materialised"]["peak_rss_mib"]
            lines.append(
                f"  {r['corpus_mb']} MB: cold {r['cold']['peak_rss_mib']}, warm {r['warm']['peak_rss_mib']} "
                f"(the old pipeline's text + int64 ids alone: {old})"
            )
    return "\n".join(lines)
