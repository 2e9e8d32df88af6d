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
import importlib.util
import inspect
import logging
import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..attention import build_attention, get_variant, resolve_knobs
from ..attention.patterns import layer_settings, pattern_label, pattern_terms
from ..attention.registry import KNOB_DOCS
from ..errors import UserError
from .schema import SECTIONS, EvalSchema, OptimSchema, Rule, RunSchema, data_schema

__all__ = ["SECTIONS", "ConfigError", "flatten", "validate"]

log = logging.getLogger(__name__)


class ConfigError(UserError):
    """The composed config cannot work; the message names the setting and the fix."""


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


_warned_plain: set[tuple[str, int]] = set()  # once per process: a sweep validates each job twice


def _warn_if_plain_multihead(name: str, knobs: Mapping[str, Any]) -> None:
    """gqa with as many K/V heads as query heads shares nothing: it is multi-head attention under another name
    (README's own sweep example did this). Allowed, since it can be a deliberate control, but said once."""
    heads, kv_heads = knobs.get("num_heads"), knobs.get("num_kv_heads")
    if kv_heads is None or kv_heads != heads or (name, heads) in _warned_plain:
        return
    _warned_plain.add((name, heads))
    shared = [d for d in range(1, heads) if heads % d == 0]
    fix = f"set attention.num_kv_heads to one of {shared} to share K/V heads" if shared else "use attention=multihead"
    log.warning(
        "attention=%s with attention.num_kv_heads=%d = attention.num_heads: every query head has its own K/V head, "
        "which is plain multi-head attention (attention=multihead); %s",
        name,
        kv_heads,
        fix,
    )


def _check_attention(cfg: DictConfig) -> None:
    name = cfg.attention.get("name")
    settings = attention_settings(cfg)
    knobs = resolve_knobs(name, settings)  # unknown variant or setting, wrong type: AttentionConfigError (UserError)
    context = cfg.model.context_length
    for key, value in settings.items():
        rule = ATTENTION_RULES.get(key)
        if rule is None:  # a variant's own knob: resolve_knobs checked its type, the variant checks its range
            continue
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
    _warn_if_plain_multihead(name, knobs)
    # one small layer checks the rules between settings (heads divide the width, kv heads divide heads)
    # and the position scheme: alibi with linear, rope with an odd head width
    position = {"position": cfg.model.get("position", "learned"), "rope_base": cfg.model.get("rope_base", 10000.0)}
    build_attention(name, cfg.model.d_model, min(cfg.model.context_length, 16), **position, **settings)
    _check_layers(cfg, position)


def attention_label(cfg: DictConfig) -> str:
    """What a run's attention is called in metrics.json, compare and HParams: the variant, or the per-layer
    pattern (`sliding_window*3+multihead`) when model.layers is set."""
    layers = (cfg.get("model") or {}).get("layers")
    layers = OmegaConf.to_container(layers, resolve=True) if OmegaConf.is_config(layers) else layers
    return pattern_label(layers, cfg.attention.get("name"))


def _check_layers(cfg: DictConfig, position: dict[str, Any]) -> None:
    """model.layers: every term a variant with valid settings, a length that divides n_layers, each distinct
    layer buildable with the position scheme; and model.bias=false without attention.qkv_bias."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    attention = OmegaConf.to_container(cfg.attention, resolve=True)
    if model.get("bias") is False and attention.get("qkv_bias"):
        raise ConfigError(
            "model.bias=false removes every bias, but attention.qkv_bias=true asks for one: set "
            "attention.qkv_bias=false (or model.bias=true)."
        )
    if model.get("layers") is None:
        return
    for name, own, _ in pattern_terms(model["layers"]):
        for key, value in own.items():  # a term's own settings, by the rules of the attention.* ones
            rule = ATTENTION_RULES.get(key)
            if rule is not None and not (_type_ok(value, rule.kinds) and rule.check(value)):
                raise ConfigError(
                    f"model.layers: {name}'s {key}={value!r} is not valid: it must be {rule.expect}, e.g. "
                    f"{{name: {name}, {key}: {rule.example}}}."
                )
    layers = layer_settings(attention, model["layers"], cfg.model.n_layers)
    distinct = {repr(sorted(layer.items())): layer for layer in layers}
    for layer in distinct.values():
        knobs = {key: value for key, value in layer.items() if key != "name"}
        build_attention(layer["name"], cfg.model.d_model, min(cfg.model.context_length, 16), **position, **knobs)


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
def _check_probe(cfg: DictConfig, probe: type) -> None:
    """A recall probe: its joint rules (the data module checks them on construction, which generates nothing),
    and no eval.lengths (it cuts the text val split into longer windows; a probe's sequences have one length)."""
    lengths = list((cfg.get("eval") or {}).get("lengths") or [])
    if lengths:
        raise ConfigError(
            f"eval.lengths={lengths} is not applicable to a recall probe (data._target_={cfg.data._target_}): it "
            "evaluates text windows longer than the context, and a probe's sequences are generated at "
            "model.context_length: remove it (eval.lengths=[])."
        )
    settings = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items() if k != "_target_"}
    probe(**settings)  # raises DataConfigError (a UserError) naming the setting and the fix


