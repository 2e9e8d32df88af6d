"""`retention` (RetNet): its three forms against each other and against a per-token loop written from the paper.

The contract suite already holds it to causality, cache == no cache, dropout and gradients; here: the per-head
decays, parallel == recurrent == chunked (any chunk size, T = 1, T = 4096), the whole layer against a naive
reference, O(T) training memory, the constant-size cache, and its configuration errors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from attention_lab.attention import AttentionConfigError, RetentionAttention, build_attention
from attention_lab.attention.retention import decay_logs
from tests.helpers import BATCH, CONTEXT_LENGTH, D_MODEL, NUM_HEADS, one_torch_thread

HEAD_DIM = D_MODEL // NUM_HEADS


def make(position: str = "learned", **knobs) -> RetentionAttention:
    knobs = {"num_heads": NUM_HEADS, "dropout": 0.0, **knobs}
    return build_attention("retention", D_MODEL, CONTEXT_LENGTH, position=position, **knobs).eval()


def projected(attn: RetentionAttention, x: Tensor, start: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (B, H, T, hd) as the layer's forms receive them: rotated (rope) and k scaled by 1/sqrt(hd)."""
    q, k, v = attn._qkv(x)
    q, k = attn.position.rotate(q, k, start=start)
    return q, k / math.sqrt(HEAD_DIM), v


def gammas(num_heads: int = NUM_HEADS) -> list[float]:
    return [1 - 2.0 ** (-5 - h) for h in range(num_heads)]


# --- the decays --------------------------------------------------------------------------------------------
def test_each_head_decays_at_the_papers_rate() -> None:
    assert decay_logs(6).exp().tolist() == pytest.approx(gammas(6), rel=0, abs=1e-7)
    assert decay_logs(1).dtype == torch.float32 and decay_logs(1).exp().item() == 31 / 32


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_returned_map_is_the_scaled_scores_times_the_decay(position: str) -> None:
    attn = make(position)
    x = torch.randn(BATCH, 9, D_MODEL)
    with torch.no_grad():
        _, weights = attn(x, return_weights=True)
        q, k, _ = attn._qkv(x)
        q, k = attn.position.rotate(q, k, start=0)
    want = torch.zeros_like(weights)
    for h, gamma in enumerate(gammas()):
        for n in range(9):
            for m in range(n + 1):
                want[:, h, n, m] = (q[:, h, n] * k[:, h, m]).sum(-1) / math.sqrt(HEAD_DIM) * gamma ** (n - m)
    torch.testing.assert_close(weights, want, atol=1e-6, rtol=1e-5)
    assert (weights.sum(-1) - 1).abs().max() > 0.1, "the map is not normalised (weights_sum_to_one = False)"


