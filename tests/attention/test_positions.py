"""Position schemes: RoPE and ALiBi against the papers' definitions, and the contract for every (variant, scheme).

The pair tests run over the registry x POSITIONS, so a new variant or scheme is held to them without edits here:
causality, weights, cache == no cache (with RoPE that checks the absolute positions used while decoding),
gradients, and sequences longer than the training context.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from attention_lab.attention import AttentionConfigError, available, build_attention, get_variant
from attention_lab.attention.functional import attention_weights, causal_allowed
from attention_lab.attention.positions import (
    POSITIONS,
    RELATIVE,
    ALiBi,
    Rotary,
    SinusoidalPositions,
    alibi_slopes,
)
from tests.helpers import BATCH, CONTEXT_LENGTH, D_MODEL, attention_knobs, expected_heads

PAIRS = [(name, scheme) for name in available() for scheme in get_variant(name).positions]
UNSUPPORTED = [
    (name, scheme) for name in available() for scheme in POSITIONS if scheme not in get_variant(name).positions
]
LONG = 4 * CONTEXT_LENGTH  # "trained at T, runs at 4T"


def make(name: str, scheme: str, **overrides) -> torch.nn.Module:
    knobs = attention_knobs(name, **overrides)
    return build_attention(name, D_MODEL, CONTEXT_LENGTH, position=scheme, **knobs).eval()


def x_of(seq: int) -> Tensor:
    return torch.randn(BATCH, seq, D_MODEL)


# --- RoPE --------------------------------------------------------------------------------------------------
def rope_reference(x: Tensor, start: int, base: float = 10000.0) -> Tensor:
    """Element by element: the pair (x_i, x_{i+d/2}) at position p turns by p * base^(-2i/d)."""
    out = x.clone()
    d = x.shape[-1]
    for t in range(x.shape[-2]):
        for i in range(d // 2):
            angle = (start + t) * base ** (-2 * i / d)
            a, b = x[..., t, i], x[..., t, i + d // 2]
            out[..., t, i] = a * math.cos(angle) - b * math.sin(angle)
            out[..., t, i + d // 2] = b * math.cos(angle) + a * math.sin(angle)
    return out


def interleaved_reference(x: Tensor, start: int, base: float = 10000.0) -> Tensor:
    """The paper's layout: pairs (x_{2i}, x_{2i+1})."""
    out = x.clone()
    d = x.shape[-1]
    for t in range(x.shape[-2]):
        for i in range(d // 2):
            angle = (start + t) * base ** (-2 * i / d)
            a, b = x[..., t, 2 * i], x[..., t, 2 * i + 1]
            out[..., t, 2 * i] = a * math.cos(angle) - b * math.sin(angle)
            out[..., t, 2 * i + 1] = b * math.cos(angle) + a * math.sin(angle)
    return out


@pytest.mark.parametrize("start", [0, 7])
def test_rope_equals_a_straightforward_rotation(start: int) -> None:
    x = torch.randn(2, 3, 6, 8)
    (rotated,) = Rotary(8).rotate(x, start=start)
    torch.testing.assert_close(rotated, rope_reference(x, start), atol=1e-5, rtol=1e-5)


def test_half_split_is_the_papers_interleaved_layout_up_to_a_feature_permutation() -> None:
    x = torch.randn(1, 5, 8)
    halves = torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)  # interleaved pair i -> features i, i + d/2
    (rotated,) = Rotary(8).rotate(halves, start=3)
    expected = interleaved_reference(x, 3)
    torch.testing.assert_close(rotated, torch.cat((expected[..., 0::2], expected[..., 1::2]), dim=-1))


def test_rope_scores_depend_only_on_the_relative_offset() -> None:
    rope = Rotary(16)
    q, k = torch.randn(1, 16), torch.randn(1, 16)

    def score(m: int, n: int) -> Tensor:
        (qm,) = rope.rotate(q, start=m)
        (kn,) = rope.rotate(k, start=n)
        return (qm * kn).sum()

    base = score(9, 4)
    for shift in (1, 13, 500):
        torch.testing.assert_close(score(9 + shift, 4 + shift), base, atol=1e-4, rtol=1e-4)
    assert (score(9, 2) - base).abs() > 1e-3, "another offset must give another score"


