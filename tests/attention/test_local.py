"""The blocked local kernel of sliding_window (attention/local.py): the dense band's numbers in O(T * window).

Kernel-level parity with the explicit dense formula over windows that do and do not divide T, K/V groupings,
ALiBi's bias and cached keys; module-level parity (rope, alibi, gqa, soft cap, sinks), prefill + decoding ==
one forward, gradients == the dense path's, dropout only in training, no (T, T) tensor saved for backward,
the FLOPs it reports, FlexAttention's fallback, and (CUDA only) FlexAttention's parity.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from attention_lab.attention import SlidingWindowAttention, local
from attention_lab.attention import sliding_window as sliding_module
from attention_lab.attention.functional import attention_weights, causal_allowed
from attention_lab.attention.local import block_allowed, flex_available, local_attention
from attention_lab.attention.positions import ALiBi, alibi_slopes
from tests.helpers import one_torch_thread

D_MODEL, HEADS, HEAD_DIM = 32, 4, 8
WINDOWS = [1, 2, 3, 5, 8, 16]
LENGTHS = [1, 7, 16, 33]
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def qkv(t_q: int, t_k: int, kv_heads: int, batch: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(t_q * 1000 + t_k * 10 + kv_heads)
    q = torch.randn(batch, HEADS, t_q, HEAD_DIM, generator=gen)
    k, v = (torch.randn(batch, kv_heads, t_k, HEAD_DIM, generator=gen) for _ in range(2))
    return q, k, v


def dense_band(q: Tensor, k: Tensor, v: Tensor, window: int, slopes: list[float] | None = None) -> Tensor:
    """The explicit formula over the whole (Tq, Tk) band, K/V heads repeated (head h reads h // G)."""
    group = q.shape[1] // k.shape[1]
    t_q, t_k = q.shape[2], k.shape[2]
    bias = None if slopes is None else ALiBi(slopes).bias(t_q, t_k, q.device)
    allowed = causal_allowed(t_q, t_k, window)
    weights = attention_weights(q, k.repeat_interleave(group, dim=1), allowed, bias=bias)
    return weights @ v.repeat_interleave(group, dim=1)


def block_bias(slopes: list[float] | None, window: int) -> Tensor | None:
    return None if slopes is None else ALiBi(slopes).bias(window, 2 * window, None)


@pytest.mark.parametrize("alibi", [False, True], ids=["no_bias", "alibi"])
@pytest.mark.parametrize("kv_heads", [HEADS, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("t", LENGTHS)
@pytest.mark.parametrize("window", WINDOWS)
def test_kernel_equals_dense_band(window: int, t: int, kv_heads: int, alibi: bool) -> None:
    slopes = alibi_slopes(HEADS) if alibi else None
    q, k, v = qkv(t, t, kv_heads)
    got = local_attention(q, k, v, window, block_bias(slopes, window))
    torch.testing.assert_close(got, dense_band(q, k, v, window, slopes), **TOL)


@pytest.mark.parametrize("alibi", [False, True], ids=["no_bias", "alibi"])
@pytest.mark.parametrize(("window", "cached", "t"), [(3, 2, 7), (5, 1, 16), (8, 7, 9), (8, 3, 33), (16, 15, 20)])
def test_kernel_with_cached_keys_is_lower_right_aligned(window: int, cached: int, t: int, alibi: bool) -> None:
    """Prefill after earlier tokens: the cached keys come first; query i is key position cached + i."""
    slopes = alibi_slopes(HEADS) if alibi else None
    q, k, v = qkv(t, cached + t, 2)
    got = local_attention(q, k, v, window, block_bias(slopes, window))
    torch.testing.assert_close(got, dense_band(q, k, v, window, slopes), **TOL)


def test_kernel_refuses_more_cached_keys_than_the_window_keeps() -> None:
    q, k, v = qkv(4, 4 + 3, HEADS)
    with pytest.raises(ValueError, match=r"0 \.\. window - 1 = 2"):
        local_attention(q, k, v, 3)


def test_the_block_mask_is_the_band_and_hides_the_left_padding() -> None:
    """A negative control on the mask itself: block 0 sees no padding, later blocks exactly w keys per query."""
    allowed = block_allowed(4, 3, cached=0)  # (N, w, 2w)
    assert allowed.shape == (3, 4, 8)
    assert allowed[1:].sum(-1).eq(4).all()  # every later query sees w keys
    assert allowed[0].sum(-1).tolist() == [1, 2, 3, 4]  # query i of block 0 sees keys 0 .. i only
    assert not allowed[0, :, :4].any()  # the whole first key block is padding without a cache


# --- the module ---------------------------------------------------------------------------------------------
def module(window: int, kv_heads: int = HEADS, position: str = "none", **knobs) -> SlidingWindowAttention:
    torch.manual_seed(0)
    attn = SlidingWindowAttention(D_MODEL, 64, HEADS, window=window, num_kv_heads=kv_heads, **knobs)
    attn.use_positions(position)
    if attn.sink_logit is not None:
        with torch.no_grad():
            attn.sink_logit.normal_()  # not 0, so that a sink applied to the wrong head shows
    return attn.eval()


def spy_blocked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of the blocked kernel made by the module."""
    calls: list[int] = []

    def counted(*args, **kwargs):
        calls.append(1)
        return local_attention(*args, **kwargs)

    monkeypatch.setattr(sliding_module, "local_attention", counted)
    return calls


CASES = [(3, HEADS, "none"), (5, 2, "alibi"), (8, 1, "rope"), (4, 2, "rope"), (16, HEADS, "alibi")]


@pytest.mark.parametrize(("window", "kv_heads", "position"), CASES)
def test_module_equals_the_explicit_dense_formula(window, kv_heads, position, monkeypatch) -> None:
    attn, calls = module(window, kv_heads, position), spy_blocked(monkeypatch)
    x = torch.randn(2, 33, D_MODEL)
    with torch.no_grad():
        want = attn(x, return_weights=True)[0]  # the explicit (T, T) formula
        torch.testing.assert_close(attn(x), want, **TOL)
    assert calls, "the blocked kernel was not used"


@pytest.mark.parametrize("knobs", [{"logit_softcap": 2.0}, {"sinks": True}, {"logit_softcap": 1.5, "sinks": True}])
@pytest.mark.parametrize(("window", "kv_heads", "position"), [(3, 2, "alibi"), (8, HEADS, "rope")])
def test_soft_cap_and_sinks_are_honoured(window, kv_heads, position, knobs, monkeypatch) -> None:
    """The blocked kernel's explicit softmax caps before the bias and adds the sink column, as the dense one."""
    attn, calls = module(window, kv_heads, position, **knobs), spy_blocked(monkeypatch)
    assert attn.kernel_in_use.startswith("local (explicit: ")
    x = torch.randn(2, 33, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn(x, return_weights=True)[0], **TOL)
        attn.blocked = False
        dense = attn(x)
        attn.blocked = True
        off = module(window, kv_heads, position)(x)  # without the settings: a different answer (negative control)
    torch.testing.assert_close(attn(x).detach(), dense, **TOL)
    assert (off - dense).abs().max() > 1e-3
    assert calls


def test_short_sequences_and_decoding_keep_the_dense_path(monkeypatch) -> None:
    attn, calls = module(8, 2, "alibi"), spy_blocked(monkeypatch)
    with torch.no_grad():
        attn(torch.randn(1, 8, D_MODEL))  # T <= window: plain causal
        attn(torch.randn(1, 1, D_MODEL), cache={})  # one token
    assert calls == []
    assert attn.kernel_in_use == "local"
    attn.blocked = False
    assert attn.kernel_in_use == "sdpa (dense band)"


@pytest.mark.parametrize(("window", "kv_heads", "position"), CASES)
def test_prefill_after_earlier_tokens_then_steps_equal_one_forward(window, kv_heads, position) -> None:
    attn = module(window, kv_heads, position)
    x = torch.randn(2, 40, D_MODEL)
    cache: dict = {}
    with torch.no_grad():
        full = attn(x)
        parts = [attn(x[:, :6], cache=cache), attn(x[:, 6:27], cache=cache)]  # the 2nd: 21 tokens after cached
        parts += [attn(x[:, t : t + 1], cache=cache) for t in range(27, 40)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **TOL)
    assert cache["k"].shape[2] == min(window - 1, 40)


@pytest.mark.parametrize("knobs", [{}, {"sinks": True, "logit_softcap": 3.0}])
@pytest.mark.parametrize(("window", "kv_heads", "position"), [(3, 2, "alibi"), (5, 1, "rope")])
def test_gradients_equal_the_dense_paths(window, kv_heads, position, knobs) -> None:
    grads = []
    for blocked in (True, False):
        attn = module(window, kv_heads, position, **knobs).train()
        attn.blocked = blocked
        x = torch.randn(2, 33, D_MODEL, generator=torch.Generator().manual_seed(1)).requires_grad_()
        attn(x).pow(2).sum().backward()
        grads.append({"x": x.grad, **{n: p.grad for n, p in attn.named_parameters()}})
    blocked_grads, dense_grads = grads
    assert blocked_grads.keys() == dense_grads.keys()
    for name, grad in blocked_grads.items():
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, dense_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("knobs", [{}, {"logit_softcap": 3.0}])
def test_dropout_only_in_training(knobs) -> None:
    attn = module(4, 2, "alibi", dropout=0.5, **knobs)
    x = torch.randn(2, 33, D_MODEL)
    with torch.no_grad():
        evaluated = attn.eval()(x)
        torch.testing.assert_close(attn(x), evaluated)  # eval: deterministic ...
        torch.testing.assert_close(evaluated, attn(x, return_weights=True)[0], **TOL)  # ... and undropped
        attn.train()
        first, second = attn(x), attn(x)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, evaluated)


def saved_bytes(attn: SlidingWindowAttention, t: int) -> int:
    """Bytes of the distinct storages autograd keeps after one training forward (parameters and input aside)."""
    x = torch.randn(1, t, D_MODEL, requires_grad=True)
    exclude = {p.untyped_storage().data_ptr() for p in (*attn.parameters(), x)}
    saved: dict[int, int] = {}

    def pack(tensor: Tensor) -> Tensor:
        key = tensor.untyped_storage().data_ptr()
        if key not in exclude:
            saved[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        attn.train()(x)
    return sum(saved.values())


@pytest.mark.parametrize("position", ["none", "alibi"])
def test_training_saves_no_t_by_t_tensor(position: str) -> None:
    """T 1024 -> 2048 at window 64: ~2x saved bytes blocked; the dense band (negative control) ~4x, as (T, T)."""
    attn = module(64, 2, position)
    blocked = saved_bytes(attn, 2048) / saved_bytes(attn, 1024)
    attn.blocked = False
    dense = saved_bytes(attn, 2048) / saved_bytes(attn, 1024)
    assert 1.8 < blocked < 2.2, blocked
    assert dense > 3.0, dense


@pytest.mark.parametrize(("t", "knobs"), [(33, {}), (33, {"sinks": True}), (8, {"sinks": True}), (8, {})])
def test_reported_flops_are_what_runs(t: int, knobs: dict) -> None:
    """Blocked: ceil(T / w) blocks of (w, 2w) per head; dense (T <= w) with SDPA's extra sink key."""
    attn = module(5 if t > 8 else 8, 2, "alibi", **knobs)
    x = torch.randn(1, t, D_MODEL)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        attn(x)
    assert sum(attn.forward_flops(t).values()) == counter.get_total_flops()


# --- FlexAttention ------------------------------------------------------------------------------------------
def test_flex_never_runs_on_cpu() -> None:
    assert not flex_available(torch.zeros(1))


def test_a_flex_failure_falls_back_to_the_blocked_kernel(monkeypatch, caplog) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this shape")

    monkeypatch.setattr(local, "_flex_failed", False)
    monkeypatch.setattr(local, "band_block_mask", lambda *args: None)
    monkeypatch.setattr(local, "_compiled_flex", lambda: broken)
    monkeypatch.setattr(sliding_module, "flex_available", lambda q: not local._flex_failed)
    attn = module(4, 2, "alibi")
    x = torch.randn(2, 33, D_MODEL)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), attn(x, return_weights=True)[0], **TOL)
    assert local._flex_failed
    assert "FlexAttention failed" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("window", "kv_heads", "position"), [(16, HEADS, "none"), (32, 2, "alibi"), (24, 1, "rope")])
def test_flex_on_cuda_equals_the_blocked_kernel(window, kv_heads, position, monkeypatch) -> None:
    attn = module(window, kv_heads, position).cuda().train()
    x = torch.randn(2, 300, D_MODEL, device="cuda")
    calls = spy_blocked(monkeypatch)
    want_out = attn(x, return_weights=True)[0]
    out = attn(x)
    assert calls == [] and not local._flex_failed, "FlexAttention did not run"
    torch.testing.assert_close(out, want_out, atol=1e-4, rtol=1e-4)
    grad = torch.randn_like(out)
    flex_grads = torch.autograd.grad(out, list(attn.parameters()), grad)
    dense_grads = torch.autograd.grad(want_out, list(attn.parameters()), grad)
    for got, want in zip(flex_grads, dense_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    cache: dict = {}
    with torch.no_grad():  # prefill after earlier tokens (a BlockMask with an offset), then decoding
        parts = [attn.eval()(x[:, :50], cache=cache), attn(x[:, 50:290], cache=cache)]
        parts += [attn(x[:, t : t + 1], cache=cache) for t in range(290, 300)]
        torch.testing.assert_close(torch.cat(parts, dim=1), attn(x), atol=1e-4, rtol=1e-4)
