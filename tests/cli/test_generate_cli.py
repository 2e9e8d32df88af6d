"""The `generate` command (`attention_lab.cli.generate`), run in-process through `main(argv)`: what it prints
for a good checkpoint, that greedy decoding is deterministic and seeds steer sampling, `--compare-cache`, and
that every user mistake is one `error:` line on stderr with exit status 2 and no traceback.

The checkpoint is a random gqa GPT with a char tokenizer (tests.helpers): no end-of-text token, so every run
generates exactly --max-new-tokens tokens, and the corpus has no newline, so the text is one output line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from attention_lab import cli
from attention_lab.bench.generation import GenerationError
from attention_lab.cli.generate import encode_prompt, main
from attention_lab.data import CharTokenizer, GPT2Tokenizer
from attention_lab.devices import DeviceError, resolve_device
from tests.helpers import (
    checkpoint_model_kwargs,
    corpus_tokenizer,
    one_torch_thread,
    random_gpt,
    write_checkpoint,
    write_malicious_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "generate.py"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tokenizer = corpus_tokenizer()
    kwargs = checkpoint_model_kwargs(tokenizer)
    return write_checkpoint(tmp_path_factory.mktemp("run") / "last.ckpt", random_gpt(kwargs), kwargs, tokenizer)


def run_ok(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """main(args) must succeed; its stdout lines: [checkpoint line, text, timing line, (compare-cache lines)]."""
    assert main(list(args)) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out.splitlines()


# --- a good checkpoint --------------------------------------------------------------------------------------


def test_prints_the_model_then_the_text(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_ok(capsys, "--ckpt", str(ckpt), "--prompt", "the quick, brown #fox: ", "--max-new-tokens", "30")
    assert lines[0].startswith(f"[checkpoint] {ckpt}: attention=gqa (num_heads=4, num_kv_heads=2")
    assert "2 layers, d_model 32, context 16, learned positions, char tokenizer" in lines[0]
    text = lines[1]
    assert text.startswith("the quick, brown #fox: ")  # verbatim: commas, '#' and ': ' survive
    assert len(text) == len("the quick, brown #fox: ") + 30  # char tokenizer: one character per token
    assert lines[2].startswith("[generate] 30 new tokens in ")
    assert "(KV cache on, temperature 0.8, top-k 40, seed 0, cpu)" in lines[2]
    assert len(lines) == 3


def test_defaults(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_ok(capsys, "--ckpt", str(ckpt))
    assert lines[1].startswith("The ") and len(lines[1]) == len("The ") + 100
    assert "100 new tokens" in lines[2]


def test_greedy_is_deterministic(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def text(*extra: str) -> str:
        return run_ok(capsys, "--ckpt", str(ckpt), "--temperature", "0", "--max-new-tokens", "40", *extra)[1]

    greedy = text()
    assert text() == greedy
    assert text("--seed", "5") == greedy  # greedy ignores the seed
    assert text("--no-cache") == greedy  # and recomputing gives the cached tokens
    lines = run_ok(capsys, "--ckpt", str(ckpt), "--temperature", "0", "--no-cache", "--top-k", "0")
    assert "(KV cache off, greedy, seed 0, cpu)" in lines[2]


def test_sampling_is_seeded(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def text(seed: int) -> str:
        return run_ok(capsys, "--ckpt", str(ckpt), "--max-new-tokens", "40", "--seed", str(seed), "--top-k", "0")[1]

    assert text(0) == text(0) != text(1)


def test_compare_cache_reports_identical_tokens(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_ok(capsys, "--ckpt", str(ckpt), "--temperature", "0", "--compare-cache", "--max-new-tokens", "30")
    compare = "\n".join(lines[3:])
    assert "greedy, 30 new tokens: identical tokens with and without the cache" in compare
    assert "with cache:" in compare and "without cache:" in compare and "speed-up with the cache:" in compare
    assert compare.count("tokens/s") == 2


@pytest.mark.parametrize("position", ["rope", "alibi", "sliding_window+rope"])
def test_a_relative_scheme_generates_past_the_context_with_the_cache(
    position: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Context 16, 3 x 16 new tokens: cached == uncached, and (sliding_window + rope) in a bounded cache."""
    tokenizer = corpus_tokenizer()
    kwargs = checkpoint_model_kwargs(tokenizer)
    if position == "sliding_window+rope":
        attention = {"name": "sliding_window", "num_heads": 4, "window": 6, "dropout": 0.0, "qkv_bias": False}
        kwargs = {**kwargs, "attention": attention}
        position = "rope"
    kwargs = {**kwargs, "position": position}
    path = write_checkpoint(tmp_path / "last.ckpt", random_gpt(kwargs), kwargs, tokenizer)
    lines = run_ok(capsys, "--ckpt", str(path), "--temperature", "0", "--compare-cache", "--max-new-tokens", "48")
    assert f"context 16, {position} positions" in lines[0]
    assert "greedy, 48 new tokens: identical tokens with and without the cache" in "\n".join(lines[3:])


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--ckpt", "--prompt", "--max-new-tokens", "--temperature", "--top-k", "--seed", "--no-cache"):
        assert flag in out
    assert "--device" in out and "--compare-cache" in out


