"""Shared fixtures for the attention and GPT tests: the chapter's inputs, small attention layers, a tiny GPT.

Everything here is small (d_model=32, T<=16, B=2) so the whole suite stays fast on a 2-core CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from attention_lab.attention import build_attention
from attention_lab.model import GPT
from tests.helpers import CONTEXT_LENGTH, D_MODEL, attention_knobs

QUICK_BUDGET = Path(__file__).with_name("quick_budget.txt")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests listed in quick_budget.txt slow: each takes a fraction of a second, but hundreds of them
    made `pytest -m "not slow"` too slow for a quick run. They still run in CI."""
    listed = {line.strip() for line in QUICK_BUDGET.read_text().splitlines() if line.strip() and line[0] != "#"}
    for item in items:
        if item.nodeid in listed:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def inputs() -> torch.Tensor:
    """The chapter's six 3-d embeddings ("Your journey starts with one step")."""
    return torch.tensor(
        [
            [0.43, 0.15, 0.89],
            [0.55, 0.87, 0.66],
            [0.57, 0.85, 0.64],
            [0.22, 0.58, 0.33],
            [0.77, 0.25, 0.10],
            [0.05, 0.80, 0.55],
        ]
    )


@pytest.fixture
def batch(inputs: torch.Tensor) -> torch.Tensor:
    return torch.stack((inputs, inputs))


@pytest.fixture
def make_attention() -> Callable[..., nn.Module]:
    """make_attention(name, **knobs) -> an eval-mode layer of width D_MODEL for CONTEXT_LENGTH tokens."""

    def make(name: str, d_model: int = D_MODEL, context_length: int = CONTEXT_LENGTH, **overrides: Any) -> nn.Module:
        return build_attention(name, d_model, context_length, **attention_knobs(name, **overrides)).eval()

    return make


@pytest.fixture
def make_gpt() -> Callable[..., GPT]:
    """make_gpt(name, **knobs) -> a tiny GPT (vocab 50, context 16, d 32, 2 layers) in eval mode."""

    def make(name: str, n_layers: int = 2, **overrides: Any) -> GPT:
        attention = {"name": name, **attention_knobs(name, **overrides)}
        model = GPT(
            vocab_size=50,
            context_length=CONTEXT_LENGTH,
            d_model=D_MODEL,
            n_layers=n_layers,
            attention=attention,
            emb_dropout=0.0,
            resid_dropout=0.0,
        )
        return model.eval()

    return make
