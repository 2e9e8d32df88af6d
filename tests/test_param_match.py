"""`model.match_params=<variant>`: this run's MLP width is chosen so that its non-embedding parameters match the
baseline variant's (within 1%, the closest width there is), the width is what the checkpoint records, and
metrics.json reports the match; a match that cannot work is refused with the setting named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from attention_lab.checkpoint import CheckpointError, check_same_model
from attention_lab.config import ConfigError, validate
from attention_lab.model import GPT
from attention_lab.training.param_match import baseline_attention, match_mlp_hidden, resolve_match
from attention_lab.training.task import model_kwargs, train
from tests.helpers import attention_knobs, one_torch_thread
from tests.training.helpers import CORPUS, LEAN_CALLBACKS, make_cfg, tiny


def settings(name: str, d_model: int = 32, **attention: Any) -> dict[str, Any]:
    knobs = {"name": name, **attention_knobs(name), **attention}
    return {"vocab_size": 30, "context_length": 16, "d_model": d_model, "n_layers": 2, "attention": knobs}


def non_embedding(kwargs: dict[str, Any]) -> int:
    return GPT(**kwargs).num_params()["non_embedding"]  # the real model, not the meta-device count


@pytest.mark.parametrize("d_model", [32, 64])
@pytest.mark.parametrize("name", ["gqa", "mqa", "latent", "linear"])
def test_variants_matched_to_multihead_come_within_one_percent_at_the_closest_width(name: str, d_model: int) -> None:
    extra = {"num_kv_heads": 1} if name == "gqa" else {}  # gqa's default 2 of 4 kv heads, and one kv head
    kwargs, match = resolve_match({**settings(name, d_model, **extra), "match_params": "multihead"})
    assert "match_params" not in kwargs and kwargs["mlp_hidden"] == match.mlp_hidden
    target = non_embedding(settings("multihead", d_model))
    achieved = non_embedding(kwargs)
    assert (match.baseline_non_embedding, match.non_embedding) == (target, achieved)
    assert abs(achieved - target) / target <= 0.01 and match.relative_diff == (achieved - target) / target
    for neighbour in (match.mlp_hidden - 1, match.mlp_hidden + 1):  # no other width is closer
        assert abs(non_embedding({**kwargs, "mlp_hidden": neighbour}) - target) >= abs(achieved - target)
    if name != "linear":  # linear attention has multihead's projections: nothing to make up
        assert match.mlp_hidden > 4 * d_model
    else:
        assert match.mlp_hidden == 4 * d_model and achieved == target


def test_the_baseline_takes_the_settings_it_shares_with_this_run() -> None:
    """num_heads, dropout and qkv_bias come from this run's attention; gqa's num_kv_heads does not exist there."""
    attention = baseline_attention("multihead", {"name": "gqa", "num_heads": 2, "num_kv_heads": 1, "qkv_bias": True})
    knobs_off = {"qk_norm": False, "logit_softcap": 0.0, "sinks": False}  # defaults, multihead has them
    assert attention == {"name": "multihead", "num_heads": 2, "dropout": 0.1, "qkv_bias": True, **knobs_off}
    run = settings("gqa", num_heads=2, num_kv_heads=1, qkv_bias=True)
    match = match_mlp_hidden(run, "multihead")
    assert match.baseline_non_embedding == non_embedding({**run, "attention": attention})


def test_the_baseline_keeps_this_runs_mlp_width() -> None:
    """model.mlp_hidden (or mlp_ratio) is the baseline's MLP: the match then moves only this run's."""
    run = {**settings("mqa"), "mlp_hidden": 100}
    match = match_mlp_hidden(run, "multihead")
    assert match.baseline_non_embedding == non_embedding({**settings("multihead"), "mlp_hidden": 100})
    assert match.mlp_hidden > 100
    assert match_mlp_hidden(settings("multihead"), "multihead").mlp_hidden == 4 * 32  # itself: nothing moves


def test_an_unknown_baseline_and_an_unreachable_match_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"model.match_params=nope is not an attention variant.*multihead"):
        resolve_match({**settings("gqa"), "match_params": "nope"})
    # multihead's attention (4 d^2 + d per layer) outweighs a ratio-1 MLP (2 d^2 + d + d): no width reaches
    # `simplified`, which has no attention parameters at all
    with pytest.raises(ConfigError, match=r"model.match_params=simplified.*no MLP width can match.*mlp_ratio"):
        resolve_match({**settings("multihead"), "mlp_ratio": 1, "match_params": "simplified"})


def test_without_match_params_the_settings_pass_through() -> None:
    kwargs, match = resolve_match({**settings("gqa"), "match_params": None})
    assert match is None and kwargs == settings("gqa")


def test_config_validation_names_the_settings(tmp_path: Path) -> None:
    for override, setting in [
        ("model.match_params=nope", "model.match_params='nope'"),
        ("model.mlp_hidden=0", "model.mlp_hidden=0"),
        ("+model.init_seed=3", "model.init_seed is not a setting"),  # the seed is `seed`, not a model setting
    ]:
        with pytest.raises(ConfigError) as err:
            validate(make_cfg(tmp_path, [override]))
        assert setting in str(err.value), override
    validate(make_cfg(tmp_path, ["model.match_params=multihead", "model.mlp_hidden=300"]))


def test_the_committed_preset_matches_to_multihead(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, ["experiment=compare_matched"])
    assert cfg.model.match_params == "multihead" and cfg.data.tokenizer == "char" and cfg.trainer.max_steps == 300
    validate(cfg)
    kwargs = model_kwargs(cfg, None)
    assert kwargs["mlp_hidden"] == 4 * cfg.model.d_model  # the preset's first job is multihead itself


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
def test_a_matched_run_records_the_match_and_its_checkpoint_the_width(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS)
    overrides = ["attention=mqa", *tiny("mqa", corpus), *LEAN_CALLBACKS, "model.match_params=multihead"]
    cfg = make_cfg(tmp_path, [*overrides, "trainer.max_steps=1", "trainer.num_sanity_val_steps=0", "logger=csv"])
    with one_torch_thread():
        metrics = train(cfg)
    record = metrics["param_match"]
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    saved = checkpoint["hyper_parameters"]["model"]
    assert saved["mlp_hidden"] == record["mlp_hidden"] > 4 * 32 and "match_params" not in saved
    baseline = {**saved, "attention": baseline_attention("multihead", saved["attention"]), "mlp_hidden": None}
    assert record["baseline"] == "multihead" and record["baseline_non_embedding"] == non_embedding(baseline)
    assert record["non_embedding"] == non_embedding(saved)  # the model that trained
    assert record["relative_diff"] == pytest.approx((non_embedding(saved) / non_embedding(baseline)) - 1)
    assert 0 < abs(record["relative_diff"]) <= 0.01
    assert "init_seed" not in saved  # how the weights started is no model setting (resume compares this dict)
    check_same_model(checkpoint, model_kwargs(cfg, None), "last.ckpt")  # a resume with the same settings fits
    with pytest.raises(CheckpointError, match=r"mlp_hidden"):
        check_same_model(checkpoint, model_kwargs(make_cfg(tmp_path, overrides[:-1]), None), "last.ckpt")
