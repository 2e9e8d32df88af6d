"""The schema of every training setting, validated in one place before anything expensive happens.

Each section is a dataclass whose fields carry a type and a range (`setting(...)`); the defaults live in the
Hydra YAML files (for attention: in the registry, from which `conf/attention/*.yaml` is generated and kept in
sync by a test), so no value is written twice. `validate(cfg)` checks the composed config section by section
and then the rules that join sections (heads divide the width, the hardware exists, the data path exists), and
raises one `ConfigError` whose message names the setting, what it must be, and an example of a fix.
"""

from __future__ import annotations

import difflib
import glob
import inspect
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .attention import build_attention, get_variant, resolve_knobs
from .attention.positions import POSITIONS
from .attention.registry import KNOB_DOCS
from .data import TOKENIZERS
from .errors import UserError
from .model import INITS

log = logging.getLogger(__name__)

PRECISIONS = ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


class ConfigError(UserError):
    """The composed config cannot work; the message names the setting and the fix."""


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


SECTIONS: dict[str, type] = {
    "model": ModelSchema,
    "optim": OptimSchema,
    "data": DataSchema,
    "trainer": TrainerSchema,
    "eval": EvalSchema,
}

# Ranges of the attention settings; their types and defaults come from the registry (attention/registry.py).
ATTENTION_RULES: dict[str, Rule] = {
    "num_heads": Rule((int,), lambda v: v >= 1, "an integer >= 1 that divides model.d_model", "4"),
    "num_kv_heads": Rule((int,), lambda v: v >= 1, "an integer >= 1 that divides attention.num_heads", "2"),
    "dropout": Rule((float,), lambda v: 0 <= v < 1, "a number in [0, 1)", "0.1"),
    "window": Rule((int,), lambda v: v >= 1, "an integer >= 1 (keys each query sees, itself included)", "32"),
    "latent_dim": Rule((int,), lambda v: v >= 1, "an integer >= 1", "32"),
    "qkv_bias": Rule((bool,), expect="true or false", example="false"),
    "causal": Rule((bool,), expect="true or false", example="true"),
}


def _type_ok(value: Any, kinds: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True  # 1 is a fine learning-rate multiplier; OmegaConf gives 1 for "1"
    return isinstance(value, kinds)


def check_value(key: str, value: Any, rule: Rule) -> None:
    """Raise ConfigError naming `key` unless `value` has the rule's type and range."""
    if value is None and rule.optional:
        return
    fix = f": set {key}={rule.example}" if rule.example else ""
    if value is None or not _type_ok(value, rule.kinds) or not rule.check(value):
        raise ConfigError(f"{key}={value!r} is not valid: it must be {rule.expect}{fix}.")


def check_section(prefix: str, schema: type, values: Mapping[str, Any]) -> None:
    for f in fields(schema):
        if f.name in values:
            check_value(f"{prefix}{f.name}", values[f.name], f.metadata["rule"])


# ------------------------------------------------------------------------------------------------ attention
def attention_settings(cfg: DictConfig) -> dict[str, Any]:
    """The attention section without its name: the settings passed to the variant's builder."""
    attention = OmegaConf.to_container(cfg.attention, resolve=True)
    return {key: value for key, value in attention.items() if key != "name"}


def _check_attention(cfg: DictConfig) -> None:
    name = cfg.attention.get("name")
    settings = attention_settings(cfg)
    resolve_knobs(name, settings)  # unknown variant or setting, wrong type -> AttentionConfigError (a UserError)
    context = cfg.model.context_length
    for key, value in settings.items():
        rule = ATTENTION_RULES[key]
        if key == "window":  # the advice depends on the real context length
            rule = Rule(
                rule.kinds, rule.check, f"{rule.expect}; >= model.context_length={context} is plain causal", "32"
            )
        check_value(f"attention.{key}", value, rule)
    heads = settings.get("num_heads")
    if heads and cfg.model.d_model % heads:
        choices = [d for d in range(1, cfg.model.d_model + 1) if cfg.model.d_model % d == 0]
        raise ConfigError(
            f"model.d_model={cfg.model.d_model} is not divisible by attention.num_heads={heads}: set "
            f"attention.num_heads to a divisor of {cfg.model.d_model} (one of {choices}) or change model.d_model."
        )
    window = settings.get("window")
    if window is not None and window >= context:
        log.info("attention.window=%d >= model.context_length=%d: plain causal attention", window, context)
    # one small layer checks the rules between settings (heads divide the width, kv heads divide heads)
    # and the position scheme: alibi with linear, rope with an odd head width
    position = {"position": cfg.model.get("position", "learned"), "rope_base": cfg.model.get("rope_base", 10000.0)}
    build_attention(name, cfg.model.d_model, min(cfg.model.context_length, 16), **position, **settings)


def attention_yaml(name: str) -> str:
    """The text of conf/attention/<name>.yaml, generated from the registry (its one source of truth)."""
    variant = get_variant(name)
    lines = [
        f"# {name}: {variant.summary} ({variant.paper})",
        "# Generated from attention_lab/attention/registry.py: edit the registry, then run",
        "#   python -m attention_lab.config   (tests/test_config.py checks that the two agree)",
        f"name: {name}",
    ]
    for key, value in variant.knobs.items():
        text = OmegaConf.to_yaml({key: value}).strip()
        lines.append(f"{text:<22}# {KNOB_DOCS[key]}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ the rest
def _check_data(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg.data, "path"):
        raise ConfigError("data=text needs a corpus: add data.path=<file, folder or glob> (or use data=default).")
    path = cfg.data.get("path")
    if path is not None and not (os.path.exists(path) or glob.glob(str(path), recursive=True)):
        raise ConfigError(
            f"data.path={path} does not exist: point it at a text file, a folder of .txt files or a glob "
            "(quote globs), or drop data.path to use the built-in corpus."
        )


def _check_hardware(cfg: DictConfig, multirun: bool) -> None:
    t = cfg.trainer
    accelerator, precision, strategy = str(t.accelerator), str(t.precision), str(t.strategy)
    cuda = torch.cuda.is_available()
    if accelerator in ("gpu", "cuda") and not cuda:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible: use trainer=cpu (or trainer=default, "
            "which picks the GPU when there is one)."
        )
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and cuda)
    if precision.startswith("16") and not on_gpu:
        raise ConfigError(
            f"trainer.precision={precision} needs a GPU: on the CPU use trainer.precision=32-true or bf16-mixed."
        )
    if precision.startswith("bf16") and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"trainer.precision={precision}: this GPU has no bfloat16; use 16-mixed or 32-true.")
    if strategy.startswith("fsdp") and not on_gpu:
        raise ConfigError("trainer=fsdp needs GPUs: use trainer=ddp with trainer.accelerator=cpu on the CPU.")
    if strategy == "ddp" and multirun and t.devices not in (1, "1"):
        raise ConfigError(
            "trainer=ddp cannot run inside a sweep (-m): Lightning re-launches every rank with the original "
            "command line, so each rank would start the whole sweep again. Use trainer=ddp_spawn for sweeps, "
            "or run the ddp job on its own without -m."
        )


