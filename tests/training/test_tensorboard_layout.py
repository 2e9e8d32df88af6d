"""What TensorBoard opens on: the Custom Scalars layout (losses first), per-head numbers in one section, a
TensorBoard command that works without an activated venv, the URL that pins loss and ppl, and enough
validation points by default for a curve."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from attention_lab.training import summary
from attention_lab.training.callbacks import ENTROPY_PREFIX, SCALARS_LAYOUT
from attention_lab.training.summary import PINNED_SCALARS, tensorboard_command, tensorboard_url
from attention_lab.training.task import train
from attention_lab.training.telemetry import HEADS_PREFIX
from tests.helpers import compose_train
from tests.training.helpers import make_cfg, read_events, tiny


def _layout(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata

    (events,) = run.rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)
    return layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])


def test_a_run_opens_on_the_losses(tmp_path: Path, corpus: Path) -> None:
    """One run with the default callbacks: the Custom Scalars layout starts with the loss charts, every chart
    of the layout's first category matches a scalar the run logged, and no top-level group holds per-head
    entropy (it sorted first in the Time Series view, which opens its first two groups)."""
    cfg = make_cfg(tmp_path, [*tiny(corpus=corpus), "trainer.max_steps=4", "trainer.val_check_interval=2"])
    train(cfg)
    run = tmp_path / "run"
    layout, scalars = _layout(run), read_events(run)["scalars"]
    assert [c.title for c in layout.category][:1] == ["loss"]
    first = layout.category[0].chart[0]
    assert first.title == "train and val loss"
    patterns = list(first.multiline.tag)
    assert all(any(re.search(p, tag) for tag in scalars) for p in patterns), (patterns, scalars)
    assert {tag for tag in scalars if re.search(patterns[1], tag)} == {"val/loss"}, "anchored: not hp/val_loss"
    groups = {tag.split("/")[0] for tag in scalars}
    assert "attention_entropy" not in groups
    assert any(tag.startswith(f"{ENTROPY_PREFIX}/L1H") for tag in scalars)


def test_entropy_joins_the_per_head_section() -> None:
    assert ENTROPY_PREFIX.split("/")[0] == HEADS_PREFIX


def test_every_layout_pattern_is_a_regular_expression_of_a_logged_tag_family() -> None:
    for category in SCALARS_LAYOUT.values():
        for kind, patterns in category.values():
            assert kind == "Multiline"
            for pattern in patterns:
                assert pattern.startswith("^") and pattern.endswith("$"), pattern
                re.compile(pattern)


def test_the_url_pins_loss_and_ppl_and_turns_smoothing_off() -> None:
    url = urlsplit(tensorboard_url(6006))
    assert (url.netloc, url.fragment) == ("localhost:6006", "timeseries")
    query = parse_qs(url.query)
    assert query["smoothing"] == ["0"]
    cards = json.loads(query["pinnedCards"][0])
    assert cards == [{"plugin": "scalars", "tag": tag} for tag in PINNED_SCALARS]
    assert PINNED_SCALARS[0] == "val/loss"


def _fake_venv(tmp_path: Path, with_script: bool) -> Path:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text("")
    if with_script:
        (bin_dir / "tensorboard").write_text("")
    return python


def test_the_command_uses_the_venv_script_when_the_venv_is_not_active(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", str(_fake_venv(tmp_path, with_script=True)))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    command = tensorboard_command(tmp_path / "outputs")
    assert command == "venv/bin/tensorboard --logdir outputs --samples_per_plugin images=100"


def test_the_command_is_plain_tensorboard_when_the_venv_is_active(tmp_path: Path, monkeypatch) -> None:
    python = _fake_venv(tmp_path, with_script=True)
    (python.parent / "tensorboard").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    monkeypatch.setenv("PATH", f"{python.parent}{os.pathsep}/usr/bin")
    assert tensorboard_command("outputs").startswith("tensorboard --logdir outputs ")


def test_without_a_script_the_command_runs_the_module(tmp_path: Path, monkeypatch) -> None:
    python = _fake_venv(tmp_path, with_script=False)
    monkeypatch.setattr(sys, "executable", str(python))
    assert f"{python} -m tensorboard.main --logdir" in tensorboard_command("/data/outputs")


def test_the_printed_command_runs_without_an_activated_venv(tmp_path: Path) -> None:
    """The printed command, run by a shell whose PATH has no venv: TensorBoard answers (--version_tb)."""
    command = summary.tensorboard_command(tmp_path)
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        f"{command} --version_tb", shell=True, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"\d+\.\d+", done.stdout + done.stderr)


def test_the_default_run_validates_at_least_ten_times() -> None:
    """A loss curve needs points: the default 300-step run validates every 30 steps (10 points), so TensorBoard's
    chart is a curve and its smoothing has something to average."""
    trainer = compose_train([]).trainer
    assert trainer.max_steps // trainer.val_check_interval >= 10
