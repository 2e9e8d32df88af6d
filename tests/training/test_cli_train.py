"""`attention-lab train` / `python scripts/train.py` as a user meets it: exit status, one readable line for a
mistake (no traceback, no half-made run folder), a traceback for a bug, and printed commands that work."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.training.helpers import (
    LEAN_CALLBACKS,
    ROOT,
    read_metrics,
    run_cli,
    run_folders,
    script_env,
    tiny,
)

BAD_INPUTS = [
    # (overrides, fragments the message must contain); old: a traceback and exit 1 for those the old validation
    # caught (and a run folder with a "failed" record), and none at all for the rest (lr=0 trained nothing,
    # negative values trained nonsense)
    (["optim.min_lr_ratio=-2"], ["optim.min_lr_ratio=-2", "[0, 1]"]),
    (["optim.lr=0"], ["optim.lr=0", "> 0"]),
    (["optim.lr=-1e-3"], ["optim.lr=-0.001", "> 0"]),
    (["trainer.val_check_interval=0"], ["trainer.val_check_interval=0"]),
    (["optim.lr=abc"], ["optim.lr='abc'"]),
    (["attention=sliding_window", "attention.window=0"], ["attention.window=0", "model.context_length=32"]),
    (["data=text", "data.path=missing.txt"], ["data.path=missing.txt does not exist"]),
    (["attention.num_heads=3"], ["num_heads=3", "attention.num_heads", "divisor of 32"]),
    (["optim.lrr=1"], ["optim.lrr"]),  # Hydra's own error (unknown key): its message, mapped to exit 2
    (["ckpt_path=corrupt.ckpt"], ["ckpt_path=corrupt.ckpt", "corrupt"]),
    # found by a review: an empty file crashed while building the message (EOFError has no text), and a folder
    # was reported as missing; both exited 1 with a traceback and left a "failed" run folder
    (["ckpt_path=empty.ckpt"], ["ckpt_path=empty.ckpt", "empty or truncated"]),
    (["ckpt_path=outputs"], ["ckpt_path=outputs is a folder"]),
    # settings Lightning or the GPT rejected with a traceback (exit 1), or that were silently ignored
    (["trainer.devices=0"], ["trainer.devices=0"]),
    (["trainer.strategy=foo"], ["trainer.strategy='foo'"]),
    (["+model.foo=1"], ["model.foo is not a setting"]),
    (["+trainer.max_step=3"], ["did you mean trainer.max_steps?"]),
    (["+optim.foo=1"], ["optim.foo is not a setting"]),
]


# one of each kind stays in the quick run (a config value, Hydra's own error, a bad checkpoint, a missing corpus,
# an unknown key); the rest take the same path and run in CI (slow-marked to keep the quick run under a minute)
QUICK = {"optim.lr=0", "optim.lrr=1", "ckpt_path=corrupt.ckpt", "data=text data.path=missing.txt", "+model.foo=1"}
BAD_INPUT_PARAMS = [
    pytest.param(o, f, id=" ".join(o), marks=() if " ".join(o) in QUICK else pytest.mark.slow) for o, f in BAD_INPUTS
]


@pytest.mark.parametrize(("overrides", "fragments"), BAD_INPUT_PARAMS)
def test_a_bad_input_exits_2_with_one_message_and_no_run_folder(
    tmp_path: Path, corpus: Path, monkeypatch, capsys, overrides: list[str], fragments: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths (missing.txt, corrupt.ckpt) as a user types them
    (tmp_path / "corrupt.ckpt").write_bytes(b"\x80\x04 this is not a checkpoint")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    log_dir = tmp_path / "outputs"
    # a valid tiny run apart from the bad input, which comes last (Hydra: the last value of a key wins)
    code = run_cli([*tiny(corpus=corpus), *LEAN_CALLBACKS, "trainer.max_steps=2", *overrides], log_dir)
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, stderr[-3000:]
    if not overrides[0].startswith("optim.lrr"):  # ours: one `error:` line; Hydra's error has its own layout
        assert [line for line in stderr.splitlines() if line.startswith("error: ")] != []
    assert run_folders(log_dir) == [], "no half-made run folder is left behind"


def test_a_programming_error_keeps_its_traceback_and_exit_1(tmp_path: Path, corpus: Path, monkeypatch, capsys) -> None:
    """Only a user's mistake is shortened to one line: a bug must show where it happened (exit 1), and its run
    folder keeps the record (status failed, error.txt with the traceback)."""
    import attention_lab.training.task as task

    def broken(**kwargs: object) -> None:
        raise RuntimeError("a bug in the module constructor")

    monkeypatch.setattr(task, "GPTLitModule", broken)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    log_dir = tmp_path / "outputs"
    code = run_cli([*tiny(corpus=corpus), "trainer.max_steps=2"], log_dir)
    stderr = capsys.readouterr().err
    assert code == 1
    assert "Traceback" in stderr and "RuntimeError: a bug in the module constructor" in stderr
    (run,) = run_folders(log_dir)
    metrics = read_metrics(run)
    assert metrics["status"] == "failed" and "a bug in the module constructor" in metrics["error"]
    assert "Traceback" in (run / "error.txt").read_text()

    # and from train() itself: the RuntimeError propagates unchanged (not turned into a UserError)
    from attention_lab.errors import UserError
    from tests.training.helpers import make_cfg

    with pytest.raises(RuntimeError, match="a bug in the module constructor") as info:
        task.train(make_cfg(tmp_path, [*tiny(corpus=corpus), "trainer.max_steps=2"]))
    assert not isinstance(info.value, UserError)


def test_a_short_run_with_the_default_warmup_just_works(tmp_path: Path, corpus: Path, capsys) -> None:
    """`trainer.max_steps=10` with the default optim.warmup_steps=30. Old: a ConfigError (warmup >= max_steps)
    with a traceback, so the smallest smoke run of the README failed; now the warmup is cut to fit and recorded."""
    without_warmup = [o for o in tiny(corpus=corpus) if not o.startswith("optim.warmup_steps")]
    log_dir = tmp_path / "outputs"
    assert run_cli([*without_warmup, *LEAN_CALLBACKS, "trainer.max_steps=10"], log_dir) == 0, capsys.readouterr().err
    (run,) = run_folders(log_dir)
    metrics = read_metrics(run)
    assert metrics["status"] == "ok" and metrics["global_step"] == 10
    assert metrics["warmup_steps_used"] < 10
    assert "optim.warmup_steps=30" not in " ".join(metrics["overrides"]), "the default, not an override"


@pytest.mark.slow  # a subprocess run: several seconds
def test_the_printed_command_to_train_further_works_in_a_shell(tmp_path: Path, corpus: Path, capsys) -> None:
    """The summary prints the command that extends a finished run. It is run here exactly as printed, through a
    shell: the run folder's name holds `=` and `,`, which Hydra's grammar rejects unless quoted."""
    log_dir = tmp_path / "outputs"
    args = [*tiny(corpus=corpus), "trainer.val_check_interval=2", "callbacks=default", "trainer.max_steps=4"]
    assert run_cli(args, log_dir) == 0
    stdout = capsys.readouterr().out
    line = next(line for line in stdout.splitlines() if line.startswith("to train further: "))
    command = line.removeprefix("to train further: ")
    ckpt_arg = next(word for word in shlex.split(command) if word.startswith("ckpt_path="))
    assert "=" in ckpt_arg.split("ckpt_path=")[1] and "," in ckpt_arg, "the run folder name carries the overrides"
    words = shlex.split(command)
    assert words[:2] == ["attention-lab", "train"]
    assert "trainer.max_steps=8" in words and "trainer.max_steps=4" not in words, "max_steps replaced, not repeated"

    shell = command.replace("attention-lab", f"{shlex.quote(sys.executable)} -m attention_lab.cli", 1)
    result = subprocess.run(shell, shell=True, cwd=ROOT, env=script_env(tmp_path), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    newest = max(run_folders(log_dir), key=lambda p: p.stat().st_mtime)
    metrics = read_metrics(newest)
    assert metrics["status"] == "ok" and metrics["global_step"] == 8


def test_a_signal_while_the_run_is_set_up_stops_it_at_once_and_leaves_no_folder(
    tmp_path: Path, corpus: Path, monkeypatch, capsys
) -> None:
    """Found by a review: SIGINT while the corpus was tokenized (before training) reached Python's default
    handler: a KeyboardInterrupt traceback and a run folder with only .hydra/ and no metrics.json."""
    import os
    import signal

    from attention_lab.data import TextDataModule

    def interrupted(self: TextDataModule) -> None:
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(TextDataModule, "prepare_data", interrupted)
    log_dir = tmp_path / "outputs"
    code = run_cli([*tiny(corpus=corpus), "trainer.max_steps=2"], log_dir)
    stderr = capsys.readouterr().err
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "nothing was trained" in stderr
    assert run_folders(log_dir) == [], "nothing trained: no half-made run folder"