def _parameters(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}


def known_keys() -> dict[str, set[str]]:
    """The keys each section may hold: what its consumer accepts (a `+section.key=...` typo would otherwise
    crash deep inside the GPT, the datamodule or Lightning, or be silently ignored)."""
    import lightning as L

    from .data import TextDataModule
    from .model import GPT

    return {
        "model": _parameters(GPT) - {"vocab_size", "attention"},
        "optim": {f.name for f in fields(OptimSchema)},
        "eval": {f.name for f in fields(EvalSchema)},
        "data": _parameters(TextDataModule) | {"_target_"},
        "trainer": _parameters(L.Trainer) | {"_target_"},
        "": set(TOP_LEVEL),
    }


# Top-level keys of the training config (the groups and the run settings).
TOP_LEVEL = (
    "attention",
    "model",
    "data",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "optim",
    "eval",
    "seed",
    "compile",
    "ckpt_path",
)


def _check_keys(cfg: DictConfig) -> None:
    for section, allowed in known_keys().items():
        present = cfg.keys() if not section else (cfg[section] or {}).keys()
        for key in present:
            if key in allowed:
                continue
            name = f"{section}.{key}" if section else key
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"did you mean {section + '.' if section else ''}{close[0]}? " if close else ""
            names = sorted(f"{section}.{k}" if section else k for k in allowed if not k.startswith("_"))
            listing = ", ".join(names) if len(names) <= 12 else "run `attention-lab train --cfg job` to see them"
            raise ConfigError(f"{name} is not a setting: {hint}remove it (the settings here: {listing}).")


def validate(cfg: DictConfig, multirun: bool = False) -> None:
    """Every cheap check, before any tokenizing, model building or trainer start. Raises a UserError."""
    _check_keys(cfg)
    containers = {name: OmegaConf.to_container(cfg.get(name) or {}, resolve=True) for name in SECTIONS}
    for name, schema in SECTIONS.items():
        check_section(f"{name}.", schema, containers[name])
    check_section("", RunSchema, {key: cfg.get(key) for key in ("seed", "compile", "ckpt_path")})
    _check_attention(cfg)
    _check_data(cfg)
    _check_hardware(cfg, multirun)


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}. Keys that start with "_" (Hydra's `_target_`) are left out."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if str(key).startswith("_"):
            continue
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_attention_yaml(folder: str | os.PathLike[str]) -> list[str]:
    """Regenerate conf/attention/*.yaml from the registry; returns the names written."""
    from .attention import available

    os.makedirs(folder, exist_ok=True)
    for name in available():
        with open(os.path.join(folder, f"{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(attention_yaml(name))
    return available()


if __name__ == "__main__":
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conf", "attention")
    print("wrote", ", ".join(write_attention_yaml(here)), "to", here)
