"""Per-head entropy is logged only for maps that are distributions per row (softmax without sinks)."""

from __future__ import annotations

import math

import pytest
import torch

from attention_lab.attention import build_attention
from attention_lab.training.callbacks import entropy_scalars


def test_softmax_maps_get_one_entropy_per_head() -> None:
    attn = build_attention("multihead", 16, 8, num_heads=2)
    uniform = torch.full((2, 4, 4), 0.25)
    scalars = entropy_scalars(attn, 3, uniform)
    assert sorted(scalars) == ["mech_heads/entropy/L3H0", "mech_heads/entropy/L3H1"]  # the per-head section
    assert all(value == pytest.approx(math.log(4)) for value in scalars.values())


def test_maps_that_are_not_distributions_log_no_entropy_instead_of_nan() -> None:
    attn = build_attention("differential", 16, 8, num_heads=2)
    negative = torch.tensor([[[1.2, -0.2], [0.5, 0.3]]]).expand(2, 2, 2)  # a differential map can go below 0
    assert entropy_scalars(attn, 0, negative) == {}
    for name in ("sigmoid", "retention"):
        assert entropy_scalars(build_attention(name, 16, 8, num_heads=2), 0, torch.rand(2, 4, 4)) == {}
