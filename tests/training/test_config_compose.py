"""Config composition and `config.validate` on the tiny training settings: every group composes, and every
bad setting is refused before anything is built, with a message that names the fix (the schema's own ranges and
the generated attention YAML are tested in tests/test_config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attention_lab import config
from attention_lab.attention import AttentionConfigError, available, get_variant
from attention_lab.config import ConfigError
from attention_lab.errors import UserError
from tests.training.helpers import make_cfg, tiny


@pytest.mark.parametrize(
    "override",
    [  # one variant composes quickly; the others (a Hydra composition each) run in CI
        f"attention={n}" if n == "multihead" else pytest.param(f"attention={n}", marks=pytest.mark.slow)
        for n in available()
    ]
    + [f"model={m}" for m in ("tiny", "small", "gpt2_124m", "gpt2_small")]
    + [f"trainer={t}" for t in ("default", "cpu", "gpu", "ddp", "ddp_spawn", "fsdp")]
    + ["data=default", "data=text data.path=x.txt", "logger=tensorboard", "logger=csv", "callbacks=none"]
    + [
        pytest.param(f"experiment={e}", marks=pytest.mark.slow)  # presets: CI composes them, the quick run skips
        for e in (
            "heads_dropout",
            "gpt2_124m",
            "compare_classic",
            "compare_modern",
            "compare_positions",
            "compare_matched",
            "compare_recent",
            "recall",
            "recall_induction",
        )
    ],
)
def test_every_config_group_composes(tmp_path: Path, override: str) -> None:
    cfg = make_cfg(tmp_path, override.split())
    assert cfg.attention.name in available()
    assert cfg.data.context_length == cfg.model.context_length  # interpolated, never typed twice
    assert (
        cfg.callbacks is None
        or "throughput" not in cfg.callbacks
        or cfg.callbacks.throughput.log_every_n_steps == (cfg.trainer.log_every_n_steps)
    )


def test_an_experiment_preset_overrides_the_top_level_defaults(tmp_path: Path) -> None:
    """Found running experiment=compare_positions: train.yaml composed `_self_` after the preset, so the preset's
    `eval.lengths` (and any `optim`, `seed`, `compile`) were silently replaced by train.yaml's defaults."""
    cfg = make_cfg(tmp_path, ["experiment=compare_positions"])
    assert list(cfg.eval.lengths) == [1, 2, 4, 8]
    assert (cfg.model.d_model, cfg.model.n_layers, cfg.trainer.max_steps) == (64, 2, 600)
    overridden = make_cfg(tmp_path, ["experiment=compare_positions", "eval.lengths=[1]", "optim.lr=1e-3"])
    assert list(overridden.eval.lengths) == [1] and overridden.optim.lr == 1e-3  # the command line still wins


@pytest.mark.slow  # 13 Hydra compositions, 1-2.5 s: CI runs it; tests/test_config.py checks the YAML text quickly
def test_attention_yaml_lists_every_knob_with_its_default(tmp_path: Path) -> None:
    for name in available():
        cfg = make_cfg(tmp_path, [f"attention={name}"])
        knobs = {k: v for k, v in cfg.attention.items() if k != "name"}
        assert knobs == get_variant(name).knobs, name


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["attention.name=nope"], AttentionConfigError, r"unknown attention variant 'nope'.*multihead"),
        (["attention.num_heads=3"], ConfigError, r"d_model=32 is not divisible by attention.num_heads=3.*divisor"),
        (["attention=gqa", "attention.num_kv_heads=3"], AttentionConfigError, r"num_kv_heads=3.*divisor of 2"),
        # ranges of attention knobs are now checked by the schema (a ConfigError; was AttentionConfigError), with
        # advice that uses the real context length
        (
            ["attention=sliding_window", "attention.window=0"],
            ConfigError,
            r"attention.window=0.*model.context_length=32.*attention.window",
        ),
        (["+attention.heads=2"], AttentionConfigError, r"no setting heads.*num_heads"),
        (["data=text"], ConfigError, r"data=text needs a corpus: add data.path"),
        (["data.path=/no/such/corpus.txt"], ConfigError, r"data.path=/no/such/corpus.txt does not exist"),
        (["data.tokenizer=bpe"], ConfigError, r"data.tokenizer='bpe'.*data.tokenizer=char"),
        (["trainer.accelerator=gpu"], ConfigError, r"no CUDA GPU.*trainer=cpu"),
        (["trainer.precision=16-mixed"], ConfigError, r"precision=16-mixed needs a GPU.*32-true"),
        # the old "positive number of optimizer steps" wording is now the schema's range message
        (["trainer.max_steps=-1"], ConfigError, r"trainer.max_steps=-1 is not valid.*integer >= 1"),
    ],
)
def test_bad_config_fails_before_training_with_the_fix(tmp_path, overrides, error, match) -> None:
    if "gpu" in overrides[0] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = make_cfg(tmp_path, [*tiny(), *overrides])
    with pytest.raises(error, match=match) as info:
        config.validate(cfg)
    assert isinstance(info.value, UserError), "every bad setting is a UserError: exit 2, no traceback"


def test_ddp_inside_a_sweep_is_refused_with_the_fix(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, [*tiny(), "trainer=ddp", "trainer.devices=2"])
    config.validate(cfg, multirun=False)  # a single ddp run is fine
    with pytest.raises(ConfigError, match=r"trainer=ddp cannot run inside a sweep.*ddp_spawn"):
        config.validate(cfg, multirun=True)


def test_flatten_joins_keys_and_drops_private_ones() -> None:
    assert config.flatten({"a": {"b": 1, "_target_": "x"}, "c": 2}) == {"a.b": 1, "c": 2}