def _check_data(cfg: DictConfig) -> None:
    from ..data.probes import PROBES

    probe = PROBES.get(str(cfg.data.get("_target_")))
    if probe is not None:
        _check_probe(cfg, probe)
        return
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


def known_keys(data_target: str | None = None) -> dict[str, set[str]]:
    """The keys each section may hold: what its consumer accepts (a `+section.key=...` typo would otherwise
    crash deep inside the GPT, the datamodule or Lightning, or be silently ignored). The data section's are
    those of its `_target_` (a recall probe's, else TextDataModule's)."""
    import lightning as L

    from ..data import TextDataModule
    from ..data.probes import PROBES
    from ..model import GPT

    return {
        # init_seed is the run's `seed`; match_params is resolved into mlp_hidden before the GPT is built
        "model": (_parameters(GPT) - {"vocab_size", "attention", "init_seed"}) | {"match_params"},
        "optim": {f.name for f in fields(OptimSchema)},
        "eval": {f.name for f in fields(EvalSchema)},
        "data": _parameters(PROBES.get(str(data_target), TextDataModule)) | {"_target_"},
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
    "tuned",
)


def _check_keys(cfg: DictConfig) -> None:
    for section, allowed in known_keys((cfg.get("data") or {}).get("_target_")).items():
        present = cfg.keys() if not section else (cfg[section] or {}).keys()
        for key in present:
            if key in allowed:
                continue
            name = f"{section}.{key}" if section else key
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f"did you mean {section + '.' if section else ''}{close[0]}? " if close else ""
            names = sorted(f"{section}.{k}" if section else k for k in allowed if not k.startswith("_"))
            listing = ", ".join(names) if len(names) <= 16 else "run `attention-lab train --cfg job` to see them"
            raise ConfigError(f"{name} is not a setting: {hint}remove it (the settings here: {listing}).")


def _check_tuned(cfg: DictConfig) -> None:
    """`tuned=<file>`: readable, every entry valid (the reader lives with the search that writes the file)."""
    if cfg.get("tuned") is not None:
        from .tuned import read_tuned  # imports this module: loaded on use

        read_tuned(cfg.tuned)


# The optional packages each logger class needs, by the last part of its `_target_` (training/loggers.py). The
# SQLite store of conf/logger/mlflow.yaml also needs SQLAlchemy and Alembic, which mlflow-skinny does not bring.
LOGGER_PACKAGES: dict[str, tuple[str, ...]] = {
    "MLflowRun": ("mlflow",),
    "MLFlowLogger": ("mlflow",),
    "WandbRun": ("wandb",),
    "WandbLogger": ("wandb",),
}
SQL_STORE_PACKAGES = ("sqlalchemy", "alembic")
LOGGERS_INSTALL = 'pip install -e ".[loggers]"'


def missing_logger_packages(node: Mapping[str, Any]) -> list[str]:
    """The modules that the logger configured by `node` needs and that are not installed (nothing is imported)."""
    kind = str(node.get("_target_") or "").rsplit(".", 1)[-1]
    needed = LOGGER_PACKAGES.get(kind, ())
    if "mlflow" in needed and str(node.get("tracking_uri") or "").startswith("sqlite:"):
        needed += SQL_STORE_PACKAGES
    return [name for name in needed if importlib.util.find_spec(name) is None]


def _check_loggers(cfg: DictConfig) -> None:
    """`logger=mlflow` / `logger=wandb` (optional extras) without their packages: one line naming the install."""
    for name, node in (cfg.get("logger") or {}).items():
        missing = missing_logger_packages(node) if OmegaConf.is_dict(node) else []
        if missing:
            raise ConfigError(
                f"logger={name} needs {', '.join(missing)}, which is not installed: run {LOGGERS_INSTALL} "
                "(the optional loggers), or choose another logger, e.g. logger=tensorboard."
            )


def validate(cfg: DictConfig, multirun: bool = False) -> None:
    """Every cheap check, before any tokenizing, model building or trainer start. Raises a UserError."""
    _check_keys(cfg)
    containers = {name: OmegaConf.to_container(cfg.get(name) or {}, resolve=True) for name in SECTIONS}
    schemas = {**SECTIONS, "data": data_schema(containers["data"].get("_target_"))}
    for name, schema in schemas.items():
        check_section(f"{name}.", schema, containers[name])
    check_section("", RunSchema, {key: cfg.get(key) for key in ("seed", "compile", "ckpt_path", "tuned")})
    _check_tuned(cfg)
    _check_loggers(cfg)
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
    from ..attention import available

    os.makedirs(folder, exist_ok=True)
    for name in available():
        with open(os.path.join(folder, f"{name}.yaml"), "w", encoding="utf-8") as f:
            f.write(attention_yaml(name))
    return available()
