"""`differential` (Ye et al. 2024) against a head-by-head reference written from the paper's definitions: the two
softmax maps of split Q/K, lambda's re-parametrisation, lambda_init by depth, the per-head RMSNorm and its
(1 - lambda_init) scale, the SDPA path against the explicit map, what the cache holds, and configuration errors.
(Causality, cache == no cache, dropout and gradients run for every variant in test_contract.py.)"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from attention_lab.attention import AttentionConfigError, DifferentialAttention, build_attention, count_params
from attention_lab.attention.differential import lambda_init_for
from attention_lab.attention.positions import Rotary, alibi_slopes
from attention_lab.model import GPT
from tests.helpers import BATCH, CONTEXT_LENGTH, D_MODEL, NUM_HEADS, SEQ

HEAD_DIM = D_MODEL // NUM_HEADS
HALF = HEAD_DIM // 2


def make(position: str = "learned", **knobs) -> DifferentialAttention:
    knobs = {"num_heads": NUM_HEADS, "dropout": 0.0, **knobs}
    attn = build_attention("differential", D_MODEL, CONTEXT_LENGTH, position=position, **knobs).eval()
    with torch.no_grad():  # a gain that is not all ones, so the reference must apply it
        attn.norm.weight.uniform_(0.5, 1.5)
    return attn


def causal(t: int) -> Tensor:
    return torch.ones(t, t, dtype=torch.bool).tril()


def softmax_map(q: Tensor, k: Tensor, allowed: Tensor, bias: Tensor | None) -> Tensor:
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, T, T)
    if bias is not None:
        scores = scores + bias
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)


def reference(attn: DifferentialAttention, x: Tensor, position: str = "learned") -> tuple[Tensor, Tensor]:
    """The paper's eq. 1-3 head by head: head h owns features [h hd, (h+1) hd) of Q, K, V; Q1/K1 are the first
    half of them, Q2/K2 the second; one V of width hd."""
    q, k, v = attn.W_query(x), attn.W_key(x), attn.W_value(x)  # (B, T, d)
    t = x.shape[1]
    lam = torch.exp(attn.lambda_q1 @ attn.lambda_k1) - torch.exp(attn.lambda_q2 @ attn.lambda_k2) + attn.lambda_init
    rope = Rotary(HALF) if position == "rope" else None
    distance = (torch.arange(t)[:, None] - torch.arange(t)[None, :]).abs()
    heads, maps = [], []
    for h in range(NUM_HEADS):
        cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
        (q1, q2), (k1, k2) = q[..., cols].chunk(2, dim=-1), k[..., cols].chunk(2, dim=-1)
        if rope is not None:
            q1, q2, k1, k2 = rope.rotate(q1, q2, k1, k2, start=0)
        bias = -alibi_slopes(NUM_HEADS)[h] * distance if position == "alibi" else None
        weights = softmax_map(q1, k1, causal(t), bias) - lam * softmax_map(q2, k2, causal(t), bias)  # (B, T, T)
        out = weights @ v[..., cols]  # (B, T, hd)
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.norm.weight
        heads.append(out * (1 - attn.lambda_init))
        maps.append(weights)
    return attn.out_proj(torch.cat(heads, dim=-1)), torch.stack(maps, dim=1)


# --- the formula -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("position", ["learned", "alibi", "rope"])
def test_matches_the_head_by_head_reference(position: str) -> None:
    attn = make(position)
    attn.use_depth(3)
    x = torch.randn(BATCH, SEQ, D_MODEL)
    with torch.no_grad():
        want_out, want_weights = reference(attn, x, position)
        fast = attn(x)  # two SDPA calls
        out, weights = attn(x, return_weights=True)  # the explicit difference map
    torch.testing.assert_close(fast, want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, want_weights, atol=1e-5, rtol=1e-5)


def test_the_two_halves_are_not_interchangeable() -> None:
    """Negative control: with Q1/K1 and Q2/K2 swapped the map is another one (the split order matters)."""
    attn = make()
    x = torch.randn(BATCH, SEQ, D_MODEL)
    with torch.no_grad():
        before = attn(x)
        for w in (attn.W_query.weight, attn.W_key.weight):
            halves = w.view(NUM_HEADS, 2, HALF, D_MODEL)
            w.copy_(halves.flip(1).reshape(D_MODEL, D_MODEL))
        assert (attn(x) - before).abs().max() > 1e-3


def test_lambda_is_the_papers_reparametrisation() -> None:
    attn = make()
    with torch.no_grad():
        for p, value in zip(
            (attn.lambda_q1, attn.lambda_k1, attn.lambda_q2, attn.lambda_k2), (0.3, 0.2, -0.1, 0.4), strict=True
        ):
            p.fill_(value)
    want = math.exp(HALF * 0.3 * 0.2) - math.exp(HALF * -0.1 * 0.4) + 0.2
    assert attn.lambda_full().item() == pytest.approx(want, abs=1e-6)
    with torch.no_grad():
        _, weights = attn(torch.randn(BATCH, SEQ, D_MODEL), return_weights=True)
    # each softmax row sums to 1, so a row of the difference sums to 1 - lambda; the map has negative entries
    torch.testing.assert_close(weights.sum(-1), torch.full((BATCH, NUM_HEADS, SEQ), 1 - want), atol=1e-5, rtol=0)
    assert (weights < 0).any() and not attn.weights_sum_to_one


def test_lambda_vectors_start_from_the_official_normal_init() -> None:
    attn = build_attention("differential", 256, CONTEXT_LENGTH, num_heads=2)  # 4 x 64 draws
    draws = torch.cat([attn.lambda_q1, attn.lambda_k1, attn.lambda_q2, attn.lambda_k2]).detach()
    assert draws.shape == (4 * 64,)
    assert abs(draws.std().item() - 0.1) < 0.02 and abs(draws.mean().item()) < 0.03


@pytest.mark.parametrize("layer", [1, 2, 5, 12])
def test_lambda_init_by_depth(layer: int) -> None:
    """lambda_init = 0.8 - 0.6 exp(-0.3 (l - 1)) for the paper's layer l = 1..L (block index l - 1)."""
    assert lambda_init_for(layer - 1) == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * (layer - 1)))
    attn = make()
    assert attn.lambda_init == pytest.approx(0.2), "standalone: layer 1's value"
    attn.use_depth(layer - 1)
    assert attn.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * (layer - 1)))


