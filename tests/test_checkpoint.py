"""Checkpoints (`attention_lab.checkpoint`): reading them safely (weights_only, even when the environment asks
torch not to), rebuilding the model and tokenizer from the file alone, and refusing, with the difference
named, checkpoints that are missing, corrupt, edited, or of another model than expected.

Checkpoints are written without training (tests.helpers.write_checkpoint, or a GPTLitModule's own state_dict):
what matters here is the file's layout, not what the weights learned.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from attention_lab.checkpoint import CheckpointError, load_model, model_weights, read_checkpoint
from attention_lab.data import CharTokenizer
from attention_lab.model import GPT
from attention_lab.training.lit_module import GPTLitModule
from tests.helpers import (
    CHECKPOINT_MODEL,
    OPTIM,
    checkpoint_model_kwargs,
    corpus_tokenizer,
    one_torch_thread,
    random_gpt,
    write_checkpoint,
    write_malicious_checkpoint,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GPT, CharTokenizer]:
    """(path, the GPT saved there, its tokenizer): a random gqa GPT in a GPTLitModule-shaped checkpoint."""
    tokenizer = corpus_tokenizer()
    kwargs = checkpoint_model_kwargs(tokenizer)
    model = random_gpt(kwargs)
    path = write_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", model, kwargs, tokenizer)
    return path, model, tokenizer


def edited_checkpoint(src: Path, dst: Path, edit: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of a checkpoint with `edit(checkpoint)` applied (weights_only load: plain data only)."""
    checkpoint = torch.load(src, map_location="cpu", weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, dst)
    return dst


# --- round trip ----------------------------------------------------------------------------------------------


def test_load_model_round_trip(saved: tuple[Path, GPT, CharTokenizer]) -> None:
    path, saved_model, saved_tokenizer = saved
    model, tokenizer, hparams = load_model(path)
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert hparams["model"] == checkpoint_model_kwargs(saved_tokenizer) and hparams["optim"] == OPTIM
    assert isinstance(tokenizer, CharTokenizer) and tokenizer.state() == saved_tokenizer.state()
    idx = torch.tensor([tokenizer.encode("the lazy dog")])  # (1, T)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), saved_model(idx), rtol=0, atol=0)  # (1, T, vocab)


def test_a_lit_module_checkpoint_loads_as_plain_data(tmp_path: Path) -> None:
    """What GPTLitModule saves (its state_dict and hparams) is tensors and containers only, holds each GPT weight
    once under `model.`, and load_model rebuilds the same GPT from it."""
    tokenizer = corpus_tokenizer()
    torch.manual_seed(0)
    module = GPTLitModule(model=checkpoint_model_kwargs(tokenizer), optim=OPTIM, tokenizer=tokenizer.state()).eval()
    path = tmp_path / "module.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # would raise on any pickled object
    assert set(model_weights(checkpoint["state_dict"])) == set(module.model.state_dict())
    model, _, hparams = load_model(path)
    assert hparams["tokenizer"] == tokenizer.state()
    idx = torch.tensor([tokenizer.encode("The quick")])  # (1, T)
    with torch.no_grad():
        torch.testing.assert_close(model(idx), module.model(idx), rtol=0, atol=0)


# --- files that are not (good) checkpoints ------------------------------------------------------------------


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'nope.ckpt'} does not exist"):
        load_model(tmp_path / "nope.ckpt")