def test_rope_refuses_an_odd_head_width() -> None:
    with pytest.raises(AttentionConfigError, match=r"even head width.*num_heads"):
        build_attention("multihead", 12, CONTEXT_LENGTH, position="rope", num_heads=4)


def test_decoding_rotates_each_key_at_its_absolute_position() -> None:
    attn = make("multihead", "rope")
    x = x_of(8)
    cache: dict = {}
    with torch.no_grad():
        attn(x[:, :5], cache=cache)
        attn(x[:, 5:6], cache=cache)
    assert cache["pos"] == 6
    raw_key = attn.W_key(x[:, 5:6]).view(BATCH, 1, attn.num_heads, -1).transpose(1, 2)  # (B, H, 1, hd)
    torch.testing.assert_close(cache["k"][:, :, 5:6], rope_reference(raw_key, start=5), atol=1e-5, rtol=1e-5)


# --- ALiBi -------------------------------------------------------------------------------------------------
def test_alibi_slopes_for_eight_heads_are_the_papers() -> None:
    assert alibi_slopes(8) == [2.0**-i for i in range(1, 9)]


def test_alibi_slopes_for_a_head_count_that_is_not_a_power_of_two() -> None:
    # 12 heads: the 8 slopes of 8 heads, then every other slope of 16 heads (2^-0.5, 2^-1.5, ...) for the rest
    assert alibi_slopes(12) == pytest.approx(
        [2.0**-i for i in range(1, 9)] + [2.0**-0.5, 2.0**-1.5, 2.0**-2.5, 2.0**-3.5]
    )
    assert alibi_slopes(6) == pytest.approx([2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3])


def test_alibi_bias_is_zero_on_the_diagonal_and_linear_in_the_distance() -> None:
    slopes = alibi_slopes(4)
    bias = ALiBi(slopes).bias(6, 6, torch.device("cpu"))  # (H, T, T)
    for h, slope in enumerate(slopes):
        for i in range(6):
            for j in range(i + 1):
                assert bias[h, i, j].item() == pytest.approx(-slope * (i - j))
    assert torch.all(bias.diagonal(dim1=1, dim2=2) == 0)


def test_alibi_bias_of_the_newest_queries_matches_the_full_matrix() -> None:
    """Decoding sees the last rows of the bias: lower-right aligned, like the mask."""
    alibi = ALiBi(alibi_slopes(4))
    full = alibi.bias(10, 10, torch.device("cpu"))
    torch.testing.assert_close(alibi.bias(3, 10, torch.device("cpu")), full[:, 7:])


@pytest.mark.parametrize("name", ["sdpa", "gqa", "mqa", "sliding_window", "latent"])
def test_alibi_explicit_path_equals_sdpa_with_the_float_bias(name: str) -> None:
    attn = make(name, "alibi")
    x = x_of(CONTEXT_LENGTH)
    with torch.no_grad():
        fused = attn(x)  # SDPA with the float mask
        explicit, _ = attn(x, return_weights=True)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)


def test_alibi_weights_equal_a_hand_written_biased_softmax() -> None:
    attn = make("multihead", "alibi")
    x = x_of(7)
    with torch.no_grad():
        _, weights = attn(x, return_weights=True)
        q = attn.W_query(x).view(BATCH, 7, attn.num_heads, -1).transpose(1, 2)
        k = attn.W_key(x).view(BATCH, 7, attn.num_heads, -1).transpose(1, 2)
    slopes = torch.tensor(alibi_slopes(attn.num_heads))
    i, j = torch.arange(7)[:, None], torch.arange(7)[None, :]
    bias = -slopes[:, None, None] * (i - j).abs()
    expected = attention_weights(q, k, causal_allowed(7), bias=bias)
    torch.testing.assert_close(weights, expected)


