"""Sampling (`attention_lab.sampling`): the KV cache gives the same tokens as recomputing for every variant,
the cache holds what each variant needs, the sampling rules (greedy, temperature, top-k, seeds) and stopping at
end-of-text. (`compare_cache` and `timed_generate`, which time `generate`, are tested with the generation
benchmark in tests/bench/test_generation_bench.py.)

Models are tiny (vocab 50, context 24, d_model 32, 2 layers) and prompts short, so that 30 new tokens outgrow
the context and the fall-back from cached decoding to recomputation is exercised too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from attention_lab.attention import available, get_variant
from attention_lab.model import GPT, KVCache
from attention_lab.sampling import generate, sample_next
from tests.helpers import one_torch_thread

VOCAB, CONTEXT, D_MODEL, HEADS = 50, 24, 32, 4
HD = D_MODEL // HEADS  # head dimension
PROMPT_LEN, NEW_TOKENS = 3, 30  # 33 tokens > CONTEXT: the cache is dropped once the context is full
# The special caching paths only show with a window and a latent smaller than the sequence.
GEN_KNOBS: dict[str, dict[str, Any]] = {"sliding_window": {"window": 4}, "latent": {"latent_dim": 8}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def tiny_gpt(name: str, **overrides: Any) -> GPT:
    """A seeded random GPT (eval mode, no dropout, HEADS heads where the variant has heads) of variant `name`."""
    defaults = get_variant(name).knobs
    knobs = {key: value for key, value in {"dropout": 0.0, "num_heads": HEADS}.items() if key in defaults}
    knobs |= {**GEN_KNOBS.get(name, {}), **overrides}
    torch.manual_seed(0)
    model = GPT(VOCAB, CONTEXT, D_MODEL, 2, {"name": name, **knobs}, emb_dropout=0.0, resid_dropout=0.0)
    return model.eval()


def prompt(batch: int = 1, length: int = PROMPT_LEN) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))  # (B, T)


# --- cached == uncached ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", available())
def test_cached_and_uncached_greedy_tokens_are_identical(name: str) -> None:
    model, idx = tiny_gpt(name), prompt(batch=2)
    cached = generate(model, idx, NEW_TOKENS, temperature=0.0, use_cache=True)  # (2, PROMPT_LEN + NEW_TOKENS)
    uncached = generate(model, idx, NEW_TOKENS, temperature=0.0, use_cache=False)
    assert cached.shape == (2, PROMPT_LEN + NEW_TOKENS) and cached.shape[1] > CONTEXT
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("name", available())
def test_cached_and_uncached_sampling_is_identical_with_the_same_seed(name: str) -> None:
    model, idx = tiny_gpt(name), prompt()
    runs = [
        generate(model, idx, NEW_TOKENS, 1.0, 5, use_cache=use_cache, generator=torch.Generator().manual_seed(7))
        for use_cache in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])


# --- what the cache holds ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "knobs", "expected"),
    [
        ("multihead", {}, {"k": (2, HEADS, 10, HD), "v": (2, HEADS, 10, HD)}),
        ("gqa", {"num_kv_heads": 2}, {"k": (2, 2, 10, HD), "v": (2, 2, 10, HD)}),
        ("mqa", {}, {"k": (2, 1, 10, HD), "v": (2, 1, 10, HD)}),
        ("sliding_window", {"window": 4}, {"k": (2, HEADS, 3, HD), "v": (2, HEADS, 3, HD)}),  # window - 1
        ("latent", {"latent_dim": 8}, {"latent": (2, 10, 8)}),  # no k/v: they are re-expanded from the latent
        ("linear", {}, {"state": (2, HEADS, HD, HD), "norm": (2, HEADS, HD)}),  # no time dimension
    ],
)
def test_cache_after_prefill_holds_what_the_variant_needs(name: str, knobs: dict, expected: dict) -> None:
    model, cache = tiny_gpt(name, **knobs), KVCache(2)
    with torch.no_grad():
        model(prompt(batch=2, length=10), cache=cache)
    assert cache.length == 10
    for layer in cache.layers:
        assert layer.pop("pos") == 10  # the absolute position of the next token (rope needs it)
        assert {key: tuple(value.shape) for key, value in layer.items()} == expected


def test_linear_cache_does_not_grow_with_the_sequence() -> None:
    model, cache = tiny_gpt("linear"), KVCache(2)
    with torch.no_grad():
        model(prompt(length=4), cache=cache)
        before = {k: v.shape for k, v in cache.layers[0].items() if k != "pos"}
        for _ in range(5):
            model(prompt(length=1), cache=cache)
    assert {k: v.shape for k, v in cache.layers[0].items() if k != "pos"} == before


@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_feeds_one_token_per_step_with_the_cache(use_cache: bool) -> None:
    """With the cache each step runs only the new token, until the context is full; then it recomputes."""
    model = tiny_gpt("multihead")
    lengths: list[int] = []
    model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    generate(model, prompt(), NEW_TOKENS, use_cache=use_cache)
    full = CONTEXT - PROMPT_LEN + 1  # steps until the sequence fills the context
    if use_cache:
        assert lengths[:full] == [PROMPT_LEN] + [1] * (full - 1)
    else:
        assert lengths[:full] == list(range(PROMPT_LEN, CONTEXT + 1))
    assert lengths[full:] == [CONTEXT] * (NEW_TOKENS - full)  # cropped to the last CONTEXT tokens


def test_generate_restores_training_mode() -> None:
    """generate() samples in eval mode (no dropout) and hands the model back the way it came."""
    model = tiny_gpt("multihead").train()
    generate(model, prompt(), 3)
    assert model.training


# --- sampling rules -----------------------------------------------------------------------------------------


def test_temperature_zero_is_argmax() -> None:
    logits = torch.randn(4, VOCAB)
    assert torch.equal(sample_next(logits, 0.0, None, None), logits.argmax(-1, keepdim=True))
    assert torch.equal(sample_next(logits, 0.0, 5, None), logits.argmax(-1, keepdim=True))


def test_sample_next_never_leaves_the_top_k() -> None:
    logits = torch.randn(4, VOCAB)
    draws = 2000
    rows = logits.repeat_interleave(draws, dim=0)  # (4 * draws, vocab): one multinomial call
    picks = sample_next(rows, 2.0, 5, torch.Generator().manual_seed(0)).view(4, draws)
    top = logits.topk(5, dim=-1).indices  # (4, 5)
    for row in range(4):
        assert set(picks[row].tolist()) == set(top[row].tolist())  # inside the top 5, and each of them drawn


@pytest.mark.parametrize("top_k", [0, VOCAB, 10 * VOCAB])
def test_top_k_off_or_at_least_the_vocabulary_changes_nothing(top_k: int) -> None:
    logits = torch.randn(4, VOCAB)
    picks = sample_next(logits, 1.0, top_k, torch.Generator().manual_seed(0))  # (4, 1)
    assert torch.equal(picks, sample_next(logits, 1.0, None, torch.Generator().manual_seed(0)))


def test_top_k_one_sampling_equals_greedy() -> None:
    model, idx = tiny_gpt("gqa"), prompt(batch=2)
    sampled = generate(model, idx, 15, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampled, generate(model, idx, 15, temperature=0.0))


def test_same_seed_same_sample_other_seed_other_sample() -> None:
    model, idx = tiny_gpt("multihead"), prompt()

    def run(seed: int) -> torch.Tensor:
        return generate(model, idx, 20, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


# --- stopping at end-of-text --------------------------------------------------------------------------------

EOT = 7


def force_eot(model: GPT, from_call: dict[int, int]) -> None:
    """From forward call `from_call[row]` on (0-based), make EOT the argmax of that row's last logits."""
    calls = {"n": 0}

    def hook(module: GPT, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()  # (B, T, vocab)
        for row, first in from_call.items():
            if calls["n"] >= first:
                output[row, -1, EOT] += 1000.0
        calls["n"] += 1
        return output

    model.register_forward_hook(hook)


@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_stops_at_eot(use_cache: bool) -> None:
    model = tiny_gpt("multihead")
    force_eot(model, {0: 2})
    out = generate(model, prompt(), 20, eot_token=EOT, use_cache=use_cache)
    assert out.shape[1] == PROMPT_LEN + 3  # two free tokens, then EOT, then stop
    assert out[0, -1] == EOT and EOT not in out[0, PROMPT_LEN:-1].tolist()


def test_finished_rows_pad_with_eot_until_every_row_is_done() -> None:
    model = tiny_gpt("gqa")
    force_eot(model, {0: 1, 1: 4})
    out = generate(model, prompt(batch=2), 20, eot_token=EOT)
    assert out.shape[1] == PROMPT_LEN + 5
    assert out[0, PROMPT_LEN + 1 :].tolist() == [EOT] * 4  # row 0 stopped after one token and stays stopped
    assert out[1, -1] == EOT and EOT not in out[1, PROMPT_LEN:-1].tolist()


def test_no_eot_token_means_no_early_stop() -> None:
    model = tiny_gpt("multihead")
    force_eot(model, {0: 0})
    assert generate(model, prompt(), 10, eot_token=None).shape[1] == PROMPT_LEN + 10