@pytest.mark.parametrize("kind", ["random", "truncated"])
def test_corrupt_checkpoint(kind: str, saved: tuple[Path, GPT, CharTokenizer], tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    data = saved[0].read_bytes()
    bad.write_bytes(os.urandom(4096) if kind == "random" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{bad} could not be read.*corrupt"):
        read_checkpoint(bad)


def test_a_file_without_state_dict_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="no state_dict/hyper_parameters"):
        read_checkpoint(path)


def test_a_checkpoint_cannot_run_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pickled object whose unpickling runs code is refused, even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1
    (which makes torch.load default to full unpickling): read_checkpoint passes weights_only=True explicitly."""
    marker = tmp_path / "code-ran"
    path = write_malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    torch.load(path, map_location="cpu", weights_only=False)  # the payload is real: an unsafe load runs it
    assert marker.exists()
    marker.unlink()

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match=rf"{path} could not be read"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=rf"{path} could not be read"):
        load_model(path)
    assert not marker.exists()


def test_the_resume_io_reads_other_files_as_plain_tensors_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resuming installs PreloadedCheckpointIO: `ckpt_path` comes from memory, and any other file Lightning
    reads (ddp_spawn's `.temp.ckpt`, a bare state_dict that rank 0 hands back) loads as tensors, never unpickling.
    Found by a DDP resume test: it was checked as a run's checkpoint and the finished run failed."""
    from attention_lab.checkpoint import PreloadedCheckpointIO

    resumed = tmp_path / "last.ckpt"
    io = PreloadedCheckpointIO(resumed, {"state_dict": {}, "hyper_parameters": {}, "from": "memory"})
    assert io.load_checkpoint(str(resumed))["from"] == "memory"

    weights = {"model.w": torch.arange(3.0)}
    bare = tmp_path / ".temp.ckpt"
    torch.save(weights, bare)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert torch.equal(io.load_checkpoint(bare)["model.w"], weights["model.w"])

    marker = tmp_path / "code-ran"
    evil = write_malicious_checkpoint(tmp_path / "evil.ckpt", marker)
    with pytest.raises(Exception, match="Weights only load failed"):
        io.load_checkpoint(evil)
    assert not marker.exists()


def test_the_resume_io_gives_each_load_private_copies_of_shared_tensors(tmp_path: Path) -> None:
    """Under ddp_spawn the preloaded checkpoint reaches every rank in shared memory; the optimizer adopts the
    loaded moments as they are, so the ranks updated one `exp_avg` together and their weights drifted apart."""
    from attention_lab.checkpoint import PreloadedCheckpointIO

    moment, step = torch.zeros(4).share_memory_(), torch.tensor(3.0)  # shared, as a spawned worker receives them
    checkpoint = {"optimizer_states": [{"state": {0: {"exp_avg": moment, "step": step}}, "betas": (0.9, 0.95)}]}
    io = PreloadedCheckpointIO(tmp_path / "last.ckpt", checkpoint)
    first, second = (io.load_checkpoint(tmp_path / "last.ckpt") for _ in range(2))
    loaded = [c["optimizer_states"][0]["state"][0] for c in (first, second)]
    assert all(not s["exp_avg"].is_shared() for s in loaded)
    loaded[0]["exp_avg"].add_(1.0)  # what one rank's optimizer step does
    assert torch.equal(loaded[1]["exp_avg"], torch.zeros(4)) and torch.equal(moment, torch.zeros(4))
    assert loaded[0]["step"] is step, "a tensor that is not shared is handed out as it is (no copy)"
    assert first["optimizer_states"][0]["betas"] == (0.9, 0.95)


# --- checkpoints of another model ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"attention": {"name": "multihead", "num_heads": 4, "dropout": 0.0}},
            r"attention: checkpoint \{'name': 'gqa'",
        ),
        ({"d_model": 64}, r"d_model: checkpoint 32 vs config 64"),
        ({"n_layers": 3}, r"n_layers: checkpoint 2 vs config 3"),
    ],
)
def test_expect_model_names_the_differing_setting(
    change: dict[str, Any], message: str, saved: tuple[Path, GPT, CharTokenizer]
) -> None:
    with pytest.raises(CheckpointError, match=message):
        load_model(saved[0], expect_model={**CHECKPOINT_MODEL, **change})


def test_expect_model_without_vocab_size_means_the_checkpoints(saved: tuple[Path, GPT, CharTokenizer]) -> None:
    model, _, _ = load_model(saved[0], expect_model=dict(CHECKPOINT_MODEL))
    assert model.vocab_size == saved[1].vocab_size


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda sd: sd.pop("model.final_norm.bias"), r"missing: final_norm\.bias"),
        (lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(1)), r"unexpected: extra\.weight"),
        (
            lambda sd: sd.__setitem__("model.pos_emb.weight", torch.zeros(8, 32)),
            r"shape mismatch: pos_emb\.weight \(8, 32\) vs model \(16, 32\)",
        ),
    ],
)
def test_weights_that_do_not_fit_are_refused(
    edit: Callable[[dict[str, torch.Tensor]], Any], message: str, saved: tuple[Path, GPT, CharTokenizer], tmp_path: Path
) -> None:
    path = edited_checkpoint(saved[0], tmp_path / "edited.ckpt", lambda ckpt: edit(ckpt["state_dict"]))
    with pytest.raises(CheckpointError, match=rf"{message}.*retrain"):
        load_model(path)


def test_non_model_keys_are_ignored(saved: tuple[Path, GPT, CharTokenizer], tmp_path: Path) -> None:
    def add_metric_state(ckpt: dict[str, Any]) -> None:
        ckpt["state_dict"]["val_loss.mean_value"] = torch.tensor(3.0)
        ckpt["state_dict"]["val_loss.weight"] = torch.tensor(2.0)

    model, _, _ = load_model(edited_checkpoint(saved[0], tmp_path / "metric.ckpt", add_metric_state))
    torch.testing.assert_close(model.state_dict(), saved[1].state_dict(), rtol=0, atol=0)


def test_a_checkpoint_without_its_tokenizer_is_refused(saved: tuple[Path, GPT, CharTokenizer], tmp_path: Path) -> None:
    def drop_tokenizer(ckpt: dict[str, Any]) -> None:
        ckpt["hyper_parameters"]["tokenizer"] = None

    with pytest.raises(CheckpointError, match="does not say which tokenizer"):
        load_model(edited_checkpoint(saved[0], tmp_path / "a.ckpt", drop_tokenizer))


def test_a_tokenizer_larger_than_the_model_is_refused(saved: tuple[Path, GPT, CharTokenizer], tmp_path: Path) -> None:
    def grow_tokenizer(ckpt: dict[str, Any]) -> None:
        ckpt["hyper_parameters"]["tokenizer"]["chars"].append("€")

    with pytest.raises(CheckpointError, match=r"its tokenizer has \d+ tokens but the model only \d+"):
        load_model(edited_checkpoint(saved[0], tmp_path / "b.ckpt", grow_tokenizer))


def test_settings_that_no_longer_build_a_model(saved: tuple[Path, GPT, CharTokenizer], tmp_path: Path) -> None:
    def rename(ckpt: dict[str, Any]) -> None:
        ckpt["hyper_parameters"]["model"]["width"] = ckpt["hyper_parameters"]["model"].pop("d_model")

    with pytest.raises(CheckpointError, match="do not build a GPT in this version"):
        load_model(edited_checkpoint(saved[0], tmp_path / "c.ckpt", rename))