def test_the_dispatcher_runs_generate(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["generate", "--ckpt", str(ckpt), "--max-new-tokens", "5"]) == 0
    assert "5 new tokens" in capsys.readouterr().out


# --- user mistakes ------------------------------------------------------------------------------------------


def assert_one_error_line(capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ([], ["the following arguments are required: --ckpt"]),
        (["--ckpt", "{missing}"], ["--ckpt {missing} does not exist"]),
        (["--ckpt", "{folder}"], ["--ckpt {folder} is a folder"]),
        (["--ckpt", "{corrupt}"], ["{corrupt} could not be read", "corrupt"]),
        (["--ckpt", "{ckpt}", "--max-new-tokens", "0"], ["--max-new-tokens must be a positive integer, got 0"]),
        (["--ckpt", "{ckpt}", "--max-new-tokens", "many"], ["--max-new-tokens must be a positive integer, got many"]),
        (["--ckpt", "{ckpt}", "--max-new-tokens"], ["--max-new-tokens: expected one argument"]),
        (["--ckpt", "{ckpt}", "--temperature", "-1"], ["--temperature must be a number >= 0 (0 = greedy), got -1"]),
        (["--ckpt", "{ckpt}", "--temperature", "nan"], ["--temperature must be", "got nan"]),
        (["--ckpt", "{ckpt}", "--top-k", "-3"], ["--top-k must be an integer >= 0 (0 = off), got -3"]),
        (["--ckpt", "{ckpt}", "--top-k", "2.5"], ["--top-k must be an integer >= 0 (0 = off), got 2.5"]),
        (["--ckpt", "{ckpt}", "--seed", "-1"], ["--seed must be an integer >= 0, got -1"]),
        (["--ckpt", "{ckpt}", "--device", "tpu"], ["--device='tpu'", "use cpu, cuda or auto"]),
        (["--ckpt", "{ckpt}", "--prompt", "ΑΒΓ"], ["--prompt 'ΑΒΓ' cannot be encoded"]),
        (["--ckpt", "{ckpt}", "--prompt", ""], ["--prompt '' gives no tokens"]),
        (["--ckpt", "{ckpt}", "--colour", "red"], ["unrecognized arguments: --colour red"]),
        (["--ckpt", "{ckpt}", "--temp", "0"], ["unrecognized arguments: --temp 0"]),  # no abbreviations
        (["--ckpt", "{ckpt}", "mode=benchmark"], ["unrecognized arguments: mode=benchmark"]),
    ],
)
def test_user_errors_are_one_line(
    args: list[str], fragments: list[str], ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(ckpt.read_bytes()[:1000])
    paths = {"ckpt": ckpt, "missing": tmp_path / "no" / "such.ckpt", "folder": tmp_path, "corrupt": corrupt}
    assert main([arg.format(**paths) for arg in args]) == 2
    assert_one_error_line(capsys, *(fragment.format(**paths) for fragment in fragments))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_a_user_error(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--ckpt", str(ckpt), "--device", "cuda"]) == 2
    assert_one_error_line(capsys, "--device=cuda but CUDA is not available here")


def test_a_malicious_checkpoint_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "code-ran"
    path = write_malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch.load would unpickle by default
    assert main(["--ckpt", str(path)]) == 2
    assert_one_error_line(capsys, f"{path} could not be read")
    assert not marker.exists()


# --- helpers of the command ---------------------------------------------------------------------------------


def test_encode_prompt() -> None:
    char = CharTokenizer.from_text("abc ")
    assert encode_prompt(char, "ab c").tolist() == [[1, 2, 0, 3]]
    with pytest.raises(GenerationError, match=r"--prompt 'xyz' cannot be encoded.*not in the char"):
        encode_prompt(char, "xyz")
    with pytest.raises(GenerationError, match="no end-of-text token"):
        encode_prompt(char, "")
    assert encode_prompt(GPT2Tokenizer(), "").tolist() == [[GPT2Tokenizer.eot_token]]  # starts from end-of-text


def test_resolve_device() -> None:
    """The --device values (attention_lab.devices.resolve_device, which --device goes through)."""
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match=r"--device='tpu' is not a device"):
        resolve_device("tpu", setting="--device")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="CUDA is not available"):
            resolve_device("cuda")


# --- the script -----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_script_subprocess(ckpt: Path, tmp_path: Path) -> None:
    """scripts/generate.py as a user runs it, from a foreign working directory: exit codes, output, and no
    folders or files created (no run folder, no .hydra/, no logs)."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}  # see one_torch_thread
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
        )

    ok = run("--ckpt", str(ckpt), "--prompt", "the quick", "--temperature", "0", "--compare-cache")
    assert ok.returncode == 0, ok.stderr
    assert "tokens/s (KV cache on, greedy" in ok.stdout and "without cache:" in ok.stdout
    missing = tmp_path / "no" / "such.ckpt"
    bad = run("--ckpt", str(missing))
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and str(missing) in bad.stderr and "Traceback" not in bad.stderr
    assert list(tmp_path.iterdir()) == []
