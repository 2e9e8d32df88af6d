"""Every run logs the same attention settings to the HParams tab, with effective values and stable types
(training/hparams.py): a run that lacks a column is dropped from TensorBoard's parallel coordinates."""

from __future__ import annotations

from pathlib import Path

import pytest

from attention_lab.attention import available, get_variant
from attention_lab.training.hparams import EFFECTIVE, all_settings, attention_hparams
from attention_lab.training.task import train
from tests.training.helpers import LEAN_CALLBACKS, make_cfg, tiny


def test_every_setting_of_every_variant_has_an_effective_value() -> None:
    """A new setting in the registry must say what the variants without it effectively have."""
    assert sorted(EFFECTIVE) == all_settings()


@pytest.mark.parametrize("name", available())
def test_every_variant_logs_every_setting_with_a_typed_value(name: str) -> None:
    values = attention_hparams(name, {}, d_model=64, context_length=128)
    assert sorted(values) == [f"attention.{key}" for key in all_settings()]
    for key, value in values.items():
        setting = key.removeprefix("attention.")
        expected = type(next(v.knobs[setting] for v in map(get_variant, available()) if setting in v.knobs))
        assert type(value) is expected, f"{name}: {key}={value!r} should be a {expected.__name__}, as everywhere"


def test_effective_values() -> None:
    multihead = attention_hparams("multihead", {"num_heads": 8}, d_model=64, context_length=128)
    assert multihead["attention.num_kv_heads"] == 8, "each query head has its own K/V head"
    assert multihead["attention.window"] == 128, "full attention sees the whole context"
    assert multihead["attention.latent_dim"] == 64
    assert multihead["attention.qk_norm"] is False and multihead["attention.logit_softcap"] == 0.0
    assert attention_hparams("mqa", {"num_heads": 8}, 64, 128)["attention.num_kv_heads"] == 1
    gqa = attention_hparams("gqa", {"num_heads": 8, "num_kv_heads": 2}, 64, 128)
    assert gqa["attention.num_kv_heads"] == 2, "a configured value is logged as it is"
    single = attention_hparams("simplified", {}, 64, 128)
    assert (single["attention.num_heads"], single["attention.num_kv_heads"], single["attention.dropout"]) == (1, 1, 0.0)
    window = attention_hparams("sliding_window", {"window": 16}, 64, 128)
    assert window["attention.window"] == 16 and window["attention.num_kv_heads"] == 4  # the registry's 4 heads


def _session_hparams(run: Path) -> dict[str, str]:
    """The run's HParams session: setting -> the kind of value TensorBoard stored ("number_value", ...)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    (events,) = run.rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    return {key: value.WhichOneof("kind") for key, value in hparams.items()}


def test_two_variants_log_the_same_hparam_keys_with_the_same_types(tmp_path: Path, corpus: Path) -> None:
    """multihead and gqa in one sweep: the same columns, each of one type in both runs (num_kv_heads a number in
    both; before, multihead had no num_kv_heads and dropped out of the parallel-coordinates view)."""
    sessions = {}
    for name in ("multihead", "gqa"):
        cfg = make_cfg(
            tmp_path / name, [*tiny(corpus=corpus), *LEAN_CALLBACKS, f"attention={name}", "trainer.max_steps=1"]
        )
        train(cfg)
        sessions[name] = _session_hparams(tmp_path / name / "run")
    assert sessions["multihead"] == sessions["gqa"]
    assert sessions["gqa"]["attention.num_kv_heads"] == "number_value"
    assert sessions["gqa"]["attention.window"] == "number_value"
    assert sessions["gqa"]["attention.name"] == "string_value"
