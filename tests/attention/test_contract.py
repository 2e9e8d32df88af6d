"""Properties every registered attention variant must have, parity between variants, configuration errors.

Tests that take `name` run for every entry of `attention_lab.attention.available()`, so a newly registered
variant is held to the contract without touching this file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from attention_lab.attention import (
    AttentionConfigError,
    FusedAttention,
    HeadedAttention,
    LinearAttention,
    MultiHeadAttention,
    available,
    build_attention,
    get_variant,
)
from tests.helpers import BATCH, CONTEXT_LENGTH, D_MODEL, NUM_HEADS, SEQ, expected_heads

ALL = available()
WITH_DROPOUT = [name for name in ALL if "dropout" in get_variant(name).knobs]
WITH_HEADS = [name for name in ALL if "num_heads" in get_variant(name).knobs]
WITH_CAUSAL_KNOB = [name for name in ALL if "causal" in get_variant(name).knobs]
HEAD_DIM = D_MODEL // NUM_HEADS
MakeAttention = Callable[..., nn.Module]


def random_x(seq: int = SEQ, batch: int = BATCH, d_model: int = D_MODEL) -> Tensor:
    return torch.randn(batch, seq, d_model)


# --- weight plumbing ---------------------------------------------------------------------------------------
def qkv_weights(module: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """(W_query, W_key, W_value) as (out, in) matrices, whether the module has one fused `qkv` or three."""
    if isinstance(module, FusedAttention):
        return module.qkv.weight.chunk(3, dim=0)
    return module.W_query.weight, module.W_key.weight, module.W_value.weight


@torch.no_grad()
def load_qkv(module: nn.Module, w_query: Tensor, w_key: Tensor, w_value: Tensor) -> None:
    if isinstance(module, FusedAttention):
        module.qkv.weight.copy_(torch.cat((w_query, w_key, w_value), dim=0))
    else:
        module.W_query.weight.copy_(w_query)
        module.W_key.weight.copy_(w_key)
        module.W_value.weight.copy_(w_value)


@torch.no_grad()
def copy_attention(src: nn.Module, dst: nn.Module) -> None:
    """Give `dst` the projections of `src` (both multi-head with equal Q/K/V shapes, bias-free Q/K/V)."""
    load_qkv(dst, *qkv_weights(src))
    dst.out_proj.load_state_dict(src.out_proj.state_dict())


def repeat_kv_heads(weight: Tensor, num_kv_heads: int, num_heads: int) -> Tensor:
    """(H_kv * hd, d) -> (H * hd, d), query head h reading K/V head h // (H / H_kv) (repeat_interleave order)."""
    group = num_heads // num_kv_heads
    head_dim = weight.shape[0] // num_kv_heads
    return weight.view(num_kv_heads, head_dim, -1).repeat_interleave(group, dim=0).reshape(num_heads * head_dim, -1)


def band(seq: int, window: int | None) -> Tensor:
    """Brute-force (T, T) mask: query i sees keys i - window + 1 .. i (all j <= i when window is None)."""
    allowed = torch.zeros(seq, seq, dtype=torch.bool)
    for i in range(seq):
        lo = 0 if window is None else max(0, i - window + 1)
        for j in range(lo, i + 1):
            allowed[i, j] = True
    return allowed


def reference_attention(x: Tensor, module: nn.Module, num_heads: int, allowed: Tensor) -> tuple[Tensor, Tensor]:
    """Textbook multi-head attention written head by head, with an explicit (T, T) boolean mask."""
    w_query, w_key, w_value = qkv_weights(module)
    q, k, v = x @ w_query.T, x @ w_key.T, x @ w_value.T
    head_dim = q.shape[-1] // num_heads
    context, maps = torch.zeros_like(q), []
    for h in range(num_heads):
        cols = slice(h * head_dim, (h + 1) * head_dim)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(head_dim)
        weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        context[..., cols] = weights @ v[..., cols]
        maps.append(weights)
    return module.out_proj(context), torch.stack(maps, dim=1)


def cache_bytes(cache: dict) -> int:
    total = 0
    for value in cache.values():
        if isinstance(value, dict):
            total += cache_bytes(value)
        elif isinstance(value, torch.Tensor):  # not the position counter
            total += value.numel() * value.element_size()
    return total


