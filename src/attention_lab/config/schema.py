"""The settings' schema: one dataclass per config section, each field a type, a range and an example fix.

`config.validate` checks a composed config against these; the defaults themselves live in the Hydra YAML.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..attention import available
from ..attention.positions import POSITIONS
from ..data import TOKENIZERS
from ..model import INITS

PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def strategies() -> list[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ["auto", *StrategyRegistry.available_strategies()]


def _devices_ok(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 1 or value == -1
    if isinstance(value, list):
        return bool(value) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    return value == "auto" or bool(re.fullmatch(r"\d+(,\d+)*,?|-1", value))


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Rule:
    """What one setting may hold: its types, a range check, the words for both, and an example value."""

    kinds: tuple[type, ...]
    check: Callable[[Any], bool] = lambda value: True
    expect: str = ""
    example: str = ""
    optional: bool = False  # null allowed


def setting(kinds: type | tuple[type, ...], check=lambda v: True, expect="", example="", optional=False) -> Any:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return field(metadata={"rule": Rule(kinds, check, expect, example, optional)})


def positive_int(example: str, optional: bool = False) -> Any:
    return setting(int, lambda v: v >= 1, "an integer >= 1", example, optional)


def non_negative_int(example: str) -> Any:
    return setting(int, lambda v: v >= 0, "an integer >= 0", example)


def probability(example: str) -> Any:
    return setting(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)", example)


@dataclass
class ModelSchema:
    context_length: int = positive_int("128")
    d_model: int = positive_int("128")
    n_layers: int = positive_int("4")
    emb_dropout: float = probability("0.1")
    resid_dropout: float = probability("0.1")
    tie_weights: bool = setting(bool, expect="true or false", example="true")
    position: str = setting(str, lambda v: v in POSITIONS, f"one of {', '.join(POSITIONS)}", "rope")
    rope_base: float = setting(float, lambda v: 1 < v < math.inf, "a number > 1 (RoPE's wavelength base)", "10000.0")
    mlp_ratio: int = positive_int("4")
    init: str = setting(str, lambda v: v in INITS, f"one of {', '.join(INITS)}", "gpt2")
    mlp_hidden: int = positive_int("512", optional=True)  # null: mlp_ratio x d_model
    bias: bool = setting(bool, expect="true or false (bias in every Linear and LayerNorm)", example="false")
    layers: str = setting(  # or a list (the rule takes both)
        (str, list),
        expect="null, a pattern like sliding_window*3+multihead, or a list of variant names",
        example="sliding_window*3+multihead",
        optional=True,
    )
    match_params: str = setting(  # resolved by the task into mlp_hidden (training/param_match.py)
        str,
        lambda v: v in available(),
        f"null or an attention variant to match in non-embedding parameters, one of {', '.join(available())}",
        "multihead",
        optional=True,
    )


@dataclass
class OptimSchema:
    lr: float = setting(float, lambda v: 0 < v < math.inf, "a number > 0 (0 would train nothing)", "3e-3")
    weight_decay: float = setting(float, lambda v: 0 <= v < math.inf, "a number >= 0", "0.1")
    betas: tuple = setting(
        (list, tuple),
        lambda v: len(v) == 2 and all(isinstance(b, float | int) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1)",
        "[0.9,0.95]",
    )
    warmup_steps: int = non_negative_int("30")
    min_lr_ratio: float = setting(float, lambda v: 0 <= v <= 1, "a number in [0, 1] (a fraction of optim.lr)", "0.1")


@dataclass
class DataSchema:
    path: str = setting(str, expect="a file, folder or glob", example="corpus/", optional=True)
    tokenizer: str = setting(str, lambda v: v in TOKENIZERS, f"one of {', '.join(TOKENIZERS)}", "char")
    stride: int = positive_int("64", optional=True)
    batch_size: int = positive_int("16")
    val_fraction: float = setting(float, lambda v: 0 < v < 1, "a number strictly between 0 and 1", "0.1")
    num_workers: int = non_negative_int("0")
    cache_dir: str = setting(str, expect="a folder", example=".cache/attention-lab", optional=True)
    tokenize_workers: int = positive_int("2", optional=True)  # null: min(4, CPUs); 1: in the run's process


@dataclass
class ProbeSchema:
    """The settings both recall probes share (data=mqar, data=induction); the rules that join them (pairs
    that fit the sequence, a vocabulary big enough for unique keys) live with the probes (data/probe_tasks.py)."""

    vocab_size: int = setting(int, lambda v: v >= 2, "an integer >= 2", "128")
    num_train: int = positive_int("20000")
    num_val: int = positive_int("1000")
    batch_size: int = positive_int("64")
    num_workers: int = non_negative_int("0")


@dataclass
class MQARSchema(ProbeSchema):
    num_pairs: int = positive_int("8")
    num_queries: int = positive_int("8", optional=True)


PROBE_SCHEMAS: dict[str, type] = {
    "attention_lab.data.probes.MQARDataModule": MQARSchema,
    "attention_lab.data.probes.InductionDataModule": ProbeSchema,
}


def data_schema(target: object) -> type:
    """The schema of the data section: a probe's by its `_target_`, else the text data's."""
    return PROBE_SCHEMAS.get(str(target), DataSchema)


@dataclass
class TrainerSchema:
    max_steps: int = positive_int("300")
    val_check_interval: float = setting(
        (int, float),
        lambda v: v >= 1 if isinstance(v, int) else 0 < v <= 1,
        "a number of steps >= 1 (or a fraction of an epoch in (0, 1])",
        "50",
    )
    max_epochs: int = setting(int, lambda v: v >= -1, "an integer >= 1 (-1: no limit; runs stop at max_steps)", "-1")
    log_every_n_steps: int = positive_int("10")
    accumulate_grad_batches: int = positive_int("1")
    gradient_clip_val: float = setting(float, lambda v: v >= 0, "a number >= 0 (or null: no clipping)", "1.0", True)
    num_sanity_val_steps: int = setting(int, lambda v: v >= -1, "an integer >= -1", "1")
    num_nodes: int = positive_int("1")
    devices: int = setting(
        (int, str, list),
        lambda v: _devices_ok(v),
        "a number of devices >= 1 (-1: all), auto, or a list of device ids",
        "1",
    )
    strategy: str = setting(str, lambda v: v in strategies(), "auto or one of Lightning's strategies", "auto")
    precision: str = setting(str, lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}", "32-true")
    accelerator: str = setting(str, lambda v: v in ACCELERATORS, f"one of {', '.join(ACCELERATORS)}", "cpu")


def _lengths_ok(value: Any) -> bool:
    return all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in value)


@dataclass
class EvalSchema:
    lengths: tuple = setting(
        (list, tuple),
        _lengths_ok,
        "a list of integers >= 1 (multiples of model.context_length; [] evaluates nothing extra)",
        "[1,2,4]",
    )
    position_buckets: int = positive_int("16")


@dataclass
class RunSchema:
    seed: int = non_negative_int("1337")
    compile: bool = setting(bool, expect="true or false", example="false")
    ckpt_path: str = setting(
        str, expect="the path of a .ckpt file", example="'<run>/checkpoints/last.ckpt'", optional=True
    )
    tuned: str = setting(  # training/tuning.py reads it: this run's variant's entry sets its optim settings
        str, expect="null or a file of tuned settings per variant", example="outputs/tuned/lr.yaml", optional=True
    )


SECTIONS: dict[str, type] = {
    "model": ModelSchema,
    "optim": OptimSchema,
    "data": DataSchema,
    "trainer": TrainerSchema,
    "eval": EvalSchema,
}
