"""Helpers shared by test modules (imported as `from tests.helpers import ...`; fixtures stay in conftest.py).

Checkpoints here are written without training: a seeded random GPT saved in the layout GPTLitModule's
checkpoints have (`state_dict` with `model.<name>` keys, `hyper_parameters` with the GPT's kwargs, the optimizer
settings and the tokenizer's state). Loading needs nothing more, and training would cost seconds per module.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

import attention_lab
from attention_lab.attention import get_variant
from attention_lab.data import CharTokenizer, Tokenizer
from attention_lab.model import GPT

# Every character a test prompt uses ("The " is the CLI's default prompt); no newline, so a sample prints as one line.
CORPUS = "The quick brown fox jumps over the lazy dog, said the attention head: #1."
CHECKPOINT_MODEL: dict[str, Any] = {  # GPT kwargs without vocab_size (that comes from the tokenizer)
    "context_length": 16,
    "d_model": 32,
    "n_layers": 2,
    "attention": {"name": "gqa", "num_heads": 4, "num_kv_heads": 2, "dropout": 0.0, "qkv_bias": False},
    "emb_dropout": 0.0,
    "resid_dropout": 0.0,
}
OPTIM: dict[str, Any] = {"lr": 1e-3, "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_steps": 1, "min_lr_ratio": 0.1}


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread: the tensors are tiny, and on the shared 2-core machine a second OpenMP thread that
    waits for a busy core turns a 20 ms generation into seconds (measured: 0.02 s vs 4.4 s under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def corpus_tokenizer() -> CharTokenizer:
    return CharTokenizer.from_text(CORPUS)


def checkpoint_model_kwargs(tokenizer: Tokenizer) -> dict[str, Any]:
    return {**CHECKPOINT_MODEL, "vocab_size": tokenizer.vocab_size}


def random_gpt(kwargs: dict[str, Any], seed: int = 0) -> GPT:
    """A GPT with seeded random weights, without moving the caller's random stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT(**kwargs).eval()


def write_checkpoint(path: Path, model: GPT, kwargs: dict[str, Any], tokenizer: Tokenizer) -> Path:
    """Save `model` as a GPTLitModule checkpoint would hold it (only the keys loading reads)."""
    checkpoint = {
        "state_dict": {f"model.{name}": tensor for name, tensor in model.state_dict().items()},
        "hyper_parameters": {"model": kwargs, "optim": OPTIM, "tokenizer": tokenizer.state(), "compile": False},
        "global_step": 1,
    }
    torch.save(checkpoint, path)
    return path


def touch_marker(path: str) -> None:
    """What the malicious checkpoint's payload does when unpickled: leave evidence that code ran."""
    Path(path).write_text("a checkpoint load ran code\n")


class CodeOnUnpickle:
    """An object whose unpickling calls `touch_marker(marker)`: pickle runs what `__reduce__` returns."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return touch_marker, (str(self.marker),)


def write_malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint-shaped file (state_dict, hyper_parameters) with the code-running object inside."""
    torch.save({"state_dict": {}, "hyper_parameters": {"payload": CodeOnUnpickle(marker)}}, path)
    return path


# --- the attention / GPT contract tests: small sizes so the whole suite stays fast on a 2-core CPU ---
D_MODEL = 32
CONTEXT_LENGTH = 16
NUM_HEADS = 4
BATCH = 2
SEQ = 12

# Knobs that make the generic tests exercise what a variant is about (the defaults would hide it: the
# default window of 32 is wider than every sequence here, so the band would never cut anything).
TEST_KNOBS: dict[str, dict[str, Any]] = {
    "sliding_window": {"window": 5},
    "latent": {"latent_dim": 16},
}


def attention_knobs(name: str, **overrides: Any) -> dict[str, Any]:
    """Test knobs for `name`: dropout 0 and NUM_HEADS heads where the variant has those knobs."""
    defaults = get_variant(name).knobs
    knobs: dict[str, Any] = dict(TEST_KNOBS.get(name, {}))
    if "dropout" in defaults:
        knobs["dropout"] = 0.0
    if "num_heads" in defaults:
        knobs["num_heads"] = NUM_HEADS
    knobs.update(overrides)
    return knobs


def expected_heads(name: str, **overrides: Any) -> int:
    """Number of weight maps a variant returns: its num_heads, or 1 for the single-head variants."""
    return attention_knobs(name, **overrides).get("num_heads", 1)


# --- composing the training config fast ----------------------------------------------------------------------
CONF = Path(attention_lab.__file__).parent / "conf"
GROUPS = {path.name for path in CONF.iterdir() if path.is_dir()}


@functools.cache
def _composed(group_overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(group_overrides))


def compose_train(overrides: Sequence[str]) -> DictConfig:
    """compose("train", overrides) as Hydra builds it: the group choices (`attention=gqa`, `data=text`) compose
    the defaults list, once per distinct set (cached), then Hydra's own override code applies the value
    overrides (`optim.lr=0`, `+model.foo=1`) to a copy. A full composition per test (0.1 s each, ~150 of them)
    was a fifth of the quick test run. Overrides of hydra.* need Hydra's node: those compose in full."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    if any(o.is_hydra_override() for o in parsed):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=list(overrides))
    groups = tuple(o.input_line for o in parsed if o.key_or_group.lstrip("+~") in GROUPS)
    values = [o for o in parsed if o.key_or_group.lstrip("+~") not in GROUPS]
    cfg = copy.deepcopy(_composed(groups))
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    return cfg
