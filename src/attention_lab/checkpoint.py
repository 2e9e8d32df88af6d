"""Checkpoints: read once and safely, verify against the configured run, rebuild a model from one.

A checkpoint is read exactly once per process, with `weights_only=True` passed explicitly (so that neither
`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` nor a file swapped in later can make anything unpickle code). Resuming hands
that same dict to Lightning through `PreloadedCheckpointIO`, so Lightning never opens the file again.

Every check names what differs and the fix: the model's settings, the tokenizer itself (not only its size:
two char corpora of the same size map ids to different characters), and the optimizer settings (a resume
restores the optimizer and the schedule from the file, so a changed `optim.*` would be recorded but not used;
we refuse it instead).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor

from .data import Tokenizer, tokenizer_from_state
from .devices import resolve_device
from .errors import UserError
from .model import GPT

MODEL_PREFIX = "model."  # GPTLitModule keeps the GPT as `self.model`: its weights are `model.<name>`


class CheckpointError(UserError):
    """A checkpoint is missing, unreadable, finished, or belongs to a different model, tokenizer or optimizer."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint as tensors and plain containers only; never unpickles an object."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"ckpt_path={path} is a folder: pass a .ckpt file in it, e.g. {path / 'checkpoints' / 'last.ckpt'}."
        )
    if not path.is_file():
        raise CheckpointError(
            f"ckpt_path={path} does not exist: pass the path of a .ckpt file, "
            "e.g. outputs/runs/<run>/checkpoints/last.ckpt."
        )
    try:
        # weights_only=True explicitly: torch then ignores TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, another format, or pickled objects we refuse to run
        reason = (str(exc).splitlines() or ["an empty or truncated file"])[0][:200]
        raise CheckpointError(
            f"ckpt_path={path} could not be read ({type(exc).__name__}: {reason}): "
            "it is corrupt or not a checkpoint written by attention-lab; use another .ckpt (e.g. best.ckpt)."
        ) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(
            f"ckpt_path={path} has no state_dict/hyper_parameters: it was not written by attention-lab training."
        )
    return checkpoint


class PreloadedCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, except that loading returns the checkpoint we already read and verified.

    Lightning would otherwise read `ckpt_path` a second time, without `weights_only` when the environment
    forces it off. Any other file is read with `weights_only=True` too, but not checked as a run's checkpoint:
    under ddp_spawn Lightning reads back `.temp.ckpt`, the bare state_dict rank 0 hands to the main process.

    Under ddp_spawn this object is pickled to every worker, and torch ships its CPU tensors through shared
    memory: all ranks would get the same storages. The optimizer adopts the loaded moments without copying,
    so every rank's fused AdamW then updated one shared `exp_avg` in place, and the ranks' weights drifted
    apart after the first resumed step. Each load therefore hands out private copies of shared tensors.
    """

    def __init__(self, path: str | Path, checkpoint: dict[str, Any]) -> None:
        super().__init__()
        self.path, self.checkpoint = Path(path).resolve(), checkpoint

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if Path(path).resolve() == self.path:
            return _unshared(self.checkpoint)
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def _unshared(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint with every tensor in shared memory replaced by a private copy (others stay as they are)."""
    return apply_to_collection(checkpoint, Tensor, lambda t: t.clone() if t.is_shared() else t)


def _differences(saved: dict[str, Any], configured: dict[str, Any]) -> list[str]:
    return [
        f"{key}: checkpoint {saved.get(key)!r} vs config {configured[key]!r}"
        for key in sorted(configured)
        if _normalise(saved.get(key)) != _normalise(configured[key])
    ]


def _normalise(value: Any) -> Any:
    """Lists and tuples compare equal (betas come back from a checkpoint as a list or a tuple)."""
    return list(value) if isinstance(value, tuple) else value