# --- causality ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_future_inputs_never_change_past_outputs(name: str, make_attention: MakeAttention) -> None:
    attn = make_attention(name)
    x = random_x()
    with torch.no_grad():
        out = attn(x)
        for t in (0, 3, 6, SEQ - 2):
            future = x.clone()
            future[:, t + 1 :] = torch.randn_like(future[:, t + 1 :]) * 3
            torch.testing.assert_close(attn(future)[:, : t + 1], out[:, : t + 1], atol=1e-6, rtol=0)

            present = x.clone()
            present[:, t] = torch.randn_like(present[:, t]) * 3
            changed = attn(present)
            assert (changed[:, t] - out[:, t]).abs().max() > 1e-4, "output t ignores input t"
            torch.testing.assert_close(changed[:, :t], out[:, :t], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", WITH_CAUSAL_KNOB)
def test_non_causal_switch_warns_and_leaks(name: str, make_attention: MakeAttention) -> None:
    with pytest.warns(UserWarning, match=r"causal=false.*next token.*loss is meaningless"):
        attn = make_attention(name, causal=False)
    x = random_x() * 0.2  # small inputs: the unscaled simplified scores would otherwise be one-hot on the diagonal
    future = x.clone()
    future[:, -1] += 0.5
    with torch.no_grad():
        assert (attn(future)[:, 0] - attn(x)[:, 0]).abs().max() > 1e-4, "causal=False should see the future"


# --- return_weights ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_return_weights_contract(name: str, make_attention: MakeAttention) -> None:
    attn = make_attention(name)
    x = random_x()
    with torch.no_grad():
        plain = attn(x)
        out, weights = attn(x, return_weights=True)
    heads = expected_heads(name)
    assert weights.shape == (BATCH, heads, SEQ, SEQ)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights)), "weights above the diagonal must be exactly 0"
    if not getattr(attn, "weights_sum_to_one", True):
        return  # sigmoid / differential / decayed maps: each variant's own tests check what its map is
    assert (weights >= 0).all()
    row_tol = 1e-4 if name == "linear" else 1e-5
    torch.testing.assert_close(weights.sum(-1), torch.ones(BATCH, heads, SEQ), atol=row_tol, rtol=0)


@pytest.mark.parametrize("name", WITH_DROPOUT)
def test_returned_weights_are_pre_dropout(name: str, make_attention: MakeAttention) -> None:
    attn = make_attention(name, dropout=0.5).train()
    x = random_x()
    _, weights = attn(x, return_weights=True)
    with torch.no_grad():
        _, eval_weights = attn.eval()(x, return_weights=True)
    torch.testing.assert_close(weights.detach(), eval_weights, atol=1e-6, rtol=0)  # dropout never reaches them
    if getattr(attn, "weights_sum_to_one", True):
        heads = expected_heads(name)
        torch.testing.assert_close(weights.sum(-1), torch.ones(BATCH, heads, SEQ), atol=1e-4, rtol=0)


@pytest.mark.parametrize("window", [1, 2, 5, SEQ, CONTEXT_LENGTH])
def test_sliding_window_weights_are_zero_outside_the_band(window: int, make_attention: MakeAttention) -> None:
    attn = make_attention("sliding_window", window=window)
    with torch.no_grad():
        _, weights = attn(random_x(), return_weights=True)
    allowed = band(SEQ, window)
    assert torch.equal(weights[..., ~allowed], torch.zeros_like(weights[..., ~allowed]))
    assert (weights[..., allowed] > 0).all()
    if window == 1:
        torch.testing.assert_close(weights, torch.eye(SEQ).expand_as(weights))


@pytest.mark.parametrize("window", [1, 2, 3, 5, 8, SEQ])
def test_sliding_window_matches_brute_force_band(window: int, make_attention: MakeAttention) -> None:
    attn = make_attention("sliding_window", window=window)
    x = random_x()
    with torch.no_grad():
        want_out, want_weights = reference_attention(x, attn, NUM_HEADS, band(SEQ, window))
        out, weights = attn(x, return_weights=True)
        fast = attn(x)
    torch.testing.assert_close(weights, want_weights, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast, want_out, atol=1e-5, rtol=1e-5)


# --- parity between variants given the same weights --------------------------------------------------------
def test_multihead_matches_textbook_reference(make_attention: MakeAttention) -> None:
    mha = make_attention("multihead")
    x = random_x()
    with torch.no_grad():
        want_out, want_weights = reference_attention(x, mha, NUM_HEADS, band(SEQ, None))
        out, weights = mha(x, return_weights=True)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, want_weights, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["fused", "sdpa"])