# --- three forms of one function ---------------------------------------------------------------------------
@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize(("seq", "chunk_size"), [(1, 64), (1, 1), (12, 5), (13, 13), (40, 64), (100, 7), (70, 1)])
def test_parallel_recurrent_and_chunked_forms_agree(seq: int, chunk_size: int, position: str) -> None:
    attn = make(position, chunk_size=chunk_size)
    x = torch.randn(BATCH, seq, D_MODEL)
    with torch.no_grad():
        q, k, v = projected(attn, x)
        parallel, _ = attn._parallel(q, k, v)
        recurrent, chunked = attn._recurrent(q, k, v), attn._chunked(q, k, v)
        out, _ = attn(x, return_weights=True)
        plain = attn(x)
    torch.testing.assert_close(recurrent, parallel, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked, parallel, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
def test_chunked_prefill_leaves_the_recurrent_state(chunk_size: int) -> None:
    attn = make("rope", chunk_size=chunk_size)
    with torch.no_grad():
        q, k, v = projected(attn, torch.randn(BATCH, 10, D_MODEL))
        chunked, recurrent = {}, {}
        attn._chunked(q, k, v, chunked)
        attn._recurrent(q, k, v, recurrent)
    torch.testing.assert_close(chunked["state"], recurrent["state"], atol=1e-6, rtol=1e-5)


def test_chunked_form_stays_exact_at_4096_tokens() -> None:
    """Every decay factor is gamma^e with 0 <= e <= chunk: gamma^-T (e^130 for gamma = 1 - 2^-5) never appears."""
    attn = make(num_heads=2, chunk_size=64)
    with one_torch_thread(), torch.no_grad():
        q, k, v = projected(attn, torch.randn(1, 4096, D_MODEL))
        chunked = attn._chunked(q, k, v)
        state = torch.zeros(1, 2, 16, 16, dtype=torch.float64)
        gamma = torch.tensor(gammas(2), dtype=torch.float64)[:, None, None]
        q, k, v = q.double(), k.double(), v.double()
        want = torch.empty_like(q)
        for n in range(4096):  # the recurrent form in float64
            state = gamma * state + k[:, :, n, :, None] * v[:, :, n, None, :]
            want[:, :, n] = (q[:, :, n, :, None] * state).sum(-2)
    assert torch.isfinite(chunked).all()
    torch.testing.assert_close(chunked.double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_layer_equals_a_per_token_loop_of_the_papers_equations(position: str) -> None:
    """o_n = sum_{m<=n} gamma_h^(n-m) (q_n . k_m / sqrt(hd)) v_m per head, GroupNorm per head and token,
    then (swish(x W_G) * Y) W_O + b_O, written one scalar loop at a time."""
    attn = make(position, chunk_size=4)
    with torch.no_grad():
        attn.norm.weight.uniform_(0.5, 1.5)  # not the identity init, so a wrong norm layout shows
        attn.norm.bias.uniform_(-0.5, 0.5)
        x = torch.randn(BATCH, 11, D_MODEL)
        q, k, v = attn._qkv(x)
        q, k = attn.position.rotate(q, k, start=0)
        y = torch.zeros(BATCH, 11, D_MODEL)
        for h, gamma in enumerate(gammas()):
            cols = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            for n in range(11):
                o = sum(
                    gamma ** (n - m) * (q[:, h, n] * k[:, h, m]).sum(-1, keepdim=True) * v[:, h, m]
                    for m in range(n + 1)
                )
                o = o / math.sqrt(HEAD_DIM)
                mean, var = o.mean(-1, keepdim=True), o.var(-1, unbiased=False, keepdim=True)
                y[:, n, cols] = (o - mean) / torch.sqrt(var + attn.norm.eps) * attn.norm.weight[cols] + attn.norm.bias[
                    cols
                ]
        gate = x @ attn.gate.weight.T
        want = (gate * torch.sigmoid(gate) * y) @ attn.out_proj.weight.T + attn.out_proj.bias
        torch.testing.assert_close(attn(x), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attn(x, return_weights=True)[0], want, atol=1e-5, rtol=1e-5)


# --- training path: memory and gradients -------------------------------------------------------------------
def saved_for_backward(attn: RetentionAttention, seq: int, return_weights: bool = False) -> list[Tensor]:
    saved: list[Tensor] = []

    def pack(tensor: Tensor) -> Tensor:
        saved.append(tensor)
        return tensor

    x = torch.randn(1, seq, D_MODEL, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        attn(x, return_weights=return_weights)
    return saved


def distinct_bytes(tensors: list[Tensor]) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def test_training_memory_is_linear_in_the_length_with_no_t_by_t_tensor() -> None:
    attn = make().train()
    with one_torch_thread():
        short, long = saved_for_backward(attn, 512), saved_for_backward(attn, 1024)
        quadratic = saved_for_backward(attn, 512, return_weights=True)  # negative control: the parallel form
    ratio = distinct_bytes(long) / distinct_bytes(short)
    assert ratio < 2.5, f"saved tensors grew {ratio:.2f}x from T=512 to T=1024"
    assert not [t.shape for t in long if sum(size >= 1024 for size in t.shape) >= 2]
    assert [t.shape for t in quadratic if sum(size >= 512 for size in t.shape) >= 2], "the control saves (T, T)"


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_chunked_gradients_equal_the_parallel_forms(position: str) -> None:
    attn = make(position, chunk_size=5).train()
    x = torch.randn(BATCH, 17, D_MODEL)
    attn(x).pow(2).sum().backward()
    chunked = {name: p.grad.clone() for name, p in attn.named_parameters()}
    attn.zero_grad()
    attn(x, return_weights=True)[0].pow(2).sum().backward()
    assert {"gate.weight", "norm.weight", "norm.bias", "W_query.weight", "out_proj.bias"} <= set(chunked)
    for name, param in attn.named_parameters():
        assert chunked[name].abs().sum() > 0, f"{name} gets no gradient"
        torch.testing.assert_close(chunked[name], param.grad, atol=1e-5, rtol=1e-4, msg=name)


# --- the cache ---------------------------------------------------------------------------------------------
def test_cache_holds_one_constant_size_state() -> None:
    attn = make("rope", chunk_size=3)
    x = torch.randn(BATCH, 30, D_MODEL)
    cache: dict = {}
    with torch.no_grad():
        full = attn(x)
        pieces = [attn(x[:, :7], cache=cache)]  # chunked prefill over three chunks, the last one short
        for t in range(7, 30):
            pieces.append(attn(x[:, t : t + 1], cache=cache))
            assert set(cache) == {"pos", "state"} and cache["pos"] == t + 1
            assert cache["state"].shape == (BATCH, NUM_HEADS, HEAD_DIM, HEAD_DIM)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)
    assert attn.kv_cache_bytes_per_token() == 0


def test_a_second_multi_token_piece_continues_from_the_state() -> None:
    attn = make("rope", chunk_size=4)
    x = torch.randn(BATCH, 25, D_MODEL)
    cache: dict = {}
    with torch.no_grad():
        full = attn(x)
        pieces = [attn(x[:, a:b], cache=cache) for a, b in [(0, 6), (6, 7), (7, 18), (18, 25)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


# --- configuration -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [0, -4])
def test_chunk_size_below_one(chunk_size: int) -> None:
    with pytest.raises(AttentionConfigError, match=rf"chunk_size={chunk_size} must be an integer >= 1: set attention"):
        make(chunk_size=chunk_size)


def test_chunk_size_must_be_an_int() -> None:
    with pytest.raises(AttentionConfigError, match=r"attention\.chunk_size=8\.0 should be an int"):
        make(chunk_size=8.0)


def test_alibi_is_refused_with_the_reason() -> None:
    with pytest.raises(AttentionConfigError, match=r"retention does not support model.position=alibi.*no softmax"):
        make("alibi")
    attn = RetentionAttention(D_MODEL, CONTEXT_LENGTH, NUM_HEADS)
    with pytest.raises(AttentionConfigError, match=r"no softmax.*model.position=rope"):
        attn.use_positions("alibi")


def test_weights_while_decoding_are_refused_loudly() -> None:
    attn = make()
    with pytest.raises(ValueError, match=r"return_weights=True is not available while decoding"):
        attn(torch.randn(BATCH, 1, D_MODEL), return_weights=True, cache={})


def test_retention_in_a_gpt_trains_a_step() -> None:
    from attention_lab.model import GPT

    model = GPT(50, CONTEXT_LENGTH, D_MODEL, 2, {"name": "retention", "num_heads": NUM_HEADS}, position="rope")
    idx = torch.randint(0, 50, (BATCH, CONTEXT_LENGTH))
    loss = F.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
