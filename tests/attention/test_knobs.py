"""qk_norm, logit_softcap and sinks (attention/knobs.py) against a head-by-head reference written here.

Every softmax variant that has the settings is checked on both paths (the training kernel, SDPA or explicit, and
the explicit formula behind `return_weights`), with the KV cache, with rope and alibi, for causality and gradients;
off, they must leave a layer exactly as it was.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attention_lab.attention import (
    AttentionConfigError,
    FusedAttention,
    LatentAttention,
    MultiHeadAttention,
    SDPAAttention,
    available,
    build_attention,
    get_variant,
)
from attention_lab.attention.functional import merge_heads, split_heads
from attention_lab.attention.knobs import QK_NORM_EPS, softcap
from attention_lab.bench.attention import kernel_of
from tests.helpers import BATCH, CONTEXT_LENGTH, D_MODEL, NUM_HEADS, SEQ, attention_knobs

SOFTMAX = [n for n in available() if "sinks" in get_variant(n).knobs and n != "linear"]
HEAD_DIM = D_MODEL // NUM_HEADS
CAP = 0.3  # below the scores' spread at this init, so the cap bends them (a negative control checks it does)
SETTINGS = {
    "qk_norm": {"qk_norm": True},
    "softcap": {"logit_softcap": CAP},
    "sinks": {"sinks": True},
    "all": {"qk_norm": True, "logit_softcap": CAP, "sinks": True},
}


def make(name: str, position: str = "learned", **overrides) -> nn.Module:
    """A layer with the settings on and their parameters moved off their neutral init (scale 1, sink 0)."""
    attn = build_attention(name, D_MODEL, CONTEXT_LENGTH, position=position, **attention_knobs(name, **overrides))
    with torch.no_grad():
        for norm in (attn.q_norm, attn.k_norm):
            if norm is not None:
                norm.weight.uniform_(0.5, 2.0)
        if attn.sink_logit is not None:
            attn.sink_logit.uniform_(-1.0, 1.0)
    return attn.eval()


def projections(attn: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
    """(W_query, W_key, W_value) as (out, in) matrices; latent's K/V are its up-projections times the down one."""
    if isinstance(attn, FusedAttention):
        return attn.qkv.weight.chunk(3, dim=0)
    if isinstance(attn, LatentAttention):
        down = attn.W_down_kv.weight
        return attn.W_query.weight, attn.W_up_key.weight @ down, attn.W_up_value.weight @ down
    return attn.W_query.weight, attn.W_key.weight, attn.W_value.weight


def rms(x: Tensor, weight: Tensor) -> Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + QK_NORM_EPS) * weight


def rotate(x: Tensor, base: float = 10000.0) -> Tensor:
    """Half-split rope at positions 0 .. T-1 of x (B, T, d)."""
    d = x.shape[-1]
    theta = torch.arange(x.shape[-2])[:, None] * base ** (-torch.arange(0, d, 2) / d)  # (T, d/2)
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * theta.cos() - second * theta.sin(), second * theta.cos() + first * theta.sin()), -1)


def reference(x: Tensor, attn: nn.Module, position: str = "learned", window: int | None = None):
    """Softmax attention head by head: q/k RMS-normalised, then rope, scores / sqrt(hd), soft cap, alibi, mask,
    sink column, softmax without the sink column. Returns (out, weights (B, H, T, T))."""
    w_query, w_key, w_value = projections(attn)
    q, k, v = x @ w_query.T, x @ w_key.T, x @ w_value.T
    kv_heads = k.shape[-1] // HEAD_DIM
    i, j = torch.arange(SEQ)[:, None], torch.arange(SEQ)[None, :]
    allowed = (j <= i) & ((j > i - window) if window else True)
    context, maps = torch.zeros_like(q), []
    for h in range(NUM_HEADS):
        g = h // (NUM_HEADS // kv_heads)  # repeat_interleave grouping
        q_h, k_h = q[..., h * HEAD_DIM : (h + 1) * HEAD_DIM], k[..., g * HEAD_DIM : (g + 1) * HEAD_DIM]
        if attn.q_norm is not None:
            q_h, k_h = rms(q_h, attn.q_norm.weight), rms(k_h, attn.k_norm.weight)
        if position == "rope":
            q_h, k_h = rotate(q_h), rotate(k_h)
        scores = q_h @ k_h.transpose(1, 2) / math.sqrt(HEAD_DIM)  # (B, T, T)
        if attn.logit_softcap:
            scores = attn.logit_softcap * torch.tanh(scores / attn.logit_softcap)
        if position == "alibi":
            scores = scores - 2.0 ** (-8.0 * (h + 1) / NUM_HEADS) * (i - j).abs()
        scores = scores.masked_fill(~allowed, float("-inf"))
        if attn.sink_logit is not None:
            scores = torch.cat((scores, attn.sink_logit[h].expand(BATCH, SEQ, 1)), dim=-1)
        weights = torch.softmax(scores, dim=-1)[..., :SEQ]
        context[..., h * HEAD_DIM : (h + 1) * HEAD_DIM] = weights @ v[..., g * HEAD_DIM : (g + 1) * HEAD_DIM]
        maps.append(weights)
    return attn.out_proj(context), torch.stack(maps, dim=1)


