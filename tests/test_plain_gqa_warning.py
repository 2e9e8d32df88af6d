"""gqa with num_kv_heads == num_heads shares no K/V head: plain multi-head attention, said once at validation."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from attention_lab import config
from tests.training.helpers import make_cfg


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config, "_warned_plain", set())  # "once per process" must not leak between tests
    monkeypatch.chdir(tmp_path)


def _validate(*overrides: str) -> None:
    config.validate(make_cfg(Path.cwd(), ["attention=gqa", "data.tokenizer=char", *overrides]))


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "K/V head" in r.getMessage()]


def test_gqa_with_as_many_kv_heads_as_heads_is_named_plain_multihead_once(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="attention_lab.config"):
        _validate("attention.num_heads=4", "attention.num_kv_heads=4")
        _validate("attention.num_heads=4", "attention.num_kv_heads=4")  # a sweep validates each job twice
    (message,) = _warnings(caplog)
    assert "plain multi-head attention (attention=multihead)" in message
    assert "attention.num_kv_heads=4" in message and "one of [1, 2]" in message, "the fix: a divisor below 4"


def test_the_readme_sweep_example_warned_for_two_heads(caplog) -> None:
    """`-m attention=multihead,gqa attention.num_heads=2,4,8` with gqa's default num_kv_heads=2: the gqa job
    with two heads is multihead under another name (the README example is fixed to num_heads=4,8)."""
    with caplog.at_level(logging.WARNING, logger="attention_lab.config"):
        _validate("attention.num_heads=2")
    assert len(_warnings(caplog)) == 1


@pytest.mark.parametrize(
    "overrides", [("attention.num_heads=4",), ("attention.num_heads=8", "attention.num_kv_heads=1")]
)
def test_grouped_heads_warn_nothing(caplog, overrides: tuple[str, ...]) -> None:
    with caplog.at_level(logging.WARNING, logger="attention_lab.config"):
        _validate(*overrides)
    assert _warnings(caplog) == []