def saved_model(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's GPT kwargs, with the GPT's defaults for settings added after it was written
    (a checkpoint from before `model.position` existed was trained with learned positions)."""
    defaults = {
        name: p.default
        for name, p in inspect.signature(GPT.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    return {**defaults, **checkpoint["hyper_parameters"].get("model", {})}


def check_same_model(checkpoint: dict[str, Any], model: dict[str, Any], path: str | Path) -> None:
    """Raise naming every setting that differs between the checkpoint's model and the configured one.

    Only the keys given in `model` are compared, so a check before the tokenizer exists can leave out
    vocab_size."""
    differences = _differences(saved_model(checkpoint), model)
    if differences:
        raise CheckpointError(
            f"ckpt_path={path} was trained with a different model ({'; '.join(differences)}): "
            "use the same attention/model settings as that run (see its .hydra/overrides.yaml), "
            "or start a new run without ckpt_path."
        )


def check_same_optim(checkpoint: dict[str, Any], optim: dict[str, Any], path: str | Path) -> None:
    """Refuse a resume whose `optim.*` differs: the optimizer and schedule state come from the checkpoint."""
    differences = _differences(checkpoint["hyper_parameters"].get("optim", {}), optim)
    if differences:
        raise CheckpointError(
            f"ckpt_path={path} was trained with other optimizer settings ({'; '.join(differences)}): a resume "
            "restores the optimizer and lr schedule from the checkpoint, so these would be recorded but not used. "
            "Resume with the run's own optim.* settings (see its .hydra/overrides.yaml), or start a new run."
        )


def describe_tokenizer(state: dict[str, Any]) -> str:
    chars = state.get("chars")
    return f"char tokenizer of {len(chars)} characters" if chars is not None else f"{state.get('name')} tokenizer"


def check_same_tokenizer(checkpoint: dict[str, Any], tokenizer: dict[str, Any], path: str | Path) -> None:
    """Refuse a resume whose tokenizer maps ids differently, even at the same vocabulary size."""
    saved = checkpoint["hyper_parameters"].get("tokenizer")
    if saved == tokenizer:
        return
    detail = ""
    if saved is not None and "chars" in saved and "chars" in tokenizer:
        only_saved = sorted(set(saved["chars"]) - set(tokenizer["chars"]))[:5]
        only_new = sorted(set(tokenizer["chars"]) - set(saved["chars"]))[:5]
        detail = f"; characters only in the checkpoint's: {only_saved!r}, only in this corpus': {only_new!r}"
    raise CheckpointError(
        f"ckpt_path={path} was trained with another tokenizer (checkpoint: "
        f"{describe_tokenizer(saved or {})}, config: {describe_tokenizer(tokenizer)}{detail}): the same ids would "
        "mean other tokens. Resume with that run's data.path and data.tokenizer, or start a new run."
    )


def checkpoint_step(checkpoint: dict[str, Any]) -> int:
    """The optimizer step the checkpoint was written at."""
    return int(checkpoint.get("global_step", 0))


def model_weights(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """The GPT's own weights: `model.`-prefixed keys with the prefix stripped.

    Everything else in a LightningModule's state_dict is dropped on purpose: metric states (`val_loss.*`) and
    the `_forward.*` alias of the same GPT are not part of the model.
    """
    return {key[len(MODEL_PREFIX) :]: value for key, value in state_dict.items() if key.startswith(MODEL_PREFIX)}


def _weight_mismatches(model: GPT, weights: dict[str, Tensor]) -> list[str]:
    """Every way `weights` does not fit `model` (missing, unexpected, wrong shape), as short phrases."""
    expected = model.state_dict()
    problems = []
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    wrong_shape = [
        f"{key} {tuple(weights[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in expected
        if key in weights and weights[key].shape != expected[key].shape
    ]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{label}: {', '.join(keys[:5])}{more}")
    return problems


def _checkpoint_tokenizer(checkpoint: dict[str, Any], path: str | Path) -> Tokenizer:
    """The tokenizer the model was trained with (stored once, as GPTLitModule's `tokenizer` hparam)."""
    state = checkpoint["hyper_parameters"].get("tokenizer")
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} does not say which tokenizer it was trained with (no hyper_parameters.tokenizer): "
            "it was not written by train.py; retrain with scripts/train.py, which saves the tokenizer."
        )
    try:
        return tokenizer_from_state(state)
    except ValueError as err:  # includes DataConfigError / TokenizerFilesError, whose messages name the fix
        raise CheckpointError(f"checkpoint {path}: cannot rebuild its tokenizer {state.get('name')!r}: {err}") from err


def _build_model(hparams: dict[str, Any], path: str | Path) -> GPT:
    """GPT(**hparams["model"]), with a CheckpointError when the saved settings no longer build a model."""
    kwargs = hparams.get("model")
    if not isinstance(kwargs, dict):
        raise CheckpointError(
            f"checkpoint {path} has no hyper_parameters.model (the GPT's settings): it was not written by "
            "attention_lab's GPTLitModule; use a checkpoint from scripts/train.py."
        )
    try:
        return GPT(**kwargs)
    except (TypeError, ValueError) as err:  # renamed/removed settings, or knobs this version rejects
        raise CheckpointError(
            f"checkpoint {path}: its model settings {kwargs} do not build a GPT in this version ({err}); "
            "use the attention-lab version it was trained with, or retrain."
        ) from err


def load_model(
    ckpt_path: str | Path, device: str | torch.device = "cpu", expect_model: dict[str, Any] | None = None
) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """Rebuild (GPT in eval mode on `device`, its tokenizer, the checkpoint's hyper_parameters) from a checkpoint.

    Needs nothing but the file: GPTLitModule saves the GPT's kwargs and the tokenizer's state as hyper-parameters, and
    the weights are loaded with `weights_only=True`, so a checkpoint cannot run code. The load is strict: a
    partial load would sample from half-random weights without any sign of it.

    `expect_model` (GPT kwargs, e.g. from a config) makes a checkpoint of another variant or width fail with the
    differing settings named; a missing/None `vocab_size` there means "whatever the checkpoint says".
    """
    checkpoint = read_checkpoint(ckpt_path)  # CheckpointError for missing / corrupt / foreign files
    hparams = dict(checkpoint["hyper_parameters"])
    if expect_model is not None:
        saved_vocab = (hparams.get("model") or {}).get("vocab_size")
        expected = {**expect_model, "vocab_size": expect_model.get("vocab_size") or saved_vocab}
        check_same_model(checkpoint, expected, ckpt_path)
    model = _build_model(hparams, ckpt_path)
    weights = model_weights(checkpoint["state_dict"])
    problems = _weight_mismatches(model, weights)
    if problems:
        raise CheckpointError(
            f"checkpoint {ckpt_path}: its weights do not fit the model its hyper_parameters describe "
            f"({'; '.join(problems)}): the file was edited or written by another version of attention-lab; "
            "use an untouched checkpoint from scripts/train.py, or retrain."
        )
    model.load_state_dict(weights, strict=True)
    tokenizer = _checkpoint_tokenizer(checkpoint, ckpt_path)
    if tokenizer.vocab_size > model.vocab_size:
        raise CheckpointError(
            f"checkpoint {ckpt_path}: its tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{model.vocab_size}: the checkpoint is inconsistent; retrain with scripts/train.py."
        )
    device = device if isinstance(device, torch.device) else resolve_device(device)
    return model.to(device).eval(), tokenizer, hparams