def check_both_paths(attn: nn.Module, position: str = "learned") -> Tensor:
    x = torch.randn(BATCH, SEQ, D_MODEL)
    with torch.no_grad():
        want_out, want_weights = reference(x, attn, position, getattr(attn, "window", None))
        fast = attn(x)
        out, weights = attn(x, return_weights=True)
    torch.testing.assert_close(fast, want_out, atol=1e-5, rtol=1e-5)  # SDPA (or explicit) training path
    torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)  # the explicit formula
    torch.testing.assert_close(weights, want_weights, atol=1e-5, rtol=1e-5)
    return fast


# --- parity ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("name", SOFTMAX)
def test_each_setting_matches_the_reference(name: str, setting: str) -> None:
    attn = make(name, **SETTINGS[setting])
    fast = check_both_paths(attn)
    plain = make(name)  # negative control: the setting changes the output
    plain.load_state_dict(attn.state_dict(), strict=False)
    with torch.no_grad():
        x = torch.randn(BATCH, SEQ, D_MODEL)
        assert (attn(x) - plain(x)).abs().max() > 1e-4
    assert fast.shape == (BATCH, SEQ, D_MODEL)


@pytest.mark.parametrize(
    ("position", "setting"), [("rope", "qk_norm"), ("alibi", "softcap"), ("alibi", "sinks"), ("rope", "all")]
)
@pytest.mark.parametrize("name", ["multihead", "sdpa", "gqa", "sliding_window"])
def test_settings_with_positions_match_the_reference(name: str, position: str, setting: str) -> None:
    """QK-norm comes before rope; the alibi bias is added after the cap (and sits beside the sink in SDPA's mask)."""
    check_both_paths(make(name, position, **SETTINGS[setting]), position)