def test_fused_and_sdpa_equal_multihead(name: str, make_attention: MakeAttention) -> None:
    mha, other = make_attention("multihead"), make_attention(name)
    copy_attention(mha, other)
    x = random_x()
    with torch.no_grad():
        want_out, want_weights = mha(x, return_weights=True)
        torch.testing.assert_close(other(x), want_out, atol=1e-5, rtol=1e-5)
        out, weights = other(x, return_weights=True)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, want_weights, atol=1e-5, rtol=1e-5)


def test_fused_qkv_rows_are_query_key_value(make_attention: MakeAttention) -> None:
    """Swapping the K and V blocks of `qkv` must change the output (the helper's row order is not arbitrary)."""
    mha, fused = make_attention("multihead"), make_attention("fused")
    copy_attention(mha, fused)
    w_query, w_key, w_value = qkv_weights(mha)
    x = random_x()
    with torch.no_grad():
        torch.testing.assert_close(fused(x), mha(x), atol=1e-5, rtol=1e-5)
        load_qkv(fused, w_query, w_value, w_key)
        assert (fused(x) - mha(x)).abs().max() > 1e-4


def test_gqa_with_all_kv_heads_is_multihead(make_attention: MakeAttention) -> None:
    mha, gqa = make_attention("multihead"), make_attention("gqa", num_kv_heads=NUM_HEADS)
    copy_attention(mha, gqa)
    x = random_x()
    with torch.no_grad():
        torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_mqa_is_gqa_with_one_kv_head(make_attention: MakeAttention) -> None:
    mqa, gqa = make_attention("mqa"), make_attention("gqa", num_kv_heads=1)
    assert mqa.W_key.weight.shape == (HEAD_DIM, D_MODEL)
    mqa.load_state_dict(gqa.state_dict())
    x = random_x()
    with torch.no_grad():
        torch.testing.assert_close(mqa(x), gqa(x), atol=1e-6, rtol=0)
        torch.testing.assert_close(mqa(x, return_weights=True)[1], gqa(x, return_weights=True)[1])


@pytest.mark.parametrize("num_kv_heads", [1, 2])
def test_gqa_is_multihead_with_kv_heads_repeated_interleaved(num_kv_heads: int, make_attention: MakeAttention) -> None:
    gqa, mha = make_attention("gqa", num_kv_heads=num_kv_heads), make_attention("multihead")
    w_query, w_key, w_value = qkv_weights(gqa)
    load_qkv(
        mha,
        w_query,
        repeat_kv_heads(w_key, num_kv_heads, NUM_HEADS),
        repeat_kv_heads(w_value, num_kv_heads, NUM_HEADS),
    )
    mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
    x = random_x()
    with torch.no_grad():
        want_out, want_weights = mha(x, return_weights=True)
        torch.testing.assert_close(gqa(x), want_out, atol=1e-5, rtol=1e-5)  # SDPA with enable_gqa
        out, weights = gqa(x, return_weights=True)  # explicit formula
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, want_weights, atol=1e-5, rtol=1e-5)

    if 1 < num_kv_heads < NUM_HEADS:  # negative control: tiling (`repeat`) order is a different model
        group = NUM_HEADS // num_kv_heads
        tiled = [w.view(num_kv_heads, HEAD_DIM, -1).repeat(group, 1, 1).reshape(D_MODEL, -1) for w in (w_key, w_value)]
        load_qkv(mha, w_query, *tiled)
        with torch.no_grad():
            assert (mha(x) - gqa(x)).abs().max() > 1e-4


