"""`sigmoid` (Ramapuram et al. 2024) against a head-by-head reference: sigmoid(q k^T / sqrt(hd) - log n) per key,
no row normalisation, n = the training context length, exact zeros outside the causal mask, decoding past the
context. (Causality, cache == no cache, dropout and gradients run for every variant in test_contract.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from attention_lab.attention import AttentionConfigError, SigmoidAttention, build_attention
from attention_lab.attention.positions import alibi_slopes
from tests.helpers import BATCH, CONTEXT_LENGTH, D_MODEL, NUM_HEADS, SEQ

HEAD_DIM = D_MODEL // NUM_HEADS


def make(position: str = "learned", context_length: int = CONTEXT_LENGTH, **knobs) -> SigmoidAttention:
    knobs = {"num_heads": NUM_HEADS, "dropout": 0.0, **knobs}
    return build_attention("sigmoid", D_MODEL, context_length, position=position, **knobs).eval()


def reference(attn: SigmoidAttention, x: Tensor, n: int, position: str = "learned") -> tuple[Tensor, Tensor]:
    """The paper's SigmoidAttn(X) = sigmoid(Q K^T / sqrt(d_qk) + b) V with b = -log(n), head by head."""
    q, k, v = attn.W_query(x), attn.W_key(x), attn.W_value(x)  # (B, T, d)
    t = x.shape[1]
    allowed = torch.ones(t, t, dtype=torch.bool).tril()
    distance = (torch.arange(t)[:, None] - torch.arange(t)[None, :]).abs()
    heads, maps = [], []
    for h in range(NUM_HEADS):
        cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(HEAD_DIM) - math.log(n)  # (B, T, T)
        if position == "alibi":
            scores = scores - alibi_slopes(NUM_HEADS)[h] * distance
        weights = torch.where(allowed, torch.sigmoid(scores), torch.zeros_like(scores))
        heads.append(weights @ v[..., cols])
        maps.append(weights)
    return attn.out_proj(torch.cat(heads, dim=-1)), torch.stack(maps, dim=1)


@pytest.mark.parametrize("position", ["learned", "alibi"])
def test_matches_the_head_by_head_reference(position: str) -> None:
    attn = make(position)
    x = torch.randn(BATCH, SEQ, D_MODEL)
    with torch.no_grad():
        want_out, want_weights = reference(attn, x, CONTEXT_LENGTH, position)
        out, weights = attn(x, return_weights=True)
        plain = attn(x)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, want_weights, atol=1e-5, rtol=1e-5)


def test_the_bias_is_minus_log_of_the_training_context_length() -> None:
    """With all scores 0, every visible weight is sigmoid(-log n) = 1 / (1 + n): a full row of n keys sums to
    n / (n + 1), near 1, and a causal row i to (i + 1) / (n + 1); nothing normalises the rows."""
    n = 64
    attn = make(context_length=n)
    assert attn.score_bias == pytest.approx(-math.log(n))
    with torch.no_grad():
        attn.W_query.weight.zero_()  # q = 0: every score is 0
        _, weights = attn(torch.randn(BATCH, SEQ, D_MODEL), return_weights=True)
    allowed = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
    torch.testing.assert_close(weights[..., allowed], torch.full_like(weights[..., allowed], 1 / (1 + n)))
    rows = torch.arange(1, SEQ + 1) / (n + 1)
    torch.testing.assert_close(weights.sum(-1), rows.expand(BATCH, NUM_HEADS, SEQ), atol=1e-6, rtol=0)
    assert not attn.weights_sum_to_one


def test_a_longer_context_lowers_every_weight() -> None:
    short, long = make(context_length=8), make(context_length=512)
    long.load_state_dict(short.state_dict())
    x = torch.randn(BATCH, SEQ, D_MODEL)
    with torch.no_grad():
        _, w_short = short(x, return_weights=True)
        _, w_long = long(x, return_weights=True)
    allowed = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
    assert (w_long[..., allowed] < w_short[..., allowed]).all()


def test_weights_are_exactly_zero_outside_the_causal_mask_and_positive_inside() -> None:
    attn = make("alibi")
    with torch.no_grad():
        _, weights = attn(torch.randn(BATCH, SEQ, D_MODEL), return_weights=True)
    allowed = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()
    assert torch.equal(weights[..., ~allowed], torch.zeros_like(weights[..., ~allowed]))
    assert (weights[..., allowed] > 0).all() and (weights <= 1).all()


def test_decoding_past_the_context_sees_the_full_forwards_weights() -> None:
    """The bias is a constant, so a decoded row equals the full map's row, also past context_length."""
    attn = make("rope")
    seq = 2 * CONTEXT_LENGTH + 3
    x = torch.randn(BATCH, seq, D_MODEL)
    cache: dict = {}
    with torch.no_grad():
        full, full_weights = attn(x, return_weights=True)
        steps = [attn(x[:, :4], cache=cache)]
        for t in range(4, seq):
            out, weights = attn(x[:, t : t + 1], return_weights=True, cache=cache)
            torch.testing.assert_close(weights[:, :, 0], full_weights[:, :, t, : t + 1], atol=1e-6, rtol=1e-5)
            steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert {name for name in cache if name != "pos"} == {"k", "v"}
    assert cache["k"].shape == cache["v"].shape == (BATCH, NUM_HEADS, seq, HEAD_DIM)


def test_gradients_reach_every_projection_with_dropout_in_training() -> None:
    attn = make(dropout=0.3).train()
    x = torch.randn(BATCH, SEQ, D_MODEL, requires_grad=True)
    attn(x).pow(2).mean().backward()
    for name, param in attn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("context_length", [0, -4])
def test_context_length_below_one_is_refused(context_length: int) -> None:
    with pytest.raises(AttentionConfigError, match=r"-log\(n\) with n = model.context_length.*set model\.context"):
        build_attention("sigmoid", D_MODEL, context_length, num_heads=NUM_HEADS)