def test_latent_with_rope_normalises_the_content_parts_only() -> None:
    attn = make("latent", "rope", qk_norm=True, sinks=True)
    x = torch.randn(BATCH, SEQ, D_MODEL)
    with torch.no_grad():
        q_c = rms(split_heads(attn.W_query(x), NUM_HEADS), attn.q_norm.weight)  # (B, H, T, hd)
        k_c = rms(split_heads(attn.W_up_key(attn.W_down_kv(x)), NUM_HEADS), attn.k_norm.weight)
        q_r = split_heads(attn.W_query_rope(x), NUM_HEADS)
        q_r = torch.stack([rotate(q_r[:, h]) for h in range(NUM_HEADS)], 1)
        k_r = rotate(attn.W_key_rope(x))[:, None].expand(-1, NUM_HEADS, -1, -1)  # one shared rotary key
        q, k = torch.cat((q_c, q_r), -1), torch.cat((k_c, k_r), -1)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(
            ~torch.ones(SEQ, SEQ).tril().bool(), -math.inf
        )
        sink = attn.sink_logit[None, :, None, None].expand(BATCH, -1, SEQ, 1)
        weights = torch.softmax(torch.cat((scores, sink), -1), -1)[..., :SEQ]
        v = split_heads(attn.W_up_value(attn.W_down_kv(x)), NUM_HEADS)
        want = attn.out_proj(merge_heads(weights @ v))
        torch.testing.assert_close(attn(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attn(x, return_weights=True)[1], weights, atol=1e-5, rtol=1e-5)


def test_linear_qk_norm_comes_before_the_feature_map() -> None:
    attn = make("linear", qk_norm=True)
    x = torch.randn(BATCH, SEQ, D_MODEL)
    w_query, w_key, w_value = projections(attn)
    with torch.no_grad():
        phi_q = F.elu(rms(split_heads(x @ w_query.T, NUM_HEADS), attn.q_norm.weight)) + 1
        phi_k = F.elu(rms(split_heads(x @ w_key.T, NUM_HEADS), attn.k_norm.weight)) + 1
        kernel = (phi_q @ phi_k.transpose(-2, -1)).tril()  # (B, H, T, T)
        weights = kernel / kernel.sum(-1, keepdim=True)
        want = attn.out_proj(merge_heads(weights @ split_heads(x @ w_value.T, NUM_HEADS)))
        torch.testing.assert_close(attn(x), want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(attn(x, return_weights=True)[1], weights, atol=1e-5, rtol=1e-4)


# --- the contract with the settings on ----------------------------------------------------------------------
WITH_LINEAR = [(n, s) for n in SOFTMAX for s in SETTINGS] + [("linear", "qk_norm")]


@pytest.mark.parametrize("prefill", [0, 5])
@pytest.mark.parametrize(("name", "setting"), WITH_LINEAR)
def test_decoding_with_a_cache_matches_the_full_forward(name: str, setting: str, prefill: int) -> None:
    attn = make(name, "rope" if name != "latent" else "learned", **SETTINGS[setting])
    x = torch.randn(BATCH, SEQ, D_MODEL)
    cache: dict = {}
    with torch.no_grad():
        full = attn(x)
        pieces = [attn(x[:, :prefill], cache=cache)] if prefill else []
        pieces += [attn(x[:, t : t + 1], cache=cache) for t in range(prefill, SEQ)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["sdpa", "gqa", "sliding_window", "multihead"])
def test_the_cache_never_holds_the_sink(name: str) -> None:
    with_sink, without = make(name, sinks=True), make(name)
    without.load_state_dict(with_sink.state_dict(), strict=False)
    x = torch.randn(BATCH, SEQ, D_MODEL)
    caches: tuple[dict, dict] = ({}, {})
    with torch.no_grad():
        for attn, cache in zip((with_sink, without), caches, strict=True):
            attn(x[:, :5], cache=cache)
            attn(x[:, 5:6], cache=cache)
    assert caches[0].keys() == caches[1].keys()
    for key in ("k", "v"):
        assert torch.equal(caches[0][key], caches[1][key])


@pytest.mark.parametrize(("name", "setting"), WITH_LINEAR)
def test_causal_with_the_settings_on(name: str, setting: str) -> None:
    attn = make(name, **SETTINGS[setting])
    x = torch.randn(BATCH, SEQ, D_MODEL)
    with torch.no_grad():
        out = attn(x)
        future = x.clone()
        future[:, 6:] = torch.randn_like(future[:, 6:]) * 3
        torch.testing.assert_close(attn(future)[:, :6], out[:, :6], atol=1e-6, rtol=0)


@pytest.mark.parametrize("path", ["training", "return_weights"])
@pytest.mark.parametrize("name", [*SOFTMAX, "linear"])
def test_gradients_reach_the_new_parameters(name: str, path: str) -> None:
    attn = make(name, **(SETTINGS["qk_norm"] if name == "linear" else SETTINGS["all"])).train()
    out = attn(torch.randn(BATCH, SEQ, D_MODEL), return_weights=path == "return_weights")
    (out[0] if isinstance(out, tuple) else out).pow(2).sum().backward()
    for param in (attn.q_norm.weight, attn.k_norm.weight, attn.sink_logit):
        if param is not None:
            assert param.grad is not None and param.grad.abs().sum() > 0 and torch.isfinite(param.grad).all()


# --- what each setting does ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SOFTMAX)
def test_off_leaves_the_layer_exactly_as_it_was(name: str) -> None:
    torch.manual_seed(1)
    default = build_attention(name, D_MODEL, CONTEXT_LENGTH, **attention_knobs(name)).eval()
    torch.manual_seed(1)
    off = make(name, qk_norm=False, logit_softcap=0.0, sinks=False)
    assert list(off.state_dict()) == list(default.state_dict())
    assert off.q_norm is None and off.k_norm is None and off.sink_logit is None
    assert not hasattr(off, "weights_sum_to_one") or off.weights_sum_to_one
    assert kernel_of(off) == kernel_of(default) and "explicit (" not in kernel_of(off)
    x = torch.randn(BATCH, SEQ, D_MODEL)
    with torch.no_grad():
        assert torch.equal(off(x), default(x))
        assert torch.equal(off(x, return_weights=True)[1], default(x, return_weights=True)[1])


def test_sdpa_off_still_runs_plain_causal_sdpa() -> None:
    """Bit for bit the call it made before the settings existed: is_causal, no mask, no extra key."""
    attn = make("sdpa")
    x = torch.randn(BATCH, SEQ, D_MODEL)
    with torch.no_grad():
        q, k, v = (split_heads(t, NUM_HEADS) for t in attn.qkv(x).chunk(3, dim=-1))
        want = attn.out_proj(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))
        assert torch.equal(attn(x), want)


@pytest.mark.parametrize("name", ["sdpa", "gqa", "sliding_window", "multihead"])
def test_sink_mass_is_what_the_rows_miss_and_grows_with_the_sink_logit(name: str) -> None:
    """Rows sum to 1 - m with m = e^s / (e^s + sum_j e^score_j): the weights are the plain softmax times 1 - m, and
    raising s by 2 multiplies the odds m / (1 - m) by e^2 in every row. A sink of -inf is plain softmax again."""
    attn = make(name, sinks=True)
    assert attn.weights_sum_to_one is False and getattr(type(attn), "weights_sum_to_one", True)
    x = torch.randn(BATCH, SEQ, D_MODEL)
    sink = attn.sink_logit.detach().clone()
    with torch.no_grad():
        weights = attn(x, return_weights=True)[1]
        attn.sink_logit.copy_(sink + 2.0)
        raised = attn(x, return_weights=True)[1]
        attn.sink_logit.fill_(-math.inf)
        plain = attn(x, return_weights=True)[1]
    mass, raised_mass = 1 - weights.sum(-1), 1 - raised.sum(-1)  # (B, H, T)
    assert (mass > 0).all() and (mass < 1).all()
    assert (raised_mass > mass).all(), "a higher sink logit takes more mass from every row"
    torch.testing.assert_close(raised_mass / (1 - raised_mass), mass / (1 - mass) * math.exp(2.0), atol=0, rtol=1e-4)
    torch.testing.assert_close(plain.sum(-1), torch.ones(BATCH, NUM_HEADS, SEQ), atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, plain * (1 - mass[..., None]), atol=1e-6, rtol=1e-5)


def test_softcap_bounds_the_scores() -> None:
    scores = torch.randn(1000) * 100
    capped = softcap(scores, 5.0)
    assert capped.abs().max() <= 5.0 and torch.equal(softcap(scores, 0.0), scores)
    torch.testing.assert_close(softcap(scores * 1e-4, 5.0), scores * 1e-4, atol=1e-6, rtol=1e-5)  # ~identity near 0
    ordered = scores.sort().values
    assert (softcap(ordered, 5.0).diff() >= 0).all()  # monotone: the order of the scores is kept


@pytest.mark.parametrize("name", ["sdpa", "fused", "gqa"])
def test_softcap_bounds_how_peaked_a_row_can_be(name: str) -> None:
    """With |score| <= c, two allowed keys' weights differ by at most e^(2c), however large q and k are."""
    attn = make(name, logit_softcap=1.0)
    with torch.no_grad():
        for param in attn.parameters():
            param.mul_(30.0)  # scores in the hundreds without the cap
        weights = attn(torch.randn(BATCH, SEQ, D_MODEL), return_weights=True)[1]
        uncapped = make(name)
        uncapped.load_state_dict(attn.state_dict())
        loose = uncapped(torch.randn(BATCH, SEQ, D_MODEL), return_weights=True)[1]
    allowed = torch.ones(SEQ, SEQ).tril().bool()
    ratio = weights.amax(-1) / weights.masked_fill(~allowed, math.inf).amin(-1)
    assert ratio.max() <= math.exp(2.0) * (1 + 1e-5)
    assert (loose.amax(-1) / loose.masked_fill(~allowed, math.inf).amin(-1)).max() > 1e3  # negative control


# --- kernels -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SOFTMAX)
def test_softcap_moves_sdpa_variants_to_the_explicit_formula(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The benchmark's kernel column says so too: kernel_of reads `kernel_in_use` (sliding_window names its own
    blocked kernel, with the settings that make it explicit)."""
    attn = make(name, logit_softcap=CAP)
    kernel = getattr(type(attn), "kernel", "explicit")
    if kernel == "sdpa":
        assert "logit_softcap" in kernel_of(attn) and "explicit" in kernel_of(attn)
        assert kernel_of(attn) != kernel_of(make(name))
        if name != "sliding_window":
            assert kernel_of(attn) == attn.kernel_in_use == "explicit (logit_softcap)"
    else:
        assert kernel_of(attn) == kernel_of(make(name)) == "explicit"

    def refuse(*args, **kwargs):
        raise AssertionError("SDPA cannot soft-cap: it must not be called")

    monkeypatch.setattr(F, "scaled_dot_product_attention", refuse)
    with torch.no_grad():
        attn(torch.randn(BATCH, SEQ, D_MODEL))


def test_sinks_keep_sdpa_and_work_in_bfloat16() -> None:
    attn = make("gqa", sinks=True)
    assert attn.kernel_in_use == "sdpa"
    x = torch.randn(BATCH, SEQ, D_MODEL)
    with torch.no_grad():
        want = attn(x)
        low = attn.to(torch.bfloat16)(x.to(torch.bfloat16))
    torch.testing.assert_close(low.float(), want, atol=5e-2, rtol=5e-2)


# --- configuration -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("setting", "value"), [("logit_softcap", 30.0), ("sinks", True)])
def test_linear_refuses_softcap_and_sinks_with_the_reason(setting: str, value: object) -> None:
    with pytest.raises(
        AttentionConfigError, match=rf"attention=linear cannot use attention\.{setting}=.*no score matrix or softmax"
    ):
        build_attention("linear", D_MODEL, CONTEXT_LENGTH, **{setting: value})


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("qk_norm", 1, "bool"),
        ("sinks", "true", "bool"),
        ("logit_softcap", "30", "float"),
        ("logit_softcap", True, "float"),
    ],
)
def test_wrong_types_name_the_setting(setting: str, value: object, expected: str) -> None:
    with pytest.raises(AttentionConfigError, match=rf"attention\.{setting}=.* should be an? {expected}"):
        build_attention("sdpa", D_MODEL, CONTEXT_LENGTH, **{setting: value})


def test_negative_softcap_names_the_fix() -> None:
    with pytest.raises(AttentionConfigError, match=r"attention\.logit_softcap=-1\.0 must be >= 0: set it to 0 \(off\)"):
        build_attention("gqa", D_MODEL, CONTEXT_LENGTH, logit_softcap=-1)
    with pytest.raises(AttentionConfigError, match=r"logit_softcap=-2\.0 must be a number >= 0"):
        SDPAAttention(D_MODEL, CONTEXT_LENGTH, NUM_HEADS, logit_softcap=-2.0)
    assert build_attention("sdpa", D_MODEL, CONTEXT_LENGTH, logit_softcap=30).logit_softcap == 30.0  # int -> float


@pytest.mark.parametrize("name", ["simplified", "self_attention_v1", "self_attention", "causal", "multihead_wrapper"])
def test_the_chapter_steps_do_not_have_the_settings(name: str) -> None:
    with pytest.raises(AttentionConfigError, match=rf"attention={name} has no setting qk_norm"):
        build_attention(name, D_MODEL, CONTEXT_LENGTH, qk_norm=True)


def test_multihead_keeps_the_chapter_signature() -> None:
    params = inspect.signature(MultiHeadAttention).parameters
    assert list(params)[:6] == ["d_in", "d_out", "context_length", "dropout", "num_heads", "qkv_bias"]
    for setting in ("qk_norm", "logit_softcap", "sinks"):
        assert params[setting].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["sdpa", "gqa"])
def test_sinks_on_cuda_match_the_explicit_formula_with_gradients(name: str) -> None:
    """CUDA's kernels take the sink column as a float mask that needs a gradient (gqa: K/V heads repeated)."""
    attn = make(name, sinks=True, qk_norm=True).cuda().train()  # dropout 0: the two paths are comparable
    x = torch.randn(BATCH, 64, D_MODEL, device="cuda")
    fast = attn(x)
    fast.pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in attn.named_parameters()}
    attn.zero_grad()
    explicit = attn(x, return_weights=True)[0]
    explicit.pow(2).sum().backward()
    torch.testing.assert_close(fast, explicit, atol=1e-4, rtol=1e-4)
    for n, p in attn.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, atol=1e-4, rtol=1e-3, msg=n)
