"""The GPT around the attention variants: sizes, training step, causality, KV-cache decoding, init."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from attention_lab.attention import available, count_params
from attention_lab.model import GPT, KVCache
from tests.helpers import BATCH, CONTEXT_LENGTH, D_MODEL, attention_knobs, expected_heads

ALL = available()
VOCAB = 50
MakeGPT = Callable[..., GPT]
GPT2_SMALL = {"vocab_size": 50257, "context_length": 1024, "d_model": 768, "n_layers": 12}
GPT2_ATTENTION = {"name": "multihead", "num_heads": 12, "qkv_bias": False}


def random_tokens(seq: int = CONTEXT_LENGTH, batch: int = BATCH) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq))


# --- sizes -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tie_weights", "total"), [(False, 163_009_536), (True, 124_412_160)])
def test_gpt2_small_parameter_count(tie_weights: bool, total: int) -> None:
    with torch.device("meta"):  # sizes only: no 0.6 GB allocation, no init work
        model = GPT(**GPT2_SMALL, attention=GPT2_ATTENTION, tie_weights=tie_weights)
    counts = model.num_params()
    assert counts["total"] == total
    assert counts["attention"] == 12 * 2_360_064
    assert counts["non_embedding"] == total - (50257 + 1024) * 768
    assert (model.head.weight is model.tok_emb.weight) == tie_weights


@pytest.mark.parametrize("name", ALL)
def test_num_params_attention_is_the_sum_of_attention_modules(name: str, make_gpt: MakeGPT) -> None:
    model = make_gpt(name)
    by_name = sum(p.numel() for n, p in model.named_parameters() if ".attn." in n)
    assert model.num_params()["attention"] == by_name == sum(count_params(b.attn) for b in model.blocks)
    assert model.num_params()["total"] == sum(p.numel() for p in model.parameters())


def test_untied_head_adds_one_vocab_matrix() -> None:
    config = {"vocab_size": VOCAB, "context_length": CONTEXT_LENGTH, "d_model": D_MODEL, "n_layers": 2}
    tied = GPT(**config, attention={"name": "multihead"}, tie_weights=True)
    untied = GPT(**config, attention={"name": "multihead"}, tie_weights=False)
    assert untied.num_params()["total"] - tied.num_params()["total"] == VOCAB * D_MODEL


def test_attention_config_needs_a_name() -> None:
    with pytest.raises(ValueError, match=r"needs a `name`"):
        GPT(VOCAB, CONTEXT_LENGTH, D_MODEL, 2, attention={"num_heads": 4})


@pytest.mark.parametrize(
    ("name", "knobs", "per_layer"),
    [
        ("multihead", {}, 2 * D_MODEL * 4),
        ("gqa", {"num_kv_heads": 2}, 2 * 2 * (D_MODEL // 4) * 4),
        ("mqa", {}, 2 * (D_MODEL // 4) * 4),
        ("latent", {"latent_dim": 8}, 8 * 4),
        ("linear", {}, 0),
    ],
)
def test_gpt_kv_cache_bytes_per_token(name: str, knobs: dict, per_layer: int, make_gpt: MakeGPT) -> None:
    assert make_gpt(name, n_layers=3, **knobs).kv_cache_bytes_per_token() == 3 * per_layer


# --- training step -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_forward_backward_every_variant(name: str) -> None:
    knobs = attention_knobs(name)
    knobs.pop("dropout", None)  # keep the variant's default attention dropout: the real training path
    model = GPT(VOCAB, CONTEXT_LENGTH, D_MODEL, 2, attention={"name": name, **knobs}).train()
    idx = random_tokens()
    logits = model(idx[:, :-1])
    assert logits.shape == (BATCH, CONTEXT_LENGTH - 1, VOCAB)
    loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    assert torch.isfinite(loss)
    assert abs(loss.item() - math.log(VOCAB)) < 0.5, "a freshly initialised LM should predict ~uniformly"
    loss.backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None, f"{param_name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{param_name} has a non-finite gradient"
        if ".attn." in param_name:
            assert param.grad.abs().sum() > 0, f"{param_name} has an all-zero gradient"


# --- causality ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_gpt_is_causal_end_to_end(name: str, make_gpt: MakeGPT) -> None:
    model = make_gpt(name)
    idx = random_tokens()
    with torch.no_grad():
        logits = model(idx)
        for t in (0, 4, 9, CONTEXT_LENGTH - 2):
            future = idx.clone()
            future[:, t + 1 :] = (idx[:, t + 1 :] + 1 + torch.randint(0, VOCAB - 1, idx[:, t + 1 :].shape)) % VOCAB
            torch.testing.assert_close(model(future)[:, : t + 1], logits[:, : t + 1], atol=1e-5, rtol=0)

            present = idx.clone()
            present[:, t] = (idx[:, t] + 7) % VOCAB
            assert (model(present)[:, t] - logits[:, t]).abs().max() > 1e-4, "logits at t ignore token t"


def test_non_causal_config_warns_and_leaks() -> None:
    with pytest.warns(UserWarning, match=r"sees the next token.*loss is meaningless"):
        model = GPT(VOCAB, CONTEXT_LENGTH, D_MODEL, 2, attention={"name": "self_attention", "causal": False})
    model.eval()
    idx = random_tokens()
    future = idx.clone()
    future[:, -1] = (idx[:, -1] + 1) % VOCAB
    with torch.no_grad():
        assert (model(future)[:, 0] - model(idx)[:, 0]).abs().max() > 1e-6


# --- return_weights ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_return_weights_one_map_per_layer(name: str, make_gpt: MakeGPT) -> None:
    model = make_gpt(name, n_layers=3)
    idx = random_tokens(seq=10)
    with torch.no_grad():
        plain = model(idx)
        logits, weights = model(idx, return_weights=True)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)
    assert len(weights) == 3
    for layer in weights:
        assert layer.shape == (BATCH, expected_heads(name), 10, 10)
        assert torch.equal(layer.triu(1), torch.zeros_like(layer))


# --- KV-cache decoding -------------------------------------------------------------------------------------
def decode(model: GPT, idx: torch.Tensor, prefill: int = 0) -> tuple[torch.Tensor, KVCache]:
    cache = KVCache(model.n_layers)
    pieces = [model(idx[:, :prefill], cache=cache)] if prefill else []
    pieces += [model(idx[:, t : t + 1], cache=cache) for t in range(prefill, idx.shape[1])]
    return torch.cat(pieces, dim=1), cache


@pytest.mark.parametrize("prefill", [0, 6])
@pytest.mark.parametrize("name", ALL)
def test_kv_cache_decoding_matches_full_forward(name: str, prefill: int, make_gpt: MakeGPT) -> None:
    model = make_gpt(name)
    idx = random_tokens()
    with torch.no_grad():
        full = model(idx)
        steps, cache = decode(model, idx, prefill)
    assert cache.length == CONTEXT_LENGTH
    torch.testing.assert_close(steps, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("window", [1, 3, 4, 8])
def test_sliding_window_kv_cache_decoding(window: int, make_gpt: MakeGPT) -> None:
    model = make_gpt("sliding_window", window=window)
    idx = random_tokens()
    with torch.no_grad():
        torch.testing.assert_close(decode(model, idx)[0], model(idx), atol=1e-4, rtol=1e-4)


# --- context length ----------------------------------------------------------------------------------------
def test_input_longer_than_context_raises(make_gpt: MakeGPT) -> None:
    model = make_gpt("multihead")
    with pytest.raises(ValueError, match=rf"{CONTEXT_LENGTH + 1} positions exceed model\.context_length=16"):
        model(random_tokens(seq=CONTEXT_LENGTH + 1))


def test_cache_cannot_grow_past_context(make_gpt: MakeGPT) -> None:
    model = make_gpt("multihead")
    idx = random_tokens()
    with torch.no_grad():
        _, cache = decode(model, idx)
        with pytest.raises(ValueError, match=r"context_length=16"):
            model(idx[:, :1], cache=cache)


# --- initialisation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_gpt2_initialisation(name: str) -> None:
    n_layers, d_model = 4, 128
    knobs = attention_knobs(name)
    model = GPT(500, 64, d_model, n_layers, attention={"name": name, **knobs}, tie_weights=False)
    residual_std = 0.02 / math.sqrt(2 * n_layers)
    seen_residual = 0
    for param_name, param in model.named_parameters():
        if param_name.rsplit(".", 1)[-1] in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
            assert param.std().item() == pytest.approx(0.1, rel=0.5), param_name  # differential's N(0, 0.1)
            continue
        if param.dim() < 2:  # biases zero, LayerNorm weight one / bias zero
            expected = 1.0 if ("norm" in param_name and param_name.endswith("weight")) else 0.0
            torch.testing.assert_close(param.detach(), torch.full_like(param, expected), msg=param_name)
            continue
        std = param.std().item()
        abs_mean = param.mean().abs().item()
        if param_name.endswith(("out_proj.weight", "mlp.proj.weight")):
            seen_residual += 1
            assert std == pytest.approx(residual_std, rel=0.1), param_name
        else:
            assert std == pytest.approx(0.02, rel=0.1), param_name
        assert abs_mean < 0.005, param_name
    assert seen_residual >= n_layers  # at least every MLP projection


def test_tied_head_shares_the_embedding(make_gpt: MakeGPT) -> None:
    model = make_gpt("multihead")
    assert model.head.weight is model.tok_emb.weight
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.1)
