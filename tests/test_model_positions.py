"""The GPT with each position scheme: which parameters it has, lengths past the training context, decoding
past it with the cache (cached == uncached tokens for every supported variant x scheme), and old checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from attention_lab.attention import available, get_variant
from attention_lab.attention.positions import POSITIONS
from attention_lab.checkpoint import check_same_model
from attention_lab.model import GPT, KVCache
from attention_lab.sampling import generate
from tests.helpers import one_torch_thread

VOCAB, CONTEXT, D_MODEL, HEADS = 40, 12, 32, 4
KNOBS: dict[str, dict[str, Any]] = {"sliding_window": {"window": 4}, "latent": {"latent_dim": 8}}
PAIRS = [(name, scheme) for name in available() for scheme in get_variant(name).positions]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def gpt(name: str, position: str, **overrides: Any) -> GPT:
    defaults = get_variant(name).knobs
    knobs = {key: value for key, value in {"dropout": 0.0, "num_heads": HEADS}.items() if key in defaults}
    knobs |= {**KNOBS.get(name, {}), **overrides}
    torch.manual_seed(0)
    attention = {"name": name, **knobs}
    model = GPT(VOCAB, CONTEXT, D_MODEL, 2, attention, emb_dropout=0.0, resid_dropout=0.0, position=position)
    return model.eval()


def tokens(length: int, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))  # (B, T)


@pytest.mark.parametrize("position", POSITIONS)
def test_only_learned_positions_have_a_table(position: str) -> None:
    model = gpt("multihead", position)
    has_table = any(name.startswith("pos_emb") for name, _ in model.named_parameters())
    assert has_table == (position == "learned")
    assert model.max_length == (CONTEXT if position == "learned" else None)
    counts = model.num_params()
    table = CONTEXT * D_MODEL if position == "learned" else 0
    assert counts["total"] - counts["non_embedding"] == VOCAB * D_MODEL + table


@pytest.mark.parametrize("position", ["sinusoidal", "rope", "alibi", "none"])
def test_a_model_trained_at_t_runs_at_4t_and_stays_causal(position: str) -> None:
    model = gpt("sdpa", position)
    idx = tokens(4 * CONTEXT)
    with torch.no_grad():
        logits = model(idx)
        changed = idx.clone()
        changed[:, 30:] = (changed[:, 30:] + 1) % VOCAB
        other = model(changed)
    assert logits.shape == (2, 4 * CONTEXT, VOCAB) and torch.isfinite(logits).all()
    torch.testing.assert_close(other[:, :30], logits[:, :30], atol=1e-5, rtol=0)


def test_learned_positions_refuse_4t_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"exceed model.context_length=12.*model.position=rope, alibi or none"):
        gpt("sdpa", "learned")(tokens(4 * CONTEXT))


def test_positions_change_the_outputs() -> None:
    """Each scheme gives another function of the same weights (a scheme that silently did nothing would not)."""
    idx = tokens(CONTEXT)
    with torch.no_grad():
        outputs = {p: gpt("multihead", p)(idx) for p in ("sinusoidal", "rope", "alibi", "none")}
    for a in outputs:
        for b in outputs:
            if a < b:
                # GPT-2's init (std 0.02) makes scores small, so differences are small but far above rounding
                assert (outputs[a] - outputs[b]).abs().max() > 1e-5, f"{a} and {b} give the same logits"


@pytest.mark.slow  # 64 generations, ~3 s in all: run by CI, kept out of the quick pre-commit run
@pytest.mark.parametrize(("name", "position"), PAIRS)
def test_cached_and_uncached_greedy_tokens_are_identical(name: str, position: str) -> None:
    """3 prompt tokens + 30 new ones outgrow the context (12): relative schemes keep the cache past it."""
    model = gpt(name, position)
    idx = tokens(3)
    cached = generate(model, idx, 30, temperature=0.0, use_cache=True)
    uncached = generate(model, idx, 30, temperature=0.0, use_cache=False)
    assert cached.shape == (2, 33)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("position", ["rope", "alibi", "none", "sinusoidal"])
def test_decoding_past_the_context_keeps_the_cache_and_one_token_per_step(position: str) -> None:
    model = gpt("multihead", position)
    lengths: list[int] = []
    model.register_forward_pre_hook(lambda module, args, kwargs: lengths.append(args[0].shape[1]), with_kwargs=True)
    generate(model, tokens(3, batch=1), 30, use_cache=True)
    assert lengths == [3] + [1] * 29  # never a recomputed window


def test_sliding_window_with_rope_decodes_far_past_the_context_in_bounded_memory() -> None:
    model = gpt("sliding_window", "rope", window=4)
    cache = KVCache(model.n_layers)
    idx = tokens(1)
    with torch.no_grad():
        for _ in range(10 * CONTEXT):
            logits = model(idx, cache=cache)
            idx = logits[:, -1:].argmax(-1)
            assert all(layer["k"].shape[2] <= 3 for layer in cache.layers)
    assert cache.length == 10 * CONTEXT
    assert all(layer["pos"] == 10 * CONTEXT for layer in cache.layers)
    assert torch.isfinite(logits).all()


def test_a_checkpoint_from_before_model_position_is_learned() -> None:
    kwargs = {"vocab_size": VOCAB, "context_length": CONTEXT, "d_model": D_MODEL, "n_layers": 2}
    checkpoint = {"hyper_parameters": {"model": kwargs}}
    check_same_model(checkpoint, {**kwargs, "position": "learned", "rope_base": 10000.0}, "old.ckpt")
    with pytest.raises(ValueError, match=r"position: checkpoint 'learned' vs config 'rope'"):
        check_same_model(checkpoint, {**kwargs, "position": "rope"}, "old.ckpt")