@pytest.mark.parametrize("window", [SEQ, CONTEXT_LENGTH])
def test_sliding_window_at_least_t_is_causal_multihead(window: int, make_attention: MakeAttention) -> None:
    mha, swa = make_attention("multihead"), make_attention("sliding_window", window=window)
    copy_attention(mha, swa)
    x = random_x()
    with torch.no_grad():
        torch.testing.assert_close(swa(x), mha(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(swa(x, return_weights=True)[1], mha(x, return_weights=True)[1])


def test_latent_is_multihead_with_factored_key_value(make_attention: MakeAttention) -> None:
    latent, mha = make_attention("latent"), make_attention("multihead")
    down = latent.W_down_kv.weight  # (latent_dim, d)
    load_qkv(mha, latent.W_query.weight, latent.W_up_key.weight @ down, latent.W_up_value.weight @ down)
    mha.out_proj.load_state_dict(latent.out_proj.state_dict())
    x = random_x()
    with torch.no_grad():
        torch.testing.assert_close(latent(x), mha(x), atol=1e-5, rtol=1e-5)


def test_multihead_wrapper_is_multihead_without_projection(make_attention: MakeAttention) -> None:
    wrapper, mha = make_attention("multihead_wrapper"), make_attention("multihead")
    with torch.no_grad():
        for h, head in enumerate(wrapper.heads):
            rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            for proj in ("W_query", "W_key", "W_value"):
                getattr(mha, proj).weight[rows] = getattr(head, proj).weight
        mha.out_proj.weight.copy_(torch.eye(D_MODEL))
        mha.out_proj.bias.zero_()
        x = random_x()
        torch.testing.assert_close(wrapper(x), mha(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(wrapper(x, return_weights=True)[1], mha(x, return_weights=True)[1])


def test_multihead_equals_torch_multihead_attention(make_attention: MakeAttention) -> None:
    mha = make_attention("multihead")
    torch_mha = nn.MultiheadAttention(D_MODEL, NUM_HEADS, dropout=0.0, bias=True, batch_first=True).eval()
    with torch.no_grad():
        torch_mha.in_proj_weight.copy_(torch.cat(qkv_weights(mha), dim=0))
        torch_mha.in_proj_bias.zero_()  # qkv_bias=False
        torch_mha.out_proj.weight.copy_(mha.out_proj.weight)
        torch_mha.out_proj.bias.copy_(mha.out_proj.bias)
        x = random_x()
        future = ~torch.ones(SEQ, SEQ, dtype=torch.bool).tril()  # True = not allowed
        want_out, want_weights = torch_mha(x, x, x, attn_mask=future, need_weights=True, average_attn_weights=False)
        out, weights = mha(x, return_weights=True)
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, want_weights, atol=1e-5, rtol=1e-5)


def test_linear_prefix_sums_equal_quadratic_form(make_attention: MakeAttention) -> None:
    attn = make_attention("linear")
    x = random_x()
    with torch.no_grad():
        prefix = attn(x)
        quadratic, weights = attn(x, return_weights=True)
    torch.testing.assert_close(prefix, quadratic, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(BATCH, NUM_HEADS, SEQ), atol=1e-4, rtol=0)


def test_linear_matches_recurrent_reference(make_attention: MakeAttention) -> None:
    """out_t = phi(q_t) S_t / (phi(q_t) . z_t) computed as an RNN, one step at a time, phi(x) = elu(x) + 1."""
    attn: LinearAttention = make_attention("linear")
    x = random_x()
    w_query, w_key, w_value = qkv_weights(attn)

    def heads(t: Tensor) -> Tensor:
        return t.view(BATCH, SEQ, NUM_HEADS, HEAD_DIM).transpose(1, 2)

    with torch.no_grad():
        phi_q = heads(torch.nn.functional.elu(x @ w_query.T) + 1)
        phi_k = heads(torch.nn.functional.elu(x @ w_key.T) + 1)
        v = heads(x @ w_value.T)
        state = torch.zeros(BATCH, NUM_HEADS, HEAD_DIM, HEAD_DIM)
        norm = torch.zeros(BATCH, NUM_HEADS, HEAD_DIM)
        context = torch.zeros(BATCH, NUM_HEADS, SEQ, HEAD_DIM)
        for t in range(SEQ):
            state += phi_k[:, :, t, :, None] * v[:, :, t, None, :]
            norm += phi_k[:, :, t]
            numerator = (phi_q[:, :, t, :, None] * state).sum(-2)
            context[:, :, t] = numerator / (phi_q[:, :, t] * norm).sum(-1, keepdim=True)
        want = attn.out_proj(context.transpose(1, 2).reshape(BATCH, SEQ, D_MODEL))
        torch.testing.assert_close(attn(x), want, atol=1e-5, rtol=1e-4)


# --- dropout -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", WITH_DROPOUT)
def test_dropout_only_in_training(name: str, make_attention: MakeAttention) -> None:
    attn = make_attention(name, dropout=0.5)
    x = random_x()
    with torch.no_grad():
        attn.train()
        assert not torch.allclose(attn(x), attn(x)), "two training calls with dropout=0.5 should differ"
        attn.eval()
        torch.testing.assert_close(attn(x), attn(x), atol=0, rtol=0)
        no_dropout = make_attention(name, dropout=0.0)
        no_dropout.load_state_dict(attn.state_dict())
        torch.testing.assert_close(attn(x), no_dropout(x), atol=1e-6, rtol=0)


# --- configuration errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", WITH_HEADS)
def test_width_not_divisible_by_heads(name: str) -> None:
    with pytest.raises(
        AttentionConfigError, match=r"=30 is not divisible by num_heads=4: set attention\.num_heads"
    ) as e:
        build_attention(name, 30, CONTEXT_LENGTH, num_heads=4)
    assert "[1, 2, 3, 5, 6, 10, 15, 30]" in str(e.value), "the message should list the divisors that work"


@pytest.mark.parametrize("num_kv_heads", [3, 0, 8])
def test_gqa_heads_not_divisible_by_kv_heads(num_kv_heads: int) -> None:
    pattern = rf"num_heads=4 is not divisible by num_kv_heads={num_kv_heads}: set attention\.num_kv_heads to a divisor"
    with pytest.raises(AttentionConfigError, match=pattern) as e:
        build_attention("gqa", D_MODEL, CONTEXT_LENGTH, num_heads=4, num_kv_heads=num_kv_heads)
    assert "[1, 2, 4]" in str(e.value)


@pytest.mark.parametrize("window", [0, -3])
def test_sliding_window_below_one(window: int) -> None:
    with pytest.raises(AttentionConfigError, match=rf"window={window} must be an integer >= 1.*set attention\.window"):
        build_attention("sliding_window", D_MODEL, CONTEXT_LENGTH, window=window)


def test_latent_dim_below_one() -> None:
    with pytest.raises(AttentionConfigError, match=r"latent_dim=0 must be an integer >= 1: set attention\.latent_dim"):
        build_attention("latent", D_MODEL, CONTEXT_LENGTH, latent_dim=0)


def test_unknown_variant_lists_the_choices() -> None:
    with pytest.raises(AttentionConfigError, match=r"unknown attention variant 'mha': choose one of") as e:
        build_attention("mha", D_MODEL, CONTEXT_LENGTH)
    for name in ALL:
        assert name in str(e.value)


def test_unknown_knob_lists_the_settings() -> None:
    pattern = (
        r"attention=multihead has no setting num_head: its settings are dropout, logit_softcap, num_heads, qk_norm, "
        r"qkv_bias, sinks"
    )
    with pytest.raises(AttentionConfigError, match=pattern):
        build_attention("multihead", D_MODEL, CONTEXT_LENGTH, num_head=4)


@pytest.mark.parametrize(
    ("name", "knob", "value", "expected"),
    [
        ("multihead", "num_heads", "4", "int"),
        ("multihead", "num_heads", 4.0, "int"),
        ("multihead", "num_heads", True, "int"),
        ("gqa", "num_kv_heads", "2", "int"),
        ("multihead", "dropout", "0.1", "float"),
        ("multihead", "qkv_bias", 1, "bool"),
        ("sliding_window", "window", 8.5, "int"),
    ],
)
def test_wrong_knob_type(name: str, knob: str, value: object, expected: str) -> None:
    pattern = rf"attention\.{knob}={re.escape(repr(value))} should be an? {expected}\b"
    with pytest.raises(AttentionConfigError, match=pattern):
        build_attention(name, D_MODEL, CONTEXT_LENGTH, **{knob: value})


def test_integer_dropout_is_accepted_as_float() -> None:
    attn = build_attention("multihead", D_MODEL, CONTEXT_LENGTH, dropout=0)
    assert attn.dropout.p == 0.0


@pytest.mark.parametrize("dropout", [1.0, -0.1])
def test_dropout_out_of_range(dropout: float) -> None:
    with pytest.raises(AttentionConfigError, match=rf"dropout={dropout} must be in \[0, 1\)"):
        build_attention("multihead", D_MODEL, CONTEXT_LENGTH, dropout=dropout)


def test_config_errors_are_value_errors() -> None:
    with pytest.raises(ValueError):
        build_attention("multihead", 30, CONTEXT_LENGTH, num_heads=4)


# --- gradients ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter(name: str, make_attention: MakeAttention) -> None:
    attn = make_attention(name).train()
    x = random_x().requires_grad_()
    attn(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for param_name, param in attn.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"
        assert param.grad.abs().sum() > 0, f"{param_name} has an all-zero gradient"


# --- KV cache ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "knobs", "expected"),
    [
        ("multihead", {}, 2 * D_MODEL * 4),
        ("fused", {}, 2 * D_MODEL * 4),
        ("sdpa", {}, 2 * D_MODEL * 4),
        ("gqa", {"num_kv_heads": 2}, 2 * 2 * HEAD_DIM * 4),
        ("gqa", {"num_kv_heads": 1}, 2 * HEAD_DIM * 4),
        ("mqa", {}, 2 * HEAD_DIM * 4),
        ("latent", {"latent_dim": 16}, 16 * 4),
        ("linear", {}, 0),
        ("retention", {}, 0),
        ("differential", {}, 2 * D_MODEL * 4),  # K: both halves of each head; V: one per head
        ("sigmoid", {}, 2 * D_MODEL * 4),
    ],
)
def test_kv_cache_bytes_per_token(name: str, knobs: dict, expected: int, make_attention: MakeAttention) -> None:
    attn = make_attention(name, **knobs)
    assert attn.kv_cache_bytes_per_token() == expected
    assert attn.kv_cache_bytes_per_token(bytes_per_element=2) == expected // 2


@pytest.mark.parametrize("name", ALL)
def test_cache_grows_by_the_stated_bytes_per_token(name: str, make_attention: MakeAttention) -> None:
    attn = make_attention(name)
    x = random_x()
    cache: dict = {}
    sizes = []
    with torch.no_grad():
        for t in range(4):
            attn(x[:, t : t + 1], cache=cache)
            sizes.append(cache_bytes(cache))
    assert sizes[3] - sizes[1] == 2 * BATCH * attn.kv_cache_bytes_per_token()


@pytest.mark.parametrize("prefill", [0, 5])
@pytest.mark.parametrize("name", ALL)
def test_incremental_decoding_matches_full_forward(name: str, prefill: int, make_attention: MakeAttention) -> None:
    attn = make_attention(name)
    x = random_x()
    cache: dict = {}
    with torch.no_grad():
        full = attn(x)
        pieces = [attn(x[:, :prefill], cache=cache)] if prefill else []
        pieces += [attn(x[:, t : t + 1], cache=cache) for t in range(prefill, SEQ)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [1, 2, 3, 4, 5, 8, CONTEXT_LENGTH])
def test_sliding_window_decoding_matches_full_forward(window: int, make_attention: MakeAttention) -> None:
    attn = make_attention("sliding_window", window=window)
    x = random_x(seq=CONTEXT_LENGTH)
    cache: dict = {}
    with torch.no_grad():
        full = attn(x)
        steps = torch.cat([attn(x[:, t : t + 1], cache=cache) for t in range(CONTEXT_LENGTH)], dim=1)
    assert cache["k"].shape[2] <= window - 1, "the cache should keep only the last window - 1 tokens"
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_return_weights_while_decoding(name: str, make_attention: MakeAttention) -> None:
    """Decoding with return_weights=True must give the same outputs as without, or refuse loudly.

    Silently returning a different output (e.g. attending only to the new token) is the failure this catches.
    """
    attn = make_attention(name)
    x = random_x()
    cache: dict = {}
    heads = expected_heads(name)
    with torch.no_grad():
        full = attn(x)
        outs = []
        for t in range(SEQ):
            try:
                out, weights = attn(x[:, t : t + 1], return_weights=True, cache=cache)
            except (ValueError, NotImplementedError) as error:
                assert "return_weights" in str(error)
                return
            assert weights.shape[:3] == (BATCH, heads, 1)
            if getattr(attn, "weights_sum_to_one", True):  # softmax maps; sigmoid/differential/decay maps say False
                torch.testing.assert_close(weights.sum(-1), torch.ones(BATCH, heads, 1), atol=1e-4, rtol=0)
            outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_variant_metadata(name: str) -> None:
    variant = get_variant(name)
    assert variant.name == name
    assert variant.summary and variant.paper
    module = build_attention(name, D_MODEL, CONTEXT_LENGTH)
    assert isinstance(module, nn.Module)
    assert isinstance(module.kv_cache_bytes_per_token(), int)
    if isinstance(module, HeadedAttention | MultiHeadAttention):
        assert module.num_heads == variant.knobs["num_heads"]
