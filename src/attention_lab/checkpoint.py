"""Reading checkpoints safely: tensors and plain containers only (`weights_only=True`), clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or was trained with a different model."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist: pass the path of a .ckpt file, "
            "e.g. outputs/runs/<run>/checkpoints/last.ckpt."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, another format, or pickled objects we refuse to run
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): "
            "it is corrupt or not a checkpoint written by attention-lab; use another .ckpt (e.g. best.ckpt)."
        ) from exc
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} has no state_dict/hyper_parameters: it was not written by train.py.")
    return checkpoint


def check_same_model(checkpoint: dict[str, Any], model: dict[str, Any], path: str | Path) -> None:
    """Raise naming every setting that differs between the checkpoint's model and the configured one.

    Only the keys given in `model` are compared, so a check before the tokenizer exists can leave out
    vocab_size."""
    saved = checkpoint["hyper_parameters"].get("model", {})
    differences = [
        f"{key}: checkpoint {saved.get(key)!r} vs config {model[key]!r}"
        for key in sorted(model)
        if saved.get(key) != model[key]
    ]
    if differences:
        raise CheckpointError(
            f"checkpoint {path} was trained with a different model ({'; '.join(differences)}): "
            "use the same attention/model settings as that run (see its .hydra/overrides.yaml), "
            "or a checkpoint of the model you configured (to resume: start a new run without ckpt_path)."
        )