# --- sinusoidal --------------------------------------------------------------------------------------------
def test_sinusoidal_table_is_vaswanis_times_a_learned_scale_from_one_over_sqrt_d() -> None:
    positions = SinusoidalPositions(6)
    assert positions.scale.requires_grad and positions.scale.item() == pytest.approx(6**-0.5)
    with torch.no_grad():
        positions.scale.fill_(1.0)
    table = positions(start=2, length=3)
    for t in range(3):
        for i in range(3):
            angle = (2 + t) / 10000 ** (2 * i / 6)
            assert table[t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


# --- the contract for every supported (variant, scheme) pair -------------------------------------------------
@pytest.mark.parametrize(("name", "scheme"), PAIRS)
def test_pair_is_causal_also_past_the_training_context(name: str, scheme: str) -> None:
    attn = make(name, scheme)
    x = x_of(LONG)
    with torch.no_grad():
        out = attn(x)
        future = x.clone()
        future[:, 40:] = torch.randn_like(future[:, 40:]) * 3
        changed = attn(future)
    assert out.shape == (BATCH, LONG, D_MODEL)
    torch.testing.assert_close(changed[:, :40], out[:, :40], atol=1e-5, rtol=0)
    assert (changed[:, 40:] - out[:, 40:]).abs().max() > 1e-4


@pytest.mark.parametrize(("name", "scheme"), PAIRS)
def test_pair_weights_are_causal_rows_that_sum_to_one(name: str, scheme: str) -> None:
    attn = make(name, scheme)
    x = x_of(CONTEXT_LENGTH)
    with torch.no_grad():
        plain = attn(x)
        out, weights = attn(x, return_weights=True)
    heads = expected_heads(name)
    assert weights.shape == (BATCH, heads, CONTEXT_LENGTH, CONTEXT_LENGTH)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    assert torch.equal(weights.triu(1), torch.zeros_like(weights))
    if name == "linear" and scheme == "rope":
        return  # RoFormer eq. 19: rotated scores over unrotated sums; rows need not sum to 1 (documented)
    if not getattr(attn, "weights_sum_to_one", True):
        return  # sigmoid / differential / decayed maps: not distributions (their own tests say what they are)
    assert (weights >= 0).all()
    row_tol = 1e-4 if name == "linear" else 1e-5
    torch.testing.assert_close(weights.sum(-1), torch.ones(BATCH, heads, CONTEXT_LENGTH), atol=row_tol, rtol=0)


@pytest.mark.parametrize(("name", "scheme"), PAIRS)
def test_pair_decodes_like_the_full_forward_past_the_context(name: str, scheme: str) -> None:
    """Prefill 5 tokens, then one at a time up to 2x the context: the same outputs as one full forward."""
    attn = make(name, scheme)
    seq = 2 * CONTEXT_LENGTH
    x = x_of(seq)
    cache: dict = {}
    with torch.no_grad():
        full = attn(x)
        pieces = [attn(x[:, :5], cache=cache)] + [attn(x[:, t : t + 1], cache=cache) for t in range(5, seq)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("name", "scheme"), PAIRS)
def test_pair_gradients_reach_every_parameter(name: str, scheme: str) -> None:
    attn = make(name, scheme).train()
    x = x_of(CONTEXT_LENGTH).requires_grad_()  # `simplified` has no parameters: its input still needs one
    attn(x).pow(2).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for param_name, param in attn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{param_name} gets no gradient"


@pytest.mark.parametrize(("name", "scheme"), UNSUPPORTED)
def test_unsupported_pair_is_refused_with_what_works(name: str, scheme: str) -> None:
    with pytest.raises(AttentionConfigError, match=rf"attention={name} does not support model.position={scheme}.*Use"):
        make(name, scheme)


def test_linear_refuses_alibi_with_the_reason() -> None:
    assert ("linear", "alibi") in UNSUPPORTED  # retention refuses it too (its own tests say why)
    with pytest.raises(AttentionConfigError, match=r"no score matrix or softmax.*rope"):
        make("linear", "alibi")


def test_an_unknown_scheme_lists_the_five() -> None:
    with pytest.raises(AttentionConfigError, match=r"learned, sinusoidal, rope, alibi, none"):
        make("multihead", "relative")


def test_schemes_outside_attention_leave_it_unchanged() -> None:
    for scheme in ("learned", "sinusoidal", "none"):
        torch.manual_seed(0)
        plain = make("multihead", "none")
        torch.manual_seed(0)
        other = make("multihead", scheme)
        x = x_of(6)
        torch.testing.assert_close(other(x), plain(x))


# --- latent: MLA's decoupled rotary key ----------------------------------------------------------------------
def test_latent_rope_caches_the_latent_and_one_shared_rotary_key() -> None:
    attn = make("latent", "rope", latent_dim=16)
    head_dim = D_MODEL // attn.num_heads
    assert attn.rope_dim == head_dim // 2
    cache: dict = {}
    with torch.no_grad():
        attn(x_of(10), cache=cache)
    assert {k: tuple(v.shape) for k, v in cache.items() if k != "pos"} == {
        "latent": (BATCH, 10, 16),
        "k_rope": (BATCH, 10, attn.rope_dim),
    }
    assert attn.kv_cache_bytes_per_token() == (16 + attn.rope_dim) * 4


def test_latent_rope_scores_are_content_plus_rotary_parts() -> None:
    attn = make("latent", "rope", latent_dim=16)
    x = x_of(6)
    h, hd, r = attn.num_heads, D_MODEL // attn.num_heads, attn.rope_dim
    with torch.no_grad():
        _, weights = attn(x, return_weights=True)
        q = attn.W_query(x).view(BATCH, 6, h, hd).transpose(1, 2)
        k = attn.W_up_key(attn.W_down_kv(x)).view(BATCH, 6, h, hd).transpose(1, 2)
        q_r = rope_reference(attn.W_query_rope(x).view(BATCH, 6, h, r).transpose(1, 2), 0)
        k_r = rope_reference(attn.W_key_rope(x), 0)[:, None]  # (B, 1, T, r): one key for every head
    scores = (q @ k.transpose(-2, -1) + q_r @ k_r.transpose(-2, -1)) / math.sqrt(hd + r)
    expected = torch.softmax(scores.masked_fill(~causal_allowed(6), float("-inf")), dim=-1)
    torch.testing.assert_close(weights, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scheme", RELATIVE)
def test_relative_schemes_have_no_position_parameters(scheme: str) -> None:
    names = {n for n, _ in make("multihead", scheme).named_parameters()}
    assert names == {n for n, _ in make("multihead", "learned").named_parameters()}


def test_linear_rope_chunked_form_equals_the_quadratic_form_over_several_chunks() -> None:
    attn = make("linear", "rope")
    x = x_of(150)  # chunks of 64: two full ones and a padded third
    with torch.no_grad():
        chunked = attn(x)
        quadratic, _ = attn(x, return_weights=True)
    torch.testing.assert_close(chunked, quadratic, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["sdpa", "gqa", "multihead"])
def test_alibi_runs_in_bfloat16_weights_and_stays_close(name: str) -> None:
    """bf16-true precision: CUDA's SDPA refuses a float32 mask beside bfloat16 queries, so the bias takes their
    dtype (the CUDA run itself is in test_positions_gpu.py)."""
    attn = make(name, "alibi")
    if name != "multihead":
        mask = attn._sdpa_mask(5, 5, torch.device("cpu"), torch.bfloat16)
        assert mask.dtype == torch.bfloat16 and mask[0, 0, 1] == float("-inf")
    x = x_of(CONTEXT_LENGTH)
    with torch.no_grad():
        reference = attn(x)
        low = attn.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("scheme", ["rope", "alibi", "sinusoidal"])
def test_a_bfloat16_cast_keeps_the_position_constants_exact(scheme: str) -> None:
    """Found by review: bf16-true casts floating buffers, so RoPE trained with frequencies up to 0.37% off (0.37
    rad at position 2048) from the exact ones generation rebuilds; ALiBi's 12-head slopes (2^-0.5 ...) too."""
    from attention_lab.model import GPT

    attention = {"name": "multihead", "num_heads": 12, "dropout": 0.0}
    model = GPT(20, 16, 48, 1, attention, emb_dropout=0.0, resid_dropout=0.0, position=scheme)
    exact = {n: b.clone() for n, b in model.named_buffers()}
    assert exact, "each of these schemes keeps its constants in buffers"
    model.to(torch.bfloat16)
    for name, buffer in model.named_buffers():
        assert buffer.dtype == torch.float32 and torch.equal(buffer, exact[name]), name
    assert next(model.parameters()).dtype == torch.bfloat16