def test_the_gpt_gives_each_block_its_depths_lambda_init() -> None:
    attention = {"name": "differential", "num_heads": NUM_HEADS, "dropout": 0.0}
    model = GPT(50, CONTEXT_LENGTH, D_MODEL, 3, attention)
    got = [block.attn.lambda_init for block in model.blocks]
    assert got == pytest.approx([0.2, 0.8 - 0.6 * math.exp(-0.3), 0.8 - 0.6 * math.exp(-0.6)])


def test_depth_changes_the_output() -> None:
    attn = make()
    x = torch.randn(BATCH, SEQ, D_MODEL)
    with torch.no_grad():
        shallow = attn(x)
        attn.use_depth(6)
        assert (attn(x) - shallow).abs().max() > 1e-3


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_use_depth_refuses_what_is_not_a_block_index(bad: object) -> None:
    with pytest.raises(ValueError, match=r"layer_index=.* must be an integer >= 0"):
        make().use_depth(bad)  # type: ignore[arg-type]


def test_each_heads_output_is_rms_normalised_then_scaled_by_one_minus_lambda_init() -> None:
    """With out_proj the identity, each head's slice of the output has RMS (1 - lambda_init) (gain 1)."""
    attn = make()
    attn.use_depth(4)
    with torch.no_grad():
        attn.norm.weight.fill_(1.0)
        attn.out_proj.weight.copy_(torch.eye(D_MODEL))
        attn.out_proj.bias.zero_()
        out = attn(torch.randn(BATCH, SEQ, D_MODEL) * 5)
    rms = out.view(BATCH, SEQ, NUM_HEADS, HEAD_DIM).pow(2).mean(-1).sqrt()  # (B, T, H)
    torch.testing.assert_close(rms, torch.full_like(rms, 1 - attn.lambda_init), atol=1e-4, rtol=0)


# --- shape of the layer ------------------------------------------------------------------------------------
def test_parameters_are_multiheads_plus_lambda_vectors_and_norm_gain() -> None:
    attn, mha = make(), build_attention("sdpa", D_MODEL, CONTEXT_LENGTH, num_heads=NUM_HEADS)
    assert count_params(attn) == count_params(mha) + 4 * HALF + HEAD_DIM
    assert attn.W_key.weight.shape == attn.W_value.weight.shape == (D_MODEL, D_MODEL)


def test_cache_holds_both_key_halves_and_one_value_per_head() -> None:
    attn = make("rope")
    cache: dict = {}
    with torch.no_grad():
        attn(torch.randn(BATCH, 7, D_MODEL), cache=cache)
    shapes = {name: tuple(t.shape) for name, t in cache.items() if name != "pos"}
    assert shapes == {"k": (BATCH, 2 * NUM_HEADS, 7, HALF), "v": (BATCH, NUM_HEADS, 7, HEAD_DIM)}
    assert attn.kv_cache_bytes_per_token() == 2 * D_MODEL * 4


def test_decoding_weights_are_the_rows_of_the_full_map() -> None:
    attn = make("alibi")
    x = torch.randn(BATCH, SEQ, D_MODEL)
    cache: dict = {}
    with torch.no_grad():
        _, full = attn(x, return_weights=True)
        attn(x[:, :5], cache=cache)
        _, step = attn(x[:, 5:6], return_weights=True, cache=cache)
    torch.testing.assert_close(step[:, :, 0], full[:, :, 5, :6], atol=1e-5, rtol=1e-5)


def test_sdpa_path_equals_the_explicit_formula_in_training_without_dropout() -> None:
    attn = make("alibi").train()
    x = torch.randn(BATCH, SEQ, D_MODEL)
    fast = attn(x)
    explicit, _ = attn(x, return_weights=True)
    torch.testing.assert_close(fast, explicit, atol=1e-5, rtol=1e-5)


# --- configuration errors ----------------------------------------------------------------------------------
def test_odd_head_width_is_refused_with_the_heads_that_work() -> None:
    with pytest.raises(AttentionConfigError, match=r"two halves.*20 / 4 = 5: set attention\.num_heads") as e:
        build_attention("differential", 20, CONTEXT_LENGTH, num_heads=4)
    assert "[1, 2, 5, 10]" in str(e.value)


def test_rope_needs_even_halves() -> None:
    with pytest.raises(AttentionConfigError, match=r"differential with model.position=rope.*= 3.*multiple of 4"):
        build_attention("differential", 24, CONTEXT_LENGTH, position="rope", num_heads=4)
    build_attention("differential", 24, CONTEXT_LENGTH, position="alibi", num_heads=4)  # no rope: fine
