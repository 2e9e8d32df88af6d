"""Next-token sampling and `generate()`: greedy, temperature and top-k, with a KV cache for every variant.

This is all the training callbacks import for their text samples. The cache (`model.KVCache`) holds what each
variant needs: K/V heads (only the shared ones for gqa/mqa), the last window - 1 tokens for sliding_window, the
latent (and, with rope, its shared rotary key) for latent, the running sums for linear.

With `model.position=learned` the position table ends at `context_length`, so once a sequence outgrows it every
step must recompute the cropped window; from there on the cache cannot help and sampling continues uncached
(same tokens either way). Every other scheme has no table: decoding goes on past `context_length` with the
cache, each new token at its true absolute position (sliding_window's cache stays bounded at window - 1 tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .model import GPT, KVCache


def sample_next(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None) -> Tensor:
    """logits (B, vocab) -> next ids (B, 1). temperature 0 is greedy; top-k is applied before temperature."""
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(
    model: GPT,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eot_token: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Extend idx (B, T) by up to `max_new_tokens`; stops early once every row has produced `eot_token`."""
    was_training = model.training
    model.eval()
    limit = model.max_length  # None: no position table, nothing to crop
    cache = KVCache(model.n_layers) if use_cache and (limit is None or idx.shape[1] <= limit) else None
    pending = idx  # tokens the model has not seen yet (with a cache) or the whole sequence (without)
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    for _ in range(max_new_tokens):
        if cache is not None and limit is not None and cache.length + pending.shape[1] > limit:
            cache, pending = None, idx  # outgrew the learned positions: recompute the cropped window
        window = idx if limit is None else idx[:, -limit:]
        logits = model(pending if cache is not None else window, cache=cache)[:, -1]  # (B, vocab)
        next_id = sample_next(logits, temperature, top_k, generator)  # (B, 1)
        if eot_token is not None:
            next_id = next_id.masked_fill(finished[:, None], eot_token)
            finished |= next_id.squeeze(1) == eot_token
        idx = torch.cat((idx, next_id), dim=1)
        pending = next_id
        if eot_token is not None and bool(finished.all()):
            break
    model.train(was_training)
    return idx
